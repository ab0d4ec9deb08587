"""Start and stop real uWSGI servers for the tests."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
UWSGI = str(Path(sys.executable).with_name("uwsgi"))

#: Lines in a uWSGI log that mean a worker died abnormally.
CRASH_MARKERS = (
    "segmentation fault",
    "!!! uWSGI process",
    "DAMN ! worker",
    "killed by signal",
    "Fatal Python error",
    "libev",
)


_WORKER_SPAWNED = re.compile(r"spawned uWSGI worker \d+ \((?:new )?pid: (\d+)")


def poll_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; its last answer."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def free_port() -> int:
    """A TCP port nothing listens on at 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class UwsgiServer:
    """One uWSGI master serving ``module`` on a free 127.0.0.1 port.

    ``mode`` is ``"http-socket"`` (workers speak HTTP) or ``"http"`` (uWSGI's
    HTTP router in front, with ``--http-websockets``).
    """

    def __init__(
        self,
        module: str,
        *,
        mode: str = "http-socket",
        gevent: Optional[int] = 100,
        processes: int = 1,
        extra: Sequence[str] = (),
        env: Optional[Dict[str, str]] = None,
        log_dir: Optional[Path] = None,
    ) -> None:
        self.module = module
        self.mode = mode
        self.port = free_port()
        address = f"127.0.0.1:{self.port}"
        command: List[str] = [UWSGI, "--master", "--need-app", "--die-on-term"]
        if mode == "http":
            command += ["--http", address, "--http-websockets", "--http-buffer-size", "65536"]
        elif mode == "http-socket":
            command += ["--http-socket", address]
        else:
            raise ValueError(f"unknown mode {mode!r}")
        if gevent:
            command += ["--gevent", str(gevent)]
        command += ["--processes", str(processes), "--module", module, *extra]
        self.command = command
        self.env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), **(env or {}))
        log_dir = log_dir or Path(os.environ.get("TMPDIR", "/tmp"))
        self.log_path = log_dir / f"uwsgi-{self.port}.log"
        self.process: Optional[subprocess.Popen[bytes]] = None

    def __repr__(self) -> str:
        return f"<UwsgiServer {self.module} {self.mode} :{self.port}>"

    def url(self, path: str = "/") -> str:
        """``ws://`` URL of ``path`` on this server."""
        return f"ws://127.0.0.1:{self.port}{path}"

    def http_url(self, path: str = "/") -> str:
        """``http://`` URL of ``path`` on this server."""
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self, timeout: float = 30.0, expect_ready: bool = True) -> UwsgiServer:
        """Start uWSGI and wait until it accepts connections (or exits)."""
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command, cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if expect_ready:
                    raise RuntimeError(
                        f"uWSGI exited with {self.process.returncode}:\n{self.log()}"
                    )
                return self
            if expect_ready and self._ready():
                return self
            time.sleep(0.05)
        if expect_ready:
            self.stop()
            raise RuntimeError(f"uWSGI did not become ready in {timeout} s:\n{self.log()}")
        return self

    def _ready(self) -> bool:
        if len(self.worker_pids()) < self._expected_workers():
            return False
        if "WSGI app 0" not in self.log() or "ready" not in self.log():
            return False
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _expected_workers(self) -> int:
        index = self.command.index("--processes")
        return int(self.command[index + 1])

    def worker_pids(self) -> List[int]:
        """PIDs of the live uWSGI workers (not the master, not the HTTP router)."""
        if self.process is None or self.process.poll() is not None:
            return []
        try:
            children = {child.pid for child in psutil.Process(self.process.pid).children()}
        except psutil.NoSuchProcess:
            return []
        spawned = {int(pid) for pid in _WORKER_SPAWNED.findall(self.log())}
        return sorted(children & spawned)

    def log(self) -> str:
        """Everything uWSGI printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def crash_lines(self) -> List[str]:
        """Log lines that say a worker crashed."""
        return [
            line
            for line in self.log().splitlines()
            if any(marker.lower() in line.lower() for marker in CRASH_MARKERS)
        ]

    def stop(self, timeout: float = 15.0) -> None:
        """Stop uWSGI with SIGINT; kill it if it does not stop in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def __enter__(self) -> UwsgiServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
