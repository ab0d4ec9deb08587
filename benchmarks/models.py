#!/usr/bin/env python3
"""uWSGI concurrency models side by side: the flask-websocket echo app under each.

The same app (``benchmarks/apps/flask_websocket_echo.py``) is served by uWSGI
under every model in MODELS (gevent, threads, processes, greenlet, asyncio on
CPython; continulets, pypy-threads, pypy-processes on uWSGI's PyPy plugin),
each run on a freshly started server pinned to core 1, the client on core 0.
Every round runs the echo phase for all models (A, B, C, D, E), then the idle
phase for all models, then the next round.

The PyPy models run the PyPy build of uWSGI that scripts/install-pypy-uwsgi.sh
leaves in ``.pypy/`` (see docs/pypy.rst): ``.pypy/uwsgi`` started in
``.pypy/``, the app loaded with ``--pypy-wsgi`` (no ``--need-app``), paths
from ``.pypy/paths``. Without that build they are skipped, saying why. PyPy's
JIT needs warm-up: their echo runs warm up for --pypy-warmup seconds (default
10) instead of --warmup, and their idle runs start with that many seconds of
the echo client (not measured) before the idle measurement.

* echo: C connections (default 50) of closed-loop ping-pong with 32 B text
  messages (the client of ``echo.py``): msg/s, p50/p99 round trip, and CPU
  per message = user+system CPU of all uWSGI worker processes (threads
  included) over the measured window / replies.
* idle: K idle connections (default 500), each having echoed once (the
  client of ``idle_memory.py``): (RSS after - RSS before) / K, RSS summed
  over all worker processes.

Models that serve one connection per worker process ("processes") get one
worker per connection: C workers (fewer if memory is short) for both phases,
and that many idle connections.

Usage::

    python benchmarks/models.py [--rounds 3] [--duration 5] [--connections 50]
                                [--idle-connections 500] [--pypy-warmup 10]
                                [--models gevent,threads,processes,greenlet,asyncio,
                                          continulets,pypy-threads,pypy-processes]

Prints tables (ratios are to gevent) and writes
``benchmarks/results/models-<timestamp>.json``. Exit status is non-zero if a
server failed, a reply did not match, or a connection dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib as bl
import echo
import idle_memory
import psutil

from flask_websocket.transport import PYPY_CONTINULETS_EVAL

sys.path.insert(0, bl.REPO_ROOT)
# One reader of .pypy/paths for the tests and the benchmarks.
from tests.uwsgi_server import PypyBuild, find_pypy_build

MB = 2**20


@dataclass(frozen=True)
class Model:
    flags: tuple  # uWSGI flags; "{n}" = async cores / threads / worker processes
    one_per_worker: bool = False  # a worker process serves one connection at a time
    pypy: bool = False  # runs on uWSGI's PyPy plugin (.pypy/, PypyBuild)
    # memory check of one-worker-per-connection models: what one worker may need
    worker_budget: int = 64 * MB

    def args(self, n: int) -> list[str]:
        return [f.format(n=n) for f in self.flags]


MODELS = {
    "gevent": Model(("--gevent", "{n}")),
    "threads": Model(("--threads", "{n}")),
    "processes": Model(("--processes", "{n}"), one_per_worker=True),
    "greenlet": Model(("--async", "{n}", "--greenlet")),
    # uGreen needs the uWSGI scripts/install-uwsgi.sh builds (with
    # scripts/patches/uwsgi-2.0.31-ugreen-python.patch; a stock one is refused).
    "ugreen": Model(("--async", "{n}", "--ugreen")),
    "asyncio": Model(("--asyncio", "{n}", "--greenlet")),
    # PyPy (docs/pypy.rst): uWSGI's documented uwsgi_pypy_setup_continulets()
    # fails on Python 3, so --pypy-eval installs the continulet engine; the
    # plugin turns threads on itself (no --enable-threads).
    "continulets": Model(("--async", "{n}", "--pypy-eval", PYPY_CONTINULETS_EVAL), pypy=True),
    "pypy-threads": Model(("--threads", "{n}"), pypy=True),
    "pypy-processes": Model(
        ("--processes", "{n}"), one_per_worker=True, pypy=True, worker_budget=128 * MB
    ),
}
# The default --models: pypy-processes (a PyPy worker, with a JIT of its own
# to warm up, per connection) only when asked for.
DEFAULT_MODELS = [m for m in MODELS if m != "pypy-processes"]
BASELINE = "gevent"  # ratios are to this model
APP_MODULE, APP_PATH = bl.SERVERS["flask-websocket"]
CORE_MARGIN = 16  # cores/threads beyond the connection count (not for processes)
# Memory check for one-worker-per-connection models: assume each worker may
# need Model.worker_budget of its own (a started CPython worker here: ~26 MB
# RSS, mostly shared with the master) and use at most MEMORY_SHARE of the
# available memory.
MEMORY_SHARE = 0.5
MAX_WORKERS = 500
# idle phase limits (seconds)
OPEN_TIMEOUT = 120.0
CLOSE_TIMEOUT = 60.0
SETTLE_TIMEOUT = 30.0
PYPY_INSTALL = "run scripts/install-pypy-uwsgi.sh first"


def pypy_argv(build: PypyBuild, model_args: list[str], port: int) -> list[str]:
    """uWSGI arguments after the PyPy binary (benchlib.Server.argv_builder).

    As benchlib.uwsgi_command's http-socket mode, but the app is loaded the
    PyPy plugin's way (tests/uwsgi_server.py's PypyBuild.load_flags) and
    without --need-app: the plugin keeps its app to itself, so uWSGI would
    say "no app loaded" and exit.
    """
    return [
        "--master",
        "--die-on-term",
        *model_args,
        "--http-socket",
        f"{bl.HOST}:{port}",
        *build.load_flags(APP_MODULE),
        "--disable-logging",
    ]


def pypy_info(build: PypyBuild) -> dict:
    """Versions of the PyPy build (for the JSON); None where a probe failed."""

    def probe(argv: list[str]) -> str | None:
        try:
            out = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        if out.returncode != 0:
            return None
        return " ".join(out.stdout.split()) or None

    venv_python = str(build.directory / "venv" / "bin" / "python")
    return {
        "uwsgi": probe([build.uwsgi, "--version"]),
        "libpypy": os.path.basename(build.libpypy),
        "pypy": probe([venv_python, "-c", "import sys; print(sys.version)"]),
        "packages": probe(
            [
                venv_python,
                "-c",
                "import flask, websockets; from importlib.metadata import version; "
                "print('flask', version('flask'), 'websockets', websockets.__version__)",
            ]
        ),
    }


def worker_plan(wanted: int, budget: int, label: str = "processes") -> tuple[int, str]:
    """Worker processes for `wanted` connections, capped by memory; and a note saying so.

    `budget`: bytes one worker may need; `label`: the models, for the note.
    """
    avail = psutil.virtual_memory().available
    by_memory = max(1, int(avail * MEMORY_SHARE // budget))
    n = min(wanted, by_memory, MAX_WORKERS)
    check = (
        f"{n} x {budget // MB} MiB budget vs {MEMORY_SHARE:.0%} of "
        f"{avail / 2**30:.1f} GiB available"
    )
    if n < wanted:
        why = f"not enough memory ({check})" if n == by_memory else f"at most {MAX_WORKERS}"
        return n, f"{label}: only {n} workers / connections instead of {wanted}: {why}"
    return n, f"{label}: {n} workers for {n} connections (memory check: {check}: ok)"


def warmup_of(name: str, args) -> float:
    """Echo warm-up seconds of `name`: PyPy models get --pypy-warmup (JIT)."""
    return args.pypy_warmup if MODELS[name].pypy else args.warmup


def sizes(name: str, phase: str, args) -> tuple[int, int]:
    """(connections, uWSGI cores/threads/workers) of `name` in `phase`."""
    if MODELS[name].one_per_worker:
        return args.workers, args.workers
    conns = args.connections if phase == "echo" else args.idle_connections
    return conns, conns + CORE_MARGIN


async def measure_idle(server: bl.Server, conns: int, args, jit_warmup: float = 0.0) -> dict:
    """idle_memory.measure(); after `jit_warmup` s of unmeasured echo if > 0 (PyPy)."""
    warm = None
    if jit_warmup > 0:
        ns = SimpleNamespace(
            connections=min(args.connections, conns),
            size=args.size,
            warmup=jit_warmup,
            duration=0.5,
        )
        r = await echo.run_client(server, ns)
        problems = [
            f"{r[k]} {k.replace('_', ' ')}"
            for k in ("mismatches", "unexpected_disconnects", "server_closes", "stuck_in_flight")
            if r.get(k)
        ]
        if problems:
            raise bl.ServerError(f"{server.name}: JIT warm-up echo: " + ", ".join(problems))
        warm = {"seconds": jit_warmup, "connections": ns.connections}
        warm["msgs_per_s_at_end"] = r["msgs_per_s"]
        await asyncio.sleep(0.5)
    ns = SimpleNamespace(
        connections=conns,
        batch=args.batch,
        no_echo=False,
        open_timeout=OPEN_TIMEOUT,
        close_timeout=CLOSE_TIMEOUT,
        settle_timeout=SETTLE_TIMEOUT,
    )
    out = await idle_memory.measure(server, ns)
    if warm:
        out["jit_warmup"] = warm
    return out


def run_one(phase: str, name: str, rnd: int, args, stamp: str, attempt: int = 1) -> dict:
    model = MODELS[name]
    conns, n = sizes(name, phase, args)
    suffix = f"-a{attempt}" if attempt > 1 else ""
    log = os.path.join(bl.RESULTS_DIR, "logs", f"models-{stamp}-{phase}-{name}-r{rnd}{suffix}.log")
    pypy: dict = {}
    if model.pypy:
        build = args.pypy_build
        pypy = {
            "binary": build.uwsgi,
            "cwd": str(build.directory),  # the plugin compiles its cffi glue into ./__pycache__
            "argv_builder": lambda port: pypy_argv(build, model.args(n), port),
        }
    server = bl.Server(
        name=name,
        mode="http-socket",
        gevent=0,
        log_path=log,
        module_spec=APP_MODULE,
        ws_path=APP_PATH,
        model_args=model.args(n),
        expect_workers=n if model.one_per_worker else 1,
        **pypy,
    )
    warmup = warmup_of(name, args)
    rec: dict = {
        "phase": phase,
        "model": name,
        "interpreter": "pypy" if model.pypy else "cpython",
        "round": rnd,
        "connections": conns,
        "cores": n,
        "warmup_s": warmup if phase == "echo" or model.pypy else 0.0,
        "log": bl.relpath(log),
    }
    try:
        with server:
            rec["command"] = server.display_argv()
            rec["code_fingerprint"] = bl.code_fingerprint()
            rec["worker_pids"] = [w.pid for w in server.workers]
            expected = n if model.one_per_worker else 1
            if len(server.workers) != expected:
                raise bl.ServerError(
                    f"{name}: found {len(server.workers)} workers, expected {expected}"
                )
            if phase == "echo":
                ns = SimpleNamespace(
                    connections=conns, size=args.size, warmup=warmup, duration=args.duration
                )
                rec.update(bl.run_uvloop(lambda: echo.run_client(server, ns)))
            else:
                jit = warmup if model.pypy else 0.0
                rec.update(bl.run_uvloop(lambda: measure_idle(server, conns, args, jit)))
                problems = idle_memory.measure_problems(rec, conns)
                if problems:
                    raise bl.ServerError(f"{name}: " + "; ".join(problems))
            server.check_alive()
        rec["exit_code"] = server.proc.returncode if server.proc else None
    except bl.ServerError as exc:
        rec["error"] = exc.message
        rec["log_tail"] = server.log_tail()
    except Exception as exc:
        rec["error"] = f"{type(exc).__name__}: {exc}"
        rec["log_tail"] = server.log_tail()
    return rec


def echo_failed(rec: dict) -> bool:
    return "error" in rec or any(
        rec.get(k)
        for k in ("mismatches", "unexpected_disconnects", "server_closes", "stuck_in_flight")
    )


def stats(values: list) -> dict:
    return {"median": bl.median(values), "min": min(values), "max": max(values), "n": len(values)}


ECHO_FIELDS = {
    "msgs_per_s": lambda r: r["msgs_per_s"],
    "cpu_us_per_msg": lambda r: r["worker_cpu_us_per_msg"],
    "p50_ms": lambda r: r["latency_ms"]["p50"],
    "p99_ms": lambda r: r["latency_ms"]["p99"],
    "worker_cpu_util": lambda r: r["worker_cpu_util"],
    "client_cpu_util": lambda r: r["client_cpu_util"],
}
IDLE_FIELDS = {
    "kb_per_conn_rss": lambda r: r["kb_per_conn_rss"],
    "kb_per_conn_uss": lambda r: r.get("kb_per_conn_uss", float("nan")),
    "rss_before_mb": lambda r: r["before"]["rss"] / MB,
    "uss_before_mb": lambda r: r["before"].get("uss", float("nan")) / MB,
    # memory of one worker process with its connections open (processes: one)
    "rss_per_worker_mb": lambda r: r["after"]["rss"] / len(r["worker_pids"]) / MB,
    "uss_per_worker_mb": lambda r: r["after"].get("uss", float("nan")) / len(r["worker_pids"]) / MB,
}
# ratio name -> (phase, field)
RATIOS = {
    "msgs_per_s": ("echo", "msgs_per_s"),
    "cpu_per_msg": ("echo", "cpu_us_per_msg"),
    "rss_per_conn": ("idle", "kb_per_conn_rss"),
}


def summarize(runs: list[dict], models: list[str]) -> dict:
    fields = {"echo": ECHO_FIELDS, "idle": IDLE_FIELDS}
    ok: dict = {}  # (phase, model) -> {round: rec}
    for r in runs:
        if "error" not in r and not (r["phase"] == "echo" and echo_failed(r)):
            ok.setdefault((r["phase"], r["model"]), {})[r["round"]] = r
    summary: dict = {}
    for name in models:
        s: dict = {}
        for phase, fs in fields.items():
            recs = list(ok.get((phase, name), {}).values())
            s[f"{phase}_rounds_ok"] = len(recs)
            if recs:
                s[phase] = {k: stats([f(r) for r in recs]) for k, f in fs.items()}
                s[phase]["connections"] = recs[0]["connections"]
                s[phase]["cores"] = recs[0]["cores"]
        summary[name] = s
    ratios: dict = {}
    base = summary.get(BASELINE, {})
    for name in models:
        ratios[name] = {}
        for key, (phase, field) in RATIOS.items():
            if phase not in base or phase not in summary[name]:
                continue
            get = fields[phase][field]
            pairs = [
                get(rec) / get(ok[(phase, BASELINE)][rnd])
                for rnd, rec in sorted(ok[(phase, name)].items())
                if rnd in ok[(phase, BASELINE)] and get(ok[(phase, BASELINE)][rnd])
            ]
            b = base[phase][field]["median"]
            ratios[name][key] = {
                "of_medians": summary[name][phase][field]["median"] / b if b else float("nan"),
                "per_round": pairs,
            }
    return {"models": summary, "ratios_to_" + BASELINE: ratios}


def fmt_stat(st: dict, spec: str) -> str:
    return f"{st['median']:{spec}} [{st['min']:{spec}}-{st['max']:{spec}}]"


def fmt_ratio(r: dict | None) -> str:
    return "" if r is None else f"{r['of_medians']:.2f}"


def fmt_ratio_range(r: dict | None) -> str:
    if not r or not r["per_round"]:
        return ""
    return f"{min(r['per_round']):.2f}-{max(r['per_round']):.2f}"


def print_report(runs: list[dict], summary: dict, models: list[str], args) -> None:
    print()
    print(
        f"Concurrency models: flask-websocket echo app; echo {args.connections} connections x "
        f"{args.size} B ping-pong, {args.duration:g} s after {args.warmup:g} s warm-up; idle "
        f"{args.idle_connections} connections; {args.rounds} round(s) interleaved; server on "
        f"core {bl.SERVER_CORE}, client on core {bl.CLIENT_CORE}; cores/threads = connections "
        f"+ {CORE_MARGIN}"
    )
    if any(MODELS[m].one_per_worker for m in models):
        print(args.workers_note)
    pypy_models = [m for m in models if MODELS[m].pypy]
    if pypy_models:
        print(
            f"PyPy models ({', '.join(pypy_models)}) run on uWSGI's PyPy plugin "
            f"({bl.relpath(args.pypy_build.uwsgi)}); longer warm-up for the JIT: echo "
            f"{args.duration:g} s after {args.pypy_warmup:g} s (not {args.warmup:g} s), and "
            f"{args.pypy_warmup:g} s of unmeasured echo before each idle measurement"
        )
    print()
    print("Echo, per run:")
    rows = []
    for r in (r for r in runs if r["phase"] == "echo"):
        if "error" in r:
            rows.append([str(r["round"]), r["model"], "ERROR"] + [""] * 7)
            continue
        rows.append(
            [
                str(r["round"]),
                r["model"],
                f"{r['msgs_per_s']:,.0f}",
                f"{r['latency_ms']['p50']:.3f}",
                f"{r['latency_ms']['p99']:.3f}",
                f"{r['worker_cpu_us_per_msg']:.2f}",
                f"{r['worker_cpu_util'] * 100:.0f}%",
                f"{r['client_cpu_util'] * 100:.0f}%",
                f"{r['other_cpu_util'] * 100:.0f}%" + (" *" if r.get("noisy") else ""),
                str(r["mismatches"]),
            ]
        )
    headers = ["round", "model", "msg/s", "p50 ms", "p99 ms", "CPU us/msg"]
    headers += ["worker CPU", "client CPU", "other CPU", "mismatch"]
    print(bl.format_table(headers, rows, align="rl" + "r" * 8))
    print()
    print("Idle memory, per run:")
    rows = []
    for r in (r for r in runs if r["phase"] == "idle"):
        if "error" in r:
            rows.append([str(r["round"]), r["model"], "ERROR"] + [""] * 6)
            continue
        rows.append(
            [
                str(r["round"]),
                r["model"],
                str(r["established"]),
                f"{r['before']['rss'] / MB:.1f}",
                f"{r['after']['rss'] / MB:.1f}",
                f"{r['kb_per_conn_rss']:.2f}",
                f"{r['kb_per_conn_uss']:.2f}" if "kb_per_conn_uss" in r else "n/a",
                f"{r['open_seconds']:.1f}",
                "yes" if r["stable_before"] and r["stable_after"] else "NO",
            ]
        )
    headers = ["round", "model", "conns", "RSS before MB", "RSS after MB"]
    headers += ["KB/conn RSS", "KB/conn USS", "open s", "settled"]
    print(bl.format_table(headers, rows, align="rl" + "r" * 7))
    print("(RSS/USS summed over all worker processes; 1 KB = 1024 B)")

    ratios = summary["ratios_to_" + BASELINE]
    print()
    print(
        f"Summary (medians over rounds, [min-max]; x{BASELINE} = ratio of medians to {BASELINE}):"
    )
    rows = []
    for name in models:
        s = summary["models"][name]
        e, i, rt = s.get("echo"), s.get("idle"), ratios.get(name, {})
        row = [name, str(e["connections"]) if e else "-"]
        if e:
            row += [
                fmt_stat(e["msgs_per_s"], ",.0f"),
                fmt_ratio(rt.get("msgs_per_s")),
                fmt_stat(e["cpu_us_per_msg"], ".2f"),
                fmt_ratio(rt.get("cpu_per_msg")),
                f"{e['p50_ms']['median']:.3f}",
                f"{e['p99_ms']['median']:.3f}",
            ]
        else:
            row += ["FAILED"] + [""] * 5
        row += [str(i["connections"]) if i else "-"]
        if i:
            row += [fmt_stat(i["kb_per_conn_rss"], ".1f"), fmt_ratio(rt.get("rss_per_conn"))]
        else:
            row += ["FAILED", ""]
        row += [f"{s['echo_rounds_ok']}/{args.rounds} {s['idle_rounds_ok']}/{args.rounds}"]
        rows.append(row)
    headers = ["model", "conns", "msg/s", f"x{BASELINE}", "CPU us/msg", f"x{BASELINE}"]
    headers += ["p50 ms", "p99 ms", "idle conns", "KB/conn RSS", f"x{BASELINE}", "ok echo idle"]
    print(bl.format_table(headers, rows))
    print()
    print(f"Ratios to {BASELINE}, spread of the per-round pairs (round i vs round i):")
    rows = []
    for name in models:
        e = summary["models"][name].get("echo")
        rows.append(
            [name]
            + [fmt_ratio_range(ratios.get(name, {}).get(k)) or "-" for k in RATIOS]
            + [f"{e['worker_cpu_util']['median'] * 100:.0f}%" if e else "-"]
        )
    print(bl.format_table(["model", "msg/s", "CPU/msg", "RSS/conn", "worker CPU"], rows))
    print(
        "(CPU us/msg: user+system CPU of all uWSGI worker processes, threads included, over the "
        "measured window / replies; worker CPU: their median utilisation, in % of one core; "
        "KB/conn RSS: (RSS after - before) / idle connections, summed over workers)"
    )
    for name in models:
        i = summary["models"][name].get("idle")
        if not i or not MODELS[name].one_per_worker:
            continue
        print(
            f"note: {name} holds a whole worker per connection: "
            f"{i['rss_per_worker_mb']['median']:.1f} MB RSS "
            f"({i['uss_per_worker_mb']['median']:.1f} MB of it unique) per worker with its "
            f"connection open (medians); its KB/conn is mostly each worker's one-time "
            f"first-request set-up ({i['connections'] - 1} of {i['connections']} workers serve "
            "their first connection during the measurement)"
        )
    busy = [
        r
        for r in runs
        if r["phase"] == "echo" and "error" not in r and r["client_cpu_util"] >= echo.CLIENT_BUSY
    ]
    if busy:
        print(
            f"note: the client core was >= {echo.CLIENT_BUSY:.0%} busy in {len(busy)} echo "
            f"run(s) ({', '.join(sorted({r['model'] for r in busy}))}); msg/s there may be "
            "client-bound, CPU per message is not affected"
        )
    for r in runs:
        label = f"{r['phase']} {r['model']} round {r['round']}"
        if "error" in r:
            print()
            print(f"ERROR {label}: {r['error']}")
            print(f"  uWSGI log ({r['log']}), last lines:")
            for line in (r.get("log_tail") or "").splitlines()[-25:]:
                print("    " + line)
        elif r["phase"] == "echo" and echo_failed(r):
            print(
                f"FAILED {label}: {r['mismatches']} mismatches "
                f"{r['mismatch_examples'][:2]}, {r['unexpected_disconnects']} dropped, "
                f"{r['server_closes']} closed by the server {r['close_examples']}, "
                f"{r['stuck_in_flight']} unanswered"
            )


def progress(rec: dict) -> str:
    if "error" in rec:
        return f"ERROR: {rec['error']}"
    if rec["phase"] == "echo":
        return (
            f"{rec['msgs_per_s']:,.0f} msg/s, p50 {rec['latency_ms']['p50']:.3f} ms, "
            f"{rec['worker_cpu_us_per_msg']:.2f} us CPU/msg, mismatches {rec['mismatches']}"
        )
    return f"{rec['established']} idle connections, {rec['kb_per_conn_rss']:.2f} KB/conn RSS"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help=f"comma-separated subset of: {', '.join(MODELS)} (default: all but "
        + ", ".join(m for m in MODELS if m not in DEFAULT_MODELS)
        + "; the PyPy models are skipped, saying why, without .pypy/ from "
        "scripts/install-pypy-uwsgi.sh)",
    )
    for flag, kind, default, what in (
        ("--rounds", int, 3, "interleaved rounds"),
        ("--duration", float, 5.0, "echo: measured seconds per run"),
        ("--warmup", float, 1.0, "echo: warm-up seconds before measuring"),
        (
            "--pypy-warmup",
            float,
            10.0,
            "PyPy models (JIT): echo warm-up seconds instead of --warmup, and seconds of "
            "unmeasured echo before the idle measurement",
        ),
        ("--connections", int, 50, "echo: connections; also the worker count of processes"),
        ("--size", int, 32, "echo: text message size in bytes"),
        ("--idle-connections", int, 500, "idle: connections (processes: one per worker)"),
        ("--batch", int, 50, "idle: handshakes in flight at once"),
    ):
        ap.add_argument(flag, type=kind, default=default, help=f"{what} (default {default:g})")
    bl.add_quiet_args(ap, retry_noisy=2)
    args = ap.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        ap.error(f"--models: choose from {', '.join(MODELS)} (got {args.models!r})")
    models = [m for m in MODELS if m in models]  # canonical order, no repeats
    if not (1 <= args.rounds <= 20):
        ap.error("--rounds must be 1..20")
    if not (0.5 <= args.duration <= 600) or not (0 <= args.warmup <= 60):
        ap.error("--duration must be 0.5..600 s, --warmup 0..60 s")
    if not (0 <= args.pypy_warmup <= 120):
        ap.error("--pypy-warmup must be 0..120 s")
    if not (1 <= args.connections <= 1000) or not (1 <= args.idle_connections <= 10000):
        ap.error("--connections must be 1..1000, --idle-connections 1..10000")
    if not (1 <= args.size <= 1 << 20) or not (1 <= args.batch <= 90):
        ap.error("--size must be 1..1048576, --batch 1..90 (uWSGI listen backlog is 100)")
    if not (0 <= args.retry_noisy <= 5) or not (0 <= args.quiet_wait <= 600):
        ap.error("--retry-noisy must be 0..5, --quiet-wait 0..600 s")

    skipped: dict = {}
    args.pypy_build = None
    if any(MODELS[m].pypy for m in models):
        args.pypy_build, why = find_pypy_build()
        if args.pypy_build is None:
            skipped = {m: f"{why}; {PYPY_INSTALL}" for m in models if MODELS[m].pypy}
            print(f"skipping {', '.join(skipped)}: {why} ({PYPY_INSTALL})")
            models = [m for m in models if m not in skipped]
            if not models:
                sys.exit("no models left to run")
    # one worker count for all one-worker-per-connection models, within the
    # largest of their memory budgets
    per_worker = [m for m in models if MODELS[m].one_per_worker] or ["processes"]
    args.workers, args.workers_note = worker_plan(
        args.connections,
        max(MODELS[m].worker_budget for m in per_worker),
        ", ".join(per_worker),
    )
    if any(MODELS[m].one_per_worker for m in models):
        print(args.workers_note)
    pypy_models = [m for m in models if MODELS[m].pypy]
    if pypy_models:
        print(
            f"PyPy models ({', '.join(pypy_models)}): {bl.relpath(args.pypy_build.uwsgi)}; "
            f"JIT warm-up: {args.pypy_warmup:g} s of echo before each measurement (echo and "
            f"idle), instead of {args.warmup:g} s"
        )
    bl.pin_self_to_client_core()
    soft, _ = bl.raise_fd_limit(max(args.connections, args.idle_connections) + 512)
    if soft < max(args.connections, args.idle_connections) + 64:
        sys.exit(f"file descriptor limit {soft} too low")
    stamp = bl.timestamp()
    env = bl.environment_info()
    if pypy_models:
        env["pypy_build"] = pypy_info(args.pypy_build)
    runs: list = []
    discarded: list = []
    t0 = time.monotonic()
    for rnd in range(1, args.rounds + 1):
        for phase in ("echo", "idle"):
            for name in models:
                print(f"round {rnd}/{args.rounds}: {phase} {name} ...", end=" ", flush=True)
                rec, rejected = bl.run_quietest(
                    lambda attempt, p=phase, n=name, r=rnd: run_one(p, n, r, args, stamp, attempt),
                    args,
                    # only CPU figures suffer from other work; memory runs wait, never retry
                    noise=(lambda r: r["other_cpu_util"]) if phase == "echo" else (lambda r: 0.0),
                )
                discarded.extend(rejected)
                runs.append(rec)
                print(progress(rec))
                time.sleep(0.5)
    summary = summarize(runs, models)
    changed = bl.code_changed_warning(runs)
    print_report(runs, summary, models, args)
    if changed:
        print("\n" + changed)
    data = {
        "benchmark": "models",
        "models": {m: list(MODELS[m].flags) for m in models},
        "pypy_models": pypy_models,
        "skipped_models": skipped,
        "core_margin": CORE_MARGIN,
        "baseline": BASELINE,
        "elapsed_s": time.monotonic() - t0,
        "args": {k: v for k, v in vars(args).items() if k != "pypy_build"},
        "environment": {**env, "loadavg_end": list(os.getloadavg())},
        "summary": summary,
        "runs": runs,
        "discarded_noisy_runs": discarded,
        "code_changed_during_run": bool(changed),
    }
    path = bl.write_json("models", data, stamp)
    print()
    print(f"results written to {bl.relpath(path)}")
    bad = bool(changed) or any(
        "error" in r or (r["phase"] == "echo" and echo_failed(r)) for r in runs
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
