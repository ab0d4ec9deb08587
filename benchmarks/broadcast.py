#!/usr/bin/env python3
"""Broadcast (fan-out) benchmark: flask-websocket hubs vs naive fan-out on raw uWSGI.

N subscriber connections wait for broadcasts; one publisher connection sends
messages, each of which the server sends on to every subscriber. Servers,
each started fresh under uWSGI + gevent pinned to core 1, run interleaved
(raw, memory, local, redis, raw, memory, ...):

* ``raw``    - naive fan-out on uWSGI's own API (``apps/raw_uwsgi_broadcast.py``):
  a gevent Queue per subscriber greenlet, one worker.
* ``memory`` - flask-websocket, ``WEBSOCKET_HUB_URL=memory://``, one worker.
* ``local``  - flask-websocket, ``local://`` hub, ``--processes 2``.
* ``redis``  - flask-websocket, redis hub (a private redis-server on a free
  port, also on core 1), ``--processes 2``; skipped with a note when
  ``redis-server`` is not on PATH or the hub cannot be imported.

The client (picows on uvloop, this process, core 0) opens the subscribers
(``/sub``: each joins room "bench" and answers "joined <pid>"), spreads them
evenly over the workers when there are several, opens the publisher (``/pub``)
and runs two phases on the same connections:

* ``latency``    - B broadcasts at a fixed rate (default 100 at 10/s), after a
  few warm-up broadcasts: delivery latency p50/p99 from the publisher's send
  to each subscriber's receive (one monotonic clock: same machine).
* ``throughput`` - as fast as deliveries keep up: at most ``--window``
  broadcasts not yet received by every subscriber; deliveries/s and server
  CPU per delivery over ``--duration`` s after ``--warmup`` s.

Every message carries a sequence number and its send timestamp; each
subscriber checks it receives every broadcast once, in order (losses,
duplicates, out-of-order are counted) and byte-for-byte as sent. Server CPU
is user+system of all uWSGI workers (psutil); the redis-server's own CPU is
shown separately. The flask-websocket publisher route answers each broadcast
with the server's clock once ``broadcast()`` returned (server-side fan-out
time), and a timer in the client measures how late the client's event loop
runs: with 10 000 subscribers the single client core is nearly saturated and
part of the subscriber-side latency is the client's own queue.

Usage::

    python benchmarks/broadcast.py [--subscribers 1000] [--rounds 2]
        [--servers raw,memory,local,redis] [--broadcasts 100] [--rate 10]
        [--phases latency,throughput] [--duration 5] [--window 4] [--size 64]

Prints tables (per run, summary, ratios vs raw, targets) and writes
``benchmarks/results/broadcast-<timestamp>.json``. Exit status is non-zero if
a server failed, a delivery was lost, duplicated, reordered or garbled, or a
connection dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from array import array

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib as bl
import psutil

try:
    import picows
    import uvloop  # noqa: F401
except ImportError as exc:  # pragma: no cover
    sys.exit(f"missing benchmark dependency ({exc}); pip install -r benchmarks/requirements.txt")

TEXT = picows.WSMsgType.TEXT
CLOSE = picows.WSMsgType.CLOSE
PING = picows.WSMsgType.PING
PONG = picows.WSMsgType.PONG

monotonic_ns = time.monotonic_ns

FWS_APP = "benchmarks.apps.flask_websocket_broadcast:app"
RAW_APP = "benchmarks.apps.raw_uwsgi_broadcast:app"
RAW_DIRECT_APP = "benchmarks.apps.raw_uwsgi_direct_broadcast:app"
#: The room's history bound in the history-on variants (messages kept).
HISTORY_SIZE = 1000

# name -> definition
SERVER_DEFS = {
    "raw": {
        "label": "raw uWSGI naive",
        "module": RAW_APP,
        "processes": 1,
        "hub": None,
    },
    "raw-direct": {
        "label": "raw uWSGI direct",
        "module": RAW_DIRECT_APP,
        "processes": 1,
        "hub": None,
    },
    "memory": {
        "label": "fws memory x1",
        "module": FWS_APP,
        "processes": 1,
        "hub": "memory://",
    },
    "memory-nopings": {
        "label": "fws memory x1 no pings",
        "module": FWS_APP,
        "processes": 1,
        "hub": "memory://",
        "ping_interval": "none",
    },
    "memory-rawloop": {  # a diagnostic: raw uWSGI's write loop in the library's worker
        "label": "fws memory raw loop",
        "module": FWS_APP,
        "processes": 1,
        "hub": "memory://",
        "ping_interval": "none",
        "fanout": "raw-loop",
    },
    "memory-rawloop-sorted": {  # the same, the fds in ascending order
        "label": "fws memory raw loop sorted",
        "module": FWS_APP,
        "processes": 1,
        "hub": "memory://",
        "ping_interval": "none",
        "fanout": "raw-loop-sorted",
    },
    "memory-history": {
        "label": "fws memory x1 hist",
        "module": FWS_APP,
        "processes": 1,
        "hub": "memory://",
        "history": HISTORY_SIZE,
    },
    "local": {
        "label": "fws local x2",
        "module": FWS_APP,
        "processes": 2,
        "hub": "local://",
    },
    "local-history": {
        "label": "fws local x2 hist",
        "module": FWS_APP,
        "processes": 2,
        "hub": "local://",
        "history": HISTORY_SIZE,
    },
    "redis": {
        "label": "fws redis x2",
        "module": FWS_APP,
        "processes": 2,
        "hub": "redis",
    },
}
ORDER = [
    "raw", "raw-direct", "memory", "memory-nopings", "memory-rawloop", "memory-rawloop-sorted",
    "memory-history", "local", "local-history",
    "redis",
]  # fmt: skip
BASELINE = "raw"

# Code whose change during the benchmark would mix versions between runs.
CODE_UNDER_TEST = (
    "flask_websocket",
    os.path.join("benchmarks", "apps", "flask_websocket_broadcast.py"),
    os.path.join("benchmarks", "apps", "raw_uwsgi_broadcast.py"),
    os.path.join("benchmarks", "apps", "raw_uwsgi_direct_broadcast.py"),
)

CONNECT_TIMEOUT = 15.0
JOIN_TIMEOUT = 15.0
DRAIN_TIMEOUT = 15.0  # after the last send of a phase, wait at most this for deliveries
STALL_TIMEOUT = 5.0  # throughput: no broadcast completed for this long = stalled
# Throughput phase: deliveries in flight by default (window = this / subscribers),
# enough that the server always has work queued and the client reads several
# messages per wake-up; with a few broadcasts in flight both sides go idle
# between them and the figures measure wake-ups instead of fan-out.
WINDOW_DELIVERIES = 50000
# Descriptors a worker uses besides its connections (listen socket, stdio,
# master pipes, hub sockets, ...: about 10 here), with some margin.
FD_OVERHEAD = 24
CLIENT_BUSY = 0.9

# Targets the brief asks to report against.
TARGET_CPU_US = 8.0
TARGET_P99_MS = 250.0
TARGET_P99_N = 10000
TARGET_REDIS_P99_RATIO = 1.5

_LOG_PROBLEM_RE = re.compile(
    r"Traceback|Error|Exception|WARNING:(?!.*running uWSGI as root)|dropped|"
    r"could not|timeout|timed out|refused|queue full|is full|DAMN|signal 9|killed|"
    r"HARAKIRI|listen queue",
    re.IGNORECASE,
)
_LOG_BENIGN = (
    "running as root",
    "WARNING: you are running uWSGI as root",
    "*** WARNING: you are running uWSGI without its master process manager ***",
    "!!! no internal routing support",
    "your memory page size",
    "detected max file descriptor number",
    "your processes number limit",
    "your mercy for graceful operations",
    "SIGINT/SIGQUIT received",
    "goodbye to uWSGI",
    "gracefully (RE)spawned",
    "uwsgi socket 0 bound",
    "Brutally killing worker",
    "thunder lock",
    "Memory overcommit must be enabled",
)


# ---------------------------------------------------------------------------
# client state


class State:
    """Everything the connections of one run share."""

    def __init__(self, n_subs: int, size: int):
        self.n_subs = n_subs
        self.size = size
        self.payloads: list[bytes] = []
        self.index: dict = {}  # payload -> seq (payloads are unique: they hold the seq)
        self.t_send = array("q")
        self.got: list[int] = []  # unique deliveries per seq
        self.n_sent = 0
        self.completed = 0  # seqs received by every subscriber
        self.pub_transport = None
        # recording: deliveries of seq >= rec_lo while `recording`
        self.recording = False
        self.rec_lo = 0
        self.lat: dict = {}  # worker pid -> array of latencies (ns)
        self.pub_pid = 0
        self.pub_ready: asyncio.Future | None = None
        self.fanout = array("q")  # server-side fan-out times (ns), from the "done" acks
        self.acks = 0
        self.win_count = 0
        # phase control
        self.tp_running = False
        self.wait_completed = None  # int: set `event` once completed reaches it
        self.event: asyncio.Event | None = None
        # anomalies
        self.closing = False
        self.garbled = 0
        self.garbled_examples: list = []
        self.unexpected_frames = 0
        self.unexpected_disconnects = 0
        self.server_closes = 0
        self.close_examples: list = []
        self.fragmented = 0

    def send(self) -> None:
        seq = self.n_sent
        t = monotonic_ns()
        head = b"%08d %019d " % (seq, t)
        payload = head + b"x" * (self.size - len(head)) if self.size > len(head) else head
        self.payloads.append(payload)
        self.index[payload] = seq
        self.t_send.append(t)
        self.got.append(0)
        self.n_sent = seq + 1
        self.pub_transport.send(TEXT, payload)

    def on_complete(self) -> None:
        self.completed += 1
        if self.tp_running:
            self.send()
        w = self.wait_completed
        if w is not None and self.completed >= w:
            self.wait_completed = None
            self.event.set()

    def note_close(self, frame) -> None:
        if not self.closing:
            self.server_closes += 1
            if len(self.close_examples) < 3:
                with contextlib.suppress(Exception):
                    self.close_examples.append(
                        f"{frame.get_close_code()} {frame.get_close_message()[:80]!r}"
                    )


class SubListener(picows.WSListener):
    def __init__(self, st: State):
        super().__init__()
        self.st = st
        self.transport = None
        self.last = -1
        self.count = 0
        self.dups = 0
        self.ooo = 0
        self.missing: set | None = None
        self.pid = 0
        self.joined: asyncio.Future | None = None

    def on_ws_connected(self, transport):
        self.transport = transport

    def on_ws_frame(self, transport, frame):
        now = monotonic_ns()
        st = self.st
        mt = frame.msg_type
        if mt is not TEXT or not frame.fin:
            self._other(frame, mt)
            return
        data = frame.get_payload_as_bytes()
        # one lookup checks the message is byte-for-byte one that was sent
        seq = st.index.get(data)
        if seq is None:
            self._control(data)
            return
        last = self.last
        if seq == last + 1:
            self.last = seq
        elif seq > last:
            if self.missing is None:
                self.missing = set()
            self.missing.update(range(last + 1, seq))
            self.last = seq
        elif self.missing and seq in self.missing:
            self.missing.discard(seq)
            self.ooo += 1
        else:
            self.dups += 1
            return
        self.count += 1
        if st.recording and seq >= st.rec_lo:
            st.lat[self.pid].append(now - st.t_send[seq])
            st.win_count += 1
        got = st.got
        n = got[seq] + 1
        got[seq] = n
        if n == st.n_subs:
            st.on_complete()

    def _control(self, data: bytes) -> None:
        if data.startswith(b"joined "):
            with contextlib.suppress(ValueError):
                self.pid = int(data[7:])
            if self.joined is not None and not self.joined.done():
                self.joined.set_result(self.pid)
            return
        self.st.garbled += 1
        if len(self.st.garbled_examples) < 5:
            self.st.garbled_examples.append(repr(data[:64]))

    def _other(self, frame, mt) -> None:
        st = self.st
        if mt is CLOSE:
            st.note_close(frame)
            return
        if mt is PING or mt is PONG:
            return
        if mt is TEXT or mt is picows.WSMsgType.CONTINUATION:
            st.fragmented += 1  # the server never fragments these small messages
            return
        st.unexpected_frames += 1

    def on_ws_disconnected(self, transport):
        if not self.st.closing:
            self.st.unexpected_disconnects += 1
        if self.joined is not None and not self.joined.done():
            self.joined.set_exception(ConnectionError("disconnected before joining"))


class PubListener(picows.WSListener):
    def __init__(self, st: State):
        super().__init__()
        self.st = st

    def on_ws_frame(self, transport, frame):
        mt = frame.msg_type
        st = self.st
        if mt is CLOSE:
            st.note_close(frame)
        elif mt is TEXT and frame.get_payload_as_bytes().startswith(b"done "):
            # "done <seq> <server monotonic ns>": broadcast() returned then
            try:
                _, seq_b, t_b = frame.get_payload_as_bytes().split(b" ")
                seq, t_done = int(seq_b), int(t_b)
            except ValueError:
                st.unexpected_frames += 1
                return
            st.acks += 1
            if st.recording and st.rec_lo <= seq < st.n_sent:
                st.fanout.append(t_done - st.t_send[seq])
        elif mt is TEXT and frame.get_payload_as_bytes().startswith(b"ready "):
            with contextlib.suppress(ValueError):
                st.pub_pid = int(frame.get_payload_as_bytes()[6:])
            if st.pub_ready is not None and not st.pub_ready.done():
                st.pub_ready.set_result(st.pub_pid)
        elif mt is not PING and mt is not PONG:
            st.unexpected_frames += 1

    def on_ws_disconnected(self, transport):
        if not self.st.closing:
            self.st.unexpected_disconnects += 1


# ---------------------------------------------------------------------------
# redis-server


class RedisServer:
    """A private redis-server on a free loopback port, pinned to the server core."""

    def __init__(self, log_path: str):
        self.binary = shutil.which("redis-server")
        self.log_path = log_path
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.ps: psutil.Process | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"redis://{bl.HOST}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.port = bl.free_port()
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        argv = [
            "taskset", "-c", str(bl.SERVER_CORE), self.binary,
            "--port", str(self.port), "--bind", bl.HOST,
            "--save", "", "--appendonly", "no", "--daemonize", "no",
            "--dir", os.path.dirname(self.log_path),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise bl.ServerError(f"redis-server exited with {self.proc.returncode}")
            if self._ping():
                self.ps = psutil.Process(self.proc.pid)
                return
            time.sleep(0.05)
        raise bl.ServerError(f"redis-server did not answer PING within {timeout:g}s")

    def _ping(self) -> bool:
        try:
            with socket.create_connection((bl.HOST, self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def cpu(self) -> float:
        if self.ps is None:
            return 0.0
        try:
            t = self.ps.cpu_times()
            return t.user + t.system
        except psutil.Error:
            return 0.0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None


def redis_unavailable() -> str | None:
    """Why the redis server cannot run, or None."""
    if not shutil.which("redis-server"):
        return "redis-server is not on PATH"
    probe = subprocess.run(
        [sys.executable, "-c", "import flask_websocket.hubs.redis, redis"],
        check=False,
        cwd=bl.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return f"the redis hub cannot be imported ({last})"
    return None


# ---------------------------------------------------------------------------
# one run


def core_times(core: int) -> dict:
    """CPU-seconds of one core since boot, by kind (user, system, softirq, idle...)."""
    return psutil.cpu_times(percpu=True)[core]._asdict()


async def open_subscribers(server: bl.Server, st: State, args, processes: int) -> dict:
    """Open N subscribers, each joined; spread evenly over `processes` workers."""
    sem = asyncio.Semaphore(args.batch)
    subs: list = []
    errors: list = []
    per_pid: dict = {}
    target = math.ceil(args.subscribers / processes)
    rebalanced = 0
    loop = asyncio.get_running_loop()

    async def connect():
        transport, listener = await asyncio.wait_for(
            server.ws_connect(
                lambda: SubListener(st),
                "/sub",
                websocket_handshake_timeout=CONNECT_TIMEOUT,
                read_buffer_init_size=4096,
            ),
            CONNECT_TIMEOUT + 1,
        )
        listener.joined = loop.create_future()
        if listener.pid:  # the ack may have come with the handshake
            listener.joined.set_result(listener.pid)
        try:
            await asyncio.wait_for(listener.joined, JOIN_TIMEOUT)
        except BaseException:
            transport.disconnect(graceful=False)
            raise
        return transport, listener

    async def one():
        nonlocal rebalanced
        async with sem:
            try:
                for attempt in range(args.balance_attempts + 1):
                    transport, listener = await connect()
                    pid = listener.pid
                    if (
                        processes == 1
                        or per_pid.get(pid, 0) < target
                        or attempt == args.balance_attempts
                    ):
                        per_pid[pid] = per_pid.get(pid, 0) + 1
                        subs.append((transport, listener))
                        return
                    # that worker has its share: close and connect again
                    rebalanced += 1
                    listener.st = _Discard  # its frames and close no longer count
                    transport.send_close(picows.WSCloseCode.OK)
                    try:
                        await asyncio.wait_for(transport.wait_disconnected(), 5)
                    except asyncio.TimeoutError:
                        transport.disconnect(graceful=False)
            except Exception as exc:
                errors.append(exc)

    t0 = time.monotonic()
    try:
        await asyncio.wait_for(
            asyncio.gather(*(one() for _ in range(args.subscribers))), args.open_timeout
        )
    except asyncio.TimeoutError:
        errors.append(TimeoutError(f"opening subscribers took more than {args.open_timeout:g}s"))
    return {
        "subs": subs,
        "errors": errors,
        "per_pid": per_pid,
        "rebalanced": rebalanced,
        "open_seconds": time.monotonic() - t0,
    }


class _DiscardState:
    """Stand-in state for connections closed while rebalancing."""

    closing = True
    n_sent = 0
    recording = False
    garbled_examples: list = []
    index: dict = {}

    def __getattr__(self, name):
        return 0

    def note_close(self, frame):
        pass


_Discard = _DiscardState()


async def run_client(server: bl.Server, args, processes: int, redis: RedisServer | None) -> dict:
    loop = asyncio.get_running_loop()
    st = State(args.subscribers, args.size)
    st.event = asyncio.Event()
    out: dict = {}
    # peers.py gives servers that fall behind longer to deliver the last ones
    drain_timeout = getattr(args, "drain_timeout", DRAIN_TIMEOUT)

    opened = await open_subscribers(server, st, args, processes)
    subs = opened["subs"]
    out["open_seconds"] = opened["open_seconds"]
    out["subscribers_per_worker"] = {str(k): v for k, v in sorted(opened["per_pid"].items())}
    out["rebalanced_connections"] = opened["rebalanced"]

    async def close_all(extra=()):
        st.closing = True
        transports = [t for t, _ in subs] + list(extra)
        out.update(await bl.close_transports(transports, args.close_timeout))

    if opened["errors"]:
        await close_all()
        raise bl.ServerError(
            f"{server.name}: {len(opened['errors'])}/{args.subscribers} subscribers failed "
            f"to connect and join: {opened['errors'][0]!r}",
            server.log_tail(),
        )

    pub_transport, _ = await asyncio.wait_for(
        server.ws_connect(
            lambda: PubListener(st),
            "/pub",
            websocket_handshake_timeout=CONNECT_TIMEOUT,
        ),
        CONNECT_TIMEOUT + 1,
    )
    st.pub_transport = pub_transport
    if not st.pub_pid:  # the app says which worker holds the publisher
        st.pub_ready = loop.create_future()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(st.pub_ready, JOIN_TIMEOUT)
    out["publisher_worker"] = st.pub_pid
    await asyncio.sleep(0.5)  # let the server settle after the connection storm

    def snapshot() -> dict:
        return {
            "t": time.monotonic(),
            "worker_cpu": server.worker_cpu(),
            "master_cpu": server.master_cpu(),
            "redis_cpu": redis.cpu() if redis else 0.0,
            "client_cpu": bl.process_cpu_self(),
            "machine_busy": bl.machine_busy_cpu(),
            "machine_steal": bl.machine_steal_cpu(),
            "core_idle": bl.core_idle_cpu(),
            "server_core": core_times(bl.SERVER_CORE),
            "client_core": core_times(bl.CLIENT_CORE),
        }

    pids = sorted({lst.pid for _, lst in subs})

    def new_lat() -> dict:
        return {pid: array("q") for pid in pids}

    def lat_summary(values) -> dict:
        v = sorted(values)
        return {
            "deliveries": len(v),
            "p50": bl.percentile(v, 50) / 1e6,
            "p99": bl.percentile(v, 99) / 1e6,
            "max": v[-1] / 1e6 if v else float("nan"),
        }

    def window_stats(s: dict, e: dict, deliveries: int, lat_by_pid: dict) -> dict:
        lat = array("q")
        for a in lat_by_pid.values():
            lat.extend(a)
        by_worker = {}
        if len(lat_by_pid) > 1:
            for pid, a in lat_by_pid.items():
                key = "publisher's worker" if pid == st.pub_pid else f"worker {pid}"
                by_worker[key] = lat_summary(a)
        window = e["t"] - s["t"]
        worker = e["worker_cpu"] - s["worker_cpu"]
        master = e["master_cpu"] - s["master_cpu"]
        rcpu = e["redis_cpu"] - s["redis_cpu"]
        client = e["client_cpu"] - s["client_cpu"]
        other = (e["machine_busy"] - s["machine_busy"]) - worker - master - rcpu - client
        lat_s = sorted(lat)
        core = {
            k: (e["server_core"][k] - s["server_core"][k]) / window if window > 0 else 0.0
            for k in e["server_core"]
        }
        core_busy = 1.0 - core.get("idle", 0.0) - core.get("iowait", 0.0) - core.get("steal", 0.0)
        client_core = {
            k: (e["client_core"][k] - s["client_core"][k]) / window if window > 0 else 0.0
            for k in e["client_core"]
        }
        return {
            "deliveries": deliveries,
            "window_s": window,
            "deliveries_per_s": deliveries / window if window > 0 else 0.0,
            "latency_ms": {
                "p50": bl.percentile(lat_s, 50) / 1e6,
                "p90": bl.percentile(lat_s, 90) / 1e6,
                "p99": bl.percentile(lat_s, 99) / 1e6,
                "p99.9": bl.percentile(lat_s, 99.9) / 1e6,
                "max": lat_s[-1] / 1e6 if lat_s else float("nan"),
                "mean": sum(lat_s) / len(lat_s) / 1e6 if lat_s else float("nan"),
            },
            "latency_ms_by_worker": by_worker,
            # publisher send -> broadcast() returned in the publisher's worker
            # (flask-websocket only): the server side alone, without the time
            # frames wait for the client to read them
            "server_fanout_ms": lat_summary(st.fanout) if st.fanout else None,
            "worker_cpu_s": worker,
            "master_cpu_s": master,
            "redis_cpu_s": rcpu,
            "client_cpu_s": client,
            "worker_cpu_util": worker / window if window > 0 else 0.0,
            "redis_cpu_util": rcpu / window if window > 0 else 0.0,
            "client_cpu_util": client / window if window > 0 else 0.0,
            "other_cpu_util": max(0.0, other / window) if window > 0 else 0.0,
            "server_core_idle": bl.core_idle_share(
                s["core_idle"], e["core_idle"], bl.SERVER_CORE, window
            ),
            "client_core_idle": bl.core_idle_share(
                s["core_idle"], e["core_idle"], bl.CLIENT_CORE, window
            ),
            "steal_cpu_util": (e["machine_steal"] - s["machine_steal"]) / window
            if window > 0
            else 0.0,
            # where the server core's time went (user, system, softirq, ...), in
            # cores: softirq is mostly loopback TCP, which no process is charged for
            "server_core_util": core,
            "client_core_util": client_core,
            "server_core_busy_util": core_busy,
            "server_core_us_per_delivery": core_busy * window / deliveries * 1e6
            if deliveries
            else float("nan"),
            "worker_cpu_us_per_delivery": worker / deliveries * 1e6 if deliveries else float("nan"),
            "server_cpu_us_per_delivery": (worker + master + rcpu) / deliveries * 1e6
            if deliveries
            else float("nan"),
            "deliveries_per_worker_cpu_s": deliveries / worker if worker > 0 else float("nan"),
        }

    async def wait_completed(n: int, timeout: float) -> bool:
        if st.completed >= n:
            return True
        st.event.clear()
        st.wait_completed = n
        try:
            await asyncio.wait_for(st.event.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            st.wait_completed = None
            return False

    phases: dict = {}
    lags: list = []

    async def lag_probe():
        # how late the client's event loop wakes up: frames wait that long too
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.01)
            lags.append(time.monotonic() - before - 0.01)

    def lag_stats() -> dict:
        v = sorted(lags)
        lags.clear()
        return {
            "samples": len(v),
            "p50_ms": bl.percentile(v, 50) * 1e3,
            "p99_ms": bl.percentile(v, 99) * 1e3,
            "max_ms": v[-1] * 1e3 if v else float("nan"),
        }

    probe = asyncio.ensure_future(lag_probe())
    try:
        if "latency" in args.phases:
            # warm-up broadcasts at the same rate, then B measured ones
            interval = 1.0 / args.rate
            first = st.n_sent
            for _ in range(args.warmup_broadcasts):
                st.send()
                await asyncio.sleep(interval)
            ok = await wait_completed(st.n_sent, drain_timeout)
            st.rec_lo = st.n_sent
            st.lat = new_lat()
            st.fanout = array("q")
            st.win_count = 0
            s = snapshot()
            lags.clear()
            st.recording = True
            t0 = loop.time()
            done = loop.create_future()
            sent = 0

            def tick():
                nonlocal sent
                st.send()
                sent += 1
                if sent < args.broadcasts:
                    loop.call_at(t0 + sent * interval, tick)
                elif not done.done():
                    done.set_result(None)

            tick()
            await asyncio.wait_for(done, args.broadcasts * interval + 30)
            send_span = loop.time() - t0
            drained = await wait_completed(st.n_sent, drain_timeout)
            e = snapshot()
            st.recording = False
            res = window_stats(s, e, st.win_count, st.lat)
            res.update(
                {
                    "broadcasts": args.broadcasts,
                    "warmup_broadcasts": args.warmup_broadcasts,
                    "warmup_complete": ok,
                    "rate_per_s": args.rate,
                    "achieved_rate_per_s": (args.broadcasts - 1) / send_span
                    if send_span > 0
                    else float("nan"),
                    "expected_deliveries": args.broadcasts * args.subscribers,
                    "drained": drained,
                    "seq_range": [st.rec_lo, st.n_sent],
                    "seq_range_with_warmup": [first, st.n_sent],
                }
            )
            res["lost"] = sum(args.subscribers - st.got[q] for q in range(first, st.n_sent))
            res["client_loop_lag"] = lag_stats()
            phases["latency"] = res

        if "throughput" in args.phases:
            first = st.n_sent
            st.rec_lo = 0
            st.lat = new_lat()
            st.fanout = array("q")
            st.win_count = 0
            st.recording = False
            stalled = False
            marks: dict = {}

            def begin():
                lags.clear()
                marks["s"] = snapshot()
                st.win_count = 0
                st.lat = new_lat()
                st.fanout = array("q")
                st.recording = True

            def end():
                st.recording = False
                st.tp_running = False
                marks["e"] = snapshot()

            st.tp_running = True
            base_completed = st.completed
            for _ in range(args.window):
                st.send()
            t_start = time.monotonic()
            t_begin = t_start + args.warmup
            deadline = t_begin + args.duration
            last_completed, last_progress = st.completed, t_start
            max_lag = 0.0
            # the marks are taken here rather than by timers: the sleeps show
            # how late the event loop runs (max_lag), which timers would hide
            while st.tp_running:
                before = time.monotonic()
                await asyncio.sleep(0.05)
                now = time.monotonic()
                max_lag = max(max_lag, now - before - 0.05)
                if "s" not in marks and now >= t_begin:
                    begin()
                if now >= deadline:
                    break
                if st.completed != last_completed:
                    last_completed, last_progress = st.completed, time.monotonic()
                elif time.monotonic() - last_progress > STALL_TIMEOUT:
                    stalled = True
                    break
                if st.n_sent - first >= args.max_broadcasts:
                    break
            if "e" not in marks:
                if "s" not in marks:
                    begin()
                end()
            drained = await wait_completed(st.n_sent, drain_timeout)
            res = window_stats(marks["s"], marks["e"], st.win_count, st.lat)
            if res["window_s"] < 0.5 * args.duration and not stalled:
                raise bl.ServerError(
                    f"{server.name}: throughput window collapsed to {res['window_s']:.3f} s "
                    f"(client event loop late by up to {max_lag:.2f} s)"
                )
            res.update(
                {
                    "client_loop_max_lag_s": max_lag,
                    "window": args.window,
                    "broadcasts": st.n_sent - first,
                    "broadcasts_completed": st.completed - base_completed,
                    "expected_deliveries": (st.n_sent - first) * args.subscribers,
                    "broadcasts_per_s": res["deliveries_per_s"] / args.subscribers,
                    "stalled": stalled,
                    "drained": drained,
                    "seq_range": [first, st.n_sent],
                }
            )
            res["lost"] = sum(args.subscribers - st.got[q] for q in range(first, st.n_sent))
            res["client_loop_lag"] = lag_stats()
            phases["throughput"] = res
    finally:
        probe.cancel()
        await asyncio.sleep(0.2)
        await close_all([pub_transport])

    listeners = [lst for _, lst in subs]
    received = sum(lst.count for lst in listeners)
    expected = st.n_sent * len(listeners)
    out.update(
        {
            "phases": phases,
            "broadcasts_sent": st.n_sent,
            "expected_deliveries": expected,
            "received_unique": received,
            "lost": expected - received,
            "subscribers_missing_some": sum(1 for lst in listeners if lst.count < st.n_sent),
            "duplicates": sum(lst.dups for lst in listeners),
            "out_of_order": sum(lst.ooo for lst in listeners),
            "garbled": st.garbled,
            "garbled_examples": st.garbled_examples,
            "fragmented": st.fragmented,
            "unexpected_frames": st.unexpected_frames,
            "unexpected_disconnects": st.unexpected_disconnects,
            "server_closes": st.server_closes,
            "close_examples": st.close_examples,
        }
    )
    if out["lost"]:
        # which sequence numbers went missing, for the report
        missing_seqs = [q for q in range(st.n_sent) if st.got[q] < len(listeners)]
        out["seqs_with_losses"] = missing_seqs[:50]
        out["seqs_with_losses_count"] = len(missing_seqs)
    return out


def log_problems(text: str, limit: int = 40) -> list[str]:
    lines = []
    for ln in text.splitlines():
        if any(b in ln for b in _LOG_BENIGN):
            continue
        if _LOG_PROBLEM_RE.search(ln):
            lines.append(ln)
    return lines[:limit]


def run_one(name: str, rnd: int, args, stamp: str, attempt: int = 1) -> dict:
    d = SERVER_DEFS[name]
    suffix = f"-a{attempt}" if attempt > 1 else ""
    base = f"broadcast-{stamp}-n{args.subscribers}-{name}-r{rnd}{suffix}"
    log = os.path.join(bl.RESULTS_DIR, "logs", base + ".log")
    rec: dict = {"server": name, "round": rnd, "log": bl.relpath(log)}
    redis = None
    extra_args = ["--processes", str(d["processes"])]
    env = {}
    if d["hub"] is not None:
        env["WEBSOCKET_HUB_URL"] = d["hub"]
    if d.get("ping_interval"):  # the keepalive's pings (raw uWSGI sends none)
        env["BENCH_PING_INTERVAL"] = d["ping_interval"]
    if d.get("fanout"):
        env["BENCH_FANOUT"] = d["fanout"]
    if d.get("history"):
        env["BENCH_HISTORY_SIZE"] = str(d["history"])
        # a database of the run's own (removed afterwards): no stream left by the last one
        env["BENCH_HUB_NAME"] = base
    try:
        if d["hub"] == "redis":
            redis = RedisServer(os.path.join(bl.RESULTS_DIR, "logs", base + "-redis.log"))
            redis.start()
            env["WEBSOCKET_HUB_URL"] = redis.url
            extra_args.append("--gevent-early-monkey-patch")
            rec["redis_log"] = bl.relpath(redis.log_path)
        server = bl.Server(
            name=name,
            mode="http-socket",
            gevent=args.gevent,
            log_path=log,
            module_spec=d["module"],
            ws_path="/sub",
            extra_args=extra_args,
            extra_env=env,
            expect_workers=d["processes"],
            code_root=d.get("code_root"),
        )
        try:
            with server:
                rec["command"] = server.display_argv()
                rec["hub_url"] = env.get("WEBSOCKET_HUB_URL")
                rec["code_fingerprint"] = bl.code_fingerprint(CODE_UNDER_TEST)
                rec["worker_pids"] = [w.pid for w in server.workers]
                if len(server.workers) != d["processes"]:
                    raise bl.ServerError(
                        f"{name}: found {len(server.workers)} workers, expected {d['processes']}"
                    )
                res = bl.run_uvloop(lambda: run_client(server, args, d["processes"], redis))
                server.check_alive()
                if redis is not None and redis.proc.poll() is not None:
                    raise bl.ServerError(f"redis-server exited ({redis.proc.returncode})")
                rec.update(res)
            rec["exit_code"] = server.proc.returncode if server.proc else None
        except bl.ServerError as exc:
            rec["error"] = exc.message
            rec["log_tail"] = server.log_tail()
        except Exception as exc:
            rec["error"] = f"{type(exc).__name__}: {exc}"
            rec["log_tail"] = server.log_tail()
        rec["log_problems"] = log_problems(server.log_text())
    except bl.ServerError as exc:  # redis-server failed to start
        rec["error"] = exc.message
    finally:
        if redis is not None:
            redis.stop()
        if "BENCH_HUB_NAME" in env:
            remove_history_db(base)
    limit = getattr(args, "fd_limit", None)
    if "error" in rec and limit and fd_need(name, args.subscribers) > limit:
        rec["error"] += (
            f" [the worker needs ~{fd_need(name, args.subscribers)} open files for this many "
            f"connections; the limit is {limit}]"
        )
    return rec


def remove_history_db(name: str) -> None:
    """Remove the local hub's history database of deployment ``name`` (the server stopped)."""
    from flask_websocket.sqlite_history import private_directory

    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            (private_directory() / f"{name}.sqlite3{suffix}").unlink()


def fd_need(name: str, subscribers: int) -> int:
    """Descriptors the busiest worker of `name` needs for `subscribers` + the publisher."""
    per_worker = math.ceil(subscribers / SERVER_DEFS[name]["processes"]) + 1
    return per_worker + FD_OVERHEAD  # one fd per connection, raw uWSGI and ours alike


def run_failed(rec: dict) -> bool:
    return "error" in rec or any(
        rec.get(k)
        for k in (
            "lost",
            "duplicates",
            "out_of_order",
            "garbled",
            "unexpected_disconnects",
            "server_closes",
            "fragmented",
        )
    )


def noise_of(rec: dict) -> float:
    vals = [p["other_cpu_util"] for p in rec.get("phases", {}).values()]
    return max(vals) if vals else 0.0


# ---------------------------------------------------------------------------
# summary and report


def summarize(runs: list[dict], servers: list[str]) -> dict:
    out: dict = {}
    for name in servers:
        ok = [r for r in runs if r["server"] == name and "error" not in r]
        s: dict = {"rounds_ok": len(ok), "rounds": sum(1 for r in runs if r["server"] == name)}
        s["lost"] = sum(r.get("lost", 0) for r in ok)
        s["duplicates"] = sum(r.get("duplicates", 0) for r in ok)
        s["out_of_order"] = sum(r.get("out_of_order", 0) for r in ok)
        s["garbled"] = sum(r.get("garbled", 0) for r in ok)
        s["expected_deliveries"] = sum(r.get("expected_deliveries", 0) for r in ok)
        s["disconnects"] = sum(
            r.get("unexpected_disconnects", 0) + r.get("server_closes", 0) for r in ok
        )
        for phase in ("latency", "throughput"):
            rs = [r["phases"][phase] for r in ok if phase in r.get("phases", {})]
            if not rs:
                continue

            def col(f, rs=rs):
                return [f(p) for p in rs]

            s[phase] = {
                "p50_ms": bl.median(col(lambda p: p["latency_ms"]["p50"])),
                "p99_ms": bl.median(col(lambda p: p["latency_ms"]["p99"])),
                "p99_ms_max": max(col(lambda p: p["latency_ms"]["p99"])),
                "p99_ms_min": min(col(lambda p: p["latency_ms"]["p99"])),
                "max_ms": max(col(lambda p: p["latency_ms"]["max"])),
                "deliveries_per_s": bl.median(col(lambda p: p["deliveries_per_s"])),
                "deliveries_per_s_min": min(col(lambda p: p["deliveries_per_s"])),
                "deliveries_per_s_max": max(col(lambda p: p["deliveries_per_s"])),
                "cpu_us": bl.median(col(lambda p: p["worker_cpu_us_per_delivery"])),
                "cpu_us_min": min(col(lambda p: p["worker_cpu_us_per_delivery"])),
                "cpu_us_max": max(col(lambda p: p["worker_cpu_us_per_delivery"])),
                "server_cpu_us": bl.median(col(lambda p: p["server_cpu_us_per_delivery"])),
                "worker_cpu_util": bl.median(col(lambda p: p["worker_cpu_util"])),
                "client_cpu_util": bl.median(col(lambda p: p["client_cpu_util"])),
                "client_cpu_util_max": max(col(lambda p: p["client_cpu_util"])),
                "lost": sum(col(lambda p: p["lost"])),
                "fanout_p99_ms": bl.median(
                    col(
                        lambda p: (
                            p["server_fanout_ms"]["p99"]
                            if p.get("server_fanout_ms")
                            else float("nan")
                        )
                    )
                ),
                "fanout_p99_ms_max": max(
                    col(
                        lambda p: (
                            p["server_fanout_ms"]["p99"]
                            if p.get("server_fanout_ms")
                            else float("-inf")
                        )
                    )
                ),
                "client_lag_p99_ms": bl.median(
                    col(
                        lambda p: (
                            p["client_loop_lag"]["p99_ms"]
                            if p.get("client_loop_lag")
                            else float("nan")
                        )
                    )
                ),
                # the server core's time per delivery, by kind (us): where the CPU goes
                "core_us": {
                    kind: bl.median(
                        col(
                            lambda p, kind=kind: (
                                p["server_core_util"].get(kind, 0.0)
                                * p["window_s"]
                                / p["deliveries"]
                                * 1e6
                                if p["deliveries"]
                                else float("nan")
                            )
                        )
                    )
                    for kind in ("user", "system", "softirq")
                },
            }
        out[name] = s
    ratios: dict = {}
    # the ratios are to the direct-write raw fan-out when it ran, else to the naive one
    baseline = next((n for n in ("raw-direct", BASELINE) if out.get(n, {}).get("rounds_ok")), None)
    base = out.get(baseline) if baseline else None
    if base and base["rounds_ok"]:
        for name in servers:
            if name == baseline or not out[name]["rounds_ok"]:
                continue
            r: dict = {}
            for phase in ("latency", "throughput"):
                a, b = base.get(phase), out[name].get(phase)
                if not a or not b:
                    continue
                r[phase] = {
                    "cpu_per_delivery": b["cpu_us"] / a["cpu_us"],
                    "deliveries_per_s": b["deliveries_per_s"] / a["deliveries_per_s"],
                    "p50": b["p50_ms"] / a["p50_ms"],
                    "p99": b["p99_ms"] / a["p99_ms"],
                }
            ratios[name] = r
    # what history costs: each *-history server against the same server without it
    history: dict = {}
    for name in servers:
        plain = name.replace("-history", "")
        if plain == name or plain not in out:
            continue
        a, b = out[plain], out[name]
        for phase in ("latency", "throughput"):
            if a.get(phase) and b.get(phase):
                history.setdefault(name, {})[phase] = b[phase]["cpu_us"] / a[phase]["cpu_us"]
    return {
        "servers": out,
        "ratios_vs_raw": ratios,
        "ratio_baseline": baseline,
        "history_cpu_ratio": history,
    }


def evaluate_targets(summary: dict, runs: list[dict], args) -> list[dict]:
    s = summary["servers"]
    targets = []
    mem = s.get("memory")

    # 1. <= 8 us server CPU per delivery: at the fixed rate (latency phase,
    # where the ~25 us of the naive baseline was seen) and flat out
    for name in ("memory", "local", "redis"):
        v = s.get(name)
        if not v or not v.get("rounds_ok"):
            continue
        for phase in ("latency", "throughput"):
            if phase not in v:
                continue
            cpu = v[phase]["cpu_us"]
            where = (
                f"latency phase, {args.rate:g} broadcasts/s"
                if phase == "latency"
                else "throughput phase, flat out"
            )
            targets.append(
                {
                    "target": f"<= {TARGET_CPU_US:g} us server CPU per delivery",
                    "server": name,
                    "phase": phase,
                    "value": f"{cpu:.2f} us [{v[phase]['cpu_us_min']:.2f}-"
                    f"{v[phase]['cpu_us_max']:.2f}] ({where}; N={args.subscribers}; "
                    "median of the workers' CPU)",
                    "met": cpu <= TARGET_CPU_US,
                }
            )
    # 2. 10 000 subscribers on one worker, zero loss, p99 < 250 ms at 10/s
    goal = (
        f"{TARGET_P99_N} subscribers on one worker: zero loss, "
        f"p99 < {TARGET_P99_MS:g} ms at 10 broadcasts/s"
    )
    applicable = args.subscribers >= 0.99 * TARGET_P99_N and abs(args.rate - 10) < 1e-9
    note = None
    if not applicable:
        note = f"not applicable: needs --subscribers {TARGET_P99_N} --rate 10"
    elif args.subscribers < TARGET_P99_N:
        note = (
            f"measured with {args.subscribers} subscribers, not {TARGET_P99_N} (see the "
            "open-file limit warning)"
        )
    mem_runs = [r for r in runs if r["server"] == "memory"]
    if mem and mem.get("rounds_ok") and "latency" in mem:
        p99max = mem["latency"]["p99_ms_max"]
        failed = [r for r in mem_runs if "error" in r]
        zero_loss = (
            mem["lost"] == 0
            and mem["duplicates"] == 0
            and mem["out_of_order"] == 0
            and mem["garbled"] == 0
            and mem["disconnects"] == 0
            and not failed
        )
        targets.append(
            {
                "target": goal,
                "server": "memory",
                "value": (
                    f"N={args.subscribers}, rate {args.rate:g}/s: lost {mem['lost']}, dup "
                    f"{mem['duplicates']}, reordered {mem['out_of_order']}, failed rounds "
                    f"{len(failed)}; p99 {mem['latency']['p99_ms']:.1f} ms median, "
                    f"{p99max:.1f} ms worst round (server-side fan-out p99 "
                    f"{mem['latency']['fanout_p99_ms']:.1f} ms median, "
                    f"{mem['latency']['fanout_p99_ms_max']:.1f} ms worst; client loop lag p99 "
                    f"{mem['latency']['client_lag_p99_ms']:.1f} ms)"
                ),
                "met": (zero_loss and p99max < TARGET_P99_MS) if applicable else None,
                "note": note,
            }
        )
    elif mem_runs:
        targets.append(
            {
                "target": goal,
                "server": "memory",
                "value": f"N={args.subscribers}: every round failed: {mem_runs[0].get('error')}",
                "met": False if applicable else None,
                "note": note,
            }
        )
    # 3. redis hub x2 p99 no worse than 1.5x memory hub p99
    red = s.get("redis")
    if mem and red and mem.get("latency") and red.get("latency"):
        ratio = red["latency"]["p99_ms"] / mem["latency"]["p99_ms"]
        pairs = []
        by_round: dict = {}
        for r in runs:
            if "error" not in r and "latency" in r.get("phases", {}):
                by_round.setdefault(r["round"], {})[r["server"]] = r["phases"]["latency"]
        for rr in by_round.values():
            if "memory" in rr and "redis" in rr:
                pairs.append(rr["redis"]["latency_ms"]["p99"] / rr["memory"]["latency_ms"]["p99"])
        spread = f" (per-round pairs {min(pairs):.2f}-{max(pairs):.2f}x)" if pairs else ""
        targets.append(
            {
                "target": f"redis hub x2 p99 <= {TARGET_REDIS_P99_RATIO:g}x memory hub p99",
                "server": "redis",
                "value": f"{red['latency']['p99_ms']:.1f} / {mem['latency']['p99_ms']:.1f} ms"
                f" = {ratio:.2f}x{spread} (N={args.subscribers}, {args.rate:g}/s)",
                "met": ratio <= TARGET_REDIS_P99_RATIO,
                "per_round_ratios": pairs,
            }
        )
    return targets


def label(name: str) -> str:
    return SERVER_DEFS[name]["label"]


def fmt_int(x) -> str:
    return f"{x:,.0f}"


def print_report(runs, summary, targets, servers, skipped, args) -> None:
    print()
    print(
        f"Broadcast benchmark: {args.subscribers} subscribers, {args.size} B text messages, "
        f"{args.rounds} round(s) interleaved; latency phase {args.broadcasts} broadcasts at "
        f"{args.rate:g}/s (+{args.warmup_broadcasts} warm-up); throughput phase "
        f"{args.duration:g} s after {args.warmup:g} s, window {args.window}; --gevent "
        f"{args.gevent}; server on core {bl.SERVER_CORE}, client on core {bl.CLIENT_CORE}"
    )
    for name, why in skipped.items():
        print(f"note: {label(name)} skipped: {why}")
    print()
    print("Per run:")
    headers = [
        "rnd",
        "server",
        "phase",
        "deliv/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "CPU us/dlv",
        "worker CPU",
        "redis CPU",
        "client CPU",
        "client lag p99",
        "other CPU",
        "lost",
    ]
    rows = []
    for r in runs:
        if "error" in r:
            rows.append([str(r["round"]), label(r["server"]), "ERROR"] + [""] * 11)
            continue
        for phase, p in r.get("phases", {}).items():
            rows.append(
                [
                    str(r["round"]),
                    label(r["server"]),
                    phase,
                    fmt_int(p["deliveries_per_s"]),
                    f"{p['latency_ms']['p50']:.2f}",
                    f"{p['latency_ms']['p99']:.2f}",
                    f"{p['latency_ms']['max']:.1f}",
                    f"{p['worker_cpu_us_per_delivery']:.2f}",
                    f"{p['worker_cpu_util'] * 100:.0f}%",
                    f"{p['redis_cpu_util'] * 100:.1f}%" if r["server"] == "redis" else "-",
                    f"{p['client_cpu_util'] * 100:.0f}%",
                    f"{p['client_loop_lag']['p99_ms']:.1f} ms" if "client_loop_lag" in p else "-",
                    f"{p['other_cpu_util'] * 100:.0f}%" + (" *" if r.get("noisy") else ""),
                    str(p["lost"]),
                ]
            )
    print(bl.format_table(headers, rows, align="rll" + "r" * (len(headers) - 3)))
    print(
        "(deliv/s: deliveries received per second; CPU us/dlv: user+system CPU of all uWSGI "
        "workers / deliveries; worker CPU: in % of one core, summed over workers; "
        "client lag: how late the client's event loop woke up, frames wait as long; "
        "other CPU: everything else on the machine, * = noisy after retries)"
    )
    print()
    print("Delivery checks per run:")
    rows = []
    for r in runs:
        if "error" in r:
            rows.append([str(r["round"]), label(r["server"]), "ERROR", "", "", "", "", "", ""])
            continue
        spread = "/".join(str(v) for v in r.get("subscribers_per_worker", {}).values())
        rows.append(
            [
                str(r["round"]),
                label(r["server"]),
                spread,
                fmt_int(r["expected_deliveries"]),
                fmt_int(r["received_unique"]),
                str(r["lost"]),
                str(r["duplicates"]),
                str(r["out_of_order"]),
                str(
                    r["garbled"]
                    + r["fragmented"]
                    + r["unexpected_frames"]
                    + r["unexpected_disconnects"]
                    + r["server_closes"]
                ),
            ]
        )
    print(
        bl.format_table(
            [
                "rnd",
                "server",
                "subs/worker",
                "expected",
                "received",
                "lost",
                "dup",
                "reorder",
                "other errs",
            ],
            rows,
            align="rllrrrrrr",
        )
    )
    print()
    print("Summary (medians over rounds; min-max in brackets):")
    headers = [
        "server",
        "lat p50 ms",
        "lat p99 ms",
        "srv fan-out p99",
        "client lag p99",
        "lat CPU us/dlv",
        "tput deliv/s",
        "tput CPU us/dlv",
        "client CPU max",
        "lost",
        "rounds",
    ]
    rows = []
    for name in servers:
        s = summary["servers"][name]
        if not s["rounds_ok"]:
            rows.append([label(name), "FAILED"] + [""] * 8 + [f"0/{s['rounds']}"])
            continue
        lat, tp = s.get("latency"), s.get("throughput")
        client = max([p["client_cpu_util_max"] for p in (lat, tp) if p] or [float("nan")])
        rows.append(
            [
                label(name),
                f"{lat['p50_ms']:.2f}" if lat else "-",
                f"{lat['p99_ms']:.2f} [{lat['p99_ms_min']:.1f}-{lat['p99_ms_max']:.1f}]"
                if lat
                else "-",
                f"{lat['fanout_p99_ms']:.1f} ms"
                if lat and not math.isnan(lat["fanout_p99_ms"])
                else "-",
                f"{lat['client_lag_p99_ms']:.1f} ms"
                if lat and not math.isnan(lat["client_lag_p99_ms"])
                else "-",
                f"{lat['cpu_us']:.2f}" if lat else "-",
                f"{fmt_int(tp['deliveries_per_s'])} "
                f"[{fmt_int(tp['deliveries_per_s_min'])}-{fmt_int(tp['deliveries_per_s_max'])}]"
                if tp
                else "-",
                f"{tp['cpu_us']:.2f} [{tp['cpu_us_min']:.2f}-{tp['cpu_us_max']:.2f}]"
                if tp
                else "-",
                f"{client * 100:.0f}%",
                str(s["lost"] + s["duplicates"] + s["out_of_order"] + s["garbled"]),
                f"{s['rounds_ok']}/{s['rounds']}",
            ]
        )
    print(bl.format_table(headers, rows, align="l" + "r" * (len(headers) - 1)))
    print(
        "(lat: latency phase; srv fan-out: publisher send until broadcast() returned in the "
        "publisher's worker, p99 - the server side without the client's reading; client lag: "
        "how late the client's event loop ran, p99; tput: throughput phase)"
    )
    print()
    print(
        f"Server core (core {bl.SERVER_CORE}) time per delivery, us, by kind "
        "(medians; includes anything else that ran on that core):"
    )
    rows = []
    for name in servers:
        s = summary["servers"][name]
        for phase in ("latency", "throughput"):
            v = s.get(phase)
            if not v:
                continue
            c = v["core_us"]
            rows.append(
                [
                    label(name),
                    phase,
                    f"{c['user']:.2f}",
                    f"{c['system']:.2f}",
                    f"{c['softirq']:.2f}",
                    f"{c['user'] + c['system'] + c['softirq']:.2f}",
                    f"{v['cpu_us']:.2f}",
                ]
            )
    print(
        bl.format_table(
            ["server", "phase", "user", "system", "softirq", "sum", "workers"],
            rows,
            align="llrrrrr",
        )
    )
    ratios = summary["ratios_vs_raw"]
    if ratios:
        print()
        print(f"Ratios vs {label(summary['ratio_baseline'])} (lower CPU and latency = better):")
        rows = []
        for name, r in ratios.items():
            lat, tp = r.get("latency"), r.get("throughput")
            rows.append(
                [
                    label(name),
                    f"{tp['cpu_per_delivery']:.3f}" if tp else "-",
                    f"{tp['deliveries_per_s']:.2f}" if tp else "-",
                    f"{lat['cpu_per_delivery']:.3f}" if lat else "-",
                    f"{lat['p50']:.3f}" if lat else "-",
                    f"{lat['p99']:.3f}" if lat else "-",
                ]
            )
        print(
            bl.format_table(
                [
                    "server",
                    "tput CPU/dlv",
                    "tput deliv/s",
                    "lat CPU/dlv",
                    "lat p50",
                    "lat p99",
                ],
                rows,
                align="lrrrrr",
            )
        )
    if summary["history_cpu_ratio"]:
        print()
        print("History on / off, worker CPU per delivery (issue 12: at most 1.10):")
        for name, r in summary["history_cpu_ratio"].items():
            bits = ", ".join(f"{phase} {ratio:.3f}" for phase, ratio in r.items())
            print(f"  {label(name)}: {bits}")
    if targets:
        print()
        print("Targets:")
        for t in targets:
            verdict = {True: "MET", False: "NOT MET", None: "n/a"}[t["met"]]
            print(f"  [{verdict:>7}] {t['target']} - {label(t['server'])}: {t['value']}")
            if t.get("note"):
                print(f"            {t['note']}")
    busy = [
        (r, ph)
        for r in runs
        for ph, p in r.get("phases", {}).items()
        if p["client_cpu_util"] >= CLIENT_BUSY
    ]
    if busy:
        print()
        print(
            f"note: the client core was >= {CLIENT_BUSY:.0%} busy in {len(busy)} phase(s): "
            "deliveries/s and latency there may be client-bound"
        )
    for r in runs:
        if "error" in r:
            print()
            print(f"ERROR {label(r['server'])} round {r['round']}: {r['error']}")
            print(f"  uWSGI log ({r['log']}), last lines:")
            for line in (r.get("log_tail") or "").splitlines()[-25:]:
                print("    " + line)
        bad = {
            k: r.get(k)
            for k in (
                "lost",
                "duplicates",
                "out_of_order",
                "garbled",
                "fragmented",
                "unexpected_frames",
                "unexpected_disconnects",
                "server_closes",
            )
            if r.get(k)
        }
        if bad:
            print()
            print(f"DELIVERY PROBLEM {label(r['server'])} round {r['round']}: {bad}")
            if r.get("seqs_with_losses"):
                print(
                    f"  {r['seqs_with_losses_count']} broadcasts missed by someone, e.g. seq "
                    f"{r['seqs_with_losses'][:10]}; "
                    f"{r['subscribers_missing_some']} subscribers missed some"
                )
            if r.get("close_examples"):
                print(f"  close frames from the server: {r['close_examples']}")
            if r.get("garbled_examples"):
                print(f"  garbled: {r['garbled_examples'][:3]}")
        if r.get("log_problems"):
            print()
            print(f"uWSGI log of {label(r['server'])} round {r['round']} ({r['log']}) mentions:")
            for line in r["log_problems"][:20]:
                print("    " + line)


# ---------------------------------------------------------------------------


def raise_fd_limits(wanted: int) -> tuple[int, int]:
    """Raise this process's open-file limit (soft, and hard if allowed) to `wanted`.

    uWSGI inherits it: each connection holds one descriptor in the worker
    (flask-websocket borrows uWSGI's), and the client holds one per
    subscriber too.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft, hard
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return resource.getrlimit(resource.RLIMIT_NOFILE)
        except (ValueError, OSError):
            pass  # not privileged: as far as the hard limit goes
    return bl.raise_fd_limit(wanted)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subscribers", type=int, default=1000, help="subscriber connections (1000)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    ap.add_argument(
        "--servers",
        default="raw,memory,local,redis",
        help="comma-separated subset of: " + ", ".join(ORDER),
    )
    ap.add_argument(
        "--phases",
        default="latency,throughput",
        help="comma-separated subset of: latency, throughput",
    )
    ap.add_argument(
        "--broadcasts", type=int, default=100, help="latency phase: broadcasts (default 100)"
    )
    ap.add_argument(
        "--rate", type=float, default=10.0, help="latency phase: broadcasts per second (10)"
    )
    ap.add_argument(
        "--warmup-broadcasts",
        type=int,
        default=5,
        help="latency phase: unmeasured broadcasts first (default 5)",
    )
    ap.add_argument(
        "--duration", type=float, default=5.0, help="throughput phase: measured seconds (5)"
    )
    ap.add_argument(
        "--warmup", type=float, default=1.0, help="throughput phase: warm-up seconds (1)"
    )
    ap.add_argument(
        "--window",
        type=int,
        default=0,
        help="throughput phase: broadcasts not yet received by every subscriber, at most "
        f"(default: {WINDOW_DELIVERIES} / subscribers, within 2..256)",
    )
    ap.add_argument(
        "--max-broadcasts",
        type=int,
        default=200000,
        help="throughput phase: stop after this many broadcasts (200000)",
    )
    ap.add_argument("--size", type=int, default=64, help="message size in bytes (default 64)")
    ap.add_argument(
        "--gevent",
        type=int,
        default=0,
        help="uWSGI --gevent cores per worker (default: subscribers + 64)",
    )
    ap.add_argument(
        "--batch", type=int, default=50, help="handshakes in flight at once (default 50)"
    )
    ap.add_argument(
        "--balance-attempts",
        type=int,
        default=20,
        help="with 2 workers: reconnect a subscriber that landed on a worker holding its "
        "share already, up to this many times (default 20; 0 = take what comes)",
    )
    ap.add_argument("--open-timeout", type=float, default=300.0, help="limit for opening (s)")
    ap.add_argument("--close-timeout", type=float, default=60.0, help="limit for closing (s)")
    ap.add_argument(
        "--baseline",
        metavar="REF",
        help="also run every flask-websocket server on the code of this git commit "
        "(before/after in one run; the apps are the working tree's)",
    )
    bl.add_quiet_args(ap, retry_noisy=1)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="broadcast-baseline-") as tmp:
        return run(ap, args, tmp)


def add_baseline(ref: str, directory: str, servers: list[str]) -> list[str]:
    """Export ``ref`` to ``directory``; the server list with its twin after each fws server."""
    commit = bl.export_code(ref, directory)
    out = []
    for name in servers:
        d = SERVER_DEFS[name]
        if d["module"] == FWS_APP:
            twin = f"{name}@{commit}"
            SERVER_DEFS[twin] = {**d, "label": f"{d['label']} @{commit}", "code_root": directory}
            out.append(twin)
        out.append(name)
    return out


def run(ap, args, tmp: str) -> int:
    names = []
    for n in (v.strip() for v in args.servers.split(",")):
        if not n:
            continue
        if n not in SERVER_DEFS:
            ap.error(f"unknown server {n!r}; choose from {', '.join(SERVER_DEFS)}")
        names.append(n)
    servers = [n for n in ORDER if n in names]
    phases = {v.strip() for v in args.phases.split(",") if v.strip()}
    if not servers or not phases or phases - {"latency", "throughput"}:
        ap.error("bad --servers or --phases")
    args.phases = [p for p in ("latency", "throughput") if p in phases]
    if not (1 <= args.subscribers <= 60000):
        ap.error("--subscribers must be 1..60000")
    if not (1 <= args.rounds <= 20):
        ap.error("--rounds must be 1..20")
    if not (1 <= args.broadcasts <= 100000) or not (0.1 <= args.rate <= 10000):
        ap.error("--broadcasts must be 1..100000, --rate 0.1..10000")
    if args.broadcasts / args.rate > 3600:
        ap.error("the latency phase would last more than an hour")
    if not (0 <= args.warmup_broadcasts <= 1000):
        ap.error("--warmup-broadcasts must be 0..1000")
    if not (0.5 <= args.duration <= 600) or not (0 <= args.warmup <= 60):
        ap.error("--duration must be 0.5..600 s, --warmup 0..60 s")
    if args.window == 0:
        args.window = min(256, max(2, math.ceil(WINDOW_DELIVERIES / args.subscribers)))
    if not (1 <= args.window <= 1000) or not (1 <= args.max_broadcasts <= 10**7):
        ap.error("--window must be 1..1000, --max-broadcasts 1..10^7")
    if not (29 <= args.size <= 1 << 16):
        ap.error("--size must be 29..65536 (sequence number and timestamp take 29 bytes)")
    if not (1 <= args.batch <= 90) or not (0 <= args.balance_attempts <= 100):
        ap.error("--batch must be 1..90 (uWSGI's listen backlog is 100), --balance-attempts 0..100")
    if not (0 <= args.retry_noisy <= 5) or not (0 <= args.quiet_wait <= 600):
        ap.error("--retry-noisy must be 0..5, --quiet-wait 0..600 s")
    if args.gevent == 0:
        args.gevent = args.subscribers + 64
    if args.gevent <= args.subscribers + 1:
        ap.error("--gevent must exceed --subscribers + 1 (the publisher)")

    skipped: dict = {}
    if "redis" in servers:
        why = redis_unavailable()
        if why:
            skipped["redis"] = why
            servers.remove("redis")
            print(f"note: skipping the redis hub server: {why}")
    if args.baseline:
        servers = add_baseline(args.baseline, tmp, servers)

    bl.pin_self_to_client_core()
    limits = raise_fd_limits(args.subscribers + 2048)
    args.fd_limit = limits[0]
    fd_warnings = []
    for name in servers:
        d = SERVER_DEFS[name]
        per_worker = math.ceil(args.subscribers / d["processes"]) + 1  # + the publisher
        need = fd_need(name, args.subscribers)
        if need > limits[0]:
            fd_warnings.append(
                f"{label(name)}: a worker may need ~{need} descriptors for {per_worker} "
                "connections (one per connection) but the "
                f"open-file limit is {limits[0]}; connections beyond it will hang in the "
                "listen queue"
            )
    for w in fd_warnings:
        print(f"warning: {w}")
    stamp = bl.timestamp()
    env = bl.environment_info()
    env["fd_warnings"] = fd_warnings
    env["code_fingerprint"] = bl.code_fingerprint(CODE_UNDER_TEST)
    env["fd_limit"] = list(limits)
    env["redis_server"] = shutil.which("redis-server")
    runs: list = []
    discarded: list = []
    for rnd in range(1, args.rounds + 1):
        for name in servers:
            print(f"round {rnd}/{args.rounds}: {label(name)} ...", end=" ", flush=True)
            rec, dropped = bl.run_quietest(
                lambda attempt, name=name, rnd=rnd: run_one(name, rnd, args, stamp, attempt),
                args,
                noise_of,
            )
            discarded.extend(dropped)
            runs.append(rec)
            if "error" in rec:
                print(f"ERROR: {rec['error']}")
            else:
                bits = []
                lat = rec["phases"].get("latency")
                tp = rec["phases"].get("throughput")
                if lat:
                    bits.append(
                        f"p50 {lat['latency_ms']['p50']:.1f} ms p99 "
                        f"{lat['latency_ms']['p99']:.1f} ms"
                    )
                if tp:
                    bits.append(
                        f"{tp['deliveries_per_s']:,.0f} deliv/s, "
                        f"{tp['worker_cpu_us_per_delivery']:.2f} us CPU/delivery"
                    )
                bits.append(
                    f"lost {rec['lost']} dup {rec['duplicates']} reorder {rec['out_of_order']}"
                )
                print(", ".join(bits))
            time.sleep(0.5)
    summary = summarize(runs, servers)
    targets = evaluate_targets(summary, runs, args)
    print_report(runs, summary, targets, servers, skipped, args)
    changed = bl.code_changed_warning(runs, CODE_UNDER_TEST)
    if changed:
        print()
        print(changed)
    env["loadavg_end"] = list(os.getloadavg())
    data = {
        "benchmark": "broadcast",
        "args": vars(args),
        "servers": servers,
        "skipped": skipped,
        "environment": env,
        "summary": summary,
        "targets": targets,
        "runs": runs,
        "discarded_noisy_runs": discarded,
        "code_changed_during_run": bool(changed),
    }
    path = bl.write_json("broadcast", data, stamp)
    print()
    print(f"results written to {bl.relpath(path)}")
    bad = bool(changed) or any(run_failed(r) for r in runs)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
