"""Rooms and broadcast across real uWSGI workers (the local hub, no set-up)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import List, Tuple

import psutil
import pytest
import websockets
from websockets.sync.client import ClientConnection, connect

from tests.test_uwsgi_hostile import (
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    READ_TIMEOUT,
    RawWebSocket,
    build_frame,
    close_payload,
    handshake_request,
)
from tests.uwsgi_server import REPO_ROOT, UwsgiServer, poll_until

pytestmark = pytest.mark.uwsgi

FLASK = str(Path(sys.executable).with_name("flask"))


def join(server: UwsgiServer, room: str) -> Tuple[ClientConnection, str, int]:
    """Connect to ``room``; the connection, its id and its worker's pid."""
    ws = connect(server.url(f"/ws/{room}"), open_timeout=10)
    hello = ws.recv(timeout=10)
    assert isinstance(hello, str)
    _, connection_id, _, pid = hello.split(":")
    return ws, connection_id, int(pid)


def spread_over_workers(server: UwsgiServer, room: str, per_worker: int = 3):
    """Open connections until every worker holds ``per_worker`` of them.

    Which worker accepts a connection is the kernel's choice, and a busy
    worker accepts few: connections beyond ``per_worker`` on one worker are
    closed again, and the attempts are bounded in count and time.
    """
    workers = set(server.worker_pids())
    counts = dict.fromkeys(workers, 0)
    clients: List[Tuple[ClientConnection, str, int]] = []
    deadline = time.monotonic() + 60
    for _ in range(3000):
        if all(count >= per_worker for count in counts.values()):
            return clients
        if time.monotonic() > deadline:
            break
        client = join(server, room)
        if counts.get(client[2], per_worker) >= per_worker:
            client[0].close()  # that worker has enough: leave the room again
            continue
        counts[client[2]] += 1
        clients.append(client)
    raise AssertionError(f"connections did not reach every worker: {counts}")


def assert_next_messages(clients, expected: List[str]) -> None:
    """Each client's next messages are exactly ``expected`` (nothing extra before)."""
    for ws, connection_id, pid in clients:
        got = [ws.recv(timeout=10) for _ in expected]
        assert got == expected, (connection_id, pid)


@pytest.fixture
def four_workers(start_uwsgi) -> UwsgiServer:
    return start_uwsgi(
        "tests.apps.rooms:app",
        processes=4,
        gevent=300,
        extra=["--gevent-early-monkey-patch"],
        env={"FWS_HUB_NAME": f"rooms-{os.getpid()}-{time.monotonic_ns()}"},
    )


def test_broadcast_reaches_every_worker_exactly_once(four_workers: UwsgiServer) -> None:
    clients = spread_over_workers(four_workers, "lobby")
    assert len({pid for _, _, pid in clients}) == 4
    # Publishers on two different workers, one after the other; exactly once:
    # the marker that follows is the very next message everywhere.
    clients[0][0].send("all:first")
    assert_next_messages(clients, ["first"])
    clients[-1][0].send("all:second")
    assert_next_messages(clients, ["second"])
    clients[0][0].send("all:marker")
    assert_next_messages(clients, ["marker"])
    for ws, _, _ in clients:
        ws.close()
    assert four_workers.crash_lines() == []


def test_room_skip_send_to_and_presence_across_workers(four_workers: UwsgiServer) -> None:
    red = spread_over_workers(four_workers, "red", per_worker=2)
    blue = [join(four_workers, "blue") for _ in range(4)]
    sender = red[0]
    sender[0].send("room:hi red")
    for ws, _, _ in red[1:]:
        assert ws.recv(timeout=10) == "hi red"
    # The sender and the other room got nothing: their next message is a marker.
    target = red[-1]
    sender[0].send(f"to:{target[1]}:just for you")
    assert target[0].recv(timeout=10) == "just for you"
    blue[0][0].send("all:marker")
    for ws, _, _ in [sender, *blue]:
        assert ws.recv(timeout=10) == "marker"
    for ws, _, _ in red[1:]:
        assert ws.recv(timeout=10) == "marker"
    # Presence agrees from every worker.
    expected = sorted(connection_id for _, connection_id, _ in red)
    seen_from = set()
    for ws, _, pid in red:
        ws.send("members")
        reply = ws.recv(timeout=10)
        assert isinstance(reply, str) and reply.startswith("members:")
        assert sorted(json.loads(reply[len("members:") :])) == expected
        seen_from.add(pid)
    assert len(seen_from) == 4
    red[1][0].close()
    expected.remove(red[1][1])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        red[0][0].send("members")
        reply = red[0][0].recv(timeout=10)
        if sorted(json.loads(reply[len("members:") :])) == expected:  # type: ignore[index]
            break
    else:
        raise AssertionError("a closed connection stayed in the room")


def test_broadcast_from_a_plain_view_and_from_a_cli_process(four_workers: UwsgiServer) -> None:
    clients = spread_over_workers(four_workers, "news", per_worker=1)
    request = urllib.request.Request(
        four_workers.http_url("/broadcast?room=news"), data=b"from a view", method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.read() == b"sent"
    assert_next_messages(clients, ["from a view"])
    result = subprocess.run(
        [FLASK, "--app", "tests.apps.rooms", "shout", "from the cli", "--room", "news"],
        cwd=REPO_ROOT,
        env=four_workers.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert_next_messages(clients, ["from the cli"])


def test_a_killed_worker_rejoins_after_respawn(four_workers: UwsgiServer) -> None:
    clients = spread_over_workers(four_workers, "lobby", per_worker=1)
    victim = clients[-1][2]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        workers = four_workers.worker_pids()
        if len(workers) == 4 and victim not in workers:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"worker not respawned: {four_workers.worker_pids()}")
    survivors = [c for c in clients if c[2] != victim]
    fresh = spread_over_workers(four_workers, "lobby", per_worker=1)
    new_pids = {pid for _, _, pid in fresh} - {pid for _, _, pid in clients}
    assert new_pids, "no connection landed on the respawned worker"
    survivors[0][0].send("all:after respawn")
    for ws, _, _ in survivors + fresh:
        assert ws.recv(timeout=10) == "after respawn"
    lines = [line for line in four_workers.crash_lines() if "signal 9" not in line]
    assert all("killed by signal 9" in line or "DAMN" in line for line in lines), lines


def test_slow_consumer_is_disconnected_and_others_get_everything(start_uwsgi) -> None:
    server = start_uwsgi(
        "tests.apps.rooms:app",
        gevent=1100,
        extra=["--gevent-early-monkey-patch"],
        env={
            "FWS_HUB_URL": "memory://",
            # Long enough for the close frame to wait until the slow one reads.
            "FWS_CLOSE_TIMEOUT": "120",
        },
    )
    (worker,) = server.worker_pids()
    count, size, readers = 1000, 256, 999

    async def scenario() -> Tuple[List[List[str]], int, int, float]:
        # A small receive buffer, so that the kernel cannot absorb the burst.
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", server.port))
        raw.setblocking(False)
        slow = await websockets.connect(
            server.url("/ws/feed"), sock=raw, max_queue=None, ping_interval=None
        )
        await slow.recv()
        await slow.send(f"slowmode:{64 * 1024}")
        assert await slow.recv() == "slowmode set"
        slow.transport.pause_reading()  # never read: the kernel buffers fill up
        fast = []
        for start in range(0, readers, 100):
            batch = [
                websockets.connect(server.url("/ws/feed"), ping_interval=None)
                for _ in range(min(100, readers - start))
            ]
            fast += await asyncio.gather(*batch)
        await asyncio.gather(*(ws.recv() for ws in fast))
        rss_before = psutil.Process(worker).memory_info().rss
        publisher = fast[0]
        await publisher.send(f"burst:{count}:{size}")

        async def collect(ws, expect: int) -> List[str]:
            return [await asyncio.wait_for(ws.recv(), 60) for _ in range(expect)]

        others = fast[1:]
        results = await asyncio.gather(*(collect(ws, count) for ws in others))
        assert await asyncio.wait_for(publisher.recv(), 60) == "burst done"
        rss_after = psutil.Process(worker).memory_info().rss
        slow.transport.resume_reading()
        code = None
        started = time.monotonic()
        slow_got: List[str] = []
        try:
            while time.monotonic() - started < 30:
                slow_got.append(await asyncio.wait_for(slow.recv(), 30))
        except websockets.ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
        # What reached the slow one before the policy cut it off: in order.
        assert slow_got == [f"{i}:".ljust(size, "x") for i in range(len(slow_got))]
        assert len(slow_got) < count
        for ws in fast:
            await ws.close()
        return results, code, rss_after - rss_before, time.monotonic() - started

    results, code, growth, _ = asyncio.run(scenario())
    expected = [f"{i}:".ljust(size, "x") for i in range(count)]
    assert len(results) == readers - 1
    assert all(result == expected for result in results)  # all, in order
    assert code == 1013  # the slow one was disconnected by the policy
    assert "send queue full" in server.log()
    assert growth < 64 * 1024 * 1024, f"worker grew by {growth / 2**20:.1f} MiB"
    assert server.crash_lines() == []


def _slow_reader(port: int, path: str) -> RawWebSocket:
    """A raw client with a small receive buffer, so that the kernel absorbs little."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(READ_TIMEOUT)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(handshake_request(port, path, key))
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(1)  # one byte at a time: nothing after the head is taken
        assert chunk, f"closed during the handshake: {response!r}"
        response += chunk
    assert response.split(b" ", 2)[1] == b"101", response
    return RawWebSocket(sock)


def _read_until_close(
    raw: RawWebSocket, before: List[Tuple[int, bytes]], reset_allowed: bool
) -> Tuple[int, str]:
    """Read frames into ``before`` up to the close frame: its (code, reason).

    With ``reset_allowed`` a connection reset ends the stream too: (1006, "").
    """
    for _ in range(1000):  # bounded: fewer frames than the burst
        try:
            opcode, payload = raw.read_frame(timeout=30)
        except ConnectionResetError:
            if not reset_allowed:
                raise
            return 1006, ""
        if opcode == OP_CLOSE:
            (code,) = struct.unpack("!H", payload[:2])
            return code, payload[2:].decode("utf-8")
        before.append((opcode, payload))
    raise AssertionError(f"no close frame among {len(before)} frames")


@pytest.mark.parametrize("mode", ["http-socket", "http"])
@pytest.mark.parametrize("reads_again", ["within the close timeout", "after it"])
def test_a_cut_off_reader_gets_whole_frames_then_1013(
    start_uwsgi, mode: str, reads_again: str
) -> None:
    """What a reader cut off by the disconnect policy finds on the wire.

    Frames of 20 000 bytes, so that the kernel always holds the beginning
    of one when the policy strikes. Read within the close timeout, the
    reader gets whole frames, in order, then the 1013 close frame; read
    after the server let it go, the same (the kernel keeps what ends the
    stream at a frame boundary), though the reader pinged meanwhile: bytes
    never read must not turn the close into a reset.
    """
    within = reads_again == "within the close timeout"
    server = start_uwsgi(
        "tests.apps.rooms:app",
        mode=mode,
        gevent=10,
        env={"FWS_HUB_URL": "memory://", "FWS_CLOSE_TIMEOUT": "120" if within else "1"},
    )
    count, size = 200, 20000
    slow = _slow_reader(server.port, "/ws/feed")
    try:
        assert slow.read_frame()[1].startswith(b"id:")
        slow.send(build_frame(OP_TEXT, f"slowmode:{64 * 1024}".encode()))
        assert slow.read_frame() == (OP_TEXT, b"slowmode set")
        with connect(server.url("/ws/feed"), open_timeout=10) as publisher:
            publisher.recv(timeout=10)
            publisher.send(f"burst:{count}:{size}")
            while publisher.recv(timeout=60) != "burst done":
                pass
            if not within:
                slow.send(build_frame(OP_PING, b"unread"))
                # The slow one's request ends when the server lets it go.
                assert poll_until(lambda: "GET /ws/feed =>" in server.log(), 30), server.log()
            before: List[Tuple[int, bytes]] = []
            code, reason = _read_until_close(
                slow, before, reset_allowed=not within and mode == "http"
            )
            if within:
                slow.send(build_frame(OP_CLOSE, close_payload(code)))
            if code != 1006:
                slow.wait_eof(timeout=30)
    finally:
        slow.close()
    if code == 1006:
        # Behind the router the ping reaches the server only after it let the
        # connection go (the router stops reading a client it cannot write
        # to), and the kernel answers it with a reset (see docs/rooms.rst):
        # what the reader found before it is still whole frames, in order.
        assert "GET /ws/feed =>" in server.log()
    else:
        assert (code, reason) == (1013, "send queue full: reading too slowly")
        assert before  # the kernel kept the stream's end for the reader
    assert len(before) < count
    expected = [(OP_TEXT, f"{i}:".ljust(size, "x").encode()) for i in range(len(before))]
    assert before == expected  # whole frames, in order, none cut
    assert "send queue full" in server.log()
