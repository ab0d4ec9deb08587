"""The extension's features, end to end, on real uWSGI + gevent.

Every test talks to ``tests.apps.features:app`` served by a real uWSGI on a
free 127.0.0.1 port, once with ``--http-socket`` (the worker parses HTTP) and
once with ``--http --http-websockets`` (uWSGI's HTTP router in front). Servers
are module-scoped, one per mode and configuration, to keep the run short;
tests that read the server log only look at what was written after they
started.
"""

from __future__ import annotations

import base64
import logging
import os
import socket
import struct
import time
import urllib.error
import urllib.request
from typing import Callable, Iterator, List, Optional, Tuple

import pytest
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.uwsgi_server import UwsgiServer, poll_until

pytestmark = [pytest.mark.uwsgi, pytest.mark.timeout(120)]

MODES = ["http-socket", "http"]
FEATURES = "tests.apps.features:app"

#: Seconds to wait for anything the server should do "at once".
WAIT = 10.0

# --------------------------------------------------------------------------
# Helpers


def wait_for(predicate: Callable[[], bool], timeout: float = WAIT, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass."""
    return poll_until(predicate, timeout, interval)


def ws_connect(url: str, **kwargs: object) -> ClientConnection:
    """A websockets client for a loopback server: no proxy, bounded timeouts."""
    options: dict = {"open_timeout": WAIT, "close_timeout": 5, "proxy": None}
    options.update(kwargs)
    return connect(url, **options)


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, headers: Optional[dict] = None) -> Tuple[int, bytes, object]:
    """GET ``url`` with urllib: (status, body, response headers), errors included."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with _NO_PROXY_OPENER.open(request, timeout=WAIT) as response:
            return response.status, response.read(), response.headers
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read(), exc.headers


def rejected_status(url: str, **kwargs: object) -> Tuple[int, bytes]:
    """Open a WebSocket that the server must refuse: (HTTP status, body)."""
    with pytest.raises(InvalidStatus) as info, ws_connect(url, **kwargs):
        pass
    response = info.value.response
    return response.status_code, bytes(response.body or b"")


def log_since(server: UwsgiServer, offset: int) -> str:
    return server.log()[offset:]


class RawClient:
    """A bare-socket WebSocket client: it answers nothing unless told to."""

    def __init__(self, port: int, path: str, timeout: float = WAIT) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\n"
                "Upgrade: websocket\r\n"
                "Connection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n"
                "\r\n"
            ).encode()
        )
        self.buffer = b""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buffer:
            assert time.monotonic() < deadline, f"no handshake response: {self.buffer!r}"
            chunk = self.sock.recv(4096)
            assert chunk, f"EOF during the handshake: {self.buffer!r}"
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        self.status_line = head.split(b"\r\n", 1)[0]
        assert b" 101 " in self.status_line, head

    def _read_exactly(self, count: int, deadline: float) -> Optional[bytes]:
        while len(self.buffer) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"waited for {count} bytes, have {self.buffer!r}")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def read_frame(self, timeout: float = WAIT) -> Optional[Tuple[int, bytes]]:
        """The next frame as (opcode, payload), or ``None`` at EOF."""
        deadline = time.monotonic() + timeout
        head = self._read_exactly(2, deadline)
        if head is None:
            return None
        opcode, length = head[0] & 0x0F, head[1] & 0x7F
        assert head[1] & 0x80 == 0, "server frames must not be masked"
        if length == 126:
            extended = self._read_exactly(2, deadline)
            assert extended is not None
            (length,) = struct.unpack("!H", extended)
        elif length == 127:
            extended = self._read_exactly(8, deadline)
            assert extended is not None
            (length,) = struct.unpack("!Q", extended)
        payload = self._read_exactly(length, deadline)
        assert payload is not None, "EOF inside a frame"
        return opcode, payload

    def read_eof(self, timeout: float = WAIT) -> bool:
        """True once the server has closed the stream (data before EOF is dropped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return False
            except ConnectionResetError:
                return True
            if not chunk:
                return True
        return False

    def send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            head = bytes((0x80 | opcode, 0x80 | length))
        elif length < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def close(self, abort: bool = False) -> None:
        """Close the socket without a close frame; ``abort`` sends a RST."""
        if abort:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def close_code(payload: bytes) -> int:
    return int(struct.unpack("!H", payload[:2])[0])


# --------------------------------------------------------------------------
# Servers


def _serve(
    tmp_path_factory: pytest.TempPathFactory,
    mode: str,
    *,
    module: str = FEATURES,
    extra: Tuple[str, ...] = (),
    env: Optional[dict] = None,
) -> Iterator[UwsgiServer]:
    server = UwsgiServer(
        module,
        mode=mode,
        gevent=100,
        extra=extra,
        env=env,
        log_dir=tmp_path_factory.mktemp(f"uwsgi-{mode}"),
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()
    assert server.crash_lines() == [], server.log()


@pytest.fixture(scope="module", params=MODES)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[UwsgiServer]:
    """The features app with default settings and one sharedarea page."""
    yield from _serve(tmp_path_factory, request.param, extra=("--sharedarea", "1"))


@pytest.fixture(scope="module", params=MODES)
def keepalive_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[UwsgiServer]:
    """The features app pinging every 0.5 s and giving up 0.5 s after a ping."""
    env = {"FWS_PING_INTERVAL": "0.5", "FWS_PING_TIMEOUT": "0.5"}
    yield from _serve(tmp_path_factory, request.param, env=env)


@pytest.fixture(scope="module", params=MODES)
def debug_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[UwsgiServer]:
    """The features app with app.debug set (FWS_DEBUG=1)."""
    yield from _serve(
        tmp_path_factory,
        request.param,
        module="tests.apps.features_debug:app",
        env={"FWS_DEBUG": "1"},
    )


# --------------------------------------------------------------------------
# Routing: plain GETs, converters, url_for, blueprints


def test_plain_get_on_websocket_route_is_400(server: UwsgiServer) -> None:
    status, body, _ = http_get(server.http_url("/echo"))
    assert status == 400
    text = body.decode()
    assert "expected a WebSocket upgrade" in text
    assert "Upgrade: websocket" in text.replace("&#39;", "'")


def test_converter_and_url_for_in_handler(server: UwsgiServer) -> None:
    with ws_connect(server.url("/chat/lobby")) as ws:
        assert ws.recv(timeout=WAIT) == f"room=lobby url={server.url('/chat/lobby')}"
    with ws_connect(server.url("/chat/a%20b")) as ws:
        assert ws.recv(timeout=WAIT) == f"room=a b url={server.url('/chat/a%20b')}"
    # The default converter stops at "/": no rule matches, a plain 404.
    status, _ = rejected_status(server.url("/chat/a/b"))
    assert status == 404


def test_blueprint_websocket_route_and_plain_view(server: UwsgiServer) -> None:
    with ws_connect(server.url("/bp/echo")) as ws:
        assert ws.recv(timeout=WAIT) == f"blueprint url={server.url('/bp/echo')}"
        ws.send("through the blueprint")
        assert ws.recv(timeout=WAIT) == "through the blueprint"
    status, body, _ = http_get(server.http_url("/bp/plain"))
    assert (status, body) == (200, b"plain")


# --------------------------------------------------------------------------
# HTTP errors before the upgrade, close codes after it


def test_before_request_abort_refuses_the_upgrade(server: UwsgiServer) -> None:
    status, _ = rejected_status(server.url("/echo"), additional_headers={"X-Deny": "1"})
    assert status == 403
    # Without the header the same route is upgraded.
    with ws_connect(server.url("/echo")) as ws:
        ws.send("allowed")
        assert ws.recv(timeout=WAIT) == "allowed"


def test_abort_in_handler_before_the_upgrade(server: UwsgiServer) -> None:
    status, _ = rejected_status(server.url("/abort-before"))
    assert status == 401
    status, _ = rejected_status(server.url("/abort-before?token=wrong"))
    assert status == 401
    with ws_connect(server.url("/abort-before?token=secret")) as ws:
        assert ws.recv(timeout=WAIT) == "welcome"


def test_abort_after_the_upgrade_closes_1008(server: UwsgiServer) -> None:
    with ws_connect(server.url("/abort-after")) as ws:
        ws.send("go")
        with pytest.raises(ConnectionClosedError):
            ws.recv(timeout=WAIT)
        assert ws.close_code == 1008
        assert ws.close_reason == "not allowed any more"


def test_handler_exception_closes_1011_logs_and_worker_survives(server: UwsgiServer) -> None:
    pids = server.worker_pids()
    assert len(pids) == 1
    offset = len(server.log())
    with ws_connect(server.url("/raises")) as ws:
        ws.send("trigger")
        with pytest.raises(ConnectionClosedError):
            ws.recv(timeout=WAIT)
        assert ws.close_code == 1011
        assert ws.close_reason == "internal error"  # no exception text leaks to the peer
    assert wait_for(lambda: "boom from the handler" in log_since(server, offset)), server.log()
    logged = log_since(server, offset)
    assert "Traceback (most recent call last)" in logged
    assert "ValueError: boom from the handler" in logged
    assert server.worker_pids() == pids
    with ws_connect(server.url("/echo")) as ws:
        ws.send("still here")
        assert ws.recv(timeout=WAIT) == "still here"
    assert server.worker_pids() == pids
    assert server.crash_lines() == []


def test_handler_return_closes_1000(server: UwsgiServer) -> None:
    with ws_connect(server.url("/returns")) as ws:
        assert ws.recv(timeout=WAIT) == "bye"
        with pytest.raises(ConnectionClosedOK):
            ws.recv(timeout=WAIT)
        assert ws.close_code == 1000


def _request_lines(log: str, marker: str) -> List[str]:
    """uWSGI's request log lines (written when a request ends) naming ``marker``."""
    return [line for line in log.splitlines() if marker in line and "=> generated" in line]


def test_peer_leaving_ends_the_handler_quietly(server: UwsgiServer) -> None:
    offset = len(server.log())
    tag = f"quiet{os.getpid()}{time.monotonic_ns()}"
    markers = []

    def path(case: str) -> str:
        marker = f"/echo?case={tag}-{case}"
        markers.append(marker)
        return marker

    # Closing handshakes from the client while the handler waits in receive().
    with ws_connect(server.url(path("close1000"))) as ws:
        ws.send("one")
        assert ws.recv(timeout=WAIT) == "one"
    assert ws.close_code == 1000
    with ws_connect(server.url(path("close1001"))) as ws:
        ws.send(b"two")
        assert ws.recv(timeout=WAIT) == b"two"
        ws.close(1001, "bye")
    with ws_connect(server.url(path("close4000"))) as ws:
        ws.send("three")
        assert ws.recv(timeout=WAIT) == "three"
        ws.close(4000, "application code")
    # The socket closed with no close frame: FIN, then RST, then at once.
    raw = RawClient(server.port, path("fin"))
    raw.send_frame(0x1, b"raw")
    assert raw.read_frame() == (0x1, b"raw")
    raw.close()
    raw = RawClient(server.port, path("rst"))
    raw.send_frame(0x2, b"\x00\x01")
    assert raw.read_frame() == (0x2, b"\x00\x01")
    raw.close(abort=True)
    RawClient(server.port, path("at-once")).close()

    def all_ended() -> bool:
        logged = log_since(server, offset)
        return all(_request_lines(logged, marker) for marker in markers)

    assert wait_for(all_ended), log_since(server, offset)
    logged = log_since(server, offset)
    assert "Traceback" not in logged, logged
    assert "ERROR" not in logged, logged
    for marker in markers:
        assert "HTTP/1.1 101" in _request_lines(logged, marker)[0], logged
    assert server.crash_lines() == []


# --------------------------------------------------------------------------
# Request context inside the handler


def test_g_session_and_args_inside_the_handler(server: UwsgiServer) -> None:
    status, body, headers = http_get(server.http_url("/login/alice"))
    assert (status, body) == (200, b"ok")
    set_cookie = headers.get("Set-Cookie")  # type: ignore[attr-defined]
    assert set_cookie and set_cookie.startswith("session=")
    cookie = set_cookie.split(";", 1)[0]
    headers_out = {"X-User": "bob", "Cookie": cookie}
    with ws_connect(server.url("/context?q=hello%20world"), additional_headers=headers_out) as ws:
        assert ws.recv(timeout=WAIT) == "user=bob session=alice q=hello world"
    # Without them, the handler sees their absence.
    with ws_connect(server.url("/context")) as ws:
        assert ws.recv(timeout=WAIT) == "user=None session=None q=None"


# --------------------------------------------------------------------------
# Handshake negotiation


def test_origin_check(server: UwsgiServer) -> None:
    status, _ = rejected_status(server.url("/echo"), origin="http://evil.example")
    assert status == 403
    with ws_connect(server.url("/echo"), origin="http://good.example") as ws:
        ws.send("good")
        assert ws.recv(timeout=WAIT) == "good"
    with ws_connect(server.url("/echo")) as ws:  # no Origin header at all
        ws.send("none")
        assert ws.recv(timeout=WAIT) == "none"


def test_subprotocol_negotiation(server: UwsgiServer) -> None:
    with ws_connect(server.url("/subprotocol"), subprotocols=["chat.v1", "chat.v2"]) as ws:
        # The route lists chat.v2 first: its order of preference wins.
        assert ws.subprotocol == "chat.v2"
        assert ws.response is not None
        assert ws.response.headers["Sec-WebSocket-Protocol"] == "chat.v2"
        assert ws.recv(timeout=WAIT) == "subprotocol=chat.v2"
    with ws_connect(server.url("/subprotocol"), subprotocols=["chat.v1"]) as ws:
        assert ws.subprotocol == "chat.v1"
        assert ws.recv(timeout=WAIT) == "subprotocol=chat.v1"
    status, body = rejected_status(server.url("/subprotocol"), subprotocols=["nope"])
    assert status == 400
    assert b"subprotocol" in body
    status, _ = rejected_status(server.url("/subprotocol"))  # offers none
    assert status == 400
    # A route without subprotocols picks none, whatever the client offers.
    with ws_connect(server.url("/echo"), subprotocols=["chat.v1"]) as ws:
        pass
    assert ws.subprotocol is None


# --------------------------------------------------------------------------
# Messages


def test_max_message_size_per_route(server: UwsgiServer) -> None:
    with ws_connect(server.url("/small")) as ws:
        ws.send(b"\xab" * 1024)
        assert ws.recv(timeout=WAIT) == b"\xab" * 1024
        ws.send("t" * 1024)
        assert ws.recv(timeout=WAIT) == "t" * 1024
        ws.send(b"\xab" * 1025)
        with pytest.raises(ConnectionClosedError):
            ws.recv(timeout=WAIT)
        assert ws.close_code == 1009
    with ws_connect(server.url("/small")) as ws:
        ws.send("é" * 513)  # 1026 bytes of UTF-8 in 513 characters
        with pytest.raises(ConnectionClosedError):
            ws.recv(timeout=WAIT)
        assert ws.close_code == 1009
    # The app-wide limit (1 MiB) still applies elsewhere.
    with ws_connect(server.url("/echo")) as ws:
        ws.send(b"\x01" * 4096)
        assert ws.recv(timeout=WAIT) == b"\x01" * 4096


def test_recv_nb_polling(server: UwsgiServer) -> None:
    with ws_connect(server.url("/poll")) as ws:
        assert ws.recv(timeout=WAIT) == "first=None"
        ws.send("")
        assert ws.recv(timeout=WAIT) == "got=''"
        ws.send(b"")
        assert ws.recv(timeout=WAIT) == "got=b''"
        ws.send("stop")
        assert ws.recv(timeout=WAIT) == "got='stop'"
        with pytest.raises(ConnectionClosedOK):
            ws.recv(timeout=WAIT)
        assert ws.close_code == 1000


def test_send_from_another_greenlet(server: UwsgiServer) -> None:
    with ws_connect(server.url("/background")) as ws:
        # Nothing was sent yet: the handler is blocked in receive().
        assert [ws.recv(timeout=WAIT) for _ in range(3)] == ["tick 0", "tick 1", "tick 2"]
        ws.send("done")
        assert ws.recv(timeout=WAIT) == "handler got done"
        with pytest.raises(ConnectionClosedOK):
            ws.recv(timeout=WAIT)


def test_iterate_echoes_and_ends_quietly(server: UwsgiServer) -> None:
    offset = len(server.log())
    marker = f"/iterate?case={os.getpid()}{time.monotonic_ns()}"
    with ws_connect(server.url(marker)) as ws:
        for message in ["a", b"b", "", b""]:
            ws.send(message)
            assert ws.recv(timeout=WAIT) == message
    assert ws.close_code == 1000
    assert wait_for(lambda: bool(_request_lines(log_since(server, offset), marker)))
    logged = log_since(server, offset)
    assert "Traceback" not in logged, logged


def test_sharedarea_sends(server: UwsgiServer) -> None:
    with ws_connect(server.url("/sharedarea")) as ws:
        text = ws.recv(timeout=WAIT)
        binary = ws.recv(timeout=WAIT)
    assert text == "héllo"
    assert type(text) is str
    assert binary == "héllo".encode()[1:4] == b"\xc3\xa9l"
    assert type(binary) is bytes


# --------------------------------------------------------------------------
# Keepalive


def test_keepalive_closes_1011_when_pings_go_unanswered(keepalive_server: UwsgiServer) -> None:
    offset = len(keepalive_server.log())
    raw = RawClient(keepalive_server.port, "/echo")
    try:
        started = time.monotonic()
        first = raw.read_frame(timeout=5)
        assert first is not None and first[0] == 0x9, first  # a ping
        second = raw.read_frame(timeout=5)
        assert second is not None and second[0] == 0x8, second  # then the close
        elapsed = time.monotonic() - started
        assert close_code(second[1]) == 1011
        assert second[1][2:] == b"keepalive ping timeout"
        assert elapsed < 4.0, elapsed
        assert raw.read_eof(timeout=10), "the server kept the connection open"
    finally:
        raw.close()
    assert wait_for(lambda: bool(_request_lines(log_since(keepalive_server, offset), "/echo")))
    assert "Traceback" not in log_since(keepalive_server, offset)


class _FrameLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_keepalive_answered_pings_keep_the_connection(keepalive_server: UwsgiServer) -> None:
    frames = _FrameLog()
    logger = logging.getLogger(f"{__name__}.client{time.monotonic_ns()}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(frames)

    def pings() -> int:
        return sum(1 for message in frames.messages if message.startswith("< PING"))

    # The client answers pings (websockets does it); it sends none of its own.
    with ws_connect(keepalive_server.url("/echo"), logger=logger, ping_interval=None) as ws:
        started = time.monotonic()
        assert wait_for(lambda: pings() >= 4, timeout=10), frames.messages
        assert time.monotonic() - started >= 1.5  # 4 pings, 0.5 s apart
        ws.send("still open")
        assert ws.recv(timeout=WAIT) == "still open"
        assert ws.close_code is None
    assert ws.close_code == 1000


def test_keepalive_raw_client_answering_pongs(keepalive_server: UwsgiServer) -> None:
    raw = RawClient(keepalive_server.port, "/echo")
    try:
        for _ in range(4):
            frame = raw.read_frame(timeout=5)
            assert frame is not None and frame[0] == 0x9, frame
            raw.send_frame(0xA, frame[1])
        raw.send_frame(0x1, b"after four pongs")
        # Maybe another ping first; then the echo.
        for _ in range(3):
            frame = raw.read_frame(timeout=5)
            assert frame is not None and frame[0] != 0x8, frame
            if frame[0] == 0x9:
                raw.send_frame(0xA, frame[1])
                continue
            assert frame == (0x1, b"after four pongs")
            break
        else:
            pytest.fail("no echo")
        raw.send_frame(0x8, struct.pack("!H", 1000))
        frame = raw.read_frame(timeout=5)
        while frame is not None and frame[0] == 0x9:  # a ping may cross our close
            frame = raw.read_frame(timeout=5)
        assert frame is not None and frame[0] == 0x8 and close_code(frame[1]) == 1000, frame
        assert raw.read_eof(timeout=5)
    finally:
        raw.close()


# --------------------------------------------------------------------------
# app.debug


def test_debug_wraps_app_in_werkzeug_debugger(debug_server: UwsgiServer) -> None:
    status, body, _ = http_get(debug_server.http_url("/wsgi-chain"))
    assert status == 200
    assert body.decode().split(" > ")[:2] == ["flask_websocket_middleware", "DebuggedApplication"]
    status, body, _ = http_get(debug_server.http_url("/http-raises"))
    assert status == 500
    assert b"Werkzeug Debugger" in body
    assert b"boom from a plain view" in body


def test_debug_websocket_routes_still_work(debug_server: UwsgiServer) -> None:
    with ws_connect(debug_server.url("/echo")) as ws:
        ws.send("debug text")
        assert ws.recv(timeout=WAIT) == "debug text"
        ws.send(b"debug bytes")
        assert ws.recv(timeout=WAIT) == b"debug bytes"
    with ws_connect(debug_server.url("/raises")) as ws:
        ws.send("x")
        with pytest.raises(ConnectionClosedError):
            ws.recv(timeout=WAIT)
        assert ws.close_code == 1011
    # Before the upgrade, an HTTP error is still an HTTP error.
    status, _ = rejected_status(debug_server.url("/abort-before"))
    assert status == 401
