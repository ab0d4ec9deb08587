"""The Flask extension: WebSocket routes as ordinary rules of the app.

A WebSocket route is a pair of rules in ``app.url_map`` with one endpoint:
one with ``websocket=True`` (Werkzeug routes upgrade requests only there)
and a plain twin that answers a normal GET with a 400 explaining that a
WebSocket was expected. Both call one view, so ``url_for``, converters,
blueprints, ``before_request``, ``session``, ``g`` and ``flask.request`` work
as in any view, and the handler runs inside the request context.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import logging
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Type, TypeVar, Union
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, current_app, has_app_context, request
from websockets.exceptions import InvalidHeader
from werkzeug.exceptions import BadRequest, HTTPException

from . import transport, wire
from .admission import RETRY_AFTER, Admission, default_limit
from .close_codes import CloseCode
from .compression import DeflateSettings
from .concurrency import backend_class, backend_for_server
from .concurrency.base import Backend
from .concurrency.blocking import thread_rlock
from .config import CONFIG_DEFAULTS, check_config, compression_problem, rate_limit_problem
from .connection import (
    ConnectionOptions,
    GuardedConnection,
    WebSocketConnection,
)
from .drain import Drain
from .exceptions import ConfigurationError, ConnectionClosed
from .history import HistoryItem, HistoryPolicy, Position
from .hubs import Hub, create_hub
from .hubs.base import (
    KIND_ALL,
    KIND_DIRECT,
    KIND_ROOM,
    KIND_USER,
    OP_CLOSE,
    Envelope,
    check_close_code,
    check_room,
    check_user_id,
    close_payload,
)
from .origins import OriginPolicy
from .protocol import OP_TEXT, ServerProtocol, encode_message
from .rooms import RoomRegistry

__all__ = ["CONFIG_DEFAULTS", "WebSocket", "default_hub_name"]

logger = logging.getLogger("flask_websocket")

Handler = Callable[..., Any]
H = TypeVar("H", bound=Handler)
L = TypeVar("L", bound=Callable[[], Any])


#: WSGI environ key where the middleware leaves the server's start_response.
START_RESPONSE_KEY = "flask_websocket.start_response"

EXTENSION_KEY = "websocket"

#: The blueprint that serves the JavaScript client, ``client.js`` (docs/client.rst):
#: ``url_for("flask_websocket.static", filename="client.js")``.
CLIENT_BLUEPRINT = "flask_websocket"
#: Where it serves it: ``/_websocket/client.js``.
CLIENT_URL_PATH = "/_websocket"

_FORBIDDEN_ORIGIN = (
    "Forbidden: this WebSocket does not accept connections from pages of that origin "
    "(WEBSOCKET_ALLOWED_ORIGINS).\n"
)
_NEEDS_HTTP11 = "Bad request: a WebSocket upgrade needs HTTP/1.1 (RFC 6455, 4.1).\n"

_NOT_AN_UPGRADE = (
    "This URL serves a WebSocket: expected a WebSocket upgrade request "
    "(GET with 'Connection: Upgrade' and 'Upgrade: websocket' headers). "
    "Connect with a WebSocket client, e.g. new WebSocket(url) in a browser."
)

_NO_PINGS = (
    "WEBSOCKET_PING_INTERVAL is %r: the server sends no pings, so an idle WebSocket "
    "is closed by the first proxy whose idle timeout passes (nginx: proxy_read_timeout, "
    "60 s by default; HAProxy: timeout tunnel; uWSGI's --http router: --http-timeout, "
    "60 s by default). Set it to a number of seconds below those timeouts (default 25)."
)


@dataclass(frozen=True, eq=False)  # hashed by identity: a key of _State.options
class _Route:
    rule: str
    handler: Handler
    endpoint: str
    subprotocols: Optional[Sequence[str]]
    max_message_size: Any  # int, None (no limit) or _DEFAULT
    rate_limit: Any  # (rate, burst), None (no limit) or _DEFAULT
    compression: Any  # "permessage-deflate", None (off) or _DEFAULT
    blueprint: Optional[Blueprint]
    options: Dict[str, Any]


_DEFAULT: Any = object()
_LINUX = sys.platform.startswith("linux")


class _State:
    """What the extension keeps per app, in ``app.extensions["websocket"]``."""

    def __init__(self, extension: WebSocket, app: Flask) -> None:
        self.extension = extension
        self.upgraded_response_class = _upgraded_response_class(app.response_class)
        #: Connection options per route, built from the config at first use.
        self.options: Dict[_Route, ConnectionOptions] = {}
        self.app = app
        self._backend: Optional[Backend] = None
        self._hub: Optional[Hub] = None
        self._hub_pid = 0
        self._origin_policy: Optional[OriginPolicy] = None
        self._admission: Optional[Admission] = None
        #: Closes this worker's WebSockets when uWSGI reloads or stops it.
        self.drain: Optional[Drain] = None
        # Threads: one backend and one hub per process, however many threads
        # see their first connection at once. Re-entrant: the hub needs the backend.
        self._hub_lock = thread_rlock()

    def use_backend(self, backend: Backend) -> None:
        """Serve this app's connections on ``backend`` (the test client's choice).

        Raises:
            RuntimeError: connections are open on another backend.
        """
        with self._hub_lock:
            if self._backend is backend:
                return
            hub = self._hub
            if hub is not None and hub.registry.connections:
                raise RuntimeError(
                    "connections of this app are open under another concurrency model: "
                    "close them before testing under another"
                )
            if hub is not None:
                hub.stop()
            self._hub = None
            self._backend = backend

    def admission(self, config: Any) -> Admission:
        """The connection limits, built from the config at the first connection."""
        admission = self._admission
        if admission is None:
            check_config(config)  # the app may have changed it since init_app
            cores = transport.cores_per_worker()
            limit = config["WEBSOCKET_MAX_CONNECTIONS"] or default_limit(cores)
            per_ip = config["WEBSOCKET_MAX_CONNECTIONS_PER_IP"]
            admission = self._admission = Admission(limit, per_ip, cores)
        return admission

    def origin_policy(self, config: Any) -> OriginPolicy:
        """The Origin check, built from the config at the first connection."""
        policy = self._origin_policy
        if policy is None:
            policy = self._origin_policy = OriginPolicy(config["WEBSOCKET_ALLOWED_ORIGINS"])
        return policy

    @property
    def backend(self) -> Backend:
        backend = self._backend
        if backend is None:
            with self._hub_lock:  # threads: one backend (one loop, one guard) per app
                if self._backend is None:
                    self._backend = backend_for_server()
                    if transport.worker_id() is not None:  # a uWSGI worker: reloads close us
                        self.drain = Drain(
                            self._backend,
                            self._current_hub,
                            float(self.app.config["WEBSOCKET_CLOSE_TIMEOUT"]),
                        )
                        self.drain.install()
                backend = self._backend
        return backend

    def _current_hub(self) -> Optional[Hub]:
        """The hub of this process if it has one (none made yet, or the master's)."""
        return self._hub if self._hub_pid == os.getpid() else None

    @property
    def hub(self) -> Hub:
        """This process's hub (and room registry), made on first use.

        Made per process: uWSGI forks workers after loading the app, and a
        hub's sockets and listener belong to the process that made them.
        """
        hub = self._hub
        if hub is None or self._hub_pid != os.getpid():
            with self._hub_lock:
                if self._hub is None or self._hub_pid != os.getpid():
                    self._start_hub()
                hub = self._hub
                assert hub is not None
        return hub

    def _start_hub(self) -> None:
        config = self.app.config
        backend = self.backend
        # The local hub by default wherever it can listen, even for one
        # worker: it costs a socket, and lets other processes on the host
        # (more workers, a `flask` CLI command) broadcast to this one.
        default = "local://" if _LINUX and backend.background_io else "memory://"
        url = config["WEBSOCKET_HUB_URL"] or default
        scheme = urlsplit(url).scheme
        _check_hub_url(url, backend.name, backend.background_io)
        check_config(config)
        options = dict(config["WEBSOCKET_HUB_OPTIONS"] or {})
        if scheme == "local":
            options.setdefault("name", default_hub_name(self.app))
        else:
            options.setdefault("name", self.app.import_name)
        registry = RoomRegistry()
        hub = create_hub(url, registry, options, backend)
        hub.history = HistoryPolicy(config["WEBSOCKET_HISTORY"])
        registry.hub = hub
        self._hub, self._hub_pid = hub, os.getpid()
        hub.start()  # listen now: this process holds (or is about to hold) members

    @property
    def registry(self) -> RoomRegistry:
        """This process's registry of connections and rooms."""
        return self.hub.registry


def _check_hub_url(url: Any, model: str, background_io: bool) -> None:
    """Refuse a hub that needs other processes under a model that cannot listen for them."""
    if url and urlsplit(str(url)).scheme != "memory" and not background_io:
        raise ConfigurationError(
            f"WEBSOCKET_HUB_URL {url!r} needs a worker that listens for other processes "
            f"while its handlers compute, and the {model} model has no loop of its own (only "
            "a waiting core runs it): use --gevent N, --threads N, --processes N or "
            "--asyncio N --greenlet for rooms across workers, or memory:// (rooms and "
            "broadcast inside each worker process)"
        )


def default_hub_name(app: Flask) -> str:
    """The local hub's name for ``app`` when ``WEBSOCKET_HUB_OPTIONS`` gives none.

    Processes share rooms when they run the same app (its import name) from
    the same directory (the real path of ``app.root_path``) with the same
    ``SECRET_KEY``, as the same user: the workers of one deployment, and a
    ``flask`` command run in its directory with its configuration. Two
    deployments on one host (two directories, or one directory with two
    configurations whose secret keys differ) share nothing. The name is the
    import name and a digest of the three; the key itself is not in it.
    """
    secret = app.config.get("SECRET_KEY") or b""
    if not isinstance(secret, bytes):
        secret = str(secret).encode()
    identity = b"\0".join(
        (
            b"flask-websocket local hub",
            app.import_name.encode(),
            os.path.realpath(app.root_path).encode(),
            secret,
        )
    )
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", app.import_name)[:40]
    return f"{readable}-{hashlib.sha256(identity).hexdigest()[:16]}"


def capture_start_response(
    wsgi_app: Callable[..., Iterable[bytes]], own_context: bool = False
) -> Callable[..., Any]:
    """Wrap ``wsgi_app`` so that a view can answer the upgrade itself.

    Flask gives a view no access to ``start_response``; the handshake needs
    it (a ``101`` response and a zero-length write to flush it). A plain
    function rather than a class with ``__call__``: Python 3.11 inlines the
    call, and every C stack frame saved is memory saved per idle connection.
    The wrapped app stays reachable as ``.wsgi_app``.

    With ``own_context`` each request runs in a new, empty
    :class:`contextvars.Context`, as each greenlet does: Flask keeps its
    request context in context variables, and PyPy's continulets (the
    "continulets" model) share one context between the request cores.
    """

    inner = wsgi_app
    if own_context:

        def inner(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            return contextvars.Context().run(wsgi_app, environ, start_response)

    def flask_websocket_middleware(
        environ: Dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if not environ.get("REQUEST_METHOD"):
            # uWSGI's --http-socket hands on a request line without a method
            # ("GET\r\n\r\n", garbage): Flask would fail with a traceback per
            # request, which any client could cause at will. The client's error.
            start_response("400 Bad Request", [("Content-Type", "text/plain")])
            return [b"Bad request: no method in the request line.\n"]
        environ[START_RESPONSE_KEY] = start_response
        return inner(environ, start_response)

    flask_websocket_middleware.wsgi_app = wsgi_app  # type: ignore[attr-defined]
    return flask_websocket_middleware


def _upgraded_response_class(base: Type[Response]) -> Type[Response]:
    """A response class of the app's own kind that sends nothing.

    Returned by the view once the connection was upgraded: the ``101`` went
    out already, and calling ``start_response`` again would fail ("headers
    already sent").
    """

    def __call__(self: Response, environ: Any, start_response: Any) -> Iterable[bytes]:
        return []

    return type("WebSocketUpgradedResponse", (base,), {"__call__": __call__})


class WebSocket:
    """Serve WebSocket routes from a Flask app on uWSGI.

    ::

        app = Flask(__name__)
        websocket = WebSocket(app)

        @websocket.route("/echo")
        def echo(ws):
            while True:
                ws.send(ws.receive())

    Or, with an application factory, ``websocket = WebSocket()`` then
    ``websocket.init_app(app)``. Routes declared before ``init_app`` are
    added to every app it initialises.

    With ``app.debug`` set before ``init_app``, the app is wrapped in
    Werkzeug's interactive debugger (``DebuggedApplication``).
    """

    def __init__(self, app: Optional[Flask] = None) -> None:
        self._user_id_loader: Optional[Callable[[], Any]] = None
        self._routes: List[_Route] = []
        self._apps: List[Flask] = []
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Set up ``app``: config defaults, middleware, routes, CLI commands.

        Also registers the blueprint ``flask_websocket``, which serves the
        JavaScript client at ``/_websocket/client.js``
        (``url_for("flask_websocket.static", filename="client.js")``).

        Logs a warning when ``WEBSOCKET_PING_INTERVAL`` turns pings off.

        Raises:
            RuntimeError: Flask-WebSocket was already initialised on ``app``.
            ConfigurationError: uWSGI runs with flags that cannot serve WebSockets.
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "Flask-WebSocket is already initialised on this app: call "
                "WebSocket(app) or websocket.init_app(app) once per app."
            )
        transport.check_server()
        for key, value in CONFIG_DEFAULTS.items():
            app.config.setdefault(key, value)
        check_config(app.config)
        if not app.config["WEBSOCKET_PING_INTERVAL"]:
            app.logger.warning(_NO_PINGS, app.config["WEBSOCKET_PING_INTERVAL"])
        if "*" in (app.config["WEBSOCKET_ALLOWED_ORIGINS"] or ()):
            logger.warning(
                "WEBSOCKET_ALLOWED_ORIGINS allows any origin ('*'): any web page a user visits "
                "can open this app's WebSockets with the user's cookies (cross-site WebSocket "
                "hijacking). Keep it only if every connection authenticates with a token."
            )
        model = transport.concurrency_model()
        if model is not None:  # at start, before the first connection meets it
            backend = backend_class(model)
            _check_hub_url(app.config["WEBSOCKET_HUB_URL"], model, backend.background_io)
        app.extensions[EXTENSION_KEY] = _State(self, app)
        if app.debug:
            from werkzeug.debug import DebuggedApplication

            app.wsgi_app = DebuggedApplication(app.wsgi_app, evalex=True)  # type: ignore[method-assign]
        app.wsgi_app = capture_start_response(  # type: ignore[method-assign]
            app.wsgi_app, own_context=transport.concurrency_model() == "continulets"
        )

        from .cli import websocket_cli

        app.cli.add_command(websocket_cli)
        client = Blueprint(
            CLIENT_BLUEPRINT, __name__, static_folder="static", static_url_path=CLIENT_URL_PATH
        )
        app.register_blueprint(client)
        self._apps.append(app)
        for route in self._routes:
            if route.blueprint is None:
                self._add_rules(app, route)

    def route(
        self,
        rule: str,
        *,
        endpoint: Optional[str] = None,
        subprotocols: Optional[Sequence[str]] = None,
        max_message_size: Any = _DEFAULT,
        rate_limit: Any = _DEFAULT,
        compression: Any = _DEFAULT,
        blueprint: Optional[Blueprint] = None,
        **options: Any,
    ) -> Callable[[H], H]:
        """Register the decorated function as the handler of WebSocket route ``rule``.

        The handler is called as ``handler(ws, **view_args)`` where ``ws`` is
        a :class:`~flask_websocket.connection.WebSocketConnection`. When it
        returns, the connection closes with 1000; when it raises, with 1011
        (and the traceback is logged); when the peer leaves, the
        :class:`~flask_websocket.ConnectionClosed` it raises ends it quietly.

        Args:
            rule: URL rule, with converters (``"/chat/<room>"``).
            endpoint: endpoint name for ``url_for``; the function's name by default.
            subprotocols: subprotocols this route speaks, in order of
                preference; the first one the client offers is chosen, and a
                client offering none of them is refused.
            max_message_size: override ``WEBSOCKET_MAX_MESSAGE_SIZE`` for this
                route (``None``: no limit).
            rate_limit: override ``WEBSOCKET_RATE_LIMIT`` for this route:
                ``(messages per second, burst)`` a client may send, or ``None``
                for no limit.
            compression: override ``WEBSOCKET_COMPRESSION`` for this route:
                ``"permessage-deflate"`` to compress when the client offers
                it, ``None`` for no compression.
            blueprint: register the route on this blueprint instead of the app.
            options: passed on to :class:`werkzeug.routing.Rule`.

        Raises:
            ValueError: ``rate_limit`` is not a ``(rate, burst)`` pair, or
                ``compression`` not one of its values.
        """
        if rate_limit is not _DEFAULT:
            problem = rate_limit_problem(rate_limit)
            if problem is not None:
                raise ValueError(f"rate_limit of {rule!r} is {rate_limit!r}: use {problem}")
        if compression is not _DEFAULT:
            problem = compression_problem(compression)
            if problem is not None:
                raise ValueError(f"compression of {rule!r} is {compression!r}: use {problem}")

        def decorator(handler: H) -> H:
            route = _Route(
                rule=rule,
                handler=handler,
                endpoint=endpoint or handler.__name__,
                subprotocols=list(subprotocols) if subprotocols is not None else None,
                max_message_size=max_message_size,
                rate_limit=rate_limit,
                compression=compression,
                blueprint=blueprint,
                options=options,
            )
            if blueprint is not None:
                self._add_rules(blueprint, route)
            else:
                self._routes.append(route)
                for app in self._apps:
                    self._add_rules(app, route)
            return handler

        return decorator

    # -- broadcast ------------------------------------------------------------

    def broadcast(
        self,
        message: Union[str, bytes],
        room: Optional[str] = None,
        skip: Union[WebSocketConnection, str, None] = None,
    ) -> None:
        """Send ``message`` to every connection, or to the members of ``room``.

        Works from a WebSocket handler, a plain view, a ``flask`` CLI command
        or a background greenlet, in any worker: the hub carries it to the
        others. The message is framed once per process and the same bytes
        written to each member; no member's slow socket delays the others
        (see ``WEBSOCKET_SEND_QUEUE_OVERFLOW``).

        Args:
            message: ``str`` (text) or ``bytes`` (binary).
            room: a room name, or ``None`` for every connection.
            skip: a connection (or its id) not to send to, usually the sender.

        Raises:
            BroadcastTooLarge: over the hub's size limit.
            HubError: other processes could not be reached (local members
                have the message).
        """
        kind = KIND_ALL if room is None else KIND_ROOM
        self._publish(kind, message, check_room(room) if room is not None else "", skip)

    def send_to(self, connection_id: str, message: Union[str, bytes]) -> None:
        """Send ``message`` to the connection with this id, in whatever process it is."""
        if not isinstance(connection_id, str) or not connection_id:
            raise ValueError(f"not a connection id: {connection_id!r}")
        self._publish(KIND_DIRECT, message, connection_id, None)

    def user_id_loader(self, loader: L) -> L:
        """Register the function that says which user a connection belongs to.

        ::

            @websocket.user_id_loader
            def current_user_id():
                return session.get("user_id")  # or flask_login.current_user.get_id()

        Called in the request context of each WebSocket handshake, before
        the handler runs; what it returns (a ``str`` or an ``int``, or
        ``None`` for nobody) becomes the connection's
        :attr:`~flask_websocket.WebSocketConnection.user_id`, and
        :meth:`send_to_user` and :meth:`close_user` reach every connection
        of that user, in every worker and on every host.
        """
        self._user_id_loader = loader
        return loader

    def send_to_user(self, user_id: Union[str, int], message: Union[str, bytes]) -> None:
        """Send ``message`` to every connection of ``user_id`` (every tab, every worker).

        Raises:
            HubError, BroadcastTooLarge: as :meth:`broadcast`.
        """
        self._publish(KIND_USER, message, check_user_id(user_id), None)

    def close_user(
        self, user_id: Union[str, int], code: int = CloseCode.POLICY_VIOLATION, reason: str = ""
    ) -> None:
        """Close every connection of ``user_id``, in every worker and on every host.

        For logout and bans: each connection gets a close frame with
        ``code`` (1008, policy violation, by default) and ``reason``, and its
        handler's next ``receive`` raises ``ConnectionClosed``. Connections
        of the user opened afterwards are not affected: refuse those in the
        handshake (``abort(403)``).

        Raises:
            HubError: other processes could not be reached (the user's
                connections in this process are closed).
        """
        self._publish_close(KIND_USER, check_user_id(user_id), code, reason)

    def close_room(
        self, room: str, code: int = CloseCode.POLICY_VIOLATION, reason: str = ""
    ) -> None:
        """Close every connection in ``room``, in every worker and on every host."""
        self._publish_close(KIND_ROOM, check_room(room), code, reason)

    def history(self, room: str) -> List[HistoryItem]:
        """The messages ``room``'s history still holds, oldest first, with their positions.

        For a plain view that renders the last messages of a room, say.
        Empty for a room without history (``WEBSOCKET_HISTORY``).
        """
        state = self._state()
        epoch, _, entries = _on_backend(state.backend, state.hub.read_history, room)
        return [
            HistoryItem(
                Position(epoch, entry.offset),
                entry.payload.decode() if entry.opcode == OP_TEXT else entry.payload,
            )
            for entry in entries
        ]

    def members(self, room: str) -> List[str]:
        """Ids of the connections in ``room``, across every process of the app."""
        state = self._state()
        members: List[str] = _on_backend(state.backend, state.hub.members, room)
        return members

    def _publish(
        self,
        kind: int,
        message: Union[str, bytes],
        target: str,
        skip: Union[WebSocketConnection, str, None],
    ) -> None:
        opcode, payload = encode_message(message, "broadcast")
        if isinstance(skip, WebSocketConnection):
            skip = skip.id
        state = self._state()
        hub = state.hub
        envelope = Envelope(kind, opcode, payload, target, skip or "", origin=hub.registry.node_id)
        _on_backend(state.backend, hub.publish, envelope)

    def _publish_close(self, kind: int, target: str, code: int, reason: str) -> None:
        check_close_code(code)
        state = self._state()
        hub = state.hub
        payload = close_payload(code, reason)
        envelope = Envelope(kind, OP_CLOSE, payload, target, origin=hub.registry.node_id)
        _on_backend(state.backend, hub.publish, envelope)

    def _state(self) -> _State:
        app = current_app._get_current_object() if has_app_context() else None  # type: ignore[attr-defined]
        if app is None or EXTENSION_KEY not in app.extensions:
            if len(self._apps) != 1:
                raise RuntimeError(
                    "broadcast outside an app context: push one (with app.app_context():)"
                )
            app = self._apps[0]
        state: _State = app.extensions[EXTENSION_KEY]
        return state

    def _add_rules(self, target: Any, route: _Route) -> None:
        view = self._make_view(route)
        options = dict(route.options)
        options.pop("methods", None)
        target.add_url_rule(
            route.rule, route.endpoint, view, websocket=True, methods=["GET"], **options
        )
        target.add_url_rule(route.rule, route.endpoint, view, methods=["GET"], **options)

    def _make_view(self, route: _Route) -> Callable[..., Any]:
        def view(**view_args: Any) -> Any:
            return _serve(route, view_args)

        functools.update_wrapper(view, route.handler)
        return view


def _on_backend(backend: Backend, function: Callable[..., Any], *args: Any) -> Any:
    """Call ``function`` where the registry and connections may be touched.

    From the backend's own tasks, under its guard (threads: other threads
    share them). From any other system thread (a scheduler's thread, a
    view run by Flask's test client under the gevent test server), as a task
    of the backend, this thread waiting for it.
    """
    if backend.in_foreign_thread():
        return backend.run_in_loop(function, *args)
    with backend.guarded():
        return function(*args)


def _options_for(route: _Route, config: Any) -> ConnectionOptions:
    check_config(config)  # again: the app may have changed it since init_app
    max_size = route.max_message_size
    if max_size is _DEFAULT:
        max_size = config["WEBSOCKET_MAX_MESSAGE_SIZE"]
    rate_limit = route.rate_limit
    if rate_limit is _DEFAULT:
        rate_limit = config["WEBSOCKET_RATE_LIMIT"]
    compression = route.compression
    if compression is _DEFAULT:
        compression = config["WEBSOCKET_COMPRESSION"]
    deflate = None
    if compression is not None:
        deflate = DeflateSettings.from_config(
            config["WEBSOCKET_COMPRESSION_OPTIONS"], config["WEBSOCKET_COMPRESSION_THRESHOLD"]
        )
    return ConnectionOptions(
        max_message_size=max_size,
        ping_interval=config["WEBSOCKET_PING_INTERVAL"],
        ping_timeout=config["WEBSOCKET_PING_TIMEOUT"],
        close_timeout=config["WEBSOCKET_CLOSE_TIMEOUT"],
        receive_queue_size=config["WEBSOCKET_RECEIVE_QUEUE_SIZE"],
        send_queue_size=config["WEBSOCKET_SEND_QUEUE_SIZE"],
        overflow=config["WEBSOCKET_SEND_QUEUE_OVERFLOW"],
        rate_limit=None if rate_limit is None else (float(rate_limit[0]), int(rate_limit[1])),
        compression=deflate,
    )


def _serve(route: _Route, view_args: Dict[str, Any]) -> Any:
    """The view behind every WebSocket route."""
    url_rule = request.url_rule
    if url_rule is None or not url_rule.websocket:
        raise BadRequest(_NOT_AN_UPGRADE)
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    state: _State = app.extensions[EXTENSION_KEY]
    environ = request.environ
    admission = state.admission(app.config)
    refusal = admission.admit(environ)
    if refusal is not None:
        status, text = refusal
        headers = {"Content-Type": "text/plain; charset=utf-8", "Retry-After": str(RETRY_AFTER)}
        return Response(text + "\n", status, headers)
    try:
        opened = _open(route, state, app.config, environ, request.method)
        if not isinstance(opened, WebSocketConnection):
            return opened  # the handshake was refused with an HTTP error
        return _run_handler(route, opened, view_args, app, state)
    finally:
        admission.release(environ)


def _open(route: _Route, state: _State, config: Any, environ: Dict[str, Any], method: str) -> Any:
    """Check the handshake; a connection ready to accept, or an error response.

    A function of its own so that nothing of the handshake stays referenced
    while the handler runs (a connection may live for days).
    """
    options = state.options.get(route)
    if options is None:  # once per route: config is read at the first connection
        options = state.options[route] = _options_for(route, config)
    policy = state.origin_policy(config)
    refusal = policy.refusal(environ)
    if refusal is not None:
        policy.log_refusal(environ, refusal)
        return Response(_FORBIDDEN_ORIGIN, 403, {"Content-Type": "text/plain; charset=utf-8"})
    if environ.get("SERVER_PROTOCOL", "HTTP/1.1") == "HTTP/1.0":
        return Response(_NEEDS_HTTP11, 400, {"Content-Type": "text/plain; charset=utf-8"})
    subprotocols = route.subprotocols
    if subprotocols is None and wire.SUBPROTOCOL in environ.get("HTTP_SEC_WEBSOCKET_PROTOCOL", ""):
        subprotocols = [wire.SUBPROTOCOL]  # a client that resumes (flask_websocket.wire)
    protocol = ServerProtocol(
        max_message_size=options.max_message_size,
        subprotocols=subprotocols,
        deflate=options.compression.factory() if options.compression is not None else None,
    )
    try:
        handshake = protocol.accept_environ(method, environ)
    except InvalidHeader as exc:  # a control character in a header: the client's error
        body = f"Bad request: invalid {exc.name} header.\n"  # not its value: no echo
        return Response(body, 400, {"Content-Type": "text/plain; charset=utf-8"})
    if not handshake.accepted:
        return Response(handshake.body, handshake.status, handshake.headers)
    start_response = environ.get(START_RESPONSE_KEY)
    if start_response is None:
        raise RuntimeError(
            "Flask-WebSocket's WSGI middleware was bypassed: app.wsgi_app was "
            "replaced after WebSocket(app) in a way that drops it. Wrap "
            "app.wsgi_app before calling init_app, or keep the wrapper chain."
        )
    opener = functools.partial(
        transport.open_connection_socket, environ, start_response, handshake.headers
    )
    backend = state.backend
    connection_class = WebSocketConnection if backend.guard is None else GuardedConnection
    loader = state.extension._user_id_loader
    user_id = loader() if loader is not None else None
    if user_id is not None:
        user_id = check_user_id(user_id)
    since = None
    if protocol.subprotocol == wire.SUBPROTOCOL:
        since = wire.parse_since(request.args.getlist(wire.SINCE_PARAMETER)) or None
    return connection_class(protocol, backend, options, opener, state.registry, user_id, since)


def _run_handler(
    route: _Route, ws: WebSocketConnection, view_args: Dict[str, Any], app: Flask, state: _State
) -> Any:
    """Run the handler, then close the connection the way the handler ended."""
    close_code: int = CloseCode.NORMAL_CLOSURE
    close_reason = ""
    try:
        # A positional call when there are no view args keeps the C stack
        # (saved per idle connection by greenlet) a little shorter.
        result = route.handler(ws, **view_args) if view_args else route.handler(ws)
    except ConnectionClosed as exc:
        if not ws.accepted:  # lost while the 101 was being written: nothing to close
            logger.debug("WebSocket client left during the handshake: %s", exc)
            return state.upgraded_response_class()
        # Otherwise the peer left: the normal end of most handlers.
    except HTTPException as exc:
        if not ws.accepted:
            raise  # a normal HTTP error: the upgrade never happened
        close_code, close_reason = CloseCode.POLICY_VIOLATION, exc.description or exc.name
    except Exception:
        if not ws.accepted:
            raise
        app.log_exception(sys.exc_info())
        close_code, close_reason = CloseCode.INTERNAL_ERROR, "internal error"
    except BaseException:  # GreenletExit, SystemExit: the worker is going away
        if ws.accepted:
            ws.finish(CloseCode.GOING_AWAY, "server shutting down")
        raise
    else:
        if not ws.accepted and result is not None:
            return result  # the handler answered with a plain HTTP response
    ws.finish(close_code, close_reason)
    return state.upgraded_response_class()
