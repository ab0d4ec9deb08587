"""A room with history, and a client that resumes (docs/rooms.rst).

Rooms named ``news:*`` keep their last 100 messages for an hour. A client
that speaks ``fws.v1`` (the JavaScript client the extension serves,
``flask_websocket.client``) gets each message with its stream position and,
when it reconnects, every message it missed, in order, before newer ones.
"""

from flask import Flask

from flask_websocket import WebSocket

app = Flask(__name__)
app.config["WEBSOCKET_HISTORY"] = {"news:*": {"size": 100, "ttl": 3600}}
websocket = WebSocket(app)


@websocket.route("/news/<topic>")
def news(ws, topic):
    recovery = ws.join(f"news:{topic}")  # replays what a reconnecting client missed
    if recovery is not None and not recovery.recovered:
        ws.send("some news may be missing: reload the page")
    for message in ws:
        websocket.broadcast(message, room=f"news:{topic}")


@app.get("/news/<topic>/latest")
def latest(topic):
    """A plain view that renders the room's history."""
    return [item.message for item in websocket.history(f"news:{topic}")]
