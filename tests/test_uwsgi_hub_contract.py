"""The hub contract on real uWSGI: every hub under every model whose workers can listen.

memory, local and redis, each under gevent (with and without the standard
library patched), threads, processes and asyncio,
with 4 workers holding one member each (tests/apps/contract.py). One scenario
checks, member by member, exactly what each receives, in order, up to a
final marker (so nothing extra arrives unnoticed): a broadcast to everyone,
to a room, skipping the sender, after a member left the room, ``send_to``,
presence, 2000 broadcasts exactly once and in order, a broadcast from a
plain view and one from a ``flask`` CLI command.

The memory hub serves one process: there each broadcast reaches only the
members in the publisher's worker, and that is what is expected of it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as async_connect

from tests.redis_server import RedisServer, require_redis_server
from tests.uwsgi_server import REPO_ROOT, UwsgiServer

pytestmark = pytest.mark.uwsgi

FLASK = str(Path(sys.executable).with_name("flask"))
APP = "tests.apps.contract:app"
MEMBERS = 4

#: uWSGI flags per model; ``processes`` has more workers than members, so a
#: plain HTTP request finds a free one.
MODELS: Dict[str, Dict[str, object]] = {
    "gevent": {"gevent": 100, "processes": 4, "extra": ["--gevent-early-monkey-patch"]},
    # Without the patch, the redis hub's calls run in system threads.
    "gevent-unpatched": {"gevent": 100, "processes": 4, "extra": []},
    "threads": {"gevent": None, "processes": 4, "extra": ["--threads", "16"]},
    "processes": {"gevent": None, "processes": 6, "extra": []},
    "asyncio": {"gevent": None, "processes": 4, "extra": ["--asyncio", "16", "--greenlet"]},
}
HUBS = ["memory", "local", "redis"]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    require_redis_server()
    server = RedisServer(log_dir=tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


@pytest.fixture(scope="module", params=[(h, m) for h in HUBS for m in MODELS], ids="-".join)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[UwsgiServer]:
    hub, model = request.param
    url = {"memory": "memory://", "local": "local://"}.get(hub)
    if url is None:
        url = request.getfixturevalue("redis_url")
    options = MODELS[model]
    uwsgi = UwsgiServer(
        APP,
        gevent=options["gevent"],  # type: ignore[arg-type]
        processes=int(options["processes"]),  # type: ignore[call-overload]
        extra=list(options["extra"]),  # type: ignore[call-overload]
        env={"FWS_HUB_URL": url, "FWS_HUB_NAME": f"contract-{os.getpid()}-{hub}-{model}"},
        log_dir=tmp_path_factory.mktemp(f"uwsgi-{hub}-{model}"),
    )
    uwsgi.hub = hub  # type: ignore[attr-defined]
    uwsgi.start()
    yield uwsgi
    uwsgi.stop()
    assert uwsgi.crash_lines() == [], uwsgi.log()


@dataclass
class Member:
    ws: ClientConnection
    id: str
    pid: int
    got: List[str] = field(default_factory=list)
    reader: Optional[asyncio.Task] = None  # type: ignore[type-arg]

    async def read(self) -> None:
        async for message in self.ws:
            self.got.append(str(message))

    async def wait_for(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.got) < count:
            assert time.monotonic() < deadline, (self.id, self.got[-5:])
            await asyncio.sleep(0.005)


async def members_on_every_worker(server: UwsgiServer) -> List[Member]:
    """One member per worker (bounded attempts; extra connections are closed again)."""
    held: Dict[int, Member] = {}
    spare = []
    for _ in range(300):
        if len(held) == MEMBERS:
            break
        ws = await async_connect(server.url("/m"), open_timeout=20, ping_interval=None)
        _, connection_id, pid = str(await asyncio.wait_for(ws.recv(), 20)).split()
        if int(pid) in held:
            spare.append(ws)
            if len(spare) >= 8:
                await asyncio.gather(*(old.close() for old in spare))
                spare.clear()
            continue
        held[int(pid)] = Member(ws, connection_id, int(pid))
    await asyncio.gather(*(old.close() for old in spare))
    assert len(held) == MEMBERS, f"members reached only workers {sorted(held)}"
    members = list(held.values())
    for member in members:
        member.reader = asyncio.create_task(member.read())
    return members


def test_hub_contract(server: UwsgiServer) -> None:
    one_process = server.hub == "memory"  # type: ignore[attr-defined]

    def reach(publisher: Member, candidates: List[Member]) -> List[Member]:
        """Who a broadcast from ``publisher`` reaches among ``candidates``."""
        if one_process:
            return [m for m in candidates if m.pid == publisher.pid]
        return candidates

    async def scenario() -> None:
        members = await members_on_every_worker(server)
        m0, m1, m2, m3 = members
        expected: Dict[str, List[str]] = {m.id: [] for m in members}

        async def command(member: Member, text: str, answer: Optional[str] = None) -> None:
            await member.ws.send(text)
            if answer is not None:
                expected[member.id].append(answer)
                await member.wait_for(len(expected[member.id]))

        async def delivered(text: str, recipients: List[Member]) -> None:
            for member in recipients:
                expected[member.id].append(text)
            for member in recipients:
                await member.wait_for(len(expected[member.id]))

        for member in members:
            await command(member, "join:r", "joined r")
        await command(m0, "all:a1")
        await delivered("a1", reach(m0, members))
        await command(m1, "room:r:r1")
        await delivered("r1", reach(m1, members))
        await command(m2, "skip:r:s1")
        await delivered("s1", [m for m in reach(m2, members) if m is not m2])
        await command(m3, "leave:r", "left r")
        await command(m0, "room:r:r2")
        await delivered("r2", reach(m0, [m0, m1, m2]))
        await command(m0, f"to:{m2.id}:d1")
        await delivered("d1", reach(m0, [m2]))
        await command(m1, "thread:r:t1")  # from a system thread of the app's own
        await delivered("t1", reach(m1, [m0, m1, m2]))
        in_room = reach(m1, [m0, m1, m2])
        await command(m1, "members:r", "members " + json.dumps(sorted(m.id for m in in_room)))
        await command(m0, "many:r:2000")
        await delivered_many(m0, reach(m0, [m0, m1, m2]), expected)
        # From a plain view, in whichever worker serves it.
        with urllib.request.urlopen(server.http_url("/view?room=r&text=v1"), timeout=20) as reply:
            view_pid = int(reply.read())
        by_view = [m for m in (m0, m1, m2) if not one_process or m.pid == view_pid]
        await delivered("v1", by_view)
        # From a flask command: another process, on the same host.
        result = await asyncio.to_thread(
            subprocess.run,
            [FLASK, "--app", "tests.apps.contract", "shout", "c1", "--room", "r"],
            cwd=REPO_ROOT,
            env=server.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        await delivered("c1", [] if one_process else [m0, m1, m2])
        # A marker last: whatever arrived before it was expected, in this order.
        for member in members:
            await command(member, "echo:end", "end")
        for member in members:
            assert member.got == expected[member.id], member.id
        await asyncio.gather(*(m.ws.close() for m in members))

    async def delivered_many(
        publisher: Member, recipients: List[Member], expected: Dict[str, List[str]]
    ) -> None:
        for member in recipients:
            expected[member.id].extend(f"seq {i}" for i in range(2000))
        expected[publisher.id].append("many done")  # after its own 2000
        for member in recipients:
            await member.wait_for(len(expected[member.id]), timeout=60)
        await publisher.wait_for(len(expected[publisher.id]), timeout=60)

    asyncio.run(scenario())
    assert "Traceback" not in server.log(), server.log()


def test_send_to_user_and_close_user_reach_every_worker(server: UwsgiServer) -> None:
    """A user with a connection in each worker: a view sends to them all, then logs them out."""
    if server.hub == "memory":  # type: ignore[attr-defined]
        pytest.skip("one process per hub: covered in-process (tests/hubs/contract.py)")
    async def scenario() -> None:
        alice = await user_on_every_worker(server, "alice")
        bob = await user_on_every_worker(server, "bob", count=1)
        await asyncio.to_thread(get, server, "/to-user/alice?text=hello%20alice")
        for member in alice:
            await member.wait_for(1)
            assert member.got == ["hello alice"]
        await asyncio.to_thread(get, server, "/close-user/alice")
        for member in alice:  # each reader ends: the server closed that connection
            assert member.reader is not None
            await asyncio.wait_for(asyncio.gather(member.reader, return_exceptions=True), 20)
            assert (member.ws.close_code, member.ws.close_reason) == (4001, "logged out")
        # Bob was not touched.
        await bob[0].ws.send("echo:still here")
        await bob[0].wait_for(1)
        assert bob[0].got == ["still here"]
        await bob[0].ws.close()

    asyncio.run(scenario())
    assert "Traceback" not in server.log(), server.log()


def get(server: UwsgiServer, path: str) -> str:
    with urllib.request.urlopen(server.http_url(path), timeout=20) as reply:
        return str(reply.read().decode())


async def user_on_every_worker(
    server: UwsgiServer, user: str, count: int = MEMBERS
) -> List[Member]:
    """``count`` connections of ``user``, on as many different workers (bounded attempts)."""
    held: Dict[int, Member] = {}
    spare = []
    for _ in range(300):
        if len(held) == count:
            break
        ws = await async_connect(server.url(f"/m?user={user}"), open_timeout=20, ping_interval=None)
        _, connection_id, pid = str(await asyncio.wait_for(ws.recv(), 20)).split()
        if int(pid) in held:
            spare.append(ws)
            if len(spare) >= 8:
                await asyncio.gather(*(old.close() for old in spare))
                spare.clear()
            continue
        held[int(pid)] = Member(ws, connection_id, int(pid))
    await asyncio.gather(*(old.close() for old in spare))
    assert len(held) == count, f"{user}'s connections reached only workers {sorted(held)}"
    members = list(held.values())
    for member in members:
        member.reader = asyncio.create_task(member.read())
    return members
