"""An app for reloads and shutdowns (tests/test_uwsgi_drain.py).

``/ws/<room>`` joins the room, says ``hello <id> <pid>``, echoes until the
connection ends, then logs ``cleanup <id>`` (the handler's own clean-up,
which must run on a reload too). ``/`` answers the worker's pid.
"""

from __future__ import annotations

import os
import sys

from flask import Flask

from flask_websocket import WebSocket, WebSocketConnection

app = Flask(__name__)
app.config["WEBSOCKET_PING_INTERVAL"] = None
app.config.from_prefixed_env("FWS")
websocket = WebSocket(app)


@websocket.route("/ws/<room>")
def member(ws: WebSocketConnection, room: str) -> None:
    ws.join(room)
    ws.send(f"hello {ws.id} {os.getpid()}")
    try:
        for message in ws:
            ws.send(message)
    finally:
        print(f"cleanup {ws.id}", file=sys.stderr, flush=True)


@app.get("/")
def index() -> str:
    return str(os.getpid())


@app.get("/members/<room>")
def members(room: str) -> str:
    return " ".join(websocket.members(room))
