"""Start, kill and restart a real redis-server for the tests (127.0.0.1 only)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

from tests.uwsgi_server import free_port

#: The redis-server executable, or ``None`` if it is not installed.
REDIS_SERVER = shutil.which("redis-server")


def require_redis_server() -> None:
    """Skip the calling test without redis-server, or fail it when ``CI`` is set."""
    if REDIS_SERVER is None:
        import pytest

        message = "redis-server is not on PATH (scripts/bootstrap.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI is set, so this is an error")
        pytest.skip(message)


class RedisServer:
    """One redis-server on a free 127.0.0.1 port, without persistence unless asked.

    ``kill()`` then ``start()`` again gives a restarted (empty) server on the
    same port, as after a crash. With ``persistence``, every write goes to an
    append-only file (``appendfsync always``) in ``log_dir``: ``stop()`` then
    ``start()`` (or :meth:`restart`) gives the same data back.
    """

    def __init__(
        self,
        *,
        port: Optional[int] = None,
        log_dir: Optional[Path] = None,
        persistence: bool = False,
    ) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not on PATH: apt-get install redis-server")
        self.port = port or free_port()
        self.log_dir = log_dir or Path(os.environ.get("TMPDIR", "/tmp"))
        self.log_path = self.log_dir / f"redis-{self.port}.log"
        self.persistence = persistence
        self.process: Optional[subprocess.Popen[bytes]] = None

    def __repr__(self) -> str:
        return f"<RedisServer :{self.port}>"

    @property
    def url(self) -> str:
        """``redis://`` URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start redis-server and wait until it answers PING."""
        assert REDIS_SERVER is not None
        command = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self.persistence else "no",
            "--appendfsync", "always",
            "--appenddirname", f"appendonly-{self.port}",
            "--daemonize", "no",
            "--dir", str(self.log_dir),
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self.process.returncode}:\n{self.log()}"
                )
            if self.ping():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING in {timeout} s:\n{self.log()}")

    def ping(self) -> bool:
        """True if the server answers PING now."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: the server dies at once, as in a crash (its data is gone)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing answers (a hung server, a partition)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop with SIGTERM; kill if it does not stop in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)  # if paused, or SIGTERM waits
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self, down_for: float = 0.0) -> None:
        """Stop (SIGTERM: the append-only file is complete), stay down ``down_for`` s, start."""
        self.stop()
        time.sleep(down_for)
        self.start()

    def log(self) -> str:
        """Everything redis-server printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
