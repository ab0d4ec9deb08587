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
the closing handshake starts. It is its own timer callback, so it costs no
bound method per connection.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional, Protocol

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


class Keepalive:
    """Pings a connection's peer at an interval and fails the connection if it stops answering."""

    __slots__ = ("_backend", "_connection", "_options", "_payload", "_timer")

    def __init__(self, connection: Pinged, backend: Backend, options: ConnectionOptions) -> None:
        self._connection = connection
        self._backend = backend
        self._options = options
        #: Payload of the ping waiting for its pong, or ``None``.
        self._payload: Optional[bytes] = None
        self._timer: Optional[Timer] = None

    def start(self) -> None:
        """Send the first ping after one interval."""
        interval = self._options.ping_interval
        assert interval
        self._timer = self._backend.call_later(interval, self)

    def __call__(self) -> None:
        """The timer fired: time for a ping, or past the deadline for its pong."""
        self._timer = None
        if self._payload is not None:
            self._payload = None
            self._connection._keepalive_timed_out()
            return
        payload = os.urandom(4)
        if not self._connection._send_keepalive_ping(payload):
            return
        self._payload = payload
        options = self._options
        timeout = options.ping_timeout or options.ping_interval
        assert timeout
        self._timer = self._backend.call_later(timeout, self)

    def pong(self, payload: bytes) -> None:
        """A pong arrived: if it answers our ping, wait an interval for the next."""
        if self._payload is None or payload != self._payload:
            return  # unsolicited
        self._payload = None
        self.cancel()
        self.start()

    def cancel(self) -> None:
        """Stop pinging (no-op if stopped)."""
        timer = self._timer
        if timer is not None:
            self._timer = None
            timer.cancel()
