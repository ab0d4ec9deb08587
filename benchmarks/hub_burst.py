#!/usr/bin/env python3
"""Burst benchmark of the local hub: many publishers at once, across several workers.

uWSGI runs ``benchmarks/apps/flask_websocket_broadcast.py`` with
``--processes W`` (default 4) and the ``local://`` hub, all workers pinned to
core 1. The client (picows on uvloop, core 0) opens S subscribers on every
worker (``/sub``, room "bench") and P publishers (``/pub``, default 50,
spread over the workers as the kernel accepts them); then every publisher
sends K messages back to back, all at the same moment. Each message is
broadcast by the worker that received it (``websocket.broadcast(...,
room="bench")``), so each worker has about P/W handlers publishing at once,
and the hub carries every broadcast to the other W-1 workers.

Measured, per run: broadcasts per second (P*K broadcasts from the first send
to the moment every subscriber has every message), deliveries per second,
server CPU per broadcast (user+system of the workers), and for each
subscriber: messages lost, duplicated or out of order per publisher, and
connections the server closed (a publisher whose ``broadcast()`` raised is
closed with 1011).

``--baseline REF`` also runs the code of a git commit (exported with ``git
archive`` to a temporary directory), interleaved with the working tree's
(baseline, current, baseline, current...), for before/after figures from one
run::

    python benchmarks/hub_burst.py                   # the working tree, 3 rounds
    python benchmarks/hub_burst.py --baseline HEAD~5 # and the code of HEAD~5

Writes ``benchmarks/results/hub-burst-<timestamp>.json``; exits non-zero if
the working tree's code lost, duplicated or reordered anything, or closed a
connection.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib as bl

try:
    import picows
    import uvloop  # noqa: F401
except ImportError as exc:  # pragma: no cover
    sys.exit(f"missing benchmark dependency ({exc}); pip install -r benchmarks/requirements.txt")

TEXT = picows.WSMsgType.TEXT
CLOSE = picows.WSMsgType.CLOSE

APP = "benchmarks.apps.flask_websocket_broadcast:app"
CODE_UNDER_TEST = ("flask_websocket", os.path.join("benchmarks", "apps"))
CONNECT_TIMEOUT = 15.0
STALL_TIMEOUT = 5.0  # no delivery for this long once the burst is sent: stop waiting


class Tally:
    """What the subscribers of one run received."""

    def __init__(self, publishers: int, per_publisher: int, subscribers: int) -> None:
        self.publishers = publishers
        self.per_publisher = per_publisher
        self.expected = publishers * per_publisher * subscribers
        self.delivered = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.server_closes = 0
        self.closing = False
        self.last_delivery = 0.0
        self.done = asyncio.Event()


class Subscriber(picows.WSListener):
    """Counts every broadcast; checks each publisher's messages come once, in order."""

    def __init__(self, tally: Tally) -> None:
        super().__init__()
        self.tally = tally
        self.pid = 0
        self.joined: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.next_seq = [0] * tally.publishers
        self.seen = [bytearray(tally.per_publisher) for _ in range(tally.publishers)]

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        tally = self.tally
        if frame.msg_type is CLOSE:
            if not tally.closing:
                tally.server_closes += 1
            return
        if frame.msg_type is not TEXT:
            return
        data = frame.get_payload_as_bytes()
        if data.startswith(b"joined "):
            self.pid = int(data[7:])
            if not self.joined.done():
                self.joined.set_result(self.pid)
            return
        publisher, seq = int(data[:3]), int(data[4:10])
        seen = self.seen[publisher]
        if seen[seq]:
            tally.duplicates += 1
            return
        seen[seq] = 1
        if seq != self.next_seq[publisher]:
            tally.out_of_order += 1
        self.next_seq[publisher] = seq + 1
        tally.delivered += 1
        tally.last_delivery = time.monotonic()
        if tally.delivered == tally.expected:
            tally.done.set()


class Publisher(picows.WSListener):
    """Sends when told; counts the server closing it."""

    def __init__(self, tally: Tally) -> None:
        super().__init__()
        self.tally = tally
        self.ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        if frame.msg_type is CLOSE:
            if not self.tally.closing:
                self.tally.server_closes += 1
        elif frame.msg_type is TEXT:
            data = frame.get_payload_as_bytes()
            if data.startswith(b"ready ") and not self.ready.done():
                self.ready.set_result(int(data[6:]))


async def connect(server: bl.Server, path: str, factory) -> tuple:
    return await asyncio.wait_for(
        picows.ws_connect(factory, f"ws://{bl.HOST}:{server.port}{path}"), CONNECT_TIMEOUT
    )


async def run_client(server: bl.Server, args) -> dict:
    subscribers_total = args.subscribers * args.workers
    tally = Tally(args.publishers, args.per_publisher, subscribers_total)
    per_pid: dict = {}
    subs: list = []
    for _ in range(subscribers_total * 50):  # bounded: the kernel spreads the connections
        if len(subs) == subscribers_total:
            break
        transport, listener = await connect(server, "/sub", lambda: Subscriber(tally))
        pid = await asyncio.wait_for(listener.joined, CONNECT_TIMEOUT)
        if per_pid.get(pid, 0) >= args.subscribers:
            listener.tally = Tally(args.publishers, args.per_publisher, 1)  # off the count
            transport.disconnect(graceful=False)  # that worker has its share: try again
            continue
        per_pid[pid] = per_pid.get(pid, 0) + 1
        subs.append(transport)
    if len(subs) < subscribers_total:
        raise RuntimeError(f"subscribers did not spread over the workers: {per_pid}")
    pubs = []
    pub_pids: dict = {}
    for _ in range(args.publishers):
        transport, listener = await connect(server, "/pub", lambda: Publisher(tally))
        pid = await asyncio.wait_for(listener.ready, CONNECT_TIMEOUT)
        pub_pids[pid] = pub_pids.get(pid, 0) + 1
        pubs.append(transport)
    await asyncio.sleep(0.5)  # joins and hellos settle
    padding = b"x" * max(0, args.size - 11)
    bursts = [
        [b"%03d %06d " % (p, seq) + padding for seq in range(args.per_publisher)]
        for p in range(args.publishers)
    ]
    cpu0 = server.worker_cpu()
    started = time.monotonic()
    for transport, messages in zip(pubs, bursts):
        for message in messages:
            transport.send(TEXT, message)
    while not tally.done.is_set():
        try:
            await asyncio.wait_for(tally.done.wait(), 0.5)
        except asyncio.TimeoutError:
            last = tally.last_delivery or started
            if time.monotonic() - last > STALL_TIMEOUT:
                break
    finished = tally.last_delivery if tally.delivered else time.monotonic()
    cpu = server.worker_cpu() - cpu0
    tally.closing = True
    for transport in subs + pubs:
        transport.disconnect(graceful=False)
    elapsed = max(finished - started, 1e-9)
    broadcasts = args.publishers * args.per_publisher
    complete_broadcasts = tally.delivered / subscribers_total
    return {
        "subscribers_per_worker": per_pid,
        "publishers_per_worker": pub_pids,
        "seconds": elapsed,
        "broadcasts": broadcasts,
        "broadcasts_per_s": complete_broadcasts / elapsed,
        "deliveries": tally.delivered,
        "expected_deliveries": tally.expected,
        "deliveries_per_s": tally.delivered / elapsed,
        "lost": tally.expected - tally.delivered,
        "duplicates": tally.duplicates,
        "out_of_order": tally.out_of_order,
        "server_closes": tally.server_closes,
        "cpu_us_per_broadcast": cpu / broadcasts * 1e6,
    }


def export_tree(ref: str, directory: str) -> str:
    """The code of commit ``ref`` in ``directory`` (git archive), for the baseline runs."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", ref],
        cwd=bl.REPO_ROOT,
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", directory], input=archive, check=True)
    return subprocess.run(
        ["git", "rev-parse", "--short", ref],
        cwd=bl.REPO_ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def run_one(label: str, code_root: str | None, rnd: int, args, stamp: str) -> dict:
    log = os.path.join(bl.RESULTS_DIR, "logs", f"hub-burst-{stamp}-{label}-r{rnd}.log")
    rec: dict = {"code": label, "round": rnd, "log": bl.relpath(log)}
    server = bl.Server(
        name=label,
        mode="http-socket",
        gevent=args.gevent,
        log_path=log,
        module_spec=APP,
        ws_path="/sub",
        extra_args=["--processes", str(args.workers), "--gevent-early-monkey-patch"],
        extra_env={"WEBSOCKET_HUB_URL": "local://"},
        expect_workers=args.workers,
        code_root=code_root,
    )
    try:
        with server:
            rec["command"] = server.display_argv()
            rec.update(bl.run_uvloop(lambda: run_client(server, args)))
            server.check_alive()
    except Exception as exc:
        rec["error"] = f"{type(exc).__name__}: {exc}"
        rec["log_tail"] = server.log_tail()
    return rec


def summarize(runs: list, label: str) -> dict:
    ok = [r for r in runs if r["code"] == label and "error" not in r]
    if not ok:
        return {}
    out = {"runs": len(ok)}
    for key in ("broadcasts_per_s", "deliveries_per_s", "cpu_us_per_broadcast"):
        values = [r[key] for r in ok]
        out[key] = {"median": bl.median(values), "min": min(values), "max": max(values)}
    for key in ("lost", "duplicates", "out_of_order", "server_closes", "expected_deliveries"):
        out[key] = sum(r[key] for r in ok)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=4, help="uWSGI worker processes (4)")
    ap.add_argument("--publishers", type=int, default=50, help="publishing connections (50)")
    ap.add_argument("--per-publisher", type=int, default=200, help="messages each sends (200)")
    ap.add_argument("--subscribers", type=int, default=25, help="subscribers per worker (25)")
    ap.add_argument("--size", type=int, default=64, help="message size in bytes (64)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    ap.add_argument("--gevent", type=int, default=1000, help="uWSGI --gevent cores (1000)")
    ap.add_argument("--baseline", metavar="REF", help="also run the code of this git commit")
    bl.add_quiet_args(ap, retry_noisy=0)
    args = ap.parse_args(argv)
    if args.publishers > 999 or args.per_publisher > 999999:
        ap.error("at most 999 publishers and 999999 messages each")
    bl.pin_self_to_client_core()
    stamp = bl.timestamp()
    with tempfile.TemporaryDirectory(prefix="hub-burst-") as tmp:
        codes: list = []
        baseline_commit = None
        if args.baseline:
            baseline_commit = export_tree(args.baseline, tmp)
            codes.append((f"baseline {baseline_commit}", tmp))
        codes.append(("current", None))
        runs = []
        for rnd in range(1, args.rounds + 1):
            for label, root in codes:
                print(f"round {rnd}: {label} ...", end=" ", flush=True)
                rec, _ = bl.run_quietest(
                    lambda attempt, label=label, root=root, rnd=rnd: run_one(
                        label, root, rnd, args, stamp
                    ),
                    args,
                    noise=lambda r: 0.0,
                )
                runs.append(rec)
                if "error" in rec:
                    print(f"error: {rec['error']}")
                else:
                    print(
                        f"{rec['broadcasts_per_s']:.0f} broadcasts/s, "
                        f"{rec['lost']} lost, {rec['server_closes']} closed"
                    )
    summary = {label: summarize(runs, label) for label, _ in codes}
    rows = []
    for label, stats in summary.items():
        if not stats:
            rows.append([label, "failed", "", "", "", ""])
            continue
        bps = stats["broadcasts_per_s"]
        rows.append(
            [
                label,
                f"{bps['median']:.0f} ({bps['min']:.0f}-{bps['max']:.0f})",
                f"{stats['deliveries_per_s']['median']:.0f}",
                f"{stats['cpu_us_per_broadcast']['median']:.0f}",
                f"{stats['lost']}/{stats['duplicates']}/{stats['out_of_order']} "
                f"of {stats['expected_deliveries']}",
                str(stats["server_closes"]),
            ]
        )
    print()
    print(
        f"{args.workers} workers, {args.publishers} publishers x {args.per_publisher} messages "
        f"of {args.size} B at once, {args.subscribers} subscribers per worker; "
        f"medians (min-max) of {args.rounds} rounds"
    )
    print(
        bl.format_table(
            [
                "code",
                "broadcasts/s",
                "deliveries/s",
                "CPU us/broadcast",
                "lost/dup/reordered",
                "closed by server",
            ],
            rows,
        )
    )
    path = bl.write_json(
        "hub-burst",
        {
            "args": vars(args),
            "baseline_commit": baseline_commit,
            "environment": bl.environment_info(),
            "code_fingerprint": bl.code_fingerprint(CODE_UNDER_TEST),
            "runs": runs,
            "summary": summary,
        },
        stamp,
    )
    print(f"\nwrote {bl.relpath(path)}")
    current = summary.get("current") or {}
    bad = not current or any(
        current[key] for key in ("lost", "duplicates", "out_of_order", "server_closes")
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
