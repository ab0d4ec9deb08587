#!/usr/bin/env python3
"""Fan-out inside one process: the library's delivery path against a direct write.

``broadcast.py`` measures fan-out through uWSGI, TCP and a client, where
the kernel's share dwarfs the library's and other load on the machine moves
the figures. This one takes all of that away but the write system call, so
that what the library adds per delivery and per broadcast can be seen, and
counted exactly under ``valgrind --tool=callgrind``:

* N connections (``WebSocketConnection``, accepted, in one room of a
  :class:`~flask_websocket.rooms.RoomRegistry` with the memory hub) over
  ``socketpair()``s, on the gevent backend; their peers are read and
  discarded between broadcasts, outside the measurement;
* ``fws``: B broadcasts through ``Hub.publish`` (the path of
  ``websocket.broadcast(message, room=...)``), with ``--history N`` a
  history of N messages for the room;
* ``raw``: B times, a frame built once and ``os.write`` to each socket (a
  pending buffer only on a short write): raw uWSGI's direct write.

It prints CPU time per delivery (``time.process_time``) per variant,
interleaved over ``--rounds``. For instruction counts run one variant at a
time under callgrind twice, with B and 2B broadcasts, and divide the
difference by B x N (the set-up cancels out)::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python benchmarks/fanout_inprocess.py --variants fws --broadcasts 20
"""

from __future__ import annotations

import argparse
import gc
import os
import socket
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.append(REPO)  # after PYTHONPATH: another copy of the code may go first

from websockets.datastructures import Headers  # noqa: E402

from flask_websocket.concurrency.gevent import GeventBackend  # noqa: E402
from flask_websocket.connection import ConnectionOptions, WebSocketConnection  # noqa: E402
from flask_websocket.history import HistoryPolicy  # noqa: E402
from flask_websocket.hubs.base import KIND_ROOM, Envelope  # noqa: E402
from flask_websocket.hubs.memory import MemoryHub  # noqa: E402
from flask_websocket.protocol import OP_TEXT, ServerProtocol, encode_frame  # noqa: E402
from flask_websocket.rooms import RoomRegistry  # noqa: E402

ROOM = "bench"
HANDSHAKE = Headers(
    {
        "Host": "localhost",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
)


def open_pairs(n: int) -> list:
    pairs = []
    for _ in range(n):
        server, client = socket.socketpair()
        server.setblocking(False)
        client.setblocking(False)
        pairs.append((server, client))
    return pairs


def drain(pairs: list) -> int:
    got = 0
    for _, client in pairs:
        while True:
            try:
                data = client.recv(1 << 20)
            except BlockingIOError:
                break
            if not data:
                break
            got += len(data)
    return got


class Fws:
    """N accepted connections in one room of a registry with the memory hub."""

    def __init__(self, n: int, history: int) -> None:
        self.backend = GeventBackend("gevent")
        self.registry = RoomRegistry()
        self.hub = MemoryHub(self.registry, backend=self.backend)
        self.registry.hub = self.hub
        if history:
            self.hub.history = HistoryPolicy({ROOM: {"size": history}})
        options = ConnectionOptions(ping_interval=None)
        self.pairs = open_pairs(n)
        self.connections = []
        for server, _ in self.pairs:
            protocol = ServerProtocol()
            response = protocol.accept("GET", "/sub", HANDSHAKE)
            assert response.status == 101, response
            connection = WebSocketConnection(
                protocol, self.backend, options, lambda s=server: s, self.registry
            )
            connection.join(ROOM)
            self.connections.append(connection)
        drain(self.pairs)

    def broadcast(self, payload: bytes) -> None:
        self.hub.publish(Envelope(KIND_ROOM, OP_TEXT, payload, ROOM, origin=self.registry.node_id))

    def close(self) -> None:
        fds = [server.fileno() for server, _ in self.pairs]
        for connection in self.connections:
            connection._teardown(lost=True)  # gives the socket back: detached, fd open
        for fd, (server, client) in zip(fds, self.pairs):
            server.close()
            if fd >= 0:
                os.close(fd)
            client.close()


class Raw:
    """N sockets written directly: raw uWSGI's direct-write fan-out."""

    def __init__(self, n: int) -> None:
        self.pairs = open_pairs(n)
        self.fds = [server.fileno() for server, _ in self.pairs]
        self.pending: dict = {}

    def broadcast(self, payload: bytes) -> None:
        data = encode_frame(OP_TEXT, payload)
        pending = self.pending
        write = os.write
        for fd in self.fds:
            if fd in pending:
                pending[fd] += data
                continue
            sent = write(fd, data)
            if sent < len(data):
                pending[fd] = bytearray(data[sent:])

    def close(self) -> None:
        for server, client in self.pairs:
            server.close()
            client.close()


def measure(target, broadcasts: int, n: int, size: int, batch: int) -> dict:
    payload = b"x" * size
    cpu = 0.0
    done = 0
    while done < broadcasts:
        k = min(batch, broadcasts - done)
        gc.collect()
        start = time.process_time()
        for _ in range(k):
            target.broadcast(payload)
        cpu += time.process_time() - start
        got = drain(target.pairs)
        expected = k * n * (size + 2)
        if got != expected:
            raise SystemExit(f"{type(target).__name__}: {got} bytes received, {expected} sent")
        done += k
    return {"cpu_s": cpu, "us_per_delivery": cpu / (broadcasts * n) * 1e6}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--broadcasts", type=int, default=200)
    ap.add_argument("--size", type=int, default=64, help="payload bytes (at most 125)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--history", type=int, default=0, help="fws-history: messages kept (1000)")
    ap.add_argument(
        "--variants", default="raw,fws,fws-history", help="comma list of raw, fws, fws-history"
    )
    args = ap.parse_args(argv)
    if not (1 <= args.size <= 125):
        ap.error("--size must be 1..125")
    variants = [v for v in args.variants.split(",") if v]
    batch = max(1, min(args.broadcasts, 100_000 // args.subscribers))  # under the socket buffers
    results: dict = {v: [] for v in variants}
    for _ in range(args.rounds):
        for variant in variants:
            if variant == "raw":
                target = Raw(args.subscribers)
            else:
                history = (args.history or 1000) if variant == "fws-history" else 0
                target = Fws(args.subscribers, history)
            try:
                results[variant].append(
                    measure(target, args.broadcasts, args.subscribers, args.size, batch)
                )
            finally:
                target.close()
    print(
        f"{args.subscribers} connections, {args.broadcasts} broadcasts of {args.size} B, "
        f"{args.rounds} rounds (CPU us per delivery, median [min-max])"
    )
    for variant, runs in results.items():
        values = sorted(r["us_per_delivery"] for r in runs)
        print(f"  {variant:12s} {values[len(values) // 2]:.3f} [{values[0]:.3f}-{values[-1]:.3f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
