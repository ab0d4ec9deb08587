"""The hub contract app: the same handlers under every hub and every concurrency model.

Started by tests/test_uwsgi_hub_contract.py with each model's uWSGI flags and
``FWS_HUB_URL`` (``memory://``, ``local://`` or a Redis URL). Nothing here
knows which model or hub runs it.

A member connects to ``/m`` and gets ``hello <id> <pid>``; then each text it
sends is a command:

- ``join:<room>`` / ``leave:<room>``  answered ``joined <room>`` / ``left <room>``
- ``all:<text>``                      broadcast to everyone
- ``room:<room>:<text>``              broadcast to a room
- ``skip:<room>:<text>``              broadcast to a room, skipping the sender
- ``to:<id>:<text>``                  send to one connection
- ``members:<room>``                  answered ``members <json list>``
- ``many:<room>:<n>``                 n broadcasts ``seq <i>`` to the room, then
                                      ``many done`` to the sender only
- ``echo:<text>``                     answered ``<text>`` (a marker)
- ``thread:<room>:<text>``            broadcast from a thread the app starts

``/m?user=<id>`` makes the connection one of that user's: the views
``/to-user/<id>?text=`` and ``/close-user/<id>`` reach all of them.
"""

from __future__ import annotations

import json
import os
import threading

import click
from flask import Flask, request

from flask_websocket import WebSocket, WebSocketConnection

app = Flask(__name__)
app.config["WEBSOCKET_PING_INTERVAL"] = None
app.config["WEBSOCKET_HUB_URL"] = os.environ.get("FWS_HUB_URL") or None
if os.environ.get("FWS_HUB_NAME"):
    app.config["WEBSOCKET_HUB_OPTIONS"] = {"name": os.environ["FWS_HUB_NAME"]}
websocket = WebSocket(app)


@websocket.route("/m")
def member(ws: WebSocketConnection) -> None:
    ws.send(f"hello {ws.id} {os.getpid()}")
    for message in ws:
        command, _, argument = str(message).partition(":")
        if command == "join":
            ws.join(argument)
            ws.send(f"joined {argument}")
        elif command == "leave":
            ws.leave(argument)
            ws.send(f"left {argument}")
        elif command == "all":
            websocket.broadcast(argument)
        elif command in ("room", "skip"):
            room, _, text = argument.partition(":")
            websocket.broadcast(text, room=room, skip=ws if command == "skip" else None)
        elif command == "to":
            target, _, text = argument.partition(":")
            websocket.send_to(target, text)
        elif command == "members":
            ws.send("members " + json.dumps(websocket.members(argument)))
        elif command == "many":
            room, _, count = argument.partition(":")
            for i in range(int(count)):  # bounded by the test's request
                websocket.broadcast(f"seq {i}", room=room)
            ws.send("many done")
        elif command == "echo":
            ws.send(argument)
        elif command == "thread":
            room, _, text = argument.partition(":")
            # A system thread of the app's own (a scheduler's, say): greenlets
            # where gevent patched threading, a real thread elsewhere.
            thread = threading.Thread(target=websocket.broadcast, args=(text, room))
            thread.start()


@websocket.user_id_loader
def user_from_query() -> object:
    """The user a connection belongs to: ``/m?user=<id>`` (a real app reads its session)."""
    return request.args.get("user") or None


@app.get("/to-user/<user>")
def to_user(user: str) -> str:
    websocket.send_to_user(user, request.args["text"])
    return "sent"


@app.get("/close-user/<user>")
def close_user(user: str) -> str:
    """As a logout view does: every connection of the user, every worker, closes."""
    websocket.close_user(user, 4001, "logged out")
    return "closed"


@app.get("/view")
def view() -> str:
    """Broadcast from a plain HTTP view; says which worker served it."""
    websocket.broadcast(request.args["text"], room=request.args.get("room") or None)
    return str(os.getpid())


@app.cli.command("shout")
@click.argument("text")
@click.option("--room", default=None)
def shout(text: str, room: str) -> None:
    """Broadcast from a flask CLI command (a process of its own)."""
    websocket.broadcast(text, room=room)
    click.echo("sent")
