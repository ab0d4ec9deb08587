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
``BENCH_HUB_NAME`` names the local hub's deployment (its history database).

Run under uWSGI with gevent (``--gevent-early-monkey-patch`` for the redis
hub), from the repository root::

    WEBSOCKET_HUB_URL=memory:// uwsgi --master --need-app --die-on-term \\
        --gevent 2000 --http-socket 127.0.0.1:8000 \\
        --module benchmarks.apps.flask_websocket_broadcast:app
"""

from __future__ import annotations

import os
import time

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
    while True:
        message = ws.receive()
        websocket.broadcast(message, room=ROOM)  # type: ignore[arg-type]
        ws.send(f"done {message[:8]} {time.monotonic_ns()}")  # type: ignore[index]
