"""Rooms with history on the redis hub through Redis outages: real uWSGI, real Redis.

Clients speak ``fws.v1`` (:mod:`flask_websocket.wire`) with a small client of
the test's own on ``websockets``' asyncio client: every message of a room
with history carries its position, and a client that comes back gives its
last one (``fws_since``).

- A hub whose subscription broke (here: a relay between it and Redis cuts
  it) reads each of its rooms' streams when it is back: what was published
  meanwhile reaches its live members, in order, even if nothing is
  published after it; if Redis lost the stream, its members are closed
  with 1012 and told ``recovered: false`` when they come back.
- A member joining a room that has no stream yet, while another instance
  publishes the room's first message, gets it exactly once (or joins after
  it).
- 200 clients in 10 rooms over two instances while Redis restarts mid-way:
  with persistence every client has every message once and in order and is
  told ``recovered: true``; without, every client is told ``recovered:
  false`` and nothing is duplicated.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed

from tests.redis_server import REDIS_SERVER, RedisServer
from tests.relay import TcpRelay
from tests.uwsgi_server import UwsgiServer

pytestmark = [
    pytest.mark.uwsgi,
    pytest.mark.redis,
    pytest.mark.skipif(
        REDIS_SERVER is None and not os.environ.get("CI"),
        reason="redis-server is not installed (apt-get install redis-server)",
    ),
]

APP = "tests.apps.history:app"
#: (epoch, offset, text) of one message of a room's stream.
Message = Tuple[str, int, str]


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(log_dir=tmp_path).start()
    yield server
    server.stop()


def instance(start_uwsgi: Any, url: str, processes: int = 1) -> UwsgiServer:
    server: UwsgiServer = start_uwsgi(
        APP, processes=processes, gevent=300, extra=["--gevent-early-monkey-patch"],
        env={"FWS_WEBSOCKET_HUB_URL": url},
    )  # fmt: skip
    return server


async def member(
    server: UwsgiServer, room: str, since: Optional[Tuple[str, int]] = None
) -> Tuple[ClientConnection, Dict[str, Any]]:
    """A fws.v1 member of ``room`` (resuming from ``since``); the join's answer."""
    query = ""
    if since is not None:
        query = "?" + urllib.parse.urlencode({"fws_since": f"{room}:{since[0]}:{since[1]}"})
    ws = await async_connect(
        server.url(f"/h/{room}{query}"), subprotocols=["fws.v1"], open_timeout=30,
        ping_interval=None, max_queue=None, close_timeout=5,
    )  # fmt: skip
    assert ws.subprotocol == "fws.v1"
    joined = json.loads(await asyncio.wait_for(ws.recv(), 30))
    assert joined["j"] == room, joined
    return ws, joined


async def stream_of(ws: ClientConnection, count: int, timeout: float = 30) -> List[Message]:
    """The next ``count`` messages of the room's stream."""
    got: List[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        data = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
        if "r" in data:
            got.append((data["e"], data["o"], data["d"]))
    return got


def post_say(server: UwsgiServer, room: str, text: str) -> None:
    request = urllib.request.Request(
        server.http_url(f"/say/{room}"), data=text.encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.read() == b"ok"


# -- a subscription that breaks --------------------------------------------------


def test_what_was_published_while_the_subscription_was_cut_reaches_live_members(
    start_uwsgi: Any, redis: RedisServer
) -> None:
    """Nothing is published after the outage: only the hub's own check can bring the messages."""
    with TcpRelay(redis.port) as relay:
        cut_off = instance(start_uwsgi, f"redis://127.0.0.1:{relay.port}/0")
        direct = instance(start_uwsgi, redis.url)
        room = f"r{time.monotonic_ns()}"

        async def scenario() -> Tuple[List[Message], List[Message]]:
            watcher, _ = await member(cut_off, room)
            talker, _ = await member(direct, room)
            await talker.send("say:m0")
            before = await stream_of(watcher, 1)
            assert relay.cut(refuse_for=2.0) >= 2  # the hub's publisher and listener
            for i in range(1, 6):
                await talker.send(f"say:m{i}")
            await stream_of(talker, 6)  # all six are in the room's stream
            after = await stream_of(watcher, 5, timeout=30)
            await watcher.close()
            await talker.close()
            return before, after

        before, after = asyncio.run(scenario())
    ((epoch, first, _),) = before
    assert after == [(epoch, first + i, f"m{i}") for i in range(1, 6)]
    assert "is back after" in cut_off.log()


@pytest.mark.parametrize("published", [True, False], ids=["published", "quiet"])
def test_members_are_told_when_redis_lost_the_stream_during_the_cut(
    start_uwsgi: Any, redis: RedisServer, published: bool
) -> None:
    """FLUSHALL while the hub is cut off: its members are closed with 1012, resume unrecovered."""
    import redis as redis_py

    with TcpRelay(redis.port) as relay:
        cut_off = instance(start_uwsgi, f"redis://127.0.0.1:{relay.port}/0")
        direct = instance(start_uwsgi, redis.url)
        room = f"r{time.monotonic_ns()}"

        async def scenario() -> Tuple[Message, Optional[int], Dict[str, Any], List[Message]]:
            watcher, _ = await member(cut_off, room)
            talker, _ = await member(direct, room)
            await talker.send("say:m0")
            (seen,) = await stream_of(watcher, 1)
            relay.cut(refuse_for=2.0)
            client = redis_py.Redis.from_url(redis.url)
            client.flushall()
            client.close()
            if published:
                await talker.send("say:after the flush")
                await stream_of(talker, 2)
            code = None
            try:
                await stream_of(watcher, 1, timeout=30)
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else None
            back, joined = await member(cut_off, room, since=(seen[0], seen[1]))
            replayed = await stream_of(back, 1) if published else []
            await back.close()
            await talker.close()
            return seen, code, joined, replayed

        seen, code, joined, replayed = asyncio.run(scenario())
    assert code == 1012
    assert joined["recovered"] is False
    if published:
        assert joined["e"] != seen[0]
        assert replayed == [(joined["e"], 1, "after the flush")]
    assert "lost" in cut_off.log()


# -- a join racing the room's first message ----------------------------------------


def test_members_joining_while_the_first_message_is_published_get_it_once(
    start_uwsgi: Any, redis: RedisServer
) -> None:
    servers = [instance(start_uwsgi, redis.url, processes=2) for _ in range(2)]
    members_per_attempt = 8
    random.seed(12)

    async def attempt(number: int) -> List[Tuple[Dict[str, Any], List[Message]]]:
        room = f"race{number}-{time.monotonic_ns()}"
        joins = [
            asyncio.create_task(member(servers[i % 2], room)) for i in range(members_per_attempt)
        ]
        await asyncio.sleep(random.uniform(0.0, 0.03))
        await asyncio.to_thread(post_say, servers[number % 2], room, "first")
        members = await asyncio.gather(*joins)
        await asyncio.to_thread(post_say, servers[(number + 1) % 2], room, "second")
        seen = []
        for ws, joined in members:
            got: List[Message] = []
            while not got or got[-1][2] != "second":  # bounded by stream_of's timeout
                got += await stream_of(ws, 1, timeout=20)
            seen.append((joined, got))
            await ws.close()
        return seen

    async def scenario() -> List[Tuple[Dict[str, Any], List[Message]]]:
        seen = []
        for number in range(50):
            seen += await attempt(number)
        return seen

    seen = asyncio.run(scenario())
    before = 0
    for joined, got in seen:
        epoch = got[-1][0]
        if joined["o"] == 1:  # joined after the first message: the second one only
            before += 1
            assert joined["e"] == epoch and got == [(epoch, 2, "second")], (joined, got)
        else:  # joined before it: both, once each
            assert (joined["e"], joined["o"]) == ("", 0), joined
            assert got == [(epoch, 1, "first"), (epoch, 2, "second")], (joined, got)
    # Both kinds of join happened: the race was run, not avoided.
    assert 0 < before < len(seen), before
