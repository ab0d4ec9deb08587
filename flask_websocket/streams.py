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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, Hashable, List, Optional, Set, Tuple

from .history import Entry, Position, Recovery
from .hubs.base import Envelope
from .protocol import OP_TEXT
from .wire import joined_message, stream_message

if TYPE_CHECKING:  # pragma: no cover
    from .concurrency.base import Backend, Timer
    from .connection import WebSocketConnection

__all__ = ["GAP_WAIT", "RoomStream", "Streams"]

logger = logging.getLogger("flask_websocket.rooms")

#: Seconds a gap in a room's offsets may last before it is filled from the store.
GAP_WAIT = 0.5


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


class Streams:
    """The streams of this process's rooms with history."""

    def __init__(
        self,
        members_of: Callable[[str], Set[WebSocketConnection]],
        offer: Callable[[WebSocketConnection, bytes], bool],
    ) -> None:
        self._members_of = members_of
        self._offer = offer
        self.rooms: Dict[str, RoomStream] = {}
        #: Set by the hub: reads the entries after an offset (a task that may wait).
        self.fill_gap: Optional[Callable[[str, int], None]] = None
        self.backend: Optional[Backend] = None

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
            logger.warning(
                "the history of room %r was lost (epoch %s, now %s); members are told",
                room,
                stream.epoch,
                envelope.epoch,
            )
            self._cancel_gap(stream)
            stream.epoch, stream.last, stream.pending = envelope.epoch, envelope.offset - 1, {}
        if envelope.offset <= stream.last or envelope.offset in stream.pending:
            return  # delivered already (it came by two paths)
        stream.pending[envelope.offset] = envelope
        self._drain(room, stream)

    def deliver_entries(self, room: str, epoch: str, entries: List[Entry]) -> None:
        """Entries read from the store to fill a gap: deliver those still missing, in order."""
        stream = self.rooms.get(room)
        if stream is None or stream.epoch != epoch:
            return
        for entry in entries:
            if entry.offset > stream.last and entry.offset not in stream.pending:
                stream.pending[entry.offset] = Envelope(
                    1, entry.opcode, entry.payload, room, epoch=epoch, offset=entry.offset
                )
        if stream.pending and min(stream.pending) > stream.last + 1:
            # The store no longer has what is missing: go on from what it has.
            logger.warning(
                "room %r: messages %d to %d are gone from its history; skipped",
                room,
                stream.last + 1,
                min(stream.pending) - 1,
            )
            stream.last = min(stream.pending) - 1
        self._drain(room, stream)

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
        frames: Dict[Hashable, bytes] = {}
        skip = envelope.skip
        for connection in list(self._members_of(room)):
            if skip and connection.assigned_id == skip:
                continue
            waiting = stream.waiting.get(connection)
            if waiting is not None:
                waiting.append(envelope)
                continue
            if stream.floor:
                floor = stream.floor.get(connection)
                if floor is not None:
                    if envelope.offset <= floor:
                        continue  # it had this one from the store
                    del stream.floor[connection]
            kind = connection.frame_kind  # None: compressed for it alone
            frame = frames.get(kind)
            if frame is None:
                frame = _frame(room, envelope, connection)
                if kind is not None:
                    frames[kind] = frame
            self._offer(connection, frame)

    # -- joins -----------------------------------------------------------------

    def start_catching_up(
        self, connection: WebSocketConnection, room: str, epoch: str, last: int
    ) -> None:
        """``connection`` joins ``room``: live messages for it wait until :meth:`caught_up`.

        ``epoch`` and ``last`` start the room's stream here if it is new.
        """
        stream = self.rooms.get(room)
        if stream is None:
            stream = self.rooms[room] = RoomStream(epoch, last)
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
            # New here (or the store started a new stream): the store's position
            # is where this process starts; what came early waits in pending.
            early = [e for e in stream.pending.values() if e.epoch == recovery.epoch]
            self._cancel_gap(stream)
            stream.epoch, stream.last = recovery.epoch, recovery.offset
            stream.pending = {e.offset: e for e in early if e.offset > recovery.offset}
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

