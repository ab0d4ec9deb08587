"""Start and stop real uWSGI servers for the tests."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
UWSGI = str(Path(sys.executable).with_name("uwsgi"))
#: Where scripts/install-pypy-uwsgi.sh builds uWSGI's PyPy plugin and the PyPy venv.
PYPY_DIR = REPO_ROOT / ".pypy"

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


def run_python(code: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with this repository importable; its output as text."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    """A TCP port nothing listens on at 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class PypyBuild:
    """uWSGI built with its PyPy plugin, and a PyPy venv with Flask and websockets.

    What scripts/install-pypy-uwsgi.sh leaves in ``.pypy/``; it lists the
    paths in ``.pypy/paths`` once everything works.
    """

    uwsgi: str
    libpypy: str
    home: str
    site_packages: str
    #: The working directory: the plugin compiles its cffi glue into
    #: ``./__pycache__`` at the first start.
    directory: Path

    def load_flags(self, module: str) -> List[str]:
        """Flags that load ``module`` (``package.module:app``) with PyPy."""
        return [
            "--pypy-lib",
            self.libpypy,
            "--pypy-home",
            self.home,
            # --pypy-pp appends to sys.path (no .pth files are read): the venv's
            # site-packages, and this repository for flask_websocket and tests.
            "--pypy-pp",
            self.site_packages,
            "--pypy-pp",
            str(REPO_ROOT),
            "--pypy-wsgi",
            module,
        ]


def find_pypy_build(directory: Path = PYPY_DIR) -> Tuple[Optional[PypyBuild], str]:
    """The PyPy build of uWSGI, or ``None`` and why it is unavailable."""
    install = "scripts/install-pypy-uwsgi.sh installs it"
    if shutil.which("pypy3") is None:
        return None, f"pypy3 is not installed ({install}, with Debian's pypy3)"
    paths_file = directory / "paths"
    if not paths_file.is_file():
        return None, f"uWSGI's PyPy build is missing: no {paths_file} ({install})"
    values = dict(line.split("=", 1) for line in paths_file.read_text().splitlines() if "=" in line)
    try:
        build = PypyBuild(
            uwsgi=values["uwsgi"],
            libpypy=values["libpypy"],
            home=values["home"],
            site_packages=values["site_packages"],
            directory=directory,
        )
    except KeyError as exc:
        return None, f"{paths_file} has no {exc} ({install})"
    for path in (build.uwsgi, build.libpypy, build.site_packages):
        if not os.path.exists(path):
            return None, f"uWSGI's PyPy build is incomplete: no {path} ({install})"
    return build, ""


class UwsgiServer:
    """One uWSGI master serving ``module`` on a free 127.0.0.1 port.

    ``mode`` is ``"http-socket"`` (workers speak HTTP) or ``"http"`` (uWSGI's
    HTTP router in front, with ``--http-websockets``).

    With ``pypy``, the app runs on uWSGI's PyPy plugin instead: that build's
    binary, ``--pypy-wsgi`` instead of ``--module``, and no ``--need-app``
    (the plugin keeps its app to itself, so uWSGI would say "no app loaded"
    and exit).

    ``cwd`` runs it from another directory (importable first), for a copy
    of an app that must not be this repository's.
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
        pypy: Optional[PypyBuild] = None,
        cwd: Optional[Path] = None,
    ) -> None:
        self.module = module
        self.mode = mode
        self.pypy = pypy
        self.port = free_port()
        address = f"127.0.0.1:{self.port}"
        if pypy is None:
            command: List[str] = [UWSGI, "--master", "--need-app", "--die-on-term"]
            load = ["--module", module]
            self.cwd = cwd or REPO_ROOT
        else:
            command = [pypy.uwsgi, "--master", "--die-on-term"]
            load = pypy.load_flags(module)
            self.cwd = pypy.directory
        if mode == "http":
            command += ["--http", address, "--http-websockets", "--http-buffer-size", "65536"]
        elif mode == "http-socket":
            command += ["--http-socket", address]
        else:
            raise ValueError(f"unknown mode {mode!r}")
        if gevent:
            command += ["--gevent", str(gevent)]
        command += ["--processes", str(processes), *load, *extra]
        self.command = command
        self.env = dict(os.environ, PYTHONPATH=str(cwd or REPO_ROOT), **(env or {}))
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
                self.command, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT
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
        # (The PyPy plugin loads the app before the fork and says nothing.)
        if self.pypy is None and ("WSGI app 0" not in self.log() or "ready" not in self.log()):
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
