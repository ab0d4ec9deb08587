"""The features app, plus two plain views for the ``app.debug`` tests.

Serve it with ``FWS_DEBUG=1`` in the environment: ``tests.apps.features`` then
sets ``app.debug`` before ``WebSocket(app)``, which wraps the app in
Werkzeug's ``DebuggedApplication``. The views added here let a test see that
from outside the worker.
"""

from __future__ import annotations

from typing import Any, List

from tests.apps.features import app


@app.get("/http-raises")
def http_raises() -> str:
    """A plain HTTP view that fails: the debugger page should show it."""
    raise RuntimeError("boom from a plain view")


@app.get("/wsgi-chain")
def wsgi_chain() -> str:
    """The type names of the WSGI wrappers around the app, outermost first."""
    names: List[str] = []
    current: Any = app.wsgi_app
    for _ in range(10):  # bounded: a handful of wrappers at most
        names.append(getattr(current, "__name__", None) or type(current).__name__)
        inner = getattr(current, "wsgi_app", None) or getattr(current, "app", None)
        if inner is None or inner is current:
            break
        current = inner
    return " > ".join(names)
