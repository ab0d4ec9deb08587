#!/usr/bin/env python3
"""What permessage-deflate costs: server CPU per message and memory per connection.

Three variants of ``benchmarks/apps/flask_websocket_compression.py`` under
uWSGI + gevent (one worker, pinned to core 1; this client on core 0), run
one after the other in each round (interleaved):

* ``off``      - ``WEBSOCKET_COMPRESSION = None``, clients offer nothing;
* ``on``       - ``"permessage-deflate"`` with the default options (no
  context takeover either way), clients offer it;
* ``takeover`` - the same with context takeover both ways.

For each it measures, with the ``websockets`` client (which inflates and
checks every message):

* echo: ``--echo-connections`` connections each sending ``--echo-messages``
  chat-like JSON messages of ``--size`` bytes, one at a time: worker CPU
  (user + system) per message, and the compression ratio on the wire;
* memory: ``--idle`` connections that each exchanged one message, then sit
  idle: worker RSS per connection (the difference with no connection);
* fan-out: ``--subscribers`` members of one room, ``--broadcasts``
  broadcasts of ``--size`` bytes: worker CPU per delivery.

Usage::

    python benchmarks/compression.py [--rounds 3] [--size 256] [--subscribers 1000]

Prints a table and writes ``benchmarks/results/compression-<timestamp>.json``.
Exits non-zero if a message came back wrong or a server failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib as bl
from websockets.asyncio.client import connect

MODULE = "benchmarks.apps.flask_websocket_compression:app"
VARIANTS = {
    "off": {},
    "on": {"FWS_COMPRESSION": "permessage-deflate"},
    "takeover": {"FWS_COMPRESSION": "permessage-deflate", "FWS_CONTEXT_TAKEOVER": "1"},
}
OPEN_TIMEOUT = 60.0
RECEIVE_TIMEOUT = 60.0


def chat_message(index: int, size: int) -> str:
    """A JSON chat message of ``size`` characters: compressible like real ones."""
    head = json.dumps(
        {"type": "message", "room": "lobby", "user": f"user{index % 50}", "seq": index}
    )
    filler = " ".join(
        ["hello", "there", "how", "are", "you", "today", f"{index}"] * (size // 20 + 1)
    )
    return (head[:-1] + ', "text": "' + filler)[: size - 2] + '"}'


def client_kwargs(variant: str) -> dict:
    if variant == "off":
        return {"compression": None}
    return {"compression": "deflate"}


async def open_many(server: bl.Server, path: str, count: int, variant: str, batch: int = 100):
    connections = []
    for start in range(0, count, batch):
        opened = await asyncio.gather(
            *(
                connect(
                    server.ws_url(path),
                    open_timeout=OPEN_TIMEOUT,
                    ping_interval=None,
                    max_queue=None,
                    **client_kwargs(variant),
                )
                for _ in range(min(batch, count - start))
            )
        )
        connections.extend(opened)
    return connections


async def close_all(connections) -> None:
    await asyncio.gather(*(ws.close() for ws in connections), return_exceptions=True)


async def echo_phase(server: bl.Server, variant: str, args) -> dict:
    connections = await open_many(server, "/echo", args.echo_connections, variant)
    header = connections[0].response.headers.get("Sec-WebSocket-Extensions", "")
    messages = [chat_message(i, args.size) for i in range(64)]
    wrong = 0

    async def run(ws) -> int:
        bad = 0
        for i in range(args.echo_messages):
            text = messages[i % len(messages)]
            await ws.send(text)
            if await asyncio.wait_for(ws.recv(), RECEIVE_TIMEOUT) != text:
                bad += 1
        return bad

    cpu_before = server.worker_cpu()
    started = time.monotonic()
    wrong = sum(await asyncio.gather(*(run(ws) for ws in connections)))
    elapsed = time.monotonic() - started
    cpu = server.worker_cpu() - cpu_before
    await close_all(connections)
    count = args.echo_connections * args.echo_messages

    sample = messages[0].encode()
    compressor = zlib.compressobj(wbits=-15)
    wire = len((compressor.compress(sample) + compressor.flush(zlib.Z_FULL_FLUSH))[:-4])
    return {
        "extensions": header,
        "messages": count,
        "cpu_us_per_message": cpu / count * 1e6,
        "messages_per_s": count / elapsed,
        "payload_bytes_on_wire": wire if variant != "off" else len(sample),
        "wrong": wrong,
    }


async def memory_phase(server: bl.Server, variant: str, args) -> dict:
    await asyncio.sleep(0.5)
    before = server.worker_memory()["rss"]
    connections = await open_many(server, "/echo", args.idle, variant)
    text = chat_message(1, args.size)
    wrong = 0
    for ws in connections:  # one message each: the zlib state is exercised
        await ws.send(text)
    for ws in connections:
        if await asyncio.wait_for(ws.recv(), RECEIVE_TIMEOUT) != text:
            wrong += 1
    await asyncio.sleep(1.0)
    after = server.worker_memory()["rss"]
    await close_all(connections)
    return {
        "connections": args.idle,
        "rss_kib_per_connection": (after - before) / args.idle / 1024,
        "wrong": wrong,
    }


async def fanout_phase(server: bl.Server, variant: str, args) -> dict:
    subscribers = await open_many(server, "/sub", args.subscribers, variant)
    for ws in subscribers:
        assert await asyncio.wait_for(ws.recv(), RECEIVE_TIMEOUT) == "joined"
    (publisher,) = await open_many(server, "/pub", 1, "off")
    texts = [chat_message(i, args.size) for i in range(args.broadcasts)]
    received = {"wrong": 0}

    async def drain(ws) -> None:
        for text in texts:
            if await asyncio.wait_for(ws.recv(), RECEIVE_TIMEOUT) != text:
                received["wrong"] += 1

    readers = [asyncio.ensure_future(drain(ws)) for ws in subscribers]
    cpu_before = server.worker_cpu()
    started = time.monotonic()
    for text in texts:
        await publisher.send(text)
        assert await asyncio.wait_for(publisher.recv(), RECEIVE_TIMEOUT) == "done"
    await asyncio.gather(*readers)
    elapsed = time.monotonic() - started
    cpu = server.worker_cpu() - cpu_before
    await close_all([publisher, *subscribers])
    deliveries = args.subscribers * args.broadcasts
    return {
        "deliveries": deliveries,
        "cpu_us_per_delivery": cpu / deliveries * 1e6,
        "seconds": elapsed,
        "wrong": received["wrong"],
    }


async def measure(server: bl.Server, variant: str, args) -> dict:
    return {
        "echo": await echo_phase(server, variant, args),
        "memory": await memory_phase(server, variant, args),
        "fanout": await fanout_phase(server, variant, args),
    }


def run_one(variant: str, round_number: int, args, stamp: str) -> dict:
    log = os.path.join(bl.RESULTS_DIR, f"compression-{stamp}-{variant}-{round_number}.log")
    server = bl.Server(
        name=f"compression-{variant}",
        mode="http-socket",
        gevent=args.subscribers + args.idle + 100,
        log_path=log,
        module_spec=MODULE,
        ws_path="/echo",
        extra_env=VARIANTS[variant],
    )
    with server:
        result = asyncio.run(measure(server, variant, args))
    result["variant"] = variant
    result["round"] = round_number
    return result


def median(values):
    return bl.median(sorted(values))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--size", type=int, default=256, help="message size in bytes (default 256)")
    ap.add_argument("--echo-connections", type=int, default=20)
    ap.add_argument("--echo-messages", type=int, default=500, help="per connection (500)")
    ap.add_argument("--idle", type=int, default=1000, help="idle connections measured (1000)")
    ap.add_argument("--subscribers", type=int, default=1000, help="fan-out members (1000)")
    ap.add_argument("--broadcasts", type=int, default=100, help="broadcasts (100)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="off,on,takeover")
    args = ap.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    bl.pin_self_to_client_core()
    bl.raise_fd_limit(2 * (args.subscribers + args.idle) + 1000)
    stamp = bl.timestamp()
    runs = []
    for round_number in range(1, args.rounds + 1):
        for variant in variants:
            runs.append(run_one(variant, round_number, args, stamp))
            print(f"round {round_number} {variant}: done", file=sys.stderr)
    print(
        f"{'variant':<10} {'echo µs/msg':>12} {'echo msg/s':>11} {'bytes/msg':>10} "
        f"{'KiB/conn':>9} {'fan-out µs/delivery':>20}"
    )
    summary = {}
    for variant in variants:
        mine = [r for r in runs if r["variant"] == variant]
        row = {
            "echo_cpu_us_per_message": median(r["echo"]["cpu_us_per_message"] for r in mine),
            "echo_messages_per_s": median(r["echo"]["messages_per_s"] for r in mine),
            "payload_bytes_on_wire": mine[0]["echo"]["payload_bytes_on_wire"],
            "rss_kib_per_connection": median(r["memory"]["rss_kib_per_connection"] for r in mine),
            "fanout_cpu_us_per_delivery": median(r["fanout"]["cpu_us_per_delivery"] for r in mine),
            "extensions": mine[0]["echo"]["extensions"],
        }
        summary[variant] = row
        print(
            f"{variant:<10} {row['echo_cpu_us_per_message']:>12.1f} "
            f"{row['echo_messages_per_s']:>11.0f} {row['payload_bytes_on_wire']:>10} "
            f"{row['rss_kib_per_connection']:>9.1f} {row['fanout_cpu_us_per_delivery']:>20.2f}"
        )
    path = bl.write_json(
        "compression",
        {
            "args": vars(args),
            "runs": runs,
            "summary": summary,
            "environment": bl.environment_info(),
        },
        stamp,
    )
    print(f"(medians of {args.rounds} rounds; {bl.relpath(path)})")
    wrong = sum(r[phase]["wrong"] for r in runs for phase in ("echo", "memory", "fanout"))
    if wrong:
        print(f"{wrong} messages came back wrong", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
