#!/usr/bin/env python3
"""Where an idle connection's memory goes: the Python heap, object by object.

Starts the echo server of ``benchmarks/apps/idle_probe_app.py`` (``tracemalloc``
on) for each server, opens one warm-up connection, marks the worker's heap,
opens N connections that echo one message each and stay idle, then asks the
worker what grew, per connection: traced bytes by file and by allocation
site, objects by type, and the C stack greenlet saved for each suspended
request greenlet (``greenlet._stack_saved``).

Usage::

    python benchmarks/idle_probe.py [--connections 1000] [--servers raw,flask-websocket]
                                    [--baseline REF] [--sites 15] [--json FILE]

Tracing slows the worker down; the figures are bytes, not times.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import statistics
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib as bl
import idle_memory as im


def fetch(server: bl.Server, command: str) -> dict:
    url = f"http://{bl.HOST}:{server.port}/_probe/{command}"
    with urllib.request.urlopen(url, timeout=600) as answer:
        return json.loads(answer.read())


async def probe(server: bl.Server, connections: int, settle: float) -> dict:
    state = im.State()
    warm = await im.open_connection(server, state, 0, echo=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, fetch, server, "mark")
    sem = asyncio.Semaphore(50)
    transports: list = []

    async def one(i: int) -> None:
        async with sem:
            transports.append(await im.open_connection(server, state, i, echo=True))

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(1, connections + 1))), 300)
    await asyncio.sleep(settle)
    report = await loop.run_in_executor(None, fetch, server, "report")
    state.closing = True
    await bl.close_transports([*transports, warm], 60)
    report["established"] = len(transports)
    return report


def summary(report: dict, sites: int) -> str:
    n = report["established"]
    lines = [f"traced heap: {report['traced_diff'] / n:.0f} B per connection ({n} connections)"]
    ws = [g for g in report["greenlets"] if g["saved"]]
    if ws:
        saved = [g["saved"] for g in ws]
        lines.append(
            f"suspended greenlets: {len(report['greenlets'])} (before: "
            f"{report['greenlets_before']}); saved C stack median {statistics.median(saved):.0f} B,"
            f" min {min(saved)}, max {max(saved)}, total {sum(saved) / n:.0f} B per connection"
        )
        frames = collections.Counter(tuple(g["frames"]) for g in ws).most_common(1)[0][0]
        lines.append("  the most common waiting stack (innermost first):")
        lines += [f"    {f}" for f in frames]
    lines.append("by file (B per connection):")
    for row in report["by_file"]:
        if abs(row["size"]) >= n * 8:
            size, blocks = row["size"] / n, row["count"] / n
            lines.append(f"  {size:8.0f}  {blocks:6.2f} blocks  {short(row['file'])}")
    lines.append(f"by allocation site, top {sites} (B per connection; blocks: [size, count]):")
    for row in report["by_site"][:sites]:
        lines.append(
            f"  {row['size'] / n:8.0f}  {row['count'] / n:6.2f} blocks  {row['block_sizes']}"
        )
        lines += [f"            {frame}" for frame in site_frames(row["site"])[-3:]]
    lines.append("objects by type (per connection):")
    lines += [f"  {count / n:6.2f}  {name}" for name, count in report["objects"] if count >= n / 2]
    return "\n".join(lines)


def site_frames(lines: list) -> list:
    """``file:line  code`` per frame of a formatted tracemalloc traceback."""
    frames: list = []
    for line in lines:
        match = re.match(r'\s*File "([^"]*)", line (\d+)', line)
        if match:
            frames.append(f"{os.path.basename(match.group(1))}:{match.group(2)}")
        elif frames:
            frames[-1] += "  " + line.strip()
    return frames


def short(path: str) -> str:
    """A path without the machine's part."""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1]
    if path.startswith(bl.REPO_ROOT + os.sep):
        return os.path.relpath(path, bl.REPO_ROOT)
    return os.path.basename(path) if os.path.isabs(path) else path


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--servers", default="raw,flask-websocket")
    ap.add_argument("--baseline", metavar="REF", help="also probe the code of this git commit")
    ap.add_argument("--sites", type=int, default=15, help="allocation sites to list")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds idle before the report")
    ap.add_argument("--json", help="write the reports to this file")
    args = ap.parse_args(argv)
    if not 1 <= args.connections <= 5000:
        ap.error("--connections must be 1..5000")
    servers = bl.parse_servers(args.servers)
    bl.pin_self_to_client_core()
    bl.raise_fd_limit(args.connections + 512)
    reports = {}
    with tempfile.TemporaryDirectory(prefix="idle-probe-") as tmp:
        if args.baseline:
            servers.append(f"{bl.CANDIDATE}@{bl.export_code(args.baseline, tmp)}")
        for name in servers:
            base = name.partition("@")[0]
            server = bl.Server(
                name=name,
                mode="http-socket",
                gevent=args.connections + 100,
                log_path=os.path.join(tmp, f"{base}.log"),
                module_spec="benchmarks.apps.idle_probe_app:app",
                ws_path=bl.SERVERS[base][1],
                extra_env={"PROBE_TARGET": base},
                code_root=tmp if "@" in name else None,
            )
            with server:
                report = bl.run_uvloop(lambda s=server: probe(s, args.connections, args.settle))
                server.check_alive()
            reports[name] = report
            print(f"== {name}")
            print(summary(report, args.sites))
            print()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(reports, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
