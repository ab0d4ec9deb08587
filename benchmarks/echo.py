#!/usr/bin/env python3
"""Echo throughput/latency benchmark: raw uWSGI WebSocket API vs flask-websocket.

For every round the servers are run one after the other (A, B, A, B, ...),
each freshly started under uWSGI + gevent, pinned to core 1.  The load client
(picows on uvloop, this process) is pinned to core 0 and keeps N connections
busy with ping-pong echo of fixed-size text messages: send, await the reply,
send again.  After a warm-up the client counts replies, records per-message
round-trip latency, checks every reply byte-for-byte and samples the uWSGI
worker's CPU time (user+system, psutil) at the start and end of the measured
window.

Usage (from anywhere; the repository root is derived from this file)::

    python benchmarks/echo.py [--rounds 3] [--duration 5] [--connections 50]
                              [--size 32] [--mode http-socket|http]
                              [--servers raw,flask-websocket]

Prints a table and writes ``benchmarks/results/echo-<timestamp>.json``.
Exit status is non-zero if any reply did not match what was sent, a
connection dropped unexpectedly, or a server failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from array import array

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib as bl

try:
    import picows
    import uvloop  # noqa: F401
except ImportError as exc:  # pragma: no cover
    sys.exit(f"missing benchmark dependency ({exc}); pip install -r benchmarks/requirements.txt")

TEXT = picows.WSMsgType.TEXT
CONTINUATION = picows.WSMsgType.CONTINUATION
CLOSE = picows.WSMsgType.CLOSE

PAYLOAD_RING = 16  # distinct payloads per connection, cycled
CONNECT_TIMEOUT = 10.0
DRAIN_TIMEOUT = 5.0
CLOSE_TIMEOUT = 5.0
CLIENT_BUSY = 0.9  # client core utilisation above which msg/s may be client-bound


def make_payloads(cid: int, size: int) -> list[bytes]:
    out = []
    for i in range(PAYLOAD_RING):
        head = f"c{cid:x}m{i:x}:".encode()
        body = (head + b"abcdefghijklmnopqrstuvwxyz0123456789" * (size // 36 + 1))[:size]
        out.append(body)
    return out


class Bench:
    """State shared by all connections of one run."""

    def __init__(self, n_conns: int, msg_type=TEXT):
        self.n_conns = n_conns
        self.msg_type = msg_type  # what is sent and expected back: TEXT or BINARY
        self.running = False  # connections keep sending while True
        self.recording = False  # replies are counted while True
        self.closing = False
        self.count = 0
        self.latencies_ns = array("q")
        self.mismatches = 0
        self.mismatch_examples: list = []
        self.unexpected_disconnects = 0  # TCP connection lost before we closed
        self.server_closes = 0  # close frames the server sent unprompted
        self.close_examples: list = []
        self.unexpected_frames = 0
        self.in_flight = 0
        self.drained: asyncio.Event | None = None

    def note_mismatch(self, expected: bytes, got, msg_type) -> None:
        self.mismatches += 1
        if len(self.mismatch_examples) < 5:
            self.mismatch_examples.append(
                {
                    "expected": expected[:64].decode("ascii", "replace"),
                    "got": repr(got[:64]),
                    "type": str(msg_type),
                }
            )


class EchoListener(picows.WSListener):
    def __init__(self, bench: Bench, cid: int, size: int):
        super().__init__()
        self.bench = bench
        self.payloads = make_payloads(cid, size)
        self.seq = 0
        self.expected = b""
        self.t_send = 0
        self.transport = None
        self.waiting = False
        self.parts: list | None = None
        self.part_type = None

    def on_ws_connected(self, transport):
        self.transport = transport

    def send_next(self) -> None:
        p = self.payloads[self.seq % PAYLOAD_RING]
        self.seq += 1
        self.expected = p
        self.waiting = True
        self.bench.in_flight += 1
        self.t_send = time.perf_counter_ns()
        self.transport.send(self.bench.msg_type, p)

    def on_ws_frame(self, transport, frame):
        now = time.perf_counter_ns()
        mt = frame.msg_type
        bench = self.bench
        if mt is CLOSE:
            if not bench.closing:
                bench.server_closes += 1
                if len(bench.close_examples) < 3:
                    bench.close_examples.append(
                        f"{frame.get_close_code()} {frame.get_close_message()[:80]!r}"
                    )
            return
        if mt is not bench.msg_type and mt is not CONTINUATION:
            if mt is not picows.WSMsgType.PING and mt is not picows.WSMsgType.PONG:
                bench.unexpected_frames += 1
            return
        if not frame.fin or self.parts is not None:  # fragmented message
            if self.parts is None:
                self.parts = []
                self.part_type = mt
            self.parts.append(frame.get_payload_as_bytes())
            if not frame.fin:
                return
            data = b"".join(self.parts)
            mt = self.part_type
            self.parts = None
        else:
            data = frame.get_payload_as_bytes()
        if not self.waiting:
            bench.unexpected_frames += 1
            return
        self.waiting = False
        bench.in_flight -= 1
        if mt is not bench.msg_type or data != self.expected:
            bench.note_mismatch(self.expected, data, mt)
        if bench.recording:
            bench.count += 1
            bench.latencies_ns.append(now - self.t_send)
        if bench.running:
            self.send_next()
        elif bench.in_flight == 0 and bench.drained is not None:
            bench.drained.set()

    def on_ws_disconnected(self, transport):
        if not self.bench.closing:
            self.bench.unexpected_disconnects += 1
            if self.waiting:
                self.waiting = False
                self.bench.in_flight -= 1
                if self.bench.in_flight == 0 and self.bench.drained is not None:
                    self.bench.drained.set()


async def run_client(server: bl.Server, args) -> dict:
    loop = asyncio.get_running_loop()
    # --binary is peers.py's "large" scenario (echo.py itself sends text)
    binary = getattr(args, "binary", False)
    bench = Bench(args.connections, picows.WSMsgType.BINARY if binary else TEXT)
    bench.drained = asyncio.Event()

    async def connect(cid):
        transport, listener = await asyncio.wait_for(
            server.ws_connect(
                lambda: EchoListener(bench, cid, args.size),
                websocket_handshake_timeout=CONNECT_TIMEOUT,
                enable_auto_pong=True,
            ),
            CONNECT_TIMEOUT + 1,
        )
        return transport, listener

    results = await asyncio.gather(
        *(connect(i) for i in range(args.connections)), return_exceptions=True
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    conns = [r for r in results if not isinstance(r, BaseException)]
    if errors:
        bench.closing = True
        for t, _ in conns:
            t.disconnect()
        raise bl.ServerError(
            f"{server.name}: {len(errors)}/{args.connections} connections failed: {errors[0]!r}",
            server.log_tail(),
        )

    marks: dict = {}

    def snapshot(key):
        marks[key] = {
            "t": time.monotonic(),
            "worker_cpu": server.worker_cpu(),
            "router_cpu": server.router_cpu(),
            "master_cpu": server.master_cpu(),
            "client_cpu": bl.process_cpu_self(),
            "machine_busy": bl.machine_busy_cpu(),
            "machine_steal": bl.machine_steal_cpu(),
            "core_idle": bl.core_idle_cpu(),
        }

    def begin_measure():
        snapshot("start")
        bench.recording = True

    def end_measure():
        bench.recording = False
        bench.running = False
        snapshot("end")
        if bench.in_flight == 0:
            bench.drained.set()

    bench.running = True
    for _, listener in conns:
        listener.send_next()
    loop.call_later(args.warmup, begin_measure)
    loop.call_later(args.warmup + args.duration, end_measure)
    # bounded wait: warm-up + measurement + drain
    deadline = args.warmup + args.duration + DRAIN_TIMEOUT
    try:
        await asyncio.wait_for(bench.drained.wait(), deadline)
    except asyncio.TimeoutError:
        if "end" not in marks:
            end_measure()
    stuck = bench.in_flight

    bench.closing = True
    for t, _ in conns:
        if not t.is_disconnected:
            t.send_close(picows.WSCloseCode.OK)
    try:
        await asyncio.wait_for(
            asyncio.gather(*(t.wait_disconnected() for t, _ in conns)), CLOSE_TIMEOUT
        )
    except asyncio.TimeoutError:
        for t, _ in conns:
            t.disconnect(graceful=False)

    if "start" not in marks or "end" not in marks:
        raise bl.ServerError(
            f"{server.name}: measurement window did not complete", server.log_tail()
        )
    if bench.count == 0:
        raise bl.ServerError(
            f"{server.name}: no echo replies received in the measured window "
            f"({bench.server_closes} close frames from the server "
            f"{bench.close_examples}, {bench.unexpected_disconnects} connections dropped, "
            f"{stuck} messages still unanswered after a {DRAIN_TIMEOUT:g} s drain)",
            server.log_tail(),
        )
    s, e = marks["start"], marks["end"]
    window = e["t"] - s["t"]
    lat = sorted(bench.latencies_ns)
    n = bench.count
    worker_cpu = e["worker_cpu"] - s["worker_cpu"]
    router_cpu = e["router_cpu"] - s["router_cpu"]
    master_cpu = e["master_cpu"] - s["master_cpu"]
    client_cpu = e["client_cpu"] - s["client_cpu"]
    return {
        "messages": n,
        "window_s": window,
        "msgs_per_s": n / window if window > 0 else 0.0,
        "latency_ms": {
            "p50": bl.percentile(lat, 50) / 1e6,
            "p90": bl.percentile(lat, 90) / 1e6,
            "p99": bl.percentile(lat, 99) / 1e6,
            "p99.9": bl.percentile(lat, 99.9) / 1e6,
            "max": (lat[-1] / 1e6) if lat else float("nan"),
            "mean": (sum(lat) / len(lat) / 1e6) if lat else float("nan"),
        },
        "worker_cpu_s": worker_cpu,
        "router_cpu_s": router_cpu,
        "master_cpu_s": master_cpu,
        "client_cpu_s": client_cpu,
        "worker_cpu_util": worker_cpu / window if window > 0 else 0.0,
        "client_cpu_util": client_cpu / window if window > 0 else 0.0,
        # CPU used on the machine by anything but this server and this client,
        # in cores: a noise indicator (0 on a quiet machine).
        "other_cpu_util": max(
            0.0,
            (
                e["machine_busy"]
                - s["machine_busy"]
                - worker_cpu
                - router_cpu
                - master_cpu
                - client_cpu
            )
            / window,
        )
        if window > 0
        else 0.0,
        # idle share of the server's and the client's core (VM wake-up latency
        # shows up here: neither side saturated although both have work)
        "server_core_idle": bl.core_idle_share(
            s["core_idle"], e["core_idle"], bl.SERVER_CORE, window
        ),
        "client_core_idle": bl.core_idle_share(
            s["core_idle"], e["core_idle"], bl.CLIENT_CORE, window
        ),
        "steal_cpu_util": (e["machine_steal"] - s["machine_steal"]) / window if window > 0 else 0.0,
        "worker_cpu_us_per_msg": (worker_cpu / n * 1e6) if n else float("nan"),
        "msgs_per_worker_cpu_s": (n / worker_cpu) if worker_cpu > 0 else float("nan"),
        "all_procs_cpu_us_per_msg": ((worker_cpu + router_cpu + master_cpu) / n * 1e6)
        if n
        else float("nan"),
        "mismatches": bench.mismatches,
        "mismatch_examples": bench.mismatch_examples,
        "unexpected_disconnects": bench.unexpected_disconnects,
        "server_closes": bench.server_closes,
        "close_examples": bench.close_examples,
        "unexpected_frames": bench.unexpected_frames,
        "stuck_in_flight": stuck,
    }


def label(name: str) -> str:
    base, _, commit = name.partition("@")
    return bl.SERVER_LABELS[base] + (f" @{commit}" if commit else "")


def run_one(name: str, rnd: int, args, stamp: str, attempt: int = 1) -> dict:
    suffix = f"-a{attempt}" if attempt > 1 else ""
    file_name = name.replace("@", "-")
    log = os.path.join(bl.RESULTS_DIR, "logs", f"echo-{stamp}-{file_name}-r{rnd}{suffix}.log")
    module, path = bl.SERVERS[name.partition("@")[0]]
    server = bl.Server(
        name=name,
        mode=args.mode,
        gevent=args.gevent,
        log_path=log,
        module_spec=module,
        ws_path=path,
        code_root=getattr(args, "baseline_root", None) if "@" in name else None,
    )
    rec = {"server": name, "round": rnd, "log": bl.relpath(log)}
    try:
        with server:
            rec["command"] = server.display_argv()
            rec["code_fingerprint"] = bl.code_fingerprint()
            rec["worker_pids"] = [w.pid for w in server.workers]
            res = bl.run_uvloop(lambda: run_client(server, args))
            server.check_alive()
            rec.update(res)
        rec["exit_code"] = server.proc.returncode if server.proc else None
    except bl.ServerError as exc:
        rec["error"] = exc.message
        rec["log_tail"] = server.log_tail()  # read after stop: includes shutdown output
    except Exception as exc:
        rec["error"] = f"{type(exc).__name__}: {exc}"
        rec["log_tail"] = server.log_tail()
    return rec


def summarize(runs: list[dict], servers: list[str]) -> dict:
    summary = {}
    for name in servers:
        ok = [r for r in runs if r["server"] == name and "error" not in r]
        if not ok:
            summary[name] = {"rounds_ok": 0}
            continue

        def col(f, ok=ok):
            return [f(r) for r in ok]

        rates = col(lambda r: r["msgs_per_s"])
        summary[name] = {
            "rounds_ok": len(ok),
            "msgs_per_s_median": bl.median(rates),
            "msgs_per_s_min": min(rates),
            "msgs_per_s_max": max(rates),
            "p50_ms_median": bl.median(col(lambda r: r["latency_ms"]["p50"])),
            "p99_ms_median": bl.median(col(lambda r: r["latency_ms"]["p99"])),
            "worker_cpu_us_per_msg_median": bl.median(col(lambda r: r["worker_cpu_us_per_msg"])),
            "msgs_per_worker_cpu_s_median": bl.median(col(lambda r: r["msgs_per_worker_cpu_s"])),
            "msgs_per_worker_cpu_s_min": min(col(lambda r: r["msgs_per_worker_cpu_s"])),
            "msgs_per_worker_cpu_s_max": max(col(lambda r: r["msgs_per_worker_cpu_s"])),
            "all_procs_cpu_us_per_msg_median": bl.median(
                col(lambda r: r["all_procs_cpu_us_per_msg"])
            ),
            "worker_cpu_util_median": bl.median(col(lambda r: r["worker_cpu_util"])),
            "client_cpu_util_median": bl.median(col(lambda r: r["client_cpu_util"])),
            "mismatches": sum(col(lambda r: r["mismatches"])),
            "unexpected_disconnects": sum(col(lambda r: r["unexpected_disconnects"])),
            "server_closes": sum(col(lambda r: r["server_closes"])),
        }
    ratios = None
    a, b = summary.get(bl.BASELINE), summary.get(bl.CANDIDATE)
    if a and b and a.get("rounds_ok") and b.get("rounds_ok"):
        pair_tp, pair_eff = [], []
        by_round = {}
        for r in runs:
            if "error" not in r:
                by_round.setdefault(r["round"], {})[r["server"]] = r
        for rr in by_round.values():
            if bl.BASELINE in rr and bl.CANDIDATE in rr:
                pair_tp.append(rr[bl.CANDIDATE]["msgs_per_s"] / rr[bl.BASELINE]["msgs_per_s"])
                pair_eff.append(
                    rr[bl.CANDIDATE]["msgs_per_worker_cpu_s"]
                    / rr[bl.BASELINE]["msgs_per_worker_cpu_s"]
                )
        ratios = {
            "msgs_per_s": b["msgs_per_s_median"] / a["msgs_per_s_median"],
            "msgs_per_worker_cpu_s": b["msgs_per_worker_cpu_s_median"]
            / a["msgs_per_worker_cpu_s_median"],
            "worker_cpu_per_msg": b["worker_cpu_us_per_msg_median"]
            / a["worker_cpu_us_per_msg_median"],
            "p50_latency": b["p50_ms_median"] / a["p50_ms_median"],
            "p99_latency": b["p99_ms_median"] / a["p99_ms_median"],
            "per_round_msgs_per_s": pair_tp,
            "per_round_msgs_per_worker_cpu_s": pair_eff,
        }
    return {"servers": summary, "ratios": ratios}


def fmt_int(x) -> str:
    return f"{x:,.0f}"


def print_report(runs, summary, servers, args) -> None:
    print()
    print(
        f"Echo benchmark: {args.connections} connections x {args.size} B text, ping-pong, "
        f"{args.duration:g} s measured after {args.warmup:g} s warm-up, "
        f"{args.rounds} round(s) interleaved, mode {args.mode}, --gevent {args.gevent}; "
        f"server on core {bl.SERVER_CORE}, client on core {bl.CLIENT_CORE}"
    )
    print()
    http = args.mode == "http"
    print("Per run:")
    rows = []
    for r in runs:
        name_label = label(r["server"])
        if "error" in r:
            rows.append([str(r["round"]), name_label, "ERROR"] + [""] * (9 if http else 8))
            continue
        rows.append(
            [
                str(r["round"]),
                name_label,
                fmt_int(r["msgs_per_s"]),
                f"{r['latency_ms']['p50']:.3f}",
                f"{r['latency_ms']['p99']:.3f}",
                f"{r['worker_cpu_us_per_msg']:.2f}",
                fmt_int(r["msgs_per_worker_cpu_s"]),
                f"{r['worker_cpu_util'] * 100:.0f}%",
            ]
            + ([f"{r['router_cpu_s'] / r['window_s'] * 100:.0f}%"] if http else [])
            + [
                f"{r['client_cpu_util'] * 100:.0f}%",
                f"{r['other_cpu_util'] * 100:.0f}%" + (" *" if r.get("noisy") else ""),
                str(r["mismatches"]),
            ]
        )
    headers = [
        "round",
        "server",
        "msg/s",
        "p50 ms",
        "p99 ms",
        "CPU us/msg",
        "msg/CPU-s",
        "worker CPU",
    ]
    headers += (["router CPU"] if http else []) + ["client CPU", "other CPU", "mismatch"]
    print(bl.format_table(headers, rows, align="rl" + "r" * (len(headers) - 2)))
    print(
        "(CPU us/msg, msg/CPU-s: uWSGI worker user+system CPU over the measured window; "
        "worker/client CPU: utilisation of one core; other CPU: everything else running on "
        "the machine meanwhile, in % of one core - high values mean a noisy run; "
        "* = still above --max-other-cpu after the retries)"
    )
    print()
    print("Summary (medians over rounds; min-max in brackets):")
    rows = []
    for name in servers:
        s = summary["servers"][name]
        name_label = label(name)
        if not s.get("rounds_ok"):
            rows.append([name_label, "FAILED", "", "", "", "", "", ""])
            continue
        rows.append(
            [
                name_label,
                (
                    f"{fmt_int(s['msgs_per_s_median'])} "
                    f"[{fmt_int(s['msgs_per_s_min'])}-{fmt_int(s['msgs_per_s_max'])}]"
                ),
                f"{s['p50_ms_median']:.3f}",
                f"{s['p99_ms_median']:.3f}",
                f"{s['worker_cpu_us_per_msg_median']:.2f}",
                (
                    f"{fmt_int(s['msgs_per_worker_cpu_s_median'])} "
                    f"[{fmt_int(s['msgs_per_worker_cpu_s_min'])}-"
                    f"{fmt_int(s['msgs_per_worker_cpu_s_max'])}]"
                ),
                f"{s['rounds_ok']}/{args.rounds}",
                f"{s['mismatches']}",
            ]
        )
    print(
        bl.format_table(
            [
                "server",
                "msg/s",
                "p50 ms",
                "p99 ms",
                "CPU us/msg",
                "msgs per CPU-s",
                "rounds",
                "mismatch",
            ],
            rows,
            align="lrrrrrrr",
        )
    )
    if args.mode == "http":
        print(
            "(CPU = uWSGI worker process only; the --http router runs on the same core, "
            "see 'router CPU')"
        )
    ratios = summary["ratios"]
    if ratios:
        print()
        pt, pe = (
            ratios["per_round_msgs_per_s"],
            ratios["per_round_msgs_per_worker_cpu_s"],
        )

        def rng(v: list) -> str:
            return f" (per-round pairs {min(v):.3f}-{max(v):.3f})" if v else ""

        print("Ratio flask-websocket / raw uWSGI:")
        print(f"  msg/s                 {ratios['msgs_per_s']:.3f}{rng(pt)}")
        print(f"  msgs per CPU-second   {ratios['msgs_per_worker_cpu_s']:.3f}{rng(pe)}")
        print(f"  CPU per message       {ratios['worker_cpu_per_msg']:.3f}")
        print(f"  p50 / p99 latency     {ratios['p50_latency']:.3f} / {ratios['p99_latency']:.3f}")
    busy = [r for r in runs if "error" not in r and r["client_cpu_util"] >= CLIENT_BUSY]
    if busy:
        print()
        print(
            f"note: the client core was >= {CLIENT_BUSY:.0%} busy in {len(busy)} run(s); "
            "msg/s there may be client-bound, CPU per message is not affected"
        )
    errs = [r for r in runs if "error" in r]
    for r in errs:
        print()
        print(f"ERROR {label(r['server'])} round {r['round']}: {r['error']}")
        print(f"  uWSGI log ({r['log']}), last lines:")
        for line in (r.get("log_tail") or "").splitlines()[-25:]:
            print("    " + line)
    for r in runs:
        if r.get("mismatches"):
            print(
                f"MISMATCH {label(r['server'])} round {r['round']}: "
                f"{r['mismatches']} replies differed, "
                f"e.g. {r['mismatch_examples'][:2]}"
            )
        if r.get("unexpected_disconnects") or r.get("server_closes"):
            print(
                f"DISCONNECT {label(r['server'])} round {r['round']}: "
                f"{r['unexpected_disconnects']} connections dropped, "
                f"{r['server_closes']} closed by the server {r['close_examples']}"
            )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument(
        "--duration",
        type=float,
        default=5.0,
        help="measured seconds per run (default 5)",
    )
    ap.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        help="warm-up seconds before measuring (default 1)",
    )
    ap.add_argument(
        "--connections",
        type=int,
        default=50,
        help="concurrent connections (default 50)",
    )
    ap.add_argument("--size", type=int, default=32, help="message size in bytes (default 32)")
    ap.add_argument("--mode", choices=["http-socket", "http"], default="http-socket")
    ap.add_argument(
        "--gevent",
        type=int,
        default=1000,
        help="uWSGI --gevent cores = connection cap (default 1000)",
    )
    ap.add_argument(
        "--servers",
        default="raw,flask-websocket",
        help="comma-separated subset of: raw, flask-websocket",
    )
    ap.add_argument(
        "--baseline",
        metavar="REF",
        help="also run flask-websocket on the code of this git commit (before/after in one run)",
    )
    bl.add_quiet_args(ap, retry_noisy=2)
    args = ap.parse_args(argv)
    try:
        servers = bl.parse_servers(args.servers)
    except ValueError as exc:
        ap.error(str(exc))
    with tempfile.TemporaryDirectory(prefix="echo-baseline-") as tmp:
        args.baseline_root = None
        if args.baseline:
            commit = bl.export_code(args.baseline, tmp)
            args.baseline_root = tmp
            at = servers.index(bl.CANDIDATE) if bl.CANDIDATE in servers else len(servers)
            servers.insert(at, f"{bl.CANDIDATE}@{commit}")
        return run(ap, args, servers)


def run(ap, args, servers: list) -> int:
    if not (1 <= args.rounds <= 100):
        ap.error("--rounds must be 1..100")
    if not (0.5 <= args.duration <= 600) or not (0 <= args.warmup <= 60):
        ap.error("--duration must be 0.5..600 s, --warmup 0..60 s")
    if not (1 <= args.connections < args.gevent):
        ap.error("--connections must be >= 1 and below --gevent")
    if not (0 <= args.retry_noisy <= 5) or not (0 <= args.quiet_wait <= 600):
        ap.error("--retry-noisy must be 0..5, --quiet-wait 0..600 s")
    if not (1 <= args.size <= 1 << 20):
        ap.error("--size must be 1..1048576")

    bl.pin_self_to_client_core()
    bl.raise_fd_limit(args.connections + 256)
    stamp = bl.timestamp()
    env = bl.environment_info()
    runs: list = []
    discarded: list = []
    for rnd in range(1, args.rounds + 1):
        for name in servers:
            print(
                f"round {rnd}/{args.rounds}: {label(name)} ...",
                end=" ",
                flush=True,
            )
            rec, rejected = bl.run_quietest(
                lambda attempt, name=name, rnd=rnd: run_one(name, rnd, args, stamp, attempt), args
            )
            discarded.extend(rejected)
            runs.append(rec)
            if "error" in rec:
                print(f"ERROR: {rec['error']}")
            else:
                print(
                    f"{rec['msgs_per_s']:,.0f} msg/s, p50 {rec['latency_ms']['p50']:.3f} ms, "
                    f"{rec['worker_cpu_us_per_msg']:.2f} us CPU/msg, mismatches {rec['mismatches']}"
                )
            time.sleep(0.5)
    summary = summarize(runs, servers)
    print_report(runs, summary, servers, args)
    changed = bl.code_changed_warning(runs)
    if changed:
        print()
        print(changed)
    env["loadavg_end"] = list(os.getloadavg())
    data = {
        "benchmark": "echo",
        "args": vars(args),
        "servers": servers,
        "environment": env,
        "summary": summary,
        "runs": runs,
        "discarded_noisy_runs": discarded,
        "code_changed_during_run": bool(changed),
    }
    path = bl.write_json("echo", data, stamp)
    print()
    print(f"results written to {bl.relpath(path)}")
    bad = bool(changed) or any(
        "error" in r
        or r.get("mismatches")
        or r.get("unexpected_disconnects")
        or r.get("server_closes")
        or r.get("stuck_in_flight")
        for r in runs
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
