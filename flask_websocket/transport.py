"""Everything that talks to uWSGI: the one module that imports ``uwsgi``.

After the opening handshake the connection's socket becomes ours: we answer
the upgrade through WSGI's ``start_response`` (so bad handshakes get a proper
400/403/426 and we choose the subprotocol), flush the headers with a
zero-length ``write``, then duplicate uWSGI's connection fd and speak the
protocol on it ourselves. uWSGI's own WebSocket parser never sees a byte, so
a hostile frame cannot crash the worker, and any greenlet can write.
"""

from __future__ import annotations

import _socket
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from .exceptions import ConfigurationError

try:  # pragma: no cover - depends on the server
    import uwsgi as _uwsgi
except ImportError:  # not running under uWSGI
    _uwsgi = None

__all__ = [
    "TEST_SOCKET_KEY",
    "StartResponse",
    "check_server",
    "loop_engine",
    "open_connection_socket",
    "running_under_uwsgi",
    "sharedarea_read",
    "uwsgi_options",
]

#: WSGI environ key under which :mod:`flask_websocket.testing` hands over the
#: server end of a socket pair instead of uWSGI's connection.
TEST_SOCKET_KEY = "flask_websocket.test_socket"

StartResponse = Callable[..., Callable[[bytes], Any]]

_RUN_HINT = (
    "Start the app under uWSGI's gevent loop, for example "
    "`flask --app yourapp websocket run` or "
    "`uwsgi --http :8080 --http-websockets --gevent 1000 --module yourapp:app "
    "--master --need-app --die-on-term`."
)


def running_under_uwsgi() -> bool:
    """True when this process is a uWSGI worker (the ``uwsgi`` module exists)."""
    return _uwsgi is not None


def uwsgi_options() -> Dict[str, Any]:
    """uWSGI's command-line options, with ``str`` keys (empty outside uWSGI)."""
    if _uwsgi is None:
        return {}
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in _uwsgi.opt.items()}


def loop_engine() -> Optional[str]:
    """The uWSGI loop engine (``"gevent"``...), or ``None`` outside uWSGI."""
    if _uwsgi is None:
        return None
    loop = getattr(_uwsgi, "loop", None)
    if isinstance(loop, bytes):
        loop = loop.decode()
    return loop or None


def worker_count() -> int:
    """How many worker processes uWSGI runs (1 outside uWSGI)."""
    if _uwsgi is None:
        return 1
    return int(getattr(_uwsgi, "numproc", 1) or 1)


def worker_id() -> Optional[int]:
    """This worker's number (1..N) under uWSGI, else ``None``."""
    if _uwsgi is None:
        return None
    return int(_uwsgi.worker_id())


def check_server() -> None:
    """Fail at start-up, with the flag to add, if uWSGI runs so we cannot work.

    Does nothing outside uWSGI: the app may be imported by ``flask`` commands
    or by tests using :mod:`flask_websocket.testing`.
    """
    if _uwsgi is None:
        return
    options = uwsgi_options()
    if "http" in options and "http-websockets" not in options:
        raise ConfigurationError(
            "uWSGI's HTTP router (--http) drops WebSocket upgrades unless it "
            "runs with --http-websockets: add --http-websockets to the uwsgi "
            "command line (or use --http-socket, which needs no flag)."
        )
    if loop_engine() != "gevent":
        raise ConfigurationError(
            "Flask-WebSocket runs on uWSGI's gevent loop in this version, but "
            f"uWSGI runs the {loop_engine() or 'default'} loop: add --gevent N "
            "(N is the most connections one worker holds at once, e.g. --gevent 1000). " + _RUN_HINT
        )


def open_connection_socket(
    environ: Mapping[str, Any],
    start_response: StartResponse,
    headers: List[Tuple[str, str]],
) -> _socket.socket:
    """Send the 101 response and return the connection's socket, non-blocking.

    The socket is a duplicate of the server's: closing it does not end the
    request, ``shutdown`` does end the TCP stream.
    """
    test_socket = environ.get(TEST_SOCKET_KEY)
    if test_socket is not None:
        start_response("101 Switching Protocols", headers)
        fd = os.dup(test_socket.fileno())
    elif _uwsgi is not None:
        write = start_response("101 Switching Protocols", headers)
        write(b"")  # a zero-length write flushes the headers and nothing else
        fd = os.dup(_uwsgi.connection_fd())
    else:
        raise ConfigurationError("Flask-WebSocket serves WebSockets only under uWSGI. " + _RUN_HINT)
    # The C socket type, never gevent's monkey-patched wrapper: the connection
    # core makes non-blocking calls itself and waits in libev watchers.
    sock = _socket.socket(fileno=fd)
    sock.setblocking(False)
    return sock


def sharedarea_read(area: int, position: int, length: Optional[int] = None) -> bytes:
    """Read bytes from uWSGI's sharedarea ``area`` (``--sharedarea``)."""
    if _uwsgi is None:
        raise ConfigurationError(
            "the sharedarea exists only under uWSGI: start it with --sharedarea N. " + _RUN_HINT
        )
    data = _uwsgi.sharedarea_read(area, position, length or 0)
    if data is None:
        raise ValueError(f"cannot read sharedarea {area} at {position}: is --sharedarea set?")
    return bytes(data)
