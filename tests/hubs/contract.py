"""The contract every hub passes: memory, local and redis alike.

Not collected by the main pytest run: ``test_contract.py`` runs this file in
a child pytest process that monkey-patches the standard library with gevent
first (redis-py needs it, as it does under ``uwsgi --gevent``), once per
hub: ``HUB_KIND=memory|local|redis``.

The connections here are stand-ins that record the frames offered to them:
this suite checks the hub's semantics. The same behaviour is checked end to
end with real uWSGI workers in ``tests/test_uwsgi_rooms.py``.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, Iterator, List, Optional

import gevent
import pytest

from flask_websocket.hubs import BroadcastTooLarge, create_hub
from flask_websocket.hubs.base import (
    KIND_ALL,
    KIND_DIRECT,
    KIND_ROOM,
    KIND_USER,
    OP_CLOSE,
    Envelope,
    Hub,
    close_payload,
)
from flask_websocket.protocol import OP_BINARY, OP_TEXT, encode_frame
from flask_websocket.rooms import RoomRegistry

KIND = os.environ.get("HUB_KIND", "memory")
REDIS_URL = os.environ.get("HUB_REDIS_URL", "")


class StandInConnection:
    """What the registry needs of a connection, recording what it is offered."""

    def __init__(self, registry: RoomRegistry, user_id: Optional[str] = None) -> None:
        self._registry = registry
        self.user_id = user_id
        self.wire = False  # plain frames (no fws.v1): the contract checks the bytes
        self.frame_kind = False  # framed alike for every stand-in (uncompressed, not fws.v1)
        self.closed_with: Optional[tuple] = None
        self._id: Optional[str] = None
        self._rooms: set = set()
        self.frames: List[bytes] = []
        registry.add(self)  # type: ignore[arg-type]

    @property
    def id(self) -> str:
        if self._id is None:
            self._id = self._registry.new_id(self)  # type: ignore[arg-type]
        return self._id

    @property
    def assigned_id(self) -> Optional[str]:
        return self._id

    @property
    def rooms(self) -> frozenset:
        return frozenset(self._rooms)

    def join(self, room: str) -> None:
        self._registry.join(self, room)  # type: ignore[arg-type]
        _ = self.id
        self._rooms.add(room)

    def leave(self, room: str) -> None:
        self._rooms.discard(room)
        self._registry.leave(self, room)  # type: ignore[arg-type]

    def close(self) -> None:
        self._registry.remove(self)  # type: ignore[arg-type]

    def message_frame(self, opcode: int, payload: bytes) -> bytes:
        return encode_frame(opcode, payload)

    # No socket: the fan-out offers each frame (fanout.py reads _direct_fd first).
    _direct_fd = None

    def offer_frame(self, frame: bytes) -> bool:
        self.frames.append(frame)
        return True

    def close_nowait(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason)


class Node:
    """One process's registry and hub."""

    def __init__(self, name: str) -> None:
        self.registry = RoomRegistry()
        url = {"memory": "memory://", "local": "local://", "redis": REDIS_URL}[KIND]
        options: Dict[str, Any] = {"name": name, "presence_timeout": 0.5, "listen": True}
        self.hub: Hub = create_hub(url, self.registry, options)
        self.registry.hub = self.hub
        self.hub.start()

    def connect(self, user_id: Optional[str] = None) -> StandInConnection:
        return StandInConnection(self.registry, user_id)

    def publish(
        self, kind: int, payload: bytes, target: str = "", skip: str = "", opcode: int = OP_TEXT
    ) -> None:
        self.hub.publish(
            Envelope(kind, opcode, payload, target, skip, origin=self.registry.node_id)
        )


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        gevent.sleep(0.01)
    return condition()


def settle() -> None:
    """Give listeners time to deliver anything still in flight (for 'not delivered')."""
    gevent.sleep(0.3)


@pytest.fixture
def nodes(request: pytest.FixtureRequest) -> Iterator[List[Node]]:
    name = f"contract-{os.getpid()}-{request.node.name}"[:50].replace("/", "-")
    made = [Node(name)] if KIND == "memory" else [Node(name), Node(name)]
    for node in made[1:]:
        node.hub.members("warm-up")  # discovery: peers see each other
    yield made
    for node in made:
        node.hub.stop()


def frame(text: str) -> bytes:
    return encode_frame(OP_TEXT, text.encode())


def test_broadcast_to_all_reaches_every_connection_once(nodes: List[Node]) -> None:
    connections = [node.connect() for node in nodes for _ in range(3)]
    for i in range(20):
        nodes[i % len(nodes)].publish(KIND_ALL, f"m{i}".encode())
    expected = [frame(f"m{i}") for i in range(20)]
    assert wait_for(lambda: all(len(c.frames) >= 20 for c in connections))
    settle()
    for connection in connections:
        # In order per publisher; across publishers each arrives exactly once.
        assert sorted(connection.frames) == sorted(expected)
        mine = [f for f in connection.frames if f in expected[0 :: len(nodes)]]
        assert mine == expected[0 :: len(nodes)]


def test_room_broadcast_reaches_only_members(nodes: List[Node]) -> None:
    inside = [node.connect() for node in nodes]
    outside = [node.connect() for node in nodes]
    for connection in inside:
        connection.join("lobby")
    nodes[0].publish(KIND_ROOM, b"hello", target="lobby")
    assert wait_for(lambda: all(c.frames for c in inside))
    settle()
    assert all(c.frames == [frame("hello")] for c in inside)
    assert all(c.frames == [] for c in outside)


def test_skip_excludes_the_sender_everywhere(nodes: List[Node]) -> None:
    members = [node.connect() for node in nodes for _ in range(2)]
    for connection in members:
        connection.join("r")
    sender = members[-1]
    nodes[0].publish(KIND_ROOM, b"x", target="r", skip=sender.id)
    others = [c for c in members if c is not sender]
    assert wait_for(lambda: all(c.frames for c in others))
    settle()
    assert sender.frames == []
    assert all(c.frames == [frame("x")] for c in others)


def test_send_to_reaches_one_connection_wherever_it_is(nodes: List[Node]) -> None:
    connections = [node.connect() for node in nodes for _ in range(2)]
    target = connections[-1]
    nodes[0].publish(KIND_DIRECT, b"just you", target=target.id)
    assert wait_for(lambda: bool(target.frames))
    settle()
    assert target.frames == [frame("just you")]
    assert all(c.frames == [] for c in connections if c is not target)


def test_binary_stays_binary(nodes: List[Node]) -> None:
    connection = nodes[-1].connect()
    nodes[0].publish(KIND_ALL, b"\x00\xff", opcode=OP_BINARY)
    assert wait_for(lambda: bool(connection.frames))
    assert connection.frames == [encode_frame(OP_BINARY, b"\x00\xff")]


def test_presence_across_processes_and_after_leaving(nodes: List[Node]) -> None:
    members = [node.connect() for node in nodes for _ in range(2)]
    for connection in members:
        connection.join("p")
    expected = sorted(c.id for c in members)
    for node in nodes:
        assert wait_for(lambda node=node: node.hub.members("p") == expected)
    members[0].leave("p")
    members[-1].close()
    remaining = sorted(c.id for c in members[1:-1])
    for node in nodes:
        assert wait_for(lambda node=node: node.hub.members("p") == remaining)
    assert nodes[0].hub.members("empty-room") == []


def test_closed_connections_get_nothing(nodes: List[Node]) -> None:
    gone = nodes[-1].connect()
    gone.join("r")
    stays = nodes[-1].connect()
    stays.join("r")
    gone.close()
    nodes[0].publish(KIND_ROOM, b"after", target="r")
    assert wait_for(lambda: bool(stays.frames))
    settle()
    assert gone.frames == []


def test_many_broadcasts_no_loss_no_duplicates(nodes: List[Node]) -> None:
    receivers = [node.connect() for node in nodes for _ in range(5)]
    count = 2000
    for i in range(count):
        nodes[0].publish(KIND_ALL, str(i).encode())
    assert wait_for(lambda: all(len(c.frames) >= count for c in receivers), timeout=30)
    settle()
    expected = [frame(str(i)) for i in range(count)]
    for connection in receivers:
        assert connection.frames == expected


@pytest.mark.parametrize(
    "room, error",
    [(123, TypeError), ("", ValueError), ("x" * 201, ValueError), ("a\nb", ValueError)],
)
def test_invalid_room_names_are_clear_errors(nodes: List[Node], room: Any, error: type) -> None:
    connection = nodes[0].connect()
    with pytest.raises(error):
        connection.join(room)
    with pytest.raises(error):
        nodes[0].hub.members(room)


def test_oversized_broadcast_is_refused_before_anything_is_sent(nodes: List[Node]) -> None:
    limit = nodes[0].hub.max_payload
    if limit is None:
        pytest.skip(f"the {KIND} hub has no size limit of its own")
    connection = nodes[0].connect()
    with pytest.raises(BroadcastTooLarge):
        nodes[0].publish(KIND_ALL, b"x" * (limit + 1))
    settle()
    assert connection.frames == []


def test_send_to_a_user_reaches_all_their_connections_everywhere(nodes: List[Node]) -> None:
    alice = [node.connect(user_id="alice") for node in nodes for _ in range(2)]
    bob = nodes[-1].connect(user_id="bob")
    anonymous = nodes[0].connect()
    nodes[0].publish(KIND_USER, b"for alice", target="alice")
    assert wait_for(lambda: all(c.frames for c in alice))
    settle()
    assert all(c.frames == [frame("for alice")] for c in alice)
    assert bob.frames == [] and anonymous.frames == []


def test_closing_a_user_closes_all_their_connections_everywhere(nodes: List[Node]) -> None:
    alice = [node.connect(user_id="alice") for node in nodes for _ in range(2)]
    bob = nodes[-1].connect(user_id="bob")
    nodes[0].publish(KIND_USER, close_payload(4001, "logged out"), target="alice", opcode=OP_CLOSE)
    assert wait_for(lambda: all(c.closed_with for c in alice))
    settle()
    assert all(c.closed_with == (4001, "logged out") for c in alice)
    assert bob.closed_with is None
    # Gone users are forgotten: nothing is kept for them.
    for connection in alice:
        connection.close()
    assert all("alice" not in node.registry._by_user for node in nodes)
