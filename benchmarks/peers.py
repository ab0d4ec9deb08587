#!/usr/bin/env python3
"""flask-websocket against the alternatives: every server, every scenario, one run.

Servers (``peerlib.PEERS``; each one worker process, in the production
configuration its own docs recommend, named in each app's docstring):
flask-websocket on uWSGI + gevent and + asyncio, raw uWSGI's WebSocket API
(the ceiling we sit on), flask-sock (gevent), Flask-SocketIO (gevent,
WebSocket transport, spoken to in Socket.IO framing), Django Channels on
Daphne (in-memory layer), the websockets library's asyncio server, and
gevent-websocket.

Scenarios (``SCENARIOS``):

* ``echo``      - 50 connections x 32 B text ping-pong: messages per server
  CPU-second, msg/s, p50/p99 round trip (echo.py's client);
* ``large``     - 10 connections x 64 KiB binary ping-pong: MB/s echoed;
* ``fanout-N``  - 1 publisher, N subscribers in one room, 10 broadcasts/s:
  delivery p50/p99, losses, server CPU per delivery (broadcast.py's latency
  phase), for each N of ``--subscribers`` (1000 and 10 000);
* ``idle``      - 10 000 idle connections (each echoed once): RSS per
  connection, all accepted or not (idle_memory.py's measurement);
* ``connect``   - 1000 connections opened 50 at a time, each sends one
  message: handshakes/s, p99 time from connect to the first echo, server
  CPU per connection;
* ``fanout-2w`` - two workers on the two cores: flask-websocket local and
  redis hubs, Channels with channels_redis, Flask-SocketIO with a Redis
  message queue; the others cannot (no hub), shown with the reason.

Server pinned to core 1 (both cores for ``fanout-2w``), client on core 0;
every scenario runs every server once per round, rounds interleaved; medians
with [min-max]; the quiet-machine gate of benchlib before each run.

Usage::

    python benchmarks/peers.py              # the full run (see benchmarks/README.md)
    python benchmarks/peers.py --quick      # small sizes, 1 round: a few minutes
    python benchmarks/peers.py --publish    # ... and copy the tables and plots to docs/
    python benchmarks/peers.py --from-json benchmarks/results/peers-STAMP.json --publish
    python benchmarks/peers.py --scenarios connect --baseline REF   # ours, before and after

Writes ``benchmarks/results/peers-<stamp>.json`` (everything), ``.md`` (the
tables) and ``peers-<stamp>-<scenario>.png``; ``--publish`` copies the tables
and plots to ``docs/_static/benchmarks/`` for ``docs/performance.rst``.
Exit status non-zero if a run of flask-websocket or raw uWSGI failed or lost
messages, or the code under test changed during the run (peers' failures
are results: they are shown, not fatal).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib as bl
import broadcast
import echo
import idle_memory
import peerlib

PUBLISH_DIR = os.path.join(bl.REPO_ROOT, "docs", "_static", "benchmarks")
CODE_UNDER_TEST = ("flask_websocket", os.path.join("examples", "echo.py"), "benchmarks")
OURS = "fws-gevent"  # the targets are about this server
GROUP_ORDER = {"ours": 0, "ceiling": 1, "peer": 2}
FANOUT_SIZE = 64


@dataclass(frozen=True)
class Metric:
    key: str  # in a run's "m" dict
    label: str
    fmt: str
    better: str  # "high" or "low"


@dataclass(frozen=True)
class Scenario:
    kind: str  # echo, large, fanout, idle, connect
    title: str
    metrics: tuple  # the first is the primary one: plotted, ratios
    two_workers: bool = False


def _echo_metrics(rate_label: str, rate_key: str) -> tuple:
    return (
        Metric(rate_key, rate_label, "{:,.0f}", "high"),
        Metric("msgs_per_s", "msg/s", "{:,.0f}", "high"),
        Metric("p50_ms", "p50 ms", "{:.2f}", "low"),
        Metric("p99_ms", "p99 ms", "{:.2f}", "low"),
        Metric("cpu_us", "CPU us/msg", "{:.1f}", "low"),
    )


FANOUT_METRICS = (
    Metric("cpu_us", "CPU us/delivery", "{:.2f}", "low"),
    Metric("p50_ms", "p50 ms", "{:.1f}", "low"),
    Metric("p99_ms", "p99 ms", "{:.1f}", "low"),
    Metric("lost", "lost", "{:,.0f}", "low"),
    Metric("worker_util", "worker CPU", "{:.0%}", "low"),
)


def scenarios(args) -> dict:
    out = {
        "echo": Scenario(
            "echo",
            f"Echo: {args.echo_connections} connections x 32 B text, ping-pong",
            _echo_metrics("msgs per CPU-s", "msgs_per_cpu_s"),
        ),
        "large": Scenario(
            "large",
            f"Large messages: {args.large_connections} connections x 64 KiB binary, ping-pong",
            (
                Metric("mb_per_s", "MB/s", "{:,.1f}", "high"),
                Metric("mb_per_cpu_s", "MB per CPU-s", "{:,.1f}", "high"),
                Metric("p50_ms", "p50 ms", "{:.2f}", "low"),
                Metric("p99_ms", "p99 ms", "{:.2f}", "low"),
            ),
        ),
    }
    for n in args.subscribers:
        out[f"fanout-{n}"] = Scenario(
            "fanout",
            f"Fan-out: 1 publisher, {n:,} subscribers in one room, {args.rate:g} broadcasts/s "
            f"({args.broadcasts} measured)",
            FANOUT_METRICS,
        )
    out["idle"] = Scenario(
        "idle",
        f"Idle: {args.idle_connections:,} idle connections (each echoed once)",
        (
            Metric("kb_per_conn", "KB/conn RSS", "{:.1f}", "low"),
            Metric("accepted", "accepted", "{:.0%}", "high"),
        ),
    )
    out["connect"] = Scenario(
        "connect",
        f"Connect: {args.connect_connections:,} connections, {args.batch} handshakes in flight, "
        "one echo each",
        (
            Metric("handshakes_per_s", "handshakes/s", "{:,.0f}", "high"),
            Metric("ttfm_p50_ms", "first msg p50 ms", "{:.1f}", "low"),
            Metric("ttfm_p99_ms", "first msg p99 ms", "{:.1f}", "low"),
            Metric("cpu_us", "CPU us/conn", "{:.0f}", "low"),
        ),
    )
    out["fanout-2w"] = Scenario(
        "fanout",
        f"Fan-out over two workers on the two cores: {args.two_worker_subscribers:,} "
        f"subscribers, {args.rate:g} broadcasts/s (CPU includes redis-server)",
        FANOUT_METRICS,
        two_workers=True,
    )
    return out


# ---------------------------------------------------------------------------
# rows: which server (and hub) runs a scenario, or why it cannot


def rows_for(scenario: str, sc: Scenario, names: list[str]) -> list[dict]:
    rows = []
    for name in names:
        peer = peerlib.PEERS[name]
        reason = peer.cannot.get(scenario)
        if sc.two_workers and not reason:
            for hub in peer.hubs:
                rows.append({"row": f"{name}+{hub}", "server": name, "hub": hub})
            if not peer.hubs:
                reason = "not run with two workers"
        elif not sc.two_workers and not reason:
            rows.append({"row": name, "server": name, "hub": None})
        if reason:
            rows.append({"row": name, "server": name, "hub": None, "cannot": reason})
    return rows


def add_baseline_peer(commit: str, code_root: str | None) -> str:
    """Register flask-websocket on uWSGI + gevent at git commit ``commit``; its name.

    For before/after figures in one run (``--baseline REF``): the same
    server and apps, the package of that commit (``bl.export_code``).
    """
    name = f"{OURS}@{commit}"
    ours = peerlib.PEERS[OURS]
    peerlib.PEERS[name] = dataclasses.replace(
        ours, name=name, label=f"{ours.label} at {commit}", code_root=code_root
    )
    return name


def row_label(row: dict) -> str:
    label = peerlib.PEERS[row["server"]].label
    return f"{label}, {row['hub']} x2" if row.get("hub") else label


# ---------------------------------------------------------------------------
# one run


async def connect_rate(server: bl.Server, ns) -> dict:
    """Open ns.connections connections, ns.batch at a time, each echoing once."""
    state = idle_memory.State()
    sem = asyncio.Semaphore(ns.batch)
    ttfm = array("q")
    transports: list = []
    errors: list = []

    async def one(i):
        async with sem:
            t0 = time.perf_counter_ns()
            try:
                transports.append(await idle_memory.open_connection(server, state, i, echo=True))
            except Exception as exc:
                errors.append(exc)
                return
            ttfm.append(time.perf_counter_ns() - t0)

    s = bl.cpu_snapshot(server)
    try:
        await asyncio.wait_for(
            asyncio.gather(*(one(i) for i in range(ns.connections))), ns.open_timeout
        )
    except asyncio.TimeoutError:
        errors.append(TimeoutError(f"opening took more than {ns.open_timeout:g}s"))
    e = bl.cpu_snapshot(server)
    state.closing = True
    out = bl.cpu_window(s, e)
    out.update(await bl.close_transports(transports, ns.close_timeout))
    lat = sorted(ttfm)
    n = len(transports)
    out.update(
        {
            "established": n,
            "failed": ns.connections - n,
            "first_error": repr(errors[0]) if errors else None,
            "mismatches": state.mismatches,
            "handshakes_per_s": n / out["window_s"] if out["window_s"] > 0 else 0.0,
            "ttfm_ms": {q: bl.percentile(lat, v) / 1e6 for q, v in (("p50", 50), ("p99", 99))},
            "worker_cpu_us_per_conn": out["worker_cpu_s"] / n * 1e6 if n else float("nan"),
        }
    )
    return out


def scenario_ns(kind: str, args, conns: int) -> SimpleNamespace:
    """The options echo.py / broadcast.py / idle_memory.py read, for one scenario."""
    common = {"batch": args.batch, "open_timeout": args.open_timeout}
    common["close_timeout"] = args.close_timeout
    if kind in ("echo", "large"):
        large = kind == "large"
        return SimpleNamespace(
            connections=conns,
            size=65536 if large else 32,
            binary=large,
            warmup=args.warmup,
            duration=args.duration,
        )
    if kind == "fanout":
        return SimpleNamespace(
            subscribers=conns,
            size=FANOUT_SIZE,
            phases=["latency"],
            broadcasts=args.broadcasts,
            rate=args.rate,
            warmup_broadcasts=args.warmup_broadcasts,
            drain_timeout=args.drain_timeout,
            balance_attempts=20,
            **common,
        )
    if kind == "idle":
        return SimpleNamespace(connections=conns, no_echo=False, settle_timeout=30.0, **common)
    return SimpleNamespace(connections=conns, **common)


def conns_for(scenario: str, sc: Scenario, args) -> int:
    if sc.kind == "fanout":
        return args.two_worker_subscribers if sc.two_workers else int(scenario.split("-")[1])
    return {
        "echo": args.echo_connections,
        "large": args.large_connections,
        "idle": args.idle_connections,
        "connect": args.connect_connections,
    }[sc.kind]


def run_one(scenario: str, sc: Scenario, row: dict, rnd: int, args, stamp: str, attempt=1):
    peer = peerlib.PEERS[row["server"]]
    suffix = f"-a{attempt}" if attempt > 1 else ""
    base = f"peers-{stamp}-{scenario}-{row['row']}-r{rnd}{suffix}".replace("+", "-")
    log = os.path.join(bl.RESULTS_DIR, "logs", base + ".log")
    rec = {"scenario": scenario, **row, "round": rnd, "log": bl.relpath(log)}
    conns = conns_for(scenario, sc, args)
    ns = scenario_ns(sc.kind, args, conns)
    redis = None
    server = None
    try:
        if row.get("hub") == "redis":
            redis = broadcast.RedisServer(os.path.join(bl.RESULTS_DIR, "logs", base + "-redis.log"))
            redis.start()
        server = peer.server(
            sc.kind, log, conns + 1, row.get("hub"), redis_url=redis.url if redis else None
        )
        with server:
            rec["command"] = server.display_argv()
            rec["code_fingerprint"] = bl.code_fingerprint(CODE_UNDER_TEST)
            rec["worker_pids"] = [w.pid for w in server.workers]
            if sc.kind in ("echo", "large"):
                res = bl.run_uvloop(lambda: echo.run_client(server, ns))
            elif sc.kind == "fanout":
                processes = 2 if row.get("hub") else 1
                res = bl.run_uvloop(lambda: broadcast.run_client(server, ns, processes, redis))
            elif sc.kind == "idle":
                res = bl.run_uvloop(lambda: idle_memory.measure(server, ns))
            else:
                res = bl.run_uvloop(lambda: connect_rate(server, ns))
            server.check_alive()
            rec.update(res)
        problems = run_problems(sc.kind, rec, conns)
        if problems:
            rec["problems"] = problems
    except bl.ServerError as exc:
        rec["error"] = exc.message
    except Exception as exc:
        rec["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if redis is not None:
            redis.stop()
    if server is not None:
        rec["log_problems"] = broadcast.log_problems(server.log_text(), limit=10)
        if "error" in rec:
            rec["log_tail"] = server.log_tail()
    rec["m"] = metrics_of(sc.kind, rec, ns) if "error" not in rec else {}
    return rec


def run_problems(kind: str, rec: dict, conns: int) -> list[str]:
    """Things that went wrong in a run that still produced figures."""
    if kind == "idle":
        return idle_memory.measure_problems(rec, conns)
    keys = ("mismatches", "unexpected_disconnects", "server_closes", "failed", "duplicates",
            "out_of_order", "garbled", "stuck_in_flight")  # fmt: skip
    out = [f"{k} {rec[k]}" for k in keys if rec.get(k)]
    if rec.get("lost"):
        out.append(f"lost {rec['lost']} of {rec['expected_deliveries']} deliveries")
    return out


def metrics_of(kind: str, rec: dict, ns) -> dict:
    if kind in ("echo", "large"):
        size_mb = ns.size / 1e6
        m = {
            "msgs_per_s": rec["msgs_per_s"],
            "msgs_per_cpu_s": rec["msgs_per_worker_cpu_s"],
            "mb_per_s": rec["msgs_per_s"] * size_mb,
            "mb_per_cpu_s": rec["msgs_per_worker_cpu_s"] * size_mb,
            "p50_ms": rec["latency_ms"]["p50"],
            "p99_ms": rec["latency_ms"]["p99"],
            "cpu_us": rec["worker_cpu_us_per_msg"],
        }
    elif kind == "fanout":
        p = rec["phases"]["latency"]
        m = {
            "cpu_us": p["server_cpu_us_per_delivery"],
            "p50_ms": p["latency_ms"]["p50"],
            "p99_ms": p["latency_ms"]["p99"],
            "lost": float(rec["lost"] + rec["duplicates"] + rec["out_of_order"] + rec["garbled"]),
            "worker_util": p["worker_cpu_util"],
        }
    elif kind == "idle":
        m = {
            "kb_per_conn": rec.get("kb_per_conn_rss", float("nan")),
            "accepted": rec["established"] / ns.connections,
        }
    else:
        m = {
            "handshakes_per_s": rec["handshakes_per_s"],
            "ttfm_p50_ms": rec["ttfm_ms"]["p50"],
            "ttfm_p99_ms": rec["ttfm_ms"]["p99"],
            "cpu_us": rec["worker_cpu_us_per_conn"],
        }
    return m


def noise_fn(kind: str):
    if kind == "fanout":
        return broadcast.noise_of
    if kind == "idle":
        return lambda rec: 0.0  # memory: waits for quiet, never re-run for CPU noise
    return lambda rec: rec.get("other_cpu_util", 0.0)


# ---------------------------------------------------------------------------
# summary


def summarize(runs: list[dict], plan: dict, scs: dict) -> dict:
    out: dict = {}
    for scenario, rows in plan.items():
        sc = scs[scenario]
        srows = []
        for row in rows:
            rs = [r for r in runs if r["scenario"] == scenario and r["row"] == row["row"]]
            entry = {**row, "label": row_label(row), "group": peerlib.PEERS[row["server"]].group}
            entry["fanout_note"] = peerlib.PEERS[row["server"]].fanout_note
            if "cannot" not in row:
                ok = [r for r in rs if "error" not in r]
                entry["rounds"], entry["rounds_ok"] = len(rs), len(ok)
                entry["errors"] = [r["error"] for r in rs if "error" in r]
                entry["problems"] = sorted({p for r in ok for p in r.get("problems", [])})
                entry["noisy_rounds"] = sum(1 for r in ok if r.get("noisy"))
                entry["metrics"] = {}
                for met in sc.metrics:
                    vals = [r["m"][met.key] for r in ok if not math.isnan(r["m"][met.key])]
                    if vals:
                        entry["metrics"][met.key] = {
                            "median": bl.median(vals),
                            "min": min(vals),
                            "max": max(vals),
                        }
            srows.append(entry)
        primary = sc.metrics[0]
        _ratios(srows, primary)
        out[scenario] = {
            "title": sc.title, "rows": srows, "primary": primary.key, "better": primary.better,
        }  # fmt: skip
    return out


def _ratios(srows: list[dict], met: Metric) -> None:
    """Each row's primary metric against raw uWSGI's and the best peer's (medians)."""

    def val(e):
        return e.get("metrics", {}).get(met.key, {}).get("median")

    raw = next((val(e) for e in srows if e["server"] == "raw" and val(e) is not None), None)
    peer_vals = [(val(e), e) for e in srows if e["group"] == "peer" and val(e) is not None]
    if met.key == "cpu_us" or met.better == "low":
        peer_vals = [(v, e) for v, e in peer_vals if v > 0]
    best = None
    if peer_vals:
        pick = max if met.better == "high" else min
        best = pick(peer_vals, key=lambda t: t[0])
    for e in srows:
        v = val(e)
        if v is None:
            continue
        e["vs_raw"] = v / raw if raw else None
        e["vs_best_peer"] = v / best[0] if best and best[0] else None
        e["best_peer"] = best[1]["label"] if best else None


def evaluate_targets(summary: dict) -> list[dict]:
    """The issue's targets, for flask-websocket on uWSGI + gevent (reported, not asserted)."""
    out = []

    def rows(scenario):
        return summary.get(scenario, {}).get("rows", [])

    def med(e, key):
        return e.get("metrics", {}).get(key, {}).get("median")

    def ours(scenario):
        return next((e for e in rows(scenario) if e["row"] == OURS), None)

    def peers(scenario):
        return [e for e in rows(scenario) if e["group"] == "peer" and e.get("metrics")]

    def add(target, met, value, losers=()):
        out.append({"target": target, "met": met, "value": value, "beaten_by": list(losers)})

    # echo: ahead of every peer in msgs per CPU-s, and >= raw uWSGI
    o = ours("echo")
    if o and med(o, "msgs_per_cpu_s"):
        v = med(o, "msgs_per_cpu_s")
        beat = [e["label"] for e in peers("echo") if (med(e, "msgs_per_cpu_s") or 0) >= v]
        raw = next((e for e in rows("echo") if e["server"] == "raw"), None)
        rv = med(raw, "msgs_per_cpu_s") if raw else None
        add(
            "echo: more messages per server CPU-second than every peer",
            not beat,
            f"{v:,.0f} msgs/CPU-s; best peer " + _best(peers("echo"), "msgs_per_cpu_s", max),
            beat,
        )
        if rv:
            add("echo: at least raw uWSGI's messages per CPU-second", v >= rv,
                f"{v:,.0f} vs {rv:,.0f} ({v / rv:.3f}x)")  # fmt: skip
    for scenario in [s for s in summary if s.startswith("fanout-") and s != "fanout-2w"]:
        o = ours(scenario)
        if not o or not o.get("metrics"):
            continue
        for key, what in (("cpu_us", "CPU per delivery"), ("p99_ms", "p99 delivery latency")):
            v = med(o, key)
            beat = [
                e["label"] for e in peers(scenario) if med(e, key) is not None and med(e, key) <= v
            ]
            add(
                f"{scenario}: lowest {what} of all peers",
                not beat,
                f"{v:.2f} ({'us' if key == 'cpu_us' else 'ms'}); best peer "
                + _best(peers(scenario), key, min),
                beat,
            )
        lost = sum(r["max"] for r in [o["metrics"].get("lost", {"max": 0})])
        add(f"{scenario}: zero loss", lost == 0 and not o.get("errors"),
            f"lost/dup/reordered {lost:.0f} (worst round), "
            f"failed rounds {len(o.get('errors', []))}")  # fmt: skip
    o = ours("idle")
    if o and med(o, "kb_per_conn") is not None:
        v = med(o, "kb_per_conn")
        flask = [e for e in rows("idle") if e["server"] in ("flask-sock", "flask-socketio")]
        beat = [
            e["label"]
            for e in flask
            if med(e, "kb_per_conn") is not None and med(e, "kb_per_conn") <= v
        ]
        add("idle: lowest RSS per connection among the Flask options", not beat,
            f"{v:.1f} KB/conn; "
            + ", ".join(f"{e['label']} {med(e, 'kb_per_conn') or math.nan:.1f}" for e in flask),
            beat)  # fmt: skip
        raw = next((e for e in rows("idle") if e["server"] == "raw"), None)
        if raw and med(raw, "kb_per_conn"):
            rv = med(raw, "kb_per_conn")
            add("idle: at or below raw uWSGI's RSS per connection", v <= rv,
                f"{v:.1f} vs {rv:.1f} KB/conn")  # fmt: skip
    # every scenario where a peer is ahead on the first column: what to profile
    for scenario, s in summary.items():
        o = next((e for e in s["rows"] if e["row"].startswith(OURS) and e.get("metrics")), None)
        r = o and o.get("vs_best_peer")
        if not r:
            continue
        better = s.get("better", "high")
        behind = r < 1 if better == "high" else r > 1
        if behind:
            add(f"{scenario}: a peer is ahead ({s['primary']})", False,
                f"{o['best_peer']}; ours / best peer = {r:.2f}", [o["best_peer"]])  # fmt: skip
    return out


def _best(entries: list[dict], key: str, pick) -> str:
    vals = [
        (e["metrics"][key]["median"], e["label"]) for e in entries if key in e.get("metrics", {})
    ]
    if not vals:
        return "none measured"
    v, label = pick(vals)
    return f"{label} {v:,.2f}"


# ---------------------------------------------------------------------------
# report: Markdown, reStructuredText, plots


def fmt_cell(met: Metric, m: dict | None, rounds: int) -> str:
    if not m:
        return "-"
    med = met.fmt.format(m["median"])
    if rounds > 1 and m["min"] != m["max"]:
        return f"{med} [{met.fmt.format(m['min'])}-{met.fmt.format(m['max'])}]"
    return med


def table_of(scenario: dict, sc: Scenario) -> tuple[list[str], list[list[str]]]:
    metrics = sc.metrics
    headers = ["server", metrics[0].label, "x raw uWSGI", "x best peer"]
    headers += [m.label for m in metrics[1:]] + ["rounds", "notes"]
    rows = []
    for e in scenario["rows"]:
        if "cannot" in e:
            rows.append([e["label"], "cannot"] + [""] * (len(headers) - 3) + [e["cannot"]])
            continue
        ms = e.get("metrics", {})
        if not ms:
            err = (e.get("errors") or ["no result"])[0]
            rows.append([e["label"], "failed"] + [""] * (len(headers) - 3) + [err[:160]])
            continue
        notes = list(e.get("problems", []))
        if sc.kind == "fanout" and e.get("fanout_note"):
            notes.insert(0, e["fanout_note"])
        if e.get("errors"):
            notes.append(f"{len(e['errors'])} round(s) failed: {e['errors'][0][:100]}")
        if e.get("noisy_rounds"):
            notes.append(f"{e['noisy_rounds']} noisy round(s)")
        ratio = lambda r: f"{r:.2f}" if r else "-"  # noqa: E731
        rows.append(
            [e["label"], fmt_cell(metrics[0], ms.get(metrics[0].key), e["rounds_ok"]),
             ratio(e.get("vs_raw")), ratio(e.get("vs_best_peer"))]
            + [fmt_cell(m, ms.get(m.key), e["rounds_ok"]) for m in metrics[1:]]
            + [f"{e['rounds_ok']}/{e['rounds']}", "; ".join(notes)]
        )  # fmt: skip
    return headers, rows


def document(data: dict, scs: dict, images: dict) -> list[tuple]:
    """The report as blocks: ("h", text), ("p", text), ("table", headers, rows), ("img", file)."""
    env, args = data["environment"], data["args"]
    blocks: list[tuple] = [
        ("p", f"Run {data['stamp']} ({'quick' if args['quick'] else 'full'}), "
              f"{args['rounds']} round(s) interleaved, git {env.get('git')}, "
              f"{env['cpu_count']} cores ({env['platform']}), Python {env['python']}; "
              f"server on core {bl.SERVER_CORE}, client on core {bl.CLIENT_CORE}. "
              "Medians over rounds, [min-max] when they differ. x raw uWSGI and x best peer: "
              "ratios of the first column's medians (best peer = best of flask-sock, "
              "Flask-SocketIO, Channels, websockets, gevent-websocket)."),
    ]  # fmt: skip
    for scenario, s in data["summary"].items():
        sc = scs[scenario]
        blocks.append(("h", s["title"]))
        headers, rows = table_of(s, sc)
        blocks.append(("table", headers, rows))
        if scenario in images:
            blocks.append(("img", images[scenario]))
    if data.get("targets"):
        blocks.append(("h", "Targets (flask-websocket on uWSGI + gevent)"))
        for t in data["targets"]:
            verdict = "met" if t["met"] else "NOT met"
            extra = f" (beaten by {', '.join(t['beaten_by'])})" if t.get("beaten_by") else ""
            blocks.append(("li", f"**{verdict}** — {t['target']}: {t['value']}{extra}"))
    blocks.append(("h", "Versions"))
    vers = data["versions"]
    blocks.append(("p", ", ".join(f"{k} {v}" for k, v in vers.items() if v) + "."))
    return blocks


def _md_cell(c: str) -> str:
    return c.replace("|", "\\|")


def render_md(blocks: list[tuple], title: str) -> str:
    out = [f"# {title}", ""]
    for b in blocks:
        if b[0] == "h":
            out += ([""] if out[-1] else []) + [f"## {b[1]}", ""]
        elif b[0] == "p":
            out += [b[1], ""]
        elif b[0] == "li":
            out += [f"- {b[1]}"]
        elif b[0] == "table":
            headers, rows = b[1], b[2]
            out.append("| " + " | ".join(headers) + " |")
            out.append("|" + "|".join(["---"] + ["--:"] * (len(headers) - 2) + ["---"]) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
            out.append("")
        elif b[0] == "img":
            out += [f"![{b[1]}]({b[1]})", ""]
    return "\n".join(out) + "\n"


def render_rst(blocks: list[tuple], image_dir: str) -> str:
    """The tables for docs/performance.rst (included from it)."""
    out = []
    for b in blocks:
        if b[0] == "h":
            out += [b[1], "~" * len(b[1]), ""]
        elif b[0] == "p":
            out += [b[1].replace("*", "\\*"), ""]
        elif b[0] == "li":
            out += [f"* {b[1]}", ""]
        elif b[0] == "table":
            headers, rows = b[1], b[2]
            out += [".. list-table::", "   :header-rows: 1", ""]
            for r in [headers, *rows]:
                out.append("   * - " + (r[0] or "\\ "))
                out += [f"     - {c}" if c else "     - \\ " for c in r[1:]]
            out.append("")
        elif b[0] == "img":
            out += [f".. image:: {image_dir}/{b[1]}", f"   :alt: {b[1]}", ""]
    return "\n".join(out) + "\n"


COLORS = {"ours": "#1f77b4", "ceiling": "#7f7f7f", "peer": "#ff7f0e"}


def plot(scenario: str, s: dict, sc: Scenario, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = [sc.metrics[0]] + [m for m in sc.metrics if m.key == "p99_ms"]
    rows = s["rows"]
    labels = [e["label"] for e in rows]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5.2 * len(panels) + 2.5, 0.42 * len(rows) + 1.4), squeeze=False
    )
    for ax, met in zip(axes[0], panels):
        ys = range(len(rows))
        vals, lo, hi, colors = [], [], [], []
        for e in rows:
            m = e.get("metrics", {}).get(met.key)
            v = m["median"] if m else 0.0
            vals.append(v)
            lo.append(v - m["min"] if m else 0.0)
            hi.append(m["max"] - v if m else 0.0)
            colors.append(COLORS[e["group"]])
        ax.barh(list(ys), vals, xerr=[lo, hi], color=colors, capsize=3)
        top = max([*vals, 1e-9])
        for y, e in zip(ys, rows):
            if "cannot" in e:
                ax.text(top * 0.01, y, "cannot (see table)", va="center", fontsize=8)
            elif not e.get("metrics"):
                ax.text(top * 0.01, y, "failed", va="center", fontsize=8, color="red")
        ax.set_yticks(list(ys))
        ax.set_yticklabels(labels if ax is axes[0][0] else [""] * len(rows), fontsize=8)
        ax.invert_yaxis()
        better = "higher" if met.better == "high" else "lower"
        ax.set_xlabel(f"{met.label} ({better} is better)", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(s["title"], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_outputs(data: dict, scs: dict, publish: bool) -> list[str]:
    stamp = data["stamp"]
    os.makedirs(bl.RESULTS_DIR, exist_ok=True)
    written, images = [], {}
    for scenario, s in data["summary"].items():
        name = f"peers-{stamp}-{scenario}.png"
        if plot(scenario, s, scs[scenario], os.path.join(bl.RESULTS_DIR, name)):
            images[scenario] = name
            written.append(os.path.join(bl.RESULTS_DIR, name))
    blocks = document(data, scs, images)
    md = os.path.join(bl.RESULTS_DIR, f"peers-{stamp}.md")
    with open(md, "w") as f:
        f.write(render_md(blocks, "flask-websocket and the alternatives"))
    written.append(md)
    if publish:
        os.makedirs(PUBLISH_DIR, exist_ok=True)
        for old in os.listdir(PUBLISH_DIR):  # a plot of a scenario not in this run
            if old.startswith("peers-") and old.endswith(".png"):
                os.remove(os.path.join(PUBLISH_DIR, old))
        pub_images = {k: f"peers-{k}.png" for k in images}
        for k, name in images.items():
            shutil.copyfile(
                os.path.join(bl.RESULTS_DIR, name), os.path.join(PUBLISH_DIR, pub_images[k])
            )
        pub_blocks = document(data, scs, pub_images)
        with open(os.path.join(PUBLISH_DIR, "peers-latest.rst"), "w") as f:
            f.write(render_rst(pub_blocks, "/_static/benchmarks"))
        with open(os.path.join(PUBLISH_DIR, "peers-latest.md"), "w") as f:
            f.write(render_md(pub_blocks, "flask-websocket and the alternatives"))
        slim = {
            k: data[k] for k in ("stamp", "args", "environment", "versions", "summary", "targets")
        }
        with open(os.path.join(PUBLISH_DIR, "peers-latest.json"), "w") as f:
            json.dump(slim, f, indent=1)
            f.write("\n")
        written.append(PUBLISH_DIR)
    return written


# ---------------------------------------------------------------------------


QUICK = {
    "rounds": 1, "duration": 2.0, "warmup": 0.5, "subscribers": "200", "broadcasts": 20,
    "idle_connections": 300, "connect_connections": 200, "two_worker_subscribers": 200,
    "quiet_wait": 0.0, "retry_noisy": 0, "drain_timeout": 10.0, "close_timeout": 10.0,
}  # fmt: skip


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="small sizes, 1 round, no quiet wait: a few minutes")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (3)")
    ap.add_argument("--servers", default=",".join(peerlib.PEERS),
                    help=f"comma list of: {', '.join(peerlib.PEERS)} (default all)")  # fmt: skip
    ap.add_argument("--scenarios", default="all",
                    help="comma list of: echo, large, fanout (every --subscribers N), idle, "
                         "connect, fanout-2w (default all)")  # fmt: skip
    ap.add_argument("--duration", type=float, default=None, help="echo/large seconds (5)")
    ap.add_argument("--warmup", type=float, default=None, help="echo/large warm-up seconds (1)")
    ap.add_argument("--echo-connections", type=int, default=50)
    ap.add_argument("--large-connections", type=int, default=10)
    ap.add_argument("--subscribers", default=None, help="fan-out sizes, comma list (1000,10000)")
    ap.add_argument("--two-worker-subscribers", type=int, default=None, help="(1000)")
    ap.add_argument("--broadcasts", type=int, default=None, help="measured broadcasts (100)")
    ap.add_argument("--warmup-broadcasts", type=int, default=5)
    ap.add_argument("--rate", type=float, default=10.0, help="broadcasts per second (10)")
    ap.add_argument("--drain-timeout", type=float, default=None,
                    help="fan-out: after the last broadcast, wait this long for deliveries "
                         "before counting the rest as lost (60 s; 10 with --quick)")  # fmt: skip
    ap.add_argument("--idle-connections", type=int, default=None, help="(10000)")
    ap.add_argument("--connect-connections", type=int, default=None, help="(1000)")
    ap.add_argument("--batch", type=int, default=50, help="handshakes in flight (50)")
    ap.add_argument("--open-timeout", type=float, default=600.0)
    ap.add_argument("--close-timeout", type=float, default=None, help="(15 s)")
    ap.add_argument("--publish", action="store_true",
                    help="copy the tables and plots to docs/_static/benchmarks/")  # fmt: skip
    ap.add_argument("--from-json", default=None,
                    help="do not run: render (and --publish) an earlier run's JSON")  # fmt: skip
    ap.add_argument("--baseline", metavar="REF", default=None,
                    help=f"also run {OURS} on the code of this git commit, next to the current "
                         "code (before/after figures; not with --publish)")  # fmt: skip
    bl.add_quiet_args(ap, retry_noisy=1)
    args = ap.parse_args(argv)
    if args.baseline and args.publish:
        ap.error("--baseline is for before/after figures: the docs page shows one code")
    defaults = {
        "rounds": 3, "duration": 5.0, "warmup": 1.0, "subscribers": "1000,10000",
        "broadcasts": 100, "idle_connections": 10000, "connect_connections": 1000,
        "two_worker_subscribers": 1000, "drain_timeout": 60.0, "close_timeout": 15.0,
    }  # fmt: skip
    for k, v in (QUICK if args.quick else {}).items():
        if getattr(args, k) is None or k in ("quiet_wait", "retry_noisy"):
            setattr(args, k, v)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.subscribers = [int(v) for v in str(args.subscribers).split(",") if v.strip()]
    bounds = [
        (1 <= args.rounds <= 20, "--rounds must be 1..20"),
        (0.5 <= args.duration <= 600 and 0 <= args.warmup <= 60, "--duration/--warmup"),
        (all(1 <= n <= 30000 for n in args.subscribers), "--subscribers 1..30000 each"),
        (1 <= args.two_worker_subscribers <= 30000, "--two-worker-subscribers 1..30000"),
        (1 <= args.idle_connections <= 30000, "--idle-connections 1..30000"),
        (1 <= args.connect_connections <= 30000, "--connect-connections 1..30000"),
        (1 <= args.broadcasts <= 10000 and 0.1 <= args.rate <= 1000, "--broadcasts/--rate"),
        (1 <= args.batch <= 90, "--batch 1..90 (uWSGI's listen backlog is 100)"),
        (0 <= args.retry_noisy <= 5 and 0 <= args.quiet_wait <= 600, "--retry-noisy/--quiet-wait"),
        (1 <= args.drain_timeout <= 600 and 1 <= args.close_timeout <= 600, "--*-timeout"),
    ]  # fmt: skip
    for ok, msg in bounds:
        if not ok:
            ap.error(msg)
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    unknown = [n for n in names if n not in peerlib.PEERS]
    if unknown or not names:
        ap.error(f"unknown --servers {unknown}; choose from {', '.join(peerlib.PEERS)}")
    args.servers = names
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every server started is stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    scs = scenarios(args)
    if args.from_json:
        with open(args.from_json) as f:
            data = json.load(f)
        saved = SimpleNamespace(**{**vars(args), **data["args"]})
        saved.subscribers = data["args"]["subscribers"]
        if data["args"].get("baseline_commit"):
            add_baseline_peer(data["args"]["baseline_commit"], None)
        scs = scenarios(saved)
        for scenario, summ in data["summary"].items():  # runs made before "better" was saved
            summ.setdefault("better", scs[scenario].metrics[0].better)
        data["targets"] = evaluate_targets(data["summary"])
        for path in write_outputs(data, scs, args.publish):
            print(f"written: {bl.relpath(path)}")
        return 0
    wanted = list(scs) if args.scenarios == "all" else []
    for s in (v.strip() for v in args.scenarios.split(",") if args.scenarios != "all"):
        matches = [
            k
            for k in scs
            if k == s or (s == "fanout" and k.startswith("fanout-") and k != "fanout-2w")
        ]
        if not matches:
            sys.exit(f"unknown scenario {s!r}; choose from {', '.join(scs)} or 'fanout'")
        wanted += [m for m in matches if m not in wanted]
    scs = {k: v for k, v in scs.items() if k in wanted}
    missing = peerlib.missing_packages()
    if missing:
        sys.exit(
            f"missing packages ({', '.join(missing)}): pip install -r benchmarks/requirements.txt"
        )
    if args.baseline:
        code_root = tempfile.mkdtemp(prefix="peers-baseline-")
        atexit.register(shutil.rmtree, code_root, True)
        args.baseline_commit = bl.export_code(args.baseline, code_root)
        name = add_baseline_peer(args.baseline_commit, code_root)
        at = args.servers.index(OURS) + 1 if OURS in args.servers else 0
        args.servers.insert(at, name)
    skip_redis = broadcast.redis_unavailable()
    plan = {s: rows_for(s, sc, args.servers) for s, sc in scs.items()}
    if skip_redis:
        for rows in plan.values():
            for r in rows:
                if r.get("hub") == "redis":
                    r["cannot"] = f"not run here: {skip_redis}"

    bl.pin_self_to_client_core()
    most = max([args.idle_connections, args.connect_connections, args.two_worker_subscribers,
                *args.subscribers])  # fmt: skip
    limits = broadcast.raise_fd_limits(most + 2048)
    if limits[0] < most + 256:
        print(
            f"warning: open-file limit {limits[0]} is below {most + 256}: large scenarios will fail"
        )
    stamp = bl.timestamp()
    env = bl.environment_info()
    env["code_fingerprint"] = bl.code_fingerprint(CODE_UNDER_TEST)
    env["fd_limit"] = list(limits)
    vers = peerlib.versions()
    vers["uWSGI binary"] = (env.get("uwsgi") or "").splitlines()[0] if env.get("uwsgi") else None
    print(f"peers.py {'--quick ' if args.quick else ''}run {stamp}: {len(scs)} scenarios x "
          f"{len(args.servers)} servers x {args.rounds} round(s)")  # fmt: skip
    t_start = time.monotonic()
    runs, discarded = [], []
    for rnd in range(1, args.rounds + 1):
        for scenario, sc in scs.items():
            for row in plan[scenario]:
                if "cannot" in row:
                    continue
                print(f"[{time.monotonic() - t_start:6.0f}s] round {rnd}/{args.rounds} "
                      f"{scenario:<12} {row_label(row):<44}", end=" ", flush=True)  # fmt: skip
                rec, dropped = bl.run_quietest(
                    lambda attempt, s=scenario, sc=sc, row=row, rnd=rnd: run_one(
                        s, sc, row, rnd, args, stamp, attempt
                    ),
                    args,
                    noise_fn(sc.kind),
                )
                runs.append(rec)
                discarded += dropped
                print(brief(sc, rec))
    summary = summarize(runs, plan, scs)
    targets = evaluate_targets(summary)
    changed = bl.code_changed_warning(runs, CODE_UNDER_TEST)
    env["loadavg_end"] = list(os.getloadavg())
    data = {
        "benchmark": "peers",
        "stamp": stamp,
        "args": dict(vars(args)),
        "environment": env,
        "versions": vers,
        "plan": plan,
        "summary": summary,
        "targets": targets,
        "runs": runs,
        "discarded_noisy_runs": discarded,
        "code_changed_during_run": bool(changed),
        "elapsed_s": time.monotonic() - t_start,
    }
    path = bl.write_json("peers", data, stamp)
    written = write_outputs(data, scs, args.publish)
    print()
    with open(os.path.join(bl.RESULTS_DIR, f"peers-{stamp}.md")) as f:
        print(f.read())
    if changed:
        print(changed)
    print(f"results: {bl.relpath(path)}, " + ", ".join(bl.relpath(p) for p in written))
    print(f"elapsed: {data['elapsed_s'] / 60:.1f} min")
    fatal = [r for r in runs if peerlib.PEERS[r["server"]].group != "peer"
             and ("error" in r or r.get("problems"))]  # fmt: skip
    return 1 if fatal or changed else 0


def brief(sc: Scenario, rec: dict) -> str:
    if "error" in rec:
        return f"ERROR: {rec['error'][:150]}"
    parts = [f"{m.label} {m.fmt.format(rec['m'][m.key])}" for m in sc.metrics[:3]]
    if rec.get("problems"):
        parts.append("PROBLEMS: " + "; ".join(rec["problems"])[:150])
    if rec.get("noisy"):
        parts.append("(noisy)")
    return ", ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
