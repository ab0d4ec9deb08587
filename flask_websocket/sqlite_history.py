"""History for the local hub: one SQLite database per deployment, shared by its workers.

Every worker of a deployment on a host appends to, and reads from, the same
database: ``<group>.sqlite3`` in a directory only the app's user may enter
(``$XDG_RUNTIME_DIR/flask-websocket``, else ``/dev/shm/flask-websocket-<uid>``:
memory, not disk). Appending to a room's stream is one transaction that
takes the next offset and writes the message, so two workers that publish
into one room at the same moment get consecutive offsets, in the order of
their transactions. The database outlives any worker (a crash, a deploy) and
dies with the host's memory; its epoch, chosen when it is created, says so.

SQLite is in the standard library, and does the one thing needed here: an
atomic "next offset and append" across processes, with readers that never
wait for the writer (write-ahead logging).
"""

from __future__ import annotations

import os
import sqlite3
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, List, Optional, Tuple

from .concurrency.blocking import system_lock
from .exceptions import ConfigurationError
from .history import Entry, HistoryStore, Limits, Position, new_epoch

__all__ = ["SqliteStore", "private_directory"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rooms (room TEXT PRIMARY KEY, last INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    room TEXT NOT NULL,
    seq INTEGER NOT NULL,
    opcode INTEGER NOT NULL,
    payload BLOB NOT NULL,
    time REAL NOT NULL,
    PRIMARY KEY (room, seq)
) WITHOUT ROWID;
"""


def private_directory(uid: Optional[int] = None) -> Path:
    """The directory for ``uid``'s databases (made if missing); refused if others may enter it."""
    uid = os.geteuid() if uid is None else uid
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and uid == os.geteuid() and os.path.isdir(runtime):
        directory = Path(runtime) / "flask-websocket"
    elif os.path.isdir("/dev/shm"):
        directory = Path("/dev/shm") / f"flask-websocket-{uid}"
    else:  # pragma: no cover - no shared memory file system
        directory = Path(tempfile.gettempdir()) / f"flask-websocket-{uid}"
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
        if os.geteuid() == 0 and uid != 0:
            os.chown(directory, uid, -1)
    except OSError as exc:
        raise ConfigurationError(f"cannot make the history directory {directory} ({exc})") from exc
    info = directory.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or info.st_mode & 0o077:
        raise ConfigurationError(
            f"the history directory {directory} must be a directory of uid {uid} that nobody "
            "else may enter (mode 0700): refusing to keep history there"
        )
    return directory


class SqliteStore(HistoryStore):
    """The streams of one deployment's rooms, in an SQLite database its workers share."""

    needs_system_thread = True

    def __init__(self, path: Path) -> None:
        self.path = path
        # One connection, used by one system thread at a time (a cooperative
        # lock, under gevent's patching, hangs two threads that want it at once).
        self._lock = system_lock()
        self._db: Optional[sqlite3.Connection] = None
        self._epoch = ""

    def _connect(self) -> sqlite3.Connection:
        db = self._db
        if db is not None:
            return db
        db = sqlite3.connect(
            str(self.path), timeout=5.0, isolation_level=None, check_same_thread=False
        )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=OFF")  # in memory (/dev/shm): nothing to sync
        db.executescript(_SCHEMA)
        db.execute("INSERT OR IGNORE INTO meta VALUES ('epoch', ?)", (new_epoch(),))
        (epoch,) = db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        self._epoch = str(epoch)
        os.chmod(self.path, 0o600)
        self._db = db
        return db

    def append(self, room: str, opcode: int, payload: bytes, limits: Limits) -> Position:
        now = time.time()
        with self._lock:
            db = self._connect()
            db.execute("BEGIN IMMEDIATE")  # the write lock first: offsets in commit order
            try:
                row = db.execute("SELECT last FROM rooms WHERE room = ?", (room,)).fetchone()
                offset = (row[0] if row else 0) + 1
                db.execute("INSERT OR REPLACE INTO rooms VALUES (?, ?)", (room, offset))
                db.execute(
                    "INSERT INTO messages VALUES (?, ?, ?, ?, ?)",
                    (room, offset, opcode, payload, now),
                )
                # Trimming walks the primary key from the oldest message: a
                # condition on time in the same statement would read every
                # message of the room on every append (O(size) per broadcast).
                db.execute(
                    "DELETE FROM messages WHERE room = ? AND seq <= ?",
                    (room, offset - limits.size),
                )
                if limits.ttl:
                    # The oldest message young enough to keep (this one at
                    # least); reads filter by time too, so a message a
                    # worker's clock stamped out of order is never served.
                    (kept,) = db.execute(
                        "SELECT seq FROM messages WHERE room = ? AND time >= ? "
                        "ORDER BY seq LIMIT 1",
                        (room, now - limits.ttl),
                    ).fetchone()
                    db.execute("DELETE FROM messages WHERE room = ? AND seq < ?", (room, kept))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return Position(self._epoch, offset)

    def read(self, room: str, after: int, limits: Limits) -> Tuple[str, int, List[Entry]]:
        oldest = time.time() - limits.ttl if limits.ttl else 0.0
        with self._lock:
            db = self._connect()
            db.execute("BEGIN")  # one snapshot: the last offset and the entries agree
            try:
                row = db.execute("SELECT last FROM rooms WHERE room = ?", (room,)).fetchone()
                rows: List[Any] = db.execute(
                    "SELECT seq, opcode, payload, time FROM messages "
                    "WHERE room = ? AND seq > ? AND time >= ? ORDER BY seq",
                    (room, after, oldest),
                ).fetchall()
            finally:
                db.execute("COMMIT")
            last = int(row[0]) if row else 0
            entries = [Entry(int(o), int(c), bytes(p), float(t)) for o, c, p, t in rows]
            return self._epoch, last, entries

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
