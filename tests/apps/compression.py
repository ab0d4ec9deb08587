"""A test app for permessage-deflate (served by real uWSGI).

Compression is on for every route (``WEBSOCKET_COMPRESSION``) except
``/plain``; ``FWS_CONTEXT_TAKEOVER=1`` lets clients that do not ask for
``server_no_context_takeover`` have context takeover (the server's
compressor per connection). The threshold is 64 bytes.

- ``/echo`` and ``/plain``: echo every message.
- ``/room/<room>``: joins ``room``, says ``ready``; ``pub:<text>``
  broadcasts ``<text>`` to the room (sender included); ``bin:<n>``
  broadcasts ``n`` bytes (0, 1, ..., 255, 0, ...) as a binary message.
"""

from __future__ import annotations

import os

from flask import Flask

from flask_websocket import WebSocket, WebSocketConnection

app = Flask(__name__)
app.config["WEBSOCKET_COMPRESSION"] = "permessage-deflate"
app.config["WEBSOCKET_COMPRESSION_THRESHOLD"] = 64
app.config["WEBSOCKET_HUB_URL"] = "memory://"
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


@websocket.route("/plain", compression=None)
def plain(ws: WebSocketConnection) -> None:
    for message in ws:
        ws.send(message)


@websocket.route("/room/<room>")
def member(ws: WebSocketConnection, room: str) -> None:
    ws.join(room)
    ws.send("ready")
    for message in ws:
        assert isinstance(message, str)
        command, _, argument = message.partition(":")
        if command == "pub":
            websocket.broadcast(argument, room=room)
        elif command == "bin":
            size = int(argument)
            websocket.broadcast((bytes(range(256)) * (size // 256 + 1))[:size], room=room)
