"""The local hub's delivery rules, in one process with several hubs (gevent and threads).

What the contract suite (contract.py) does not reach: many publishers at
once, a peer that is slow or stops reading, a peer that dies, packets from
processes that are not the app's. Real uWSGI workers are in
tests/test_uwsgi_hub_load.py and tests/test_uwsgi_hub_isolation.py.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Any, Callable, Iterator, List, Optional

import gevent
import pytest

from flask_websocket.concurrency.base import Backend
from flask_websocket.concurrency.gevent import GeventBackend
from flask_websocket.concurrency.threads import ThreadBackend
from flask_websocket.hubs import HubError, create_hub
from flask_websocket.hubs.base import KIND_ALL, KIND_ROOM, Envelope, Hub
from flask_websocket.hubs.local import LocalHub
from flask_websocket.protocol import OP_TEXT
from flask_websocket.rooms import RoomRegistry
from tests.hubs.contract import StandInConnection


class Node:
    """One "process": a registry and a local hub on its own backend."""

    def __init__(self, name: str, backend: Backend, **options: Any) -> None:
        self.backend = backend
        self.registry = RoomRegistry()
        self.hub: Hub = create_hub(
            "local://", self.registry, {"name": name, "listen": True, **options}, backend
        )
        self.registry.hub = self.hub
        self.hub.start()

    @property
    def local(self) -> LocalHub:
        assert isinstance(self.hub, LocalHub)
        return self.hub

    def connect(self, room: Optional[str] = None) -> StandInConnection:
        with self.backend.guarded():
            connection = StandInConnection(self.registry)
            if room is not None:
                connection.join(room)
        return connection

    def publish(self, text: str, room: Optional[str] = None) -> None:
        kind, target = (KIND_ALL, "") if room is None else (KIND_ROOM, room)
        envelope = Envelope(kind, OP_TEXT, text.encode(), target, origin=self.registry.node_id)
        with self.backend.guarded():
            self.hub.publish(envelope)

    def pause_reading(self) -> None:
        """Stop reading what other processes send (a worker busy or stopped)."""
        with self.backend.guarded():
            for link in self.local._inbound:
                link.reader.stop()

    def resume_reading(self) -> None:
        with self.backend.guarded():
            for link in self.local._inbound:
                link.reader.start()


def texts(connection: StandInConnection) -> List[str]:
    return [
        frame[2:].decode() if frame[1] < 126 else frame[4:].decode() for frame in connection.frames
    ]


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        gevent.sleep(0.01)
    return condition()


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    return f"unit-{os.getpid()}-{request.node.name}"[:55].replace("/", "-").replace("[", "-")


@pytest.fixture
def made() -> Iterator[List[Node]]:
    nodes: List[Node] = []
    yield nodes
    for node in nodes:
        node.hub.stop()


def test_fifty_greenlets_publish_at_once_and_every_peer_gets_each_once(
    name: str, made: List[Node]
) -> None:
    backend = GeventBackend()
    made += [Node(name, backend) for _ in range(4)]
    members = [node.connect("r") for node in made]
    errors: List[BaseException] = []

    def publish(i: int) -> None:
        try:
            made[0].publish(f"{i}", room="r")
        except BaseException as exc:  # the test asserts there is none
            errors.append(exc)

    for round_ in range(5):
        gevent.joinall([gevent.spawn(publish, round_ * 50 + i) for i in range(50)])
    assert errors == []
    expected = [str(i) for i in range(250)]
    for member in members:
        assert wait_for(lambda member=member: len(member.frames) >= 250)
    gevent.sleep(0.2)
    for member in members:
        assert sorted(texts(member), key=int) == expected and len(member.frames) == 250


def test_fifty_threads_publish_at_once_under_the_threads_backend(
    name: str, made: List[Node]
) -> None:
    made += [Node(name, ThreadBackend()) for _ in range(3)]
    members = [node.connect("r") for node in made]
    errors: List[BaseException] = []

    def publish(start: int) -> None:
        try:
            for i in range(start, start + 10):  # each thread: 10 in order
                made[0].publish(f"{i}", room="r")
        except BaseException as exc:  # the test asserts there is none
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(t * 10,)) for t in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    for member in members:
        assert wait_for(lambda member=member: len(member.frames) >= 500)
    time.sleep(0.2)
    for member, node in zip(members, made):
        with node.backend.guarded():
            got = [int(text) for text in texts(member)]
        assert sorted(got) == list(range(500))
        for start in range(0, 500, 10):  # each publisher's order is kept
            mine = [i for i in got if start <= i < start + 10]
            assert mine == list(range(start, start + 10))


def test_a_slow_peer_is_waited_for_and_loses_nothing(name: str, made: List[Node]) -> None:
    backend = GeventBackend()
    made += [Node(name, backend, send_timeout=5.0) for _ in range(2)]
    publisher, slow = made
    member = slow.connect("r")
    slow.pause_reading()
    # Reading resumes after 0.3 s: the burst below is far more than its socket holds.
    gevent.spawn_later(0.3, slow.resume_reading)
    body = "x" * 60000
    count = 400  # 24 MB: more than any socket buffer
    for i in range(count):
        publisher.publish(f"{i}:{body}", room="r")
    assert wait_for(lambda: len(member.frames) >= count, timeout=30)
    assert [text.split(":")[0] for text in texts(member)] == [str(i) for i in range(count)]


def test_a_peer_that_stops_reading_is_named_and_its_messages_withdrawn(
    name: str, made: List[Node]
) -> None:
    backend = GeventBackend()
    made += [Node(name, backend, send_timeout=0.3) for _ in range(2)]
    publisher, stuck = made
    member = stuck.connect("r")
    stuck.pause_reading()
    body = "x" * 60000
    sent: List[int] = []
    failed: List[int] = []
    for i in range(1000):  # bounded: the socket buffer fills long before
        try:
            publisher.publish(f"{i}:{body}", room="r")
        except HubError as exc:
            assert "not reading" in str(exc) and stuck.local.address[1:].rsplit("/", 1)[1] in str(
                exc
            )
            failed.append(i)
            if len(failed) == 3:
                break
        else:
            sent.append(i)
    assert len(failed) == 3 and sent
    # Fifty publishers at once while it is stuck: each is told, none waits for ever.
    outcomes: List[str] = []

    def publish(i: int) -> None:
        try:
            publisher.publish(f"late{i}", room="r")
            outcomes.append("sent")
        except HubError:
            outcomes.append("HubError")

    gevent.joinall([gevent.spawn(publish, i) for i in range(50)], timeout=10)
    assert outcomes == ["HubError"] * 50
    stuck.resume_reading()
    publisher.publish("after", room="r")
    assert wait_for(lambda: len(member.frames) >= len(sent) + 1, timeout=30)
    gevent.sleep(0.2)
    # What was reported lost never arrives (not even late); the rest in order.
    assert [text.split(":")[0] for text in texts(member)] == [*map(str, sent), "after"]


def test_a_peer_that_dies_is_forgotten_quietly(name: str, made: List[Node]) -> None:
    backend = GeventBackend()
    made += [Node(name, backend) for _ in range(3)]
    publisher, survivor, victim = made
    member = survivor.connect("r")
    victim.connect("r")
    victim.pause_reading()
    for i in range(50):  # queued for the victim, which does not read
        publisher.publish(f"{i}:" + "x" * 60000, room="r")
    victim.hub.stop()  # its sockets close, as when the process is killed
    for i in range(50, 100):
        publisher.publish(f"{i}", room="r")  # no HubError
    assert wait_for(lambda: len(member.frames) >= 100)
    assert [text.split(":")[0] for text in texts(member)] == [str(i) for i in range(100)]
    assert wait_for(lambda: victim.local.address not in publisher.local._peers)


def test_presence_names_a_peer_that_does_not_answer(name: str, made: List[Node]) -> None:
    backend = GeventBackend()
    made += [Node(name, backend, presence_timeout=0.3) for _ in range(2)]
    asker, silent = made
    here, there = asker.connect("p"), silent.connect("p")
    assert asker.hub.members("p") == sorted([here.id, there.id])
    silent.pause_reading()
    with pytest.raises(HubError, match="no presence answer"):
        asker.hub.members("p")
    silent.resume_reading()
    silent.hub.stop()  # a dead peer's members are simply not counted
    assert wait_for(lambda: asker.hub.members("p") == [here.id])


def raw_connect(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.connect(address)
    return sock


def test_malformed_packets_change_nothing(
    name: str, made: List[Node], caplog: pytest.LogCaptureFixture
) -> None:
    backend = GeventBackend()
    made += [Node(name, backend) for _ in range(2)]
    publisher, receiver = made
    member = receiver.connect("r")
    sock = raw_connect(receiver.local.address)
    for packet in (
        b"E",
        b"Q",
        b"A\x01",
        b"H\xff",
        b"Zzz",
        b"E\x07" + b"\x00" * 20,
        os.urandom(999),
    ):
        sock.send(packet)
    publisher.publish("real", room="r")
    assert wait_for(lambda: bool(member.frames))
    gevent.sleep(0.2)
    assert texts(member) == ["real"]
    assert "malformed" in caplog.text
    # At most one line per kind of problem (rate-limited).
    assert caplog.text.count("dropped a malformed packet") == 1
    sock.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another uid needs root")
def test_a_listener_of_another_user_gets_nothing(name: str, made: List[Node]) -> None:
    """A process of another user that binds a name in the group is never sent anything."""
    backend = GeventBackend()
    made.append(Node(name, backend))
    read_end, write_end = os.pipe()
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the impostor: plain sockets, leaves with os._exit
        report = {"received": 0}
        try:
            os.setgid(65534)
            os.setuid(65534)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            listener.bind(f"\0flask-websocket/{name}/w9-1-impostor")
            listener.listen(8)
            os.write(ready_write, b"1")
            listener.settimeout(3)
            connection, _ = listener.accept()
            connection.settimeout(1)
            while True:
                data = connection.recv(300000)
                if not data:
                    break
                report["received"] += len(data)
        except OSError:
            pass
        os.write(write_end, json.dumps(report).encode())
        os._exit(0)
    os.close(write_end)
    os.read(ready_read, 1)
    publisher = Node(name, backend)  # lists the group: finds the impostor
    made.append(publisher)
    publisher.publish("secret")
    report = json.loads(os.read(read_end, 1000) or b"{}")  # the impostor is done by then
    os.close(read_end)
    os.waitpid(pid, 0)
    assert report == {"received": 0}
