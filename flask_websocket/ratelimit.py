"""A limit on the messages a connection receives: a token bucket per connection.

``WEBSOCKET_RATE_LIMIT = (rate, burst)``, or ``rate_limit=`` on a route: a
client may send ``burst`` messages at once and ``rate`` messages per second
over time. Past that:

* the first time, it is **warned**: a warning in the log, and the server
  stops reading from it until one message is allowed again, so TCP slows it
  down (the messages already read still reach the handler). A client that
  bursts now and then is slowed, never cut off;
* over the limit again before its bucket has refilled entirely, it is
  **closed with 1008** (policy violation), logged too.

Messages are counted per read of the socket, all those a read completes at
once. Off by default (``None``); when off, a connection has no
:class:`MessageRate` and the read path pays one ``if``.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Optional, Protocol

from .logs import RateLimitedLog

if TYPE_CHECKING:  # pragma: no cover
    from .concurrency.base import Backend, Timer

    class Limited(Protocol):
        """What a :class:`MessageRate` needs of its connection."""

        def _pause_for_rate(self) -> None:
            """Stop reading from the peer."""

        def _resume_after_rate(self) -> None:
            """One message is allowed again: read again (unless paused otherwise)."""

        def _rate_exceeded(self) -> None:
            """Over the limit again after the warning: close with 1008."""


__all__ = ["MessageRate"]

logger = logging.getLogger("flask_websocket")
#: A client causes these lines at will: one per kind a second at most.
_log = RateLimitedLog(logger, interval=1.0)


class MessageRate:
    """The token bucket of one connection's incoming messages."""

    __slots__ = (
        "_backend",
        "_burst",
        "_connection",
        "_rate",
        "_stamp",
        "_timer",
        "_tokens",
        "_warned",
    )

    def __init__(self, connection: Limited, backend: Backend, rate: float, burst: int) -> None:
        self._connection = connection
        self._backend = backend
        self._rate = float(rate)
        self._burst = burst
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        #: Warned, and not calm since (the bucket has not been full again).
        self._warned = False
        #: The end of the pause after a warning; None when not paused.
        self._timer: Optional[Timer] = None

    @property
    def paused(self) -> bool:
        """True while reading is paused after a warning."""
        return self._timer is not None

    def count(self, messages: int) -> None:
        """``messages`` were just read: take their tokens, warn or close when over."""
        now = time.monotonic()
        tokens = self._tokens + (now - self._stamp) * self._rate
        self._stamp = now
        if tokens >= self._burst:
            tokens = self._burst
            self._warned = False  # calm long enough: a new excess is warned again
        tokens -= messages
        self._tokens = tokens
        if tokens >= 0:
            return
        connection = self._connection
        if self._warned:
            _log.warning(
                "rate-closed",
                "closing %r with 1008: over its message rate again after a warning "
                "(WEBSOCKET_RATE_LIMIT: %g/s, burst %d)",
                connection,
                self._rate,
                self._burst,
            )
            connection._rate_exceeded()
            return
        self._warned = True
        pause = (1.0 - tokens) / self._rate  # until one message is allowed again
        _log.warning(
            "rate-warned",
            "%r sends messages faster than WEBSOCKET_RATE_LIMIT allows (%g/s, burst %d): "
            "not reading from it for %.3g s; closed with 1008 if it goes on",
            connection,
            self._rate,
            self._burst,
            pause,
        )
        if self._timer is None:
            connection._pause_for_rate()
            self._timer = self._backend.call_later(pause, self)

    def __call__(self) -> None:
        """The pause is over."""
        self._timer = None
        self._connection._resume_after_rate()

    def cancel(self) -> None:
        """Stop the pause's timer (no-op if none)."""
        timer = self._timer
        if timer is not None:
            self._timer = None
            timer.cancel()
