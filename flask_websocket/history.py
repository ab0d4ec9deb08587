"""History per room: bounded, with a stream position on every message.

A room with history (``WEBSOCKET_HISTORY`` names which, and how much) is a
stream: each message broadcast to it gets a :class:`Position`, an *epoch*
(the identity of the stream) and an *offset* that grows by one per message
in the room. Every member, in every worker and on every host, sees the same
messages at the same positions, in that order. A client that lost its
connection comes back with the last position it saw, and gets every later
message once, in order, before any newer one; or is told, exactly, that
history no longer reaches back that far (or the epoch changed: the store
lost the stream), and reloads its state.

Where the stream lives depends on the hub (each is a :class:`HistoryStore`):

- ``memory://``: :class:`MemoryStore`, in the process (a new epoch when the
  process starts);
- ``local://``: :class:`~flask_websocket.sqlite_history.SqliteStore`, an
  SQLite database that every worker of the deployment on the host shares
  (one order per room, even when two workers publish at the same moment; it
  outlives worker restarts and deploys);
- ``redis://``: the redis hub's streams (one key per room, trimmed).

Rooms without history pay nothing: no position, no store.
"""

from __future__ import annotations

import abc
import fnmatch
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Deque, Dict, List, Mapping, Optional, Tuple, Union

__all__ = [
    "Entry",
    "HistoryItem",
    "HistoryPolicy",
    "HistoryStore",
    "Limits",
    "MemoryStore",
    "Position",
    "Recovery",
    "new_epoch",
]


@dataclass(frozen=True)
class Position:
    """Where a message is in its room's stream: the stream's epoch and the offset in it."""

    epoch: str
    offset: int


@dataclass(frozen=True)
class Limits:
    """How much of a room's stream is kept: at most ``size`` messages, none older than ``ttl`` s."""

    size: int
    ttl: Optional[float] = None


@dataclass(frozen=True)
class Entry:
    """One message of a room's history."""

    offset: int
    opcode: int
    payload: bytes
    time: float


@dataclass(frozen=True)
class HistoryItem:
    """A message of a room's history, as ``websocket.history(room)`` gives it."""

    position: Position
    #: ``str`` for text, ``bytes`` for binary.
    message: Union[str, bytes]


@dataclass(frozen=True)
class Recovery:
    """What a join with a position got: whether nothing was missed, and what was replayed.

    ``recovered`` is ``True`` only when every message after the position the
    client gave was still in the history (same epoch): then ``entries`` are
    exactly what it missed. Otherwise the client must reload its state;
    ``entries`` are what history still holds.
    """

    recovered: bool
    epoch: str
    #: The offset of the room's last message when the join completed.
    offset: int
    entries: Tuple[Entry, ...] = ()


def new_epoch() -> str:
    """A new stream identity: random, short, URL-safe."""
    return os.urandom(6).hex()


class HistoryPolicy:
    """Which rooms keep history, and how much: ``WEBSOCKET_HISTORY``.

    A mapping of room name patterns (``fnmatch``: ``"chat:*"``, ``"*"``) to
    limits (``{"size": 100, "ttl": 300}``); the first pattern that matches
    a room decides. Empty (the default): no room keeps history.
    """

    def __init__(self, config: Optional[Mapping[str, Any]]) -> None:
        self._rules: List[Tuple[str, Limits]] = []
        for pattern, limits in (config or {}).items():
            ttl = limits.get("ttl")
            self._rules.append(
                (str(pattern), Limits(int(limits["size"]), float(ttl) if ttl else None))
            )
        self._cache: Dict[str, Optional[Limits]] = {}

    def __bool__(self) -> bool:
        return bool(self._rules)

    def limits_for(self, room: str) -> Optional[Limits]:
        """The limits of ``room``, or ``None`` if it keeps no history."""
        try:
            return self._cache[room]
        except KeyError:
            pass
        found = next(
            (limits for pattern, limits in self._rules if fnmatch.fnmatchcase(room, pattern)), None
        )
        if len(self._cache) < 10000:  # bounded: room names come from clients
            self._cache[room] = found
        return found


class HistoryStore(abc.ABC):
    """Where the hub keeps the rooms' streams. Calls may block (run them off the loop)."""

    #: True when calls wait on I/O (SQLite, Redis): the hub runs them off the loop.
    blocking = True
    #: True when they block in C whatever gevent patched (SQLite): a system thread.
    needs_system_thread = False

    @abc.abstractmethod
    def append(self, room: str, opcode: int, payload: bytes, limits: Limits) -> Position:
        """Add a message to ``room``'s stream; its position (the next offset)."""

    @abc.abstractmethod
    def read(self, room: str, after: int, limits: Limits) -> Tuple[str, int, List[Entry]]:
        """``(epoch, last offset, entries after offset `after` still kept)``, oldest first."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release what the store holds open."""


class MemoryStore(HistoryStore):
    """Streams in this process only (the memory hub): lost, with a new epoch, on restart."""

    blocking = False

    def __init__(self) -> None:
        self.epoch = new_epoch()
        self._rooms: Dict[str, Tuple[int, Deque[Entry]]] = {}

    def append(self, room: str, opcode: int, payload: bytes, limits: Limits) -> Position:
        last, entries = self._rooms.get(room, (0, deque()))
        offset = last + 1
        entries.append(Entry(offset, opcode, payload, time.time()))
        while len(entries) > limits.size:
            entries.popleft()
        self._rooms[room] = (offset, entries)
        return Position(self.epoch, offset)

    def read(self, room: str, after: int, limits: Limits) -> Tuple[str, int, List[Entry]]:
        last, entries = self._rooms.get(room, (0, deque()))
        oldest = time.time() - limits.ttl if limits.ttl else None
        kept = [e for e in entries if e.offset > after and (oldest is None or e.time >= oldest)]
        return self.epoch, last, kept


def recovery(epoch: str, last: int, kept: List[Entry], since: Optional[Position]) -> Recovery:
    """What a join gets from what the store holds: exact when nothing is missing."""
    if since is None:
        return Recovery(True, epoch, last, ())
    if not since.epoch:  # joined before the room had a stream: all of this one is new to it
        since = Position(epoch, 0)
    if since.epoch != epoch or since.offset > last:
        return Recovery(False, epoch, last, tuple(kept))  # another stream: reload
    wanted = last - since.offset
    missed = tuple(e for e in kept if e.offset > since.offset)
    complete = len(missed) == wanted and (not missed or missed[0].offset == since.offset + 1)
    return Recovery(complete, epoch, last, missed)
