"""What every hub shares: the envelope, room names, and the ``Hub`` contract.

A hub carries broadcasts between the processes that hold connections. Each
process has one :class:`~flask_websocket.rooms.RoomRegistry` (who is in which
room, here) and one hub. A broadcast is published once as an
:class:`Envelope`; every process that receives it frames the message once
and writes the same bytes to each local member.

Hooks a hub implements (see :class:`Hub`): :meth:`Hub._publish` sends an
envelope to the other processes, :meth:`Hub._start` begins listening for
theirs, :meth:`Hub._room_joined` / :meth:`Hub._room_left` follow which rooms
have local members (the redis hub subscribes per room),
:meth:`Hub._member_joined` / :meth:`Hub._member_left` follow each
connection's joins and leaves (the redis hub records presence in Redis), and
:meth:`Hub._remote_members` answers presence.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple

from ..exceptions import WebSocketError
from ..history import (
    Entry,
    HistoryPolicy,
    HistoryStore,
    Limits,
    MemoryStore,
    Position,
    Recovery,
    recovery,
)
from ..logs import RateLimitedLog

if TYPE_CHECKING:  # pragma: no cover
    from ..concurrency.base import Backend
    from ..rooms import RoomRegistry

__all__ = [
    "KIND_ALL",
    "KIND_DIRECT",
    "KIND_ROOM",
    "KIND_USER",
    "OP_CLOSE",
    "BroadcastTooLarge",
    "Envelope",
    "Hub",
    "HubError",
    "RateLimitedLog",
    "check_close_code",
    "check_room",
    "check_user_id",
    "close_payload",
    "new_node_id",
    "parse_close_payload",
]

logger = logging.getLogger("flask_websocket.hubs")

KIND_ALL = 0
KIND_ROOM = 1
KIND_DIRECT = 2
KIND_USER = 3
_KINDS = (KIND_ALL, KIND_ROOM, KIND_DIRECT, KIND_USER)

#: An envelope with this opcode closes its recipients instead of sending to
#: them; its payload is a close frame's: a 2-byte code and a UTF-8 reason.
OP_CLOSE = 0x8
_CLOSE_CODE = struct.Struct("!H")

#: Longest room name, in bytes of UTF-8.
MAX_ROOM_BYTES = 200

_VERSION = 1
_HEADER = struct.Struct("!BBBBBB")  # version, kind, opcode, len(target), len(skip), len(origin)
#: Version 2 adds a stream position (a room with history); the others stay
#: version 1, so that workers of the previous release (a rolling deploy) read them.
_VERSION_POSITION = 2
_POSITION = struct.Struct("!QB")  # offset, len(epoch)


class HubError(WebSocketError):
    """A hub could not deliver a broadcast to other processes (e.g. Redis is down).

    Local members of the room have received the message already; the message
    says which other processes did not get it (the local hub names each).
    """


class BroadcastTooLarge(WebSocketError, ValueError):
    """The message is larger than the hub can carry (``max_broadcast_size``)."""


#: An offset past any real one: read a stream's epoch and last offset, no entries.
_NOTHING = 2**62
#: Reading a room's stream again after an outage: attempts, and the first wait between them.
STREAM_CHECK_ATTEMPTS = 8
STREAM_CHECK_RETRY = 0.2


def check_room(room: Any) -> str:
    """Return ``room`` if it is a valid room name, else raise with the rule broken."""
    if not isinstance(room, str):
        raise TypeError(f"a room name is a str, not {type(room).__name__}")
    if not room:
        raise ValueError("a room name cannot be empty")
    if len(room.encode()) > MAX_ROOM_BYTES:
        raise ValueError(f"room name too long: at most {MAX_ROOM_BYTES} bytes of UTF-8")
    if any(ord(char) < 32 or ord(char) == 127 for char in room):
        raise ValueError(f"room name {room!r} contains control characters")
    return room


def close_payload(code: int, reason: str) -> bytes:
    """The payload of an :data:`OP_CLOSE` envelope (the reason cut to fit a close frame)."""
    encoded = reason.encode()[:123]
    return _CLOSE_CODE.pack(code) + encoded.decode(errors="ignore").encode()


def check_close_code(code: Any) -> int:
    """``code`` if a server may close with it (1000, 1001, 1008, 1011-1013, 3000-4999)."""
    if isinstance(code, bool) or not isinstance(code, int):
        raise TypeError(f"a close code is an int, not {type(code).__name__}")
    if not (3000 <= code <= 4999 or code in (1000, 1001, 1008, 1011, 1012, 1013)):
        raise ValueError(f"close code {code}: use 1000, 1001, 1008, 1011-1013 or 3000-4999")
    return code


def parse_close_payload(payload: bytes) -> Tuple[int, str]:
    """The code and reason of an :data:`OP_CLOSE` envelope; ``ValueError`` if malformed."""
    if len(payload) < _CLOSE_CODE.size:
        raise ValueError("close envelope without a code")
    (code,) = _CLOSE_CODE.unpack_from(payload)
    return check_close_code(code), payload[_CLOSE_CODE.size :].decode()


def check_user_id(user_id: Any) -> str:
    """``user_id`` as the string the hubs carry (a ``str`` or an ``int``, 1 to 200 bytes)."""
    if isinstance(user_id, bool) or not isinstance(user_id, (str, int)):
        raise TypeError(f"a user id is a str or an int, not {type(user_id).__name__}")
    text = str(user_id)
    if not text or len(text.encode()) > MAX_ROOM_BYTES:
        raise ValueError(f"a user id is 1 to {MAX_ROOM_BYTES} bytes of UTF-8")
    return text


def new_node_id() -> str:
    """A random id for one process's registry: the prefix of its connection ids."""
    return os.urandom(6).hex()


@dataclass(frozen=True)
class Envelope:
    """A broadcast in transit between processes.

    ``kind`` says who receives it: everyone (``KIND_ALL``), one room
    (``KIND_ROOM``, ``target`` is the room), one connection (``KIND_DIRECT``,
    ``target`` is its id) or every connection of one user (``KIND_USER``,
    ``target`` is the user id). ``opcode`` is text (1), binary (2), or
    :data:`OP_CLOSE`: close the recipients (``payload`` from
    :func:`close_payload`). ``skip`` is a connection id
    that must not receive it. ``origin`` is the node id of the sender's
    process (it has delivered locally already).
    """

    kind: int
    opcode: int
    payload: bytes
    target: str = ""
    skip: str = ""
    origin: str = ""
    #: The message's place in its room's stream (rooms with history), else "" and 0.
    epoch: str = ""
    offset: int = 0

    def encode(self) -> bytes:
        """The envelope as bytes, for sockets and Redis."""
        target, skip, origin = self.target.encode(), self.skip.encode(), self.origin.encode()
        lengths = (len(target), len(skip), len(origin))
        if not self.offset:
            header = _HEADER.pack(_VERSION, self.kind, self.opcode, *lengths)
            return b"".join((header, target, skip, origin, self.payload))
        epoch = self.epoch.encode()
        header = _HEADER.pack(_VERSION_POSITION, self.kind, self.opcode, *lengths)
        position = _POSITION.pack(self.offset, len(epoch))
        return b"".join((header, position, epoch, target, skip, origin, self.payload))

    @classmethod
    def decode(cls, data: bytes) -> Envelope:
        """Parse :meth:`encode`'s output; ``ValueError`` if it is not one."""
        if len(data) < _HEADER.size:
            raise ValueError("envelope too short")
        version, kind, opcode, target_len, skip_len, origin_len = _HEADER.unpack_from(data)
        if version not in (_VERSION, _VERSION_POSITION) or kind not in _KINDS:
            raise ValueError(f"unknown envelope version {version} or kind {kind}")
        if opcode not in (0x1, 0x2, OP_CLOSE):
            raise ValueError(f"envelope with opcode {opcode}")
        position = _HEADER.size
        offset, epoch = 0, ""
        if version == _VERSION_POSITION:
            if len(data) < position + _POSITION.size:
                raise ValueError("truncated envelope")
            offset, epoch_len = _POSITION.unpack_from(data, position)
            position += _POSITION.size
            epoch = data[position : position + epoch_len].decode()
            position += epoch_len
            if not offset or not epoch:
                raise ValueError("envelope with an empty position")
        fields = []
        for length in (target_len, skip_len, origin_len):
            fields.append(data[position : position + length].decode())
            position += length
        if position > len(data):
            raise ValueError("truncated envelope")
        target, skip, origin = fields
        return cls(kind, opcode, bytes(data[position:]), target, skip, origin, epoch, offset)


class Hub(abc.ABC):
    """Carries broadcasts and presence between the processes of one app.

    The registry delivers to local connections; the hub reaches the others.
    Subclasses implement the hooks; the public methods are the same for all.
    """

    #: URL scheme (``memory``, ``local``, ``redis``).
    scheme: str = ""
    #: Largest payload this hub carries, in bytes (``None``: no limit of its own).
    max_payload: Optional[int] = None

    def __init__(
        self,
        registry: RoomRegistry,
        options: Optional[Mapping[str, Any]] = None,
        backend: Optional[Backend] = None,
    ) -> None:
        self.registry = registry
        self.options: Dict[str, Any] = dict(options or {})
        if backend is None:
            from ..concurrency import backend_for_server

            backend = backend_for_server()
        #: The concurrency backend the hub's listeners and waits run on.
        self.backend: Backend = backend
        self._started = False
        self._malformed_log = RateLimitedLog(logger)
        #: Which rooms keep history (``WEBSOCKET_HISTORY``); set by the extension.
        self.history = HistoryPolicy(None)
        self._history_store: Optional[HistoryStore] = None
        registry.streams.backend = self.backend
        registry.streams.fill_gap = self._fill_gap

    # -- public ------------------------------------------------------------

    def start(self) -> None:
        """Begin listening for other processes' broadcasts (idempotent)."""
        if not self._started:
            with self.backend.guarded():
                if self._started:
                    return
                self._started = True
                try:
                    self._start()
                except BaseException:
                    self._started = False  # a later call tries again
                    raise

    def stop(self) -> None:
        """Stop listening and release sockets and connections (idempotent)."""
        if self._started:
            with self.backend.guarded():
                if self._started:
                    self._started = False
                    self._stop()

    def publish(self, envelope: Envelope) -> None:
        """Deliver ``envelope`` here, then hand it to the other processes.

        Raises:
            BroadcastTooLarge: the payload is over this hub's limit.
            HubError: the other processes could not be reached (local
                members got the message).
        """
        if self.max_payload is not None and len(envelope.payload) > self.max_payload:
            raise BroadcastTooLarge(
                f"a {len(envelope.payload)}-byte broadcast is over the {self.scheme} hub's "
                f"limit of {self.max_payload} bytes"
            )
        self.start()
        limits = None
        if envelope.kind == KIND_ROOM and envelope.opcode != OP_CLOSE and self.history:
            limits = self.history.limits_for(envelope.target)
        if limits is not None:
            # A room with history: the store gives the message its position,
            # and this process delivers it in offset order with the others.
            positioned = self._publish_to_stream(envelope, limits)
            self.registry.deliver(positioned)
            return
        self.registry.deliver(envelope)
        self._publish(envelope)

    # -- history ---------------------------------------------------------------

    def history_store(self) -> HistoryStore:
        """Where this hub keeps the rooms' streams (made on first use)."""
        store = self._history_store
        if store is None:
            store = self._history_store = self._make_history_store()
        return store

    def _make_history_store(self) -> HistoryStore:
        """The store for this hub's kind (the memory hub: this process only)."""
        return MemoryStore()

    def _store_call(self, function: Any, *args: Any) -> Any:
        """Call the store: in a thread when it blocks (SQLite, Redis), where the caller may wait."""
        store = self.history_store()
        if not store.blocking or self.backend.in_event_loop():
            return function(*args)
        if store.needs_system_thread:
            return self.backend.run_in_thread(function, *args)
        return self.backend.run_blocking(function, *args)

    def _publish_to_stream(self, envelope: Envelope, limits: Limits) -> Envelope:
        """Append ``envelope`` to its room's stream, hand it to the others; it, positioned."""
        store = self.history_store()
        position = self._store_call(
            store.append, envelope.target, envelope.opcode, envelope.payload, limits
        )
        positioned = dataclasses.replace(envelope, epoch=position.epoch, offset=position.offset)
        self._publish(positioned)
        return positioned

    def recover(self, room: str, since: Optional[Position], limits: Limits) -> Recovery:
        """What a member that joins ``room`` with ``since`` gets: the store's answer."""
        store = self.history_store()
        after = since.offset if since is not None else _NOTHING
        epoch, last, kept = self._store_call(store.read, room, after, limits)
        if since is not None and since.epoch != epoch:  # another stream: all it holds
            epoch, last, kept = self._store_call(store.read, room, 0, limits)
        return recovery(epoch, last, kept, since)

    def read_history(self, room: str) -> Tuple[str, int, List[Entry]]:
        """``(epoch, last offset, entries)`` of ``room``'s history (empty without any)."""
        limits = self.history.limits_for(room)
        if limits is None:
            return "", 0, []
        self.start()
        result: Tuple[str, int, List[Entry]] = self._store_call(
            self.history_store().read, room, 0, limits
        )
        return result

    def _fill_gap(self, room: str, after: int) -> None:
        """A gap in ``room``'s offsets lasted: read what follows ``after`` from the store."""
        limits = self.history.limits_for(room)
        if limits is None:
            return

        def task() -> None:
            try:
                epoch, last, kept = self._store_call(self.history_store().read, room, after, limits)
            except Exception as exc:  # the store is away: the next gap tries again
                logger.warning("could not read the history of %r to fill a gap (%s)", room, exc)
                return
            with self.backend.guarded():
                self.registry.streams.deliver_entries(room, epoch, kept, last)

        self.backend.spawn(task)

    def _check_streams(self) -> None:
        """In the event loop: this process hears the others again; read each unsure stream.

        What was published into a room with history while the hub could not
        hear it reaches the room's members here, in order (or they are told
        it cannot: :meth:`~flask_websocket.streams.Streams.checked`), even if
        nothing is published after it.
        """
        for room, after in self.registry.streams.to_check():
            limits = self.history.limits_for(room)
            if limits is not None:
                self.backend.spawn(self._check_stream, room, after, limits)

    def _check_stream(self, room: str, after: int, limits: Limits) -> None:
        """A task: read ``room``'s stream after ``after``, retrying while the store fails."""
        delay = STREAM_CHECK_RETRY
        for attempt in range(STREAM_CHECK_ATTEMPTS):  # bounded: about 20 s in all
            try:
                epoch, last, kept = self._store_call(self.history_store().read, room, after, limits)
            except Exception as exc:
                if attempt + 1 == STREAM_CHECK_ATTEMPTS:
                    logger.warning("could not read the history of %r again (%s)", room, exc)
                    with self.backend.guarded():  # cannot tell what was missed: say so
                        self.registry.streams.checked_failed(room)
                    return
                self.backend.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            with self.backend.guarded():
                self.registry.streams.checked(room, epoch, last, kept)
            return

    def members(self, room: str) -> List[str]:
        """Ids of the connections in ``room`` in every process, sorted."""
        check_room(room)
        self.start()
        local = set(self.registry.local_members(room))
        return sorted(local.union(self._remote_members(room)))

    def receive(self, data: bytes) -> None:
        """Deliver an envelope that came from another process (for ``_start``'s listener)."""
        try:
            envelope = Envelope.decode(data)
        except (ValueError, UnicodeDecodeError) as exc:
            self._malformed_log.warning(
                "envelope", "%s hub: dropped a malformed message (%s)", self.scheme, exc
            )
            return
        if envelope.origin == self.registry.node_id:
            return  # delivered locally when it was published
        self.registry.deliver(envelope)

    # -- hooks ---------------------------------------------------------------

    @abc.abstractmethod
    def _start(self) -> None:
        """Start listening (spawn the listener task)."""

    @abc.abstractmethod
    def _stop(self) -> None:
        """Stop listening."""

    @abc.abstractmethod
    def _publish(self, envelope: Envelope) -> None:
        """Send ``envelope`` to every other process; raise :class:`HubError` if not."""

    def _room_joined(self, room: str) -> None:  # noqa: B027 - optional hook
        """The first local connection joined ``room``."""

    def _room_left(self, room: str) -> None:  # noqa: B027 - optional hook
        """The last local connection left ``room`` (may run in the event loop: no waiting)."""

    def _member_joined(self, room: str, connection_id: str) -> None:  # noqa: B027 - optional hook
        """A local connection joined ``room`` (called for every join, after ``_room_joined``)."""

    def _member_left(self, room: str, connection_id: str) -> None:  # noqa: B027 - optional hook
        """A local connection left ``room``, or closed while in it.

        May be called from the event loop (a connection torn down by a timer
        or a lost socket): it must not wait for I/O.
        """

    @abc.abstractmethod
    def _remote_members(self, room: str) -> List[str]:
        """Ids of the members of ``room`` in the other processes."""
