"""A Flask-SocketIO chat, moved to Flask-WebSocket (docs/migrating.rst).

Socket.IO's named events become JSON messages with a ``type``; its rooms,
``emit(..., to=room)`` and ``include_self=False`` become ``ws.join``,
``websocket.broadcast(..., room=...)`` and ``skip=ws``; ``request.sid``
becomes ``ws.id``.
"""

import json

from flask import Flask, request

from flask_websocket import WebSocket

app = Flask(__name__)
websocket = WebSocket(app)


def event(name, **data):
    """What Socket.IO's emit(name, data) sent: one JSON text message."""
    return json.dumps({"type": name, **data})


@websocket.route("/ws")
def chat(ws):
    # @socketio.on("connect"): the handler starts; request, session, g work.
    nick = request.args.get("nick", "anonymous")
    room = None
    for raw in ws:  # one message per emit() of the client
        message = json.loads(raw)
        if message["type"] == "join":  # join_room(room)
            room = message["room"]
            ws.join(room)
            websocket.broadcast(event("joined", nick=nick), room=room, skip=ws)
        elif message["type"] == "say" and room is not None:  # emit("said", ..., to=room)
            websocket.broadcast(event("said", nick=nick, text=message["text"]), room=room)
        elif message["type"] == "whoami":  # emit("you", ..., to=request.sid)
            ws.send(event("you", id=ws.id, nick=nick))
    # @socketio.on("disconnect"): the loop ends when the client leaves.
    if room is not None:
        websocket.broadcast(event("left", nick=nick), room=room, skip=ws)
