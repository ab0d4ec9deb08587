"""Rooms and broadcast (docs/rooms.rst); tests/test_docs_examples.py runs it on uWSGI."""

import click
from flask import Flask, request

from flask_websocket import WebSocket

app = Flask(__name__)
websocket = WebSocket(app)


@websocket.route("/chat/<room>")
def chat(ws, room):
    ws.join(room)
    for message in ws:
        websocket.broadcast(message, room=room, skip=ws)  # everyone else in the room


@app.post("/announce")
def announce():  # a plain view, in any worker
    websocket.broadcast(request.get_data(as_text=True))  # every connection
    return "sent"


@app.get("/rooms/<room>")
def room_members(room):
    return {"members": len(websocket.members(room))}  # across every worker


@app.cli.command("announce")
@click.argument("text")
def announce_command(text):
    """flask --app app announce TEXT: tell every connection, from a shell."""
    websocket.broadcast(text)
