"""Hubs carry rooms and broadcasts between processes.

======================  =====================================================
``memory://``           one worker process (nothing to carry)
``local://``            the workers of one host, over unix sockets;
                        no external service. The default when uWSGI runs
                        more than one worker.
``redis://host:port/n`` many hosts, over Redis pub/sub
======================  =====================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Optional
from urllib.parse import urlsplit

from ..exceptions import ConfigurationError
from .base import BroadcastTooLarge, Envelope, Hub, HubError

if TYPE_CHECKING:  # pragma: no cover
    from ..concurrency.base import Backend
    from ..rooms import RoomRegistry

__all__ = ["BroadcastTooLarge", "Envelope", "Hub", "HubError", "create_hub"]


def create_hub(
    url: str,
    registry: RoomRegistry,
    options: Optional[Mapping[str, Any]] = None,
    backend: Optional[Backend] = None,
) -> Hub:
    """The hub for ``url`` (``memory://``, ``local://``, ``redis://...``).

    ``backend`` is the concurrency backend it runs on (by default the one of
    the server this process runs in).
    """
    scheme = urlsplit(url).scheme
    options = dict(options or {})
    if scheme == "memory":
        from .memory import MemoryHub

        return MemoryHub(registry, options, backend)
    if scheme == "local":
        from .local import LocalHub

        return LocalHub(registry, options, backend)
    if scheme in ("redis", "rediss", "unix"):
        from .redis import RedisHub

        options.setdefault("url", url)
        return RedisHub(registry, options, backend)
    raise ConfigurationError(
        f"WEBSOCKET_HUB_URL is {url!r}: use memory://, local:// or redis://host:port/db",
        key="WEBSOCKET_HUB_URL",
    )
