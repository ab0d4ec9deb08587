"""Flask-WebSocket broadcast (fan-out) server for the benchmarks.

Two routes:

* ``/sub`` - a subscriber: joins room ``"bench"``, sends one text message
  ``"joined <worker pid>"`` (so the client knows the join is done and which
  worker holds it), then waits in ``receive()`` until the peer leaves.
* ``/pub`` - the publisher: sends ``"ready <worker pid>"`` once, then every
  message it receives is broadcast to the room with
  ``websocket.broadcast(message, room="bench")`` and acknowledged with
  ``"done <seq> <time.monotonic_ns()>"`` once ``broadcast()`` returned.

The hub comes from the ``WEBSOCKET_HUB_URL`` environment variable
(``memory://`` if unset; ``local://``, ``redis://host:port/db``), and is
copied into the app's config of the same name. ``BENCH_HISTORY_SIZE=N``
gives the room a history of N messages (``WEBSOCKET_HISTORY``),
``BENCH_PING_INTERVAL`` sets ``WEBSOCKET_PING_INTERVAL`` (``none``: no
keepalive pings, as a raw uWSGI app sends none), and
``BENCH_HUB_NAME`` names the local hub's deployment (its history database),
and ``BENCH_FANOUT=raw-loop`` (or ``raw-loop-sorted``) replaces
``broadcast()`` with raw uWSGI's write loop (a diagnostic: :func:`_raw_loop`).

Run under uWSGI with gevent (``--gevent-early-monkey-patch`` for the redis
hub), from the repository root::

    WEBSOCKET_HUB_URL=memory:// uwsgi --master --need-app --die-on-term \\
        --gevent 2000 --http-socket 127.0.0.1:8000 \\
        --module benchmarks.apps.flask_websocket_broadcast:app
"""

from __future__ import annotations

import os
import time
from typing import List

from flask import Flask

from flask_websocket import WebSocket, WebSocketConnection

ROOM = "bench"

app = Flask(__name__)
app.config["WEBSOCKET_HUB_URL"] = os.environ.get("WEBSOCKET_HUB_URL") or "memory://"
if os.environ.get("BENCH_HISTORY_SIZE"):  # the room keeps history (broadcast.py's *-history)
    app.config["WEBSOCKET_HISTORY"] = {ROOM: {"size": int(os.environ["BENCH_HISTORY_SIZE"])}}
if os.environ.get("BENCH_PING_INTERVAL"):  # "none": no keepalive pings, as raw uWSGI
    interval = os.environ["BENCH_PING_INTERVAL"]
    app.config["WEBSOCKET_PING_INTERVAL"] = None if interval == "none" else float(interval)
if os.environ.get("BENCH_HUB_NAME"):  # the local hub's (and its history's) own name
    app.config["WEBSOCKET_HUB_OPTIONS"] = {"name": os.environ["BENCH_HUB_NAME"]}
websocket = WebSocket(app)


@websocket.route("/sub")
def sub(ws: WebSocketConnection) -> None:
    """Join the room, say so, then just wait (broadcasts arrive meanwhile)."""
    ws.join(ROOM)
    ws.send(f"joined {os.getpid()}")
    while True:
        ws.receive()  # subscribers send nothing; ends with ConnectionClosed


@websocket.route("/pub")
def pub(ws: WebSocketConnection) -> None:
    """Say which worker this is, then broadcast every received message to the room.

    After each broadcast, tell the publisher when ``broadcast()`` returned
    (``"done <first 8 characters of the message> <time.monotonic_ns()>"``):
    by then every member in this worker has the frame written to its socket
    or queued, and the hub has it for the other workers. The client (same
    machine, same clock) turns it into the server-side fan-out time, which
    excludes the time frames wait for the client to read them.
    """
    ws.send(f"ready {os.getpid()}")
    raw_loop = os.environ.get("BENCH_FANOUT", "").startswith("raw-loop")
    broadcast = _raw_loop if raw_loop else _broadcast
    while True:
        message = ws.receive()
        broadcast(message)  # type: ignore[arg-type]
        ws.send(f"done {message[:8]} {time.monotonic_ns()}")  # type: ignore[index]



def _broadcast(message: str) -> None:
    websocket.broadcast(message, room=ROOM)


#: The fds ``_raw_loop`` writes to, and the room's size when they were taken.
_fds: List[int] = []
_fds_of = -1


def _raw_loop(message: str) -> None:
    """A diagnostic (``BENCH_FANOUT=raw-loop``): raw uWSGI's write loop in this worker.

    The frame built here and written with ``os.write`` to each member's fd
    (private: ``_direct_fd``) in the order of the room's set of members,
    or in ascending order with ``BENCH_FANOUT=raw-loop-sorted``, as the raw
    app does; the list is taken again when the room's size changes. No
    queue: a short write loses the rest (the benchmark counts it).
    """
    global _fds, _fds_of
    members = websocket._state().hub.registry._rooms.get(ROOM, ())  # type: ignore[attr-defined]
    if len(members) != _fds_of:
        _fds = [c._direct_fd for c in members if c._direct_fd is not None]
        if os.environ.get("BENCH_FANOUT") == "raw-loop-sorted":
            _fds.sort()
        _fds_of = len(members)
    payload = message.encode()
    frame = bytes((0x81, len(payload))) + payload  # a text frame under 126 bytes
    write = os.write
    for fd in _fds:
        try:  # noqa: SIM105 (as the raw loop: contextlib.suppress costs a call per write)
            write(fd, frame)
        except BlockingIOError:
            pass
