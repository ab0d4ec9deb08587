"""Concurrency backends, and the choice of one from how uWSGI was started."""

from __future__ import annotations

from .. import transport
from ..exceptions import ConfigurationError
from .base import Backend

__all__ = ["Backend", "backend_for_server"]


def backend_for_server() -> Backend:
    """The backend for the server this process runs in.

    Under uWSGI this follows the loop engine (``--gevent N`` → gevent).
    Outside uWSGI (the in-process test client) it is gevent too.
    """
    engine = transport.loop_engine()
    if engine in (None, "gevent"):
        try:
            from .gevent import GeventBackend
        except ImportError as exc:  # pragma: no cover - gevent is a dependency
            raise ConfigurationError(
                f"gevent is not importable ({exc}): pip install gevent"
            ) from exc
        return GeventBackend()
    transport.check_server()  # raises with the flags to use
    raise ConfigurationError(f"no concurrency backend for uWSGI's {engine} loop")
