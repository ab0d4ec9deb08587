"""A broadcast's delivery to a room's members (fanout.py), with real connections.

In-process over socket pairs on the gevent backend (no uWSGI): the members
of a room are grouped once per change of membership and each gets the
frame straight from its socket, so these tests pin what must stay true
however the groups were made: joins and leaves between broadcasts, short
writes, a member lost or closed in the middle of a broadcast, the sender
skipped.
"""

from __future__ import annotations

import socket
from typing import Iterator, List, Tuple

import pytest
from websockets.frames import Opcode

from flask_websocket import HubError
from flask_websocket.concurrency.gevent import GeventBackend
from flask_websocket.connection import ConnectionOptions, WebSocketConnection
from flask_websocket.hubs.base import KIND_ROOM, Envelope
from flask_websocket.hubs.memory import MemoryHub
from flask_websocket.protocol import OP_TEXT
from flask_websocket.rooms import RoomRegistry
from tests.test_connection import _read_all
from tests.test_protocol import open_server, parse_server_frames

ROOM = "lobby"

Member = Tuple[WebSocketConnection, socket.socket]


class Room:
    """A registry and accepted connections (with their peers) that joined one room."""

    def __init__(self) -> None:
        self.backend = GeventBackend("gevent")
        self.registry = RoomRegistry()
        self.members: List[Member] = []
        self._sockets: List[socket.socket] = []

    def connect(self, join: bool = True) -> Member:
        server, client = socket.socketpair()
        for sock in (server, client):
            sock.setblocking(False)
            self._sockets.append(sock)
        connection = WebSocketConnection(
            open_server(),
            self.backend,
            ConnectionOptions(ping_interval=None, close_timeout=0.5),
            lambda: server,
            self.registry,
        )
        connection.accept()
        if join:
            connection.join(ROOM)
        member = (connection, client)
        self.members.append(member)
        return member

    def broadcast(self, text: str, skip: str = "") -> int:
        envelope = Envelope(KIND_ROOM, OP_TEXT, text.encode(), ROOM, skip=skip)
        return self.registry.deliver(envelope)

    def close(self) -> None:
        for connection, _ in self.members:
            connection._teardown(lost=True)
        for sock in self._sockets:
            sock.close()


@pytest.fixture
def room() -> Iterator[Room]:
    room = Room()
    yield room
    room.close()


def received(client: socket.socket, rounds: int = 200) -> List[Tuple[Opcode, bytes]]:
    """The frames the peer can read now (letting the loop flush what was queued)."""
    return [
        (frame.opcode, bytes(frame.data))
        for frame in parse_server_frames(_read_all(client, rounds))
    ]


def texts(client: socket.socket, rounds: int = 200) -> List[str]:
    frames = received(client, rounds)
    assert all(opcode == Opcode.TEXT for opcode, _ in frames), frames
    return [data.decode() for _, data in frames]


def test_every_member_gets_each_broadcast_once_and_joins_and_leaves_count_at_once(
    room: Room,
) -> None:
    first = [room.connect() for _ in range(20)]
    assert room.broadcast("one") == 20
    late = room.connect()  # after a broadcast made the room's groups
    assert room.broadcast("two") == 21
    leaving, _ = first[0]
    leaving.leave(ROOM)
    assert room.broadcast("three") == 20
    assert texts(first[0][1]) == ["one", "two"]
    for _, client in first[1:]:
        assert texts(client) == ["one", "two", "three"]
    assert texts(late[1]) == ["two", "three"]


def test_the_skipped_member_gets_nothing(room: Room) -> None:
    members = [room.connect() for _ in range(5)]
    sender, _ = members[2]
    assert room.broadcast("not to the sender", skip=sender.id) == 4
    for connection, client in members:
        assert texts(client) == ([] if connection is sender else ["not to the sender"])


@pytest.mark.parametrize("stalled_members", [1, 20])  # 20: past the scan, a dict finds them
def test_members_that_do_not_read_queue_and_then_get_everything_in_order(
    room: Room, stalled_members: int
) -> None:
    reader = room.connect()
    stalled_ones = [room.connect() for _ in range(stalled_members)]
    stalled = stalled_ones[-1]
    count = 200
    # 800 KB in all: past what the kernel holds for a socket pair, within
    # the send queue's bound (1 MiB)
    payload = "x" * 4000
    members = stalled_members + 1
    delivered = [room.broadcast(f"{i:04d}{payload}") for i in range(count)]
    assert delivered == [members] * count  # queued counts as delivered: none dropped
    assert all(connection.buffered_amount > 0 for connection, _ in stalled_ones)
    got: List[List[str]] = [[] for _ in range(members)]
    peers = [reader[1]] + [client for _, client in stalled_ones]
    for _ in range(100):  # bounded: each round reads what every peer can
        for index, peer in enumerate(peers):
            got[index] += texts(peer, rounds=25)
        if all(len(frames) == count for frames in got):
            break
    expected = [f"{i:04d}{payload}" for i in range(count)]
    assert all(frames == expected for frames in got)
    assert stalled[0].buffered_amount == 0
    assert room.broadcast("direct again") == members
    assert texts(stalled[1]) == ["direct again"]


def test_a_lost_member_is_torn_down_and_the_others_still_get_the_broadcast(
    room: Room,
) -> None:
    members = [room.connect() for _ in range(10)]
    lost, lost_peer = members[4]
    lost_peer.close()  # the write fails: EPIPE
    assert room.broadcast("after the loss") == 9
    assert lost.closed and lost.close_code == 1006
    assert lost not in room.registry.connections
    for connection, client in members:
        if connection is not lost:
            assert texts(client) == ["after the loss"]
    assert room.broadcast("again") == 9


def test_a_member_closed_during_the_broadcast_gets_nothing_after_its_close_frame(
    room: Room, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lost member's teardown wakes its handler, which may close other members.

    Those come later in the same broadcast: each member's state is read as
    its turn comes, so none gets a data frame after its close frame.
    """
    for _ in range(10):
        room.connect()
    (group,) = room.registry._groups_of(ROOM)
    order = group.direct  # the order the broadcast writes in
    assert len(order) == 10
    lost, victim = order[0], order[-1]
    peers = dict(room.members)
    peers[lost].close()
    real = WebSocketConnection._connection_lost

    def lost_then_close_another(self: WebSocketConnection) -> None:
        real(self)
        if self is lost:
            victim.close_nowait(4000, "closed by another handler")

    monkeypatch.setattr(WebSocketConnection, "_connection_lost", lost_then_close_another)
    assert room.broadcast("in the middle") == 8
    frames = received(peers[victim])
    assert frames[0][0] == Opcode.CLOSE and len(frames) == 1, frames
    for connection in order[1:-1]:
        assert texts(peers[connection]) == ["in the middle"]


def test_a_join_the_hub_fails_leaves_the_connection_out_of_the_room(room: Room) -> None:
    """The registry had the member before the hub's hook failed: it must not stay.

    Otherwise it would get the room's broadcasts after ``join`` raised, and
    stay in the room after it closed.
    """

    class FailingHub(MemoryHub):
        def _member_joined(self, room_name: str, connection_id: str) -> None:
            raise HubError("the hub is down")

    stays = room.connect()
    room.registry.hub = FailingHub(room.registry, backend=room.backend)
    connection, client = room.connect(join=False)
    with pytest.raises(HubError, match="the hub is down"):
        connection.join(ROOM)
    assert connection.rooms == frozenset()
    assert room.registry.local_members(ROOM) == [stays[0].id]
    assert room.broadcast("not for the failed join") == 1
    assert texts(client) == []
    assert texts(stays[1]) == ["not for the failed join"]


def test_a_rooms_members_are_written_to_in_ascending_fd_order(room: Room) -> None:
    """The kernel's part of each write costs less in fd order (fanout._order_by_fd)."""
    for _ in range(40):
        room.connect()
    assert room.broadcast("first") == 40
    groups = room.registry._groups_of(ROOM)
    assert len(groups) == 1 and not groups[0].others
    group = groups[0]
    assert group.fds == sorted(group.fds) and len(set(group.fds)) == 40
    # ... and each fd's connection in step with it
    assert [connection._direct_fd for connection in group.direct] == group.fds
    # the room's own order is not that order (or the test shows nothing)
    in_set_order = [connection._direct_fd for connection in room.registry._rooms[ROOM]]
    assert in_set_order != group.fds
    for _, client in room.members:
        assert texts(client)[-1:] == ["first"]
