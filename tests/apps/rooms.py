"""A test app for rooms and broadcast across workers (served by real uWSGI).

Commands a client sends on ``/ws/<room>`` (after the server's ``id:...``):

- ``all:<text>``      broadcast to every connection
- ``room:<text>``     broadcast to this room, skipping the sender
- ``to:<id>:<text>``  send to one connection
- ``members``         reply with the room's members (JSON list)
- ``burst:<n>:<size>`` broadcast n messages of size bytes to the room, then
  reply ``burst done`` (the broadcasts never wait for slow members)
- ``stream:<n>:<size>:<rate>`` broadcast n messages of size bytes to the
  room at ``rate`` bytes a second (paced), then reply ``stream done``
- ``try:<text>``      broadcast to this room, skipping the sender, and reply
  ``sent:<text>``, or ``hub-error:<text>`` if the hub raised HubError (the
  publisher's view of a hub outage: the handler catches it and goes on)
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time

import click
import gevent
from flask import Flask, request

from flask_websocket import HubError, WebSocket, WebSocketConnection

app = Flask(__name__)
if os.environ.get("FWS_HUB_URL"):
    app.config["WEBSOCKET_HUB_URL"] = os.environ["FWS_HUB_URL"]
if os.environ.get("FWS_SEND_QUEUE_SIZE"):
    app.config["WEBSOCKET_SEND_QUEUE_SIZE"] = int(os.environ["FWS_SEND_QUEUE_SIZE"])
if os.environ.get("FWS_CLOSE_TIMEOUT"):
    app.config["WEBSOCKET_CLOSE_TIMEOUT"] = float(os.environ["FWS_CLOSE_TIMEOUT"])
if os.environ.get("FWS_OVERFLOW"):
    app.config["WEBSOCKET_SEND_QUEUE_OVERFLOW"] = os.environ["FWS_OVERFLOW"]
if os.environ.get("FWS_HUB_NAME"):  # else the default: this deployment's own name
    app.config["WEBSOCKET_HUB_OPTIONS"] = {"name": os.environ["FWS_HUB_NAME"]}
if os.environ.get("FWS_SECRET_KEY"):
    app.config["SECRET_KEY"] = os.environ["FWS_SECRET_KEY"]
websocket = WebSocket(app)


@websocket.route("/ws/<room>")
def member(ws: WebSocketConnection, room: str) -> None:
    ws.join(room)
    ws.send(f"id:{ws.id}:pid:{os.getpid()}")
    for message in ws:
        assert isinstance(message, str)
        command, _, argument = message.partition(":")
        if command == "all":
            websocket.broadcast(argument)
        elif command == "room":
            websocket.broadcast(argument, room=room, skip=ws)
        elif command == "to":
            target, _, text = argument.partition(":")
            websocket.send_to(target, text)
        elif command == "members":
            ws.send("members:" + json.dumps(websocket.members(room)))
        elif command == "try":
            try:
                websocket.broadcast(argument, room=room, skip=ws)
            except HubError:
                ws.send(f"hub-error:{argument}")
            else:
                ws.send(f"sent:{argument}")
        elif command == "rooms":
            ws.send("rooms:" + json.dumps(sorted(ws.rooms)))
        elif command == "slowmode":
            # Test-only, through private attributes: a tiny kernel send buffer
            # and send queue for this one connection, so that a reader that
            # stops reading overflows quickly while the others keep the
            # default bounds (and cannot overflow on a busy test machine).
            sock = ws._sock
            assert sock is not None
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            ws._options = dataclasses.replace(ws._options, send_queue_size=int(argument))
            ws.send("slowmode set")
        elif command == "burst":
            count, _, size = argument.partition(":")
            for i in range(int(count)):  # bounded by the client's request
                websocket.broadcast(f"{i}:".ljust(int(size), "x"), room=room, skip=ws)
                if i % 50 == 49:
                    gevent.sleep(0)  # a publisher that lets the loop write now and then
            ws.send("burst done")
        elif command == "stream":
            count, size, rate = (int(part) for part in argument.split(":"))
            started = time.monotonic()
            for i in range(count):  # bounded by the client's request
                websocket.broadcast(f"{i}:".ljust(size, "x"), room=room, skip=ws)
                gevent.sleep(max(0.0, started + (i + 1) * size / rate - time.monotonic()))
            ws.send(f"stream done in {time.monotonic() - started:.2f} s")


@websocket.route("/echo")
def echo(ws: WebSocketConnection) -> None:
    """Echo every message (a bystander's route)."""
    for message in ws:
        ws.send(message)


@app.post("/broadcast")
def broadcast_view() -> str:
    """Broadcast from a plain HTTP view."""
    room = request.args.get("room") or None
    websocket.broadcast(request.get_data(as_text=True), room=room)
    return "sent"


@app.get("/pid")
def pid() -> str:
    return str(os.getpid())


@app.cli.command("shout")
@click.argument("text")
@click.option("--room", default=None)
def shout(text: str, room: str) -> None:
    """Broadcast from a flask CLI command (a separate process on the same host)."""
    websocket.broadcast(text, room=room)
    click.echo("sent")
