"""Concurrency backends, and the choice of one from how uWSGI was started.

================  ==========================================  ===========================
model             uWSGI flags                                 backend
================  ==========================================  ===========================
gevent            ``--gevent N``                              :mod:`.gevent`
threads           ``--threads N``                             :mod:`.threads`
processes         ``--processes N``                           :mod:`.threads`
uGreen            ``--async N --ugreen`` (patched uWSGI)      :mod:`.uwsgi_async`
greenlet          ``--async N --greenlet``                    :mod:`.uwsgi_async`
asyncio           ``--asyncio N --greenlet``                  :mod:`.asyncio_loop`
continulets       ``--async N`` on PyPy (docs/pypy.rst)       :mod:`.uwsgi_async`
================  ==========================================  ===========================
"""

from __future__ import annotations

from typing import Optional, Type

from .. import transport
from ..exceptions import ConfigurationError
from .base import Backend

__all__ = ["Backend", "backend_class", "backend_for_server"]


def backend_class(model: Optional[str]) -> Type[Backend]:
    """The backend class for a model of :func:`transport.concurrency_model`.

    Its class attributes (:attr:`Backend.background_io`) say what the model
    can do before any backend is made (in the master, before the fork).
    """
    if model in (None, "gevent"):
        try:
            from .gevent import GeventBackend
        except ImportError as exc:  # pragma: no cover - gevent is a dependency
            raise ConfigurationError(
                f"gevent is not importable ({exc}): pip install gevent"
            ) from exc
        return GeventBackend
    if model in ("threads", "processes"):
        from .threads import ThreadBackend

        return ThreadBackend
    if model == "asyncio":
        from .asyncio_loop import AsyncioBackend

        return AsyncioBackend
    from .uwsgi_async import UwsgiAsyncBackend

    return UwsgiAsyncBackend


def backend_for_server() -> Backend:
    """The backend for the server this process runs in.

    Under uWSGI this follows :func:`transport.concurrency_model`. Outside
    uWSGI (the in-process test client) it is gevent.
    """
    model = transport.concurrency_model()
    if model not in (None, "gevent"):
        transport.check_server()  # raises with the flags to use
    return backend_class(model)(model)
