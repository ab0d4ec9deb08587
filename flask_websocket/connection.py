"""One WebSocket connection: what a handler receives and sends through.

The request's task (a greenlet under gevent) runs the handler. The socket is
read by a watcher callback in the event loop, not by a task of its own: each
time the socket is readable the callback reads what is there, feeds the
protocol (which answers pings and close frames at once, even while the
handler is busy), and appends complete messages to the connection's inbox,
which :meth:`WebSocketConnection.receive` and
:meth:`WebSocketConnection.recv_nb` read.

Writes try the socket at once; what the kernel does not take waits in the
connection's send queue and is flushed by a write watcher. Any task may send.
"""

from __future__ import annotations

import _socket
import contextlib
import functools
import logging
import os
import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Deque,
    FrozenSet,
    Iterator,
    List,
    Optional,
    Set,
    TypeVar,
    Union,
)

from . import transport
from .close_codes import CloseCode
from .concurrency.base import Backend, Event, Timer, Wakeup, Watcher
from .exceptions import ConnectionClosedOK, SendQueueFull
from .protocol import (
    OP_BINARY,
    OP_TEXT,
    Message,
    PongReceived,
    ServerProtocol,
    encode_frame,
    encode_message,
)

if TYPE_CHECKING:  # pragma: no cover
    from .rooms import RoomRegistry

__all__ = ["OVERFLOW_POLICIES", "ConnectionOptions", "GuardedConnection", "WebSocketConnection"]

_T = TypeVar("_T")

logger = logging.getLogger("flask_websocket")

#: Bytes asked of the kernel per read.
READ_SIZE = 65536

_BlockingErrors = (BlockingIOError, InterruptedError)


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


#: Overflow policies of the send queue, for sends that cannot wait (broadcast,
#: ``send_to``, ``send_nowait``): drop the oldest queued messages, close the
#: connection with 1013 (try again later), or raise :class:`SendQueueFull`.
OVERFLOW_POLICIES = ("drop_oldest", "disconnect", "raise")


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
        "_drained",
        "_id",
        "_inbox",
        "_inbox_wakeup",
        "_keepalive",
        "_opener",
        "_options",
        "_ping_payload",
        "_protocol",
        "_read_paused",
        "_reader",
        "_registry",
        "_rooms",
        "_send_queue",
        "_send_queue_bytes",
        "_sock",
        "_torn_down",
        "_writer",
        "subprotocol",
    )

    def __init__(
        self,
        protocol: ServerProtocol,
        backend: Backend,
        options: ConnectionOptions,
        opener: Callable[[], _socket.socket],
        registry: Optional[RoomRegistry] = None,
    ) -> None:
        self._protocol = protocol
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
        self._send_queue: Optional[Deque[Union[bytes, memoryview]]] = None
        self._send_queue_bytes = 0
        self._drained: Optional[Event] = None
        self._closed_event: Optional[Event] = None
        self._keepalive: Optional[Timer] = None
        self._ping_payload: Optional[bytes] = None
        self._close_timer: Optional[Timer] = None
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
    # Public API

    @property
    def accepted(self) -> bool:
        """True once the ``101`` response was sent."""
        return self._opener is None

    @property
    def closed(self) -> bool:
        """True once a close frame was sent or received, or the connection lost."""
        return self._torn_down or (self._opener is None and not self._protocol.open)

    @property
    def close_code(self) -> Optional[int]:
        """The peer's close code once closed (1006 if lost); ``None`` while open."""
        if not self.closed:
            return None
        return self._protocol.closed_exception().code

    @property
    def close_reason(self) -> Optional[str]:
        """The peer's close reason once closed; ``None`` while open."""
        if not self.closed:
            return None
        return self._protocol.closed_exception().reason

    @property
    def buffered_amount(self) -> int:
        """Bytes sent but not yet taken by the kernel (as the browser's ``bufferedAmount``)."""
        return self._send_queue_bytes

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
        backend = self._backend
        self._reader = backend.watch_readable(fd, self._on_readable)
        self._reader.start()
        if self._registry is not None:
            self._registry.add(self)
        if self._options.ping_interval:
            self._keepalive = backend.call_later(self._options.ping_interval, self._on_keepalive)

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
    def rooms(self) -> FrozenSet[str]:
        """The rooms this connection is in."""
        return frozenset(self._rooms) if self._rooms else frozenset()

    def join(self, room: str) -> None:
        """Join ``room``: broadcasts to it reach this connection until it leaves or closes.

        Raises:
            TypeError, ValueError: ``room`` is not a valid room name (a
                non-empty ``str`` of at most 200 bytes, no control characters).
            ConnectionClosed: the connection is closed.
        """
        registry = self._require_registry()
        if self._opener is not None:
            self.accept()
        if self.closed:
            raise self._protocol.closed_exception()
        registry.join(self, room)
        _ = self.id  # presence lists members by id: give it one now
        if self._rooms is None:
            self._rooms = set()
        self._rooms.add(room)

    def leave(self, room: str) -> None:
        """Leave ``room`` (no-op if not in it)."""
        if self._rooms and room in self._rooms:
            self._rooms.discard(room)
            self._require_registry().leave(self, room)

    def _require_registry(self) -> RoomRegistry:
        if self._registry is None:
            raise RuntimeError("rooms need a connection made by the WebSocket extension")
        return self._registry

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
            if self.closed:
                raise self._protocol.closed_exception()
            if deadline is None:
                self._inbox_wakeup.wait()
            elif not self._inbox_wakeup.wait(deadline - time.monotonic()) and not (
                self._inbox or self.closed
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
        if self.closed:
            raise self._protocol.closed_exception()
        return None

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` the way this server's model allows, letting other connections run.

        ``gevent.sleep`` under gevent, the thread's sleep under threads, a
        suspended core under uWSGI's async modes: use it between
        :meth:`recv_nb` polls instead of ``time.sleep``, which would stop a
        whole gevent or async worker.
        """
        self._backend.sleep(seconds)

    def send(self, message: Union[str, bytes, bytearray, memoryview]) -> None:
        """Send a message: ``str`` as a text frame, bytes-like as a binary frame.

        Returns once the frame is written or queued; waits (letting other
        tasks run) while more than ``WEBSOCKET_SEND_QUEUE_SIZE`` bytes are
        queued for a slow peer.

        Raises:
            ConnectionClosed: the connection is closed.
            TypeError: ``message`` is neither ``str`` nor bytes-like.
        """
        if type(message) is str:  # the common case first: no tuple, no call
            self.send_frame(encode_frame(OP_TEXT, message.encode()))
        else:
            self.send_frame(encode_frame(*encode_message(message)))

    def send_binary(self, message: Union[bytes, bytearray, memoryview]) -> None:
        """Send ``message`` as a binary frame."""
        if not isinstance(message, (bytes, bytearray, memoryview)):
            raise TypeError(f"send_binary() takes bytes, not {type(message).__name__}")
        self.send_frame(encode_frame(OP_BINARY, bytes(message)))

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
        self.send_frame(encode_frame(OP_TEXT, data))

    def send_binary_from_sharedarea(
        self, area: int, position: int, length: Optional[int] = None
    ) -> None:
        """Send bytes of uWSGI's sharedarea ``area`` as a binary message."""
        self.send_frame(encode_frame(OP_BINARY, transport.sharedarea_read(area, position, length)))

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
        frame = encode_frame(*encode_message(message, "send_nowait"))
        if self._opener is not None:
            self.accept()
        if not self.offer_frame(frame) and self.closed:
            raise self._protocol.closed_exception()

    def offer_frame(self, frame: bytes) -> bool:
        """Queue a serialised frame without waiting; ``False`` if it was not sent.

        Not sent: the connection is not open, or the queue was full and the
        policy disconnected. Raises :class:`SendQueueFull` under the
        ``raise`` policy.
        """
        if self._opener is not None or self._torn_down or not self._protocol.open:
            return False
        queued = self._send_queue_bytes
        if queued and queued + len(frame) > self._options.send_queue_size:
            policy = self._options.overflow
            if policy == "raise":
                raise SendQueueFull(
                    f"{queued} bytes are waiting for a slow peer "
                    f"(WEBSOCKET_SEND_QUEUE_SIZE is {self._options.send_queue_size})"
                )
            if policy == "disconnect":
                logger.warning(
                    "closing %r with 1013: send queue full (%d bytes waiting for a slow peer)",
                    self,
                    queued,
                )
                self._drop_queued_frames(everything=True)
                self._protocol.fail(
                    CloseCode.TRY_AGAIN_LATER, "send queue full: reading too slowly"
                )
                self._flush_protocol()
                self._inbox_wakeup.notify()
                return False
            self._drop_queued_frames(need=len(frame))
        self._write(frame)
        return True

    def _drop_queued_frames(self, need: int = 0, everything: bool = False) -> None:
        """Drop whole queued frames, oldest first, until ``need`` more bytes fit.

        A frame partly written already (a memoryview at the head) is kept:
        cutting it would corrupt the stream.
        """
        queue = self._send_queue
        if not queue:
            return
        head = queue.popleft() if isinstance(queue[0], memoryview) else None
        limit = self._options.send_queue_size
        while queue and (everything or self._send_queue_bytes + need > limit):
            self._send_queue_bytes -= len(queue.popleft())
        if head is not None:
            queue.appendleft(head)

    def send_frame(self, frame: bytes) -> None:
        """Write one already-serialised frame (see :func:`protocol.encode_frame`).

        This is how a broadcast writes the same bytes to many connections.
        """
        if self._opener is not None:
            self.accept()
        if self.closed:
            raise self._protocol.closed_exception()
        self._write(frame)
        if self._send_queue_bytes > self._options.send_queue_size:
            self._wait_for_drain()

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
        if self._protocol.open:
            self._protocol.send_close(code, reason)
            self._flush_protocol()
        self._wait_closed()

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

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("open" if self.accepted else "connecting")
        name = f" {self._id}" if self._id is not None else ""
        return f"<WebSocketConnection{name} {state}>"

    # ------------------------------------------------------------------
    # Used by the extension once the handler is done

    def finish(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Close (if still open) and release everything; never raises."""
        try:
            self.close(code, reason)
        except Exception:  # pragma: no cover - defensive: the request must end
            logger.exception("error while closing a WebSocket connection")
        finally:
            self._teardown()

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
                for event in events:
                    if isinstance(event, PongReceived):
                        self._on_pong(event.payload)
                # Pongs, a close frame's echo, EOF. (_flush_protocol also
                # starts the close timer once the protocol left OPEN.)
                if protocol.has_output() or not protocol.open:
                    self._flush_protocol()
            else:
                protocol.receive_eof()
                self._stop_reading()
                self._flush_protocol()
        except Exception:  # never let one connection's error reach the hub
            logger.exception("unexpected error reading a WebSocket connection; closing it")
            protocol.fail(CloseCode.INTERNAL_ERROR, "internal error")
            self._flush_protocol()
        # Waking the handler comes last: under gevent it runs right away,
        # and may close the connection before this callback resumes.
        if self._inbox or not protocol.open or self._torn_down:
            self._inbox_wakeup.notify()

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
        self._read_paused = False
        if self._reader is not None and not self._torn_down and not self._backlogged:
            self._reader.start()

    def _stop_reading(self) -> None:
        if self._reader is not None:
            self._reader.stop()

    # ------------------------------------------------------------------
    # Writing

    def _write(self, data: Union[bytes, memoryview]) -> None:
        """Write now if nothing is queued, queue what the kernel did not take."""
        queue = self._send_queue
        if not queue:
            sock = self._sock
            assert sock is not None
            if not data:  # b"": end of stream
                self._shutdown_write()
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
            data = memoryview(data)[sent:]
        if queue is None:
            queue = self._send_queue = deque()
        queue.append(data)
        self._send_queue_bytes += len(data)
        if self._send_queue_bytes > self._options.send_queue_size and not self._backlogged:
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
        while queue:
            data = queue[0]
            if not data:
                queue.popleft()
                self._shutdown_write()
                continue
            try:
                sent = sock.send(data)
            except _BlockingErrors:
                break
            except OSError:
                self._connection_lost()
                return
            self._send_queue_bytes -= sent
            if sent == len(data):
                queue.popleft()
            else:
                queue[0] = memoryview(data)[sent:]
                break
        if not queue and self._writer is not None:
            self._writer.stop()
        if self._send_queue_bytes <= self._options.send_queue_size:
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
        while self._send_queue_bytes > self._options.send_queue_size and not self._torn_down:
            self._drained.clear()
            self._drained.wait()
        if self._torn_down and self._send_queue_bytes:
            raise self._protocol.closed_exception()

    def _flush_protocol(self) -> None:
        """Write the control frames (and EOF) the protocol produced."""
        protocol = self._protocol
        for data in protocol.data_to_send():
            if self._torn_down:
                return
            self._write(data)
        if protocol.closed:
            self._teardown()
        elif protocol.close_expected() and self._close_timer is None and not self._torn_down:
            self._close_timer = self._backend.call_later(
                self._options.close_timeout, self._on_close_timeout
            )
            self._cancel_keepalive()

    def _shutdown_write(self) -> None:
        sock = self._sock
        if sock is None:
            return
        with contextlib.suppress(OSError):  # the peer may be gone already
            sock.shutdown(socket.SHUT_WR)

    # ------------------------------------------------------------------
    # Keepalive and timeouts (event loop side)

    def _on_keepalive(self) -> None:
        self._keepalive = None
        if self._torn_down or not self._protocol.open:
            return
        if self._ping_payload is not None:
            self._protocol.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
            self._flush_protocol()
            self._inbox_wakeup.notify()
            return
        self._ping_payload = os.urandom(4)
        self._protocol.send_ping(self._ping_payload)
        self._flush_protocol()
        timeout = self._options.ping_timeout or self._options.ping_interval
        assert timeout is not None
        self._keepalive = self._backend.call_later(timeout, self._on_keepalive)

    def _on_pong(self, payload: bytes) -> None:
        if self._ping_payload is None or payload != self._ping_payload:
            return  # unsolicited pong
        self._ping_payload = None
        self._cancel_keepalive()
        interval = self._options.ping_interval
        if interval and not self._torn_down:
            self._keepalive = self._backend.call_later(interval, self._on_keepalive)

    def _cancel_keepalive(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None

    def _on_close_timeout(self) -> None:
        self._close_timer = None
        self._teardown()

    # ------------------------------------------------------------------
    # Closing

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
        self._teardown()

    def _teardown(self) -> None:
        """Stop every watcher and timer, then close our socket. Idempotent."""
        if self._torn_down:
            return
        self._torn_down = True
        self._cancel_keepalive()
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        # Watchers must be stopped before their fd is closed (libev aborts).
        for watcher in (self._reader, self._writer):
            if watcher is not None:
                watcher.close()
        self._reader = self._writer = None
        self._send_queue = None
        if self._registry is not None:
            self._registry.remove(self)
        self._send_queue_bytes = 0
        if self._sock is not None:
            transport.release_socket(self._sock)  # the server closes the fd
        if self._drained is not None:
            self._drained.set()
        if self._closed_event is not None:
            self._closed_event.set()
        self._inbox_wakeup.notify()


def _guarded(method: Callable[..., _T]) -> Callable[..., _T]:
    @functools.wraps(method)
    def call_under_guard(self: WebSocketConnection, *args: Any, **kwargs: Any) -> _T:
        with self._backend.guard:
            return method(self, *args, **kwargs)

    return call_under_guard


class GuardedConnection(WebSocketConnection):
    """A connection for models whose event loop runs in another OS thread.

    Every call holds the backend's :attr:`~flask_websocket.concurrency.base.Backend.guard`
    (released while the call sleeps), so handler threads, uWSGI async cores
    and the loop thread take turns exactly as greenlets do under gevent.
    """

    __slots__ = ()

    accept = _guarded(WebSocketConnection.accept)
    join = _guarded(WebSocketConnection.join)
    leave = _guarded(WebSocketConnection.leave)
    receive = _guarded(WebSocketConnection.receive)
    recv = receive
    recv_nb = _guarded(WebSocketConnection.recv_nb)
    send = _guarded(WebSocketConnection.send)
    send_binary = _guarded(WebSocketConnection.send_binary)
    send_from_sharedarea = _guarded(WebSocketConnection.send_from_sharedarea)
    send_binary_from_sharedarea = _guarded(WebSocketConnection.send_binary_from_sharedarea)
    send_nowait = _guarded(WebSocketConnection.send_nowait)
    offer_frame = _guarded(WebSocketConnection.offer_frame)
    send_frame = _guarded(WebSocketConnection.send_frame)
    close = _guarded(WebSocketConnection.close)
    finish = _guarded(WebSocketConnection.finish)

    @property
    def id(self) -> str:
        """This connection's id, unique across every process and host of the app."""
        with self._backend.guard:
            return WebSocketConnection.id.fget(self)  # type: ignore[attr-defined,no-any-return]
