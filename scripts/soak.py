#!/usr/bin/env python3
"""The long hostile-load runs: the 20 000-cycle soak and the full fuzz, with figures.

Starts its own uWSGI servers (the features app from tests/, one gevent
worker) on 127.0.0.1, once per mode (``--http-socket``, and ``--http``
behind uWSGI's router), and for each:

- the soak: connect-send-close cycles ending in a clean close, a reset, a
  half-close (FIN without a close frame) or a client gone silent (closed by
  the server's ping timeout, 1 s + 1 s here), in rounds, printing the
  worker's fds and RSS after each round: growth per cycle, and where RSS
  levels off;
- the fuzz: malformed frames and handshakes (tests/hostile.py), seeded.

A bystander echoes every 100 ms throughout each run (a gap over 1 s is a
miss). Exits non-zero if any cycle or case failed, the bystander missed a
beat, the worker changed or crashed, or fds did not come back. CI runs
short versions of both (tests/test_uwsgi_fuzz.py).

    .venv/bin/python scripts/soak.py                       # 20 000 cycles, 20 000 cases, both modes
    .venv/bin/python scripts/soak.py --cycles 100000 --rounds 10 --mode http-socket
    FWS_FUZZ_SEED=1234 .venv/bin/python scripts/soak.py --cycles 0   # replay a fuzz seed
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = str(ROOT)  # for uWSGI and the bystander: this checkout's code

from tests import hostile  # noqa: E402
from tests.uwsgi_server import UwsgiServer  # noqa: E402

APP = "tests.apps.features:app"
MIB = hostile.MIB


def figures_of(pid: int, before: tuple, after: tuple, count: int, unit: str) -> str:
    (fds, rss), (fds_after, rss_after) = before, after
    growth = rss_after - rss
    return (
        f"  pid {pid}: fds {fds} -> {fds_after}; RSS {rss / MIB:.2f} -> {rss_after / MIB:.2f} MiB "
        f"({growth / 1024:+.0f} KiB, {growth / max(count, 1):+.1f} B per {unit})"
    )


def pids_of(server: UwsgiServer) -> List[int]:
    import psutil

    workers = server.worker_pids()
    assert server.process is not None
    children = {child.pid for child in psutil.Process(server.process.pid).children()}
    return workers + sorted(children - set(workers))  # the router, with --http


def soak(mode: str, args: argparse.Namespace, log_dir: Path) -> List[str]:
    problems: List[str] = []
    env = {"FWS_PING_INTERVAL": "1", "FWS_PING_TIMEOUT": "1"}
    server = UwsgiServer(APP, mode=mode, gevent=1000, env=env, log_dir=log_dir).start()
    try:
        pids = pids_of(server)
        workers = server.worker_pids()
        seed = hostile.default_seed()
        print(f"\n== soak, {mode}: {args.cycles} cycles in {args.rounds} rounds, seed {seed}")
        warm = hostile.run_soak(server.port, seed + 1, args.warmup_cycles, silent_hold=4)
        print(f"warm-up: {warm.summary()}")
        before = {pid: hostile.settle(pid, timeout=15) for pid in pids}
        log_start = len(server.log())
        bystander = hostile.Bystander(server.url("/echo"))
        # Between rounds the bystander's connection is open: one fd in the
        # worker, two in the router.
        during = {pid: before[pid][0] + (1 if pid in workers else 2) for pid in pids}
        total, seconds, failures = 0, 0.0, 0
        per_round = max(1, args.cycles // args.rounds)
        try:
            for round_ in range(args.rounds):
                result = hostile.run_soak(
                    server.port, seed + 100 + round_, per_round, silent_hold=4
                )
                total += result.cycles
                seconds += result.seconds
                failures += result.failure_count
                now = {pid: hostile.settle(pid, during[pid], timeout=15) for pid in pids}
                rss = ", ".join(f"{pid}: {now[pid][1] / MIB:.2f} MiB" for pid in pids)
                fds = ", ".join(f"{pid}: {now[pid][0]}" for pid in pids)
                print(f"round {round_ + 1}: {result.summary()}")
                print(f"  after {total}: RSS {rss}; fds {fds}")
        finally:
            beats = bystander.finish()
        after = {pid: hostile.settle(pid, before[pid][0], timeout=20) for pid in pids}
        print(f"soak, {mode}: {total} cycles in {seconds:.1f} s ({total / seconds:.0f} cycles/s)")
        for pid in pids:
            print(figures_of(pid, before[pid], after[pid], total, "cycle"))
        print(f"  bystander: {beats}")
        problems += check(server, workers, before, after, beats, log_start, failures, "soak")
    finally:
        server.stop()
    return problems


def fuzz(mode: str, args: argparse.Namespace, log_dir: Path) -> List[str]:
    problems: List[str] = []
    server = UwsgiServer(APP, mode=mode, gevent=100, log_dir=log_dir).start()
    try:
        pids = pids_of(server)
        workers = server.worker_pids()
        seed = hostile.default_seed()
        print(f"\n== fuzz, {mode}: {args.fuzz_cases} cases, seed {seed} (FWS_FUZZ_SEED={seed})")
        hostile.run_cases(server.port, seed + 1, args.warmup_cases)
        before = {pid: hostile.settle(pid, timeout=15) for pid in pids}
        log_start = len(server.log())
        bystander = hostile.Bystander(server.url("/echo"))
        try:
            result = hostile.run_cases(server.port, seed, args.fuzz_cases, max_seconds=3600)
        finally:
            beats = bystander.finish()
        after = {pid: hostile.settle(pid, before[pid][0], timeout=20) for pid in pids}
        print(result.summary())
        for pid in pids:
            print(figures_of(pid, before[pid], after[pid], result.cases, "case"))
        print(f"  bystander: {beats}")
        problems += check(
            server, workers, before, after, beats, log_start, result.failure_count, "fuzz"
        )
    finally:
        server.stop()
    return problems


def check(
    server: UwsgiServer,
    workers: List[int],
    before: Dict[int, tuple],
    after: Dict[int, tuple],
    beats: Dict[str, Any],
    log_start: int,
    failures: int,
    name: str,
) -> List[str]:
    problems = []
    label = f"{name}, {server.mode}"
    if failures:
        problems.append(f"{label}: {failures} failed")
    if server.worker_pids() != workers or server.crash_lines():
        problems.append(f"{label}: worker changed or crashed: {server.crash_lines()[:3]}")
    if beats.get("errors") or beats.get("misses"):
        problems.append(f"{label}: the bystander missed beats: {beats}")
    for pid, (fds, _) in before.items():
        if after[pid][0] > fds:
            problems.append(f"{label}: pid {pid} holds {after[pid][0]} fds, {fds} before")
    tracebacks = server.log()[log_start:].count("Traceback")
    if tracebacks:
        # Known under --http-socket: a request line without a space reaches
        # Flask without REQUEST_METHOD (tests/test_uwsgi_fuzz.py, xfail).
        problems.append(f"{label}: {tracebacks} tracebacks in the log ({server.log_path})")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["both", "http-socket", "http"], default="both")
    parser.add_argument("--cycles", type=int, default=20_000, help="soak cycles (0: no soak)")
    parser.add_argument("--rounds", type=int, default=4, help="soak rounds, RSS printed after each")
    parser.add_argument("--warmup-cycles", type=int, default=5_000)
    parser.add_argument("--fuzz-cases", type=int, default=20_000, help="0: no fuzz")
    parser.add_argument("--warmup-cases", type=int, default=2_000)
    args = parser.parse_args()
    modes = ["http-socket", "http"] if args.mode == "both" else [args.mode]
    problems: List[str] = []
    started = time.monotonic()
    directory = Path(tempfile.mkdtemp(prefix="fws-soak-"))  # kept: the servers' logs
    for mode in modes:
        if args.cycles:
            problems += soak(mode, args, directory)
        if args.fuzz_cases:
            problems += fuzz(mode, args, directory)
    print(f"\n{time.monotonic() - started:.0f} s in all; uWSGI logs in {directory}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
