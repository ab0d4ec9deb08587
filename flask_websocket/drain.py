"""Deploys without dropped connections: close every WebSocket when the worker must go.

On a graceful reload (``kill -HUP`` of the master, ``--touch-reload``, a
chain reload through the master FIFO) uWSGI asks each worker to finish its
requests, and waits up to ``--worker-reload-mercy`` (60 s) for them. A
WebSocket is a request that never finishes by itself: without help the
worker waits out the mercy, is killed, and every client gets 1006 a minute
later, while the worker accepts nothing. On a shutdown (SIGINT, or SIGTERM
with ``--die-on-term``) uWSGI kills its workers at once: every client gets
1006.

So each worker watches those signals too (beside uWSGI, not instead of it)
and closes all its WebSockets at once, from the event loop: with 1012
(service restart) on a reload, 1001 (going away) on a shutdown, and a short
reason. Handlers see :class:`~flask_websocket.ConnectionClosed` and their
clean-up runs (a chat says goodbye to the room); connections leave their
rooms; and on a reload, once the last one is gone, the hub stops (the redis
hub removes this worker's presence entries). The worker then has no request
left: uWSGI lets it go within a second, and its replacement is spawned.

Where the model allows: gevent (uWSGI's gevent plugin handles these signals
with gevent, and a second libev watcher sees them too). Under the other
models uWSGI's own C signal handlers are the only ones; ``docs/concurrency.rst``
says what happens there.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import TYPE_CHECKING, Callable, Optional

from .close_codes import CloseCode

if TYPE_CHECKING:  # pragma: no cover
    from .concurrency.base import Backend
    from .hubs.base import Hub

__all__ = ["RELOAD_REASON", "SHUTDOWN_REASON", "Drain"]

logger = logging.getLogger("flask_websocket")

RELOAD_REASON = "server restarting"
SHUTDOWN_REASON = "server shutting down"


class Drain:
    """Closes this worker's WebSockets on uWSGI's reload and shutdown signals."""

    def __init__(
        self, backend: Backend, current_hub: Callable[[], Optional[Hub]], close_timeout: float
    ) -> None:
        self._backend = backend
        self._current_hub = current_hub
        self._close_timeout = close_timeout
        self.draining = False

    def install(self) -> bool:
        """Watch the signals; ``False`` if this model cannot (nothing changes then)."""
        if not self._backend.on_signal(signal.SIGHUP, self.reload):
            return False
        self._backend.on_signal(signal.SIGINT, self.shutdown)
        self._backend.on_signal(signal.SIGTERM, self.shutdown)
        return True

    def reload(self) -> None:
        """In the event loop, on SIGHUP: close with 1012, then stop the hub once all are gone."""
        if self._close_all(CloseCode.SERVICE_RESTART, RELOAD_REASON):
            self._backend.spawn(self._stop_hub_when_empty)

    def shutdown(self) -> None:
        """In the event loop, on SIGINT or SIGTERM: close with 1001 (the worker dies next)."""
        self._close_all(CloseCode.GOING_AWAY, SHUTDOWN_REASON)

    def _close_all(self, code: int, reason: str) -> bool:
        if self.draining:
            return False
        self.draining = True
        hub = self._current_hub()
        connections = list(hub.registry.connections) if hub is not None else []
        if connections:
            logger.info("closing %d WebSockets with %d (%s)", len(connections), code, reason)
        for connection in connections:  # each writes its close frame now, without waiting
            try:
                connection.close_nowait(code, reason)
            except Exception:  # one broken connection must not keep the others open
                logger.exception("error while closing %r", connection)
        return hub is not None

    def _stop_hub_when_empty(self) -> None:
        """A task: wait (bounded) until every connection is torn down, then stop the hub."""
        hub = self._current_hub()
        if hub is None:
            return
        deadline = time.monotonic() + self._close_timeout + 1.0
        while hub.registry.connections and time.monotonic() < deadline:
            self._backend.sleep(0.05)
        with self._backend.guarded():
            hub.stop()
