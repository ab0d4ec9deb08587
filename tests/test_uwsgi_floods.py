"""Slow consumers and floods: one client's abuse costs bounded memory and nobody else anything.

Real uWSGI, one gevent worker, under ``--http-socket`` and behind the
``--http`` router; a bystander (tests/bystander.py, a process of its own)
echoes every 100 ms throughout and must miss no beat (no gap over 1 s).

- 49 readers and one reader that never reads (a 4 KiB receive buffer) are
  members of a room that gets a broadcast paced at 10 MB/s (64 KiB messages
  for 3 s; 5 MB/s behind the router, see STREAM_RATES): every reader gets
  every message in order, the one that never
  reads is closed with 1013 (send queue full) after an in-order prefix, and
  the worker's RSS grows by no more than the send queues allow.
- 10 000 messages pipelined without reading the replies, from 3 clients at
  once, tiny (16 B) and 4 KiB (40 MiB each, more than every buffer on the
  way holds): the server stops reading instead of buffering (TCP
  backpressure), memory stays bounded, and once the clients read, every
  echo is there, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from typing import Dict, List, Optional, Tuple

import pytest

from tests import hostile
from tests.test_uwsgi_fuzz import router_pid
from tests.uwsgi_server import UwsgiServer

pytestmark = pytest.mark.uwsgi

MIB = hostile.MIB
MODES = ["http-socket", "http"]
#: WEBSOCKET_SEND_QUEUE_SIZE, the default.
SEND_QUEUE = MIB


class PeakRss:
    """The highest RSS of some processes, sampled every 50 ms by a task of the event loop."""

    def __init__(self, pids: List[int]) -> None:
        self.pids = pids
        self.base = {pid: hostile.process_rss(pid) for pid in pids}
        self.peak = dict(self.base)
        self.task: Optional[asyncio.Task] = None

    async def _sample(self) -> None:
        while True:
            for pid in self.pids:
                self.peak[pid] = max(self.peak[pid], hostile.process_rss(pid))
            await asyncio.sleep(0.05)

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._sample())

    async def stop(self) -> Dict[int, int]:
        """Growth of each process over its RSS at the start."""
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        return {pid: self.peak[pid] - self.base[pid] for pid in self.pids}


def start_server(start_uwsgi, mode: str, **env: str) -> UwsgiServer:
    return start_uwsgi(  # type: ignore[no-any-return]
        "tests.apps.rooms:app",
        mode=mode,
        gevent=200,
        extra=["--gevent-early-monkey-patch"],
        env={"FWS_HUB_URL": "memory://", **env},
    )


def server_pids(server: UwsgiServer) -> List[int]:
    return server.worker_pids() + [pid for pid in [router_pid(server)] if pid is not None]


# ---------------------------------------------------------------------------
# A reader that never reads, among 50, under a 10 MB/s broadcast

READERS = 49
STREAM_SIZE = 64 * 1024
#: Bytes a second to each member. Behind the router every byte is copied once
#: more; at 10 MB/s to 49 readers it passed on a quiet 2-core machine, but with
#: other work on it the readers fell behind and were cut off as slow consumers
#: (1013, rightly, with 1 MiB and with 4 MiB send queues): half the rate there.
STREAM_RATES = {"http-socket": 10_000_000, "http": 5_000_000}
STREAM_SECONDS = 3


def open_slow_reader(port: int) -> socket.socket:
    """A member of the room with a 4 KiB receive buffer that will never read."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    sock.sendall(hostile.handshake_request(port, "/ws/feed", key))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)  # byte by byte: leave every frame in the kernel's buffer
        assert chunk, head
        head += chunk
    assert b" 101 " in head.split(b"\r\n", 1)[0], head
    return sock


def parse_data_then_close(data: bytes) -> Tuple[List[bytes], Optional[int]]:
    """Data frames' first 12 bytes, then the close code (None: no close frame yet)."""
    prefixes, pos = [], 0
    while len(data) - pos >= 2:
        length, head = data[pos + 1] & 0x7F, 2
        if length == 126:
            (length,), head = struct.unpack("!H", data[pos + 2 : pos + 4]), 4
        elif length == 127:
            (length,), head = struct.unpack("!Q", data[pos + 2 : pos + 10]), 10
        if len(data) - pos < head + length:
            break
        opcode, payload = data[pos] & 0x0F, data[pos + head : pos + head + length]
        if opcode == hostile.OP_CLOSE:
            return prefixes, struct.unpack("!H", payload[:2])[0]
        prefixes.append(payload[:12])
        pos += head + length
    return prefixes, None


def read_all_then_close(sock: socket.socket) -> Tuple[List[bytes], Optional[int]]:
    """What the slow reader finally reads, up to the close frame (bounded: 10 s of silence)."""
    data = bytearray()
    sock.settimeout(10)
    with contextlib.suppress(ConnectionResetError, socket.timeout):
        for _ in range(100_000):
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
            if parse_data_then_close(bytes(data))[1] is not None:
                break
    return parse_data_then_close(bytes(data))


@pytest.mark.parametrize("mode", MODES)
def test_a_reader_that_never_reads_among_50_at_10_mb_s(start_uwsgi, mode: str) -> None:
    """The 49 others get every message in order; the slow one gets 1013; memory bounded."""
    # A close timeout long enough for the 1013 close frame to wait, behind
    # the frames queued before it, until the slow one reads.
    server = start_server(start_uwsgi, mode, FWS_CLOSE_TIMEOUT="60")
    (worker,) = server.worker_pids()
    rate = STREAM_RATES[mode]
    count = rate * STREAM_SECONDS // STREAM_SIZE
    bystander = hostile.Bystander(server.url("/echo"))

    async def scenario() -> Dict[str, object]:
        slow = open_slow_reader(server.port)
        readers = [await hostile.open_websocket(server.port, "/ws/feed") for _ in range(READERS)]
        publisher = await hostile.open_websocket(server.port, "/ws/feed")
        streams = [hostile.FrameStream(reader, keep=12) for reader, _ in readers]
        for stream in streams:  # each one's greeting: it has joined
            assert (await stream.frames())[0][1].startswith(b"id:")
        peak = PeakRss(server_pids(server))
        peak.start()

        async def read(stream: hostile.FrameStream) -> Tuple[int, str]:
            got = 0
            try:
                while got < count:
                    for opcode, prefix, length in await stream.frames():
                        if (opcode, length) != (hostile.OP_TEXT, STREAM_SIZE) or (
                            not prefix.startswith(f"{got}:".encode())
                        ):
                            return got, f"message {got}: {opcode} {length} {prefix!r}"
                        got += 1
            except (hostile.Closed, asyncio.TimeoutError) as exc:
                return got, f"closed after {got}: {exc!r}"
            return got, ""

        tasks = [asyncio.create_task(read(stream)) for stream in streams]
        started = time.monotonic()
        publisher[1].write(
            hostile.frame(hostile.OP_TEXT, f"stream:{count}:{STREAM_SIZE}:{rate}".encode())
        )
        results = await asyncio.gather(*tasks)
        seconds = time.monotonic() - started
        growth = await peak.stop()
        done, replies = hostile.FrameStream(publisher[0]), []
        while not any(reply.startswith(b"stream done") for reply in replies):
            replies += [payload for _, payload, _ in await done.frames()]  # else a timeout
        prefixes, code = read_all_then_close(slow)
        slow.close()
        for _reader, writer in [*readers, publisher]:
            writer.transport.abort()
        return {
            "results": results,
            "seconds": seconds,
            "growth": growth,
            "done": replies,
            "slow": (prefixes, code),
        }

    try:
        outcome = asyncio.run(scenario())
    finally:
        beats = bystander.finish()
    measured = count * STREAM_SIZE / outcome["seconds"] / 1e6  # type: ignore[operator]
    growth: Dict[int, int] = outcome["growth"]  # type: ignore[assignment]
    grown = {pid: f"{g / MIB:.1f} MiB" for pid, g in growth.items()}
    print(f"\n[{mode}] {count} x {STREAM_SIZE} B to {READERS} readers in")
    print(f"{outcome['seconds']:.2f} s ({measured:.1f} MB/s each); peak RSS growth {grown}")
    print(f"bystander {beats}")
    results = outcome["results"]
    assert [why for _, why in results] == [""] * READERS  # type: ignore[union-attr]
    assert [got for got, _ in results] == [count] * READERS  # type: ignore[union-attr]
    assert any(reply.startswith(b"stream done") for reply in outcome["done"])  # type: ignore[union-attr]
    prefixes, code = outcome["slow"]  # type: ignore[misc]
    assert code == 1013, (code, len(prefixes))  # disconnected by the send queue's policy
    data = [p for p in prefixes if not p.startswith(b"id:")]
    assert data == [f"{i}:".encode().ljust(12, b"x") for i in range(len(data))]
    assert len(data) < count
    # Each member's send queue holds at most SEND_QUEUE bytes (a frame may go
    # over by its own size); the rest is the kernel's, not the worker's.
    bound = (READERS + 1) * (SEND_QUEUE + STREAM_SIZE) + 16 * MIB
    for pid, grew in growth.items():
        assert grew < bound, f"pid {pid} grew by {grew / MIB:.1f} MiB"
    assert beats["errors"] == [] and beats["misses"] == [], beats
    assert server.worker_pids() == [worker]
    assert server.crash_lines() == []
    assert "send queue full" in server.log()


# ---------------------------------------------------------------------------
# 10 000 messages pipelined without reading the replies

PIPELINED = 10_000
FLOODERS = 3


@pytest.mark.parametrize("size", [16, 4096], ids=["16B", "4KiB"])
@pytest.mark.parametrize("mode", MODES)
def test_10000_pipelined_messages_without_reading_replies(
    start_uwsgi, mode: str, size: int
) -> None:
    """Backpressure, not buffering: memory bounded while nobody reads; then every echo, in order."""
    server = start_server(start_uwsgi, mode)
    (worker,) = server.worker_pids()
    bystander = hostile.Bystander(server.url("/echo"))

    def message(i: int) -> bytes:
        return f"{i}:".encode().ljust(size, b"m")

    async def scenario() -> Dict[str, object]:
        flooders = [
            await hostile.open_websocket(server.port, "/echo", rcvbuf=4096) for _ in range(FLOODERS)
        ]
        peak = PeakRss(server_pids(server))
        peak.start()
        flood = b"".join(hostile.frame(hostile.OP_TEXT, message(i)) for i in range(PIPELINED))
        for _, writer in flooders:
            writer.write(flood)  # all at once; asyncio sends what the kernel takes
        # Nobody reads. Wait until the writes stop moving: everything sent, or
        # the server has stopped reading (bounded: 30 s).
        unsent = [writer.transport.get_write_buffer_size() for _, writer in flooders]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            now = [writer.transport.get_write_buffer_size() for _, writer in flooders]
            if now == unsent:
                break
            unsent = now
        stalled = list(unsent)

        async def read_back(reader: asyncio.StreamReader) -> str:
            stream, got = hostile.FrameStream(reader), 0
            try:
                while got < PIPELINED:
                    for opcode, payload, _ in await stream.frames():
                        if (opcode, payload) != (hostile.OP_TEXT, message(got)):
                            return f"echo {got}: {opcode} {payload[:20]!r}"
                        got += 1
            except (hostile.Closed, asyncio.TimeoutError) as exc:
                return f"closed after {got} echoes: {exc!r}"
            return ""

        results = await asyncio.gather(*(read_back(reader) for reader, _ in flooders))
        growth = await peak.stop()
        for _reader, writer in flooders:
            writer.write(hostile.frame(hostile.OP_CLOSE, hostile.close_payload(1000)))
        closes = [(await hostile.read_reply(reader)).close_code for reader, _ in flooders]
        for _, writer in flooders:
            writer.transport.abort()
        return {"results": results, "growth": growth, "stalled": stalled, "closes": closes}

    try:
        outcome = asyncio.run(scenario())
    finally:
        beats = bystander.finish()
    growth: Dict[int, int] = outcome["growth"]  # type: ignore[assignment]
    grown = {pid: f"{g / MIB:.1f} MiB" for pid, g in growth.items()}
    print(f"\n[{mode}, {size} B] unsent when stalled: {outcome['stalled']}")
    print(f"peak RSS growth {grown}; bystander {beats}")
    assert outcome["results"] == [""] * FLOODERS  # every echo, in order, none closed
    assert outcome["closes"] == [1000] * FLOODERS
    offered = PIPELINED * (size + 6)
    if size == 4096:
        # 40 MiB each is more than the kernel's buffers, the receive queue and
        # the send queue hold together: the server stopped reading.
        assert all(unsent > 0 for unsent in outcome["stalled"]), outcome["stalled"]  # type: ignore[attr-defined]
    # Per flooder: its send queue, 64 received messages, and a read buffer.
    bound = FLOODERS * (SEND_QUEUE + 64 * size + 4 * MIB) + 8 * MIB
    for pid, grew in growth.items():
        assert grew < bound, (
            f"pid {pid} grew by {grew / MIB:.1f} MiB ({offered / MIB:.1f} MiB sent)"
        )
    assert beats["errors"] == [] and beats["misses"] == [], beats
    assert server.worker_pids() == [worker]
    assert server.crash_lines() == []
    assert "Traceback" not in server.log()
