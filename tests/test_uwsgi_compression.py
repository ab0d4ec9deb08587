"""permessage-deflate on a real uWSGI, with the ``websockets`` client and raw sockets."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import struct
import time
import zlib
from typing import Iterator, List, Optional, Tuple

import pytest
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.sync.client import ClientConnection, connect

from tests.test_uwsgi_hostile import OP_BINARY, OP_CLOSE, OP_TEXT, build_frame, handshake_request
from tests.uwsgi_server import UwsgiServer

pytestmark = pytest.mark.uwsgi

APP = "tests.apps.compression:app"
TIMEOUT = 10.0
TAIL = b"\x00\x00\xff\xff"


@pytest.fixture(scope="module")
def server() -> Iterator[UwsgiServer]:
    with UwsgiServer(APP) as running:
        yield running


@pytest.fixture(scope="module")
def takeover_server() -> Iterator[UwsgiServer]:
    with UwsgiServer(APP, env={"FWS_CONTEXT_TAKEOVER": "1"}) as running:
        yield running


def extensions_of(ws: ClientConnection) -> str:
    return ws.response.headers.get("Sec-WebSocket-Extensions", "")


def deflate_client(url: str, **parameters: object) -> ClientConnection:
    """A websockets client offering permessage-deflate with ``parameters``."""
    factory = ClientPerMessageDeflateFactory(**parameters)  # type: ignore[arg-type]
    return connect(url, extensions=[factory], compression=None, open_timeout=TIMEOUT, proxy=None)


# -- a raw client, to see the frames themselves -----------------------------------


class RawDeflateClient:
    """A handshake offering permessage-deflate, then frames read with their RSV1 bit."""

    def __init__(self, port: int, path: str, offer: str = "permessage-deflate") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            handshake_request(port, path, key, [f"Sec-WebSocket-Extensions: {offer}"])
        )
        response = b""
        deadline = time.monotonic() + TIMEOUT
        while b"\r\n\r\n" not in response and time.monotonic() < deadline:
            chunk = self.sock.recv(4096)
            assert chunk, f"closed during the handshake: {response!r}"
            response += chunk
        head, _, self.buffer = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        self.response_head = head.decode()

    def _take(self, count: int) -> bytes:
        deadline = time.monotonic() + TIMEOUT
        while len(self.buffer) < count:
            assert time.monotonic() < deadline, "no data from the server in time"
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"server closed the connection; unread: {self.buffer!r}")
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def read_frame(self) -> Tuple[int, bool, bytes]:
        """(opcode, RSV1, payload) of the next server frame."""
        first, second = self._take(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._take(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._take(8))
        return first & 0x0F, bool(first & 0x40), self._take(length)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


def inflate(payload: bytes, bits: int = 15) -> bytes:
    return zlib.decompressobj(wbits=-bits).decompress(payload + TAIL)


def deflate(payload: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    return (compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


# -- echo -------------------------------------------------------------------------


MESSAGES: List[object] = [
    "short",  # under the threshold: uncompressed
    '{"user": "ann", "text": "hello, everyone in the room"}' * 10,
    "ünïcödé ✓ " * 3000,  # several 64 KiB reads
    bytes(range(256)) * 40,
    os.urandom(5000),  # does not compress: still correct
    b"",
    "",
]


def test_echo_with_the_websockets_client(server: UwsgiServer) -> None:
    with connect(server.url("/echo"), compression="deflate", open_timeout=TIMEOUT) as ws:
        assert extensions_of(ws).startswith("permessage-deflate")
        assert "server_no_context_takeover" in extensions_of(ws)
        for message in MESSAGES:
            ws.send(message)  # type: ignore[arg-type]
            assert ws.recv(timeout=TIMEOUT) == message


def test_a_route_without_compression_declines(server: UwsgiServer) -> None:
    with connect(server.url("/plain"), compression="deflate", open_timeout=TIMEOUT) as ws:
        assert extensions_of(ws) == ""
        ws.send("x" * 1000)
        assert ws.recv(timeout=TIMEOUT) == "x" * 1000


def test_a_client_without_compression_is_served_plain(server: UwsgiServer) -> None:
    with connect(server.url("/echo"), compression=None, open_timeout=TIMEOUT) as ws:
        assert extensions_of(ws) == ""
        ws.send("y" * 1000)
        assert ws.recv(timeout=TIMEOUT) == "y" * 1000


def test_frames_are_compressed_from_the_threshold_on(server: UwsgiServer) -> None:
    client = RawDeflateClient(server.port, "/echo")
    try:
        assert "permessage-deflate" in client.response_head
        long_text = b"compress me, " * 100
        client.send(build_frame(OP_TEXT, b"x" * 63) + build_frame(OP_TEXT, long_text))
        assert client.read_frame() == (OP_TEXT, False, b"x" * 63)
        opcode, rsv1, payload = client.read_frame()
        assert (opcode, rsv1) == (OP_TEXT, True) and len(payload) < len(long_text) // 5
        assert inflate(payload) == long_text
        # A compressed message in (RSV1 = rsv 4), the same out.
        client.send(build_frame(OP_BINARY, deflate(long_text), rsv=4))
        opcode, rsv1, payload = client.read_frame()
        assert (opcode, rsv1) == (OP_BINARY, True) and inflate(payload) == long_text
    finally:
        client.close()


# -- broadcast to mixed members ------------------------------------------------


def test_a_broadcast_reaches_every_kind_of_member(takeover_server: UwsgiServer) -> None:
    server = takeover_server
    url = server.url("/room/mixed")
    members: List[Tuple[str, ClientConnection]] = []
    with contextlib.ExitStack() as stack:
        for name, ws in [
            ("plain", connect(url, compression=None, open_timeout=TIMEOUT)),
            ("alone", deflate_client(url, server_no_context_takeover=True)),
            ("takeover", deflate_client(url)),
            ("takeover again", deflate_client(url)),
            (
                "alone, window 10",
                deflate_client(url, server_no_context_takeover=True, server_max_window_bits=10),
            ),
            ("takeover, window 9", deflate_client(url, server_max_window_bits=9)),
        ]:
            members.append((name, stack.enter_context(ws)))
        expected = {
            "plain": "",
            "alone": "server_no_context_takeover",
            "takeover": "server_max_window_bits=",
        }
        for name, ws in members:
            assert ws.recv(timeout=TIMEOUT) == "ready", name
            header = extensions_of(ws)
            for prefix, part in expected.items():
                if name.startswith(prefix) and part:
                    assert part in header, (name, header)
            if name == "plain":
                assert header == "", header
            if name.startswith("takeover"):
                assert "server_no_context_takeover" not in header, (name, header)
        sender = members[1][1]
        texts = [f"message {i}: " + "the same words again " * (i * 7) for i in range(6)]
        for text in texts:
            sender.send(f"pub:{text}")
        sender.send("bin:70000")
        binary = (bytes(range(256)) * 274)[:70000]
        for name, ws in members:
            got = [ws.recv(timeout=TIMEOUT) for _ in range(len(texts) + 1)]
            assert got == [*texts, binary], name


# -- zip bomb ---------------------------------------------------------------------


def test_a_zip_bomb_closes_1009_and_the_worker_serves_on(server: UwsgiServer) -> None:
    pids_before = server.worker_pids()
    with connect(server.url("/echo"), compression="deflate", open_timeout=TIMEOUT) as bystander:
        bystander.send("before")
        assert bystander.recv(timeout=TIMEOUT) == "before"
        # 1 GiB of zeros, about 1 MiB compressed: each frame well under the
        # 1 MiB limit as sent, a thousand times over it inflated.
        compressor = zlib.compressobj(wbits=-15)
        chunk = bytes(2**20)
        bomb = b"".join(compressor.compress(chunk) for _ in range(512))
        bomb += compressor.flush(zlib.Z_SYNC_FLUSH)[:-4]
        client = RawDeflateClient(server.port, "/echo")
        try:
            started = time.monotonic()
            client.send(build_frame(OP_BINARY, bomb, rsv=4))
            code: Optional[int] = None
            for _ in range(10):
                opcode, _, payload = client.read_frame()
                if opcode == OP_CLOSE:
                    (code,) = struct.unpack("!H", payload[:2])
                    break
            assert code == 1009
            assert time.monotonic() - started < 5.0  # not inflated: a quick refusal
        finally:
            client.close()
        for i in range(20):
            bystander.send(f"after {i}" * 50)
            assert bystander.recv(timeout=TIMEOUT) == f"after {i}" * 50
    assert server.worker_pids() == pids_before  # no crash, no respawn
