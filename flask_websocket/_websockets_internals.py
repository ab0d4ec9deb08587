"""The fence around websockets' internals: the one module that touches them.

:mod:`flask_websocket.protocol` builds on the sans-I/O layer of `websockets`_,
whose documented API (``receive_data``, ``receive_eof``, ``send_*``,
``fail``, ``events_received``, ``data_to_send``, ``close_expected``,
``state``, ``accept``, ``reject``, ``send_response``) is not quite enough.
Everything else it needs is here, each with why and the websockets versions
it was checked on. No other module of the package reads a name of websockets
that its documentation does not list.

==========================================  ===================================================
internal                                    what for
==========================================  ===================================================
``Protocol._state``                         ``open``/``closed`` on every send and read without
                                            the ``state`` property's extra call
``Protocol.writes``                         "is there output?" after each read, without the new
                                            list ``data_to_send()`` builds each time
``Protocol.reader.buffer``                  fast path: no parsed-but-unused bytes left
``Protocol.parser``, ``Protocol.parse()``,  restart the frame parser after the ``101`` (the
``StreamReader.at_eof``                     server's parser waits for an HTTP request uWSGI
                                            already read); fast path: the parser is parked
                                            between frames, in ``at_eof``, not inside one;
                                            UTF-8 checked as a frame arrives: when a read
                                            ends inside a frame; no parser at all while a
                                            connection waits between frames (``parse()``
                                            keeps nothing of its own from one frame to the
                                            next, and only ``receive_data`` and
                                            ``receive_eof`` advance it), see
                                            :func:`restart_parser`
``Protocol.current_size``                   fast path and UTF-8 checks: inside a fragmented
(15: ``cur_size``)                          message or not
``Protocol.max_message_size`` (15:          fast path: the size limit to enforce
``max_size``), ``max_fragment_size`` (17)
``Protocol.recv_frame()``                   a hook per parsed frame: UTF-8 checked frame by
                                            frame, a close frame between fragments is a normal
                                            close (Autobahn 7.1.5), see
                                            :class:`ValidatingServerProtocol`
``Protocol.close_rcvd``, ``close_sent``     close code and reason while CLOSING
                                            (``close_exc`` only exists once CLOSED)
``ServerProtocol.subprotocol``              the subprotocol ``accept()`` chose
``ServerProtocol.origins``,                 a handshake that can negotiate nothing is checked
``available_extensions``,                   from the WSGI environ without ``accept()``, and
``available_subprotocols``; ``accept()``    the protocol opened as ``accept()`` would (see
changes nothing else when it negotiates     :func:`negotiates_nothing`, :func:`open_checked`)
nothing
``websockets.speedups.apply_mask``          fast path: C unmasking (``websockets.utils``'
                                            pure-Python twin where the C one is missing)
``Protocol.recv_frame`` for a final data    fast path: skipping the parser for such a frame
frame only appends it to ``events``         skips nothing else
``Protocol.extensions``                     the permessage-deflate extension ``accept()``
                                            negotiated (its class and its ``encode`` /
                                            ``decode`` are public; where it lives is not)
``PerMessageDeflate.local_no_context_       which compressor the server's messages need: the
takeover``, ``local_max_window_bits``,      process's (no context) or the connection's; a
``decode_cont_data``                        fragmented message being inflated (the fast path
                                            must not check its compressed bytes as UTF-8)
==========================================  ===================================================

Every row was checked on websockets 15.0.1 and 17.4, the ends of the range
``setup.cfg`` declares (``>=15.0.1,<18``); ``scripts/test.sh`` runs the
protocol and connection tests on both. Two names differ between them
(``cur_size``/``current_size``, ``max_size``/``max_message_size``): on 15
the protocol classes here get 17's names as properties, so the rest of the
code reads one set of names. One public difference lives here too:
:data:`REQUEST_HAS_METHOD` (17's ``Request`` has a ``method``).

:func:`check` verifies every assumption above on the installed websockets,
by running small protocol exchanges, and returns what does not hold.
``tests/test_websockets_internals.py`` asserts it returns nothing. **This
module also runs it at import and refuses to load** (``ImportError`` naming
each broken assumption) rather than fall back, because:

* two of the internals have no public equivalent at all (restarting the
  parser after the ``101``, the ``recv_frame`` hook): without them a
  connection cannot work, and would fail at its first frame instead of at
  deploy time;
* the others would degrade silently: a fast path that never triggers is a
  server at half speed that nobody notices, and a fast path that triggers
  where it should not would corrupt messages. A fallback would also be a
  second code path that no test runs;
* it costs about half a millisecond, once per process.

With the upper bound in ``setup.cfg`` only a forced install (``--no-deps``,
a distribution's package) can meet an untested websockets; then it works if
the assumptions still hold, and says exactly what changed if they do not.

.. _websockets: https://websockets.readthedocs.io/
"""

from __future__ import annotations

import base64
import codecs
import copy
import dataclasses
import logging
import uuid
import zlib
from typing import TYPE_CHECKING, Any, Callable, Dict, Generator, List, Optional, Tuple, Union

from websockets.datastructures import Headers
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import Protocol, Side, State
from websockets.server import ServerProtocol
from websockets.streams import StreamReader  # an undocumented module (15.0.1, 17.4)
from websockets.version import version as websockets_version

try:  # C unmasking (15.0.1, 17.4); its pure-Python twin where it is missing (PyPy)
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

__all__ = [
    "CHECKED_ON",
    "NO_LIMIT",
    "REQUEST_HAS_METHOD",
    "TESTED_RANGE",
    "ProtocolState",
    "ValidatingServerProtocol",
    "apply_mask",
    "check",
    "negotiated_deflate",
    "open_client_protocol",
    "restart_parser",
]

_OPEN = State.OPEN
_CLOSED = State.CLOSED
#: One ``Protocol.id`` for every connection of the process (see restart_parser).
_SHARED_ID = uuid.UUID(int=0)
#: The extension list of every connection that negotiated none (never extended).
_NO_EXTENSIONS: List[Any] = []
_utf8_decoder = codecs.getincrementaldecoder("utf-8")

# Silent and not registered: the check's handshakes must not reach the app's logs.
_check_logger = logging.Logger("flask_websocket._websockets_internals.check")
_check_logger.disabled = True


class _NoParser(Generator[None, None, None]):
    """``Protocol.parser`` while a server connection waits between frames without one.

    Nothing steps it: :class:`ValidatingServerProtocol` starts a parser
    before websockets' ``receive_data`` and ``receive_eof`` would (see
    :func:`restart_parser`).
    """

    __slots__ = ()

    def send(self, value: None) -> None:
        raise RuntimeError("websockets' parser was not started: feed ValidatingServerProtocol")

    def throw(self, *args: Any) -> None:
        self.send(None)


#: The parser of every connection that has none now (see restart_parser).
_NO_PARSER = _NoParser()

#: The code object of ``StreamReader.at_eof`` (15.0.1, 17.4): where
#: ``Protocol.parse()`` waits between two frames, ``yield from
#: self.reader.at_eof()``, and nowhere else while OPEN.
_AT_EOF_CODE = StreamReader.at_eof.__code__
#: The code object of ``Protocol.parse`` (15.0.1, 17.4), the frame parser.
_PARSE_CODE = Protocol.parse.__code__

#: The versions every internal here was checked on: the ends of TESTED_RANGE.
CHECKED_ON = ("15.0.1", "17.4")
#: setup.cfg's requirement, which scripts/test.sh tests at both ends.
TESTED_RANGE = "websockets>=15.0.1,<18"

#: What :meth:`ProtocolState.simple_frame_limit` returns when there is no size limit.
NO_LIMIT = 2**63

#: 17.0 renamed ``cur_size`` and ``max_size`` to ``current_size`` and
#: ``max_message_size`` (and added ``max_fragment_size``); 15.0.1 has the old names.
NAMES_BEFORE_17 = not hasattr(Protocol(Side.SERVER, logger=_check_logger), "current_size")

#: 17's ``Request`` has a ``method`` and ``accept()`` answers anything but
#: GET with 405; 15.0.1's has none (a public difference, kept here with the rest).
REQUEST_HAS_METHOD = "method" in {f.name for f in dataclasses.fields(Request)}


class _Names17:
    """On websockets 15, 17's names for the two size attributes."""

    if not TYPE_CHECKING and NAMES_BEFORE_17:

        @property
        def current_size(self):
            return self.cur_size

        @current_size.setter
        def current_size(self, value):
            self.cur_size = value

        @property
        def max_message_size(self):
            return self.max_size


class ValidatingServerProtocol(_Names17, ServerProtocol):
    """websockets' server protocol, with two changes to how frames are taken.

    * Text is checked for valid UTF-8 as each frame is parsed, so that a bad
      frame fails the connection (1007) before any frame after it is looked
      at, exactly as the fast path of
      :class:`~flask_websocket.protocol.MessageProtocol` does.
    * A close frame between fragments is a normal close: RFC 6455 (5.4)
      allows control frames in the middle of a fragmented message, and a
      close ends the connection, dropping the unfinished message.
      websockets fails the connection with 1002 instead (Autobahn|Testsuite
      case 7.1.5).

    Both hook ``Protocol.recv_frame``, which ``Protocol.parse`` calls for each
    frame before adding it to the events (15.0.1, 17.4).

    And while it waits between two frames it may have no parser at all
    (:func:`restart_parser`, :meth:`ProtocolState.drop_parser`):
    ``receive_data`` and ``receive_eof`` start one first.
    """

    #: Checks a fragmented text message as it arrives (its output is unused).
    text_decoder: Optional[codecs.IncrementalDecoder] = None
    #: True inside a fragmented message that is compressed (permessage-deflate).
    compressed_fragments = False

    def recv_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        # (A text or continuation frame out of place is websockets' to
        # reject as a protocol error, so only frames in place are decoded.
        # Compressed frames come here inflated: text is checked as text.)
        if opcode is Opcode.TEXT and self.current_size is None:
            if frame.fin:
                bytes(frame.data).decode()  # raises UnicodeDecodeError: 1007
            else:
                self.text_decoder = _utf8_decoder()
                self.text_decoder.decode(frame.data)
                if self.extensions:
                    self.compressed_fragments = _inflating(self)
        elif opcode is Opcode.CONT and self.current_size is not None:
            if self.text_decoder is not None:
                self.text_decoder.decode(frame.data, frame.fin)
                if frame.fin:
                    self.text_decoder = None
            if frame.fin:
                self.compressed_fragments = False
        elif opcode is Opcode.BINARY and not frame.fin and self.extensions:
            self.compressed_fragments = _inflating(self)
        elif opcode is Opcode.CLOSE:
            self.current_size = None
            self.text_decoder = None
            self.compressed_fragments = False
        Protocol.recv_frame(self, frame)

    def receive_data(self, data: Union[bytes, bytearray]) -> None:
        if self.parser is _NO_PARSER:
            _start_parser(self)
        Protocol.receive_data(self, data)

    def receive_eof(self) -> None:
        if self.parser is _NO_PARSER:
            _start_parser(self)
        Protocol.receive_eof(self)


def _inflating(ws: Protocol) -> bool:
    """True when the fragmented message just begun is compressed.

    ``PerMessageDeflate.decode_cont_data`` (15.0.1, 17.4): set by the first
    frame of a compressed fragmented message, before ``recv_frame`` sees it.
    """
    return any(getattr(extension, "decode_cont_data", False) for extension in ws.extensions)


def negotiated_deflate(ws: Protocol) -> Optional[PerMessageDeflate]:
    """The permessage-deflate extension the handshake agreed on, if any.

    ``Protocol.extensions``: set by ``ServerProtocol.accept()`` (15.0.1, 17.4).
    """
    for extension in ws.extensions:
        if isinstance(extension, PerMessageDeflate):
            return extension
    return None


class _ClientProtocol(_Names17, Protocol):
    """websockets' base protocol, on the client side (17's names on 15)."""


def open_client_protocol(max_size: Optional[int], logger: logging.Logger) -> Protocol:
    """A client-side protocol already in OPEN state (for tests and tools)."""
    return _ClientProtocol(Side.CLIENT, state=_OPEN, max_size=max_size, logger=logger)


def restart_parser(ws: ValidatingServerProtocol) -> None:
    """Parse frames from now on: call after ``accept()`` answered ``101``.

    The server's parser started in CONNECTING state, waiting for an HTTP
    request that uWSGI already parsed. The base class's ``parse()`` reads
    frames only (one generator less than ``ServerProtocol.parse``, which
    would delegate to it). ``Protocol.parser`` and ``Protocol.parse``: 15.0.1, 17.4.

    The new parser is only started by the first bytes the fast path leaves
    to websockets (:meth:`ValidatingServerProtocol.receive_data`): the
    frames of most connections never need it, and the two generators of a
    parser waiting between frames (``parse()`` and ``at_eof()``) take some
    440 bytes per idle connection.
    """
    ws.parser = _NO_PARSER
    # Per-connection objects websockets keeps for nothing here (an idle
    # connection should cost little): its ``id`` (a UUID, for its own log
    # lines, which this package does not use) and an empty extension list,
    # which nothing extends after the handshake (``Protocol.id``,
    # ``Protocol.extensions``: 15.0.1, 17.4).
    ws.id = _SHARED_ID
    if not ws.extensions:
        ws.extensions = _NO_EXTENSIONS


def negotiates_nothing(ws: ValidatingServerProtocol) -> bool:
    """True when ``accept()`` could agree on nothing beyond the connection itself.

    No origins to check, no extension and no subprotocol offered by the
    server (``ServerProtocol.origins``, ``available_extensions``,
    ``available_subprotocols``: 15.0.1, 17.4; websockets then does not parse
    the client's ``Sec-WebSocket-Extensions`` at all). Such a handshake can
    be checked without building a websockets ``Request``: see
    :meth:`flask_websocket.protocol.ServerProtocol.accept_environ`.
    """
    return ws.origins is None and not ws.available_extensions and not ws.available_subprotocols


#: ``ServerProtocol.accept_called``: set by accept() in 17.4, absent in 15.0.1.
_HAS_ACCEPT_CALLED = hasattr(ValidatingServerProtocol(logger=_check_logger), "accept_called")


def open_checked(ws: ValidatingServerProtocol) -> None:
    """Open a server protocol whose handshake the caller checked and answered.

    What ``accept()`` followed by ``send_response()`` of its ``101`` leaves,
    for a handshake that negotiated nothing (:func:`negotiates_nothing`):
    the state OPEN, ``accept_called`` (17.4; 15.0.1 has no such attribute),
    and no output (the response is uWSGI's to write).
    :func:`_check_open_checked` compares the two.
    """
    if _HAS_ACCEPT_CALLED:
        ws.accept_called = True
    ws.state = _OPEN
    restart_parser(ws)


class ProtocolState:
    """Reads of a websockets protocol's state, the fast way.

    The base of :class:`~flask_websocket.protocol.MessageProtocol`: a base
    class rather than helper functions, so that the hot path pays no extra
    call for going through this module.
    """

    __slots__ = ("_ws", "failure_held")

    def __init__(self, ws: Protocol) -> None:
        self._ws = ws
        #: True while the close frame of a failure is held back (see
        #: :meth:`~flask_websocket.protocol.MessageProtocol.hold_failure`):
        #: websockets is CLOSING, but the connection is still open for sending.
        self.failure_held = False

    @property
    def open(self) -> bool:
        """True while messages can be sent: no close frame sent or received.

        (A failure held back keeps it open until released.)
        """
        return self._ws._state is _OPEN or self.failure_held  # _state: 15.0.1, 17.4

    @property
    def closed(self) -> bool:
        """True once the connection is fully closed (EOF received)."""
        return self._ws._state is _CLOSED

    @property
    def close_rcvd(self) -> Optional[Close]:
        """The close frame received from the peer, if any (15.0.1, 17.4)."""
        return self._ws.close_rcvd

    @property
    def close_sent(self) -> Optional[Close]:
        """The close frame sent to the peer, if any (15.0.1, 17.4)."""
        return self._ws.close_sent

    @property
    def subprotocol(self) -> Optional[str]:
        """The subprotocol chosen in the handshake, or ``None`` (15.0.1, 17.4)."""
        return self._ws.subprotocol

    def has_output(self) -> bool:
        """True when :meth:`data_to_send` has something (``writes``: 15.0.1, 17.4)."""
        return bool(self._ws.writes)

    def simple_frame_limit(self) -> int:
        """The largest payload the fast path may read now, or -1 if it may not read.

        It may read when the parser is OPEN and parked between two frames:
        nothing left in ``reader.buffer``, not inside a fragmented message
        (``current_size`` is ``None``), and the parser waiting in
        ``StreamReader.at_eof`` (bytes of a frame header already taken by
        ``Frame.parse`` leave the buffer empty too). All: 15.0.1, 17.4.
        """
        ws = self._ws
        if ws.reader.buffer or ws.current_size is not None or ws._state is not _OPEN:
            return -1
        parser = ws.parser
        if parser is not _NO_PARSER:
            waiting_in = parser.gi_yieldfrom  # type: ignore[attr-defined]
            if waiting_in is None or waiting_in.gi_code is not _AT_EOF_CODE:
                return -1
        limit: Optional[int] = ws.max_message_size
        return NO_LIMIT if limit is None else limit

    def parked_between_frames(self) -> bool:
        """True when the parser has taken every whole frame and holds no byte of the next.

        As :meth:`simple_frame_limit` checks it (``reader.buffer``, the parser
        waiting in ``StreamReader.at_eof``: 15.0.1, 17.4), but inside a
        fragmented message too.
        """
        ws = self._ws
        if ws.reader.buffer:
            return False
        parser = ws.parser
        if parser is _NO_PARSER:
            return True
        waiting_in = parser.gi_yieldfrom  # type: ignore[attr-defined]
        return waiting_in is not None and waiting_in.gi_code is _AT_EOF_CODE

    def drop_parser(self) -> None:
        """Let go of a server connection's parser if it waits between two frames.

        The next bytes websockets gets start a new one, which goes on
        exactly where this one was: ``parse()`` keeps nothing of its own
        from one frame to the next (checked by :func:`check`). Not the
        parser that discards what comes after a close (``discard()``).
        """
        ws = self._ws
        if (
            isinstance(ws, ValidatingServerProtocol)
            and getattr(ws.parser, "gi_code", None) is _PARSE_CODE
            and self.parked_between_frames()
        ):
            ws.parser = _NO_PARSER

    def text_fragments_state(self) -> Optional[Tuple[bytes, int]]:
        """Inside a fragmented text message, the UTF-8 decoder's state after its last whole frame.

        (``getstate()`` of :class:`ValidatingServerProtocol`'s decoder, ours,
        not websockets'.) ``None`` outside a fragmented text message.
        """
        ws = self._ws
        decoder: Optional[codecs.IncrementalDecoder] = getattr(ws, "text_decoder", None)
        if decoder is None or getattr(ws, "compressed_fragments", False):
            return None  # (the bytes of a compressed message are not its text)
        return decoder.getstate()


def _start_parser(ws: Protocol) -> None:
    ws.parser = Protocol.parse(ws)
    next(ws.parser)


# -- the check -----------------------------------------------------------------


def _handshake_headers(**extra: str) -> Headers:
    headers = Headers()
    headers["Host"] = "localhost"
    headers["Upgrade"] = "websocket"
    headers["Connection"] = "Upgrade"
    headers["Sec-WebSocket-Key"] = base64.b64encode(b"0123456789abcdef").decode()
    headers["Sec-WebSocket-Version"] = "13"
    for name, value in extra.items():
        headers[name] = value
    return headers


def _open_server(
    max_size: Optional[int] = 2**20,
    subprotocols: Optional[List[str]] = None,
    extra: Optional[Dict[str, str]] = None,
    extensions: Optional[List[ServerPerMessageDeflateFactory]] = None,
) -> ValidatingServerProtocol:
    ws = ValidatingServerProtocol(
        subprotocols=subprotocols,  # type: ignore[arg-type]
        extensions=extensions,
        max_size=max_size,
        logger=_check_logger,
    )
    headers = _handshake_headers(**(extra or {}))
    request = Request("/", headers, method="GET") if REQUEST_HAS_METHOD else Request("/", headers)
    response = ws.accept(request)
    assert response.status_code == 101, f"handshake answered {response.status_code}"
    ws.send_response(response)
    ws.data_to_send()
    restart_parser(ws)
    return ws


def _client_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A masked client frame (mask 1, 2, 3, 4), payload under 126 bytes."""
    mask = b"\x01\x02\x03\x04"
    first = (0x80 if fin else 0) | opcode
    return bytes((first, 0x80 | len(payload))) + mask + apply_mask(payload, mask)


def _at_boundary(ws: Protocol) -> bool:
    state = ProtocolState(ws)
    return state.simple_frame_limit() >= 0


def _check_state_attribute() -> None:
    ws = Protocol(Side.SERVER, logger=_check_logger)
    assert ws._state is ws.state is _OPEN, "Protocol._state is not what Protocol.state returns"
    ws.send_close(1000)
    assert ws._state is ws.state is State.CLOSING, "Protocol._state does not follow the state"


def _check_writes() -> None:
    ws = Protocol(Side.SERVER, logger=_check_logger)
    assert ws.writes == [], "a new Protocol has output in Protocol.writes"
    ws.send_ping(b"ping")
    pending = list(ws.writes)
    assert pending, "Protocol.writes stays empty after send_ping()"
    assert ws.data_to_send() == pending, "data_to_send() does not return Protocol.writes"
    assert not ws.writes, "Protocol.writes is not emptied by data_to_send()"


def _check_parser_parks_between_frames() -> None:
    ws = _open_server()
    assert isinstance(ws.reader, StreamReader), "Protocol.reader is not a StreamReader"
    assert isinstance(ws.reader.buffer, bytearray), "StreamReader.buffer is not a bytearray"
    assert _at_boundary(ws), "after restart_parser(), the parser is not waiting in at_eof"
    frame = _client_frame(0x1, b"hello")
    ws.receive_data(frame[:2])  # the header: taken by Frame.parse, buffer empty again
    assert not ws.reader.buffer, "StreamReader.buffer keeps bytes Frame.parse has read"
    assert not _at_boundary(ws), "in the middle of a frame, the parser looks parked in at_eof"
    ws.receive_data(frame[2:])
    frames = [(e.opcode, bytes(e.data)) for e in ws.events_received() if isinstance(e, Frame)]
    assert frames == [(Opcode.TEXT, b"hello")], frames
    assert _at_boundary(ws), "after a whole frame, the parser is not waiting in at_eof"
    ws.receive_data(frame[:3])
    assert ws.reader.buffer, "StreamReader.buffer does not hold a partial mask"
    assert not ProtocolState(ws).parked_between_frames(), "parked with a partial mask read"


def _check_sizes() -> None:
    ws = _open_server(max_size=1000)
    assert ws.max_message_size == 1000, "max_message_size/max_size is not the limit given"
    assert getattr(ws, "max_fragment_size", None) is None, "a fragment size limit is set"
    assert ProtocolState(ws).simple_frame_limit() == 1000, "simple_frame_limit is not the limit"
    assert ws.current_size is None, "current_size/cur_size is set outside a fragmented message"
    ws.receive_data(_client_frame(0x2, b"abc", fin=False))
    assert ws.current_size == 3, "current_size/cur_size does not count a fragmented message"
    assert not _at_boundary(ws), "the fast path would read inside a fragmented message"
    assert ProtocolState(ws).parked_between_frames(), "not parked between two fragments"
    ws.receive_data(_client_frame(0x0, b"de"))
    assert ws.current_size is None, "current_size/cur_size is not reset after the last fragment"
    assert _open_server(max_size=None).max_message_size is None, "no limit is not None"


def _check_recv_frame_hook() -> None:
    ws = _open_server()
    ws.receive_data(_client_frame(0x1, b"ok\xe6", fin=False))
    ws.receive_data(_client_frame(0x0, b"\x97"))  # invalid UTF-8 across two fragments
    assert ws.close_sent is not None and ws.close_sent.code == 1007, (
        "recv_frame() is not called for every frame (no 1007 for invalid UTF-8)"
    )
    ws = _open_server()
    ws.receive_data(
        _client_frame(0x1, b"fragment", fin=False)
        + _client_frame(0x8, Close(1000, "").serialize())
        + _client_frame(0x0, b"rest")
    )
    assert ws.close_sent is not None and ws.close_sent.code == 1000, (
        "a close frame between fragments is not a normal close (recv_frame hook)"
    )


def _snapshot(ws: Protocol) -> Dict[str, Any]:
    # (Not the parser: the fast path leaves it alone, and whether there is one
    # is this module's business, see _check_parser_starts_anew.)
    return {
        name: copy.copy(value) if isinstance(value, (list, bytearray, dict)) else value
        for name, value in vars(ws).items()
        if name not in ("events", "parser")
    }


def _outcome(ws: Protocol) -> Tuple[Any, ...]:
    events = ws.events_received()
    frames = [(e.opcode, e.fin, bytes(e.data)) for e in events if isinstance(e, Frame)]
    return (frames, ws.data_to_send(), ws._state, ws.current_size, ws.close_rcvd, ws.close_sent)


def _check_parser_starts_anew() -> None:
    """A parser dropped between frames and started again parses on as the first one."""
    fragmented = [
        _client_frame(0x1, b"frag", fin=False),
        _client_frame(0x9, b"ping"),
        _client_frame(0x0, b"ment\xc3", fin=False),
        _client_frame(0x0, b"\xa9"),
        _client_frame(0x2, b"binary"),
    ]
    endings: List[List[bytes]] = [[], [_client_frame(0x8, Close(1000, "").serialize())]]
    for ending in endings:
        for eof in (False, True):
            kept, dropped = _open_server(), _open_server()
            kept.receive_data(b"")  # a parser that is never dropped
            for data in [*fragmented, *ending]:
                kept.receive_data(data)
                ProtocolState(dropped).drop_parser()
                if dropped._state is _OPEN:
                    assert dropped.parser is _NO_PARSER, "drop_parser() kept the parser"
                dropped.receive_data(data)
                assert dropped.parser is not _NO_PARSER, "receive_data() started no parser"
                assert _outcome(dropped) == _outcome(kept), (
                    f"a parser started anew between frames parses {data!r} differently"
                )
            if eof:
                ProtocolState(dropped).drop_parser()
                kept.receive_eof()
                dropped.receive_eof()
                assert _outcome(dropped) == _outcome(kept), (
                    "a parser started anew at the end of the stream ends it differently"
                )


def _check_simple_frames_change_nothing() -> None:
    ws = _open_server()
    before = _snapshot(ws)
    ws.receive_data(_client_frame(0x1, b"text") + _client_frame(0x2, b"binary"))
    assert len(ws.events_received()) == 2, "two final data frames are not two events"
    after = _snapshot(ws)
    changed = sorted(n for n in before.keys() | after.keys() if before.get(n) != after.get(n))
    assert not changed, (
        "parsing a final data frame changes Protocol state the fast path would not: "
        + ", ".join(changed)
    )


def _check_close_frames() -> None:
    ws = _open_server()
    ws.receive_data(_client_frame(0x8, Close(4000, "bye").serialize()))
    assert ws.close_rcvd == Close(4000, "bye"), "Protocol.close_rcvd is not the peer's close"
    assert ws.close_sent == Close(4000, "bye"), "Protocol.close_sent is not the echoed close"
    assert ws.data_to_send()[-1] == b"", "a server does not half-close after echoing a close"
    ws.receive_eof()
    assert ws._state is _CLOSED, "receive_eof() after a close does not close"
    ws.receive_eof()  # idempotent (15.0.1, 17.4): MessageProtocol relies on it


def _check_subprotocol() -> None:
    ws = _open_server(subprotocols=["chat"], extra={"Sec-WebSocket-Protocol": "chat"})
    assert ws.subprotocol == "chat", "ServerProtocol.subprotocol is not the one chosen"


def _check_open_checked() -> None:
    accepted = _open_server(max_size=1000)
    checked = ValidatingServerProtocol(max_size=1000, logger=_check_logger)
    assert negotiates_nothing(checked), "a server with no options negotiates something"
    with_options = ValidatingServerProtocol(subprotocols=["chat"], logger=_check_logger)  # type: ignore[list-item]
    assert not negotiates_nothing(with_options), "a server with a subprotocol negotiates nothing"
    open_checked(checked)
    before, after = _snapshot(accepted), _snapshot(checked)
    # (A StreamReader each, compared by what they hold.)
    assert vars(accepted.reader) == vars(checked.reader), "the two readers differ"
    names = (before.keys() | after.keys()) - {"reader"}
    changed = sorted(n for n in names if before.get(n) != after.get(n))
    assert not changed, "accept() leaves a state open_checked() does not: " + ", ".join(changed)
    frames = _client_frame(0x1, b"text") + _client_frame(0x8, Close(1000, "").serialize())
    accepted.receive_data(frames)
    checked.receive_data(frames)
    assert _outcome(accepted) == _outcome(checked), "open_checked() parses differently"


def _check_apply_mask() -> None:
    masked = apply_mask(b"\x01\x02\x03\x04\x05", b"\x01\x02\x03\x04")
    assert masked == b"\x00\x00\x00\x00\x04", "apply_mask does not unmask"
    assert type(masked) is bytes, "apply_mask does not return bytes"


def _check_deflate() -> None:
    factory = ServerPerMessageDeflateFactory(
        server_no_context_takeover=True, client_no_context_takeover=True
    )
    plain = _open_server()
    assert negotiated_deflate(plain) is None, "deflate negotiated without being configured"
    ws = _open_server(
        max_size=1000,
        extensions=[factory],
        extra={"Sec-WebSocket-Extensions": "permessage-deflate; server_max_window_bits=10"},
    )
    deflate = negotiated_deflate(ws)
    assert deflate is not None, "Protocol.extensions does not hold the negotiated deflate"
    assert deflate.local_no_context_takeover is True, "local_no_context_takeover is not set"
    assert deflate.local_max_window_bits == 10, "local_max_window_bits is not the one agreed"
    compressor = zlib.compressobj(wbits=-15)
    data = compressor.compress(b"x" * 600) + compressor.flush(zlib.Z_SYNC_FLUSH)
    first, rest = data[:4], data[4:-4]
    ws.receive_data(_client_frame(0x41, first, fin=False))  # RSV1 + text, not final
    assert getattr(deflate, "decode_cont_data", None) is True, "decode_cont_data is not set"
    assert ws.compressed_fragments, "a compressed fragmented message is not seen as such"
    assert ProtocolState(ws).text_fragments_state() is None, "compressed bytes would be decoded"
    ws.receive_data(_client_frame(0x0, rest))
    texts = [bytes(e.data) for e in ws.events_received() if isinstance(e, Frame)]
    assert b"".join(texts) == b"x" * 600, "a compressed message is not inflated"
    assert not ws.compressed_fragments, "compressed_fragments outlives its message"
    bomb = zlib.compressobj(wbits=-15)
    data = bomb.compress(b"\0" * 100_000) + bomb.flush(zlib.Z_SYNC_FLUSH)
    ws.receive_data(_client_frame(0x42, data[:-4]))
    assert ws.close_sent is not None and ws.close_sent.code == 1009, (
        "a message inflating past max_size does not close with 1009"
    )


def _check_client_protocol() -> None:
    ws = open_client_protocol(None, _check_logger)
    assert ws._state is _OPEN and ws.current_size is None and ws.max_message_size is None, (
        "the client protocol's state or sizes are not where they are read"
    )


_CHECKS: Tuple[Tuple[str, Callable[[], None]], ...] = (
    ("Protocol._state", _check_state_attribute),
    ("Protocol.writes", _check_writes),
    ("parser parked in StreamReader.at_eof between frames", _check_parser_parks_between_frames),
    ("current_size and max_message_size", _check_sizes),
    ("Protocol.recv_frame hook", _check_recv_frame_hook),
    ("fast path skips no state", _check_simple_frames_change_nothing),
    ("a parser started anew between frames", _check_parser_starts_anew),
    ("close_rcvd and close_sent", _check_close_frames),
    ("ServerProtocol.subprotocol", _check_subprotocol),
    ("a handshake that negotiates nothing", _check_open_checked),
    ("apply_mask", _check_apply_mask),
    ("permessage-deflate", _check_deflate),
    ("client protocol", _check_client_protocol),
)


def check() -> List[str]:
    """Verify every assumption of this module on the installed websockets.

    Returns one line per assumption that does not hold (empty when all
    hold), each naming it and what was seen instead.
    """
    problems = []
    for name, run in _CHECKS:
        try:
            run()
        except Exception as exc:
            problems.append(f"{name}: {type(exc).__name__}: {exc}")
    return problems


def _refuse_if_incompatible() -> None:
    problems = check()
    if problems:
        raise ImportError(
            f"Flask-WebSocket cannot use websockets {websockets_version}: internals it "
            f"relies on changed (checked on {' and '.join(CHECKED_ON)}; it requires "
            f"{TESTED_RANGE}):\n  " + "\n  ".join(problems)
        )


_refuse_if_incompatible()
