"""Who is connected, and in which rooms, in this process.

One :class:`RoomRegistry` per process (per app). Connections add themselves
when they are accepted and remove themselves when they close, however they
close, leaving all their rooms. :meth:`RoomRegistry.deliver` is the local end
of every broadcast: it frames the message once and offers the same bytes to
each member, never waiting on any of them.
"""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Set

from .fanout import Group, group_members, offer_to_groups
from .history import Position, Recovery
from .hubs.base import (
    KIND_DIRECT,
    KIND_ROOM,
    KIND_USER,
    OP_CLOSE,
    Envelope,
    check_room,
    new_node_id,
    parse_close_payload,
)
from .protocol import OP_TEXT
from .streams import Streams
from .wire import plain_message

if TYPE_CHECKING:  # pragma: no cover
    from .connection import WebSocketConnection
    from .hubs.base import Hub

__all__ = ["RoomRegistry"]

logger = logging.getLogger("flask_websocket.rooms")


class RoomRegistry:
    """The connections of this process and their rooms."""

    def __init__(self, node_id: Optional[str] = None) -> None:
        #: Prefix of this process's connection ids: unique across the cluster.
        self.node_id = node_id or new_node_id()
        self._ids = itertools.count(1)
        #: Every open connection of this process.
        self.connections: Set[WebSocketConnection] = set()
        self._by_id: Dict[str, WebSocketConnection] = {}
        self._rooms: Dict[str, Set[WebSocketConnection]] = {}
        # Each room's members grouped for a broadcast (fanout.py): made on a
        # broadcast, dropped when the room's membership or a member's direct
        # fd changes (regroup).
        self._groups: Dict[str, List[Group]] = {}
        self._by_user: Dict[str, Set[WebSocketConnection]] = {}
        #: The hub told when a room gets its first or loses its last member here.
        self.hub: Optional[Hub] = None
        #: Rooms with history: their streams, delivered in order.
        self.streams = Streams(
            lambda room: self._rooms.get(room, set()), self._groups_of, self._by_id.get
        )

    def new_id(self, connection: WebSocketConnection) -> str:
        """Give ``connection`` an id (``<node>.<n>``) and index it by that id."""
        connection_id = f"{self.node_id}.{next(self._ids):x}"
        self._by_id[connection_id] = connection
        return connection_id

    def add(self, connection: WebSocketConnection) -> None:
        """Register an accepted connection (and index it by its user, if it has one)."""
        self.connections.add(connection)
        user_id = connection.user_id
        if user_id is not None:
            self._by_user.setdefault(user_id, set()).add(connection)

    def remove(self, connection: WebSocketConnection) -> None:
        """Forget a closed connection and take it out of all its rooms."""
        self.connections.discard(connection)
        for room in connection.rooms:
            self.leave(connection, room)
        connection_id = connection.assigned_id
        if connection_id is not None:
            self._by_id.pop(connection_id, None)
        user_id = connection.user_id
        if user_id is not None:
            same_user = self._by_user.get(user_id)
            if same_user is not None:
                same_user.discard(connection)
                if not same_user:
                    del self._by_user[user_id]

    def join(
        self, connection: WebSocketConnection, room: str, since: Optional[Position] = None
    ) -> Optional[Recovery]:
        """Put ``connection`` in ``room`` (validated).

        In a room with history (the hub's ``WEBSOCKET_HISTORY``), the
        connection first catches up: it gets the join's answer (``fws.v1``
        connections), every message after ``since`` that history still
        holds, in order, then live messages; the :class:`Recovery` says
        whether that was all it missed. ``None`` for a room without history.
        """
        check_room(room)
        members = self._rooms.get(room)
        new_room = members is None
        if members is None:
            members = self._rooms[room] = set()
        if connection in members:
            return None
        hub = self.hub
        limits = hub.history.limits_for(room) if hub is not None else None
        if limits is not None:
            self.streams.start_catching_up(connection, room, "", 0)  # live ones wait from now
        members.add(connection)  # before the hooks: they may wait (redis: SUBSCRIBE)
        self._groups.pop(room, None)
        if hub is not None:
            if new_room:
                hub._room_joined(room)
            hub._member_joined(room, connection.id)
            if connection not in self.connections:
                # Closed while a hook waited: remove() did not see this room yet.
                self.leave(connection, room)
                return None
        if hub is None or limits is None:
            return None
        recovery = hub.recover(room, since, limits)  # reads the store: may wait
        if not recovery.epoch and self.streams.started_meanwhile(connection, room):
            # The room's first message was published while the store was read:
            # once more, so that the answer has its epoch (the stream exists now).
            recovery = hub.recover(room, since, limits)
        try:
            for opcode, payload in self.streams.caught_up(connection, room, recovery):
                connection.send_frame(connection.message_frame(opcode, payload))
        finally:
            self.streams.drain(room)  # what came early, to everyone, after the catch-up
        return recovery

    def leave(self, connection: WebSocketConnection, room: str) -> None:
        """Take ``connection`` out of ``room`` (no-op if it was not in it)."""
        members = self._rooms.get(room)
        if members is None or connection not in members:
            return
        members.discard(connection)
        self._groups.pop(room, None)
        if self.streams.rooms:
            self.streams.left(room, connection, members_left=bool(members))
        hub = self.hub
        if not members:
            del self._rooms[room]
            if hub is not None:
                hub._room_left(room)
        if hub is not None and connection.assigned_id is not None:
            hub._member_left(room, connection.assigned_id)

    def rooms(self) -> List[str]:
        """Rooms with at least one member in this process."""
        return list(self._rooms)

    def local_members(self, room: str) -> List[str]:
        """Ids of this process's members of ``room``."""
        return [connection.id for connection in self._rooms.get(room, ())]

    def deliver(self, envelope: Envelope) -> int:
        """Offer the envelope's message to its local recipients (or close them); how many.

        A message of a room's stream (with a position) goes through
        :attr:`streams`, which delivers in order (and counts nothing here).
        """
        if envelope.offset:
            self.streams.deliver(envelope)
            return 0
        if envelope.opcode == OP_CLOSE:
            return self._close(envelope)
        skip = envelope.skip
        skipped = self._by_id.get(skip) if skip else None
        if envelope.kind == KIND_ROOM:
            if envelope.target not in self._rooms:
                return 0
            groups = self._groups_of(envelope.target)
        else:
            recipients = self._recipients(envelope)
            if not recipients:
                return 0
            groups = group_members(recipients)
        return offer_to_groups(groups, lambda connection: _frame(envelope, connection), skipped)

    def _recipients(self, envelope: Envelope) -> List[WebSocketConnection]:
        if envelope.kind == KIND_DIRECT:
            target = self._by_id.get(envelope.target)
            return [target] if target is not None else []
        if envelope.kind == KIND_ROOM:
            return list(self._rooms.get(envelope.target, ()))
        if envelope.kind == KIND_USER:
            return list(self._by_user.get(envelope.target, ()))
        return list(self.connections)

    def _close(self, envelope: Envelope) -> int:
        """A close message (``close_room``, ``close_user``): close each recipient."""
        recipients = self._recipients(envelope)
        code, reason = parse_close_payload(envelope.payload)
        skip = envelope.skip
        for connection in recipients:
            if not (skip and connection.assigned_id == skip):
                connection.close_nowait(code, reason)
        return len(recipients)

    def _groups_of(self, room: str) -> List[Group]:
        """The members of ``room`` grouped for a broadcast (kept until :meth:`regroup`)."""
        groups = self._groups.get(room)
        if groups is None:
            groups = self._groups[room] = group_members(self._rooms.get(room, ()), room)
        return groups

    def regroup(self, rooms: Iterable[str]) -> None:
        """A member of ``rooms`` changed how it takes frames: group those rooms anew."""
        for room in rooms:
            self._groups.pop(room, None)


def _frame(envelope: Envelope, connection: WebSocketConnection) -> bytes:
    """The frame of a message outside any stream: as is, or wrapped for ``fws.v1``."""
    if not connection.wire:
        return connection.message_frame(envelope.opcode, envelope.payload)
    text = plain_message(envelope.opcode, envelope.payload)
    return connection.message_frame(OP_TEXT, text.encode())
