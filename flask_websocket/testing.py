"""Test WebSocket handlers in-process, without uWSGI.

::

    from flask_websocket.testing import WebSocketTestClient

    def test_echo():
        client = WebSocketTestClient(app)
        with client.connect("/echo") as ws:
            ws.send("hello")
            assert ws.receive() == "hello"

The app runs exactly as under uWSGI (same routing, hooks, handshake checks
and connection core), talking to the test over a socket pair, under the
model you pick: ``WebSocketTestClient(app, model="gevent")`` (the default)
runs each connection in a greenlet of one background thread's gevent loop,
like one ``--gevent N`` worker; ``model="threads"`` runs each in a thread of
its own, like one ``--threads N`` worker. The same handler tests can run
under both (parametrize them). Only the uWSGI sharedarea is missing.
Broadcasts between test connections use the memory hub: the client sets
``WEBSOCKET_HUB_URL = "memory://"`` on the app unless it chose a hub.

Under gevent, a handler that blocks without yielding (``time.sleep`` in an
unpatched process) holds up the other test connections, as it would in a
uWSGI worker.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from flask import Flask
from werkzeug.test import EnvironBuilder

from .close_codes import CloseCode
from .concurrency.blocking import thread_event
from .concurrency.host import MODELS, task_host
from .exceptions import HandshakeRejected
from .protocol import ClientProtocol, Message
from .transport import TEST_SOCKET_KEY

__all__ = ["TestConnection", "WebSocketTestClient"]


class _ServerRun:
    """Runs the WSGI app for one connection in the server loop; records its answer."""

    def __init__(self, app: Flask, environ: Dict[str, Any]) -> None:
        self.app = app
        self.environ = environ
        self.status: Optional[str] = None
        self.headers: List[Tuple[str, str]] = []
        self.body: List[bytes] = []
        self.error: Optional[BaseException] = None
        self.started = thread_event()  # start_response was called
        self.finished = thread_event()  # the app returned (the handler is done)

    def _start_response(
        self, status: str, headers: List[Tuple[str, str]], exc_info: Any = None
    ) -> Any:
        self.status, self.headers = status, list(headers)
        self.started.set()
        return self.body.append

    def _run(self) -> None:
        try:
            iterable: Iterable[bytes] = self.app(self.environ, self._start_response)
            try:
                self.body.extend(iterable)
            finally:
                close = getattr(iterable, "close", None)
                if close is not None:
                    close()
        except BaseException as exc:  # reported to the test by connect()
            self.error = exc
        finally:
            self.started.set()
            server_socket = self.environ[TEST_SOCKET_KEY]
            server_socket.close()
            self.finished.set()


class TestConnection:
    """The client end of a test connection: blocking calls with timeouts."""

    __test__ = False  # not a pytest test class

    def __init__(self, sock: socket.socket, run: _ServerRun, timeout: float) -> None:
        self._sock = sock
        self._run = run
        self._timeout = timeout
        self._protocol = ClientProtocol()
        self._inbox: List[Message] = []
        #: Response headers of the 101 answer.
        self.headers: Dict[str, str] = {k.lower(): v for k, v in run.headers}
        #: The subprotocol the server chose, or ``None``.
        self.subprotocol: Optional[str] = self.headers.get("sec-websocket-protocol")

    def send(self, message: Union[str, bytes]) -> None:
        """Send a text (``str``) or binary (``bytes``) message."""
        if not self._protocol.open:
            raise self._protocol.closed_exception()
        self._protocol.send_message(message)
        self._flush()

    def receive(self, timeout: Optional[float] = None) -> Message:
        """Wait for the next message from the server.

        Raises:
            ConnectionClosed: the server closed the connection.
            TimeoutError: nothing came within ``timeout`` seconds (the
                client's default timeout if not given).
        """
        while not self._inbox:
            if not self._protocol.open or self._protocol.closed:
                raise self._protocol.closed_exception()
            self._read(timeout)
        return self._inbox.pop(0)

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Close the connection and wait for the server to finish the handler."""
        if self._protocol.open:
            self._protocol.send_close(code, reason)
            self._flush()
        try:
            while not self._protocol.closed:
                self._read(None)
        except (TimeoutError, OSError):
            pass
        self._sock.close()
        self._run.finished.wait(self._timeout)

    @property
    def close_code(self) -> Optional[int]:
        """The server's close code, once the connection is closed."""
        if self._protocol.open:
            return None
        return self._protocol.closed_exception().code

    @property
    def close_reason(self) -> Optional[str]:
        """The server's close reason, once the connection is closed."""
        if self._protocol.open:
            return None
        return self._protocol.closed_exception().reason

    def __enter__(self) -> TestConnection:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _read(self, timeout: Optional[float]) -> None:
        self._sock.settimeout(self._timeout if timeout is None else timeout)
        try:
            data = self._sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("no message from the server in time") from None
        except OSError:
            data = b""
        if data:
            self._inbox.extend(self._protocol.receive_data(data))
        else:
            self._protocol.receive_eof()
        self._flush()

    def _flush(self) -> None:
        # A server that already went away shows up at the next receive().
        with contextlib.suppress(OSError):
            for data in self._protocol.data_to_send():
                if data:
                    self._sock.sendall(data)
                else:
                    self._sock.shutdown(socket.SHUT_WR)


class WebSocketTestClient:
    """Connects to WebSocket routes of ``app`` in-process.

    Args:
        app: a Flask app with Flask-WebSocket initialised.
        timeout: seconds a call waits for the server (a message, a close).
        model: ``"gevent"`` or ``"threads"``: the concurrency model the
            handlers run under (see the module's docstring).
    """

    __test__ = False  # not a pytest test class

    def __init__(self, app: Flask, *, timeout: float = 5.0, model: str = "gevent") -> None:
        if model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, not {model!r}")
        self.app = app
        self.timeout = timeout
        self.model = model
        # In-process connections share one process: the memory hub serves
        # them, unless the app chose a hub itself.
        if app.config.get("WEBSOCKET_HUB_URL") is None:
            app.config["WEBSOCKET_HUB_URL"] = "memory://"
        self._host = task_host(model)
        state = app.extensions.get("websocket")
        if state is None:
            raise RuntimeError("Flask-WebSocket is not initialised on this app: WebSocket(app)")
        state.use_backend(self._host.backend)

    def connect(
        self,
        path: str,
        *,
        headers: Optional[Mapping[str, str]] = None,
        subprotocols: Optional[Sequence[str]] = None,
        origin: Optional[str] = None,
        query_string: Optional[str] = None,
    ) -> TestConnection:
        """Open a WebSocket connection to ``path``.

        Returns once the server accepted the upgrade (the handler's first I/O).

        Raises:
            HandshakeRejected: the server answered with an HTTP error; its
                ``status`` and ``body`` say which.
        """
        request_headers = {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
            "Sec-WebSocket-Version": "13",
        }
        if origin is not None:
            request_headers["Origin"] = origin
        if subprotocols:
            request_headers["Sec-WebSocket-Protocol"] = ", ".join(subprotocols)
        request_headers.update(headers or {})
        builder = EnvironBuilder(
            path=path, headers=list(request_headers.items()), query_string=query_string
        )
        environ = builder.get_environ()
        builder.close()
        client_socket, server_socket = socket.socketpair()
        environ[TEST_SOCKET_KEY] = server_socket
        run = _ServerRun(self.app, environ)
        self._host.submit(run._run)
        if not run.started.wait(self.timeout):
            client_socket.close()
            raise TimeoutError(f"the handler of {path} did not accept or reject in time")
        if run.status is None or not run.status.startswith("101"):
            run.finished.wait(self.timeout)
            client_socket.close()
            if run.error is not None:
                raise run.error
            status = int(run.status.split()[0]) if run.status else 500
            raise HandshakeRejected(status, b"".join(run.body))
        return TestConnection(client_socket, run, self.timeout)
