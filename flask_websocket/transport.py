"""Everything that talks to uWSGI: the one module that imports ``uwsgi``.

After the opening handshake the connection's socket becomes ours: we answer
the upgrade through WSGI's ``start_response`` (so bad handshakes get a proper
400/403/426 and we choose the subprotocol), flush the headers with a
zero-length ``write``, then speak the protocol ourselves on uWSGI's
connection fd, which we borrow (never closing it: uWSGI does when the request
ends), so a connection costs one file descriptor. uWSGI's own WebSocket parser never sees a byte, so
a hostile frame cannot crash the worker, and any greenlet can write.
"""

from __future__ import annotations

import _socket
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from .close_codes import CloseCode
from .exceptions import ConfigurationError, ConnectionClosedError

try:  # pragma: no cover - depends on the server
    import uwsgi as _uwsgi
except ImportError:  # not running under uWSGI
    _uwsgi = None

# PyPy's continulets (uWSGI's async engine under PyPy) do not switch the
# current contextvars context as greenlets do: a suspended core would resume
# in the context of whichever core ran last. suspend_until_readable puts its
# own back; PyPy alone can set the current context.
try:  # pragma: no cover - PyPy only
    from __pypy__ import get_contextvar_context as _get_context
    from __pypy__ import set_contextvar_context as _set_context
except ImportError:
    _get_context = _set_context = None

__all__ = [
    "PYPY_CONTINULETS_EVAL",
    "TEST_SOCKET_KEY",
    "StartResponse",
    "check_server",
    "concurrency_model",
    "cores_per_worker",
    "current_connection_fd",
    "loop_engine",
    "open_connection_socket",
    "pypy_continulets_installed",
    "release_socket",
    "sharedarea_read",
    "suspend_until_readable",
    "threads_enabled",
    "ugreen_patched",
    "uwsgi_options",
]

#: WSGI environ key under which :mod:`flask_websocket.testing` hands over the
#: server end of a socket pair instead of uWSGI's connection.
TEST_SOCKET_KEY = "flask_websocket.test_socket"

StartResponse = Callable[..., Callable[[bytes], Any]]

_RUN_HINT = (
    "For example "
    "`flask --app yourapp websocket run` or "
    "`uwsgi --http :8080 --http-websockets --gevent 1000 --module yourapp:app "
    "--master --need-app --die-on-term`."
)


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


def _int_option(options: Mapping[str, Any], name: str) -> int:
    value = options.get(name)
    if isinstance(value, list):  # an option given twice
        value = value[-1]
    if isinstance(value, bytes):
        value = value.decode()
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


#: The concurrency models :func:`concurrency_model` names.
MODELS = ("gevent", "asyncio", "greenlet", "ugreen", "continulets", "threads", "processes")

#: The ``--pypy-eval`` code that installs the continulet engine of uWSGI's
#: PyPy plugin: what ``uwsgi_pypy_setup_continulets()`` does, which fails in
#: uWSGI 2.0.31 on Python 3 (``lib.uwsgi["async"]`` on a cffi struct; see
#: docs/pypy.rst).
PYPY_CONTINULETS_EVAL = (
    "lib.uwsgi.schedule_to_main = uwsgi_pypy_continulet_switch; "
    "lib.uwsgi.schedule_to_req = uwsgi_pypy_continulet_schedule"
)


def _pypy_plugin() -> Optional[Dict[str, Any]]:
    """The namespace of uWSGI's PyPy plugin set-up code, under that plugin.

    The plugin's ``uwsgi`` module is made of Python functions defined in its
    ``pypy_setup.py``, whose globals hold the cffi ``lib`` (uWSGI's own
    ``struct uwsgi_server`` as ``lib.uwsgi``) and ``ffi``. ``None`` under
    CPython's plugin, whose functions are C.
    """
    if _uwsgi is None or sys.implementation.name != "pypy":
        return None
    namespace = getattr(getattr(_uwsgi, "suspend", None), "__globals__", None)
    if not isinstance(namespace, dict) or "lib" not in namespace or "ffi" not in namespace:
        return None
    return namespace


def pypy_continulets_installed() -> bool:
    """True when uWSGI's PyPy plugin suspends request cores with continulets.

    That is when uWSGI's ``schedule_to_main`` hook (what ``uwsgi.suspend``
    calls) is the plugin's continulet switch, however it was installed (the
    ``--pypy-eval`` workaround, or ``uwsgi_pypy_setup_continulets()`` once
    uWSGI fixes it). The options give no sign of it.
    """
    namespace = _pypy_plugin()
    if namespace is None:
        return False
    switch = namespace.get("uwsgi_pypy_continulet_switch")
    try:
        current = namespace["lib"].uwsgi.schedule_to_main
        return bool(switch is not None and current != namespace["ffi"].NULL and current == switch)
    except (AttributeError, TypeError):  # another plugin version's layout
        return False


def concurrency_model() -> Optional[str]:
    """How this uWSGI worker runs requests: one of :data:`MODELS`.

    ``"continulets"`` is ``--async N`` under uWSGI's PyPy plugin with its
    continulet engine installed (see :func:`pypy_continulets_installed`).
    ``None`` outside uWSGI; ``"async"`` for ``--async N`` with no suspend
    engine and ``"loop:<name>"`` for a loop engine we do not know, which
    :func:`check_server` refuses.
    """
    if _uwsgi is None:
        return None
    options = uwsgi_options()
    loop = loop_engine()
    if loop == "gevent" or "gevent" in options:
        return "gevent"
    if loop == "asyncio" or "asyncio" in options:
        return "asyncio"
    if loop not in (None, "async", "uwsgi"):
        return f"loop:{loop}"
    if _int_option(options, "async") > 1:
        if pypy_continulets_installed():
            return "continulets"
        if "greenlet" in options:
            return "greenlet"
        if "ugreen" in options:
            return "ugreen"
        return "async"
    if _int_option(options, "threads") > 1:
        return "threads"
    return "processes"


def cores_per_worker() -> Optional[int]:
    """How many requests one worker serves at once (uWSGI's cores), ``None`` outside uWSGI.

    Each WebSocket holds a core for its whole life: past this many, uWSGI
    stops accepting and a new client waits unanswered.
    """
    if _uwsgi is None:
        return None
    cores = getattr(_uwsgi, "cores", None)
    if isinstance(cores, int) and cores > 0:
        return cores
    options = uwsgi_options()
    for name in ("gevent", "asyncio", "async", "threads"):
        value = _int_option(options, name)
        if value > 0:
            return value
    return 1


def threads_enabled() -> bool:
    """True if uWSGI lets Python threads run.

    Always so since uWSGI 2.0.31 (``--enable-threads`` became a no-op);
    older versions need ``--enable-threads`` or ``--threads``.
    """
    if _uwsgi is None or _pypy_plugin() is not None:
        return True  # uWSGI's PyPy plugin turns threads on as it loads (uwsgi_pypy_onload)
    options = uwsgi_options()
    return (
        bool(getattr(_uwsgi, "has_threads", 0))
        or "enable-threads" in options
        or _int_option(options, "threads") > 1
    )


def ugreen_patched() -> bool:
    """True if this uWSGI's Python plugin lets uGreen cores suspend safely.

    Stock uWSGI (2.0.31 and master) keeps the GIL and shares one Python data
    stack across suspended uGreen cores on Python 3.11+; the patch in
    ``scripts/patches/`` fixes both and sets ``uwsgi.ugreen_suspends_python``.
    Python before 3.11 needs no data stack swap, but the GIL deadlock remains.
    """
    return bool(getattr(_uwsgi, "ugreen_suspends_python", 0))


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
    model = concurrency_model()
    if model == "gevent":
        return
    if model == "async" and _pypy_plugin() is not None:
        raise ConfigurationError(
            "uWSGI's PyPy plugin runs --async without its continulet engine, so a "
            "WebSocket handler could not wait without blocking the worker. uWSGI "
            "2.0.31's uwsgi_pypy_setup_continulets() fails on Python 3; install the "
            f"engine with: --pypy-eval '{PYPY_CONTINULETS_EVAL}' (see docs/pypy.rst)."
        )
    if model == "async":
        raise ConfigurationError(
            "uWSGI runs --async without a suspend engine, so a WebSocket handler "
            "could not wait without blocking the worker: add --ugreen or --greenlet "
            "(or use --gevent N). " + _RUN_HINT
        )
    if model is not None and model.startswith("loop:"):
        raise ConfigurationError(
            f"Flask-WebSocket cannot run on uWSGI's {model[5:]} loop engine: use "
            "--gevent N, --asyncio N --greenlet, --async N --ugreen or --greenlet, "
            "--threads N or --processes N. " + _RUN_HINT
        )
    if model == "ugreen" and not ugreen_patched():
        raise ConfigurationError(
            "uWSGI's uGreen engine deadlocks the worker on Python 3.11+ as soon as a "
            "second request arrives while a core is suspended (the suspended core keeps "
            "the GIL), unless uWSGI is built with the patch in Flask-WebSocket's "
            "scripts/patches/ (scripts/install-uwsgi.sh builds it; see "
            "docs/concurrency.rst). Use --async N --greenlet, which serves the same "
            "async cores, or that build. " + _RUN_HINT
        )
    if model == "asyncio" and "greenlet" not in options:
        raise ConfigurationError(
            "uWSGI's asyncio loop needs --greenlet as its suspend engine: add --greenlet."
        )
    if model in ("threads", "processes") and not threads_enabled():
        raise ConfigurationError(
            f"Flask-WebSocket reads sockets from a thread of its own under the {model} "
            "model, and uWSGI keeps Python threads from running unless asked: add "
            "--enable-threads (or use --gevent N)."
        )


def current_connection_fd() -> Optional[int]:
    """The client socket's fd of the request this code runs for, if any."""
    if _uwsgi is None:
        return None
    try:
        fd = int(_uwsgi.connection_fd())
    except Exception:  # not inside a request: SystemError (CPython), Exception (PyPy)
        return None
    return fd if fd >= 0 else None


def suspend_until_readable(fd: int) -> None:
    """Suspend this uWSGI async core until ``fd`` is readable; other cores run.

    Give uWSGI one fd per suspension: with two, uWSGI closes the second when
    both are ready in the same pass.
    """
    assert _uwsgi is not None
    _uwsgi.wait_fd_read(fd, 0)  # 0: no uWSGI timeout (it counts whole seconds)
    if _get_context is None:
        _uwsgi.suspend()
        return
    context = _get_context()  # PyPy: this core's contextvars (see the import)
    _uwsgi.suspend()
    _set_context(context)


def open_connection_socket(
    environ: Mapping[str, Any],
    start_response: StartResponse,
    headers: List[Tuple[str, str]],
) -> _socket.socket:
    """Send the 101 response and return the connection's socket, non-blocking.

    The socket object wraps the server's own file descriptor, borrowed: give
    it back with :func:`release_socket`, never ``close()`` it (the server
    closes the fd when the request ends; closing it twice could close another
    connection that got the same number). ``shutdown`` ends the TCP stream.
    Not duplicating the fd keeps a connection at one descriptor, so a worker
    holds as many connections as its fd limit allows.
    """
    test_socket = environ.get(TEST_SOCKET_KEY)
    if test_socket is not None:
        start_response("101 Switching Protocols", headers)
        fd = test_socket.fileno()
    elif _uwsgi is not None:
        try:
            write = start_response("101 Switching Protocols", headers)
            write(b"")  # a zero-length write flushes the headers and nothing else
        except OSError as exc:  # the client hung up right after its request
            raise ConnectionClosedError(
                CloseCode.ABNORMAL_CLOSURE, f"connection lost during the handshake ({exc})"
            ) from None
        fd = _uwsgi.connection_fd()
    else:
        raise ConfigurationError("Flask-WebSocket serves WebSockets only under uWSGI. " + _RUN_HINT)
    # The C socket type, never gevent's monkey-patched wrapper: the connection
    # core makes non-blocking calls itself and waits in libev watchers.
    sock = _socket.socket(fileno=fd)
    sock.setblocking(False)
    return sock


def release_socket(sock: _socket.socket) -> None:
    """Give back a socket from :func:`open_connection_socket`, leaving its fd open."""
    if sock.fileno() >= 0:
        sock.detach()


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
