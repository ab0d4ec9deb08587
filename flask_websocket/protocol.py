"""The WebSocket protocol after the handshake, with no I/O.

Parsing, validation of incoming frames and the close handshake come from the
sans-I/O ``Protocol`` of the `websockets`_ library, which is well kept,
C-accelerated where it matters (unmasking) and scores near-perfectly on the
Autobahn|Testsuite. This module adds what that layer leaves to its callers:

* reassembling fragmented messages and decoding text with an incremental
  UTF-8 decoder (invalid UTF-8 closes the connection with 1007), as soon as
  the bad bytes arrive, even in the middle of a frame;
* holding a failure back (:meth:`MessageProtocol.hold_failure`) so that the
  messages that arrived valid before the bad frame can be answered first;
* the opening handshake checks, mapped from a WSGI environ;
* a fast serialiser for the server's own (unmasked) data frames, so that a
  frame can be built once and written to many sockets.

Nothing here touches a socket: :class:`ServerProtocol` takes bytes in and
hands bytes out. ``connection.py`` does the I/O.

.. _websockets: https://websockets.readthedocs.io/
"""

from __future__ import annotations

import base64
import binascii
import codecs
import email.utils
import logging
import re
import struct
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import (
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from websockets.datastructures import Headers
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import Protocol as _WebsocketsProtocol
from websockets.protocol import State
from websockets.utils import accept_key

from ._websockets_internals import (
    REQUEST_HAS_METHOD,
    ProtocolState,
    ValidatingServerProtocol,
    apply_mask,
    negotiated_deflate,
    negotiates_nothing,
    open_checked,
    open_client_protocol,
    restart_parser,
)
from .close_codes import OK_CLOSE_CODES, CloseCode
from .exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "CloseStarted",
    "HandshakeResponse",
    "Message",
    "PongReceived",
    "ProtocolEvent",
    "ServerProtocol",
    "encode_frame",
    "encode_message",
]

#: A WebSocket message as the handler sees it: text is ``str``, binary ``bytes``.
Message = Union[str, bytes]

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_utf8_decoder = codecs.getincrementaldecoder("utf-8")
_pack_short = struct.Struct("!BBH").pack
_pack_long = struct.Struct("!BBQ").pack

# websockets logs every opened and closed connection at INFO; that is our
# job (or uWSGI's), so give it a logger of its own that users can tune.
_protocol_logger = logging.getLogger("flask_websocket.protocol")


class PongReceived(NamedTuple):
    """Event: a pong frame arrived (an answer to our ping, or unsolicited)."""

    payload: bytes


class CloseStarted(NamedTuple):
    """Event: the closing handshake began while reading.

    Either the peer sent a close frame (``by_peer``), which was echoed, or
    what it sent broke the protocol and the connection was failed with
    ``code``. Either way the close frame and the end of stream (``b""``)
    wait in :meth:`MessageProtocol.data_to_send`, and the peer is expected
    to close the TCP connection.
    """

    #: The code of the close frame sent (the echo, or the failure's code).
    code: int
    #: True when the peer sent a close frame first.
    by_peer: bool


#: What :meth:`MessageProtocol.receive` reports besides messages.
ProtocolEvent = Union[PongReceived, CloseStarted]

_NO_EVENTS: Tuple[ProtocolEvent, ...] = ()
_DATA_OPCODES = frozenset((Opcode.TEXT, Opcode.BINARY, Opcode.CONT))


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """Serialise one unmasked, final frame, as a server sends it.

    Server frames carry no mask, so the same bytes can be written to every
    connection of a broadcast. ``payload`` must already be encoded (UTF-8 for
    text).
    """
    length = len(payload)
    first = 0x80 | opcode
    if length < 126:
        return bytes((first, length)) + payload
    if length < 65536:
        return _pack_short(first, 126, length) + payload
    return _pack_long(first, 127, length) + payload


def encode_message(message: object, operation: str = "send") -> Tuple[int, bytes]:
    """``(opcode, payload)`` of a message: ``str`` is text, bytes-like is binary.

    Raises:
        TypeError: ``message`` is neither (``operation`` names the caller).
    """
    if isinstance(message, str):
        return OP_TEXT, message.encode()
    if isinstance(message, (bytes, bytearray, memoryview)):
        return OP_BINARY, bytes(message)
    raise TypeError(
        f"{operation}() takes str (text) or bytes (binary), not {type(message).__name__}"
    )


@dataclass(frozen=True)
class HandshakeResponse:
    """The answer to an opening handshake: 101, or an HTTP error to send instead."""

    status: int
    reason: str
    headers: List[Tuple[str, str]]
    body: bytes = b""

    @property
    def accepted(self) -> bool:
        """True when the handshake succeeded (status 101)."""
        return self.status == 101


def request_headers_from_environ(environ: Mapping[str, object]) -> Headers:
    """Rebuild the HTTP request headers of a WSGI environ."""
    headers = Headers()
    for key, value in environ.items():
        if key.startswith("HTTP_") and isinstance(value, str):
            headers[key[5:].replace("_", "-").title()] = value
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        value = environ.get(key)
        if isinstance(value, str) and value:
            headers[key.replace("_", "-").title()] = value
    return headers


#: A header value websockets' ``Headers`` takes (``websockets.datastructures``, 17.4).
_valid_header_values = re.compile(r"[\x09\x20-\x7e\x80-\xff]*").fullmatch
#: A ``Connection`` header that is a plain list of tokens (RFC 7230), which
#: websockets' ``parse_connection`` parses without complaint.
_TOKEN = r"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_token_list = re.compile(rf"{_TOKEN}(?:[ \t]*,[ \t]*{_TOKEN})*").fullmatch


def _plain_handshake_accept(environ: Mapping[str, object]) -> Optional[str]:
    """The ``Sec-WebSocket-Accept`` of a plainly valid handshake, else ``None``.

    Plainly valid: every check websockets' ``accept()`` makes passes in the
    common form (``Upgrade: websocket``, ``Connection`` a list of tokens
    with ``Upgrade`` in it, a key of 16 bytes in base64, version 13, no
    ``Sec-WebSocket-Protocol``, every header value one websockets takes).
    Anything else, valid or not, is left to websockets, which then answers
    exactly as before; ``tests/test_protocol.py`` compares the two on a set
    of valid and broken handshakes.
    """
    upgrade = environ.get("HTTP_UPGRADE")
    connection = environ.get("HTTP_CONNECTION")
    key = environ.get("HTTP_SEC_WEBSOCKET_KEY")
    if (
        not isinstance(upgrade, str)
        or upgrade.lower() != "websocket"
        or environ.get("HTTP_SEC_WEBSOCKET_VERSION") != "13"
        or "HTTP_SEC_WEBSOCKET_PROTOCOL" in environ
        or not isinstance(connection, str)
        or not isinstance(key, str)
        or _token_list(connection) is None
        or "upgrade" not in [token.strip() for token in connection.lower().split(",")]
    ):
        return None
    try:
        if len(base64.b64decode(key.encode(), validate=True)) != 16:
            return None
    except (binascii.Error, UnicodeEncodeError):
        return None
    values = [
        value
        for name, value in environ.items()
        if isinstance(value, str) and (name.startswith("HTTP_") or name in _BODY_HEADERS)
    ]
    if _valid_header_values("".join(values)) is None:
        return None
    return accept_key(key)


_BODY_HEADERS = ("CONTENT_TYPE", "CONTENT_LENGTH")


class _TrackedFrame:
    """The frame the websockets parser is in the middle of (see :meth:`MessageProtocol._track`)."""

    __slots__ = ("decoder", "header", "mask", "received", "remaining")

    def __init__(self) -> None:
        #: The header's bytes while it is incomplete.
        self.header = b""
        #: Payload bytes still to come; -1 while the header is incomplete.
        self.remaining = -1
        self.mask = b""
        #: Payload bytes received (where the mask continues).
        self.received = 0
        #: Checks text as it arrives (output unused); None for other frames.
        self.decoder: Optional[codecs.IncrementalDecoder] = None

    def start(self, first: int, text_state: Optional[Tuple[bytes, int]]) -> None:
        """The header is in: check the payload if it is text.

        ``text_state``: inside a fragmented text message, the decoder's state
        after its last whole fragment (a continuation frame goes on from it).
        """
        if first & 0x40:  # RSV1: compressed (permessage-deflate), checked once inflated
            return
        opcode = first & 0x0F
        if opcode == OP_TEXT:
            self.decoder = _utf8_decoder()
        elif opcode == OP_CONTINUATION and text_state is not None:
            self.decoder = _utf8_decoder()
            self.decoder.setstate(text_state)


def _header(data: bytes) -> Optional[Tuple[int, int, int, bytes]]:
    """``(size, first byte, payload length, mask)`` of the frame header ``data`` begins with.

    ``None`` while ``data`` holds only part of it.
    """
    if len(data) < 2:
        return None
    second = data[1]
    length = second & 0x7F
    size = 2 if length < 126 else 4 if length == 126 else 10
    if length >= 126:
        if len(data) < size:
            return None
        length = int.from_bytes(data[2:size], "big")
    if second & 0x80:
        size += 4
    if len(data) < size:
        return None
    return size, data[0], length, bytes(data[size - 4 : size]) if second & 0x80 else b""


@dataclass
class _Reassembly:
    """A fragmented message being put back together."""

    # One growing buffer, not a list of fragments: a million one-byte
    # fragments must cost about a megabyte, not fifty.
    buffer: bytearray = field(default_factory=bytearray)
    #: Checks text as it arrives, to fail fast on invalid UTF-8 (output unused).
    decoder: Optional[codecs.IncrementalDecoder] = None


class MessageProtocol(ProtocolState):
    """One side of a WebSocket connection after the handshake, without I/O.

    Feed it bytes with :meth:`receive` (or :meth:`receive_data`) and
    :meth:`receive_eof`; it returns complete messages (``str`` or
    ``bytes``), and :meth:`receive` also the events a connection acts on:
    :class:`PongReceived` and :class:`CloseStarted`. Take what must be
    written with :meth:`data_to_send`: a list of byte strings, where an empty
    one means "half-close the connection (shut down the write side)".

    Pings are answered, close frames echoed and protocol violations turned
    into close frames with the right code, all inside :meth:`receive`.

    ``open``, ``closed``, ``close_rcvd``, ``close_sent``, ``subprotocol`` and
    :meth:`has_output` come from the base class, the one place that reads
    websockets' internals (:mod:`flask_websocket._websockets_internals`).
    """

    __slots__ = ("_fast_path", "_partial", "_tracked")

    def __init__(self, ws: _WebsocketsProtocol, fast_path: bool = False) -> None:
        super().__init__(ws)
        # Frames from clients are masked: the fast path reads only those.
        self._fast_path = fast_path
        self._partial: Optional[_Reassembly] = None
        # The frame the websockets parser is in the middle of (see _track).
        self._tracked: Optional[_TrackedFrame] = None

    # -- state ---------------------------------------------------------------

    def hold_failure(self) -> None:
        """Hold back the close frame of the failure :meth:`receive` just reported.

        The peer broke the protocol (a :class:`CloseStarted` with ``by_peer``
        false) after messages it sent valid, which the application has not
        answered yet. Until :meth:`release_failure`, the connection stays
        :attr:`open` for sending and :meth:`data_to_send` holds the close
        frame back; nothing more is read from the peer (what comes is
        discarded). :meth:`send_close` and :meth:`fail` release it.
        """
        self.failure_held = True

    def release_failure(self) -> None:
        """Let the held failure's close frame (and end of stream) go out."""
        self.failure_held = False

    def close_expected(self) -> bool:
        """True when the peer is expected to close the TCP connection soon."""
        return self._ws.close_expected()

    def closed_exception(self) -> ConnectionClosed:
        """The exception that tells the handler how the connection ended."""
        rcvd, sent = self.close_rcvd, self.close_sent
        sent_code = sent.code if sent is not None else None
        if rcvd is None:
            return ConnectionClosedError(CloseCode.ABNORMAL_CLOSURE, "", sent_code)
        if rcvd.code in OK_CLOSE_CODES and (sent_code is None or sent_code in OK_CLOSE_CODES):
            return ConnectionClosedOK(rcvd.code, rcvd.reason, sent_code)
        return ConnectionClosedError(rcvd.code, rcvd.reason, sent_code)

    # -- incoming ------------------------------------------------------------

    def receive_data(self, data: bytes) -> List[Message]:
        """Feed bytes read from the socket; return the messages they complete.

        The same as :meth:`receive`, for callers that need no events (a
        client in tests).
        """
        return self.receive(data)[0]

    def receive(self, data: bytes) -> Tuple[List[Message], Sequence[ProtocolEvent]]:
        """Feed bytes read from the socket: the messages they complete, and events.

        Events come in the order their frames came: a :class:`PongReceived`
        per pong frame, and one :class:`CloseStarted` when the connection
        leaves the OPEN state in this call (no messages come after it).
        """
        messages: List[Message] = []
        fast_path = self._fast_path
        if fast_path:
            limit = self.simple_frame_limit()
            if limit >= 0:
                consumed = self._receive_simple_frames(data, messages, limit)
                if consumed == len(data):
                    return messages, _NO_EVENTS
                if consumed < 0:  # invalid UTF-8: failed with 1007
                    return messages, (self._close_started(),)
                data = data[consumed:]
        ws = self._ws
        was_open = self.open
        ws.receive_data(data)
        fed = data
        events: List[ProtocolEvent] = []
        # Only frames once OPEN (no cast(): it would build List[Frame] per call).
        frames: List[Frame] = ws.events_received()  # type: ignore[assignment]
        for frame in frames:
            opcode = frame.opcode
            # Masked (client) frames come as bytes, unmasked ones as bytearray.
            data = frame.data if type(frame.data) is bytes else bytes(frame.data)
            if opcode is Opcode.TEXT:
                if frame.fin:
                    try:
                        messages.append(data.decode())
                    except UnicodeDecodeError as exc:
                        self._fail_utf8(exc)
                        break
                else:
                    self._partial = _Reassembly(decoder=_utf8_decoder())
                    if not self._add_fragment(data, False):
                        break
            elif opcode is Opcode.BINARY:
                if frame.fin:
                    messages.append(data)
                else:
                    self._partial = _Reassembly(bytearray(data))
            elif opcode is Opcode.CONT:
                if not self._add_fragment(data, frame.fin):
                    break
                if frame.fin:
                    messages.append(self._finish_fragments())
            elif opcode is Opcode.PONG:
                events.append(PongReceived(data))
            elif opcode is Opcode.CLOSE:
                self._partial = None  # an unfinished message is dropped
            # PING is answered and CLOSE echoed by the websockets layer.
        if fast_path and ws.state is State.OPEN:
            if self.parked_between_frames():  # every frame fed was whole
                self._tracked = None
                if self._partial is None and not any(f.opcode in _DATA_OPCODES for f in frames):
                    # Control frames only (a keepalive's pong), no message in
                    # progress: what comes next is most likely for the fast
                    # path, or nothing for a long while. An idle connection
                    # keeps no parser (see restart_parser).
                    self.drop_parser()
            else:  # what was fed ends inside a frame: check its text now
                self._track(fed)
        if was_open and not self.open:
            events.append(self._close_started())
        return messages, events

    def _close_started(self) -> CloseStarted:
        sent = self.close_sent
        return CloseStarted(
            sent.code if sent is not None else CloseCode.ABNORMAL_CLOSURE,
            self.close_rcvd is not None,
        )

    def _receive_simple_frames(self, data: bytes, messages: List[Message], limit: int) -> int:
        """Read the common frames without the websockets parser; bytes consumed.

        Measured (benchmarks/echo.py) to be the largest cost per message, the
        generator-based parser is bypassed for the frames that need no state:
        final, masked text or binary frames with no RSV bits and a 7- or
        16-bit length within ``limit`` (see
        :meth:`~flask_websocket._websockets_internals.ProtocolState.simple_frame_limit`).
        The first frame that is anything else (control, fragment, 64-bit
        length, a violation) or incomplete stops this loop, and it and
        everything after it go through the websockets parser, which
        validates them and answers with the right close code. Returns -1
        when invalid UTF-8 failed the connection (the rest of ``data`` is
        discarded).
        """
        end = len(data)
        position = 0
        while position + 6 <= end:
            first = data[position]
            if first != 0x81 and first != 0x82:  # FIN, no RSV, text or binary
                break
            second = data[position + 1]
            if not second & 0x80:  # unmasked: a violation, let websockets say so
                break
            length = second & 0x7F
            if length < 126:
                mask_at = position + 2
            elif length == 126 and position + 8 <= end:
                length = (data[position + 2] << 8) | data[position + 3]
                mask_at = position + 4
            else:
                break
            if length > limit:
                break
            payload_at = mask_at + 4
            frame_end = payload_at + length
            if frame_end > end:
                break
            payload = apply_mask(data[payload_at:frame_end], data[mask_at:payload_at])
            position = frame_end
            if first == 0x81:
                try:
                    messages.append(payload.decode())
                except UnicodeDecodeError as exc:
                    self._fail_utf8(exc)
                    return -1  # failing discards the rest
            else:
                messages.append(payload)
        return position

    def _track(self, data: bytes) -> None:
        """Check the text of the frame ``data`` ends inside of, as far as it came.

        websockets parses a frame once all of it is in, and has just taken
        every whole frame of ``data``. The frame still arriving is followed
        here, from one read to the next, so that invalid UTF-8 in it fails
        the connection (1007) with the bytes that bring it, not once the
        frame is complete. Only its bytes are unmasked and checked (the
        whole frames were checked by the parser); ``data`` starts where the
        frame followed before ends, or between frames.
        """
        frame = self._tracked
        position, end = 0, len(data)
        while position < end:
            if frame is None:
                frame = _TrackedFrame()
            if frame.remaining < 0:  # in the header
                seen = len(frame.header)
                header = frame.header + data[position : position + 14 - seen]
                parsed = _header(header)
                if parsed is None:
                    frame.header = header
                    break
                size, first, frame.remaining, frame.mask = parsed
                frame.header = b""
                position += size - seen
                if frame.remaining > end - position:  # the frame goes on after data
                    # (Every whole frame before it was parsed: the state is its own.)
                    frame.start(first, self.text_fragments_state())
            if frame.remaining > end - position:
                payload = data[position:]
                if frame.decoder is not None:
                    mask = frame.mask
                    phase = frame.received & 3
                    if phase:
                        mask = mask[phase:] + mask[:phase]
                    try:
                        frame.decoder.decode(apply_mask(payload, mask) if mask else payload)
                    except UnicodeDecodeError as exc:
                        self._tracked = None
                        self._fail_utf8(exc)
                        return
                frame.received += len(payload)
                frame.remaining -= len(payload)
                break
            position += frame.remaining  # whole: the parser checked it
            frame = None
        self._tracked = frame

    def receive_eof(self) -> None:
        """Tell the protocol that the peer closed its side of the connection."""
        self._tracked = None
        self._ws.receive_eof()  # idempotent (websockets 15.0.1 and later)

    def _add_fragment(self, data: bytes, fin: bool) -> bool:
        partial = self._partial
        assert partial is not None  # websockets rejects stray continuations
        if partial.decoder is not None:
            try:
                partial.decoder.decode(data, fin)
            except UnicodeDecodeError as exc:
                self._fail_utf8(exc)
                return False
        partial.buffer += data
        return True

    def _finish_fragments(self) -> Message:
        partial = self._partial
        assert partial is not None
        self._partial = None
        if partial.decoder is not None:
            return partial.buffer.decode()  # validated fragment by fragment
        return bytes(partial.buffer)

    def _fail_utf8(self, exc: UnicodeDecodeError) -> None:
        self._partial = None
        self.fail(CloseCode.INVALID_DATA, f"invalid UTF-8 in text message: {exc.reason}")

    # -- outgoing ------------------------------------------------------------

    def send_close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake (no-op if a close frame was already sent).

        A failure held back is released instead: its close frame goes out.
        """
        if self._ws.state is State.OPEN:
            self._ws.send_close(code, _truncate_reason(reason))
        self.failure_held = False

    def send_ping(self, payload: bytes) -> None:
        """Queue a ping frame."""
        if self._ws.state is State.OPEN:
            self._ws.send_ping(payload)

    def fail(self, code: int, reason: str = "") -> None:
        """Fail the connection: send a close frame (unless 1006), then EOF.

        A failure held back is released instead: its close frame goes out.
        """
        self._ws.fail(code, _truncate_reason(reason))
        self.failure_held = False

    def data_to_send(self) -> List[bytes]:
        """Bytes to write, in order; ``b""`` means half-close the connection.

        Nothing while a failure is held back (:meth:`hold_failure`).
        """
        if self.failure_held:
            return []
        return self._ws.data_to_send()


def _truncate_reason(reason: str) -> str:
    """A close reason must fit in 123 bytes of UTF-8."""
    encoded = reason.encode()
    if len(encoded) <= 123:
        return reason
    return encoded[:123].decode(errors="ignore")


class ServerProtocol(MessageProtocol):
    """The server side: checks the opening handshake, then frames messages."""

    __slots__ = ()

    _ws: ValidatingServerProtocol

    def __init__(
        self,
        *,
        max_message_size: Optional[int] = 2**20,
        subprotocols: Optional[Sequence[str]] = None,
        origins: Optional[Sequence[Optional[str]]] = None,
        deflate: Optional[ServerPerMessageDeflateFactory] = None,
        logger: Optional[logging.Logger] = None,
    ) -> None:
        """``deflate``: negotiate permessage-deflate when the client offers it.

        Compressed frames (RSV1) are then read by the websockets parser (the
        fast path takes only frames without RSV bits), which inflates them
        no further than ``max_message_size`` (1009 past it).
        """
        server = ValidatingServerProtocol(
            origins=origins,  # type: ignore[arg-type]
            subprotocols=subprotocols,  # type: ignore[arg-type]
            extensions=[deflate] if deflate is not None else None,
            max_size=max_message_size,
            logger=logger or _protocol_logger,
        )
        super().__init__(server, fast_path=True)

    @property
    def deflate(self) -> Optional[PerMessageDeflate]:
        """The permessage-deflate extension negotiated, or ``None``."""
        return negotiated_deflate(self._ws)

    # -- opening handshake -------------------------------------------------

    def accept_environ(self, method: str, environ: Mapping[str, object]) -> HandshakeResponse:
        """:meth:`accept` for the request of a WSGI environ.

        A handshake that negotiates nothing (no subprotocol, extension or
        origin list given to this protocol) and is plainly valid is checked
        and answered here, from the environ, without rebuilding the request
        for websockets (about a quarter of the time of :meth:`accept`); every
        other one goes to :meth:`accept`. The answer is the same either way.
        Raises websockets' ``InvalidHeader`` for a header value with a
        control character, as :func:`request_headers_from_environ` does.
        """
        server = self._ws
        if method == "GET" and negotiates_nothing(server):
            accept = _plain_handshake_accept(environ)
            if accept is not None:
                open_checked(server)
                return HandshakeResponse(
                    101,
                    "Switching Protocols",
                    [
                        ("Date", email.utils.formatdate(usegmt=True)),
                        ("Upgrade", "websocket"),
                        ("Connection", "Upgrade"),
                        ("Sec-WebSocket-Accept", accept),
                    ],
                )
        path = environ.get("PATH_INFO")
        headers = request_headers_from_environ(environ)
        return self.accept(method, path if isinstance(path, str) else "/", headers)

    def accept(self, method: str, path: str, headers: Headers) -> HandshakeResponse:
        """Check an opening handshake request and build the answer.

        On success the state becomes OPEN and the response is a 101 with the
        ``Sec-WebSocket-Accept`` and the chosen ``Sec-WebSocket-Protocol``.
        Otherwise it is a 400, 403, 405 or 426 with a body saying what is
        wrong.
        """
        versions = headers.get_all("Sec-WebSocket-Version")
        version = versions[0] if len(versions) == 1 else "13"  # several: websockets says 400
        if version != "13":
            # RFC 6455, 4.4: name the versions we speak, with 426.
            return HandshakeResponse(
                426,
                "Upgrade Required",
                [("Sec-WebSocket-Version", "13"), ("Content-Type", "text/plain; charset=utf-8")],
                f"Failed to open a WebSocket connection: unsupported WebSocket version "
                f"{version!r}; this server speaks version 13.\n".encode(),
            )
        server = self._ws
        if REQUEST_HAS_METHOD:
            response = server.accept(Request(path, headers, method=method))
        elif method == "GET":
            response = server.accept(Request(path, headers))
        else:  # websockets 15 does not check the method: answer as 17 does
            response = server.reject(
                HTTPStatus.METHOD_NOT_ALLOWED,
                f"Failed to open a WebSocket connection: unsupported HTTP method: {method}.\n",
            )
            response.headers["Allow"] = "GET"
        server.send_response(response)
        server.data_to_send()  # the HTTP response is written by uWSGI, not us
        if response.status_code == 101:
            restart_parser(server)
        return HandshakeResponse(
            status=response.status_code,
            reason=response.reason_phrase,
            headers=[
                (k, v)
                for k, v in response.headers.raw_items()
                if k.lower() not in ("date", "connection") or response.status_code == 101
            ],
            body=bytes(response.body or b""),
        )


class ClientProtocol(MessageProtocol):
    """The client side, already OPEN: masks what it sends (for tests and tools)."""

    __slots__ = ()

    def __init__(self, *, max_message_size: Optional[int] = None) -> None:
        super().__init__(open_client_protocol(max_message_size, _protocol_logger))

    def send_message(self, message: Message) -> None:
        """Queue a text (``str``) or binary (``bytes``) message, masked."""
        if isinstance(message, str):
            self._ws.send_text(message.encode())
        else:
            self._ws.send_binary(message)
