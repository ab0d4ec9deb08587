#!/usr/bin/env python3
"""Reconnect storm: N Python clients on ONE gevent uWSGI worker, the worker reloaded.

N ``flask_websocket.client.ResumingClient`` clients (the real client: the
point is to measure its jitter), spread over ``--rooms`` rooms with history
(``apps/flask_websocket_storm.py``, local hub), each having seen one message
of its room ("before"). Then ``kill -HUP`` of the uWSGI master: the
graceful drain closes every WebSocket with 1012 and a new worker starts;
every client reconnects by itself, giving its position back. As soon as the
new worker answers, a plain view broadcasts "after" to every room.

Measured, per run (a fresh server and fresh clients each time):

* **back**: seconds from the SIGHUP until every client's connection is open
  again, and **recovered**: until every client got its join's answer with
  ``recovered: true`` *and* the "after" message (live, or from history if
  it came back later), each exactly once (lost and duplicated are counted);
* **server CPU** during the storm: user+system of the uWSGI processes (the
  old worker while it drains, the new one, the master), sampled from
  /proc every 50 ms from the SIGHUP until the last client recovered;
* **spread**: the clients' reconnections (handshakes done) in 100 ms buckets
  from the SIGHUP: the peak bucket's share of all clients, and the
  histogram; the delay each client drew after its 1012 is kept too.

Variants (interleaved, each round): ``jitter`` (the client's default: a
delay drawn in [0, restart_delay] after 1012) and ``no-jitter``
(``jitter=False``: every client waits ``restart_delay`` itself).

The load side is ``--client-processes`` processes (multiprocessing) on the
client core, each an asyncio (uvloop) loop holding its share of the
clients; their CPU and memory per client are reported (what the real client
costs). Loopback only; every wait is bounded (``--timeout``).

Usage::

    python benchmarks/reconnect_storm.py --quick            # 1000 clients, ~1 min
    python benchmarks/reconnect_storm.py                    # 10 000 clients
    python benchmarks/reconnect_storm.py --no-jitter        # the no-jitter variant only

Writes ``benchmarks/results/reconnect-storm-<stamp>.json`` and prints a
table and one Markdown line per variant. Exit status non-zero when a run
failed, or a client did not recover, lost or duplicated a message.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
import urllib.request
from typing import Any

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import benchlib as bl

APP = "benchmarks.apps.flask_websocket_storm:app"
BUCKET = 0.1  # s: the histogram's bucket
CODE_UNDER_TEST = (
    "flask_websocket",
    os.path.join("benchmarks", "apps", "flask_websocket_storm.py"),
)


# ---------------------------------------------------------------------------
# The load side: one process holding a share of the clients


class Member:
    """One client and what happened to it."""

    def __init__(self, url: str, jitter: bool, restart_delay: float) -> None:
        from flask_websocket.client import ResumingClient

        self.storm = False
        self.joins = 0
        self.texts: list[str] = []
        self.closed_at: float | None = None
        self.close_code: int | None = None
        self.delay: float | None = None
        self.reopened_at: float | None = None
        self.rejoined_at: float | None = None
        self.recovered: bool | None = None
        self.after_at: float | None = None
        self.client = ResumingClient(
            url,
            jitter=jitter,
            restart_delay=restart_delay,
            on_state_change=self._changed,
            on_joined=self._joined,
        )

    def _changed(self, change: Any) -> None:
        if not self.storm:
            return
        if change.state == "reconnecting" and self.closed_at is None:
            self.closed_at = time.monotonic()
            self.close_code = change.code
            self.delay = change.delay
        elif change.state == "open" and self.closed_at is not None and self.reopened_at is None:
            self.reopened_at = time.monotonic()

    def _joined(self, joined: Any) -> None:
        self.joins += 1
        if self.storm and self.rejoined_at is None:
            self.rejoined_at = time.monotonic()
            self.recovered = joined.recovered and joined.resumed

    async def consume(self) -> None:
        with contextlib.suppress(Exception):
            async for message in self.client:
                self.texts.append(str(message.data))
                if message.data == "after" and self.after_at is None:
                    self.after_at = time.monotonic()


async def _until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def _load(conn: Any, port: int, indices: list[int], args: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()

    async def order() -> Any:
        return await loop.run_in_executor(None, conn.recv)

    me = psutil.Process()
    rss_before = me.memory_info().rss
    cpu_before = sum(me.cpu_times()[:2])
    members = [
        Member(
            f"ws://{bl.HOST}:{port}/ws/r{i % args['rooms']}",
            args["jitter"],
            args["restart_delay"],
        )
        for i in indices
    ]
    consumers = []
    batch = args["batch"]
    for start in range(0, len(members), batch):  # bounded handshakes in flight
        chunk = members[start : start + batch]
        for member in chunk:
            member.client.start()
            consumers.append(asyncio.ensure_future(member.consume()))
        await asyncio.gather(
            *(asyncio.wait_for(m.client.wait_open(), args["timeout"]) for m in chunk),
            return_exceptions=True,
        )
    joined = await _until(lambda: all(m.joins >= 1 for m in members), args["timeout"])
    conn.send(
        {
            "connected": sum(m.client.state == "open" for m in members),
            "joined": joined,
            "rss_per_client": (me.memory_info().rss - rss_before) / max(1, len(members)),
            "cpu_connect": sum(me.cpu_times()[:2]) - cpu_before,
        }
    )
    assert (await order()) == "before-sent"
    seen = await _until(lambda: all("before" in m.texts for m in members), args["timeout"])
    for m in members:
        m.storm = True
    cpu_storm = sum(me.cpu_times()[:2])
    conn.send({"ready": seen})
    deadline = await order()  # the parent sent SIGHUP and "after"; wait for all (bounded)
    await _until(
        lambda: all(m.after_at is not None and m.rejoined_at is not None for m in members),
        max(0.0, deadline - time.monotonic()),
    )
    cpu_storm = sum(me.cpu_times()[:2]) - cpu_storm
    conn.send(
        {
            "members": [
                {
                    "closed": m.closed_at,
                    "code": m.close_code,
                    "delay": m.delay,
                    "reopened": m.reopened_at,
                    "rejoined": m.rejoined_at,
                    "recovered": m.recovered,
                    "after": m.after_at,
                    "after_count": m.texts.count("after"),
                    "before_count": m.texts.count("before"),
                    "connections": m.client.connections,
                }
                for m in members
            ],
            "cpu_storm": cpu_storm,
        }
    )
    await asyncio.gather(
        *(asyncio.wait_for(m.client.close(), 10) for m in members), return_exceptions=True
    )
    for consumer in consumers:
        consumer.cancel()
    await asyncio.gather(*consumers, return_exceptions=True)


def load_process(conn: Any, port: int, indices: list[int], args: dict[str, Any]) -> None:
    """Entry point of a client process (multiprocessing)."""
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {bl.CLIENT_CORE})
    bl.raise_fd_limit(len(indices) + 1024)
    try:
        bl.run_uvloop(lambda: _load(conn, port, indices, args))
    except BaseException as exc:  # say it to the parent rather than hang it
        with contextlib.suppress(Exception):
            conn.send({"error": repr(exc)})
        raise


# ---------------------------------------------------------------------------
# The server side


class CpuSampler:
    """user+system CPU of the master and every child of it, sampled every 50 ms."""

    def __init__(self, master_pid: int) -> None:
        self.master = psutil.Process(master_pid)
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.pids_seen: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        with contextlib.suppress(psutil.Error):
            processes = [self.master, *self.master.children()]
            for p in processes:
                with contextlib.suppress(psutil.Error):
                    times = p.cpu_times()
                    cpu = times.user + times.system
                    if p.pid not in self.first:
                        # Born during the storm: all its CPU is the storm's.
                        self.first[p.pid] = cpu if not self._thread.is_alive() else 0.0
                        self.pids_seen.append(p.pid)
                    self.last[p.pid] = cpu

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self._sample()

    def start(self) -> None:
        self._sample()
        self._thread.start()

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(5)
        self._sample()
        return sum(self.last[pid] - self.first[pid] for pid in self.last)


def http_get(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        data: bytes = response.read()
        return data


def say(server: bl.Server, rooms: int, text: str, timeout: float) -> None:
    http_get(f"http://{bl.HOST}:{server.port}/say?rooms={rooms}&text={text}", timeout)


def remove_hub(name: str) -> None:
    from flask_websocket.sqlite_history import private_directory

    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            (private_directory() / f"{name}.sqlite3{suffix}").unlink()


def run_one(variant: str, rnd: int, args: argparse.Namespace, stamp: str) -> dict[str, Any]:
    hub_name = f"storm-{os.getpid()}-{time.monotonic_ns()}"
    log = os.path.join(bl.RESULTS_DIR, "logs", f"reconnect-storm-{stamp}-{variant}-r{rnd}.log")
    server = bl.Server(
        name="storm",
        mode="http-socket",
        gevent=args.clients + 300,
        log_path=log,
        module_spec=APP,
        ws_path="/ws/r0",
        extra_args=["--listen", str(args.listen), "--gevent-early-monkey-patch"],
        extra_env={
            "STORM_HUB_NAME": hub_name,
            "STORM_MAX_CONNECTIONS": str(args.clients + 100),
        },
    )
    rec: dict[str, Any] = {
        "variant": variant,
        "round": rnd,
        "clients": args.clients,
        "code_fingerprint": bl.code_fingerprint(CODE_UNDER_TEST),
    }
    context = multiprocessing.get_context("spawn")
    processes: list[Any] = []
    pipes: list[Any] = []
    try:
        server.start()
        rec["argv"] = server.display_argv()
        shares = [
            list(range(p, args.clients, args.client_processes))
            for p in range(args.client_processes)
        ]
        options = {
            "rooms": args.rooms,
            "jitter": variant == "jitter",
            "restart_delay": args.restart_delay,
            "batch": args.batch,
            "timeout": args.timeout,
        }
        for share in shares:
            parent, child = context.Pipe()
            process = context.Process(
                target=load_process, args=(child, server.port, share, options)
            )
            process.start()
            processes.append(process)
            pipes.append(parent)

        def gather(what: str, timeout: float) -> list[dict[str, Any]]:
            answers = []
            for pipe in pipes:
                if not pipe.poll(timeout):
                    raise RuntimeError(f"a client process did not report {what} in {timeout:.0f} s")
                answer = pipe.recv()
                if "error" in answer:
                    raise RuntimeError(f"a client process failed: {answer['error']}")
                answers.append(answer)
            return answers

        t0 = time.monotonic()
        connected = gather("its connections", args.timeout * 2)
        rec["connect_s"] = round(time.monotonic() - t0, 2)
        rec["connected"] = sum(a["connected"] for a in connected)
        rec["client_rss_kb_per_client"] = round(
            bl.median([a["rss_per_client"] for a in connected]) / 1024, 1
        )
        rec["client_cpu_ms_per_connect"] = round(
            1000 * sum(a["cpu_connect"] for a in connected) / max(1, rec["connected"]), 3
        )
        if not all(a["joined"] for a in connected) or rec["connected"] != args.clients:
            raise RuntimeError(f"only {rec['connected']} of {args.clients} clients connected")
        say(server, args.rooms, "before", args.timeout)
        for pipe in pipes:
            pipe.send("before-sent")
        if not all(a["ready"] for a in gather("'before'", args.timeout)):
            raise RuntimeError("not every client got the message before the reload")

        assert server.proc is not None
        old_workers = {w.pid for w in server.workers}
        sampler = CpuSampler(server.proc.pid)
        sampler.start()
        t_hup = time.monotonic()
        os.kill(server.proc.pid, signal.SIGHUP)  # graceful reload: 1012 to every client
        master = psutil.Process(server.proc.pid)
        new_worker: int | None = None
        deadline = t_hup + args.timeout
        while new_worker is None and time.monotonic() < deadline:
            with contextlib.suppress(psutil.Error):
                fresh = [c.pid for c in master.children() if c.pid not in old_workers]
                new_worker = fresh[0] if fresh else None
            time.sleep(0.01)
        if new_worker is None:
            raise RuntimeError("no new worker after SIGHUP")
        rec["new_worker_s"] = round(time.monotonic() - t_hup, 3)
        # The new worker answers once its app is loaded: then "after" for all.
        while True:
            try:
                say(server, args.rooms, "after", max(1.0, deadline - time.monotonic()))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        rec["after_published_s"] = round(time.monotonic() - t_hup, 3)
        for pipe in pipes:
            pipe.send(t_hup + args.timeout)
        results = gather("its results", args.timeout + 30)
        rec["server_cpu_s"] = round(sampler.stop(), 3)
        rec["old_worker_gone"] = not any(psutil.pid_exists(pid) for pid in old_workers)
        members = [m for r in results for m in r["members"]]
        rec["client_cpu_storm_s"] = round(sum(r["cpu_storm"] for r in results), 2)
        rec.update(analyse(members, t_hup, args.clients))
        rec["server_cpu_ms_per_client"] = round(1000 * rec["server_cpu_s"] / args.clients, 3)
        if server.proc.poll() is not None:
            raise RuntimeError(f"the uWSGI master exited ({server.proc.returncode})")
    except Exception as exc:
        rec["error"] = f"{type(exc).__name__}: {exc}"
        rec["log_tail"] = server.log_tail()
    finally:
        for pipe in pipes:
            with contextlib.suppress(Exception):
                pipe.close()
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.kill()
                process.join(5)
        server.stop()
        remove_hub(hub_name)
    return rec


def analyse(members: list[dict[str, Any]], t_hup: float, clients: int) -> dict[str, Any]:
    """The storm's figures from every client's record."""

    def since(values: list[float | None]) -> list[float]:
        return sorted(v - t_hup for v in values if v is not None)

    reopened = since([m["reopened"] for m in members])
    after = since([m["after"] for m in members])
    scheduled = since(
        [m["closed"] + m["delay"] for m in members if m["closed"] and m["delay"] is not None]
    )
    closed = since([m["closed"] for m in members])
    buckets: dict[int, int] = {}
    for t in reopened:
        buckets[int(t / BUCKET)] = buckets.get(int(t / BUCKET), 0) + 1
    scheduled_buckets: dict[int, int] = {}
    for t in scheduled:
        scheduled_buckets[int(t / BUCKET)] = scheduled_buckets.get(int(t / BUCKET), 0) + 1
    recovered = [m for m in members if m["recovered"] and m["after"] is not None]
    codes: dict[str, int] = {}
    for m in members:
        codes[str(m["code"])] = codes.get(str(m["code"]), 0) + 1
    top = max(buckets.values()) if buckets else 0
    scheduled_top = max(scheduled_buckets.values()) if scheduled_buckets else 0

    def pct(values: list[float], q: float) -> float | None:
        return round(bl.percentile(values, q), 3) if values else None

    return {
        "close_codes": codes,
        "closed_s": {"first": pct(closed, 0), "last": pct(closed, 100)},
        "back": len(reopened),
        "recovered": len(recovered),
        "not_recovered": sum(1 for m in members if m["recovered"] is False),
        "lost": sum(1 for m in members if m["after_count"] == 0),
        "duplicated": sum(1 for m in members if m["after_count"] > 1 or m["before_count"] > 1),
        "extra_connections": sum(m["connections"] - 2 for m in members if m["connections"] > 2),
        "all_back_s": pct(reopened, 100) if len(reopened) == clients else None,
        "all_recovered_s": pct(after, 100) if len(recovered) == clients else None,
        "back_p50_s": pct(reopened, 50),
        "back_p99_s": pct(reopened, 99),
        "recovered_p50_s": pct(after, 50),
        "recovered_p99_s": pct(after, 99),
        "peak_bucket_share": round(top / max(1, clients), 4),
        "peak_bucket_at_s": round(BUCKET * max(buckets, key=lambda k: buckets[k]), 1)
        if buckets
        else None,
        "scheduled_peak_bucket_share": round(scheduled_top / max(1, clients), 4),
        "histogram_100ms": {f"{BUCKET * k:.1f}": v for k, v in sorted(buckets.items())},
        "scheduled_histogram_100ms": {
            f"{BUCKET * k:.1f}": v for k, v in sorted(scheduled_buckets.items())
        },
    }


def failed(rec: dict[str, Any]) -> bool:
    return (
        "error" in rec
        or rec.get("recovered") != rec["clients"]
        or bool(rec.get("lost"))
        or bool(rec.get("duplicated"))
    )


def markdown(rec: dict[str, Any]) -> str:
    if "error" in rec:
        what = f"reconnect storm, {rec['clients']} clients, {rec['variant']}"
        return f"| {what} | failed: {rec['error']} |"
    return (
        f"| reconnect storm, {rec['clients']} clients on one worker, {rec['variant']} "
        f"| all back {rec['all_back_s']} s, all recovered {rec['all_recovered_s']} s "
        f"(p50 {rec['recovered_p50_s']} s) | server CPU {rec['server_cpu_s']} s "
        f"({rec['server_cpu_ms_per_client']} ms/client) | busiest 100 ms: "
        f"{100 * rec['scheduled_peak_bucket_share']:.1f}% of the clients' attempts, "
        f"{100 * rec['peak_bucket_share']:.1f}% of the handshakes done "
        f"| recovered {rec['recovered']}, "
        f"lost {rec['lost']}, duplicated {rec['duplicated']} |"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--clients", type=int, default=None, help="clients (default 10000; --quick 1000)"
    )
    ap.add_argument("--quick", action="store_true", help="1000 clients, 2 client processes")
    ap.add_argument("--rooms", type=int, default=100)
    ap.add_argument("--client-processes", type=int, default=None, help="default 4 (--quick 2)")
    ap.add_argument("--no-jitter", action="store_true", help="run the no-jitter variant only")
    ap.add_argument("--variants", default="jitter,no-jitter")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--restart-delay", type=float, default=1.0, help="the client's, s")
    ap.add_argument(
        "--listen", type=int, default=None,
        help="uWSGI --listen, the backlog (default: clients + 100, capped by somaxconn)",
    )  # fmt: skip
    ap.add_argument("--batch", type=int, default=100, help="handshakes in flight per process")
    ap.add_argument("--timeout", type=float, default=120.0, help="bound of each wait, s")
    args = ap.parse_args(argv)
    args.clients = args.clients or (1000 if args.quick else 10000)
    args.client_processes = args.client_processes or (2 if args.quick else 4)
    variants = (
        ["no-jitter"]
        if args.no_jitter
        else [v.strip() for v in args.variants.split(",") if v.strip()]
    )
    if set(variants) - {"jitter", "no-jitter"}:
        ap.error("--variants: jitter, no-jitter")
    somaxconn = 4096
    with contextlib.suppress(OSError), open("/proc/sys/net/core/somaxconn") as f:
        somaxconn = int(f.read())
    # uWSGI refuses a backlog over the kernel's cap.
    args.listen = min(args.listen or args.clients + 100, somaxconn)
    soft, _ = bl.raise_fd_limit(args.clients + 2048)  # the server inherits it
    if soft < args.clients + 1024:
        print(f"warning: open-file limit {soft} is low for {args.clients} clients", file=sys.stderr)
    stamp = bl.timestamp()
    runs = []
    for rnd in range(1, args.rounds + 1):
        for variant in variants:
            print(f"round {rnd}, {variant}: {args.clients} clients ...", flush=True)
            rec = run_one(variant, rnd, args, stamp)
            runs.append(rec)
            print("  " + (rec.get("error") or markdown(rec)), flush=True)
    headers = [
        "variant", "round", "back s", "recovered s", "p50 s", "p99 s", "server CPU s",
        "attempts peak", "accepted peak", "recovered", "lost", "dup",
    ]  # fmt: skip
    rows = [
        [
            r["variant"],
            str(r["round"]),
            str(r.get("all_back_s")),
            str(r.get("all_recovered_s")),
            str(r.get("recovered_p50_s")),
            str(r.get("recovered_p99_s")),
            str(r.get("server_cpu_s")),
            f"{100 * r.get('scheduled_peak_bucket_share', 0):.1f}%",
            f"{100 * r.get('peak_bucket_share', 0):.1f}%",
            str(r.get("recovered")),
            str(r.get("lost")),
            str(r.get("duplicated")),
        ]
        for r in runs
    ]
    print()
    print(bl.format_table(headers, rows))
    print()
    for r in runs:
        print(markdown(r))
    data = {
        "benchmark": "reconnect_storm",
        "args": vars(args),
        "environment": bl.environment_info(),
        "git": bl.git_describe(),
        "runs": runs,
    }
    path = bl.write_json("reconnect-storm", data, stamp)
    print(f"\nJSON: {bl.relpath(path)}")
    warning = bl.code_changed_warning(runs, CODE_UNDER_TEST)
    if warning:
        print(warning)
    return 1 if any(failed(r) for r in runs) or warning else 0


if __name__ == "__main__":
    sys.exit(main())
