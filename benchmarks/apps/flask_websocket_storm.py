"""Flask-WebSocket server of the reconnect-storm benchmark (``benchmarks/reconnect_storm.py``).

* ``/ws/<room>`` joins ``s:<room>``, a room with history (the last 100
  messages), giving back what a reconnecting ``fws.v1`` client missed
  (``ws.join`` reads its ``fws_since``), then waits until the client leaves.
* ``/say?rooms=N&text=...`` broadcasts ``text`` to ``s:r0`` ... ``s:r<N-1>``
  from a plain view, and answers ``ok``.

The local hub keeps the history in a store that outlives the worker, so a
graceful reload (``kill -HUP`` of the master: every WebSocket closed with
1012) loses nothing. ``STORM_HUB_NAME`` names the hub (one per run);
``STORM_MAX_CONNECTIONS`` is the worker's WebSocket cap.
"""

from __future__ import annotations

import os

from flask import Flask, request

from flask_websocket import WebSocket, WebSocketConnection

app = Flask(__name__)
app.config["WEBSOCKET_HUB_URL"] = "local://"
app.config["WEBSOCKET_HUB_OPTIONS"] = {"name": os.environ.get("STORM_HUB_NAME", "storm")}
app.config["WEBSOCKET_HISTORY"] = {"s:*": {"size": 100}}
app.config["WEBSOCKET_MAX_CONNECTIONS"] = int(os.environ.get("STORM_MAX_CONNECTIONS", "20000"))
websocket = WebSocket(app)


@websocket.route("/ws/<room>")
def member(ws: WebSocketConnection, room: str) -> None:
    ws.join(f"s:{room}")
    for _ in ws:  # members send nothing; ends when the connection does
        pass


@app.get("/say")
def say() -> str:
    text = request.args["text"]
    for i in range(int(request.args["rooms"])):
        websocket.broadcast(text, room=f"s:r{i}")
    return "ok"
