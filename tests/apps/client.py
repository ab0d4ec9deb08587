"""The JavaScript client's server side in its tests (tests/test_client_browser.py).

``/`` is an empty page that loads the client from the extension's URL; the
test drives it with ``page.evaluate``. ``/ws/<room>`` joins ``h:<room>``
(a room with a history of ``FWS_HISTORY_SIZE`` messages, 100 by default),
then each text message from the page is a command:

- ``say:<text>``   broadcast ``<text>`` to the room (into its stream);
- ``plain:<text>`` send ``<text>`` to this connection only (no position);
- ``bin:<text>``   send ``<text>``'s UTF-8 bytes as a binary message;
- ``close:<code>`` close the connection with ``code`` (and reason ``bye``).

``/say/<room>?text=...`` broadcasts from a plain view (the test's other
member); ``/history/<room>`` lists the room's history, one text a line.
"""

from __future__ import annotations

import os

from flask import Flask, render_template_string, request

from flask_websocket import WebSocket, WebSocketConnection

app = Flask(__name__)
app.config["WEBSOCKET_HISTORY"] = {"h:*": {"size": int(os.environ.get("FWS_HISTORY_SIZE", 100))}}
app.config.from_prefixed_env("FWS")
websocket = WebSocket(app)

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>client</title>
<script src="{{ url_for('flask_websocket.static', filename='client.js') }}"></script>
</head><body></body></html>
"""


@app.get("/")
def page() -> str:
    return render_template_string(PAGE)


@websocket.route("/ws/<room>")
def member(ws: WebSocketConnection, room: str) -> None:
    ws.join(f"h:{room}")
    for message in ws:
        command, _, argument = str(message).partition(":")
        if command == "say":
            websocket.broadcast(argument, room=f"h:{room}")
        elif command == "plain":
            ws.send(argument)
        elif command == "bin":
            ws.send(argument.encode())
        elif command == "close":
            ws.close(int(argument), "bye")
            return


@app.get("/say/<room>")
def say(room: str) -> str:
    websocket.broadcast(request.args["text"], room=f"h:{room}")
    return "ok"


@app.get("/history/<room>")
def history(room: str) -> str:
    return "\n".join(str(item.message) for item in websocket.history(f"h:{room}"))
