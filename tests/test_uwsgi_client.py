"""The Python client (flask_websocket.client) against real uWSGI, through a relay that fails.

The client's test app (tests/apps/client.py: ``/ws/<room>`` joins ``h:<room>``,
a room with history) runs on uWSGI; the client connects through a TCP relay
the test controls (tests/relay.py), which resets connections, refuses new
ones, or stops forwarding without closing anything. The other member of the
room is a plain view (``/say/<room>``) called straight on uWSGI.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

from flask_websocket import ConnectionClosedError, HandshakeRejected
from flask_websocket.client import (
    Joined,
    Message,
    RecoveryIncomplete,
    ResumingClient,
    StateChange,
)
from tests.conftest import StartServer
from tests.private_hub import private_hub
from tests.relay import TcpRelay, worker_holding
from tests.uwsgi_server import UwsgiServer, poll_until

pytestmark = pytest.mark.uwsgi

#: The server's ping (and heartbeat) interval, s.
PING_INTERVAL = 2
#: Messages a room's history keeps (SHORT_HISTORY where it must run out).
HISTORY_SIZE = 100
SHORT_HISTORY = 8
#: Messages said while the client is away.
AWAY = 20
#: Seconds any wait of a test may last (reconnections back off up to 15 s apart).
WAIT = 60.0


@pytest.fixture
def hub_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Dict[str, str]]:
    """The app's hub and history, private to the test: local (by default) or redis."""
    if getattr(request, "param", "local") == "redis":
        from tests.redis_server import RedisServer, require_redis_server

        require_redis_server()
        with RedisServer(log_dir=tmp_path) as redis:
            yield {"FWS_WEBSOCKET_HUB_URL": redis.url}
        return
    with private_hub("pyclient") as hub:
        options = json.loads(hub["FLASK_WEBSOCKET_HUB_OPTIONS"])
        yield {"FWS_WEBSOCKET_HUB_OPTIONS": json.dumps(options)}


@dataclass
class Served:
    server: UwsgiServer
    relay: TcpRelay

    def say(self, room: str, text: str) -> None:
        """Broadcast ``text`` to ``h:<room>`` from a plain view, straight to uWSGI."""
        query = urllib.parse.urlencode({"text": text})
        with urllib.request.urlopen(self.server.http_url(f"/say/{room}?{query}"), timeout=20) as r:
            assert r.read() == b"ok"

    async def say_many(self, room: str, texts: List[str]) -> None:
        for text in texts:
            await asyncio.to_thread(self.say, room, text)


def serve(
    start_uwsgi: StartServer,
    hub_env: Dict[str, str],
    processes: int = 1,
    history_size: int = HISTORY_SIZE,
) -> Served:
    env = {
        "FWS_WEBSOCKET_PING_INTERVAL": str(PING_INTERVAL),
        "FWS_HISTORY_SIZE": str(history_size),
        **hub_env,
    }
    server = start_uwsgi(
        "tests.apps.client:app", processes=processes, gevent=100,
        extra=["--gevent-early-monkey-patch"], env=env,
    )  # fmt: skip
    return Served(server, TcpRelay(server.port).start())


@pytest.fixture
def served(start_uwsgi: StartServer, hub_env: Dict[str, str]) -> Iterator[Served]:
    """The client's app on uWSGI (one worker), and a relay in front of it."""
    scene = serve(start_uwsgi, hub_env)
    yield scene
    scene.relay.stop()
    scene.server.stop()
    assert scene.server.crash_lines() == [], scene.server.log()


@pytest.fixture
def served_short(start_uwsgi: StartServer, hub_env: Dict[str, str]) -> Iterator[Served]:
    """The same with a history of SHORT_HISTORY messages."""
    scene = serve(start_uwsgi, hub_env, history_size=SHORT_HISTORY)
    yield scene
    scene.relay.stop()


@pytest.fixture
def served_twice(start_uwsgi: StartServer, hub_env: Dict[str, str]) -> Iterator[Served]:
    """The same with two workers."""
    scene = serve(start_uwsgi, hub_env, processes=2)
    yield scene
    scene.relay.stop()


class Recorder:
    """A client through the relay, and everything it told."""

    def __init__(self, served: Served, room: str, **options: Any) -> None:
        self.room = room
        self.changes: List[StateChange] = []
        self.joins: List[Joined] = []
        self.losses: List[RecoveryIncomplete] = []
        self.messages: List[Message] = []
        self.client = ResumingClient(
            f"ws://127.0.0.1:{served.relay.port}/ws/{room}",
            on_state_change=self.changes.append,
            on_joined=self.joins.append,
            on_recovery_incomplete=self.losses.append,
            **options,
        )

    async def take(self, count: int) -> List[Message]:
        """The next ``count`` messages (bounded by WAIT)."""
        got = [await asyncio.wait_for(self.client.recv(), WAIT) for _ in range(count)]
        self.messages += got
        return got

    async def joined(self, count: int) -> None:
        """Wait until ``count`` joins were answered (their callbacks run from recv)."""
        deadline = time.monotonic() + WAIT
        while len(self.joins) < count:
            assert time.monotonic() < deadline, f"{len(self.joins)} joins, not {count}"
            await self.client.send(f"plain:ping {time.monotonic_ns()}")
            await self.take(1)

    def texts(self) -> List[str]:
        return [str(m.data) for m in self.messages if m.room is not None]

    def offsets(self) -> List[Optional[int]]:
        return [m.offset for m in self.messages if m.room is not None]

    def retries(self) -> List[StateChange]:
        return [c for c in self.changes if c.state == "reconnecting"]


def room_name() -> str:
    return f"r{time.monotonic_ns()}"


async def first_joined(me: Recorder, served: Served) -> None:
    """Open, joined, one message of the room seen."""
    await me.client.send("say:before")
    (before,) = await me.take(1)
    assert (before.data, before.room) == ("before", f"h:{me.room}")
    assert len(me.joins) == 1 and me.joins[0].resumed is False


def assert_all_once_in_order(me: Recorder, said: List[str]) -> None:
    assert me.texts() == ["before", *said]
    offsets = me.offsets()
    assert offsets == list(range(offsets[0], offsets[0] + len(offsets)))  # type: ignore[operator]
    assert me.losses == []
    assert me.joins[-1].resumed and me.joins[-1].recovered


@pytest.mark.parametrize("hub_env", ["local", "redis"], indirect=True)
def test_a_network_cut_loses_nothing(served: Served) -> None:
    room = room_name()
    me = Recorder(served, room)
    said = [f"while away {i}" for i in range(AWAY)]

    # The other member: another client, straight on uWSGI, that says them.
    # It joins first and says hello, so that the test knows it is in. (Two
    # members joining a new room at the same moment as its first message is
    # tests/test_uwsgi_redis_restart.py's race test.)
    other_joins: List[Joined] = []
    other = ResumingClient(served.server.url(f"/ws/{room}"), on_joined=other_joins.append)

    async def scenario() -> None:
        async with other:
            await other.send("plain:hello")
            assert (await asyncio.wait_for(other.recv(), WAIT)).data == "hello"
            assert len(other_joins) == 1  # its join's answer came first
            async with me.client:
                await away(other)

    async def away(other: ResumingClient) -> None:
        await first_joined(me, served)
        assert await asyncio.to_thread(served.relay.cut, 3) >= 1  # RST; refused for 3 s
        for text in said:
            await other.send(f"say:{text}")
        heard: List[Any] = []
        while said[-1] not in heard:  # bounded: "before" and AWAY messages at most
            assert len(heard) <= AWAY
            heard.append((await asyncio.wait_for(other.recv(), WAIT)).data)
        assert heard[-AWAY:] == said  # all said while we were away
        await me.take(AWAY)
        (link,) = await asyncio.to_thread(served.relay.websockets)
        assert "fws_since=" in link.request_line, link.request_line

    asyncio.run(scenario())
    assert_all_once_in_order(me, said)
    assert [c.code for c in me.retries()][:1] == [1006]
    assert me.client.connections == 2


@pytest.mark.parametrize("hub_env", ["local", "redis"], indirect=True)
def test_a_reload_of_the_server_loses_nothing(served_twice: Served) -> None:
    served = served_twice
    server = served.server
    room = room_name()
    me = Recorder(served, room)
    said = [f"during the reload {i}" for i in range(AWAY)]
    old = server.worker_pids()

    async def scenario() -> None:
        async with me.client:
            await first_joined(me, served)
            served.relay.refuse(WAIT)  # kept away until the new workers have the messages
            assert server.process is not None
            os.kill(server.process.pid, signal.SIGHUP)  # graceful: every worker replaced
            assert await asyncio.to_thread(
                poll_until, lambda: not set(server.worker_pids()) & set(old), 30
            )
            assert await asyncio.to_thread(poll_until, lambda: len(server.worker_pids()) == 2, 30)
            await served.say_many(room, said)
            served.relay.refuse(0)
            await me.take(AWAY)

    asyncio.run(scenario())
    assert_all_once_in_order(me, said)
    retries = me.retries()
    assert (retries[0].code, retries[0].attempt) == (1012, 0)  # told: at once, spread
    assert retries[0].delay is not None and retries[0].delay <= 1.0
    server.stop()
    assert server.crash_lines() == [], server.log()


def test_a_killed_worker_loses_nothing(served_twice: Served) -> None:
    served = served_twice
    server = served.server
    room = room_name()
    me = Recorder(served, room)
    said = [f"after the kill {i}" for i in range(AWAY)]

    async def scenario() -> None:
        async with me.client:
            await first_joined(me, served)
            (link,) = await asyncio.to_thread(served.relay.websockets)
            victim = worker_holding(server.worker_pids(), server.port, link.upstream_port)
            assert victim is not None, "no worker holds the client's connection"
            served.relay.refuse(WAIT)
            os.kill(victim, signal.SIGKILL)
            assert await asyncio.to_thread(
                poll_until, lambda: victim not in server.worker_pids(), 30
            )
            await served.say_many(room, said)
            served.relay.refuse(0)
            await me.take(AWAY)

    asyncio.run(scenario())
    assert_all_once_in_order(me, said)
    assert me.retries()[0].code == 1006  # lost, not closed
    server.stop()


def test_a_policy_violation_is_not_retried(served: Served) -> None:
    me = Recorder(served, room_name())

    async def scenario() -> ConnectionClosedError:
        async with me.client:
            await me.client.send("close:1008")
            with pytest.raises(ConnectionClosedError) as raised:
                await me.take(1)
            accepted = served.relay.accepted
            await asyncio.sleep(1.5)  # longer than any first retry would wait
            assert served.relay.accepted == accepted
            return raised.value

    error = asyncio.run(scenario())
    assert (error.code, error.reason) == (1008, "bye")
    assert [c.state for c in me.changes] == ["open", "closed"]
    assert me.client.connections == 1


def test_a_refused_handshake_is_not_retried(served: Served) -> None:
    # A browser page of another site: the app's Origin check refuses it with 403.
    me = Recorder(served, room_name(), origin="https://elsewhere.example")

    async def scenario() -> HandshakeRejected:
        async with me.client:
            with pytest.raises(HandshakeRejected) as raised:
                await me.take(1)
            await asyncio.sleep(1.5)
            return raised.value

    error = asyncio.run(scenario())
    assert error.status == 403
    assert served.relay.accepted == 1  # one attempt, no retry
    assert [c.state for c in me.changes] == ["closed"]


def test_a_position_older_than_the_history_is_told_not_recovered(served_short: Served) -> None:
    served = served_short
    room = room_name()
    me = Recorder(served, room)
    missed = [f"m{i}" for i in range(SHORT_HISTORY + 4)]

    async def scenario() -> None:
        async with me.client:
            await first_joined(me, served)
            await asyncio.to_thread(served.relay.cut, 3)
            await served.say_many(room, missed)
            await me.take(SHORT_HISTORY)

    asyncio.run(scenario())
    (loss,) = me.losses
    assert (loss.room, loss.reason, loss.resumed) == (f"h:{room}", "history", True)
    assert me.joins[-1].recovered is False
    # What history still holds, in order, once: the last SHORT_HISTORY.
    assert me.texts() == ["before", *missed[-SHORT_HISTORY:]]


def test_a_silent_dead_connection_is_found_by_its_heartbeat(served: Served) -> None:
    room = room_name()
    me = Recorder(served, room)

    async def scenario() -> float:
        async with me.client:
            await first_joined(me, served)
            deadline = time.monotonic() + WAIT
            while me.client.heartbeat != PING_INTERVAL:  # the server's first heartbeat
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            assert await asyncio.to_thread(served.relay.blackhole) >= 1  # nothing closed
            blackholed = time.monotonic()
            await asyncio.to_thread(served.say, room, "into the void")
            await me.take(1)  # given by the new connection, once
            (retry,) = me.retries()
            assert (retry.code, retry.reason) == (1006, "no heartbeat")
            return time.monotonic() - blackholed

    took = asyncio.run(scenario())
    # Found within dead_after (2.5) heartbeat intervals of silence, and back.
    assert took < 2.5 * PING_INTERVAL + 2.0, took
    assert me.texts() == ["before", "into the void"]
    assert me.joins[-1].recovered is True
