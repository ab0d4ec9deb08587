"""Hostile clients against real uWSGI (``--http-socket`` and ``--http``).

A raw-socket client completes a valid handshake on ``/echo`` of the features
app (default 1 MiB WEBSOCKET_MAX_MESSAGE_SIZE), then sends a frame that breaks
RFC 6455. For each case the server must answer with the right close code,
close the TCP connection, and keep its worker: same pid, nothing in the log
that looks like a crash, and an unrelated "bystander" connection opened
before the attack still echoes afterwards.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import os
import re
import socket
import struct
import time
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import psutil
import pytest
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as sync_connect

from tests.uwsgi_server import UwsgiServer

pytestmark = pytest.mark.uwsgi

MODES = ["http-socket", "http"]
APP = "tests.apps.features:app"
MIB = 2**20
#: Seconds a raw read may wait for the server.
READ_TIMEOUT = 5.0
#: Seconds the server has to close the TCP connection after its close frame.
EOF_TIMEOUT = 5.0
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA


# ---------------------------------------------------------------------------
# Raw-socket WebSocket client


def build_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    length: Optional[int] = None,
) -> bytes:
    """One client frame with any header bits.

    ``rsv`` is the three RSV bits as a number 0-7 (4 = RSV1). ``length`` is the
    payload length announced in the header (the real one if ``None``); only
    ``payload`` is included, so a larger ``length`` announces bytes never sent.
    """
    announced = len(payload) if length is None else length
    first = (0x80 if fin else 0) | ((rsv & 0x7) << 4) | (opcode & 0xF)
    mask_bit = 0x80 if mask else 0
    if announced < 126:
        header = struct.pack("!BB", first, mask_bit | announced)
    elif announced < 2**16:
        header = struct.pack("!BBH", first, mask_bit | 126, announced)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, announced)
    if not mask:
        return header + payload
    key = os.urandom(4)
    size = len(payload)
    stream = (key * (size // 4 + 1))[:size]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(size, "big")
    return header + key + masked


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


class RawWebSocket:
    """A client socket after a successful handshake, with its own read buffer."""

    def __init__(self, sock: socket.socket, leftover: bytes = b"") -> None:
        self.sock = sock
        self.buffer = bytearray(leftover)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no data from the server in time")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("no data from the server in time") from None
        if not chunk:
            raise EOFError(f"server closed the connection; unread: {bytes(self.buffer)!r}")
        self.buffer += chunk

    def _take(self, count: int, deadline: float) -> bytes:
        while len(self.buffer) < count:
            self._fill(deadline)
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    def read_frame(self, timeout: float = READ_TIMEOUT) -> Tuple[int, bytes]:
        """Read one server frame: (opcode, payload). Server frames are never masked."""
        deadline = time.monotonic() + timeout
        first, second = self._take(2, deadline)
        assert second & 0x80 == 0, "the server masked a frame"
        assert first & 0x70 == 0, f"the server set RSV bits: {first:#x}"
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._take(2, deadline))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._take(8, deadline))
        return first & 0x0F, self._take(length, deadline)

    def read_close(self, timeout: float = READ_TIMEOUT) -> Tuple[int, str, List[Tuple[int, bytes]]]:
        """Read frames up to the close frame: (code, reason, frames before it)."""
        deadline = time.monotonic() + timeout
        before: List[Tuple[int, bytes]] = []
        for _ in range(1000):  # bounded: a server never sends this many frames here
            opcode, payload = self.read_frame(max(deadline - time.monotonic(), 0.001))
            if opcode == OP_CLOSE:
                assert len(payload) >= 2, f"close frame without a code: {payload!r}"
                (code,) = struct.unpack("!H", payload[:2])
                return code, payload[2:].decode("utf-8"), before
            before.append((opcode, payload))
        raise AssertionError(f"no close frame among {len(before)} frames")

    def wait_eof(self, timeout: float = EOF_TIMEOUT) -> bytes:
        """Wait for the server to close the TCP connection; return what came before."""
        deadline = time.monotonic() + timeout
        received = bytes(self.buffer)
        self.buffer.clear()
        for _ in range(10000):  # bounded by the deadline as well
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                return received
            received += chunk
        raise AssertionError(
            f"the server did not close the TCP connection within {timeout} s "
            f"(received {received[:200]!r})"
        )

    def close(self) -> None:
        self.sock.close()


def handshake_request(port: int, path: str, key: str, extra: Sequence[str] = ()) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def raw_connect(port: int, path: str = "/echo") -> RawWebSocket:
    """Open a TCP connection and complete a valid opening handshake."""
    key = base64.b64encode(os.urandom(16)).decode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT)
    try:
        # Each frame leaves at once (no Nagle delay between two small writes).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(handshake_request(port, path, key))
        response = b""
        deadline = time.monotonic() + READ_TIMEOUT
        while b"\r\n\r\n" not in response:
            assert time.monotonic() < deadline, f"no complete handshake response: {response!r}"
            assert len(response) < 65536, f"handshake response too long: {response[:200]!r}"
            chunk = sock.recv(4096)
            assert chunk, f"server closed during the handshake: {response!r}"
            response += chunk
        head, _, leftover = response.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        assert status_line.split(" ", 2)[1] == "101", status_line
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in header_lines)
        }
        expected = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        assert headers.get("sec-websocket-accept") == expected, headers
        assert headers.get("upgrade", "").lower() == "websocket", headers
    except BaseException:
        sock.close()
        raise
    return RawWebSocket(sock, leftover)


# ---------------------------------------------------------------------------
# Servers and bystanders


@pytest.fixture(scope="module", params=MODES)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[UwsgiServer]:
    """The features app on uWSGI, shared by the tests of one mode."""
    uwsgi = UwsgiServer(
        APP, mode=request.param, gevent=100, log_dir=tmp_path_factory.mktemp("uwsgi")
    )
    uwsgi.start()
    yield uwsgi
    uwsgi.stop()
    assert uwsgi.crash_lines() == [], uwsgi.log()


def open_bystander(server: UwsgiServer) -> ClientConnection:
    return sync_connect(
        server.url("/echo"),
        open_timeout=10,
        close_timeout=10,
        ping_interval=None,
        compression=None,
        proxy=None,
    )


def assert_echoes(ws: ClientConnection, label: str) -> None:
    text = f"{label} {os.urandom(4).hex()}"
    ws.send(text)
    assert ws.recv(timeout=READ_TIMEOUT) == text
    ws.send(text.encode())
    assert ws.recv(timeout=READ_TIMEOUT) == text.encode()


def open_fds(pid: int) -> int:
    return psutil.Process(pid).num_fds()


@dataclass
class Guard:
    """What must not change while a hostile client does its worst."""

    server: UwsgiServer
    bystander: ClientConnection
    workers: List[int]
    fds: int

    def check(self, fd_timeout: float = 10.0) -> None:
        assert self.server.worker_pids() == self.workers, self.server.log()[-3000:]
        assert self.server.crash_lines() == [], self.server.log()[-3000:]
        assert_echoes(self.bystander, "bystander after")
        # Every hostile connection was released: the worker holds no more
        # file descriptors than before (polled: the last one may still be
        # closing).
        deadline = time.monotonic() + fd_timeout
        fds = open_fds(self.workers[0])
        while fds > self.fds and time.monotonic() < deadline:
            time.sleep(0.05)
            fds = open_fds(self.workers[0])
        assert fds <= self.fds, f"worker holds {fds} fds, {self.fds} before"


@pytest.fixture
def guard(server: UwsgiServer) -> Iterator[Guard]:
    workers = server.worker_pids()
    assert len(workers) == 1
    with open_bystander(server) as bystander:
        assert_echoes(bystander, "bystander before")
        yield Guard(server, bystander, workers, open_fds(workers[0]))


# ---------------------------------------------------------------------------
# Protocol violations after a valid handshake


def _case_oversized_frame() -> List[bytes]:
    # Announce 2 MiB (over the 1 MiB limit), then send only 64 KiB of it.
    return [build_frame(OP_BINARY, os.urandom(64 * 1024), length=2 * MIB)]


def _case_oversized_fragments() -> List[bytes]:
    # Each fragment is under the limit; together they are over it.
    half = b"a" * (600 * 1024)
    return [build_frame(OP_TEXT, half, fin=False), build_frame(OP_CONT, half, fin=True)]


#: name -> (frames to send, close code expected from the server)
HOSTILE_CASES: Dict[str, Tuple[List[bytes], int]] = {
    "stray-continuation": ([build_frame(OP_CONT, b"lost")], 1002),
    "stray-continuation-not-final": ([build_frame(OP_CONT, b"lost", fin=False)], 1002),
    "interleaved-fragments": (
        [build_frame(OP_TEXT, b"first", fin=False), build_frame(OP_TEXT, b"second")],
        1002,
    ),
    "interleaved-binary-after-text": (
        [build_frame(OP_TEXT, b"first", fin=False), build_frame(OP_BINARY, b"second")],
        1002,
    ),
    "unmasked-frame": ([build_frame(OP_TEXT, b"naked", mask=False)], 1002),
    "reserved-opcode-3": ([build_frame(0x3, b"what")], 1002),
    "reserved-control-opcode-b": ([build_frame(0xB, b"what")], 1002),
    "rsv1": ([build_frame(OP_TEXT, b"compressed?", rsv=4)], 1002),
    "rsv2": ([build_frame(OP_BINARY, b"x", rsv=2)], 1002),
    "rsv3": ([build_frame(OP_BINARY, b"x", rsv=1)], 1002),
    "invalid-utf8": ([build_frame(OP_TEXT, b"\xff\xfe")], 1007),
    "invalid-utf8-split-across-fragments": (
        # A 4-byte sequence started in one fragment, broken in the next.
        [build_frame(OP_TEXT, b"ok \xf0\x9f", fin=False), build_frame(OP_CONT, b"(", fin=True)],
        1007,
    ),
    "invalid-utf8-in-first-fragment": (
        # Must fail at once, without waiting for the rest of the message.
        [build_frame(OP_TEXT, b"\xff", fin=False)],
        1007,
    ),
    "truncated-utf8-at-end-of-message": (
        [build_frame(OP_TEXT, b"a", fin=False), build_frame(OP_CONT, b"\xe2\x82", fin=True)],
        1007,
    ),
    "oversized-frame": (_case_oversized_frame(), 1009),
    "oversized-fragmented-message": (_case_oversized_fragments(), 1009),
    "control-frame-over-125-bytes": ([build_frame(OP_PING, b"p" * 126)], 1002),
    "fragmented-ping": ([build_frame(OP_PING, b"ping", fin=False)], 1002),
    "close-with-1-byte-payload": ([build_frame(OP_CLOSE, b"\x03")], 1002),
    "close-with-reserved-code-1005": ([build_frame(OP_CLOSE, close_payload(1005))], 1002),
    "close-with-invalid-code-999": ([build_frame(OP_CLOSE, close_payload(999))], 1002),
    "close-with-invalid-utf8-reason": (
        [build_frame(OP_CLOSE, close_payload(1000, b"\xff\xfe"))],
        1007,
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE_CASES))
def test_protocol_violation_closes_with_code(server: UwsgiServer, guard: Guard, case: str) -> None:
    frames, expected_code = HOSTILE_CASES[case]
    ws = raw_connect(server.port)
    try:
        # The connection works before the attack.
        ws.send(build_frame(OP_TEXT, b"warm-up"))
        assert ws.read_frame() == (OP_TEXT, b"warm-up")
        for frame in frames:
            ws.send(frame)
        try:
            code, reason, before = ws.read_close()
        except ConnectionResetError as exc:
            pytest.fail(f"reset instead of a close frame: {exc!r}\n{server.log()[-3000:]}")
        assert before == [], f"frames before the close frame: {before!r}"
        assert code == expected_code, f"close code {code} ({reason!r}), expected {expected_code}"
        # Then the server closes the TCP connection (no need to answer its close).
        try:
            trailing = ws.wait_eof()
        except ConnectionResetError as exc:
            pytest.fail(f"connection reset instead of a clean EOF: {exc!r}")
        assert trailing == b"", f"data after the close frame: {trailing[:200]!r}"
    finally:
        ws.close()
    guard.check()


def test_valid_control_frames_between_fragments_are_fine(server: UwsgiServer, guard: Guard) -> None:
    """Control check for the cases above: a ping inside a fragmented message is legal."""
    ws = raw_connect(server.port)
    try:
        ws.send(build_frame(OP_TEXT, b"fra", fin=False))
        ws.send(build_frame(OP_PING, b"are you there"))
        assert ws.read_frame() == (OP_PONG, b"are you there")
        ws.send(build_frame(OP_CONT, "gmént".encode(), fin=True))
        assert ws.read_frame() == (OP_TEXT, "fragmént".encode())
        ws.send(build_frame(OP_CLOSE, close_payload(1000, b"done")))
        code, reason, before = ws.read_close()
        assert (code, reason, before) == (1000, "done", [])
        assert ws.wait_eof() == b""
    finally:
        ws.close()
    guard.check()


@pytest.mark.parametrize("fragmented", [False, True], ids=["single-frame", "fragmented"])
def test_message_size_limit_boundary(server: UwsgiServer, guard: Guard, fragmented: bool) -> None:
    """Exactly WEBSOCKET_MAX_MESSAGE_SIZE (1 MiB) passes; one byte more closes with 1009."""

    def frames(size: int) -> List[bytes]:
        payload = os.urandom(size)
        if not fragmented:
            return [build_frame(OP_BINARY, payload)]
        third = size // 3
        return [
            build_frame(OP_BINARY, payload[:third], fin=False),
            build_frame(OP_CONT, payload[third : 2 * third], fin=False),
            build_frame(OP_CONT, payload[2 * third :], fin=True),
        ]

    ws = raw_connect(server.port)
    try:
        for frame in frames(MIB):
            ws.send(frame)
        opcode, payload = ws.read_frame(timeout=10)
        assert (opcode, len(payload)) == (OP_BINARY, MIB)
        for frame in frames(MIB + 1):
            ws.send(frame)
        code, reason, before = ws.read_close(timeout=10)
        assert (code, before) == (1009, []), reason
        if server.mode == "http-socket":
            assert ws.wait_eof() == b""
        else:
            # The client is still sending when the worker fails the connection
            # and half-closes; uWSGI's HTTP router then closes the client
            # socket with our unread upload in it, so the kernel may send a
            # reset after the close frame. The close frame itself arrives.
            with contextlib.suppress(ConnectionResetError):
                assert ws.wait_eof() == b""
    finally:
        ws.close()
    guard.check()


# ---------------------------------------------------------------------------
# Memory: what a hostile client can make one connection hold


def _settled_rss(pid: int, timeout: float = 3.0) -> int:
    """The worker's RSS once it stops changing (polled, bounded by ``timeout``)."""
    process = psutil.Process(pid)
    deadline = time.monotonic() + timeout
    previous = process.memory_info().rss
    while time.monotonic() < deadline:
        time.sleep(0.1)
        current = process.memory_info().rss
        if current == previous:
            return current
        previous = current
    return previous


PING_FLOOD_BYTES = 64 * MIB
#: More than the kernel's socket buffers plus WEBSOCKET_SEND_QUEUE_SIZE (1 MiB) need.
MEMORY_BUDGET = 24 * MIB


def test_ping_flood_without_reading_pongs_is_bounded(server: UwsgiServer, guard: Guard) -> None:
    """A client that sends pings and never reads the pongs must not grow the worker.

    The pongs are queued by the event loop; once WEBSOCKET_SEND_QUEUE_SIZE is
    exceeded the server should stop reading (TCP backpressure), so the
    client's sends block instead of the worker's memory growing.
    """
    worker = guard.workers[0]
    before = _settled_rss(worker)
    ws = raw_connect(server.port)
    try:
        ws.sock.settimeout(2.0)  # a send blocked this long: the server stopped reading
        chunk = build_frame(OP_PING, b"p" * 125) * 1000
        sent = 0
        deadline = time.monotonic() + 30
        try:
            while sent < PING_FLOOD_BYTES and time.monotonic() < deadline:
                ws.sock.sendall(chunk)
                sent += len(chunk)
        except socket.timeout:
            pass  # backpressure: what a bounded server does
        growth = _settled_rss(worker) - before
        assert growth < MEMORY_BUDGET, (
            f"worker RSS grew by {growth / MIB:.0f} MiB after {sent / MIB:.0f} MiB of "
            "unanswered pings"
        )
    finally:
        ws.close()
    guard.check()


def test_tiny_fragments_cost_about_their_payload(server: UwsgiServer, guard: Guard) -> None:
    """A message in 1-byte fragments, within the 1 MiB limit, must not cost many times that.

    1,000,000 one-byte continuation frames (7 MB on the wire, a 1 MB message)
    are each kept as a separate object until the message is complete.
    """
    worker = guard.workers[0]
    count = 1_000_000
    before = _settled_rss(worker)
    ws = raw_connect(server.port)
    try:
        ws.send(build_frame(OP_BINARY, b"x", fin=False))
        batch = build_frame(OP_CONT, b"x", fin=False) * 10_000
        for _ in range(count // 10_000 - 1):
            ws.send(batch)
        ws.send(build_frame(OP_CONT, b"x" * 9_999, fin=False))
        # A ping inside a fragmented message is legal; its pong says the server
        # has parsed every fragment before it.
        ws.send(build_frame(OP_PING, b"parsed?"))
        assert ws.read_frame(timeout=60) == (OP_PONG, b"parsed?")
        growth = _settled_rss(worker) - before
        ws.send(build_frame(OP_CONT, b"", fin=True))
        assert ws.read_frame(timeout=30) == (OP_BINARY, b"x" * count)
        # Checked last, so the message above is known to be a legal one.
        assert growth < 16 * MIB, (
            f"worker RSS grew by {growth / MIB:.0f} MiB holding a {count / MIB:.2f} MiB message"
        )
    finally:
        ws.close()
    guard.check()


# ---------------------------------------------------------------------------
# Not WebSocket at all, and bad handshakes


def _read_until_eof(sock: socket.socket, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    received = b""
    for _ in range(10000):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"connection still open after {timeout} s: {received[:300]!r}")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return received  # dropping a garbage connection hard is fine too
        if not chunk:
            return received
        received += chunk
    raise AssertionError("too many reads")


GARBAGE = {
    "binary-noise": os.urandom(4096) + b"\r\n\r\n",
    "websocket-frame-first": build_frame(OP_TEXT, b"hello before any handshake") + b"\r\n\r\n",
    "not-http": b"HELLO THERE\x00\x01\x02\r\nwhat: is this\r\n\r\n",
    "huge-header-line": b"GET /echo HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n",
}


@pytest.mark.parametrize("name", list(GARBAGE))
def test_garbage_instead_of_http_request(server: UwsgiServer, guard: Guard, name: str) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=READ_TIMEOUT) as sock:
        # The server may hang up before reading it all.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(GARBAGE[name])
        answer = _read_until_eof(sock, 10.0)
    # Either silence or an HTTP error, never a WebSocket upgrade or a 2xx.
    # (uWSGI's lenient parser may take "HELLO THERE..." for a request line and
    # echo its "protocol" in the status line: only the status code is checked.)
    if answer:
        status_line = answer.split(b"\r\n", 1)[0]
        assert re.search(rb"(^| )[45]\d\d ", status_line), answer[:300]
        assert b"Switching Protocols" not in answer
        assert b"sec-websocket-accept" not in answer.lower()
    guard.check()


def _http_get(port: int, headers: Dict[str, str]) -> Tuple[int, Dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=READ_TIMEOUT)
    try:
        conn.request("GET", "/echo", headers=headers)
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def test_handshake_without_key_is_400(server: UwsgiServer, guard: Guard) -> None:
    status, headers, body = _http_get(
        server.port,
        {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"},
    )
    assert status == 400, (status, headers, body)
    assert b"missing Sec-WebSocket-Key" in body, body
    assert "sec-websocket-accept" not in headers
    guard.check()


def test_handshake_with_bad_key_is_400(server: UwsgiServer, guard: Guard) -> None:
    status, headers, body = _http_get(
        server.port,
        {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "not base64 of 16 bytes",
            "Sec-WebSocket-Version": "13",
        },
    )
    assert status == 400, (status, headers, body)
    assert b"Sec-WebSocket-Key" in body, body
    guard.check()


def test_handshake_with_version_8_is_426(server: UwsgiServer, guard: Guard) -> None:
    status, headers, body = _http_get(
        server.port,
        {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
            "Sec-WebSocket-Version": "8",
        },
    )
    assert status == 426, (status, headers, body)
    assert headers.get("sec-websocket-version") == "13", headers
    assert b"unsupported WebSocket version '8'" in body, body
    assert "sec-websocket-accept" not in headers
    guard.check()


def test_plain_get_on_websocket_route_is_400(server: UwsgiServer, guard: Guard) -> None:
    status, _, body = _http_get(server.port, {})
    assert status == 400
    assert b"WebSocket" in body, body
    guard.check()


def test_handshake_then_hang_up_at_once(server: UwsgiServer, guard: Guard) -> None:
    """Clients that vanish right after (or during) the handshake leave no trace."""
    for _ in range(20):
        ws = raw_connect(server.port)
        ws.close()
    key = base64.b64encode(os.urandom(16)).decode()
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", server.port), timeout=READ_TIMEOUT) as sock:
            sock.sendall(handshake_request(server.port, "/echo", key)[:-10])
    # Abrupt reset (SO_LINGER 0) in the middle of a frame.
    for _ in range(20):
        ws = raw_connect(server.port)
        ws.send(build_frame(OP_BINARY, b"x" * 1000, length=5000))
        ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ws.close()
    guard.check()


def _raw_exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` as is; everything the server answers until it closes (or 10 s)."""
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT) as sock:
        sock.sendall(request)
        answer = b""
        deadline = time.monotonic() + 10
        while b"\r\n\r\n" not in answer and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


@pytest.mark.parametrize(
    "header", ["X-Junk: \x01", "Cookie: a=b\x7f", "User-Agent: tab\tis fine\x1f"]
)
def test_control_characters_in_a_header_are_the_clients_error(
    server: UwsgiServer, guard: Guard, header: str
) -> None:
    """400, not a 500 with the app's traceback in the log."""
    before = len(server.log())
    key = base64.b64encode(os.urandom(16)).decode()
    answer = _raw_exchange(server.port, handshake_request(server.port, "/echo", key, [header]))
    assert answer.split(b"\r\n", 1)[0].split(b" ")[1] == b"400", answer[:300]
    assert b"Switching Protocols" not in answer
    new_log = server.log()[before:]
    assert "Traceback" not in new_log and "ERROR in app" not in new_log, new_log
    guard.check()


def test_an_http_10_upgrade_is_refused(server: UwsgiServer, guard: Guard) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    request = handshake_request(server.port, "/echo", key).replace(b"HTTP/1.1", b"HTTP/1.0", 1)
    answer = _raw_exchange(server.port, request)
    assert answer.split(b"\r\n", 1)[0].split(b" ")[1] == b"400", answer[:300]
    assert b"HTTP/1.1" in answer.partition(b"\r\n\r\n")[2]  # the body says why
    guard.check()


def test_a_reset_right_after_the_upgrade_request_leaves_no_traceback(
    server: UwsgiServer, guard: Guard
) -> None:
    before = len(server.log())
    key = base64.b64encode(os.urandom(16)).decode()
    for _ in range(200):
        with socket.create_connection(("127.0.0.1", server.port), timeout=READ_TIMEOUT) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.sendall(handshake_request(server.port, "/echo", key))
    time.sleep(0.5)  # the worker has met every one of them
    new_log = server.log()[before:]
    assert "Traceback" not in new_log and "ERROR" not in new_log, new_log[-3000:]
    guard.check()


def test_a_cross_site_handshake_with_the_users_cookie_is_refused(
    server: UwsgiServer, guard: Guard
) -> None:
    """Cross-site WebSocket hijacking: a page elsewhere opens the socket with the cookie."""
    before = len(server.log())
    key = base64.b64encode(os.urandom(16)).decode()
    extra = ["Origin: http://evil.example", "Cookie: session=stolen-by-the-browser"]
    answer = _raw_exchange(server.port, handshake_request(server.port, "/echo", key, extra))
    assert answer.split(b"\r\n", 1)[0].split(b" ")[1] == b"403", answer[:300]
    assert "refused a WebSocket handshake to /echo from origin 'http://evil.example'" in (
        server.log()[before:]
    )
    # The app's own pages still connect (the same origin), as do non-browsers.
    own = [f"Origin: http://127.0.0.1:{server.port}"]
    answer = _raw_exchange(server.port, handshake_request(server.port, "/echo", key, own))
    assert b" 101 " in answer.split(b"\r\n", 1)[0], answer[:300]
    guard.check()
