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
from dataclasses import dataclass, field
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
    print(f"\n{before} of {len(seen)} members joined after the first message")
    # Both kinds of join happened: the race was run, not avoided.
    assert 0 < before < len(seen), before


# -- 200 clients while Redis restarts ----------------------------------------------

ROOMS = 10
CLIENTS = 200
MESSAGES = 2000  # in all: MESSAGES // ROOMS per room


@dataclass(eq=False)
class Client:
    """A fws.v1 member that comes back with its position whenever it is closed."""

    server: UwsgiServer
    room: str
    #: Closes itself during the outage, and comes back once Redis is.
    leaves: bool = False
    left: bool = False
    position: Tuple[str, int] = ("", 0)
    joined_once: bool = False
    got: List[Message] = field(default_factory=list)
    #: (join answer, monotonic time it came).
    joins: List[Tuple[Dict[str, Any], float]] = field(default_factory=list)
    closes: List[Optional[int]] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)
    ws: Optional[ClientConnection] = None

    def note(self, data: Dict[str, Any]) -> None:
        message = (data["e"], data["o"], data["d"])
        epoch, offset = self.position
        if message[0] == epoch:
            if message[1] <= offset:
                self.problems.append(f"twice or backwards: {message} at {self.position}")
            elif message[1] != offset + 1:
                self.problems.append(f"gap: {message} at {self.position}")
        else:  # a stream that started after the join's answer: from its beginning
            if epoch:
                self.problems.append(f"another epoch, never told: {message} at {self.position}")
            if message[1] != 1:
                self.problems.append(f"gap: {message} at {self.position}")
        self.got.append(message)
        self.position = (message[0], message[1])

    async def run(
        self, redis_back: asyncio.Event, outage: asyncio.Event, stop: asyncio.Event
    ) -> None:
        for _ in range(100):  # bounded: reconnections
            if stop.is_set():
                return
            if self.left and not redis_back.is_set():
                await redis_back.wait()
            try:
                since = self.position if self.joined_once else None
                ws, joined = await member(self.server, self.room, since=since)
            except (OSError, ConnectionClosed, asyncio.TimeoutError) as exc:
                self.closes.append(getattr(getattr(exc, "rcvd", None), "code", None))
                await asyncio.sleep(random.uniform(0.1, 0.5))
                continue
            self.ws = ws
            self.joins.append((joined, time.monotonic()))
            known = self.position[0]
            if self.joined_once and known and joined["e"] != known and joined["recovered"]:
                self.problems.append(f"another epoch said recovered: {joined} at {self.position}")
            if not self.joined_once or joined["e"] != self.position[0]:
                # A first join, or another stream: what follows is after the answer's
                # position, or (another stream) all that history holds of it.
                self.position = (joined["e"], joined["o"] if not self.joined_once else 0)
            self.joined_once = True
            try:
                while True:
                    reader = asyncio.ensure_future(ws.recv())
                    waits = [reader, asyncio.ensure_future(stop.wait())]
                    if self.leaves and not self.left:
                        waits.append(asyncio.ensure_future(outage.wait()))
                    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                    for task in pending:
                        task.cancel()
                    if reader not in done:
                        await ws.close()
                        if stop.is_set():
                            return
                        self.left = True
                        break  # the outage started: leave, come back once Redis is
                    data = json.loads(reader.result())
                    if "r" in data:
                        self.note(data)
            except ConnectionClosed as exc:
                self.closes.append(exc.rcvd.code if exc.rcvd else None)
                await asyncio.sleep(random.uniform(0.0, 0.3))
        self.problems.append("gave up reconnecting")


@dataclass
class Publisher:
    """Broadcasts ``pub:<text>`` one at a time into its room, again after each ``nak``."""

    server: UwsgiServer
    room: str
    texts: List[str]
    acked: int = 0
    naks: List[Tuple[float, str]] = field(default_factory=list)

    async def run(self, deadline: float) -> None:
        ws: Optional[ClientConnection] = None
        while self.acked < len(self.texts) and time.monotonic() < deadline:
            text = self.texts[self.acked]
            try:
                if ws is None:
                    ws, _ = await member(self.server, self.room)
                await ws.send(f"pub:{text}")
                while True:
                    data = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    answer = data.get("d", "")
                    if "r" in data or not answer.endswith(f":{text}"):
                        continue
                    if answer.startswith("ack:"):
                        self.acked += 1
                    else:
                        _, elapsed, kind, _ = answer.split(":", 3)
                        self.naks.append((float(elapsed), kind))
                        await asyncio.sleep(0.2)
                    break
            except (OSError, ConnectionClosed, asyncio.TimeoutError):
                ws = None  # closed (its history was lost) or refused: again
                await asyncio.sleep(random.uniform(0.1, 0.3))
        if ws is not None:
            await ws.close()


def read_history(server: UwsgiServer, room: str) -> List[Tuple[int, str]]:
    with urllib.request.urlopen(server.http_url(f"/history/{room}"), timeout=30) as response:
        lines = response.read().decode().splitlines()
    return [(int(offset), text) for offset, _, text in (line.partition(" ") for line in lines)]


@pytest.mark.parametrize("persistence", [True, False], ids=["persistent", "forgetful"])
def test_200_clients_through_a_redis_restart(
    start_uwsgi: Any, tmp_path: Path, persistence: bool
) -> None:
    redis = RedisServer(log_dir=tmp_path, persistence=persistence).start()
    try:
        servers = [instance(start_uwsgi, redis.url, processes=2) for _ in range(2)]
        report = asyncio.run(restart_scenario(servers, redis, persistence))
        check_restart(servers, persistence, *report)
    finally:
        redis.stop()


def check_restart(
    servers: List[UwsgiServer],
    persistence: bool,
    clients: List[Client],
    publishers: List[Publisher],
    history: Dict[str, Tuple[str, List[Tuple[int, str]]]],
    restarted_at: float,
) -> None:
    print(
        f"\n{'with' if persistence else 'without'} persistence: "
        f"{sum(len(c.got) for c in clients)} deliveries, "
        f"{sum(len(c.joins) for c in clients)} joins, "
        f"{sum(1 for c in clients for code in c.closes if code == 1012)} closes with 1012, "
        f"{sum(len(p.naks) for p in publishers)} broadcasts refused (HubError), "
        f"slowest {max((e for p in publishers for e, _ in p.naks), default=0):.3f} s, "
        f"{sum(len(e) - len({t for _, t in e}) for _, e in history.values())} texts stored "
        "twice (published again after a HubError whose append had gone through)"
    )
    problems = [f"{c.room}: {p}" for c in clients for p in c.problems]
    assert problems == []
    for publisher in publishers:  # every message was published, in the end
        assert publisher.acked == len(publisher.texts)
        assert {kind for _, kind in publisher.naks} <= {"HubError"}
        assert all(elapsed < 6.0 for elapsed, _ in publisher.naks)  # socket_timeout: 5 s
    assert any(p.naks for p in publishers)  # the outage was seen
    if persistence:  # every message published is in its room's stream
        for publisher in publishers:
            assert {text for _, text in history[publisher.room][1]} == set(publisher.texts)
    for client in clients:
        stream = history[client.room]
        epoch, entries = stream
        mine = [(offset, text) for e, offset, text in client.got if e == epoch]
        # Every message of the room's final stream, exactly once, in order.
        assert mine == entries, client.room
        assert [offset for offset, _ in mine] == list(range(1, len(entries) + 1)), client.room
        after = [joined for joined, at in client.joins if at > restarted_at]
        if persistence:
            assert all(joined["recovered"] for joined, _ in client.joins), client.joins
            assert len(client.joins) == (2 if client.leaves else 1)  # left and came back
            assert len({e for e, _, _ in client.got}) == 1
            assert 1012 not in client.closes
        else:  # told, every one: recovery was incomplete
            assert any(not joined["recovered"] for joined in after), client.joins
    for server in servers:
        log = server.log()
        hub_lines = [line for line in log.splitlines() if "redis hub" in line or "room " in line]
        assert server.crash_lines() == [], log
        assert "Traceback" not in log, log
        # One warning per worker per outage, and one when Redis is back.
        assert log.count("redis hub: lost the connection to Redis") == 2, hub_lines
        assert log.count("redis hub: Redis at") == 2, hub_lines
        if not persistence:
            assert "cannot be recovered" in log, hub_lines


async def restart_scenario(
    servers: List[UwsgiServer], redis: RedisServer, persistence: bool
) -> Tuple[List[Client], List[Publisher], Dict[str, Tuple[str, List[Tuple[int, str]]]], float]:
    rooms = [f"room{i}-{time.monotonic_ns()}" for i in range(ROOMS)]
    clients = [
        Client(servers[i % 2], rooms[i % ROOMS], leaves=(i // ROOMS) % 2 == 1)
        for i in range(CLIENTS)
    ]
    redis_back, outage, stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(c.run(redis_back, outage, stop)) for c in clients]
    deadline = time.monotonic() + 60
    while sum(c.joined_once for c in clients) < CLIENTS:  # every member in before publishing
        assert time.monotonic() < deadline, "the clients did not all join"
        await asyncio.sleep(0.05)
    per_room = MESSAGES // ROOMS
    publishers = [
        Publisher(servers[(i + 1) % 2], room, [f"{i}.{n}" for n in range(per_room)])
        for i, room in enumerate(rooms)
    ]
    publishing = [asyncio.create_task(p.run(time.monotonic() + 90)) for p in publishers]
    while sum(p.acked for p in publishers) < MESSAGES // 2:  # mid-way
        assert time.monotonic() < deadline + 60, "publishing stalled"
        await asyncio.sleep(0.02)
    outage.set()
    if persistence:
        await asyncio.to_thread(redis.restart, 1.0)  # SIGTERM, down 1 s, same data
    else:
        redis.kill()  # a crash: everything is gone
        await asyncio.sleep(1.0)
        await asyncio.to_thread(redis.start)
    restarted_at = time.monotonic()
    redis_back.set()
    await asyncio.gather(*publishing)
    history = {}
    for room in rooms:
        entries = await asyncio.to_thread(read_history, servers[0], room)
        epoch_data = await asyncio.to_thread(epoch_of, redis, room)
        history[room] = (epoch_data, entries)
    settle = time.monotonic() + 60  # every client reaches the end of its room's stream
    while time.monotonic() < settle:
        if all(c.position == (history[c.room][0], len(history[c.room][1])) for c in clients):
            break
        await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    return clients, publishers, history, restarted_at


def epoch_of(redis: RedisServer, room: str) -> str:
    import redis as redis_py

    client = redis_py.Redis.from_url(redis.url)
    try:
        keys = list(client.keys("*epoch:{" + room + "}"))
        assert len(keys) == 1, keys
        value = client.get(keys[0])
        assert value is not None
        return value.decode()
    finally:
        client.close()


def test_broadcasts_while_redis_does_not_answer_raise_hub_error_within_the_socket_timeout(
    start_uwsgi: Any, redis: RedisServer
) -> None:
    """SIGSTOP: connections stay open, nothing answers. HubError within 10 s, no crash.

    redis-py waits ``socket_timeout`` (5 s) for the answer, and the hub's
    client tries once more (a pooled connection may be stale after a restart).
    """
    server = instance(start_uwsgi, redis.url)
    room = f"r{time.monotonic_ns()}"

    async def scenario() -> List[str]:
        ws, _ = await member(server, room)
        redis.pause()
        try:
            answers = []
            for text in ("one",):
                await ws.send(f"pub:{text}")
                while True:
                    data = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    if "r" not in data:
                        answers.append(data["d"])
                        break
        finally:
            redis.resume()
        await ws.send("pub:after")  # the same connection, Redis back
        while True:
            data = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if "r" not in data:
                answers.append(data["d"])
                break
        await ws.close()
        return answers

    started = time.monotonic()
    answers = asyncio.run(scenario())
    assert time.monotonic() - started < 30
    _, elapsed, kind, said = answers[0].split(":", 3)
    assert (kind, said) == ("HubError", "one")
    assert 4.5 <= float(elapsed) < 11.0  # twice socket_timeout at most
    assert answers[1] == "ack:after"
    assert server.crash_lines() == []
