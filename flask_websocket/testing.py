"""Test WebSocket handlers in-process, without uWSGI.

::

    from flask_websocket.testing import WebSocketTestClient

    def test_echo():
        client = WebSocketTestClient(app)
        with client.connect("/echo") as ws:
            ws.send("hello")
            assert ws.receive() == "hello"

The app runs exactly as under uWSGI (same routing, hooks, handshake checks
and connection core on the gevent backend), each connection in a greenlet of
one background thread's gevent loop (like one uWSGI worker), talking to the
test over a socket pair. Only the uWSGI sharedarea is missing. Broadcasts
between test connections use the memory hub: the client sets
``WEBSOCKET_HUB_URL = "memory://"`` on the app unless it chose a hub.

Handlers run in that background loop: a handler that blocks without
yielding to gevent (``time.sleep`` in an unpatched process) holds up the
other test connections, as it would in a uWSGI worker.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import threading
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from flask import Flask
from werkzeug.test import EnvironBuilder

from .close_codes import CloseCode
from .exceptions import HandshakeRejected
from .protocol import ClientProtocol, Message
from .transport import TEST_SOCKET_KEY

__all__ = ["TestConnection", "WebSocketTestClient"]


class _ServerLoop:
    """One thread running a gevent loop: the server side of every test connection.

    All connections of the process live in the same loop, as in one uWSGI
    worker, so that broadcasts between them stay inside one event loop.
    """

    _instance: Optional[_ServerLoop] = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._hub: Any = None
        self.thread = threading.Thread(target=self._main, name="websocket-test-server", daemon=True)
        self.thread.start()
        self._ready.wait()

    @classmethod
    def get(cls) -> _ServerLoop:
        with cls._lock:
            if cls._instance is None or not cls._instance.thread.is_alive():
                cls._instance = cls()
            return cls._instance

    def _main(self) -> None:
        import gevent

        self._hub = gevent.get_hub()
        self._ready.set()
        while True:  # keep the loop alive; work arrives through submit()
            gevent.sleep(3600)

    def submit(self, function: Any) -> None:
        """Run ``function`` in a new greenlet of the server loop."""
        import gevent

        self._hub.loop.run_callback_threadsafe(gevent.spawn, function)


class _ServerRun:
    """Runs the WSGI app for one connection in the server loop; records its answer."""

    def __init__(self, app: Flask, environ: Dict[str, Any]) -> None:
        self.app = app
        self.environ = environ
        self.status: Optional[str] = None
        self.headers: List[Tuple[str, str]] = []
        self.body: List[bytes] = []
        self.error: Optional[BaseException] = None
        self.started = threading.Event()  # start_response was called
        self.finished = threading.Event()  # the app returned (the handler is done)

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
    """Connects to WebSocket routes of ``app`` in-process."""

    __test__ = False  # not a pytest test class

    def __init__(self, app: Flask, *, timeout: float = 5.0) -> None:
        self.app = app
        self.timeout = timeout
        # In-process connections share one process: the memory hub serves
        # them, unless the app chose a hub itself.
        if app.config.get("WEBSOCKET_HUB_URL") is None:
            app.config["WEBSOCKET_HUB_URL"] = "memory://"

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
        _ServerLoop.get().submit(run._run)
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
