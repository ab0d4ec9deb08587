"""Deploys on real uWSGI (gevent): reloads and shutdowns close every WebSocket properly.

A graceful reload (SIGHUP to the master, ``--touch-reload``, a chain reload
through the master FIFO) closes every open WebSocket with 1012 and a reason,
the handlers' clean-up runs, and no worker waits out the reload mercy; plain
HTTP keeps being answered through it. A shutdown (SIGINT, SIGTERM with
``--die-on-term``) closes them with 1001.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import threading
import time
from pathlib import Path
from typing import List, Tuple

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as async_connect

from tests.uwsgi_server import UwsgiServer, poll_until

pytestmark = pytest.mark.uwsgi

APP = "tests.apps.drain:app"
CLIENTS = 200
#: uWSGI's default: how long a reload would wait for a request that never ends.
MERCY = 60


async def open_clients(server: UwsgiServer, count: int, room: str = "r") -> List[ClientConnection]:
    clients = []
    for start in range(0, count, 50):  # bounded batches
        batch = [
            async_connect(server.url(f"/ws/{room}"), open_timeout=20, ping_interval=None)
            for _ in range(min(50, count - start))
        ]
        clients += await asyncio.gather(*batch)
    for ws in clients:
        assert str(await asyncio.wait_for(ws.recv(), 20)).startswith("hello ")
    return clients


async def closes_of(
    clients: List[ClientConnection], timeout: float
) -> List[Tuple[int, str, float]]:
    """Each client's (close code, reason, seconds until it came), waiting at most ``timeout``."""
    started = time.monotonic()

    async def one(ws: ClientConnection) -> Tuple[int, str, float]:
        try:
            while True:
                await asyncio.wait_for(ws.recv(), timeout)
        except asyncio.TimeoutError:
            return (-1, "no close within the timeout", time.monotonic() - started)
        except Exception:
            pass
        # The server's close frame (1006 and no reason if none came).
        return (ws.close_code or 1006, ws.close_reason or "", time.monotonic() - started)

    return list(await asyncio.gather(*(one(ws) for ws in clients)))


class HttpProbe:
    """GETs ``/`` every 20 ms in a thread; records failures and the longest wait."""

    def __init__(self, server: UwsgiServer) -> None:
        self.server = server
        self.failures: List[str] = []
        self.answered = 0
        self.longest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HttpProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        for _ in range(5000):  # bounded
            if self._stop.is_set():
                return
            started = time.monotonic()
            conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=20)
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    self.failures.append(f"HTTP {response.status}")
                else:
                    self.answered += 1
            except OSError as exc:
                self.failures.append(repr(exc))
            finally:
                conn.close()
            self.longest = max(self.longest, time.monotonic() - started)
            self._stop.wait(0.02)


def start(start_uwsgi, *extra: str, processes: int = 2, **kwargs: object) -> UwsgiServer:
    return start_uwsgi(  # type: ignore[no-any-return]
        APP,
        processes=processes,
        gevent=CLIENTS + 100,
        extra=["--gevent-early-monkey-patch", "--worker-reload-mercy", str(MERCY), *extra],
        **kwargs,
    )


def respawned(server: UwsgiServer, old: List[int], timeout: float) -> bool:
    """True once ``len(old)`` workers run and none of them is an old one."""

    def done() -> bool:
        now = server.worker_pids()
        return len(now) == len(old) and not set(now) & set(old)

    return poll_until(done, timeout)


def assert_all_closed_with(closes: List[Tuple[int, str, float]], code: int, reason: str) -> None:
    assert len(closes) == CLIENTS
    wrong = [c for c in closes if (c[0], c[1]) != (code, reason)]
    assert wrong == [], wrong[:5]


def test_a_graceful_reload_closes_with_1012_and_waits_for_nothing(start_uwsgi) -> None:
    server = start(start_uwsgi)
    old = server.worker_pids()

    async def scenario() -> List[Tuple[int, str, float]]:
        clients = await open_clients(server, CLIENTS)
        os.kill(server.process.pid, signal.SIGHUP)  # type: ignore[union-attr]
        return await closes_of(clients, timeout=30)

    with HttpProbe(server) as probe:
        closes = asyncio.run(scenario())
        reloaded = respawned(server, old, timeout=MERCY / 2)
        time.sleep(0.5)  # a few answers from the new workers too
    assert_all_closed_with(closes, 1012, "server restarting")
    print(f"\n1012 reached {CLIENTS} clients within {max(c[2] for c in closes):.3f} s; "
          f"plain HTTP: {probe.answered} answered, longest wait {probe.longest:.3f} s")  # fmt: skip
    assert reloaded, f"the workers were not replaced well before the mercy: {server.log()[-3000:]}"
    assert probe.failures == [] and probe.answered > 0
    log = server.log()
    assert log.count("cleanup ") >= CLIENTS  # every handler's clean-up ran
    assert "NO MERCY" not in log  # uWSGI's line when it kills a worker that would not go
    assert server.crash_lines() == []


def test_rooms_forget_the_closed_connections_after_a_reload(start_uwsgi) -> None:
    server = start(start_uwsgi, processes=1)
    old = server.worker_pids()

    async def scenario() -> None:
        clients = await open_clients(server, 5, room="lobby")
        os.kill(server.process.pid, signal.SIGHUP)  # type: ignore[union-attr]
        await closes_of(clients, timeout=30)

    asyncio.run(scenario())
    assert respawned(server, old, timeout=MERCY / 2)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    conn.request("GET", "/members/lobby")
    assert conn.getresponse().read() == b""  # none of the closed ones is still a member
    conn.close()


@pytest.mark.parametrize(
    ("how", "extra"),
    [("SIGINT", []), ("SIGTERM", [])],
)
def test_a_shutdown_closes_with_1001(start_uwsgi, how: str, extra: List[str]) -> None:
    server = start(start_uwsgi, *extra)  # the fixture passes --die-on-term

    async def scenario() -> List[Tuple[int, str, float]]:
        clients = await open_clients(server, CLIENTS)
        os.kill(server.process.pid, getattr(signal, how))  # type: ignore[union-attr]
        return await closes_of(clients, timeout=30)

    closes = asyncio.run(scenario())
    assert_all_closed_with(closes, 1001, "server shutting down")
    print(f"\n1001 reached {CLIENTS} clients within {max(c[2] for c in closes):.3f} s ({how})")
    assert server.process is not None and server.process.wait(30) is not None


def test_touch_reload_closes_with_1012(start_uwsgi, tmp_path: Path) -> None:
    trigger = tmp_path / "reload-me"
    trigger.write_text("")
    server = start(start_uwsgi, "--touch-reload", str(trigger))
    old = server.worker_pids()

    async def scenario() -> List[Tuple[int, str, float]]:
        clients = await open_clients(server, CLIENTS)
        time.sleep(1.1)  # uWSGI compares modification times to the second
        trigger.write_text("now")
        return await closes_of(clients, timeout=30)

    closes = asyncio.run(scenario())
    assert_all_closed_with(closes, 1012, "server restarting")
    assert respawned(server, old, timeout=MERCY / 2)


def test_a_chain_reload_closes_with_1012_one_worker_at_a_time(
    start_uwsgi, tmp_path: Path
) -> None:
    fifo = tmp_path / "master.fifo"
    server = start(start_uwsgi, "--lazy-apps", "--master-fifo", str(fifo))
    old = server.worker_pids()

    async def scenario() -> List[Tuple[int, str, float]]:
        clients = await open_clients(server, CLIENTS)
        with open(fifo, "w") as control:
            control.write("c")  # chain reload: one worker after the other
        return await closes_of(clients, timeout=60)

    with HttpProbe(server) as probe:
        closes = asyncio.run(scenario())
        reloaded = respawned(server, old, timeout=MERCY / 2)
    assert_all_closed_with(closes, 1012, "server restarting")
    assert reloaded
    assert probe.failures == []
    print(f"\nchain reload: plain HTTP longest wait {probe.longest:.3f} s")
