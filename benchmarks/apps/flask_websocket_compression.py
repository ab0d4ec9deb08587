"""Flask-WebSocket with or without permessage-deflate, for ``benchmarks/compression.py``.

``FWS_COMPRESSION=permessage-deflate`` turns compression on (off when unset);
``FWS_CONTEXT_TAKEOVER=1`` lets clients keep context takeover both ways
(``server_no_context_takeover`` and ``client_no_context_takeover`` off).

* ``/echo`` - every message back.
* ``/sub`` - joins room ``"bench"``, sends ``"joined"``, then waits.
* ``/pub`` - each message received is broadcast to the room, then
  acknowledged with ``"done"``.
"""

from __future__ import annotations

import os

from flask import Flask

from flask_websocket import WebSocket, WebSocketConnection

app = Flask(__name__)
app.config["WEBSOCKET_HUB_URL"] = "memory://"
app.config["WEBSOCKET_PING_INTERVAL"] = None  # nothing but the measured messages
app.config["WEBSOCKET_COMPRESSION"] = os.environ.get("FWS_COMPRESSION") or None
if os.environ.get("FWS_CONTEXT_TAKEOVER") == "1":
    app.config["WEBSOCKET_COMPRESSION_OPTIONS"] = {
        "server_no_context_takeover": False,
        "client_no_context_takeover": False,
    }
websocket = WebSocket(app)


@websocket.route("/echo")
def echo(ws: WebSocketConnection) -> None:
    for message in ws:
        ws.send(message)


@websocket.route("/sub")
def sub(ws: WebSocketConnection) -> None:
    ws.join("bench")
    ws.send("joined")
    for _ in ws:
        pass


@websocket.route("/pub")
def pub(ws: WebSocketConnection) -> None:
    for message in ws:
        websocket.broadcast(message, room="bench")
        ws.send("done")
