"""History and recovery on real uWSGI: one order per room across workers, and resuming.

Clients speak ``fws.v1`` (flask_websocket.wire): every message of a room with
history carries its position.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.parse
from typing import Any, Dict, List, Optional, Tuple

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as async_connect

from tests.uwsgi_server import UwsgiServer, poll_until

pytestmark = pytest.mark.uwsgi

APP = "tests.apps.history:app"
WORKERS = 4


async def member(
    server: UwsgiServer, room: str, since: Optional[Tuple[str, int]] = None
) -> Tuple[ClientConnection, Dict[str, Any]]:
    """A fws.v1 member of ``room``; the join's answer."""
    query = ""
    if since is not None:
        query = "?" + urllib.parse.urlencode({"fws_since": f"{room}:{since[0]}:{since[1]}"})
    ws = await async_connect(
        server.url(f"/h/{room}{query}"), subprotocols=["fws.v1"], open_timeout=20,
        ping_interval=None, max_queue=None,
    )  # fmt: skip
    assert ws.subprotocol == "fws.v1"
    joined = json.loads(await asyncio.wait_for(ws.recv(), 20))
    assert joined["j"] == room
    return ws, joined


async def worker_of(ws: ClientConnection) -> int:
    await ws.send("pid")
    while True:
        data = json.loads(await asyncio.wait_for(ws.recv(), 20))
        if "r" not in data:
            return int(data["d"])


async def one_on_each_worker(server: UwsgiServer, room: str) -> List[ClientConnection]:
    held: Dict[int, ClientConnection] = {}
    for _ in range(300):  # bounded
        if len(held) == WORKERS:
            break
        ws, _ = await member(server, room)
        pid = await worker_of(ws)
        if pid in held:
            await ws.close()
            continue
        held[pid] = ws
    assert len(held) == WORKERS, f"members on workers {sorted(held)} only"
    return list(held.values())


async def stream_of(ws: ClientConnection, count: int) -> List[Tuple[int, str]]:
    """The next ``count`` messages of the room's stream: (offset, text)."""
    got: List[Tuple[int, str]] = []
    while len(got) < count:
        data = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if "r" in data:
            got.append((data["o"], data["d"]))
    return got


@pytest.mark.parametrize("hub", ["local"])
def test_four_workers_publishing_at_once_give_one_gap_free_order(start_uwsgi, hub: str) -> None:
    server = start_uwsgi(
        APP, processes=WORKERS, gevent=200, extra=["--gevent-early-monkey-patch"],
        env={"FWS_HUB_NAME": f"hist-{os.getpid()}-{time.monotonic_ns()}"},
    )  # fmt: skip
    room = f"r{time.monotonic_ns()}"
    per_worker = 200

    async def scenario() -> List[List[Tuple[int, str]]]:
        members = await one_on_each_worker(server, room)
        for i, ws in enumerate(members):  # every worker publishes at the same time
            await ws.send(f"many:{per_worker}:w{i}")
        seen = await asyncio.gather(*(stream_of(ws, per_worker * WORKERS) for ws in members))
        for ws in members:
            await ws.close()
        return list(seen)

    seen = asyncio.run(scenario())
    first = seen[0]
    offsets = [offset for offset, _ in first]
    assert offsets == list(range(offsets[0], offsets[0] + per_worker * WORKERS))  # gap-free
    for other in seen[1:]:
        assert other == first  # one order, the same positions, for every member
    for i in range(WORKERS):  # and each publisher's own order within it
        mine = [text for _, text in first if text.startswith(f"w{i}.")]
        assert mine == [f"w{i}.{n}" for n in range(per_worker)]
    assert "Traceback" not in server.log(), server.log()


@pytest.fixture
def redis_url(tmp_path) -> Any:
    from tests.redis_server import RedisServer, require_redis_server

    require_redis_server()
    server = RedisServer(log_dir=tmp_path).start()
    yield server
    server.stop()


def test_two_instances_on_redis_publishing_at_once_give_one_order(start_uwsgi, redis_url) -> None:
    env = {"FWS_WEBSOCKET_HUB_URL": redis_url.url}
    extra = ["--gevent-early-monkey-patch"]
    servers = [
        start_uwsgi(APP, processes=2, gevent=200, extra=extra, env=env) for _ in range(2)
    ]
    room = f"r{time.monotonic_ns()}"
    per_member = 150

    async def scenario() -> List[List[Tuple[int, str]]]:
        members = [(await member(server, room))[0] for server in servers for _ in range(2)]
        for i, ws in enumerate(members):
            await ws.send(f"many:{per_member}:m{i}")
        seen = await asyncio.gather(*(stream_of(ws, per_member * len(members)) for ws in members))
        for ws in members:
            await ws.close()
        return list(seen)

    seen = asyncio.run(scenario())
    first = seen[0]
    offsets = [offset for offset, _ in first]
    assert offsets == list(range(offsets[0], offsets[0] + len(first)))
    assert all(other == first for other in seen[1:])


def test_after_its_worker_is_killed_a_member_resumes_and_misses_nothing(start_uwsgi) -> None:
    """kill -9 of the worker that held the connection: back on another, every message once."""
    server = start_uwsgi(APP, processes=2, gevent=200, extra=["--gevent-early-monkey-patch"])
    room = f"r{time.monotonic_ns()}"

    async def scenario() -> Tuple[Dict[str, Any], List[Tuple[int, str]]]:
        watcher, _ = await member(server, room)
        victim = await worker_of(watcher)
        for _ in range(100):  # bounded: a talker on the other worker
            talker, _ = await member(server, room)
            if await worker_of(talker) != victim:
                break
            await talker.close()
        else:
            raise AssertionError("no connection reached the second worker")
        await talker.send("say:before")
        ((offset, _),) = await stream_of(watcher, 1)
        await stream_of(talker, 1)
        epoch = epoch_of_last
        os.kill(victim, signal.SIGKILL)
        assert poll_until(lambda: victim not in server.worker_pids(), 10)
        for i in range(5):
            await talker.send(f"say:while away {i}")
        await stream_of(talker, 5)
        back, joined = await member(server, room, since=(epoch[0], offset))
        return joined, await stream_of(back, 5)

    epoch_of_last: List[str] = []

    async def first_epoch() -> None:
        ws, _ = await member(server, room)
        await ws.send("say:first")
        while not epoch_of_last:
            data = json.loads(await asyncio.wait_for(ws.recv(), 20))
            if "r" in data:
                epoch_of_last.append(data["e"])
        await ws.close()

    asyncio.run(first_epoch())
    joined, missed = asyncio.run(scenario())
    assert joined["recovered"] is True
    assert [text for _, text in missed] == [f"while away {i}" for i in range(5)]
    assert [offset for offset, _ in missed] == list(range(joined["o"] - 4, joined["o"] + 1))


def test_a_position_older_than_the_history_is_told_not_recovered(start_uwsgi) -> None:
    server = start_uwsgi(
        APP, processes=1, gevent=100, extra=["--gevent-early-monkey-patch"],
        env={"FWS_WEBSOCKET_HISTORY": json.dumps({"*": {"size": 3}})},
    )  # fmt: skip
    room = f"r{time.monotonic_ns()}"

    async def scenario() -> Tuple[Dict[str, Any], List[Tuple[int, str]]]:
        ws, _ = await member(server, room)
        for i in range(10):
            await ws.send(f"say:m{i}")
        seen = await stream_of(ws, 10)
        data_epoch = None
        await ws.send("say:last")
        while data_epoch is None:
            data = json.loads(await asyncio.wait_for(ws.recv(), 20))
            data_epoch = data.get("e")
        back, joined = await member(server, room, since=(data_epoch, seen[0][0]))
        kept = await stream_of(back, 3)  # what history still holds
        return joined, kept

    joined, kept = asyncio.run(scenario())
    assert joined["recovered"] is False
    assert [text for _, text in kept] == ["m8", "m9", "last"]


def test_a_member_that_joined_before_the_room_had_a_stream_resumes(start_uwsgi, redis_url) -> None:
    """Redis: a room without a stream answers the join with an empty epoch; ``room::0`` resumes."""
    env = {"FWS_WEBSOCKET_HUB_URL": redis_url.url}
    extra = ["--gevent-early-monkey-patch"]
    server = start_uwsgi(APP, processes=1, gevent=100, extra=extra, env=env)
    room = f"r{time.monotonic_ns()}"

    async def scenario() -> Tuple[Dict[str, Any], Dict[str, Any], List[Tuple[int, str]]]:
        early, first = await member(server, room)
        await early.close()  # gone before the room's first message
        talker, _ = await member(server, room)
        for i in range(3):
            await talker.send(f"say:m{i}")
        await stream_of(talker, 3)
        back, joined = await member(server, room, since=("", 0))
        missed = await stream_of(back, 3)
        await talker.close()
        await back.close()
        return first, joined, missed

    first, joined, missed = asyncio.run(scenario())
    assert (first["e"], first["o"]) == ("", 0)
    assert joined["recovered"] is True and joined["e"] != ""
    assert missed == [(1, "m0"), (2, "m1"), (3, "m2")]


def test_many_members_of_one_worker_publishing_at_once_are_all_stored(start_uwsgi) -> None:
    """gevent: SQLite's calls run in system threads; twenty handlers append at the same time."""
    server = start_uwsgi(APP, processes=1, gevent=100, extra=["--gevent-early-monkey-patch"])
    room = f"r{time.monotonic_ns()}"
    members, each = 20, 5

    async def scenario() -> List[List[Tuple[int, str]]]:
        sockets = [(await member(server, room))[0] for _ in range(members)]
        await asyncio.gather(
            *(ws.send(f"say:{i}.{n}") for i, ws in enumerate(sockets) for n in range(each))
        )
        seen = await asyncio.gather(*(stream_of(ws, members * each) for ws in sockets))
        for ws in sockets:
            await ws.close()
        return list(seen)

    seen = asyncio.run(scenario())
    first = seen[0]
    assert sorted(text for _, text in first) == sorted(
        f"{i}.{n}" for i in range(members) for n in range(each)
    )
    assert [offset for offset, _ in first] == list(range(1, members * each + 1))
    assert all(other == first for other in seen[1:])
