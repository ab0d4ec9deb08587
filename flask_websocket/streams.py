"""Rooms with history, as one process delivers them: in offset order, each offset once.

The messages of a room's stream reach a process by different paths (its
own broadcasts, each other worker's, Redis) and may arrive out of order: two
workers that publish into the same room at the same moment get offsets 7
and 8 from the store, and their messages can cross on the way. So each
process keeps, per room with members here, the last offset it delivered;
a message with the next offset is delivered, later ones wait, and a gap that
lasts (a message lost on the way: a peer that did not take it, a Redis
reconnection) is filled from the store.

A member that joins with a position catches up first: live messages for it
wait while the hub reads the store, then it gets the join's answer, every
message it missed, and what waited, in order, each once.

When the way messages reach this process broke (the redis hub lost its
subscription), every stream is *unsure* until the hub has read it from the
store again: what was published meanwhile is delivered then, in order, even
if nothing is published after it. When the store lost the stream (another
epoch, or none) the members could not tell from what they get: the room's
members here are closed with 1012 (:data:`LOST_CODE`), so that they come
back with their positions and are told, by the join's answer, that
recovery was not complete. (Messages trimmed from a history that holds
later ones are skipped: ``fws.v1`` clients see the jump in offsets.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Set, Tuple

from .fanout import Group, group_members, offer_to_groups
from .history import Entry, Position, Recovery
from .hubs.base import Envelope
from .protocol import OP_TEXT
from .wire import joined_message, stream_message

if TYPE_CHECKING:  # pragma: no cover
    from .concurrency.base import Backend, Timer
    from .connection import WebSocketConnection

__all__ = ["GAP_WAIT", "LOST_CODE", "LOST_REASON", "RoomStream", "Streams"]

logger = logging.getLogger("flask_websocket.rooms")

#: Seconds a gap in a room's offsets may last before it is filled from the store.
GAP_WAIT = 0.5
#: The close code of members whose messages this process cannot deliver
#: (1012, "service restart": clients reconnect at once, with their positions).
LOST_CODE = 1012
LOST_REASON = "history lost: resume"


@dataclass
class RoomStream:
    """One room's stream in this process."""

    epoch: str
    #: The offset of the last message delivered here.
    last: int
    pending: Dict[int, Envelope] = field(default_factory=dict)
    gap_timer: Optional[Timer] = None
    #: Members that are catching up, and the live messages that wait for each.
    waiting: Dict[WebSocketConnection, List[Envelope]] = field(default_factory=dict)
    #: Members that caught up past ``last`` (they read the store): the offset
    #: each has, so that a late message it got from the store is not sent twice.
    floor: Dict[WebSocketConnection, int] = field(default_factory=dict)
    #: Messages may have been lost on their way here (the hub's subscription
    #: broke or came late): the hub reads the store again (:meth:`Streams.checked`).
    unsure: bool = False


class Streams:
    """The streams of this process's rooms with history."""

    def __init__(
        self,
        members_of: Callable[[str], Set[WebSocketConnection]],
        groups_of: Callable[[str], List[Group]],
        find: Callable[[str], Optional[WebSocketConnection]],
    ) -> None:
        self._members_of = members_of
        # The room's members grouped by frame kind, and a connection by its id:
        # the fast path of _to_members (see fanout.py).
        self._groups_of = groups_of
        self._find = find
        self.rooms: Dict[str, RoomStream] = {}
        #: Set by the hub: reads the entries after an offset (a task that may wait).
        self.fill_gap: Optional[Callable[[str, int], None]] = None
        self.backend: Optional[Backend] = None
        #: False from a break in the hub's subscription until the hub checks
        #: the streams again: streams made meanwhile are unsure too.
        self.listening = True

    # -- live messages -----------------------------------------------------------

    def deliver(self, envelope: Envelope) -> None:
        """A message of a room's stream: deliver it, and what it unblocks, in order."""
        room = envelope.target
        stream = self.rooms.get(room)
        if stream is None:
            return  # no member here has joined it with its history: nobody to deliver to
        if not stream.epoch:
            if stream.waiting:  # new here: where it starts comes from the store (caught_up)
                stream.pending[envelope.offset] = envelope
                return
            stream.epoch = envelope.epoch  # the store had no stream: this one is its first
        elif envelope.epoch != stream.epoch:  # the store lost the stream: a new one starts
            if stream.unsure or stream.pending or envelope.offset != 1:
                # Messages of either stream were lost on their way here.
                self._lost(room, stream, envelope.epoch, envelope.offset, "its stream changed")
                return
            # Nothing was missed (the room expired while idle: its ttl).
            logger.info("room %r: a new stream starts (epoch %s)", room, envelope.epoch)
            self._cancel_gap(stream)
            stream.epoch, stream.last, stream.pending = envelope.epoch, envelope.offset - 1, {}
        if envelope.offset <= stream.last or envelope.offset in stream.pending:
            return  # delivered already (it came by two paths)
        stream.pending[envelope.offset] = envelope
        self._drain(room, stream)

    def deliver_entries(
        self, room: str, epoch: str, entries: List[Entry], last: Optional[int] = None
    ) -> None:
        """Entries read from the store (after a gap, or a check): deliver those missing, in order.

        ``epoch`` and ``last`` are the store's stream and last offset when
        it was read. When the store no longer has what this process missed
        (another stream, or trimmed), the room's members are closed with
        :data:`LOST_CODE`.
        """
        stream = self.rooms.get(room)
        if stream is None or not stream.epoch:
            return
        if epoch != stream.epoch:
            self._lost(room, stream, epoch, last or 0, "its stream changed")
            return
        for entry in entries:
            if entry.offset > stream.last and entry.offset not in stream.pending:
                stream.pending[entry.offset] = Envelope(
                    1, entry.opcode, entry.payload, room, epoch=epoch, offset=entry.offset
                )
        if stream.pending and min(stream.pending) > stream.last + 1:
            # The store no longer has what is missing (trimmed): go on from what
            # it has. fws.v1 clients see the jump in offsets (the JavaScript
            # client's "recoveryincomplete", reason "gap").
            logger.warning(
                "room %r: messages %d to %d are gone from its history; skipped",
                room,
                stream.last + 1,
                min(stream.pending) - 1,
            )
            stream.last = min(stream.pending) - 1
        elif last is not None and last > stream.last and not stream.pending:
            # Gone too, and nothing after them would show the jump: say so.
            self._lost(room, stream, epoch, last, "history is trimmed")
            return
        self._drain(room, stream)

    def _lost(
        self,
        room: str,
        stream: RoomStream,
        epoch: str,
        last: int,
        why: str,
        besides: Optional[WebSocketConnection] = None,
    ) -> None:
        """Messages of ``room`` cannot reach its members here: close them, go on from ``last``.

        They come back with their positions, and the join's answer tells
        them (``recovered`` false) that they missed something. ``besides``
        is a member catching up from the store right now: it is told by its
        join's answer.
        """
        members = [c for c in self._members_of(room) if c is not besides]
        logger.warning(
            "room %r: messages after offset %d of stream %s did not reach this process and "
            "cannot be recovered (%s); its %d members here are closed with %d to resume",
            room, stream.last, stream.epoch or "(none)", why, len(members), LOST_CODE,
        )  # fmt: skip
        self._cancel_gap(stream)
        stream.epoch, stream.last, stream.pending, stream.unsure = epoch, last, {}, False
        stream.floor.clear()
        for connection in members:
            connection.close_nowait(LOST_CODE, LOST_REASON)

    # -- after a break in the hub's subscription -----------------------------------

    def subscription_lost(self) -> None:
        """The hub stopped hearing the other processes: every stream is unsure from now."""
        self.listening = False
        for stream in self.rooms.values():
            stream.unsure = True

    def mark_unsure(self, room: str) -> None:
        """Messages of ``room`` may have been missed (its subscription came late)."""
        stream = self.rooms.get(room)
        if stream is not None:
            stream.unsure = True

    def to_check(self) -> List[Tuple[str, int]]:
        """The hub hears the others again: ``(room, last offset)`` of each stream to read again."""
        self.listening = True
        return [(room, stream.last) for room, stream in self.rooms.items() if stream.unsure]

    def checked(self, room: str, epoch: str, last: int, entries: List[Entry]) -> None:
        """The store's stream of an unsure room (read after :meth:`to_check`): catch up with it."""
        stream = self.rooms.get(room)
        if stream is None or not stream.unsure:
            return
        if not stream.epoch:  # the room had no stream when its members joined
            if not epoch or not self._live_members(room, stream):
                # Nothing published yet; or every member still catching up,
                # and each one's join places the stream.
                stream.unsure = False
                return
            stream.epoch, stream.last = epoch, 0  # all of the new stream is new to them
            stream.pending = {o: e for o, e in stream.pending.items() if e.epoch == epoch}
        if epoch == stream.epoch and last < stream.last:
            # Same stream, fewer messages: Redis came back from an older
            # snapshot (RDB), and will give the offsets after ``last`` again.
            self._lost(room, stream, epoch, last, "the store went back to an older snapshot")
            return
        stream.unsure = False
        self.deliver_entries(room, epoch, entries, last)

    def checked_failed(self, room: str) -> None:
        """The store could not be read after an outage: what was missed is unknown, so say so."""
        stream = self.rooms.get(room)
        if stream is not None and stream.unsure:
            self._lost(room, stream, stream.epoch, stream.last, "the store could not be read")

    def _live_members(
        self, room: str, stream: RoomStream, besides: Optional[WebSocketConnection] = None
    ) -> bool:
        """Whether members of ``room`` (but ``besides``) get its live messages already."""
        return any(c not in stream.waiting and c is not besides for c in self._members_of(room))

    def _drain(self, room: str, stream: RoomStream) -> None:
        while stream.last + 1 in stream.pending:
            envelope = stream.pending.pop(stream.last + 1)
            stream.last = envelope.offset
            self._to_members(room, stream, envelope)
        if stream.pending:
            if stream.gap_timer is None and self.backend is not None:
                stream.gap_timer = self.backend.call_later(GAP_WAIT, lambda: self._gap(room))
        else:
            self._cancel_gap(stream)

    def _gap(self, room: str) -> None:
        stream = self.rooms.get(room)
        if stream is None:
            return
        stream.gap_timer = None
        if stream.pending and self.fill_gap is not None:
            self.fill_gap(room, stream.last)

    def _cancel_gap(self, stream: RoomStream) -> None:
        if stream.gap_timer is not None:
            stream.gap_timer.cancel()
            stream.gap_timer = None

    def _to_members(self, room: str, stream: RoomStream, envelope: Envelope) -> None:
        # The hot path of a broadcast into a room with history: framed once
        # per kind of member (the envelope with the position is per message,
        # not per member), one frame to many (fanout.py), unless members are
        # catching up, when each member is looked at first.
        skip = envelope.skip
        waiting_for = stream.waiting
        floors = stream.floor
        frame_for = lambda member: _frame(room, envelope, member)  # noqa: E731
        if not (waiting_for or floors):
            skipped = self._find(skip) if skip else None
            offer_to_groups(self._groups_of(room), frame_for, skipped)
            return
        members = []
        for connection in list(self._members_of(room)):
            if skip and connection.assigned_id == skip:
                continue
            if waiting_for:
                waiting = waiting_for.get(connection)
                if waiting is not None:
                    waiting.append(envelope)
                    continue
            if floors:
                floor = floors.get(connection)
                if floor is not None:
                    if envelope.offset <= floor:
                        continue  # it had this one from the store
                    del floors[connection]
            members.append(connection)
        offer_to_groups(group_members(members), frame_for)

    # -- joins -----------------------------------------------------------------

    def start_catching_up(
        self, connection: WebSocketConnection, room: str, epoch: str, last: int
    ) -> None:
        """``connection`` joins ``room``: live messages for it wait until :meth:`caught_up`.

        ``epoch`` and ``last`` start the room's stream here if it is new.
        """
        stream = self.rooms.get(room)
        if stream is None:
            stream = self.rooms[room] = RoomStream(epoch, last, unsure=not self.listening)
        stream.waiting[connection] = []

    def caught_up(
        self, connection: WebSocketConnection, room: str, recovery: Recovery
    ) -> List[Tuple[int, bytes]]:
        """The messages ``connection`` gets now: the join's answer, what it missed, what waited.

        ``(opcode, payload)`` each, in the connection's format (``fws.v1``
        wrapped), not framed yet: the caller frames each as it sends it, so
        that a connection compressing with context takeover compresses them
        in the order they go out, whatever it is sent in between.
        ``recovery`` is what the store said when the connection joined.
        """
        stream = self.rooms.get(room)
        if stream is None:  # it left while the store was read
            return []
        waited = stream.waiting.pop(connection, [])
        if not recovery.epoch:  # the store has no stream yet: the first one comes live
            if not stream.epoch and stream.pending and not stream.waiting:
                stream.epoch = next(iter(stream.pending.values())).epoch
        elif stream.epoch != recovery.epoch:
            early = [e for e in stream.pending.values() if e.epoch == recovery.epoch]
            self._cancel_gap(stream)
            live = self._live_members(room, stream, connection)
            if live and stream.epoch and (stream.unsure or stream.pending):
                # The store lost the stream the members here are in, and they
                # may have missed messages of it: tell them.
                self._lost(room, stream, recovery.epoch, recovery.offset, "its stream changed",
                           besides=connection)  # fmt: skip
            elif live:
                # Members here joined before the room had a stream, or saw all of
                # the one that expired: all of the new one is new to them (the
                # store fills the gap).
                stream.epoch, stream.last = recovery.epoch, 0
            else:
                # New here (or the store started a new stream): the store's position
                # is where this process starts; what came early waits in pending.
                stream.epoch, stream.last = recovery.epoch, recovery.offset
            stream.pending = {e.offset: e for e in early if e.offset > stream.last}
        wire = connection.wire
        messages: List[Tuple[int, bytes]] = []
        if wire:
            position = Position(recovery.epoch, recovery.offset)
            text = joined_message(room, position, recovery.recovered)
            messages.append((OP_TEXT, text.encode()))
        for entry in recovery.entries:
            envelope = Envelope(
                1, entry.opcode, entry.payload, room, epoch=recovery.epoch, offset=entry.offset
            )
            messages.append(_message(room, envelope, wire))
        has = recovery.offset  # the store's last: what the connection is at now
        for envelope in waited:
            if envelope.epoch == recovery.epoch and envelope.offset > has:
                messages.append(_message(room, envelope, wire))
                has = envelope.offset
        if has > stream.last:
            stream.floor[connection] = has
        return messages

    def started_meanwhile(self, connection: WebSocketConnection, room: str) -> bool:
        """Whether ``room``'s stream started while ``connection``'s join read an empty store.

        Its first messages came (or were delivered here) after the read:
        the join reads the store again, so that its answer has the stream's
        epoch and nothing is missed or sent twice.
        """
        stream = self.rooms.get(room)
        if stream is None:
            return False
        return bool(stream.epoch or stream.pending or stream.waiting.get(connection))

    def drain(self, room: str) -> None:
        """Deliver what waits in ``room``'s stream (after a member caught up)."""
        stream = self.rooms.get(room)
        if stream is not None and stream.epoch:
            self._drain(room, stream)

    def left(self, room: str, connection: WebSocketConnection, members_left: bool) -> None:
        """``connection`` left ``room``; the room's stream is forgotten once nobody is in it."""
        stream = self.rooms.get(room)
        if stream is None:
            return
        stream.waiting.pop(connection, None)
        stream.floor.pop(connection, None)
        if not members_left:
            self._cancel_gap(stream)
            del self.rooms[room]


def _frame(room: str, envelope: Envelope, connection: WebSocketConnection) -> bytes:
    """The frame of a stream's message for ``connection`` (wrapped, compressed, as it needs)."""
    return connection.message_frame(*_message(room, envelope, connection.wire))


def _message(room: str, envelope: Envelope, wire: bool) -> Tuple[int, bytes]:
    """A stream's message as is, or wrapped with its position for ``fws.v1``."""
    if not wire:
        return envelope.opcode, envelope.payload
    position = Position(envelope.epoch, envelope.offset)
    return OP_TEXT, stream_message(room, position, envelope.opcode, envelope.payload).encode()
