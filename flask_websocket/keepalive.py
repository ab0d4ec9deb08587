"""Keepalive pings: how a connection finds out that its peer is gone.

A peer that vanishes without closing (a laptop lid, a dropped mobile link)
leaves nothing to read, and proxies cut connections that stay idle (nginx's
``proxy_read_timeout``). So every ``ping_interval`` seconds the server sends
a ping with a fresh random payload, and the peer must answer with a pong of
the same payload within ``ping_timeout`` seconds (``ping_interval`` when
``None``); if it does not, the connection fails with 1011 ("keepalive ping
timeout"). A matching pong starts the next interval; any other pong is
unsolicited and ignored.

One :class:`Keepalive` per connection with pings on, from the ``101`` until
the closing handshake starts. The connections share their timers: one
:class:`_Clock` per backend and delay keeps every keepalive due after that
delay in the order they are due, on one backend timer for the earliest. A
timer of its own per connection cost about 170 bytes for as long as the
connection lived (under gevent: the libev timer and its wrapper); a place in
a clock costs a float and two references.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from typing import TYPE_CHECKING, Any, Deque, Dict, Optional, Protocol, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from .concurrency.base import Backend, Timer
    from .connection import ConnectionOptions

    class Pinged(Protocol):
        """What a :class:`Keepalive` needs of its connection."""

        def _send_keepalive_ping(self, payload: bytes) -> bool:
            """Send a ping now; ``False`` if the connection can no longer send."""

        def _keepalive_timed_out(self) -> None:
            """The pong did not come in time: fail the connection."""


__all__ = ["Keepalive"]

logger = logging.getLogger("flask_websocket")


class Keepalive:
    """Pings a connection's peer at an interval and fails the connection if it stops answering."""

    __slots__ = ("_backend", "_connection", "_deadline", "_options", "_payload")

    def __init__(self, connection: Pinged, backend: Backend, options: ConnectionOptions) -> None:
        self._connection: Optional[Pinged] = connection
        self._backend = backend
        self._options = options
        #: Payload of the ping waiting for its pong, or ``None``.
        self._payload: Optional[bytes] = None
        #: When it is due next, the very float its clock holds; ``None`` when not due.
        self._deadline: Optional[float] = None

    def start(self) -> None:
        """Send the first ping after one interval."""
        interval = self._options.ping_interval
        assert interval
        self._deadline = _clock(self._backend, interval).add(self)

    def _due(self) -> None:
        """Its clock says it is time: for a ping, or past the deadline for its pong."""
        connection = self._connection
        if connection is None:  # cancelled
            return
        if self._payload is not None:
            self._payload = None
            connection._keepalive_timed_out()
            return
        payload = os.urandom(4)
        if not connection._send_keepalive_ping(payload):
            return
        self._payload = payload
        options = self._options
        timeout = options.ping_timeout or options.ping_interval
        assert timeout
        self._deadline = _clock(self._backend, timeout).add(self)

    def pong(self, payload: bytes) -> None:
        """A pong arrived: if it answers our ping, wait an interval for the next."""
        if self._payload is None or payload != self._payload or self._connection is None:
            return  # unsolicited
        self._payload = None
        self.start()  # (the pong's deadline, left in its clock, comes to nothing)

    def cancel(self) -> None:
        """Stop pinging for good (no-op if stopped)."""
        # Its place in a clock is left there until due (removing it would
        # mean a search); it holds no connection meanwhile.
        self._deadline = None
        self._connection = None


class _Clock:
    """Calls :meth:`Keepalive._due` when each keepalive added is ``delay`` seconds old.

    The keepalives are due in the order they were added (the delay is the
    same for all), so the queue is a plain FIFO: deadline, keepalive,
    deadline, keepalive... A place whose deadline is no longer the
    keepalive's (it answered, was cancelled, or was added again) is skipped
    when it comes up. One backend timer at a time, for the first place.

    Used from the backend's tasks and its event loop, under its guard (the
    connection's calls hold it), like the timers it replaces.
    """

    __slots__ = ("_backend", "_delay", "_queue", "_timer")

    def __init__(self, backend: Backend, delay: float) -> None:
        self._backend = backend
        self._delay = delay
        self._queue: Deque[Any] = collections.deque()
        self._timer: Optional[Timer] = None

    def add(self, keepalive: Keepalive) -> float:
        """Queue ``keepalive``; its deadline (identical to the float queued)."""
        deadline = time.monotonic() + self._delay
        self._queue.append(deadline)
        self._queue.append(keepalive)
        if self._timer is None:
            self._timer = self._backend.call_later(self._delay, self._fire)
        return deadline

    def _fire(self) -> None:
        self._timer = None
        queue = self._queue
        try:
            now = time.monotonic()
            while queue and queue[0] <= now:
                deadline = queue.popleft()
                keepalive: Keepalive = queue.popleft()
                if keepalive._deadline is deadline:
                    keepalive._deadline = None
                    try:
                        keepalive._due()
                    except Exception:  # one connection's error must not stop the others' pings
                        logger.exception("unexpected error in a WebSocket keepalive")
        finally:
            if queue and self._timer is None:
                delay = max(queue[0] - time.monotonic(), 0.0)
                self._timer = self._backend.call_later(delay, self._fire)


#: Every clock, by backend and delay (a process has a backend per app, and
#: an app a delay or two).
_CLOCKS: Dict[Tuple[Backend, float], _Clock] = {}


def _clock(backend: Backend, delay: float) -> _Clock:
    clock = _CLOCKS.get((backend, delay))
    if clock is None:
        clock = _CLOCKS[backend, delay] = _Clock(backend, delay)
    return clock
