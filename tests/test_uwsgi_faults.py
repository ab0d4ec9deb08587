"""Faults under load: a worker killed with SIGKILL, Redis killed mid-broadcast and mid-subscribe.

Real uWSGI (tests.apps.rooms) and a real redis-server. What must hold:

- ``kill -9`` of one worker of four while members on the others publish:
  every member on the other three workers gets every message, once and in
  order, and keeps its connection; the killed worker's clients are dropped;
  the master respawns it, and broadcasts reach it and come from it again.
- Redis killed (SIGKILL) while a publisher broadcasts in a loop: every
  connection stays open, the publisher is told of each failed broadcast
  (HubError, caught by the handler), members in the publisher's own process
  get every message, nobody gets one twice or out of order, and once Redis is
  back broadcasts reach every member again.
- Redis killed while members join rooms (subscribe): every join returns,
  every connection stays open, and once Redis is back the rooms joined
  during the outage get the broadcasts of the other instance.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection as SyncConnection

from tests import hostile
from tests.redis_server import REDIS_SERVER, RedisServer
from tests.test_uwsgi_rooms import join
from tests.uwsgi_server import UwsgiServer, poll_until

pytestmark = pytest.mark.uwsgi

GEVENT = ["--gevent-early-monkey-patch"]


# ---------------------------------------------------------------------------
# kill -9 of one worker of four


async def open_member(server: UwsgiServer, room: str) -> Tuple[ClientConnection, str, int]:
    ws = await async_connect(server.url(f"/ws/{room}"), open_timeout=20, ping_interval=None,
                             max_queue=None)  # fmt: skip
    hello = str(await asyncio.wait_for(ws.recv(), 20))
    _, connection_id, _, pid = hello.split(":")
    return ws, connection_id, int(pid)


async def members_on_every_worker(
    server: UwsgiServer, room: str, per_worker: int, workers: int
) -> Dict[int, List[Tuple[ClientConnection, str, int]]]:
    """``per_worker`` members on each worker; which worker accepts is the kernel's
    choice, so extra connections are closed again (bounded in count and time)."""
    held: Dict[int, List[Tuple[ClientConnection, str, int]]] = {}
    extra = []
    deadline = time.monotonic() + 60
    for _ in range(1000):
        if len(held) == workers and all(len(v) >= per_worker for v in held.values()):
            break
        assert time.monotonic() < deadline, {pid: len(v) for pid, v in held.items()}
        member = await open_member(server, room)
        mine = held.setdefault(member[2], [])
        if len(mine) < per_worker:
            mine.append(member)
        else:
            extra.append(member[0])
            if len(extra) > 20:  # a busy worker keeps accepting: make room, try again
                await asyncio.gather(*(ws.close() for ws in extra))
                extra.clear()
    await asyncio.gather(*(ws.close() for ws in extra))
    assert len(held) == workers and all(len(v) >= per_worker for v in held.values())
    return held


@pytest.mark.parametrize("mode", ["http-socket", "http"])
def test_kill_9_of_one_worker_of_four_under_load(start_uwsgi, mode: str) -> None:
    """The others' clients lose nothing and stay connected; rooms work again after the respawn."""
    server = start_uwsgi(
        "tests.apps.rooms:app",
        mode=mode,
        processes=4,
        gevent=300,
        extra=GEVENT,
        env={"FWS_HUB_NAME": f"faults-{os.getpid()}-{time.monotonic_ns()}"},
    )
    per_publisher, per_worker = 300, 3

    async def hub_warm_up() -> None:
        # The workers' hub connects its peers on first use: a broadcast from
        # each worker first, so that the baseline below includes those sockets.
        held = await members_on_every_worker(server, "warm-up", 1, 4)
        for pid, members in held.items():
            await members[0][0].send(f"all:{pid}")
        for members in held.values():
            for _ in range(4):
                await asyncio.wait_for(members[0][0].recv(), 20)
        await asyncio.gather(*(members[0][0].close() for members in held.values()))

    asyncio.run(hub_warm_up())
    baseline = dict.fromkeys(server.worker_pids(), 0)
    for pid in baseline:  # the warm-up's client connections are gone
        baseline[pid] = hostile.settle(pid, timeout=5)[0]

    async def scenario() -> Dict[str, object]:
        held = await members_on_every_worker(server, "lobby", per_worker, 4)
        victim = sorted(held)[-1]
        survivors = [m for pid, members in held.items() if pid != victim for m in members]
        publishers = [held[pid][0] for pid in sorted(held) if pid != victim]
        closed: Dict[str, object] = {}

        async def publish(index: int, ws: ClientConnection, connection_id: str) -> None:
            for n in range(per_publisher):
                await ws.send(f"all:{connection_id}:{n}")
                if index == 0 and n == per_publisher // 3:
                    os.kill(victim, signal.SIGKILL)
                await asyncio.sleep(0.002)

        async def read(ws: ClientConnection, connection_id: str) -> List[str]:
            got: List[str] = []
            try:
                while len(got) < per_publisher * len(publishers):
                    got.append(str(await asyncio.wait_for(ws.recv(), 30)))
            except ConnectionClosed as exc:
                closed[connection_id] = exc.rcvd.code if exc.rcvd else None
            return got

        async def dropped(ws: ClientConnection) -> bool:
            try:
                for _ in range(10 * per_publisher * len(publishers)):  # bounded
                    await asyncio.wait_for(ws.recv(), 30)
            except ConnectionClosed:
                return True
            except asyncio.TimeoutError:
                return False
            return False

        readers = [asyncio.create_task(read(ws, cid)) for ws, cid, _ in survivors]
        victims = [asyncio.create_task(dropped(ws)) for ws, _, _ in held[victim]]
        await asyncio.gather(*(publish(i, ws, cid) for i, (ws, cid, _) in enumerate(publishers)))
        received = await asyncio.gather(*readers)
        victims_dropped = await asyncio.gather(*victims)

        # The master respawns the worker; a member on it and one on a survivor
        # broadcast, and every member, old and new, gets both.
        assert poll_until(
            lambda: len(server.worker_pids()) == 4 and victim not in server.worker_pids(), 30
        ), server.worker_pids()
        (newcomer,) = set(server.worker_pids()) - set(held)
        fresh = await members_on_every_worker(server, "lobby", 1, 4)
        everyone = survivors + [m for members in fresh.values() for m in members]
        await fresh[newcomer][0][0].send("all:from the new worker")
        await publishers[0][0].send("all:to the new worker")
        after: Dict[str, List[str]] = {}
        for ws, cid, _ in everyone:
            after[cid] = sorted([str(await asyncio.wait_for(ws.recv(), 30)) for _ in range(2)])
        for ws, _, _ in everyone:
            await ws.close()
        return {
            "publishers": [cid for _, cid, _ in publishers],
            "received": received,
            "closed": closed,
            "victims_dropped": victims_dropped,
            "after": after,
            "victim": victim,
        }

    outcome = asyncio.run(scenario())
    assert outcome["closed"] == {}, "a client of a surviving worker was disconnected"
    expected = {cid: [str(n) for n in range(per_publisher)] for cid in outcome["publishers"]}
    for got in outcome["received"]:  # type: ignore[attr-defined]
        by_sender: Dict[str, List[str]] = {}
        for line in got:
            sender, text = line.split(":", 1)
            by_sender.setdefault(sender, []).append(text)
        assert by_sender == expected  # every message, once, in each sender's order
    assert all(outcome["victims_dropped"]), "the killed worker's clients were not dropped"
    assert set(map(tuple, outcome["after"].values())) == {  # type: ignore[attr-defined]
        ("from the new worker", "to the new worker")
    }
    log = server.log()
    assert "Traceback" not in log, log[-3000:]
    lines = server.crash_lines()
    assert all(str(outcome["victim"]) in line or "DAMN" in line for line in lines), lines
    # The surviving workers let go of every connection (and of the dead peer).
    for pid, fds in baseline.items():
        if pid != outcome["victim"]:
            assert poll_until(lambda pid=pid, fds=fds: hostile.process_fds(pid) <= fds, 15), (
                pid,
                hostile.process_fds(pid),
                fds,
            )


# ---------------------------------------------------------------------------
# Redis killed

needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None and not os.environ.get("CI"),
    reason="redis-server is not installed (apt-get install redis-server)",
)
Client = Tuple[SyncConnection, str, int]


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(log_dir=tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def cluster(redis: RedisServer, start_uwsgi, request) -> List[UwsgiServer]:
    """Two uWSGI instances of the rooms app on one Redis, 2 workers each."""
    env = {
        "FWS_HUB_URL": redis.url,
        "FWS_HUB_NAME": f"faults-{os.getpid()}-{request.node.name}"[:60],
    }
    return [
        start_uwsgi("tests.apps.rooms:app", processes=2, gevent=200, extra=GEVENT, env=env),
        start_uwsgi("tests.apps.rooms:app", processes=2, gevent=200, extra=GEVENT, env=env),
    ]


def members_by_worker(cluster: List[UwsgiServer], room: str, per_worker: int) -> List[Client]:
    """``per_worker`` members of ``room`` on every worker of every instance (bounded tries)."""
    clients: List[Client] = []
    for server in cluster:
        counts = dict.fromkeys(server.worker_pids(), 0)
        for _ in range(500):
            if all(count >= per_worker for count in counts.values()):
                break
            client = join(server, room)
            if counts.get(client[2], per_worker) >= per_worker:
                client[0].close()
                continue
            counts[client[2]] += 1
            clients.append(client)
        assert all(count >= per_worker for count in counts.values()), counts
    return clients


def drain(ws: SyncConnection, timeout: float = 0.05) -> List[str]:
    """Whatever ``ws`` has received, without waiting more than ``timeout`` for each."""
    got: List[str] = []
    for _ in range(100_000):  # bounded: a test never queues this many
        try:
            got.append(str(ws.recv(timeout=timeout)))
        except TimeoutError:
            break
    return got


def recv_until(ws: SyncConnection, prefix: str, timeout: float = 15) -> str:
    """The next message that starts with ``prefix`` (others are skipped; bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        message = str(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
        if message.startswith(prefix):
            return message


def probe_until_everyone_hears(publisher: Client, clients: List[Client], room: str) -> None:
    """Broadcast probes to ``room`` until every client has got one (bounded: 45 s)."""
    seen = {cid: False for _, cid, _ in clients}
    deadline = time.monotonic() + 45
    probe = 0
    while not all(seen.values()) and time.monotonic() < deadline:
        probe += 1
        publisher[0].send(f"try:probe-{probe}")
        for ws, cid, _ in clients:
            if not seen[cid]:
                seen[cid] = any(m.startswith("probe-") for m in drain(ws))
        time.sleep(0.1)
    missing = [cid for cid, ok in seen.items() if not ok]
    assert not missing, f"{len(missing)} members got nothing after Redis came back"


@needs_redis
@pytest.mark.redis
def test_redis_killed_mid_broadcast(cluster: List[UwsgiServer], redis: RedisServer) -> None:
    """Publishers get HubError, connections stay open, nothing is doubled, and it recovers."""
    clients = members_by_worker(cluster, "feed", 2)
    publisher = join(cluster[0], "feed")
    workers_before = [server.worker_pids() for server in cluster]
    sent = 0
    replies: Dict[int, str] = {}
    inbox: Dict[str, List[str]] = {cid: [] for _, cid, _ in clients}

    def collect(timeout: float) -> None:
        # Read as we go: a client that stops reading stops answering pings.
        for ws, cid, _ in clients:
            inbox[cid] += drain(ws, timeout)

    killed_at = None
    errors_after_kill = 0
    for n in range(3000):  # bounded; ends once enough broadcasts failed
        publisher[0].send(f"try:{n}")
        reply = ""
        while not reply.endswith(f":{n}"):
            reply = str(publisher[0].recv(timeout=15))
            assert reply.startswith(("sent:", "hub-error:")), reply
        replies[n] = reply.split(":", 1)[0]
        sent = n + 1
        if n == 50:
            redis.kill()  # SIGKILL, in the middle of the stream
            killed_at = n
        if killed_at is not None and replies[n] == "hub-error":
            errors_after_kill += 1
            if errors_after_kill >= 30:
                break
        if n % 20 == 0:
            collect(0.001)
        time.sleep(0.005)
    assert errors_after_kill >= 30, f"the publisher was never told: {replies}"
    collect(0.5)  # everything sent before Redis comes back
    redis.start()
    probe_until_everyone_hears(publisher, clients, "feed")

    publisher_pid = publisher[2]
    assert any(pid == publisher_pid for _, _, pid in clients)  # the local check below runs
    for _, cid, pid in clients:
        got = [int(m) for m in inbox[cid] if m.isdigit()]
        # The broadcasts arrive once each, in order (at most once across hosts).
        assert got == sorted(set(got)), (cid, got[:20])
        assert all(0 <= n < sent for n in got), (cid, got[:20])
        if pid == publisher_pid:  # the publisher's own process delivers locally, always
            assert got == list(range(sent)), (cid, len(got), sent)
    # Every connection is still open: each member answers.
    for ws, cid, _ in [*clients, publisher]:
        ws.send("rooms")
        assert recv_until(ws, "rooms:") == 'rooms:["feed"]', cid
    for server, before in zip(cluster, workers_before):
        assert server.worker_pids() == before
        assert server.crash_lines() == []
        assert "Traceback" not in server.log(), server.log()[-3000:]


@needs_redis
@pytest.mark.redis
def test_redis_killed_while_members_join_rooms(
    cluster: List[UwsgiServer], redis: RedisServer
) -> None:
    """Joins (subscribes) before, during and after the outage all return; the rooms work after."""
    pairs: List[Tuple[str, Client, Client]] = []
    phases = {"before": 5, "during": 15, "after": 5}
    workers_before = [server.worker_pids() for server in cluster]
    for phase, count in phases.items():
        if phase == "during":
            redis.kill()
        if phase == "after":
            redis.start()
        for k in range(count):
            room = f"{phase}-{k}"
            # Each room has a member on each instance: its broadcasts must
            # cross Redis, on the room's own channel.
            pairs.append((room, join(cluster[0], room), join(cluster[1], room)))
    # Still open, all of them; and each room's broadcast reaches the other
    # instance once Redis is back (the subscriptions made during the outage
    # were made again).
    for room, a, b in pairs:
        deadline = time.monotonic() + 45
        heard = False
        probe = 0
        while not heard and time.monotonic() < deadline:
            probe += 1
            a[0].send(f"try:{room}-{probe}")
            heard = any(m.startswith(f"{room}-") for m in drain(b[0], 0.1))
        assert heard, f"{room}: the other instance's member got nothing after Redis came back"
    # Presence is back too: both members of each room are listed.
    for room, a, b in pairs:
        deadline = time.monotonic() + 30
        members: List[str] = []
        while time.monotonic() < deadline:
            a[0].send("members")
            members = sorted(json.loads(recv_until(a[0], "members:")[len("members:") :]))
            if members == sorted([a[1], b[1]]):
                break
            time.sleep(0.2)
        assert members == sorted([a[1], b[1]]), (room, members)
    for server, before in zip(cluster, workers_before):
        assert server.worker_pids() == before
        assert server.crash_lines() == []
        assert "Traceback" not in server.log(), server.log()[-3000:]
