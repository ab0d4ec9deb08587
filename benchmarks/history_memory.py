#!/usr/bin/env python3
"""Memory one room's history takes at its bound (``WEBSOCKET_HISTORY`` size).

For each bound (messages kept) and message size, one room is filled past
its bound (2 x size messages: trimming has run), then:

* ``memory``: the memory hub's store (``MemoryStore``, in the process):
  bytes the room's stream holds, measured with ``tracemalloc`` (the
  entries, their payloads and the deque), per message and in all;
* ``local``: the local hub's store (``SqliteStore``, an SQLite database the
  workers share, normally in ``/dev/shm``, so memory too): the size of the
  database file, of its write-ahead log and of its shared-memory index,
  after the fill and once more after a checkpoint.

Usage::

    python benchmarks/history_memory.py [--bounds 100,1000,10000] [--sizes 64,1024]

Prints a table and writes ``benchmarks/results/history-memory-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import tracemalloc
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.append(REPO)  # after PYTHONPATH: another copy of the code may go first

import benchlib as bl  # noqa: E402

from flask_websocket.history import Limits, MemoryStore  # noqa: E402
from flask_websocket.sqlite_history import SqliteStore  # noqa: E402

ROOM = "bench"
KB = 1024


def memory_store(bound: int, size: int) -> dict:
    limits = Limits(bound)
    payload_base = b"x" * (size - 8)
    store = MemoryStore()
    store.append("warm-up", 1, b"x", limits)  # the store's own structures, not the room's
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(2 * bound):
        store.append(ROOM, 1, payload_base + i.to_bytes(8, "big"), limits)  # distinct payloads
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    _, last, kept = store.read(ROOM, 0, limits)
    assert len(kept) == bound and last == 2 * bound, (len(kept), last)
    return {"bytes": held, "bytes_per_message": held / bound, "payload_bytes": bound * size}


def sqlite_store(bound: int, size: int, directory: Path) -> dict:
    limits = Limits(bound)
    path = directory / f"history-{bound}-{size}.sqlite3"
    store = SqliteStore(path)
    payload_base = b"x" * (size - 8)
    for i in range(2 * bound):
        store.append(ROOM, 1, payload_base + i.to_bytes(8, "big"), limits)
    _, last, kept = store.read(ROOM, 0, limits)
    assert len(kept) == bound and last == 2 * bound, (len(kept), last)

    def sizes() -> dict:
        out = {}
        for suffix, key in (("", "db"), ("-wal", "wal"), ("-shm", "shm")):
            p = Path(str(path) + suffix)
            out[key] = p.stat().st_size if p.exists() else 0
        return out

    after_fill = sizes()
    db = store._connect()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    after_checkpoint = sizes()
    (page_size,) = db.execute("PRAGMA page_size").fetchone()
    (free_pages,) = db.execute("PRAGMA freelist_count").fetchone()
    store.close()
    return {
        "after_fill": after_fill,
        "after_checkpoint": after_checkpoint,
        "db_bytes_per_message": after_checkpoint["db"] / bound,
        # pages freed by trimming, kept in the file for the next messages
        "free_bytes": free_pages * page_size,
        "payload_bytes": bound * size,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bounds", default="100,1000,10000", help="messages kept (comma list)")
    ap.add_argument("--sizes", default="64,1024", help="message sizes in bytes (comma list)")
    args = ap.parse_args(argv)
    bounds = [int(b) for b in args.bounds.split(",") if b]
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if any(not 1 <= b <= 100_000 for b in bounds) or any(not 8 <= s <= 1 << 20 for s in sizes):
        ap.error("bounds 1..100000, sizes 8..1048576")
    rows = []
    results = []
    with tempfile.TemporaryDirectory(prefix="history-memory-") as tmp:
        for size in sizes:
            for bound in bounds:
                mem = memory_store(bound, size)
                sql = sqlite_store(bound, size, Path(tmp))
                results.append({"bound": bound, "size": size, "memory": mem, "local": sql})
                fill, ckpt = sql["after_fill"], sql["after_checkpoint"]
                rows.append(
                    [
                        f"{bound:,}",
                        f"{size:,}",
                        f"{bound * size / KB:,.0f}",
                        f"{mem['bytes'] / KB:,.0f}",
                        f"{mem['bytes_per_message']:,.0f}",
                        f"{ckpt['db'] / KB:,.0f}",
                        f"{sql['free_bytes'] / KB:,.0f}",
                        f"{fill['wal'] / KB:,.0f}",
                        f"{fill['shm'] / KB:,.0f}",
                        f"{sql['db_bytes_per_message']:,.0f}",
                    ]
                )
    print("One room's history at its bound (2 x bound messages appended):")
    print(
        bl.format_table(
            [
                "kept",
                "msg B",
                "payload KiB",
                "memory hub KiB",
                "B/msg",
                "local db KiB",
                "free KiB",
                "wal KiB",
                "shm KiB",
                "db B/msg",
            ],
            rows,
            align="rrrrrrrrrr",
        )
    )
    print(
        "(memory hub: tracemalloc of the room's entries; local hub: the SQLite file after "
        "a checkpoint, of which free pages (trimmed, reused by later messages), its "
        "write-ahead log and index as the fill left them)"
    )
    path = bl.write_json(
        "history-memory", {"benchmark": "history-memory", "results": results}, bl.timestamp()
    )
    print(f"results written to {bl.relpath(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
