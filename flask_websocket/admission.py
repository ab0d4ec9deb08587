"""How many WebSockets a worker takes: refuse with a status rather than hang.

Each WebSocket holds one of uWSGI's cores (``--gevent N``, ``--threads N``...)
for as long as it is open. Once every core is taken, uWSGI stops accepting:
the next client waits with no answer at all, and plain HTTP requests with
it. So a worker admits at most ``WEBSOCKET_MAX_CONNECTIONS`` WebSockets (by
default its cores less a reserve of 5%, at least one and at most 50, that
stays free to answer HTTP requests and to refuse further upgrades at once
with ``503`` and a ``Retry-After``). ``WEBSOCKET_MAX_CONNECTIONS_PER_IP`` (off by
default) caps the WebSockets one client address holds in a worker (``429``);
behind a proxy the address is the proxy's unless ``ProxyFix`` trusts its
``X-Forwarded-For``. Each refusal is logged, at most a few lines a second.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Mapping, Optional, Tuple

from .concurrency.blocking import thread_lock
from .logs import RateLimitedLog

__all__ = ["Admission", "default_limit"]

logger = logging.getLogger("flask_websocket")

#: Share of the cores kept free when the limit is automatic, and its bounds.
RESERVE_SHARE = 0.05
RESERVE_MAX = 50
#: Seconds a refused client is told to wait before trying again.
RETRY_AFTER = 5


def default_limit(cores: Optional[int]) -> Optional[int]:
    """The automatic per-worker limit for ``cores`` (``None``: unknown, no limit)."""
    if cores is None:
        return None
    if cores <= 1:
        return 1  # one core: nothing can be kept in reserve
    return cores - min(max(1, int(cores * RESERVE_SHARE)), RESERVE_MAX)


class Admission:
    """Counts this worker's WebSockets and refuses those over the limits."""

    def __init__(
        self, limit: Optional[int], per_ip: Optional[int], cores: Optional[int]
    ) -> None:
        self.limit = limit
        self.per_ip = per_ip
        self.cores = cores
        self.open = 0
        self._by_ip: Dict[str, int] = {}
        self._lock = thread_lock()
        self._log = RateLimitedLog(logger, interval=1.0)

    def admit(self, environ: Mapping[str, Any]) -> Optional[Tuple[int, str]]:
        """Count this connection in; or the status and text to refuse it with."""
        address = str(environ.get("REMOTE_ADDR") or "?")
        with self._lock:
            if self.limit is not None and self.open >= self.limit:
                refusal = (503, self._refused_full(environ, address))
            elif self.per_ip is not None and self._by_ip.get(address, 0) >= self.per_ip:
                refusal = (429, self._refused_ip(environ, address))
            else:
                self.open += 1
                self._by_ip[address] = self._by_ip.get(address, 0) + 1
                return None
        return refusal

    def release(self, environ: Mapping[str, Any]) -> None:
        """Count a connection admitted by :meth:`admit` out again."""
        address = str(environ.get("REMOTE_ADDR") or "?")
        with self._lock:
            self.open -= 1
            left = self._by_ip.get(address, 1) - 1
            if left > 0:
                self._by_ip[address] = left
            else:
                self._by_ip.pop(address, None)

    def _refused_full(self, environ: Mapping[str, Any], address: str) -> str:
        source = "" if self.cores is None else f" (of {self.cores} cores; the rest answer HTTP)"
        self._log.warning(
            "full",
            "refused a WebSocket to %s from %s with 503: this worker holds %d, its limit%s "
            "(WEBSOCKET_MAX_CONNECTIONS; more workers or cores take more)",
            environ.get("PATH_INFO", "/"),
            address,
            self.open,
            source,
        )
        return "Service unavailable: this server holds all the WebSockets it can. Try again."

    def _refused_ip(self, environ: Mapping[str, Any], address: str) -> str:
        self._log.warning(
            "per-ip",
            "refused a WebSocket to %s from %s with 429: it holds %d in this worker "
            "(WEBSOCKET_MAX_CONNECTIONS_PER_IP)",
            environ.get("PATH_INFO", "/"),
            address,
            self._by_ip.get(address, 0),
        )
        return "Too many requests: this address holds all the WebSockets it may. Try again."
