"""How uWSGI is started: flags that cannot work, the CLI, the documented commands.

* Missing ``--gevent`` or ``--http-websockets``: the app refuses to load
  (``flask_websocket.transport.check_server``), ``--need-app`` makes uWSGI
  exit, and the log names the flag to add.
* ``flask --app examples.echo websocket run``: the printed command line has the
  flags people get wrong, and the real thing serves WebSockets and stops on
  SIGINT.
* The raw ``uwsgi --http ... --wsgi-file examples/echo.py`` command of the
  seed's documentation serves the echo.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

import psutil
import pytest
from websockets.sync.client import ClientConnection, connect

from flask_websocket.transport import PYPY_CONTINULETS_EVAL
from tests.uwsgi_server import REPO_ROOT, UWSGI, PypyBuild, UwsgiServer, free_port, poll_until

# Tests that start uWSGI carry the ``uwsgi`` mark; the dry runs only import the app.
pytestmark = [pytest.mark.timeout(120)]

BIN_DIR = Path(sys.executable).parent
FLASK = str(BIN_DIR / "flask")
WAIT = 20.0


def wait_for(predicate: Callable[[], bool], timeout: float = WAIT, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass."""
    return poll_until(predicate, timeout, interval)


def ws_connect(url: str) -> ClientConnection:
    return connect(url, open_timeout=10, close_timeout=5, proxy=None)


def user_env() -> dict:
    """The environment a user has in the project directory: no PYTHONPATH help."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "FLASK_APP", "FLASK_WEBSOCKET_APP"):
        env.pop(name, None)
    return env


def port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def assert_echoes(port: int) -> None:
    with ws_connect(f"ws://127.0.0.1:{port}/echo") as ws:
        ws.send("hi")
        assert ws.recv(timeout=10) == "hi"
        ws.send(b"bin")
        assert ws.recv(timeout=10) == b"bin"
    assert ws.close_code == 1000


class Served:
    """A command that should end up running uWSGI on ``port``, logging to a file."""

    def __init__(self, command: List[str], port: int, log_path: Path) -> None:
        self.command = command
        self.port = port
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO_ROOT, env=user_env(), stdout=log, stderr=subprocess.STDOUT
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, router: bool) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                return True  # reported below
            log = self.log()
            if "spawned uWSGI worker 1" not in log or "WSGI app 0" not in log:
                return False
            if router and "spawned uWSGI http 1" not in log:
                return False
            return port_accepts(self.port)

        assert wait_for(ready), f"uWSGI not ready:\n{self.log()}"
        assert self.process.poll() is None, f"exited with {self.process.returncode}:\n{self.log()}"

    def descendants(self) -> List[psutil.Process]:
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def interrupt(self, timeout: float = 15.0) -> Optional[int]:
        """SIGINT; the exit status, or ``None`` if it did not exit in time."""
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.process.poll() is None:
            for child in self.descendants():
                child.kill()
            self.process.kill()
            self.process.wait(5)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Callable[[List[str], int], Served]]:
    """Start commands; kill whatever is left of them after the test."""
    started: List[Served] = []

    def start(command: List[str], port: int) -> Served:
        item = Served(command, port, tmp_path / f"served-{len(started)}.log")
        started.append(item)
        return item

    yield start
    for item in started:
        item.kill()


# --------------------------------------------------------------------------
# Flags that cannot work


@pytest.mark.uwsgi
@pytest.mark.parametrize(
    ("flags", "hint"),
    [
        (("--async", "10"), "add --ugreen or --greenlet"),  # no suspend engine
        (("--asyncio", "10"), "add --greenlet"),
    ],
    ids=["async-without-suspend-engine", "asyncio-without-greenlet"],
)
def test_a_model_that_cannot_work_refuses_to_load_the_app(
    start_uwsgi: Callable[..., UwsgiServer], flags: Tuple[str, ...], hint: str
) -> None:
    server = start_uwsgi("examples.echo:app", gevent=None, extra=list(flags), expect_ready=False)
    assert "--gevent" not in server.command
    assert server.process is not None
    assert wait_for(lambda: server.process.poll() is not None), server.log()  # type: ignore[union-attr]
    assert server.process.returncode != 0
    log = server.log()
    assert "ConfigurationError" in log
    assert hint in log
    assert "no app loaded" in log  # --need-app made it give up


@pytest.mark.uwsgi
@pytest.mark.parametrize("hub", ["local://", "redis://127.0.0.1:1/0"])
def test_a_hub_across_workers_is_refused_at_start_where_no_loop_listens(
    start_uwsgi: Callable[..., UwsgiServer], hub: str
) -> None:
    """greenlet cores drive their loop only while they wait: no hub can listen there."""
    server = start_uwsgi(
        "tests.apps.contract:app",
        gevent=None,
        extra=["--async", "10", "--greenlet"],
        env={"FWS_HUB_URL": hub},
        expect_ready=False,
    )
    assert server.process is not None
    assert wait_for(lambda: server.process.poll() is not None), server.log()  # type: ignore[union-attr]
    log = server.log()
    assert "ConfigurationError" in log and "no app loaded" in log
    assert "the greenlet model has no loop of its own" in log
    assert "--gevent N, --threads N, --processes N or --asyncio N --greenlet" in log


@pytest.mark.uwsgi
@pytest.mark.parametrize(
    "flags",
    [("--async", "10"), ("--async", "10", "--pypy-eval", "uwsgi_pypy_setup_continulets()")],
    ids=["no-engine", "documented-setup-call"],
)
def test_pypy_async_without_continulets_names_the_workaround(
    start_uwsgi: Callable[..., UwsgiServer], pypy_build: PypyBuild, flags: Tuple[str, ...]
) -> None:
    """Under PyPy, --async with no continulet engine is refused, naming --pypy-eval.

    uWSGI 2.0.31's documented ``uwsgi_pypy_setup_continulets()`` installs no
    engine on Python 3 (it raises), so it is refused too. The PyPy plugin has
    no ``--need-app``: uWSGI keeps running, without the app.
    """
    # Ready as soon as the worker accepts: the master loaded the app (or failed) before.
    server = start_uwsgi("examples.echo:app", gevent=None, extra=list(flags), pypy=pypy_build)
    assert wait_for(lambda: "ConfigurationError" in server.log()), server.log()
    log = server.log()
    assert "PyPy plugin runs --async without its continulet engine" in log
    assert f"--pypy-eval '{PYPY_CONTINULETS_EVAL}'" in log
    if "uwsgi_pypy_setup_continulets()" in flags:
        assert "in uwsgi_pypy_setup_continulets" in log  # uWSGI's own error, first
        assert "PyPy Continulets engine loaded" not in log


@pytest.mark.uwsgi
def test_http_router_without_http_websockets_is_refused(tmp_path: Path) -> None:
    server = UwsgiServer("examples.echo:app", mode="http", log_dir=tmp_path)
    server.command = [part for part in server.command if part != "--http-websockets"]
    assert "--http" in server.command and "--http-websockets" not in server.command
    try:
        server.start(timeout=WAIT, expect_ready=False)
        assert server.process is not None
        assert wait_for(lambda: server.process.poll() is not None), server.log()  # type: ignore[union-attr]
        assert server.process.returncode != 0
        log = server.log()
        assert "ConfigurationError" in log
        assert "add --http-websockets" in log
        assert "no app loaded" in log
    finally:
        server.stop()


# --------------------------------------------------------------------------
# flask websocket run


def _dry_run(*args: str) -> List[str]:
    result = subprocess.run(
        [FLASK, "--app", "examples.echo", "websocket", "run", "--dry-run", *args],
        cwd=REPO_ROOT,
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    lines = [line for line in output.splitlines() if line.startswith(" * uWSGI: ")]
    assert len(lines) == 1, output
    return shlex.split(lines[0][len(" * uWSGI: ") :])


def _value(command: List[str], flag: str) -> str:
    assert flag in command, command
    return command[command.index(flag) + 1]


def test_cli_dry_run_prints_the_uwsgi_command() -> None:
    port = free_port()
    command = _dry_run("--port", str(port))
    for flag in ("--http-websockets", "--gevent", "--die-on-term", "--need-app", "--master"):
        assert flag in command, command
    assert _value(command, "--http") == f"127.0.0.1:{port}"
    assert int(_value(command, "--http-buffer-size")) >= 8192
    assert int(_value(command, "--gevent")) > 1
    assert _value(command, "--module") == "examples.echo:app"
    assert "--http-socket" not in command


def test_cli_dry_run_http_socket() -> None:
    port = free_port()
    command = _dry_run("--port", str(port), "--http-socket")
    assert _value(command, "--http-socket") == f"127.0.0.1:{port}"
    assert "--http" not in command and "--http-websockets" not in command
    for flag in ("--gevent", "--die-on-term", "--need-app"):
        assert flag in command, command
    assert _value(command, "--module") == "examples.echo:app"


@pytest.mark.uwsgi
@pytest.mark.parametrize("mode", ["http", "http-socket"])
def test_cli_run_serves_and_stops_on_sigint(
    mode: str, served: Callable[[List[str], int], Served]
) -> None:
    port = free_port()
    command = [FLASK, "--app", "examples.echo", "websocket", "run", "--port", str(port)]
    if mode == "http-socket":
        command.append("--http-socket")
    item = served(command, port)
    item.wait_ready(router=mode == "http")
    log = item.log()
    printed = [line for line in log.splitlines() if line.startswith(" * uWSGI: ")]
    assert len(printed) == 1, log
    assert ("--http-websockets" in printed[0]) == (mode == "http")
    # flask exec'd uWSGI: the process we started is now the uWSGI master.
    assert f"spawned uWSGI master process (pid: {item.process.pid})" in log
    assert_echoes(port)
    children = item.descendants()
    assert children, "no uWSGI workers"
    assert item.interrupt(timeout=15) is not None, f"still running after SIGINT:\n{item.log()}"
    assert wait_for(lambda: not any(child.is_running() for child in children), timeout=10)
    assert not port_accepts(port)
    assert "goodbye to uWSGI" in item.log()


# --------------------------------------------------------------------------
# The raw command from the documentation


@pytest.mark.uwsgi
def test_seed_raw_uwsgi_command_echoes(served: Callable[[List[str], int], Served]) -> None:
    port = free_port()
    command = [
        UWSGI,
        "--http",
        f"127.0.0.1:{port}",
        "--http-websockets",
        "--gevent",
        "100",
        "--wsgi-file",
        "examples/echo.py",
        "--callable",
        "app",
        "--master",
        "--need-app",
        "--die-on-term",
    ]
    item = served(command, port)
    item.wait_ready(router=True)
    assert_echoes(port)
    assert_echoes(port)  # a second connection on the same worker
    assert item.interrupt(timeout=15) is not None, f"still running after SIGINT:\n{item.log()}"
    for marker in ("segmentation fault", "DAMN ! worker", "Traceback"):
        assert marker not in item.log(), item.log()
