"""Shared helpers for the Flask-WebSocket benchmarks.

Starts/stops uWSGI servers pinned to one core, finds the worker processes,
samples their CPU time and memory with psutil, and writes result files.
Nothing here uses absolute machine paths: everything is relative to the
repository root computed from this file's location.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
RESULTS_DIR = os.path.join(BENCH_DIR, "results")

SERVER_CORE = 1
CLIENT_CORE = 0
HOST = "127.0.0.1"

# name -> (uWSGI module spec, WebSocket path)
SERVERS = {
    "raw": ("benchmarks.apps.raw_uwsgi_echo:app", "/echo"),
    "flask-websocket": ("benchmarks.apps.flask_websocket_echo:app", "/echo"),
}
SERVER_LABELS = {
    "raw": "raw uWSGI API",
    "flask-websocket": "flask-websocket",
}
DEFAULT_ORDER = ["raw", "flask-websocket"]
# Which server is the baseline for ratios.
BASELINE = "raw"
CANDIDATE = "flask-websocket"

SERVER_START_TIMEOUT = 20.0
SERVER_STOP_TIMEOUT = 15.0


def parse_servers(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    aliases = {
        "raw-uwsgi": "raw",
        "uwsgi": "raw",
        "flask": "flask-websocket",
        "fws": "flask-websocket",
    }
    out = []
    for n in names:
        n = aliases.get(n, n)
        if n not in SERVERS:
            raise ValueError(f"unknown server {n!r}; choose from {', '.join(SERVERS)}")
        if n not in out:
            out.append(n)
    if not out:
        raise ValueError("no servers selected")
    # keep canonical order (baseline first) for the A,B,A,B interleave
    return [n for n in DEFAULT_ORDER if n in out]


def pin_self_to_client_core() -> set | None:
    """Pin the calling process (the load client) to CLIENT_CORE."""
    try:
        os.sched_setaffinity(0, {CLIENT_CORE})
        return os.sched_getaffinity(0)
    except (AttributeError, OSError) as exc:  # pragma: no cover - non-Linux
        print(
            f"warning: could not pin client to core {CLIENT_CORE}: {exc}",
            file=sys.stderr,
        )
        return None


def raise_fd_limit(wanted: int) -> tuple[int, int]:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        new_soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def uwsgi_binary() -> str:
    venv_bin = os.path.dirname(sys.executable)
    path = venv_bin + os.pathsep + os.environ.get("PATH", "")
    found = shutil.which("uwsgi", path=path)
    if not found:
        raise RuntimeError("uwsgi binary not found next to the Python interpreter or on PATH")
    return found


def uwsgi_command(
    module: str, port: int, mode: str, gevent: int, model_args: list[str] | None = None
) -> list[str]:
    """uWSGI arguments for `module` on `port`.

    ``model_args`` selects the concurrency model (e.g. ``["--threads", "66"]``
    or ``["--processes", "50", "--enable-threads"]``); None (the default) is
    ``["--gevent", str(gevent)]``.
    """
    if model_args is None:
        model_args = ["--gevent", str(gevent)]
    cmd = ["--master", "--need-app", "--die-on-term", *model_args]
    if mode == "http-socket":
        cmd += ["--http-socket", f"{HOST}:{port}"]
    elif mode == "http":
        cmd += [
            "--http",
            f"{HOST}:{port}",
            "--http-websockets",
            "--http-buffer-size",
            "65536",
        ]
    else:
        raise ValueError(f"unknown mode {mode!r}")
    cmd += ["--module", module, "--disable-logging"]
    return cmd


_SPAWN_RE = re.compile(r"spawned uWSGI (worker|http) \d+ \(pid: (\d+)")


@dataclass
class Server:
    name: str
    mode: str
    gevent: int
    log_path: str
    port: int = 0
    proc: subprocess.Popen | None = None
    workers: list = field(default_factory=list)  # psutil.Process
    routers: list = field(default_factory=list)  # psutil.Process (http mode)
    argv: list = field(default_factory=list)
    _log: object = None
    # Optional overrides for servers not in SERVERS (broadcast.py): the uWSGI
    # module spec, the WebSocket path, extra uWSGI arguments (appended to the
    # command line) and extra environment variables.
    module_spec: str | None = None
    ws_path: str | None = None
    extra_args: list = field(default_factory=list)
    extra_env: dict = field(default_factory=dict)
    # Wait for this many "spawned uWSGI worker" lines before the server counts
    # as ready (with --processes N, later workers are spawned after the first
    # one already serves; CPU sampling must see them all).
    expect_workers: int = 1
    # uWSGI flags of the concurrency model instead of ``--gevent <gevent>``
    # (models.py); `gevent` is then ignored.
    model_args: list | None = None
    # Another uWSGI build (models.py's PyPy models): its binary instead of
    # uwsgi_binary(), its working directory instead of REPO_ROOT, and a
    # function of the port that returns the arguments after the binary
    # instead of uwsgi_command(...); extra_args are still appended.
    binary: str | None = None
    cwd: str | None = None
    argv_builder: Callable[[int], list[str]] | None = None
    # Another copy of the code (an older commit exported by hub_burst.py):
    # first on PYTHONPATH and the working directory, instead of REPO_ROOT.
    code_root: str | None = None
    # taskset core list instead of SERVER_CORE (peers.py: "0,1" for two
    # workers on the two cores).
    cores: str | None = None

    @property
    def module(self) -> str:
        return self.module_spec or SERVERS[self.name][0]

    @property
    def path(self) -> str:
        return self.ws_path or SERVERS[self.name][1]

    @property
    def url(self) -> str:
        return self.ws_url(self.path)

    def ws_url(self, path: str) -> str:
        return f"ws://{HOST}:{self.port}{path}"

    async def ws_connect(self, factory: Callable, path: str | None = None, **kwargs):
        """picows.ws_connect(factory, URL of `path` (default: self.path), **kwargs).

        The one place the clients open a connection, so a server speaking
        another protocol over WebSocket (peerlib.ProcessServer with
        Socket.IO) can wrap the listener and the transport.
        """
        import picows

        return await picows.ws_connect(factory, self.ws_url(path or self.path), **kwargs)

    def start(self) -> None:
        self.port = free_port()
        uwsgi = self.binary or uwsgi_binary()
        if self.argv_builder is not None:
            args = self.argv_builder(self.port)
        else:
            args = uwsgi_command(self.module, self.port, self.mode, self.gevent, self.model_args)
        self.argv = [
            "taskset", "-c", self.cores or str(SERVER_CORE), uwsgi, *args, *self.extra_args
        ]  # fmt: skip
        env = dict(os.environ)
        env.update(self.extra_env)
        root = self.code_root or REPO_ROOT
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.cwd or root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready()

    def display_argv(self) -> list[str]:
        """The command line with machine-specific paths stripped."""
        return [os.path.basename(a) if os.path.isabs(a) else a for a in self.argv]

    def log_text(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        noise = ("running as root", "WARNING: you are running uWSGI as root")
        kept = [ln for ln in self.log_text().splitlines() if not any(n in ln for n in noise)]
        return "\n".join(kept[-lines:])

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        want_router = self.mode == "http"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(
                    f"{self.name}: uWSGI exited with code {self.proc.returncode} during start-up",
                    self.log_tail(),
                )
            text = self.log_text()
            workers, routers = [], []
            for kind, pid in _SPAWN_RE.findall(text):
                (workers if kind == "worker" else routers).append(int(pid))
            if (
                len(workers) >= max(1, self.expect_workers)
                and (routers or not want_router)
                and self._port_open()
            ):
                try:
                    master = psutil.Process(self.proc.pid)
                    children = {c.pid: c for c in master.children(recursive=False)}
                except psutil.Error as exc:
                    raise ServerError(
                        f"{self.name}: master vanished: {exc}", self.log_tail()
                    ) from exc
                if all(p in children for p in workers + routers):
                    self.workers = [children[p] for p in workers]
                    self.routers = [children[p] for p in routers]
                    return
            time.sleep(0.05)
        raise ServerError(
            f"{self.name}: uWSGI not ready within {SERVER_START_TIMEOUT:.0f}s",
            self.log_tail(),
        )

    def _port_open(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise ServerError(f"{self.name}: uWSGI master exited (code {code})", self.log_tail())
        for w in self.workers:
            if not w.is_running():
                raise ServerError(f"{self.name}: worker pid {w.pid} died", self.log_tail())

    def worker_cpu(self) -> float:
        """user+system CPU seconds of the worker processes."""
        return _cpu_sum(self.workers)

    def router_cpu(self) -> float:
        return _cpu_sum(self.routers)

    def master_cpu(self) -> float:
        try:
            return _cpu_sum([psutil.Process(self.proc.pid)])
        except psutil.Error:
            return 0.0

    def worker_memory(self) -> dict:
        """Sum of RSS (and USS/PSS when readable) over the workers, bytes."""
        rss = uss = pss = 0
        have_full = True
        for w in self.workers:
            try:
                if have_full:
                    try:
                        m = w.memory_full_info()
                        rss += m.rss
                        uss += m.uss
                        pss += getattr(m, "pss", 0)
                        continue
                    except (psutil.AccessDenied, AttributeError):
                        have_full = False
                rss += w.memory_info().rss
            except psutil.NoSuchProcess as exc:
                raise ServerError(f"{self.name}: worker pid {w.pid} died", self.log_tail()) from exc
        out = {"rss": rss}
        if have_full:
            out["uss"] = uss
            out["pss"] = pss
        return out

    def stop(self) -> int | None:
        """SIGINT the master; escalate to SIGKILL (of our own pids) on timeout."""
        if self.proc is None:
            return None
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(timeout=SERVER_STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    print(
                        f"warning: {self.name}: uWSGI did not stop on SIGINT, killing",
                        file=sys.stderr,
                    )
                    self.proc.kill()
                    self.proc.wait(timeout=5)
            # make sure no worker/router we spawned outlives the master
            for p in self.workers + self.routers:
                try:
                    p.wait(timeout=5)
                except psutil.TimeoutExpired:
                    with contextlib.suppress(psutil.Error):
                        p.kill()
                except psutil.Error:
                    pass
            return self.proc.returncode
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def __enter__(self) -> Server:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class ServerError(RuntimeError):
    def __init__(self, message: str, log_tail: str = ""):
        super().__init__(message)
        self.message = message
        self.log_tail = log_tail


def _cpu_sum(procs) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def process_cpu_self() -> float:
    t = os.times()
    return t.user + t.system


def machine_busy_cpu() -> float:
    """CPU-seconds all cores spent running tasks (user, nice, system) since boot.

    Interrupt/softirq and steal time are left out: loopback networking shows up
    there in proportion to the benchmark's own traffic.
    """
    t = psutil.cpu_times()
    return t.user + t.nice + t.system


def core_idle_cpu() -> list[float]:
    """Idle CPU-seconds of each core since boot."""
    return [t.idle for t in psutil.cpu_times(percpu=True)]


def core_idle_share(before: list[float], after: list[float], core: int, window: float) -> float:
    """Fraction of `window` that `core` was idle, from two core_idle_cpu() samples."""
    if window <= 0 or core >= min(len(before), len(after)):
        return float("nan")
    return (after[core] - before[core]) / window


def machine_steal_cpu() -> float:
    """CPU-seconds the hypervisor took from this VM since boot (0 where unknown)."""
    return float(getattr(psutil.cpu_times(), "steal", 0.0))


def wait_for_quiet(
    max_wait: float, threshold: float = 0.15, needed: int = 2
) -> tuple[float, float]:
    """Wait until everything on the machine together uses < `threshold` cores.

    Call it while no benchmark server or client is running. Samples once a
    second; returns after `needed` quiet samples in a row or after `max_wait`
    seconds, whichever is first: (seconds waited, last sample in cores).
    """
    t0 = time.monotonic()
    quiet = 0
    busy = float("nan")
    prev = machine_busy_cpu()
    for _ in range(max(1, int(max_wait))):
        time.sleep(1.0)
        cur = machine_busy_cpu()
        busy = cur - prev
        prev = cur
        quiet = quiet + 1 if busy < threshold else 0
        if quiet >= needed or time.monotonic() - t0 >= max_wait:
            break
    return time.monotonic() - t0, busy


def add_quiet_args(ap, retry_noisy: int = 2) -> None:
    """The --quiet-wait / --max-other-cpu / --retry-noisy options (see run_quietest)."""
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="before each run, wait up to this many seconds for the machine to go quiet "
        "(other work < 0.15 core); 0 to skip (default 30)",
    )
    ap.add_argument(
        "--max-other-cpu",
        type=float,
        default=0.25,
        help="a run during which other work used more than this many cores is noisy (default 0.25)",
    )
    ap.add_argument(
        "--retry-noisy",
        type=int,
        default=retry_noisy,
        help="re-run a noisy run up to this many times, keeping the quietest "
        f"(default {retry_noisy})",
    )


def run_quietest(
    run: Callable[[int], dict], args, noise: Callable[[dict], float] | None = None
) -> tuple[dict, list[dict]]:
    """Run `run(attempt)` after waiting for quiet; re-run while noisy; keep the quietest.

    ``args`` has quiet_wait, max_other_cpu and retry_noisy (add_quiet_args).
    A run is noisy when ``noise(rec)`` (default: its "other_cpu_util", cores
    used by other work during the window) exceeds max_other_cpu; runs with an
    "error" are never retried. Returns (the kept record, marked "noisy" if
    still noisy, and the discarded attempts).
    """
    noise = noise or (lambda r: r["other_cpu_util"])
    attempts = []
    for attempt in range(1, args.retry_noisy + 2):
        waited = None
        if args.quiet_wait > 0:
            waited, _ = wait_for_quiet(args.quiet_wait)
        rec = run(attempt)
        rec["attempt"] = attempt
        if waited is not None:
            rec["quiet_wait_s"] = waited
        attempts.append(rec)
        if "error" in rec or noise(rec) <= args.max_other_cpu:
            break
        print(
            f"noisy ({noise(rec):.0%} of a core used by other work), retrying ...",
            end=" ",
            flush=True,
        )
    ok = [a for a in attempts if "error" not in a]
    rec = min(ok, key=noise) if ok else attempts[-1]
    rec["noisy"] = "error" not in rec and noise(rec) > args.max_other_cpu
    return rec, [a for a in attempts if a is not rec]


CODE_UNDER_TEST = ("flask_websocket", os.path.join("examples", "echo.py"))


def code_fingerprint(entries=CODE_UNDER_TEST) -> str:
    """Short hash of the code under test (package + example app) as on disk now.

    Each run starts a fresh uWSGI that imports whatever is on disk, so a
    change while the benchmark runs would mix versions; runs record this to
    make that visible. ``entries``: files and directories relative to the
    repository root (default: the package and ``examples/echo.py``).
    """
    import hashlib

    h = hashlib.sha256()
    for entry in entries:
        path = os.path.join(REPO_ROOT, entry)
        files = []
        if os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if d != "__pycache__")
                files += [os.path.join(root, n) for n in sorted(names) if n.endswith(".py")]
        elif os.path.exists(path):
            files.append(path)
        for f in files:
            h.update(os.path.relpath(f, REPO_ROOT).encode())
            with open(f, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()[:12]


def code_changed_warning(runs: list[dict], entries=CODE_UNDER_TEST) -> str | None:
    """A warning if the runs did not all import the same code under test."""
    prints = sorted({r["code_fingerprint"] for r in runs if r.get("code_fingerprint")})
    if len(prints) <= 1:
        return None
    return (
        f"WARNING: {', '.join(entries)} changed on disk during the benchmark "
        f"(code fingerprints {', '.join(prints)}): runs mixed versions; re-run for "
        "comparable figures."
    )


def cpu_snapshot(server) -> dict:
    """CPU counters of a server, this client and the machine, for cpu_window()."""
    return {
        "t": time.monotonic(),
        "worker_cpu": server.worker_cpu(),
        "router_cpu": server.router_cpu(),
        "master_cpu": server.master_cpu(),
        "client_cpu": process_cpu_self(),
        "machine_busy": machine_busy_cpu(),
        "core_idle": core_idle_cpu(),
    }


def cpu_window(s: dict, e: dict, extra_cpu: float = 0.0) -> dict:
    """What happened between two cpu_snapshot()s: seconds, CPU-seconds, utilisations.

    ``other_cpu_util``: cores used by everything but the server, this client
    and `extra_cpu` (e.g. a redis-server) - the noise indicator.
    """
    window = e["t"] - s["t"]
    d = {k: e[k] - s[k] for k in ("worker_cpu", "router_cpu", "master_cpu", "client_cpu")}
    other = e["machine_busy"] - s["machine_busy"] - sum(d.values()) - extra_cpu
    per = (lambda x: x / window) if window > 0 else (lambda x: 0.0)
    return {
        "window_s": window,
        "worker_cpu_s": d["worker_cpu"],
        "master_cpu_s": d["master_cpu"],
        "client_cpu_s": d["client_cpu"],
        "worker_cpu_util": per(d["worker_cpu"]),
        "client_cpu_util": per(d["client_cpu"]),
        "other_cpu_util": max(0.0, per(other)),
        "server_core_idle": core_idle_share(s["core_idle"], e["core_idle"], SERVER_CORE, window),
    }


async def close_transports(transports: list, timeout: float) -> dict:
    """Close picows connections cleanly (bounded); force the ones left after `timeout` s."""
    import picows

    t0 = time.monotonic()
    for t in transports:
        if not t.is_disconnected:
            t.send_close(picows.WSCloseCode.OK)
    out: dict = {}
    try:
        await asyncio.wait_for(
            asyncio.gather(*(t.wait_disconnected() for t in transports)), timeout
        )
        out["close_clean"] = True
    except asyncio.TimeoutError:
        out["close_clean"] = False
        out["not_closed_in_time"] = sum(1 for t in transports if not t.is_disconnected)
        for t in transports:
            t.disconnect(graceful=False)
    out["close_seconds"] = time.monotonic() - t0
    return out


def timestamp() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def percentile(sorted_values, q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (q in 0..100)."""
    n = len(sorted_values)
    if n == 0:
        return float("nan")
    k = max(0, min(n - 1, math.ceil(q / 100.0 * n) - 1))
    return float(sorted_values[k])


def median(values) -> float:
    vals = sorted(v for v in values if not math.isnan(v))
    n = len(vals)
    if n == 0:
        return float("nan")
    mid = n // 2
    return float(vals[mid]) if n % 2 else (vals[mid - 1] + vals[mid]) / 2.0


def git_describe() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            check=False,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        )
        rev = out.stdout.strip() if out.returncode == 0 else None
        dirty = subprocess.run(
            ["git", "status", "--porcelain"],
            check=False,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if rev and dirty.stdout.strip():
            rev += "-dirty"
        return rev
    except (OSError, subprocess.SubprocessError):
        return None


def environment_info() -> dict:
    def ver(mod):
        try:
            m = __import__(mod)
        except ImportError:
            return None
        return getattr(m, "__version__", None)

    try:
        uw = subprocess.run(
            [uwsgi_binary(), "--version"],
            check=False,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, RuntimeError, subprocess.SubprocessError):
        uw = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "uwsgi": uw,
        "picows": ver("picows"),
        "uvloop": ver("uvloop"),
        "psutil": psutil.__version__,
        "gevent": ver("gevent"),
        "flask": _dist_version("flask"),
        "git": git_describe(),
        "code_fingerprint": code_fingerprint(),
        "server_core": SERVER_CORE,
        "client_core": CLIENT_CORE,
    }


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def write_json(prefix: str, data: dict, stamp: str | None = None) -> str:
    os.makedirs(RESULTS_DIR, exist_ok=True)
    stamp = stamp or timestamp()
    path = os.path.join(RESULTS_DIR, f"{prefix}-{stamp}.json")
    n = 1
    while os.path.exists(path) and n < 1000:
        path = os.path.join(RESULTS_DIR, f"{prefix}-{stamp}-{n}.json")
        n += 1
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
    return path


def relpath(path: str) -> str:
    return os.path.relpath(path, REPO_ROOT)


def run_uvloop(coro_factory: Callable[[], asyncio.Future]):
    """Run a coroutine on a fresh uvloop event loop."""
    import uvloop

    loop = uvloop.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(coro_factory())
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def format_table(headers: list[str], rows: list[list[str]], align: str | None = None) -> str:
    widths = [len(h) for h in headers]
    for r in rows:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    align = align or ("l" + "r" * (len(headers) - 1))

    def fmt(cells):
        out = []
        for i, c in enumerate(cells):
            out.append(c.ljust(widths[i]) if align[i] == "l" else c.rjust(widths[i]))
        return "  ".join(out).rstrip()

    lines = [fmt(headers), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in rows]
    return "\n".join(lines)


def export_code(ref: str, directory: str) -> str:
    """The code of git commit ``ref`` in ``directory``, with the working tree's apps; its short id.

    For before/after figures in one run (``--baseline REF``): a server
    started with ``code_root=directory`` imports that commit's package, and
    the working tree's ``benchmarks/apps`` (the harness, not the code under
    test).
    """
    archive = subprocess.run(
        ["git", "archive", "--format=tar", ref], cwd=REPO_ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", directory], input=archive, check=True)
    apps = os.path.join(directory, "benchmarks", "apps")
    shutil.rmtree(apps, ignore_errors=True)
    shutil.copytree(os.path.join(REPO_ROOT, "benchmarks", "apps"), apps)
    return subprocess.run(
        ["git", "rev-parse", "--short", ref],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
