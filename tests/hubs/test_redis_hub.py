"""The redis hub and the emitter, against a real redis-server.

Each hub node is a child process (:func:`node_main`) that monkey-patches the
standard library with gevent first, as ``uwsgi --gevent-early-monkey-patch``
does, and holds one real :class:`~flask_websocket.rooms.RoomRegistry`, the
hub, and real :class:`~flask_websocket.WebSocketConnection` objects over
socket pairs, each with a client end that records what it receives. The test
drives the nodes with JSON lines on their stdin, so it can kill one node, or
Redis, and look at each node's log.

The emitter runs in the pytest process itself, which is not patched.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest

from tests.redis_server import RedisServer, require_redis_server
from tests.uwsgi_server import REPO_ROOT, free_port, run_python

#: How a node process starts: patch first (unless told not to), then import anything.
_BOOT = (
    "import json, sys\n"
    "if json.loads(sys.argv[1])['patch']:\n"
    "    from gevent import monkey; monkey.patch_all()\n"
    "from tests.hubs.test_redis_hub import node_main\n"
    "node_main()\n"
)


# -- the node process (runs in the child) -------------------------------------


def node_main() -> None:
    """One hub node: reads JSON commands on stdin, answers one JSON line each on stdout."""
    import _socket
    import base64
    import logging

    import gevent
    import gevent.socket
    from gevent.fileobject import FileObjectPosix
    from websockets.datastructures import Headers

    from flask_websocket.concurrency.gevent import GeventBackend
    from flask_websocket.connection import ConnectionOptions, WebSocketConnection
    from flask_websocket.hubs import create_hub
    from flask_websocket.hubs.base import KIND_ALL, KIND_DIRECT, KIND_ROOM, Envelope
    from flask_websocket.protocol import OP_BINARY, OP_TEXT, ClientProtocol, ServerProtocol
    from flask_websocket.rooms import RoomRegistry

    logging.basicConfig(
        level=logging.DEBUG,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("redis").setLevel(logging.WARNING)
    config = json.loads(sys.argv[1])
    registry = RoomRegistry()
    hub = create_hub(config["url"], registry, config["options"])
    registry.hub = hub
    hub.start()
    backend = GeventBackend()
    options = ConnectionOptions(ping_interval=None)
    connections: Dict[str, Any] = {}
    clients: Dict[str, Any] = {}
    server_sockets: List[Any] = []

    class Client:
        """The browser's end of one connection: records every message it gets."""

        def __init__(self, sock: Any) -> None:
            self.sock = sock
            self.protocol = ClientProtocol()
            self.messages: List[str] = []
            self.reader = gevent.spawn(self.read)

        def read(self) -> None:
            while True:
                try:
                    data = self.sock.recv(65536)
                except OSError:
                    return
                if not data:
                    self.protocol.receive_eof()
                    return
                for message in self.protocol.receive_data(data):
                    if isinstance(message, bytes):
                        message = "bin:" + message.hex()
                    self.messages.append(message)
                for out in self.protocol.data_to_send():
                    if out:
                        self.sock.sendall(out)

    def open_connection(user: Any = None) -> str:
        server, client = gevent.socket.socketpair()  # cooperative, patched or not
        protocol = ServerProtocol()
        key = base64.b64encode(os.urandom(16)).decode()
        headers = Headers(
            [
                ("Host", "node"),
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", key),
                ("Sec-WebSocket-Version", "13"),
            ]
        )
        assert protocol.accept("GET", "/", headers).accepted

        server_sockets.append(server)  # owns the fd, as uWSGI does its connection's

        def opener() -> Any:
            # As transport.open_connection_socket: the C socket on a borrowed fd.
            sock = _socket.socket(fileno=server.fileno())
            sock.setblocking(False)
            return sock

        connection = WebSocketConnection(protocol, backend, options, opener, registry, user)
        connection.accept()
        connections[connection.id] = connection
        clients[connection.id] = Client(client)
        return connection.id

    def wait_for_messages(id: str, count: int, timeout: float) -> List[str]:
        client = clients[id]
        deadline = time.monotonic() + timeout
        while len(client.messages) < count and time.monotonic() < deadline:
            gevent.sleep(0.005)
        return list(client.messages)

    def publish(kind: str, message: str, target: str = "", skip: str = "", binary: bool = False):
        code = {"all": KIND_ALL, "room": KIND_ROOM, "direct": KIND_DIRECT}[kind]
        opcode = OP_BINARY if binary else OP_TEXT
        envelope = Envelope(code, opcode, message.encode(), target, skip, registry.node_id)
        hub.publish(envelope)

    def publish_many(room: str, count: int) -> float:
        start = time.monotonic()
        for i in range(count):
            publish("room", f"n{i}", target=room)
        return time.monotonic() - start

    def drop(id: str) -> None:
        clients[id].sock.close()  # the server end sees EOF: torn down in the event loop

    def status() -> Dict[str, Any]:
        return {"connected": hub.connected, "confirmed": sorted(hub._confirmed)}  # type: ignore[attr-defined]

    ops: Dict[str, Callable[..., Any]] = {
        "open": open_connection,
        "join": lambda id, room: connections[id].join(room),
        "leave": lambda id, room: connections[id].leave(room),
        "drop": drop,
        "publish": publish,
        "publish_many": publish_many,
        "members": hub.members,
        "messages": wait_for_messages,
        "status": status,
        "close": lambda id: (  # the close code and reason the client received, if any
            None
            if clients[id].protocol.open
            else [
                clients[id].protocol.closed_exception().code,
                clients[id].protocol.closed_exception().reason,
            ]
        ),
    }

    deadline = time.monotonic() + 10  # start() waits for the subscription; check it
    while not hub.connected and time.monotonic() < deadline:  # type: ignore[attr-defined]
        gevent.sleep(0.01)
    print(json.dumps({"result": {"node_id": registry.node_id}}), flush=True)
    stdin = FileObjectPosix(sys.stdin.fileno(), "rb", close=False)
    for line in stdin:
        command = json.loads(line)
        op = command.pop("op")
        if op == "quit":
            hub.stop()
            print(json.dumps({"result": None}), flush=True)
            return
        try:
            reply = {"result": ops[op](**command)}
        except Exception as exc:
            logging.getLogger("node").info("%s failed: %r", op, exc)
            reply = {"error": type(exc).__name__, "message": str(exc)}
        print(json.dumps(reply), flush=True)


# -- the test side ---------------------------------------------------------------


class NodeError(Exception):
    """A command failed in the node; ``kind`` is the exception's class name."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


class NodeProcess:
    """A node process started by the test, and its log."""

    def __init__(
        self, url: str, options: Dict[str, Any], log_path: Path, patch: bool = True
    ) -> None:
        self.log_path = log_path
        config = json.dumps({"url": url, "options": options, "patch": patch})
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _BOOT, config],
                cwd=REPO_ROOT,
                env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        self._buffer = b""
        self.node_id: str = self._reply(30.0)["node_id"]

    def call(self, op: str, *, wait: float = 20.0, **args: Any) -> Any:
        """Run ``op`` in the node; its result, or :class:`NodeError` (``wait``: seconds)."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **args}).encode() + b"\n")
        self.process.stdin.flush()
        return self._reply(wait)

    def _reply(self, timeout: float) -> Any:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"node gave no answer in {timeout} s:\n{self.log()}")
                if selector.select(remaining):
                    data = os.read(fd, 65536)
                    if not data:
                        raise RuntimeError(f"node exited:\n{self.log()}")
                    self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        reply = json.loads(line)
        if "error" in reply:
            raise NodeError(reply["error"], reply["message"])
        return reply["result"]

    def messages(self, id: str, count: int = 0, timeout: float = 10.0) -> List[str]:
        """What connection ``id`` received, once it has ``count`` messages (or ``timeout``)."""
        result: List[str] = self.call(
            "messages", wait=timeout + 10, id=id, count=count, timeout=timeout
        )
        return result

    def status(self) -> Dict[str, Any]:
        result: Dict[str, Any] = self.call("status")
        return result

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no clean-up, as when a worker is killed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                self.call("quit", wait=10)
                self.process.wait(10)
            except (TimeoutError, RuntimeError, subprocess.TimeoutExpired, OSError):
                self.kill()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, step: float = 0.02) -> float:
    """Poll ``condition`` until it holds; the seconds it took. Fails after ``timeout``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f"condition not met in {timeout} s")
        time.sleep(step)
    return time.monotonic() - start


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server; skipped without one, except in CI (env CI set)."""
    require_redis_server()
    server = RedisServer(log_dir=tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def app_name() -> str:
    """A name of its own per test: its channels and keys are its own."""
    return f"test-{uuid.uuid4().hex[:8]}"


StartNode = Callable[..., NodeProcess]


@pytest.fixture
def start_node(redis_server: RedisServer, app_name: str, tmp_path: Path) -> Iterator[StartNode]:
    """Start node processes of one app on the test's Redis; stop them after."""
    nodes: List[NodeProcess] = []

    def start(label: str, patch: bool = True, **options: Any) -> NodeProcess:
        options.setdefault("name", app_name)
        node = NodeProcess(redis_server.url, options, tmp_path / f"node-{label}.log", patch)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()
    for node in nodes:
        log = node.log()
        assert "Traceback" not in log, log


def redis_client(server: RedisServer) -> Any:
    import redis

    return redis.Redis.from_url(server.url, protocol=2, decode_responses=True)


# -- tests -------------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.parametrize("patch", [True, False], ids=["gevent-patched", "system-threads"])
def test_broadcast_room_skip_and_send_to_arrive_exactly_once_across_nodes(
    start_node: StartNode, patch: bool
) -> None:
    """Also in a process gevent did not patch: the hub's Redis calls run in system threads."""
    a, b = start_node("a", patch), start_node("b", patch)
    a1, a2 = a.call("open"), a.call("open")
    b1, b2 = b.call("open"), b.call("open")
    a.call("join", id=a1, room="r")
    b.call("join", id=b1, room="r")
    b.call("join", id=b2, room="other")

    a.call("publish", kind="all", message="to all")
    a.call("publish", kind="room", target="r", message="to r")
    b.call("publish", kind="room", target="r", message="to r but a1", skip=a1)
    a.call("publish", kind="direct", target=b2, message="to b2")
    b.call("publish", kind="direct", target=a2, message="to a2", binary=True)
    a.call("publish", kind="room", target="nobody-here", message="to an empty room")
    # Per publisher, Redis keeps the order: once both fences are in, everything is.
    a.call("publish", kind="all", message="fence a")
    b.call("publish", kind="all", message="fence b")

    fences = ["fence a", "fence b"]
    expected = {
        (a, a1): ["to all", "to r", *fences],
        (a, a2): ["to all", "bin:" + b"to a2".hex(), *fences],
        (b, b1): ["to all", "to r", "to r but a1", *fences],
        (b, b2): ["to all", "to b2", *fences],
    }
    for (node, id), messages in expected.items():
        received = node.messages(id, count=len(messages))
        assert sorted(received) == sorted(messages), id
        assert [m for m in received if m.startswith("fence")] in (fences, fences[::-1])

    # Many: every one arrives once, in order (the throughput is printed with -s).
    count = 2000
    seconds = a.call("publish_many", room="r", count=count)
    start = time.monotonic()
    received = b.messages(b1, count=len(expected[(b, b1)]) + count, timeout=30)
    arrived = time.monotonic() - start + seconds
    assert received[len(expected[(b, b1)]) :] == [f"n{i}" for i in range(count)]
    print(f"\n{count} room broadcasts across nodes: published in {seconds:.2f} s, "
          f"all received in {arrived:.2f} s ({count / arrived:.0f}/s)")  # fmt: skip


@pytest.mark.redis
@pytest.mark.parametrize("patch", [True, False], ids=["gevent-patched", "system-threads"])
def test_presence_across_nodes_and_dead_nodes_drop_out(
    start_node: StartNode, redis_server: RedisServer, app_name: str, patch: bool
) -> None:
    ttl = 1.0
    a = start_node("a", patch, presence_ttl=ttl)
    b = start_node("b", patch, presence_ttl=ttl)
    a1 = a.call("open")
    b1, b2, b3 = b.call("open"), b.call("open"), b.call("open")
    a.call("join", id=a1, room="p")
    for id in (b1, b2, b3):
        b.call("join", id=id, room="p")
    b.call("join", id=b3, room="only-b")
    everyone = sorted([a1, b1, b2, b3])
    # A join is written before join() returns: no waiting here.
    assert a.call("members", room="p") == everyone
    assert b.call("members", room="p") == everyone
    assert a.call("members", room="only-b") == [b3]
    assert a.call("members", room="nobody") == []

    b.call("leave", id=b1, room="p")
    b.call("drop", id=b2)  # torn down in the event loop: the write is deferred
    wait_until(lambda: a.call("members", room="p") == sorted([a1, b3]))
    assert b.call("members", room="p") == sorted([a1, b3])

    prefix = f"flask-websocket:{app_name}:"
    redis = redis_client(redis_server)
    assert redis.hgetall(prefix + "members:p") == {a1: a.node_id, b3: b.node_id}

    b.kill()  # no clean-up: its entries stay until its heartbeat key expires
    killed = time.monotonic()
    wait_until(lambda: a.call("members", room="p") == [a1], timeout=ttl + 5)
    gone_after = time.monotonic() - killed
    assert gone_after <= ttl + 2
    assert redis.hgetall(prefix + "members:p") == {a1: a.node_id}  # cleaned by members()
    # Rooms nobody asks about are cleaned by the other nodes' heartbeats.
    wait_until(lambda: redis.hgetall(prefix + "members:only-b") == {}, timeout=ttl + 5)
    assert not redis.exists(f"{prefix}node:{b.node_id}:entries")
    assert redis.smembers(prefix + "nodes") == {a.node_id}
    print(f"\nkilled node's members gone after {gone_after:.2f} s (presence_ttl {ttl} s)")


@pytest.mark.redis
def test_listener_resubscribes_after_redis_restarts(
    start_node: StartNode, redis_server: RedisServer
) -> None:
    a, b = start_node("a"), start_node("b")
    a0, b1 = a.call("open"), b.call("open")
    a.call("join", id=a0, room="r")
    b.call("join", id=b1, room="r")
    a.call("publish", kind="room", target="r", message="before")
    assert b.messages(b1, count=1) == ["before"]

    redis_server.kill()
    with pytest.raises(NodeError) as raised:
        a.call("publish", kind="room", target="r", message="during")
    assert raised.value.kind == "HubError"
    assert "members in this process got the message" in str(raised.value)
    assert a.messages(a0, count=2) == ["before", "during"]  # local members were served
    for node in (a, b):
        wait_until(lambda node=node: not node.status()["connected"])
    with pytest.raises(NodeError, match="HubError"):
        a.call("members", room="r")

    redis_server.start()  # same port, empty: no subscriptions, no presence
    restarted = time.monotonic()
    room_channel = re.compile(r".*:room:r$")

    def resubscribed(node: NodeProcess) -> bool:
        status = node.status()
        return status["connected"] and any(room_channel.match(c) for c in status["confirmed"])

    for node in (a, b):
        wait_until(lambda node=node: resubscribed(node))
    took = time.monotonic() - restarted
    assert took < 8  # backoff is capped at 5 s

    a.call("publish", kind="room", target="r", message="after")
    a.call("publish", kind="all", message="fence")  # after "after", from the same publisher
    assert b.messages(b1, count=3) == ["before", "after", "fence"]  # "during" is lost
    assert a.messages(a0, count=4) == ["before", "during", "after", "fence"]
    # Redis lost the presence entries; the nodes wrote them again on reconnecting.
    wait_until(lambda: a.call("members", room="r") == sorted([a0, b1]))

    for node in (a, b):
        log = node.log()
        assert log.count("WARNING flask_websocket.hubs: redis hub: lost the connection") == 1, log
        # Once, and it says what was lost: room "r" keeps no history here.
        assert log.count("WARNING flask_websocket.hubs: redis hub: Redis at") == 1, log
        assert "the 1 room(s) without history that have members here is lost" in log, log
    print(f"\nresubscribed {took:.2f} s after Redis restarted")


@pytest.mark.redis
def test_listener_reconnects_when_redis_stops_answering(
    start_node: StartNode, redis_server: RedisServer
) -> None:
    interval = 0.3
    a = start_node("a", health_check_interval=interval)
    b = start_node("b", health_check_interval=interval)
    a1, b1 = a.call("open"), b.call("open")
    b.call("join", id=b1, room="r")
    redis_server.pause()  # the TCP connections stay up; only the health check can tell
    try:
        paused = time.monotonic()
        wait_until(lambda: not b.status()["connected"], timeout=10)
        noticed = time.monotonic() - paused
    finally:
        redis_server.resume()
    assert noticed < 2 * interval + 1.5
    wait_until(lambda: b.status()["connected"] and a.status()["connected"], timeout=15)
    a.call("publish", kind="room", target="r", message="after")
    a.call("publish", kind="all", message="fence")
    assert b.messages(b1, count=2) == ["after", "fence"]
    assert a.messages(a1, count=1) == ["fence"]
    assert "no answer from Redis" in b.log()
    print(f"\nsilent Redis noticed after {noticed:.2f} s (health_check_interval {interval} s)")


@pytest.mark.redis
def test_emitter_reaches_the_members_of_a_node_from_an_unpatched_process(
    start_node: StartNode, redis_server: RedisServer, app_name: str
) -> None:
    from gevent import monkey

    from flask_websocket.emitter import RedisEmitter

    assert not monkey.is_module_patched("socket")
    a = start_node("a")
    a1, a2 = a.call("open"), a.call("open")
    a.call("join", id=a1, room="r")

    with RedisEmitter(redis_server.url, name=app_name) as emitter:
        assert emitter.members("r") == [a1]
        assert emitter.members("nobody") == []
        assert emitter.broadcast("to r", room="r") == 1  # one process subscribed
        assert emitter.broadcast("to all but a1", skip=a1) == 1
        assert emitter.send_to(a2, b"\x00\xff") == 1
        assert emitter.send_to("nosuchnode.1", "lost") == 0
        emitter.broadcast("fence")
    assert a.messages(a1, count=2) == ["to r", "fence"]
    assert a.messages(a2, count=3) == ["to all but a1", "bin:00ff", "fence"]


@pytest.mark.redis
def test_emitter_sends_to_and_closes_a_users_connections_on_every_node(
    start_node: StartNode, redis_server: RedisServer, app_name: str
) -> None:
    from flask_websocket.emitter import RedisEmitter

    a, b = start_node("a"), start_node("b")
    alice = [a.call("open", user="alice"), b.call("open", user="alice")]
    bob = b.call("open", user="bob")
    with RedisEmitter(redis_server.url, name=app_name) as emitter:
        assert emitter.send_to_user("alice", "hi alice") == 2  # two processes subscribed
        assert a.messages(alice[0], count=1) == ["hi alice"]
        assert b.messages(alice[1], count=1) == ["hi alice"]
        emitter.close_user("alice", 4002, "banned")
    wait_until(lambda: a.call("close", id=alice[0]) == [4002, "banned"])
    wait_until(lambda: b.call("close", id=alice[1]) == [4002, "banned"])
    assert b.call("close", id=bob) is None
    assert b.messages(bob) == []


@pytest.mark.redis
def test_hub_contract_on_redis(redis_server: RedisServer) -> None:
    """The contract every hub passes (tests/hubs/contract.py), on the redis hub."""
    from tests.hubs.test_contract import run_contract

    result = run_contract("redis", HUB_REDIS_URL=redis_server.url)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout


def test_a_redis_hub_that_cannot_connect_says_so_and_delivers_locally() -> None:
    """No Redis: start() does not hang, publish() delivers here and raises HubError."""
    from flask_websocket.concurrency.gevent import GeventBackend
    from flask_websocket.hubs import HubError, create_hub
    from flask_websocket.hubs.base import KIND_ALL, Envelope
    from flask_websocket.rooms import RoomRegistry

    registry = RoomRegistry()
    url = f"redis://127.0.0.1:{free_port()}/0"
    hub = create_hub(url, registry, {"name": "x"}, GeventBackend())
    registry.hub = hub
    try:
        hub.start()
        with pytest.raises(HubError, match="could not publish"):
            hub.publish(Envelope(KIND_ALL, 1, b"x"))
        assert not hub.connected  # type: ignore[attr-defined]
    finally:
        hub.stop()


def test_emitter_works_without_gevent_installed() -> None:
    code = (
        "import sys\n"
        "class NoGevent:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('gevent', 'greenlet'):\n"
        "            raise ImportError('no ' + name + ' here')\n"
        "sys.meta_path.insert(0, NoGevent())\n"
        "from flask_websocket.emitter import RedisEmitter\n"
        "from flask_websocket.hubs import HubError\n"
        f"emitter = RedisEmitter('redis://127.0.0.1:{free_port()}/0', name='x')\n"
        "try:\n"
        "    emitter.broadcast('hello')\n"
        "except HubError as exc:\n"
        "    print('HubError', exc)\n"
        "assert not [m for m in sys.modules if m.startswith(('gevent', 'greenlet'))]\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("HubError could not publish to 'flask-websocket:x:all'")


def test_channel_names_route_each_kind_of_envelope() -> None:
    from flask_websocket.emitter import RedisEmitter
    from flask_websocket.hubs import BroadcastTooLarge
    from flask_websocket.hubs.base import KIND_ALL, KIND_DIRECT, KIND_ROOM, Envelope
    from flask_websocket.hubs.redis import channel_for, default_prefix, safe_url

    prefix = default_prefix("chat")
    assert prefix == "flask-websocket:chat:"
    assert channel_for(prefix, Envelope(KIND_ALL, 1, b"")) == "flask-websocket:chat:all"
    assert (
        channel_for(prefix, Envelope(KIND_ROOM, 1, b"", "r 1")) == "flask-websocket:chat:room:r 1"
    )
    direct = Envelope(KIND_DIRECT, 1, b"", "0a1b2c3d4e5f.1f")
    assert channel_for(prefix, direct) == "flask-websocket:chat:node:0a1b2c3d4e5f"
    assert safe_url("redis://:s3cret@db:6379/1") == "redis://:***@db:6379/1"
    assert safe_url("redis://user:s3cret@db/0") == "redis://user:***@db/0"
    assert safe_url("unix:///run/redis.sock") == "unix:///run/redis.sock"
    emitter = RedisEmitter(f"redis://127.0.0.1:{free_port()}/0", prefix="p:", max_payload=4)
    with pytest.raises(BroadcastTooLarge):
        emitter.broadcast(b"12345")  # refused before any connection is made
    with pytest.raises(ValueError):
        emitter.broadcast("x", room="")


def test_emitter_from_app_uses_the_apps_channels() -> None:
    from flask import Flask

    from flask_websocket.emitter import RedisEmitter
    from flask_websocket.exceptions import ConfigurationError

    url = f"redis://127.0.0.1:{free_port()}/0"
    app = Flask("chat_app")
    app.config["WEBSOCKET_HUB_URL"] = url
    assert RedisEmitter.from_app(app).prefix == "flask-websocket:chat_app:"
    app.config["WEBSOCKET_HUB_OPTIONS"] = {"name": "chat", "max_payload": 10}
    emitter = RedisEmitter.from_app(app)
    assert (emitter.prefix, emitter.max_payload) == ("flask-websocket:chat:", 10)
    app.config["WEBSOCKET_HUB_OPTIONS"] = {"prefix": "mine:"}
    assert RedisEmitter.from_app(app).prefix == "mine:"
    app.config["WEBSOCKET_HUB_URL"] = "local://"
    with pytest.raises(ConfigurationError, match="redis hub"):
        RedisEmitter.from_app(app)
