"""History and recovery (tests/test_uwsgi_history.py).

``/h/<room>``: joins the room (with the position a reconnecting ``fws.v1``
client gives), then each text message from the client is a command:

- ``say:<text>``     broadcast ``<text>`` to the room;
- ``many:<n>:<tag>`` broadcast ``<tag>.<i>`` for i in 0..n-1 to the room;
- ``pid``            answered with the worker's pid;
- ``pub:<text>``     broadcast ``<text>`` to the room, answered ``ack:<text>``,
  or ``nak:<seconds>:<exception class>:<text>`` when the hub raised
  ``HubError`` (Redis down), ``<seconds>`` the time the broadcast took.

``/history/<room>`` lists the room's history as ``<offset> <text>`` lines;
``POST /say/<room>`` broadcasts the request's body to the room.
"""

from __future__ import annotations

import os
import time

from flask import Flask, request

from flask_websocket import HubError, WebSocket, WebSocketConnection

app = Flask(__name__)
app.config["WEBSOCKET_PING_INTERVAL"] = None
app.config["WEBSOCKET_HISTORY"] = {"*": {"size": 1000}}
app.config.from_prefixed_env("FWS")
websocket = WebSocket(app)


@websocket.route("/h/<room>")
def member(ws: WebSocketConnection, room: str) -> None:
    ws.join(room)
    for message in ws:
        command, _, argument = str(message).partition(":")
        if command == "say":
            websocket.broadcast(argument, room=room)
        elif command == "many":
            count, _, tag = argument.partition(":")
            for i in range(int(count)):  # bounded by the test's request
                websocket.broadcast(f"{tag}.{i}", room=room)
        elif command == "pid":
            ws.send(str(os.getpid()))
        elif command == "pub":
            started = time.monotonic()
            try:
                websocket.broadcast(argument, room=room)
            except HubError as exc:
                elapsed = time.monotonic() - started
                ws.send(f"nak:{elapsed:.3f}:{type(exc).__name__}:{argument}")
            else:
                ws.send(f"ack:{argument}")


@app.get("/history/<room>")
def history(room: str) -> str:
    return "\n".join(f"{item.position.offset} {item.message}" for item in websocket.history(room))


@app.post("/say/<room>")
def say(room: str) -> str:
    websocket.broadcast(request.get_data(as_text=True), room=room)
    return "ok"
