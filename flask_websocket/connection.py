"""One WebSocket connection: what a handler receives and sends through.

The request's task (a greenlet under gevent) runs the handler. The socket is
read by a watcher callback in the event loop, not by a task of its own: each
time the socket is readable the callback reads what is there, feeds the
protocol (which answers pings and close frames at once, even while the
handler is busy), appends complete messages to the connection's inbox,
which :meth:`WebSocketConnection.receive` and
:meth:`WebSocketConnection.recv_nb` read, and acts on the protocol's events
(:class:`~flask_websocket.protocol.PongReceived`,
:class:`~flask_websocket.protocol.CloseStarted`).

Writes try the socket at once; what the kernel does not take waits in the
connection's send queue (:mod:`flask_websocket.sendqueue`, with its overflow
policies) and is flushed by a write watcher. Any task may send. Keepalive
pings are :mod:`flask_websocket.keepalive`'s; how a connection ends is the
"Closing" section of :class:`WebSocketConnection`.

:class:`GuardedConnection`, for the models whose event loop runs in another
OS thread, is derived from :class:`WebSocketConnection` by wrapping every
public method and property, so none can be left out.
"""

from __future__ import annotations

import _socket
import functools
import inspect
import logging
import os
import time
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    FrozenSet,
    Hashable,
    Iterator,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
    TypeVar,
    Union,
)

from . import transport
from .close_codes import CloseCode
from .compression import Deflater, DeflateSettings
from .concurrency.base import Backend, Event, Timer, Wakeup, Watcher
from .exceptions import ConnectionClosedOK
from .history import Position, Recovery
from .keepalive import Keepalive
from .protocol import (
    OP_BINARY,
    OP_TEXT,
    Message,
    PongReceived,
    ProtocolEvent,
    ServerProtocol,
    encode_frame,
    encode_message,
)
from .ratelimit import MessageRate
from .sendqueue import OVERFLOW_POLICIES, SendQueue, reset_on_close, shutdown_write
from .wire import SUBPROTOCOL, heartbeat_message, plain_message

if TYPE_CHECKING:  # pragma: no cover
    from .rooms import RoomRegistry

__all__ = [
    "OVERFLOW_POLICIES",
    "ConnectionOptions",
    "GuardedConnection",
    "WebSocketConnection",
]

_T = TypeVar("_T")

logger = logging.getLogger("flask_websocket")

#: Bytes asked of the kernel per read.
READ_SIZE = 65536
#: Reads at most to empty the receive buffer of a connection let go (see _let_go).
_DRAIN_READS = 64

_BlockingErrors = (BlockingIOError, InterruptedError)
#: How a frame goes straight to a socket: ``os.write`` on its fd costs
#: about 300 fewer CPU instructions than ``socket.send`` (no timeout logic).
_write_fd = os.write


@dataclass(frozen=True)
class ConnectionOptions:
    """Per-connection limits and timings, read from the app's config."""

    #: Largest incoming message in bytes (``None``: no limit); larger closes 1009.
    max_message_size: Optional[int] = 2**20
    #: Seconds between server pings (``None``: no keepalive pings).
    ping_interval: Optional[float] = 25.0
    #: Seconds to wait for the pong before closing with 1011.
    ping_timeout: Optional[float] = 20.0
    #: Seconds to wait for the peer's close frame and EOF when closing.
    close_timeout: float = 5.0
    #: Messages held for the handler before reading pauses (TCP backpressure).
    receive_queue_size: int = 64
    #: Bytes queued for sending before a sending task waits for the peer.
    send_queue_size: int = 2**20
    #: What a send that cannot wait does when the queue is full (see OVERFLOW_POLICIES).
    overflow: str = "disconnect"
    #: ``(messages per second, burst)`` a client may send (``None``: no limit),
    #: see :mod:`flask_websocket.ratelimit`.
    rate_limit: Optional[Tuple[float, int]] = None
    #: permessage-deflate's settings when the route may compress (``None``: off).
    compression: Optional[DeflateSettings] = None


class WebSocketConnection:
    """A WebSocket connection, as a handler sees it.

    The handler gets one as its first argument::

        @websocket.route("/echo")
        def echo(ws):
            while True:
                ws.send(ws.receive())

    The HTTP ``101 Switching Protocols`` answer is sent on the first call that
    touches the connection (or :meth:`accept`), so a handler can still
    ``abort(403)`` with a normal HTTP error before that.
    """

    __slots__ = (
        "__weakref__",
        "_backend",
        "_backlogged",
        "_close_timer",
        "_closed_event",
        "_deflater",
        "_direct_fd",
        "_drained",
        "_id",
        "_inbox",
        "_inbox_wakeup",
        "_keepalive",
        "_opener",
        "_options",
        "_plain",
        "_protocol",
        "_rate",
        "_read_paused",
        "_reader",
        "_registry",
        "_rooms",
        "_send_queue",
        "_since",
        "_sock",
        "_torn_down",
        "_user_id",
        "_writer",
        "frame_kind",
        "subprotocol",
        "wire",
    )

    def __init__(
        self,
        protocol: ServerProtocol,
        backend: Backend,
        options: ConnectionOptions,
        opener: Callable[[], _socket.socket],
        registry: Optional[RoomRegistry] = None,
        user_id: Optional[str] = None,
        since: Optional[Dict[str, Position]] = None,
    ) -> None:
        self._protocol = protocol
        self._user_id = user_id
        #: True when the client speaks ``fws.v1`` (:mod:`flask_websocket.wire`):
        #: messages go out wrapped, with positions. A plain attribute, read once
        #: per member by every broadcast.
        self.wire: bool = protocol.subprotocol == SUBPROTOCOL
        # permessage-deflate, when the handshake agreed on it (see compression.py).
        deflate = protocol.deflate if options.compression is not None else None
        self._deflater: Optional[Deflater] = (
            Deflater(deflate, options.compression.threshold, (self.wire,))
            if deflate is not None and options.compression is not None
            else None
        )
        # Messages go out as they are: neither wrapped (fws.v1) nor compressed.
        self._plain = not self.wire and self._deflater is None
        #: What this connection's frame of a broadcast depends on. Connections
        #: of the same kind get the same bytes (see RoomRegistry.deliver). The
        #: wire flag when nothing is compressed, ``None`` when the frame is
        #: this connection's alone (compressed with context takeover). A plain
        #: attribute, read once per member by every broadcast.
        self.frame_kind: Optional[Hashable] = (
            self.wire if self._deflater is None else self._deflater.frame_kind
        )
        self._since = since
        self._backend = backend
        self._options = options
        self._opener: Optional[Callable[[], _socket.socket]] = opener
        self._sock: Optional[_socket.socket] = None
        self._reader: Optional[Watcher] = None
        self._writer: Optional[Watcher] = None
        # Created on first use: an idle connection should cost little memory.
        # A plain list, None when empty: an idle connection keeps no buffer.
        self._inbox: Optional[List[Message]] = None
        self._inbox_wakeup: Wakeup = backend.wakeup()
        # None while nothing waits to be written (see sendqueue.py).
        self._send_queue: Optional[SendQueue] = None
        # The socket's fd while a data frame may go straight to it (os.write):
        # accepted, open (no close frame sent or received), nothing queued,
        # not torn down; else None. None before the socket is given back,
        # always. Set only through _set_direct_fd: the registry keeps the
        # fds of each room's members for broadcasts (fanout.py).
        self._direct_fd: Optional[int] = None
        self._drained: Optional[Event] = None
        self._closed_event: Optional[Event] = None
        self._keepalive: Optional[Keepalive] = None
        self._close_timer: Optional[Timer] = None
        # The incoming message rate's bucket, when limited (WEBSOCKET_RATE_LIMIT).
        self._rate: Optional[MessageRate] = None
        self._torn_down = False
        self._read_paused = False
        # True while the send queue is over its bound: reading stops too, so
        # a peer that sends pings but never reads the pongs cannot grow it.
        self._backlogged = False
        self._registry = registry
        self._id: Optional[str] = None
        self._rooms: Optional[Set[str]] = None
        #: The subprotocol agreed in the handshake, or ``None``.
        self.subprotocol: Optional[str] = protocol.subprotocol

    # ------------------------------------------------------------------
    # State

    @property
    def accepted(self) -> bool:
        """True once the ``101`` response was sent."""
        return self._opener is None

    @property
    def closed(self) -> bool:
        """True once a close frame was sent or received, or the connection lost."""
        return self._torn_down or (self._opener is None and not self._protocol.open)

    # The same for the connection's own calls: GuardedConnection wraps only
    # public names, and internal calls hold the guard already.
    _closed = closed

    @property
    def close_code(self) -> Optional[int]:
        """The peer's close code once closed (1006 if lost); ``None`` while open."""
        if not self._closed:
            return None
        return self._protocol.closed_exception().code

    @property
    def close_reason(self) -> Optional[str]:
        """The peer's close reason once closed; ``None`` while open."""
        if not self._closed:
            return None
        return self._protocol.closed_exception().reason

    @property
    def buffered_amount(self) -> int:
        """Bytes sent but not yet taken by the kernel (as the browser's ``bufferedAmount``)."""
        queue = self._send_queue
        return queue.size if queue is not None else 0

    def accept(self) -> None:
        """Send the ``101`` response now, if it was not sent yet.

        Called for you by the first ``receive``, ``send`` or other I/O; call
        it yourself to complete the handshake before a long computation.
        """
        opener = self._opener
        if opener is None:
            return
        sock = opener()  # may raise (not under uWSGI): then nothing was sent
        self._opener = None
        self._sock = sock
        fd = sock.fileno()
        self._set_direct_fd(fd if self._protocol.open else None)
        backend = self._backend
        self._reader = backend.watch_readable(fd, self._on_readable)
        self._reader.start()
        if self._registry is not None:
            self._registry.add(self)
        if self._options.ping_interval:
            self._keepalive = Keepalive(self, backend, self._options)
            self._keepalive.start()
        if self._options.rate_limit is not None:
            self._rate = MessageRate(self, backend, *self._options.rate_limit)

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("open" if self._opener is None else "connecting")
        name = f" {self._id}" if self._id is not None else ""
        return f"<WebSocketConnection{name} {state}>"

    # ------------------------------------------------------------------
    # Identity and rooms

    @property
    def id(self) -> str:
        """This connection's id, unique across every process and host of the app."""
        if self._id is None:
            registry = self._registry
            self._id = registry.new_id(self) if registry is not None else os.urandom(8).hex()
        return self._id

    @property
    def assigned_id(self) -> Optional[str]:
        """The id if :attr:`id` was ever read (or a room joined), else ``None``."""
        return self._id

    @property
    def user_id(self) -> Optional[str]:
        """Who is at the other end, as the app's ``user_id_loader`` said at the handshake.

        ``websocket.send_to_user()`` and ``websocket.close_user()`` reach
        every connection of that user, in every worker. ``None`` when the app
        has no loader, or it returned ``None``.
        """
        return self._user_id

    @property
    def rooms(self) -> FrozenSet[str]:
        """The rooms this connection is in."""
        return frozenset(self._rooms) if self._rooms else frozenset()

    def join(self, room: str, since: Optional[Position] = None) -> Optional[Recovery]:
        """Join ``room``: broadcasts to it reach this connection until it leaves or closes.

        In a room with history (``WEBSOCKET_HISTORY``), the connection
        first gets every message after ``since`` (by default, the position
        a reconnecting ``fws.v1`` client gave for this room), then live
        ones, and the returned :class:`~flask_websocket.history.Recovery`
        says whether that was all it missed (``None`` for other rooms).

        Raises:
            TypeError, ValueError: ``room`` is not a valid room name (a
                non-empty ``str`` of at most 200 bytes, no control characters).
            ConnectionClosed: the connection is closed.
        """
        registry = self._require_registry()
        if self._opener is not None:
            self.accept()
        if self._closed:
            raise self._protocol.closed_exception()
        if since is None and self._since:
            since = self._since.get(room)
        if self._id is None:  # presence lists members by id: give it one now
            self._id = registry.new_id(self)
        if self._rooms is None:
            self._rooms = set()
        self._rooms.add(room)
        try:
            return registry.join(self, room, since)
        except BaseException:
            self._rooms.discard(room)
            try:  # it may be in already: the hub failed after (recovery, hooks)
                registry.leave(self, room)
            except Exception:
                logger.warning("leaving %r after a failed join of %r", self, room, exc_info=True)
            raise

    def leave(self, room: str) -> None:
        """Leave ``room`` (no-op if not in it)."""
        if self._rooms and room in self._rooms:
            self._rooms.discard(room)
            self._require_registry().leave(self, room)

    def _require_registry(self) -> RoomRegistry:
        if self._registry is None:
            raise RuntimeError("rooms need a connection made by the WebSocket extension")
        return self._registry

    # ------------------------------------------------------------------
    # Receiving (the handler's side)

    def receive(self, timeout: Optional[float] = None) -> Optional[Message]:
        """Wait for the next message: ``str`` for text, ``bytes`` for binary.

        Returns ``None`` only when ``timeout`` (seconds) passes first.

        Raises:
            ConnectionClosedOK: the peer closed normally.
            ConnectionClosedError: the connection closed with an error or was lost.
        """
        if self._opener is not None:
            self.accept()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._inbox:
                return self._pop_message()
            if self._protocol.failure_held:  # every message before the failure was taken
                self._release_failure()
            if self._closed:
                raise self._protocol.closed_exception()
            if deadline is None:
                self._inbox_wakeup.wait()
            elif not self._inbox_wakeup.wait(deadline - time.monotonic()) and not (
                self._inbox or self._closed
            ):
                return None

    #: Alias of :meth:`receive`, as in uWSGI's API.
    recv = receive

    def recv_nb(self) -> Optional[Message]:
        """Return the next message if one is waiting, else ``None``, never blocking.

        Reads the socket once, without waiting, if no message is queued.

        Raises:
            ConnectionClosed: the connection is closed and no message is left.
        """
        if self._opener is not None:
            self.accept()
        if not self._inbox and not (self._torn_down or self._read_paused or self._backlogged):
            self._on_readable()
        if self._inbox:
            return self._pop_message()
        if self._protocol.failure_held:  # every message before the failure was taken
            self._release_failure()
        if self._closed:
            raise self._protocol.closed_exception()
        return None

    def __iter__(self) -> Iterator[Message]:
        """Iterate over incoming messages until the peer closes normally.

        Ends quietly on :class:`ConnectionClosedOK`; a
        :class:`ConnectionClosedError` propagates.
        """
        try:
            while True:
                message = self.receive()
                assert message is not None
                yield message
        except ConnectionClosedOK:
            return

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` the way this server's model allows, letting other connections run.

        ``gevent.sleep`` under gevent, the thread's sleep under threads, a
        suspended core under uWSGI's async modes: use it between
        :meth:`recv_nb` polls instead of ``time.sleep``, which would stop a
        whole gevent or async worker.
        """
        self._backend.sleep(seconds)

    # ------------------------------------------------------------------
    # Sending

    def send(self, message: Union[str, bytes, bytearray, memoryview]) -> None:
        """Send a message: ``str`` as a text frame, bytes-like as a binary frame.

        Returns once the frame is written or queued; waits (letting other
        tasks run) while more than ``WEBSOCKET_SEND_QUEUE_SIZE`` bytes are
        queued for a slow peer.

        Raises:
            ConnectionClosed: the connection is closed.
            TypeError: ``message`` is neither ``str`` nor bytes-like.
        """
        if type(message) is str and self._plain:  # the common case first: no tuple, no call
            self.send_frame(encode_frame(OP_TEXT, message.encode()))
        else:
            self.send_frame(self._encode(*encode_message(message)))

    def send_binary(self, message: Union[bytes, bytearray, memoryview]) -> None:
        """Send ``message`` as a binary frame."""
        if not isinstance(message, (bytes, bytearray, memoryview)):
            raise TypeError(f"send_binary() takes bytes, not {type(message).__name__}")
        self.send_frame(self._encode(OP_BINARY, bytes(message)))

    def send_from_sharedarea(self, area: int, position: int, length: Optional[int] = None) -> None:
        """Send bytes of uWSGI's sharedarea ``area`` as a text message.

        Reads ``length`` bytes from ``position`` (to the end of the area if
        ``None``); they must be UTF-8. Needs uWSGI started with ``--sharedarea``.

        Raises:
            UnicodeDecodeError: the bytes are not UTF-8 (use
                :meth:`send_binary_from_sharedarea`).
            ConfigurationError: not running under uWSGI.
        """
        data = transport.sharedarea_read(area, position, length)
        data.decode()  # text frames must carry valid UTF-8: check before sending
        self.send_frame(self._encode(OP_TEXT, data))

    def send_binary_from_sharedarea(
        self, area: int, position: int, length: Optional[int] = None
    ) -> None:
        """Send bytes of uWSGI's sharedarea ``area`` as a binary message."""
        self.send_frame(self._encode(OP_BINARY, transport.sharedarea_read(area, position, length)))

    def send_nowait(self, message: Union[str, bytes, bytearray, memoryview]) -> None:
        """Send without ever waiting: if the send queue is full, apply its policy.

        ``WEBSOCKET_SEND_QUEUE_OVERFLOW`` says what happens then:
        ``"drop_oldest"`` drops the oldest queued messages, ``"disconnect"``
        closes the connection with 1013, ``"raise"`` raises
        :class:`~flask_websocket.SendQueueFull`.

        Raises:
            ConnectionClosed: the connection is closed (or was just closed by
                the ``disconnect`` policy).
            SendQueueFull: the queue is full and the policy is ``raise``.
        """
        frame = self._encode(*encode_message(message, "send_nowait"))
        if self._opener is not None:
            self.accept()
        if not self.offer_frame(frame) and self._closed:
            raise self._protocol.closed_exception()

    def _encode(self, opcode: int, payload: bytes) -> bytes:
        """The frame of one of this connection's own messages (wrapped for ``fws.v1``)."""
        if self.wire:
            opcode, payload = OP_TEXT, plain_message(opcode, payload).encode()
        if self._deflater is not None:
            return self._deflater.frame(opcode, payload)
        return encode_frame(opcode, payload)

    def message_frame(self, opcode: int, payload: bytes) -> bytes:
        """The frame of a message already in this connection's format (``fws.v1`` wrapped).

        Compressed when permessage-deflate was negotiated and the payload
        reaches the threshold.
        """
        if self._deflater is not None:
            return self._deflater.frame(opcode, payload)
        return encode_frame(opcode, payload)

    def offer_frame(self, frame: bytes) -> bool:
        """Queue a serialised frame without waiting; ``False`` if it was not sent.

        Not sent: the connection is not open, or the queue was full and the
        policy disconnected. Raises :class:`SendQueueFull` under the
        ``raise`` policy.
        """
        fd = self._direct_fd
        if fd is not None:
            # The fast path of a delivery: nothing waits, so the frame goes
            # straight to the socket; only a short write queues the rest (as
            # _write). fanout.py does the same for a broadcast's members.
            try:
                sent = _write_fd(fd, frame)
            except _BlockingErrors:
                sent = 0
            except OSError:
                self._connection_lost()
                return False
            if sent != len(frame):
                self._queue(memoryview(frame)[sent:] if sent else frame)
            return True
        if self._opener is not None or self._torn_down or not self._protocol.open:
            return False
        queue = self._send_queue
        if queue is not None and queue.size:
            limit = self._options.send_queue_size
            queued = queue.size
            if queued + len(frame) > limit and not queue.make_room(
                len(frame), limit, self._options.overflow
            ):
                logger.warning(
                    "closing %r with 1013: send queue full (%d bytes waiting for a slow peer)",
                    self,
                    queued,
                )
                self._fail(CloseCode.TRY_AGAIN_LATER, "send queue full: reading too slowly")
                self._inbox_wakeup.notify()
                return False
        self._write(frame)
        return True

    def send_frame(self, frame: bytes) -> None:
        """Write one already-serialised frame (see :func:`protocol.encode_frame`).

        This is how a broadcast writes the same bytes to many connections.
        """
        fd = self._direct_fd
        if fd is not None:  # the common case: straight to the socket (as offer_frame)
            try:
                sent = _write_fd(fd, frame)
            except _BlockingErrors:
                sent = 0
            except OSError:
                self._connection_lost()
                return
            if sent == len(frame):
                return
            self._queue(memoryview(frame)[sent:] if sent else frame)
        else:
            if self._opener is not None:
                self.accept()
            if self._closed:
                raise self._protocol.closed_exception()
            self._write(frame)
        queue = self._send_queue
        if queue is not None and queue.size > self._options.send_queue_size:
            self._wait_for_drain()

    # ------------------------------------------------------------------
    # Reading (event loop side)

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None or self._torn_down:
            return
        try:
            data = sock.recv(READ_SIZE)
        except _BlockingErrors:
            return
        except OSError:
            data = b""  # reset by peer: as EOF without a close frame
        protocol = self._protocol
        try:
            if data:
                messages, events = protocol.receive(data)
                if messages:
                    inbox = self._inbox
                    if inbox:
                        inbox.extend(messages)
                    else:
                        inbox = self._inbox = messages  # a new list: adopt it
                    if len(inbox) >= self._options.receive_queue_size and protocol.open:
                        self._pause_reading()
                if events:  # first: a failure may be held back
                    self._on_protocol_events(events)
                    self._sync_direct_fd()
                if protocol.has_output():  # pongs, a close frame's echo, EOF
                    self._flush_protocol()
                if self._rate is not None and messages:  # (None while closing)
                    self._rate.count(len(messages))
            else:
                protocol.receive_eof()
                self._stop_reading()
                self._flush_protocol()
        except Exception:  # never let one connection's error reach the hub
            logger.exception("unexpected error reading a WebSocket connection; closing it")
            self._fail(CloseCode.INTERNAL_ERROR, "internal error")
        # Waking the handler comes last: under gevent it runs right away,
        # and may close the connection before this callback resumes.
        if self._inbox or not protocol.open or self._torn_down:
            self._inbox_wakeup.notify()

    def _on_protocol_events(self, events: Sequence[ProtocolEvent]) -> None:
        for event in events:
            if isinstance(event, PongReceived):
                if self._keepalive is not None:
                    self._keepalive.pong(event.payload)
            elif event.by_peer or not self._inbox:  # CloseStarted: the peer closed, or
                self._start_closing()  # broke the protocol
            else:  # broke it after messages the handler has not taken yet
                self._hold_failure()

    def _pop_message(self) -> Message:
        inbox = self._inbox
        assert inbox
        message = inbox.pop(0)  # short: bounded by WEBSOCKET_RECEIVE_QUEUE_SIZE
        if not inbox:
            self._inbox = None
        if self._read_paused and len(inbox) <= self._options.receive_queue_size // 2:
            self._resume_reading()
        return message

    def _pause_reading(self) -> None:
        self._read_paused = True
        if self._reader is not None:
            self._reader.stop()

    def _resume_reading(self) -> None:
        if self._rate is not None and self._rate.paused:
            return  # the rate's pause ends on its own timer (_resume_after_rate)
        self._read_paused = False
        if self._reader is not None and not self._torn_down and not self._backlogged:
            self._reader.start()

    def _stop_reading(self) -> None:
        if self._reader is not None:
            self._reader.stop()

    # ------------------------------------------------------------------
    # Message rate (MessageRate's calls back, see ratelimit.py)

    def _pause_for_rate(self) -> None:
        self._pause_reading()

    def _resume_after_rate(self) -> None:
        inbox = self._inbox
        if self._read_paused and (not inbox or len(inbox) <= self._options.receive_queue_size // 2):
            self._resume_reading()

    def _rate_exceeded(self) -> None:
        if not self._torn_down and self._protocol.open:
            self._fail(CloseCode.POLICY_VIOLATION, "message rate limit exceeded")

    def _cancel_rate(self) -> None:
        """Stop counting (closing, or torn down); a pause for the rate ends."""
        rate = self._rate
        if rate is not None:
            self._rate = None
            if rate.paused:
                rate.cancel()
                self._resume_after_rate()

    # ------------------------------------------------------------------
    # Writing (see sendqueue.py)

    def _write(self, data: Union[bytes, memoryview]) -> None:
        """Write now if nothing is queued, queue what the kernel did not take."""
        queue = self._send_queue
        if queue is None:
            sock = self._sock
            assert sock is not None
            if not data:  # b"": end of stream
                shutdown_write(sock)
                return
            try:
                sent = sock.send(data)
            except _BlockingErrors:
                sent = 0
            except OSError:
                self._connection_lost()
                return
            if sent == len(data):
                return
            if sent:  # a memoryview marks a frame partly written (see sendqueue.py)
                data = memoryview(data)[sent:]
        self._queue(data)

    def _queue(self, data: Union[bytes, memoryview]) -> None:
        """Queue what the kernel did not take; stop reading past the bound; watch for writable."""
        queue = self._send_queue
        if queue is None:
            queue = self._send_queue = SendQueue()
            self._set_direct_fd(None)  # after what waits, in order
        queue.append(data)
        if queue.size > self._options.send_queue_size and not self._backlogged:
            self._backlogged = True
            if self._reader is not None:
                self._reader.stop()
        if self._writer is None:
            if self._sock is None or self._torn_down:
                return
            self._writer = self._backend.watch_writable(self._sock.fileno(), self._on_writable)
        self._writer.start()

    def _on_writable(self) -> None:
        sock = self._sock
        queue = self._send_queue
        if sock is None or self._torn_down or queue is None:
            return
        try:
            emptied = queue.flush(sock)
        except OSError:
            self._connection_lost()
            return
        if emptied:
            self._send_queue = None
            self._sync_direct_fd()
            if self._writer is not None:
                self._writer.stop()
        if queue.size <= self._options.send_queue_size:
            if self._backlogged:
                self._backlogged = False
                if self._reader is not None and not self._read_paused:
                    self._reader.start()
            if self._drained is not None:
                self._drained.set()

    def _wait_for_drain(self) -> None:
        if self._backend.in_event_loop():
            return  # the event loop never waits; the queue is flushed later
        if self._drained is None:
            self._drained = self._backend.event()
        limit = self._options.send_queue_size
        while not self._torn_down and self._queued_bytes() > limit:
            self._drained.clear()
            self._drained.wait()
        if self._torn_down and self._queued_bytes():
            raise self._protocol.closed_exception()

    def _queued_bytes(self) -> int:
        queue = self._send_queue
        return queue.size if queue is not None else 0

    def _flush_protocol(self) -> None:
        """Write what the protocol produced (control frames, EOF); tear down once closed."""
        protocol = self._protocol
        self._sync_direct_fd()  # every change of the protocol's state comes this way
        for data in protocol.data_to_send():
            if self._torn_down:
                return
            self._write(data)
        if protocol.closed:
            self._teardown()

    def _sync_direct_fd(self) -> None:
        """Set :attr:`_direct_fd` from the state: the fd, or ``None`` if a frame must not go."""
        sock = self._sock
        direct = (
            self._opener is None
            and not self._torn_down
            and self._send_queue is None
            and self._protocol.open
            and sock is not None
        )
        self._set_direct_fd(sock.fileno() if direct and sock is not None else None)

    def _set_direct_fd(self, fd: Optional[int]) -> None:
        """Change :attr:`_direct_fd`; the registry drops its rooms' fds of this connection."""
        if fd == self._direct_fd:
            return
        self._direct_fd = fd
        if self._rooms and self._registry is not None:
            self._registry.regroup(self._rooms)

    # ------------------------------------------------------------------
    # Keepalive (the Keepalive's calls back, see keepalive.py)

    def _send_keepalive_ping(self, payload: bytes) -> bool:
        if self._torn_down or not self._protocol.open:
            return False
        self._protocol.send_ping(payload)
        self._flush_protocol()
        if self.wire and not self._torn_down:  # fws.v1 clients see pings this way
            self.offer_frame(encode_frame(OP_TEXT, heartbeat_message(self._options.ping_interval)))
        return not self._torn_down

    def _keepalive_timed_out(self) -> None:
        if self._torn_down or not self._protocol.open:
            return
        self._fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
        self._inbox_wakeup.notify()

    def _cancel_keepalive(self) -> None:
        keepalive = self._keepalive
        if keepalive is not None:
            self._keepalive = None
            keepalive.cancel()

    # ------------------------------------------------------------------
    # Closing
    #
    # A connection ends in one of four ways, each ending in _teardown():
    #
    # * The handler calls close(), or returns (the extension calls finish()):
    #   our close frame goes out, and close() waits for the peer's close
    #   frame and EOF, close_timeout seconds at most (plus one, in case the
    #   event loop is late).
    # * The peer sends a close frame: the protocol echoes it, shuts our
    #   write side (a server closes the TCP connection first) and reports
    #   CloseStarted; the peer then has close_timeout seconds to close its
    #   side (_start_closing).
    # * We fail the connection (_fail): the peer broke the protocol (the
    #   protocol reports CloseStarted), a pong did not come (1011), the send
    #   queue overflowed under "disconnect" (1013), or a bug (1011). A close
    #   frame with the code and EOF go out, then the same deadline. When the
    #   peer broke the protocol after valid messages the handler has not
    #   taken yet, the close frame is held back until the handler asks for
    #   the message after them (_hold_failure), so that it may answer them.
    # * The TCP connection is lost: EOF (the protocol is then closed), a
    #   reset, a failed write (_connection_lost). Torn down at once.
    #
    # Keepalive pings stop as soon as the closing handshake starts. While
    # closing, reading goes on (and discards) until EOF, so that the peer
    # sees our close frame rather than a reset. When the deadline passes
    # first, what still waits for a peer that stopped reading (the "disconnect"
    # policy's 1013 among it) is cut at a frame boundary and left to the
    # kernel (_let_go): the peer finds whole frames and the close frame when
    # it reads again, never a cut frame.

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Close the connection with ``code`` and ``reason``.

        Waits (at most ``WEBSOCKET_CLOSE_TIMEOUT`` seconds) for the peer to
        answer the close frame, then releases the socket. Does nothing if the
        connection is already closed.
        """
        if self._opener is not None:
            self.accept()
        if self._torn_down:
            return
        if self._protocol.failure_held:  # the failure's close frame goes instead
            self._release_failure()
        elif self._protocol.open:
            self._protocol.send_close(code, reason)
            self._flush_protocol()
            self._start_closing()
        self._wait_closed()

    def close_nowait(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start closing with ``code`` and ``reason``, without waiting for the peer.

        From any task or the event loop (``websocket.close_user()`` closes
        connections this way). The handler's next ``receive`` raises
        :class:`~flask_websocket.ConnectionClosed`; the connection is torn
        down once the peer answers, or after ``WEBSOCKET_CLOSE_TIMEOUT``.
        Does nothing if the connection is closed or was never accepted.
        """
        if self._opener is not None or self._torn_down or not self._protocol.open:
            return
        if self._protocol.failure_held:  # the failure's close frame goes instead
            self._release_failure()
            return
        self._protocol.send_close(code, reason)
        self._flush_protocol()
        self._start_closing()
        self._inbox_wakeup.notify()

    def finish(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Close (if still open) and release everything; never raises.

        The extension calls it once the handler is done.
        """
        try:
            self.close(code, reason)
        except Exception:  # pragma: no cover - defensive: the request must end
            logger.exception("error while closing a WebSocket connection")
        finally:
            self._teardown()

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection from our side: close frame with ``code``, EOF, deadline.

        Does not wake the handler: callers do, last. A failure held back
        goes out instead.
        """
        if self._protocol.failure_held:
            self._release_failure()
            return
        self._protocol.fail(code, reason)
        self._flush_protocol()
        self._start_closing()

    def _hold_failure(self) -> None:
        """The peer broke the protocol after messages the handler has not taken.

        They arrived valid, so the handler gets them, and may answer them,
        before the failure's close frame goes out: when it asks for the next
        message (receive, recv_nb), closes, or returns, and at the latest
        after close_timeout seconds. Meanwhile what the peer sends is read
        and discarded.
        """
        self._protocol.hold_failure()
        self._sync_direct_fd()
        self._stop_timers_then(self._on_hold_timeout)

    def _on_hold_timeout(self) -> None:
        self._close_timer = None
        self._release_failure()

    def _release_failure(self) -> None:
        """Send the held failure's close frame and EOF; the closing deadline starts."""
        timer = self._close_timer
        if timer is not None:  # the hold's deadline
            self._close_timer = None
            timer.cancel()
        self._protocol.release_failure()
        self._flush_protocol()
        self._start_closing()
        self._inbox_wakeup.notify()

    def _start_closing(self) -> None:
        """The closing handshake started: stop pinging, give the peer close_timeout."""
        self._stop_timers_then(self._on_close_timeout)

    def _stop_timers_then(self, on_timeout: Callable[[], None]) -> None:
        """Stop pinging and rate limiting; call ``on_timeout`` after close_timeout.

        Unless a close deadline runs already (or the connection is gone).
        """
        self._cancel_keepalive()
        self._cancel_rate()
        if self._close_timer is None and not self._torn_down:
            self._close_timer = self._backend.call_later(self._options.close_timeout, on_timeout)

    def _on_close_timeout(self) -> None:
        self._close_timer = None
        self._teardown()

    def _wait_closed(self) -> None:
        """Wait until the protocol is closed or the close timeout tears it down."""
        if self._torn_down:
            return
        if self._protocol.closed:
            self._teardown()
            return
        if self._backend.in_event_loop():
            return
        if self._closed_event is None:
            self._closed_event = self._backend.event()
        if self._read_paused:
            self._resume_reading()  # read (and discard) until the peer's EOF
        self._closed_event.wait(self._options.close_timeout + 1.0)
        self._teardown()

    def _connection_lost(self) -> None:
        self._protocol.fail(CloseCode.ABNORMAL_CLOSURE)
        self._protocol.data_to_send()  # nothing can be written any more
        self._teardown(lost=True)

    def _teardown(self, lost: bool = False) -> None:
        """Stop every watcher and timer, then give back our socket. Idempotent.

        ``lost``: the TCP connection is gone, nothing can be written.
        """
        if self._torn_down:
            return
        self._torn_down = True
        self._set_direct_fd(None)  # before the socket is given back (its fd reused)
        self._cancel_keepalive()
        self._cancel_rate()
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        # Watchers must be stopped before their fd is closed (libev aborts).
        for watcher in (self._reader, self._writer):
            if watcher is not None:
                watcher.close()
        self._reader = self._writer = None
        queue, self._send_queue = self._send_queue, None
        if self._registry is not None:
            self._registry.remove(self)
        if self._sock is not None:
            if not lost and not self._protocol.closed:
                _let_go(self._sock, queue)
            transport.release_socket(self._sock)  # the server closes the fd
        if self._drained is not None:
            self._drained.set()
        if self._closed_event is not None:
            self._closed_event.set()
        self._inbox_wakeup.notify()


def _let_go(sock: _socket.socket, queue: Optional[SendQueue]) -> None:
    """Leave the end of the stream to the kernel: the closing handshake did not finish.

    The peer did not close within the close timeout (or the handler's
    ``close()`` stopped waiting). Closing the socket must neither cut a frame
    nor throw away what the kernel still holds for the peer, our close frame
    among it:

    * bytes the peer sent that were never read (reading stops while the send
      queue is over its bound) would make the kernel answer the close with a
      reset, discarding its send buffer: read them away first;
    * the send queue's rest is cut at a frame boundary and handed to the
      kernel (:meth:`SendQueue.hand_over`), which delivers it when the peer
      reads again. When it cannot take it all, the connection is reset
      instead, so the peer sees a lost connection, not a cut frame followed
      by a normal end of stream.
    """
    for _ in range(_DRAIN_READS):
        try:
            if not sock.recv(READ_SIZE):
                break
        except _BlockingErrors:
            break
        except OSError:
            return  # lost: nothing to hand over
    if queue is None:
        return
    try:
        complete = queue.hand_over(sock)
    except OSError:
        return
    if not complete:
        reset_on_close(sock)


# ----------------------------------------------------------------------
# The guarded connection

#: Public names :func:`_guard_public_api` leaves alone, and why.
UNGUARDED = {
    "subprotocol": "a plain attribute, set in __init__ before any other task sees the "
    "connection, never changed",
    "wire": "a plain attribute, set in __init__ before any other task sees the "
    "connection, never changed",
    "frame_kind": "a plain attribute, set in __init__ before any other task sees the "
    "connection, never changed",
}

_C = TypeVar("_C", bound=type)


def _guard(function: Callable[..., _T]) -> Callable[..., _T]:
    @functools.wraps(function)
    def call_under_guard(self: WebSocketConnection, *args: Any, **kwargs: Any) -> _T:
        with self._backend.guard:
            return function(self, *args, **kwargs)

    return call_under_guard


def _guard_public_api(cls: _C) -> _C:
    """Make every public method and property of ``cls`` run holding ``backend.guard``.

    Public: every name of ``dir(cls)`` without a leading underscore, so a
    method added to :class:`WebSocketConnection` later is guarded without
    anyone remembering to. A public member that cannot be wrapped (a
    generator, a class attribute, a property with a setter) stops the import
    with ``TypeError`` until it is handled and, if it needs no guard, listed
    in :data:`UNGUARDED` with the reason. Dunders are left alone:
    ``__iter__`` is a generator that calls the guarded :meth:`receive`, and
    ``__repr__`` only reads. Properties are guarded too, even the atomic
    reads: one rule, and ``id`` assigns on first read.
    """
    for name in dir(cls):
        if name.startswith("_") or name in UNGUARDED:
            continue
        member = inspect.getattr_static(cls, name)
        if isinstance(member, property) and member.fget is not None and member.fset is None:
            setattr(cls, name, property(_guard(member.fget), doc=member.__doc__))
        elif inspect.isfunction(member) and not inspect.isgeneratorfunction(member):
            setattr(cls, name, _guard(member))
        else:
            raise TypeError(f"{cls.__name__}.{name}: cannot guard {member!r}")
    return cls


@_guard_public_api
class GuardedConnection(WebSocketConnection):
    """A connection for models whose event loop runs in another OS thread.

    Every public method and property holds the backend's
    :attr:`~flask_websocket.concurrency.base.Backend.guard` (released while
    the call sleeps), so handler threads, uWSGI async cores and the loop
    thread take turns exactly as greenlets do under gevent. The wrapping is
    derived from :class:`WebSocketConnection`'s public names (see
    :func:`_guard_public_api`); only :data:`UNGUARDED` is left out.
    """

    __slots__ = ()
