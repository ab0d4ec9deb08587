"""Unit tests of ``flask_websocket.streams`` with stand-in connections.

The end-to-end tests (real uWSGI, real Redis) are in
tests/test_uwsgi_redis_restart.py; these pin the orders of events those
tests can only provoke by chance.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Set, Tuple

from flask_websocket.fanout import group_members
from flask_websocket.history import Entry, Recovery
from flask_websocket.hubs.base import KIND_ROOM, Envelope
from flask_websocket.protocol import OP_TEXT, encode_frame
from flask_websocket.streams import LOST_CODE, Streams

ROOM = "lobby"


class Member:
    """What the streams use of a connection: a raw client (frames are the payloads)."""

    wire = False
    frame_kind = False  # neither fws.v1 nor compressed
    assigned_id: Optional[str] = None
    _direct_fd = None  # no socket: the fan-out offers each frame (offer_frame)

    def __init__(self, name: str) -> None:
        self.name = name
        self.frames: List[bytes] = []
        self.closed: Optional[Tuple[int, str]] = None

    def close_nowait(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    @staticmethod
    def message_frame(opcode: int, payload: bytes) -> bytes:
        return encode_frame(opcode, payload)

    def offer_frame(self, frame: bytes) -> bool:
        if self.closed is not None:  # as a connection that started closing
            return False
        self.frames.append(frame)
        return True

    def got(self) -> List[str]:
        return [frame[2:].decode() for frame in self.frames]


class Room:
    def __init__(self) -> None:
        self.members: Dict[str, Set[Member]] = {ROOM: set()}
        self.streams = Streams(
            lambda room: self.members.get(room, set()),  # type: ignore[arg-type,return-value]
            lambda room: group_members(self.members.get(room, set())),  # type: ignore[arg-type]
            lambda id: next((m for m in self.members[ROOM] if m.assigned_id == id), None),  # type: ignore[arg-type,return-value]
        )

    def join(self, member: Member, epoch: str = "", last: int = 0) -> None:
        self.streams.start_catching_up(member, ROOM, epoch, last)  # type: ignore[arg-type]
        self.members[ROOM].add(member)

    def caught_up(self, member: Member, recovery: Recovery) -> None:
        for opcode, payload in self.streams.caught_up(member, ROOM, recovery):  # type: ignore[arg-type]
            member.frames.append(member.message_frame(opcode, payload))
        self.streams.drain(ROOM)


def message(epoch: str, offset: int, text: str) -> Envelope:
    return Envelope(KIND_ROOM, OP_TEXT, text.encode(), ROOM, epoch=epoch, offset=offset)


def entry(offset: int, text: str) -> Entry:
    return Entry(offset, OP_TEXT, text.encode(), 0.0)


def test_frames_are_raw_for_raw_members() -> None:
    assert encode_frame(OP_TEXT, b"x")[2:] == b"x"  # what Member.got() relies on


def test_a_member_whose_join_read_an_empty_store_gets_the_first_message_once() -> None:
    """Two joins at once; the room's first message is appended between their reads."""
    room = Room()
    early, late = Member("early"), Member("late")
    room.join(early)
    room.join(late)
    room.streams.deliver(message("E", 1, "first"))  # live, while both catch up
    room.caught_up(early, Recovery(True, "", 0))  # read before the append
    room.caught_up(late, Recovery(True, "E", 1))  # read after it: joined at 1
    room.streams.deliver(message("E", 2, "second"))
    assert early.got() == ["first", "second"]
    assert late.got() == ["second"]


def test_a_member_whose_join_read_an_empty_store_after_another_joined_later() -> None:
    """The join that read the store after the append catches up first."""
    room = Room()
    early, late = Member("early"), Member("late")
    room.join(early)
    room.caught_up(early, Recovery(True, "", 0))  # live from here, at "no stream"
    room.join(late)
    room.caught_up(late, Recovery(True, "E", 1))  # the first message, not here yet
    room.streams.deliver(message("E", 1, "first"))
    room.streams.deliver(message("E", 2, "second"))
    assert early.got() == ["first", "second"]
    assert late.got() == ["second"]


def test_what_was_published_during_a_break_is_delivered_when_the_store_is_read() -> None:
    room = Room()
    member = Member("m")
    room.join(member)
    room.caught_up(member, Recovery(True, "E", 3))
    room.streams.subscription_lost()
    assert room.streams.to_check() == [(ROOM, 3)]
    room.streams.checked(ROOM, "E", 5, [entry(4, "four"), entry(5, "five")])
    room.streams.deliver(message("E", 5, "five"))  # late, by the subscription: not twice
    assert member.got() == ["four", "five"]
    assert member.closed is None
    assert room.streams.to_check() == []  # sure again


def test_members_are_closed_when_the_store_lost_the_stream_during_a_break() -> None:
    for epoch, last, entries in [("E2", 1, [entry(1, "new")]), ("", 0, [])]:
        room = Room()
        member = Member("m")
        room.join(member)
        room.caught_up(member, Recovery(True, "E", 3))
        room.streams.subscription_lost()
        room.streams.to_check()
        room.streams.checked(ROOM, epoch, last, entries)
        assert member.closed is not None and member.closed[0] == LOST_CODE
        assert member.got() == []


def test_what_history_no_longer_holds_is_skipped_visibly_or_told() -> None:
    room = Room()
    member = Member("m")
    room.join(member)
    room.caught_up(member, Recovery(True, "E", 3))
    room.streams.subscription_lost()
    room.streams.to_check()
    room.streams.checked(ROOM, "E", 9, [entry(8, "eight"), entry(9, "nine")])  # 4-7 trimmed
    assert member.closed is None  # fws.v1 clients see offsets 3 then 8
    assert member.got() == ["eight", "nine"]

    room.streams.subscription_lost()
    room.streams.to_check()
    room.streams.checked(ROOM, "E", 12, [])  # 10-12 gone (a ttl), nothing after them
    assert member.closed is not None and member.closed[0] == LOST_CODE


def test_a_new_epoch_seen_live_is_a_loss_only_after_a_break() -> None:
    quiet, broken = Room(), Room()
    for room in (quiet, broken):
        member = Member("m")
        room.join(member)
        room.caught_up(member, Recovery(True, "E", 3))
    broken.streams.subscription_lost()
    for room in (quiet, broken):
        room.streams.deliver(message("E2", 1, "new stream"))
    (calm,) = quiet.members[ROOM]
    assert calm.got() == ["new stream"] and calm.closed is None  # the room expired: ttl
    (told,) = broken.members[ROOM]
    assert told.got() == [] and told.closed is not None and told.closed[0] == LOST_CODE


def test_streams_made_during_a_break_are_checked_too() -> None:
    room = Room()
    room.streams.subscription_lost()
    member = Member("m")
    room.join(member)
    room.caught_up(member, Recovery(True, "E", 2))
    assert room.streams.to_check() == [(ROOM, 2)]
    room.streams.checked(ROOM, "E", 3, [entry(3, "three")])
    assert member.got() == ["three"]


def test_a_join_that_finds_another_stream_after_a_break_tells_the_members_here() -> None:
    """Found by the 200-client test: the join switched the stream, the others went on."""
    room = Room()
    stayed, back = Member("stayed"), Member("back")
    room.join(stayed)
    room.caught_up(stayed, Recovery(True, "E", 3))
    room.streams.subscription_lost()  # Redis restarts empty
    room.join(back)
    room.caught_up(back, Recovery(False, "E2", 1, (entry(1, "one"),)))
    room.streams.deliver(message("E2", 2, "two"))
    assert stayed.closed is not None and stayed.closed[0] == LOST_CODE
    assert stayed.got() == []
    assert back.closed is None and back.got() == ["one", "two"]


def test_members_are_closed_when_the_store_came_back_from_an_older_snapshot() -> None:
    """Same epoch, fewer messages (an RDB snapshot): the offsets after it come again."""
    room = Room()
    member = Member("m")
    room.join(member)
    room.caught_up(member, Recovery(True, "E", 10))
    room.streams.subscription_lost()
    room.streams.to_check()
    room.streams.checked(ROOM, "E", 7, [])
    assert member.closed is not None and member.closed[0] == LOST_CODE
    newcomer = Member("new")
    room.join(newcomer)
    room.caught_up(newcomer, Recovery(True, "E", 7))
    room.streams.deliver(message("E", 8, "eight, again"))
    assert newcomer.got() == ["eight, again"]
