"""A Python client that reconnects and resumes: for services, scripts and tests.

The Python twin of the browser client the extension serves
(``static/client.js``, docs/client.rst), on the ``websockets`` library's
asyncio client. It speaks the ``fws.v1`` subprotocol
(:mod:`flask_websocket.wire`): every message of a room with history comes
with its position, and after a drop the client gives back the last position
of every room it had joined (``fws_since=<room>:<epoch>:<offset>``), so that
the handler's ``ws.join(room)`` replays what it missed, once, in order.
``async with ResumingClient(url) as client:``, then ``async for message in
client:`` (a :class:`Message`: ``data``, ``room``, ``epoch``, ``offset``)
and ``await client.send(data)``; docs/client.rst shows a whole program.

What it does, as the browser client does:

- reconnects after any close it did not ask for, with an exponential
  backoff and full jitter (a random delay between 0 and
  ``min(max_delay, min_delay * 2**n)`` after the n-th failure in a row);
  after 1012 (service restart: a reload) and 1001 (going away: a shutdown)
  at once, spread over ``restart_delay``; never after the codes of
  ``no_reconnect`` (1000, 1008 by default), nor after a handshake refused
  with 4xx (401, 403, 404...: :class:`~flask_websocket.HandshakeRejected`;
  429 and 5xx are retried), nor after a server certificate that does not
  verify (:class:`~flask_websocket.ConnectionClosedError`, code 1015);
- takes a connection that heard nothing (no message, no heartbeat) for
  ``dead_after`` heartbeat intervals for dead, and reconnects;
- tells the app, in order with the messages, when a room could not be
  resumed completely (``on_recovery_incomplete``): it then reloads its state.

Events: :class:`Message` comes out of ``recv()`` and ``async for``.
:class:`Joined` and :class:`RecoveryIncomplete` belong to a room's stream:
their callbacks run from ``recv()``, just before the messages that follow
them (an exception in one comes out of ``recv()``). :class:`StateChange`
is about the connection: ``on_state_change`` runs as it happens (an
exception in it is logged, and the client goes on).

It is client-side code: it never runs inside uWSGI, and ``import
flask_websocket`` does not import it (nor asyncio's websockets client).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import json
import logging
import random
import ssl
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass
from typing import (
    Any,
    Callable,
    Deque,
    Dict,
    Iterable,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed as _WsConnectionClosed
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI
from websockets.typing import Origin, Subprotocol
from websockets.uri import parse_uri

from .exceptions import (
    ConnectionClosedError,
    ConnectionClosedOK,
    HandshakeRejected,
    NotConnected,
)
from .history import Position
from .wire import SINCE_PARAMETER, SUBPROTOCOL

__all__ = [
    "MAX_ROOMS",
    "Joined",
    "Message",
    "RecoveryIncomplete",
    "ResumingClient",
    "StateChange",
    "backoff_delay",
    "restart_delay",
    "url_with_positions",
]

logger = logging.getLogger("flask_websocket.client")

#: Rooms whose positions one reconnection gives back, at most (as the server reads).
MAX_ROOMS = 100
#: Close codes after which the server is back soon: reconnect at once, spread.
RESTART_CODES = frozenset({1001, 1012})
#: HTTP statuses of a refused handshake that are worth retrying (the others
#: in 400-499 mean the request itself is refused: retrying cannot help).
RETRY_STATUSES = frozenset({408, 425, 429})

Data = Union[str, bytes]


# -- events ---------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """A message from the server: ``data`` as the app sent it (``str`` or ``bytes``).

    ``room``, ``epoch`` and ``offset`` give its position when it belongs to
    a room's stream (a room with history), and are ``None`` otherwise.
    """

    data: Data
    room: Optional[str] = None
    epoch: Optional[str] = None
    offset: Optional[int] = None


@dataclass(frozen=True)
class Joined:
    """The server answered a join: where ``room``'s stream is (its last message).

    ``resumed``: this connection gave a position for the room;
    ``recovered``: the server says nothing after that position was missed.
    """

    room: str
    epoch: str
    offset: int
    recovered: bool
    resumed: bool


@dataclass(frozen=True)
class RecoveryIncomplete:
    """Messages of ``room`` may have been lost: the app should reload its state.

    ``reason``: ``"history"`` (the join's answer said so: history no longer
    reaches back), ``"epoch"`` (the store lost the room's stream and
    started a new one) or ``"gap"`` (offsets skipped).
    """

    room: str
    epoch: str
    offset: int
    reason: str
    resumed: bool


@dataclass(frozen=True)
class StateChange:
    """The client's state changed (or, while reconnecting, another attempt was scheduled).

    ``state``: ``"connecting"`` (only at first), ``"open"``,
    ``"reconnecting"`` or ``"closed"`` (for good). ``code`` and ``reason``
    say why the connection dropped (1006 when it failed without a close
    frame), ``delay`` is the number of seconds until the next attempt,
    ``attempt`` the number of failures in a row.
    """

    state: str
    code: Optional[int] = None
    reason: str = ""
    delay: Optional[float] = None
    attempt: int = 0


StreamEvent = Union[Joined, RecoveryIncomplete]


# -- pure parts: the backoff and the URL ---------------------------------------------


def backoff_delay(
    attempt: int,
    *,
    min_delay: float,
    max_delay: float,
    jitter: bool = True,
    rng: Optional[random.Random] = None,
) -> float:
    """Seconds to wait after the ``attempt``-th failure in a row (from 0).

    Full jitter: a random delay between 0 and ``min(max_delay, min_delay *
    2**attempt)``, so that clients dropped together come back spread out;
    without ``jitter``, that ceiling itself.
    """
    ceiling = min(max_delay, min_delay * 2.0 ** min(attempt, 64))
    if not jitter:
        return ceiling
    return (rng or random).random() * ceiling


def restart_delay(
    ceiling: float, *, jitter: bool = True, rng: Optional[random.Random] = None
) -> float:
    """Seconds to wait after 1012 or 1001: between 0 and ``ceiling`` (without jitter: it)."""
    if not jitter:
        return ceiling
    return (rng or random).random() * ceiling


def url_with_positions(url: str, positions: Iterable[Tuple[str, Position]]) -> Tuple[str, Set[str]]:
    """``url`` with one ``fws_since=<room>:<epoch>:<offset>`` per room; the rooms given.

    Positions already in ``url`` are replaced. At most :data:`MAX_ROOMS`
    rooms are given (the first ones); a room whose epoch is empty is given
    only with offset 0 (``<room>::0``: the room had no stream yet).
    """
    parts = urllib.parse.urlsplit(url)
    query = [
        (name, value)
        for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if name != SINCE_PARAMETER
    ]
    given: Set[str] = set()
    for room, position in positions:
        if len(given) >= MAX_ROOMS:
            break
        if position.epoch == "" and position.offset != 0:
            continue
        query.append((SINCE_PARAMETER, f"{room}:{position.epoch}:{position.offset}"))
        given.add(room)
    encoded = urllib.parse.urlencode(query, quote_via=urllib.parse.quote)
    return urllib.parse.urlunsplit(parts._replace(query=encoded)), given


# -- where each room is ----------------------------------------------------------------


class _Stream:
    """A room's position, and what the client knows about the messages around it."""

    __slots__ = ("epoch", "floor", "loss_told", "offset")

    def __init__(self, epoch: str, offset: int) -> None:
        self.epoch = epoch
        self.offset = offset
        #: After a first join, the history replayed is older than the join's
        #: position: accepted while it grows past ``floor``.
        self.floor: Optional[int] = None
        self.loss_told = False


# -- the client -------------------------------------------------------------------------


class ResumingClient:
    """A WebSocket client that reconnects by itself and resumes the rooms it joined.

    ``url``: ``ws://`` or ``wss://``. Use it as an async context manager
    (``async with ResumingClient(url) as client:``) or call :meth:`start`
    and :meth:`close`. See the module's docstring, and docs/client.rst.

    Options (times in seconds):

    - ``origin``, ``additional_headers``, ``subprotocols`` (offered after
      ``fws.v1``), and any other keyword of ``websockets.asyncio.client.connect``
      in ``connect_options`` (``ssl``, ``max_size``, ``ping_interval``...);
    - ``min_delay`` (0.5), ``max_delay`` (15): the backoff; ``jitter``
      (True): full jitter, or the ceiling itself when False;
      ``restart_delay`` (1): after 1012 or 1001, the retry waits at most this;
      ``stable_after`` (5): a connection open this long starts the backoff over;
      ``max_retries`` (None: no limit): retries after failures in a row
      before giving up (:class:`~flask_websocket.ConnectionClosedError`);
    - ``open_timeout`` (10): a handshake not done by then is retried;
    - ``heartbeat`` (25): the server's heartbeat interval, until it says it
      (0: no dead-connection detection); ``dead_after`` (2.5): intervals of
      silence that mean a dead connection;
    - ``no_reconnect`` ((1000, 1008)): close codes after which it stays closed;
    - ``positions``: ``{room: Position}`` to resume from on the first connection;
    - ``max_queue`` (1024): messages and stream events received but not yet
      taken by :meth:`recv`; when full, the client stops reading (the
      server's send queue then applies its policy);
    - callbacks: ``on_state_change(StateChange)``, ``on_joined(Joined)``,
      ``on_recovery_incomplete(RecoveryIncomplete)``; the last two may be
      coroutine functions (``recv()`` awaits them).
    """

    def __init__(
        self,
        url: str,
        *,
        origin: Optional[str] = None,
        additional_headers: Optional[Mapping[str, str]] = None,
        subprotocols: Sequence[str] = (),
        min_delay: float = 0.5,
        max_delay: float = 15.0,
        jitter: bool = True,
        restart_delay: float = 1.0,
        stable_after: float = 5.0,
        max_retries: Optional[int] = None,
        open_timeout: float = 10.0,
        heartbeat: float = 25.0,
        dead_after: float = 2.5,
        no_reconnect: Iterable[int] = (1000, 1008),
        positions: Optional[Mapping[str, Position]] = None,
        max_queue: int = 1024,
        on_state_change: Optional[Callable[[StateChange], Any]] = None,
        on_joined: Optional[Callable[[Joined], Any]] = None,
        on_recovery_incomplete: Optional[Callable[[RecoveryIncomplete], Any]] = None,
        connect_options: Optional[Mapping[str, Any]] = None,
        rng: Optional[random.Random] = None,
    ) -> None:
        try:
            parse_uri(url)
        except InvalidURI as exc:
            raise ValueError(f"not a WebSocket URL (ws:// or wss://): {url!r}") from exc
        if min_delay < 0 or max_delay < min_delay or restart_delay < 0:
            raise ValueError("delays must be >= 0, and max_delay >= min_delay")
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self.url, _ = url_with_positions(url, ())
        self.origin = origin
        self.additional_headers = dict(additional_headers or {})
        self.subprotocols = [SUBPROTOCOL, *(p for p in subprotocols if p != SUBPROTOCOL)]
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.jitter = jitter
        self.restart_delay = restart_delay
        self.stable_after = stable_after
        self.max_retries = max_retries
        self.open_timeout = open_timeout
        self.dead_after = dead_after
        self.no_reconnect = frozenset(no_reconnect)
        self.max_queue = max_queue
        self.on_state_change = on_state_change
        self.on_joined = on_joined
        self.on_recovery_incomplete = on_recovery_incomplete
        self.connect_options = dict(connect_options or {})
        #: "connecting", "open", "reconnecting" or "closed" (for good).
        self.state = "connecting"
        #: Whether the server speaks fws.v1 on this connection (positions, resume).
        self.resumable = False
        #: Connections opened so far.
        self.connections = 0
        self._heartbeat = heartbeat
        self._rng = rng or random.Random()
        self._streams: Dict[str, _Stream] = {}
        for room, position in (positions or {}).items():
            self._streams[room] = _Stream(str(position.epoch), int(position.offset))
        self._given: Set[str] = set()
        self._attempt = 0
        self._ws: Optional[ClientConnection] = None
        self._task: Optional[asyncio.Task[None]] = None
        self._items: Deque[Union[Message, StreamEvent]] = deque()
        self._readable: Optional[asyncio.Event] = None
        self._writable: Optional[asyncio.Event] = None
        self._opened: Optional[asyncio.Event] = None
        self._final: Optional[BaseException] = None
        self._closing = False
        self._dead = False
        self._reconnect_now = False

    # -- the app's side ------------------------------------------------------------

    async def __aenter__(self) -> ResumingClient:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def start(self) -> None:
        """Start connecting (in a task of the running loop); once only."""
        if self._task is not None:
            raise RuntimeError("this ResumingClient was started already")
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._opened = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def recv(self) -> Message:
        """The next message; stream events before it go to their callbacks first.

        Raises :class:`~flask_websocket.ConnectionClosed` once the client is
        closed for good and every message received before was taken:
        :class:`~flask_websocket.ConnectionClosedOK` after :meth:`close` or
        a close with 1000, :class:`~flask_websocket.ConnectionClosedError`
        after another code of ``no_reconnect``, or
        :class:`~flask_websocket.HandshakeRejected` when the server refused
        the handshake for good.
        """
        readable, writable = self._events()
        while True:
            if self._items:
                item = self._items.popleft()
                writable.set()
                if isinstance(item, Message):
                    return item
                await self._dispatch(item)
                continue
            if self._final is not None:
                raise self._final
            readable.clear()
            await readable.wait()

    def __aiter__(self) -> ResumingClient:
        return self

    async def __anext__(self) -> Message:
        """The next message; the iteration ends when the client was closed normally."""
        try:
            return await self.recv()
        except ConnectionClosedOK:
            raise StopAsyncIteration from None

    async def send(self, data: Data, *, timeout: Optional[float] = 10.0) -> None:
        """Send ``data`` (``str``: text, ``bytes``: binary) on the open connection.

        Waits up to ``timeout`` seconds (``None``: as long as it takes; 0:
        not at all) for a connection to be open. Raises
        :class:`~flask_websocket.NotConnected` when none was, or when the
        connection dropped while sending (the message may be lost: messages
        from the client are not resumed), and
        :class:`~flask_websocket.ConnectionClosed` when the client is closed
        for good.
        """
        ws = await self.wait_open(timeout) if timeout != 0 else self._ws
        if ws is None:
            self._raise_if_final()
            raise NotConnected(f"no open connection to {self.url} (state {self.state!r})")
        try:
            await ws.send(data)
        except _WsConnectionClosed as exc:
            raise NotConnected(f"the connection to {self.url} dropped while sending") from exc

    async def wait_open(self, timeout: Optional[float] = None) -> ClientConnection:
        """Wait until a connection is open (at most ``timeout`` s); the ``websockets`` connection.

        Raises :class:`~flask_websocket.NotConnected` after ``timeout``, and
        :class:`~flask_websocket.ConnectionClosed` when the client is closed
        for good.
        """
        if self._opened is None or self._task is None:
            raise RuntimeError("start the client first (async with, or start())")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._raise_if_final()
            ws = self._ws
            if ws is not None and self.state == "open":
                return ws
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise NotConnected(f"no connection to {self.url} within {timeout} s")
            waiter = asyncio.ensure_future(self._opened.wait())
            try:
                await asyncio.wait(
                    {waiter, self._task}, timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                waiter.cancel()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close for good: no reconnection. Messages already received can still be read."""
        if self._closing:
            if self._task is not None:
                await asyncio.gather(self._task, return_exceptions=True)
            return
        self._closing = True
        ws = self._ws
        if ws is not None:
            await ws.close(code, reason)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._finish(ConnectionClosedOK(code, reason), code, reason)

    def reconnect(self) -> None:
        """Drop the current connection (if any) and connect again now."""
        ws = self._ws
        if ws is not None and ws.transport is not None:
            self._reconnect_now = True  # the drop that follows schedules no wait
            ws.transport.abort()

    def forget(self, room: str) -> None:
        """Stop resuming ``room`` (the app left it)."""
        self._streams.pop(room, None)

    @property
    def heartbeat(self) -> float:
        """Seconds between the server's heartbeats (the default until it says; 0 if none)."""
        return self._heartbeat

    @property
    def positions(self) -> Dict[str, Position]:
        """Where each room is, as ``{room: Position(epoch, offset)}`` (its last message)."""
        return {room: Position(s.epoch, s.offset) for room, s in self._streams.items()}

    # -- the connection ----------------------------------------------------------------

    def _events(self) -> Tuple[asyncio.Event, asyncio.Event]:
        if self._readable is None or self._writable is None:
            raise RuntimeError("start the client first (async with, or start())")
        return self._readable, self._writable

    def _raise_if_final(self) -> None:
        if self._final is not None:
            raise self._final

    async def _run(self) -> None:
        try:
            await self._connect_until_final()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug, or an option websockets refused: say it, stop
            logger.exception("ResumingClient(%s) stopped", self.url)
            error = ConnectionClosedError(1006, f"the client failed: {exc!r}")
            error.__cause__ = exc
            self._finish(error, 1006, error.reason)

    async def _connect_until_final(self) -> None:
        while not self._closing:
            url, given = url_with_positions(self.url, self.positions.items())
            opened_at: Optional[float] = None
            try:
                ws = await connect(
                    url,
                    origin=None if self.origin is None else Origin(self.origin),
                    additional_headers=self.additional_headers,
                    subprotocols=[Subprotocol(p) for p in self.subprotocols],
                    open_timeout=self.open_timeout,
                    **self.connect_options,
                )
            except InvalidStatus as exc:
                status = exc.response.status_code
                if 400 <= status < 500 and status not in RETRY_STATUSES:
                    refused = HandshakeRejected(status, bytes(exc.response.body or b""))
                    self._finish(refused, 1006, f"HTTP {status}")
                    return
                code, reason = 1006, f"handshake answered HTTP {status}"
            except ssl.SSLCertVerificationError as exc:  # the same certificate next time
                error = ConnectionClosedError(1015, f"TLS: {exc.verify_message}")
                error.__cause__ = exc
                self._finish(error, 1015, error.reason)
                return
            except (OSError, asyncio.TimeoutError, InvalidHandshake) as exc:
                code, reason = 1006, f"{type(exc).__name__}: {exc}"
            else:
                opened_at = time.monotonic()
                code, reason = await self._serve(ws, given)
            if self._closing:
                return
            if code in self.no_reconnect:
                error_class = ConnectionClosedOK if code == 1000 else ConnectionClosedError
                self._finish(error_class(code, reason), code, reason)
                return
            if opened_at is not None and time.monotonic() - opened_at >= self.stable_after:
                self._attempt = 0
            if self._reconnect_now:
                self._reconnect_now = False
                self._attempt = 0
                delay = 0.0
            elif code in RESTART_CODES:
                delay = restart_delay(self.restart_delay, jitter=self.jitter, rng=self._rng)
            else:
                if self.max_retries is not None and self._attempt >= self.max_retries:
                    why = f"gave up after {self._attempt + 1} failures in a row: {reason}"
                    error = ConnectionClosedError(code, why)
                    self._finish(error, code, reason)
                    return
                delay = backoff_delay(
                    self._attempt,
                    min_delay=self.min_delay,
                    max_delay=self.max_delay,
                    jitter=self.jitter,
                    rng=self._rng,
                )
                self._attempt += 1
            change = StateChange("reconnecting", code, reason, delay, self._attempt)
            self._set_state(change, again=True)
            await asyncio.sleep(delay)

    async def _serve(self, ws: ClientConnection, given: Set[str]) -> Tuple[int, str]:
        """Read ``ws`` until it drops; why it did: (close code, reason)."""
        assert self._opened is not None
        self._ws = ws
        self._given = given
        self._dead = False
        self.connections += 1
        self.resumable = ws.subprotocol == SUBPROTOCOL
        loop = asyncio.get_running_loop()
        self._set_state(StateChange("open"))
        self._opened.set()
        try:
            while True:
                watchdog = None
                if self._heartbeat > 0 and self.dead_after > 0:
                    watchdog = loop.call_later(self._heartbeat * self.dead_after, self._silent, ws)
                try:
                    raw = await ws.recv()
                except _WsConnectionClosed as exc:
                    if self._dead:
                        return 1006, "no heartbeat"
                    if exc.rcvd is None:
                        return 1006, ""
                    return exc.rcvd.code, exc.rcvd.reason
                finally:
                    if watchdog is not None:
                        watchdog.cancel()
                await self._receive(raw)
        finally:
            self._opened.clear()
            self._ws = None
            if ws.transport is not None and not self._closing:
                ws.transport.abort()  # nothing to wait for: the connection is gone or dead

    def _silent(self, ws: ClientConnection) -> None:
        """Nothing came for too long: the connection is dead (no close can get through)."""
        self._dead = True
        if ws.transport is not None:
            ws.transport.abort()

    def _finish(self, error: BaseException, code: int, reason: str) -> None:
        if self._final is not None:
            return
        self._final = error
        self._closing = True
        if self._readable is not None:
            self._readable.set()
        if self._writable is not None:
            self._writable.set()
        self._set_state(StateChange("closed", code, reason, None, self._attempt))

    def _set_state(self, change: StateChange, again: bool = False) -> None:
        if change.state == self.state and not again:
            return
        self.state = change.state
        callback = self.on_state_change
        if callback is None:
            return
        try:
            callback(change)
        except Exception:
            logger.exception("on_state_change raised (the client goes on)")

    async def _dispatch(self, event: StreamEvent) -> None:
        if isinstance(event, Joined):
            result = None if self.on_joined is None else self.on_joined(event)
        elif self.on_recovery_incomplete is not None:
            result = self.on_recovery_incomplete(event)
        else:
            result = None
        if inspect.isawaitable(result):
            await result

    async def _put(self, item: Union[Message, StreamEvent]) -> None:
        readable, writable = self._events()
        while len(self._items) >= self.max_queue and not self._closing:
            writable.clear()
            await writable.wait()
        self._items.append(item)
        readable.set()

    # -- what the server says ----------------------------------------------------

    async def _receive(self, raw: Data) -> None:
        if not self.resumable or not isinstance(raw, str):
            await self._put(Message(raw))
            return
        try:
            message = json.loads(raw)
        except ValueError:
            logger.warning("not fws.v1 (ignored): %.80r", raw)
            return
        if not isinstance(message, dict):
            return
        if "h" in message:
            interval = message["h"]
            valid = isinstance(interval, (int, float)) and interval > 0
            self._heartbeat = float(interval) if valid else 0.0
        elif "j" in message:
            await self._joined(message)
        elif "r" in message:
            await self._streamed(message)
        else:
            await self._put(Message(self._data(message)))

    @staticmethod
    def _data(message: Mapping[str, Any]) -> Data:
        if "d" in message:
            return str(message["d"])
        try:
            return base64.b64decode(str(message.get("b", "")), validate=True)
        except binascii.Error:
            logger.warning("fws.v1 binary message not in base64 (ignored)")
            return b""

    async def _joined(self, message: Mapping[str, Any]) -> None:
        room = str(message["j"])
        epoch = str(message.get("e", ""))
        offset = int(message.get("o", 0))
        resumed = room in self._given
        recovered = message.get("recovered") is True
        stream = self._streams.get(room)
        if resumed and stream is not None and stream.epoch == epoch:
            stream.floor = None  # what follows is after our position
        else:
            # A first join, or another stream: what history holds may follow,
            # older than the join's position.
            stream = _Stream(epoch, offset)
            stream.floor = 0
            if room not in self._streams and len(self._streams) >= MAX_ROOMS:
                del self._streams[next(iter(self._streams))]
            self._streams[room] = stream
        await self._put(Joined(room, epoch, offset, recovered, resumed))
        if resumed and not recovered:
            stream.loss_told = True
            await self._put(RecoveryIncomplete(room, epoch, offset, "history", resumed))

    async def _streamed(self, message: Mapping[str, Any]) -> None:
        room = str(message["r"])
        epoch = str(message.get("e", ""))
        offset = int(message.get("o", 0))
        stream = self._streams.get(room)
        if stream is None:
            stream = self._streams[room] = _Stream(epoch, offset - 1)
        lost: Optional[str] = None
        if epoch != stream.epoch:
            # The store lost the room's stream and started another.
            if stream.epoch != "":
                lost = "epoch"
            stream.epoch = epoch
            stream.offset = offset
            stream.floor = None
        elif offset > stream.offset:
            if offset != stream.offset + 1 and stream.floor is None and not stream.loss_told:
                lost = "gap"
            stream.offset = offset
            stream.floor = None
        elif stream.floor is not None and offset > stream.floor:
            stream.floor = offset  # history replayed by a first join
        else:
            return  # had it already
        stream.loss_told = False
        if lost is not None:
            await self._put(RecoveryIncomplete(room, epoch, offset, lost, False))
        await self._put(Message(self._data(message), room, epoch, offset))
