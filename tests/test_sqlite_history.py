"""The local hub's history store (SQLite), in-process: trimming and its cost."""

from __future__ import annotations

import time
from pathlib import Path

from flask_websocket.history import Limits
from flask_websocket.sqlite_history import SqliteStore


def _rows(store: SqliteStore, room: str) -> int:
    (count,) = (
        store._connect().execute("SELECT count(*) FROM messages WHERE room = ?", (room,)).fetchone()
    )
    return int(count)


def test_a_room_keeps_its_last_size_messages(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "h.sqlite3")
    limits = Limits(5)
    for i in range(12):
        store.append("r", 1, f"m{i}".encode(), limits)
    store.append("other", 1, b"x", limits)
    _, last, kept = store.read("r", 0, limits)
    assert last == 12
    expected = [(offset, f"m{offset - 1}".encode()) for offset in range(8, 13)]
    assert [(e.offset, e.payload) for e in kept] == expected
    assert _rows(store, "r") == 5 and _rows(store, "other") == 1
    store.close()


def test_messages_older_than_ttl_leave_the_file(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "h.sqlite3")
    limits = Limits(100, ttl=0.2)
    for _ in range(10):
        store.append("r", 1, b"old", limits)
    time.sleep(0.3)
    store.append("r", 1, b"new", limits)
    _, last, kept = store.read("r", 0, limits)
    assert last == 11 and [e.payload for e in kept] == [b"new"]
    assert _rows(store, "r") == 1
    store.close()


def _append_steps(store: SqliteStore, room: str, limits: Limits) -> int:
    """SQLite virtual machine steps (in hundreds) one append takes."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    db = store._connect()
    db.set_progress_handler(count, 100)
    try:
        store.append(room, 1, b"x" * 64, limits)
    finally:
        db.set_progress_handler(None, 0)
    return steps[0]


def test_an_append_costs_the_same_whatever_the_rooms_size(tmp_path: Path) -> None:
    # Trimming must not read the whole room on every broadcast (it did: a
    # condition on time beside the offset made SQLite scan every message).
    store = SqliteStore(tmp_path / "h.sqlite3")
    small, large = Limits(50, ttl=3600), Limits(5000, ttl=3600)
    for _ in range(60):
        store.append("small", 1, b"x" * 64, small)
    for _ in range(5010):
        store.append("large", 1, b"x" * 64, large)
    assert _append_steps(store, "large", large) <= 2 * _append_steps(store, "small", small) + 2
    store.close()
