"""The redis hub end to end: real redis-server, several real uWSGI instances."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest
from websockets.sync.client import ClientConnection

from tests.redis_server import REDIS_SERVER, RedisServer
from tests.test_uwsgi_rooms import assert_next_messages, join, spread_over_workers
from tests.uwsgi_server import UwsgiServer, run_python

pytestmark = [
    pytest.mark.uwsgi,
    pytest.mark.redis,
    pytest.mark.skipif(
        REDIS_SERVER is None and not os.environ.get("CI"),
        reason="redis-server is not installed (apt-get install redis-server)",
    ),
]

Client = Tuple[ClientConnection, str, int]


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(log_dir=tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def cluster(redis: RedisServer, start_uwsgi, request) -> List[UwsgiServer]:
    """Two uWSGI instances of one app on one Redis: 2 workers and 4 workers."""
    env = {
        "FWS_HUB_URL": redis.url,
        "FWS_HUB_NAME": f"redis-{os.getpid()}-{request.node.name}"[:60],
    }
    extra = ["--gevent-early-monkey-patch"]
    return [
        start_uwsgi("tests.apps.rooms:app", processes=2, gevent=200, extra=extra, env=env),
        start_uwsgi("tests.apps.rooms:app", processes=4, gevent=200, extra=extra, env=env),
    ]


def members_of(client: Client) -> List[str]:
    client[0].send("members")
    reply = client[0].recv(timeout=10)
    assert isinstance(reply, str) and reply.startswith("members:")
    return sorted(json.loads(reply[len("members:") :]))


def wait_until_members(clients: List[Client], expected: List[str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    last: List[str] = []
    while time.monotonic() < deadline:
        last = members_of(clients[0])
        if last == expected:
            return
        time.sleep(0.2)
    raise AssertionError(f"presence never agreed: {len(last)} of {len(expected)}")


def test_broadcast_skip_send_to_and_presence_across_instances(
    cluster: List[UwsgiServer],
) -> None:
    clients = [c for server in cluster for c in spread_over_workers(server, "lobby", 2)]
    assert len({pid for _, _, pid in clients}) == 6  # every worker of both instances
    expected = sorted(connection_id for _, connection_id, _ in clients)
    wait_until_members(clients, expected)
    for client in clients[::5]:  # presence agrees from each instance and worker
        assert members_of(client) == expected

    clients[0][0].send("all:everyone")
    assert_next_messages(clients, ["everyone"])
    sender = clients[-1]
    sender[0].send("room:not to me")
    assert_next_messages([c for c in clients if c is not sender], ["not to me"])
    target = clients[1]
    sender[0].send(f"to:{target[1]}:only you")
    assert_next_messages([target], ["only you"])
    clients[2][0].send("all:marker")  # exactly once: nothing else came before it
    assert_next_messages(clients, ["marker"])


def test_write_only_emitter_from_a_process_without_uwsgi(
    cluster: List[UwsgiServer], redis: RedisServer
) -> None:
    clients = [c for server in cluster for c in spread_over_workers(server, "news", 1)]
    name = cluster[0].env["FWS_HUB_NAME"]
    script = (
        "import sys\n"
        "from flask_websocket.emitter import RedisEmitter\n"
        "emitter = RedisEmitter(sys.argv[1], name=sys.argv[2])\n"
        "emitter.broadcast('from a cron job', room='news')\n"
        "emitter.broadcast(b'\\x00binary')\n"
        "print(len(emitter.members('news')))\n"
    )
    result = run_python(script, redis.url, name)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) == len(clients)
    assert_next_messages(clients, ["from a cron job"])
    for ws, _, _ in clients:
        assert ws.recv(timeout=10) == b"\x00binary"


def test_redis_restart_with_100_clients(cluster: List[UwsgiServer], redis: RedisServer) -> None:
    clients: List[Client] = []
    for i in range(100):
        clients.append(join(cluster[i % 2], "lobby"))
    expected = sorted(connection_id for _, connection_id, _ in clients)
    wait_until_members(clients, expected)

    redis.kill()
    time.sleep(0.5)  # an outage, not a blip: the listeners notice it
    redis.start()

    # Connections stayed open; the hubs resubscribe (capped backoff): probe
    # until every client has seen one probe, within a bounded time.
    seen = [False] * len(clients)
    deadline = time.monotonic() + 45
    probe = 0
    while not all(seen) and time.monotonic() < deadline:
        probe += 1
        try:
            clients[0][0].send(f"all:probe-{probe}")
        except Exception as exc:  # pragma: no cover - the publisher itself must survive
            raise AssertionError(f"the publisher's connection broke: {exc}") from exc
        for index, (ws, _, _) in enumerate(clients):
            if seen[index]:
                continue
            try:
                while True:
                    message = ws.recv(timeout=0.05)
                    if isinstance(message, str) and message.startswith("probe-"):
                        seen[index] = True
                        break
            except TimeoutError:
                pass
    assert all(seen), f"{seen.count(False)} clients got nothing after the restart"

    clients[0][0].send("all:after restart")
    for ws, connection_id, _ in clients:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            message = ws.recv(timeout=15)
            if message == "after restart":
                break
            assert isinstance(message, str) and message.startswith("probe-"), message
        else:
            raise AssertionError(f"{connection_id} missed the broadcast after the restart")
    # Presence is rebuilt in the new (empty) Redis.
    wait_until_members(clients, expected, timeout=30)
    for server in cluster:
        assert server.crash_lines() == []
