#!/usr/bin/env python3
"""Idle-connection memory benchmark: raw uWSGI WebSocket API vs flask-websocket.

For each server (interleaved A, B, A, B, ... over --rounds), start uWSGI with
``--gevent 6000`` pinned to core 1, open and close one warm-up connection,
wait for the worker's RSS to settle and record it, then open 5000 WebSocket
connections (by default each echoes one message, so its handler is known to
be running server-side) and leave them idle.  Once all are established and the
worker's RSS is stable again, record it again; report

    (RSS_after - RSS_before) / connections      in KB (1 KB = 1024 bytes)

for each server, the same for USS (memory unique to the worker), and the ratio
flask-websocket / raw.  All connections are then closed cleanly.

Usage::

    python benchmarks/idle_memory.py [--connections 5000] [--gevent 6000]
                                     [--servers raw,flask-websocket] [--rounds 1]
                                     [--mode http-socket|http] [--max-kb-per-conn 28]

Writes ``benchmarks/results/idle-memory-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib as bl
import psutil

try:
    import picows
    import uvloop  # noqa: F401
except ImportError as exc:  # pragma: no cover
    sys.exit(f"missing benchmark dependency ({exc}); pip install -r benchmarks/requirements.txt")

TEXT = picows.WSMsgType.TEXT
BINARY = picows.WSMsgType.BINARY
CLOSE = picows.WSMsgType.CLOSE

CONNECT_TIMEOUT = 15.0
ECHO_TIMEOUT = 15.0
KB = 1024.0
TARGET_KB = 28.0  # goal for flask-websocket, RSS per idle connection


class State:
    def __init__(self):
        self.closing = False
        self.dropped = 0  # disconnected before we closed
        self.closed_by_server = 0
        self.mismatches = 0


class IdleListener(picows.WSListener):
    def __init__(self, state: State):
        super().__init__()
        self.state = state
        self.transport = None
        self.waiter: asyncio.Future | None = None

    def on_ws_connected(self, transport):
        self.transport = transport

    def on_ws_frame(self, transport, frame):
        mt = frame.msg_type
        if mt is CLOSE:
            if not self.state.closing:
                self.state.closed_by_server += 1
            return
        waiter = self.waiter
        if (mt is TEXT or mt is BINARY) and waiter is not None and not waiter.done():
            waiter.set_result((mt, frame.get_payload_as_bytes()))

    def on_ws_disconnected(self, transport):
        if not self.state.closing:
            self.state.dropped += 1
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("disconnected"))


async def open_connection(server: bl.Server, state: State, idx: int, echo: bool):
    loop = asyncio.get_running_loop()
    transport, listener = await asyncio.wait_for(
        server.ws_connect(
            lambda: IdleListener(state),
            websocket_handshake_timeout=CONNECT_TIMEOUT,
            read_buffer_init_size=2048,
        ),
        CONNECT_TIMEOUT + 1,
    )
    if echo:
        payload = f"idle-{idx:06d}".encode()
        listener.waiter = loop.create_future()
        transport.send(TEXT, payload)
        try:
            mt, data = await asyncio.wait_for(listener.waiter, ECHO_TIMEOUT)
        except BaseException:
            transport.disconnect(graceful=False)
            raise
        finally:
            listener.waiter = None
        if mt is not TEXT or data != payload:
            state.mismatches += 1
    return transport


async def wait_stable(
    server: bl.Server,
    timeout: float,
    interval: float = 0.5,
    needed: int = 4,
    tolerance: int = 128 * 1024,
) -> tuple[dict, bool, float]:
    """Poll worker memory until `needed` consecutive RSS samples lie within `tolerance` bytes."""
    t0 = time.monotonic()
    samples: list[int] = []
    mem = server.worker_memory()
    for _ in range(int(timeout / interval) + 1):
        mem = server.worker_memory()
        samples.append(mem["rss"])
        last = samples[-needed:]
        if len(last) == needed and max(last) - min(last) <= tolerance:
            return mem, True, time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            break
        await asyncio.sleep(interval)
    return mem, False, time.monotonic() - t0


def router_rss(server: bl.Server) -> int:
    total = 0
    for p in server.routers:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


async def measure(server: bl.Server, args) -> dict:
    state = State()
    out: dict = {}

    # warm-up: one connection, one echo, closed again
    t = await open_connection(server, state, 0, echo=True)
    state.closing = True
    t.send_close(picows.WSCloseCode.OK)
    try:
        await asyncio.wait_for(t.wait_disconnected(), 5)
    except asyncio.TimeoutError:
        t.disconnect(graceful=False)
    await asyncio.sleep(0.5)  # a forced disconnect (server kept TCP open) lands here
    state.closing = False
    state.dropped = 0

    before, stable_before, _ = await wait_stable(server, args.settle_timeout)
    out["before"] = before
    out["router_rss_before"] = router_rss(server)
    out["stable_before"] = stable_before

    # open N idle connections, at most --batch handshakes in flight
    sem = asyncio.Semaphore(args.batch)
    transports: list = []
    errors: list = []

    async def one(i):
        async with sem:
            try:
                transports.append(await open_connection(server, state, i, echo=not args.no_echo))
            except Exception as exc:
                errors.append(exc)

    t_open = time.monotonic()
    try:
        await asyncio.wait_for(
            asyncio.gather(*(one(i) for i in range(1, args.connections + 1))),
            args.open_timeout,
        )
    except asyncio.TimeoutError:
        errors.append(TimeoutError(f"opening connections took more than {args.open_timeout:g}s"))
    out["open_seconds"] = time.monotonic() - t_open
    out["established"] = len(transports)
    out["failed"] = args.connections - len(transports)
    out["first_error"] = repr(errors[0]) if errors else None

    after, stable_after, settle_s = await wait_stable(server, args.settle_timeout)
    out["after"] = after
    out["router_rss_after"] = router_rss(server)
    out["stable_after"] = stable_after
    out["settle_seconds"] = settle_s
    out["still_open"] = sum(1 for t in transports if not t.is_disconnected)
    out["dropped_while_idle"] = state.dropped
    out["closed_by_server"] = state.closed_by_server
    out["mismatches"] = state.mismatches

    # close everything cleanly
    state.closing = True
    out.update(await bl.close_transports(transports, args.close_timeout))
    await asyncio.sleep(1.0)
    out["after_close"] = server.worker_memory()

    n = out["established"]
    if n:
        out["kb_per_conn_rss"] = (after["rss"] - before["rss"]) / n / KB
        if "uss" in after and "uss" in before:
            out["kb_per_conn_uss"] = (after["uss"] - before["uss"]) / n / KB
        if server.routers:
            out["router_kb_per_conn_rss"] = (
                (out["router_rss_after"] - out["router_rss_before"]) / n / KB
            )
    return out


def measure_problems(rec: dict, connections: int) -> list[str]:
    """What went wrong in a measure() result (empty if nothing)."""
    problems = []
    if rec.get("failed"):
        problems.append(
            f"{rec['failed']} of {connections} connections failed ({rec['first_error']})"
        )
    if rec.get("dropped_while_idle") or rec.get("closed_by_server"):
        problems.append(
            f"{rec['dropped_while_idle']} connections dropped / "
            f"{rec['closed_by_server']} closed by the server"
            " while idle"
        )
    if rec.get("mismatches"):
        problems.append(f"{rec['mismatches']} echo replies did not match")
    return problems


def label(name: str) -> str:
    base, _, commit = name.partition("@")
    return bl.SERVER_LABELS[base] + (f" @{commit}" if commit else "")


def run_one(name: str, rnd: int, args, stamp: str) -> dict:
    log = os.path.join(
        bl.RESULTS_DIR, "logs", f"idle-memory-{stamp}-{name.replace('@', '-')}-r{rnd}.log"
    )
    base = name.partition("@")[0]
    module, path = bl.SERVERS[base]
    server = bl.Server(
        name=name,
        mode=args.mode,
        gevent=args.gevent,
        log_path=log,
        module_spec=module,
        ws_path=path,
        code_root=args.baseline_root if "@" in name else None,
    )
    rec = {"server": name, "round": rnd, "log": bl.relpath(log)}
    try:
        with server:
            rec["command"] = server.display_argv()
            rec["code_fingerprint"] = bl.code_fingerprint()
            rec["worker_pids"] = [w.pid for w in server.workers]
            rec.update(bl.run_uvloop(lambda: measure(server, args)))
            server.check_alive()
        problems = measure_problems(rec, args.connections)
        if problems:
            rec["error"] = f"{name}: " + "; ".join(problems)
            rec["log_tail"] = server.log_tail()
    except bl.ServerError as exc:
        rec["error"] = exc.message
        rec["log_tail"] = server.log_tail()
    except Exception as exc:
        rec["error"] = f"{type(exc).__name__}: {exc}"
        rec["log_tail"] = server.log_tail()
    return rec


def mb(x) -> str:
    return f"{x / (1024 * 1024):.1f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--connections",
        type=int,
        default=5000,
        help="idle connections to open (default 5000)",
    )
    ap.add_argument("--gevent", type=int, default=6000, help="uWSGI --gevent cores (default 6000)")
    ap.add_argument(
        "--servers",
        default="raw,flask-websocket",
        help="comma-separated subset of: raw, flask-websocket",
    )
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds (default 1)")
    ap.add_argument("--mode", choices=["http-socket", "http"], default="http-socket")
    ap.add_argument(
        "--batch",
        type=int,
        default=50,
        help="handshakes in flight at once (default 50; backlog is 100)",
    )
    ap.add_argument(
        "--no-echo",
        action="store_true",
        help="only handshake; do not echo one message per connection",
    )
    ap.add_argument(
        "--open-timeout",
        type=float,
        default=180.0,
        help="limit for opening all connections (s)",
    )
    ap.add_argument(
        "--close-timeout",
        type=float,
        default=60.0,
        help="limit for closing all connections (s)",
    )
    ap.add_argument(
        "--settle-timeout",
        type=float,
        default=30.0,
        help="limit for RSS to stabilise (s)",
    )
    ap.add_argument(
        "--max-kb-per-conn",
        type=float,
        default=None,
        help="exit non-zero if flask-websocket exceeds this RSS KB/connection "
        f"(goal: {TARGET_KB:g})",
    )
    ap.add_argument(
        "--baseline",
        metavar="REF",
        help="also run flask-websocket on the code of this git commit (before/after in one run)",
    )
    args = ap.parse_args(argv)
    try:
        servers = bl.parse_servers(args.servers)
    except ValueError as exc:
        ap.error(str(exc))
    with tempfile.TemporaryDirectory(prefix="idle-memory-baseline-") as tmp:
        args.baseline_root = None
        if args.baseline:
            commit = bl.export_code(args.baseline, tmp)
            args.baseline_root = tmp
            at = servers.index(bl.CANDIDATE) if bl.CANDIDATE in servers else len(servers)
            servers.insert(at, f"{bl.CANDIDATE}@{commit}")
        return run(args, servers)


def run(args, servers: list) -> int:
    if not (1 <= args.connections < args.gevent):
        sys.exit("--connections must be >= 1 and below --gevent (the uWSGI connection cap)")
    if not (1 <= args.rounds <= 20):
        sys.exit("--rounds must be 1..20")
    if not (1 <= args.batch <= 90):
        sys.exit("--batch must be 1..90 (uWSGI listen backlog is 100)")

    bl.pin_self_to_client_core()
    soft, hard = bl.raise_fd_limit(args.connections + 512)
    if soft < args.connections + 64:
        sys.exit(
            f"file descriptor limit {soft} too low for {args.connections} connections "
            f"(hard limit {hard})"
        )
    stamp = bl.timestamp()
    env = bl.environment_info()
    runs = []
    for rnd in range(1, args.rounds + 1):
        for name in servers:
            print(
                f"round {rnd}/{args.rounds}: {label(name)} ...",
                end=" ",
                flush=True,
            )
            rec = run_one(name, rnd, args, stamp)
            runs.append(rec)
            if "kb_per_conn_rss" in rec:
                print(
                    f"{rec['established']} connections, {rec['kb_per_conn_rss']:.2f} KB/conn RSS"
                    + (
                        f", {rec['kb_per_conn_uss']:.2f} KB/conn USS"
                        if "kb_per_conn_uss" in rec
                        else ""
                    ),
                    end="",
                )
            print(f"  ERROR: {rec['error']}" if "error" in rec else "")
            time.sleep(1.0)

    # summary: medians over rounds
    summary: dict = {"servers": {}, "ratios": None}
    for name in servers:
        ok = [
            r for r in runs if r["server"] == name and "kb_per_conn_rss" in r and "error" not in r
        ]
        if not ok:
            summary["servers"][name] = {"rounds_ok": 0}
            continue
        s = {
            "rounds_ok": len(ok),
            "kb_per_conn_rss_median": bl.median([r["kb_per_conn_rss"] for r in ok]),
            "kb_per_conn_rss_min": min(r["kb_per_conn_rss"] for r in ok),
            "kb_per_conn_rss_max": max(r["kb_per_conn_rss"] for r in ok),
            "rss_before_median": bl.median([r["before"]["rss"] for r in ok]),
            "rss_after_median": bl.median([r["after"]["rss"] for r in ok]),
            "rss_after_close_median": bl.median([r["after_close"]["rss"] for r in ok]),
        }
        if all("kb_per_conn_uss" in r for r in ok):
            s["kb_per_conn_uss_median"] = bl.median([r["kb_per_conn_uss"] for r in ok])
        summary["servers"][name] = s
    a = summary["servers"].get(bl.BASELINE, {})
    b = summary["servers"].get(bl.CANDIDATE, {})
    if a.get("rounds_ok") and b.get("rounds_ok"):
        summary["ratios"] = {
            "kb_per_conn_rss": b["kb_per_conn_rss_median"] / a["kb_per_conn_rss_median"]
        }
        if "kb_per_conn_uss_median" in a and "kb_per_conn_uss_median" in b:
            summary["ratios"]["kb_per_conn_uss"] = (
                b["kb_per_conn_uss_median"] / a["kb_per_conn_uss_median"]
            )

    print()
    print(
        f"Idle-connection memory: {args.connections} idle WebSocket connections, "
        f"uWSGI --gevent {args.gevent}, mode {args.mode}, "
        f"{'handshake only' if args.no_echo else 'one echo each'}, {args.rounds} round(s); "
        f"worker RSS/USS via psutil (1 KB = 1024 B)"
    )
    print()
    rows = []
    for r in runs:
        name_label = label(r["server"])
        if "kb_per_conn_rss" not in r:
            rows.append([str(r["round"]), name_label, "ERROR"] + [""] * 7)
            continue
        rows.append(
            [
                str(r["round"]),
                name_label,
                f"{r['established']}",
                mb(r["before"]["rss"]),
                mb(r["after"]["rss"]),
                f"{r['kb_per_conn_rss']:.2f}",
                f"{r['kb_per_conn_uss']:.2f}" if "kb_per_conn_uss" in r else "n/a",
                mb(r["after_close"]["rss"]),
                f"{r['open_seconds']:.1f}",
                "yes" if r["stable_before"] and r["stable_after"] else "NO",
            ]
        )
    print(
        bl.format_table(
            [
                "round",
                "server",
                "conns",
                "RSS before MB",
                "RSS after MB",
                "KB/conn RSS",
                "KB/conn USS",
                "RSS after close MB",
                "open s",
                "settled",
            ],
            rows,
            align="rlrrrrrrrr",
        )
    )
    if args.mode == "http":
        for r in runs:
            if "router_kb_per_conn_rss" in r:
                print(
                    f"  --http router ({label(r['server'])}, round {r['round']}): "
                    f"{r['router_kb_per_conn_rss']:.2f} KB/conn RSS (not included above)"
                )
    print()
    rows = []
    for name in servers:
        s = summary["servers"][name]
        name_label = label(name)
        if not s.get("rounds_ok"):
            rows.append([name_label, "FAILED", "", ""])
            continue
        rows.append(
            [
                name_label,
                f"{s['kb_per_conn_rss_median']:.2f} "
                f"[{s['kb_per_conn_rss_min']:.2f}-{s['kb_per_conn_rss_max']:.2f}]",
                f"{s['kb_per_conn_uss_median']:.2f}" if "kb_per_conn_uss_median" in s else "n/a",
                f"{s['rounds_ok']}/{args.rounds}",
            ]
        )
    print(
        bl.format_table(
            ["server", "KB/conn RSS (median [min-max])", "KB/conn USS", "rounds"],
            rows,
            align="lrrr",
        )
    )
    ratios = summary["ratios"]
    if ratios:
        print()
        print(
            "Ratio flask-websocket / raw uWSGI, KB per idle connection: "
            f"RSS {ratios['kb_per_conn_rss']:.3f}"
            + (f", USS {ratios['kb_per_conn_uss']:.3f}" if "kb_per_conn_uss" in ratios else "")
        )
    fws = summary["servers"].get(bl.CANDIDATE, {})
    target_failed = False
    if fws.get("rounds_ok"):
        val = fws["kb_per_conn_rss_median"]
        limit = args.max_kb_per_conn if args.max_kb_per_conn is not None else TARGET_KB
        verdict = "meets" if val <= limit else "MISSES"
        print(f"flask-websocket: {val:.2f} KB/conn RSS {verdict} the goal of <= {limit:g} KB/conn")
        target_failed = args.max_kb_per_conn is not None and val > limit
    for r in runs:
        if "error" in r:
            print()
            print(f"ERROR {label(r['server'])} round {r['round']}: {r['error']}")
            print(f"  uWSGI log ({r['log']}), last lines:")
            for line in (r.get("log_tail") or "").splitlines()[-25:]:
                print("    " + line)

    changed = bl.code_changed_warning(runs)
    if changed:
        print()
        print(changed)
    env["loadavg_end"] = list(os.getloadavg())
    data = {
        "benchmark": "idle_memory",
        "args": vars(args),
        "servers": servers,
        "environment": env,
        "summary": summary,
        "runs": runs,
        "code_changed_during_run": bool(changed),
    }
    path = bl.write_json("idle-memory", data, stamp)
    print()
    print(f"results written to {bl.relpath(path)}")
    bad = any("error" in r for r in runs) or target_failed or bool(changed)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
