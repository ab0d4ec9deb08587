"""One app for every concurrency model: the handler code is the same under each.

Started by tests/test_uwsgi_models.py with each model's uWSGI flags.
"""

from __future__ import annotations

import os
from typing import Any, List, Optional

from flask import Flask

from flask_websocket import WebSocket, WebSocketConnection

app = Flask(__name__)
app.config["WEBSOCKET_PING_INTERVAL"] = None
app.config.from_prefixed_env("FWS")  # FWS_WEBSOCKET_...=<json>: a test's own settings
websocket = WebSocket(app)


@websocket.route("/echo")
def echo(ws: WebSocketConnection) -> None:
    """Echo text as text and binary as binary until the peer closes."""
    for message in ws:
        ws.send(message)


@websocket.route("/close/<int:code>")
def close_with(ws: WebSocketConnection, code: int) -> None:
    """Wait for one message, then close with ``code``."""
    ws.receive()
    ws.close(code, f"closing with {code}")


@websocket.route("/poll")
def poll(ws: WebSocketConnection) -> None:
    """recv_nb polling: say what the first poll returned, then echo what arrives."""
    ws.send(f"first={ws.recv_nb()!r}")
    polls = 200  # bounded: 200 x 25 ms without a message ends it
    while polls:
        message = ws.recv_nb()
        if message is None:
            ws.sleep(0.025)
            polls -= 1
            continue
        ws.send(f"got={message!r}")
        if message == "stop":
            return
        polls = 200


@websocket.route("/room/<name>")
def room(ws: WebSocketConnection, name: str) -> None:
    """Join ``name``, say which worker we are on, then broadcast what arrives to the room."""
    ws.join(name)
    ws.send(f"joined {name} pid={os.getpid()} id={ws.id}")
    for message in ws:
        websocket.broadcast(f"{ws.id}: {message}", room=name)


@websocket.route("/storm/<name>")
def storm(ws: WebSocketConnection, name: str) -> None:
    """Join ``name``; on ``storm:<tasks>:<round>`` broadcast from that many tasks at once.

    Each task (a greenlet, a thread: whatever the model's backend spawns)
    calls ``broadcast("<round>.<task>", room=name)`` once; the handler waits
    for all of them and answers ``stormed <round> ok=<n> errors=<list>``
    (skipped by the broadcasts, so members see only broadcasts).
    """
    backend = app.extensions["websocket"].backend
    ws.join(name)
    ws.send(f"joined {name} pid={os.getpid()} id={ws.id}")
    for message in ws:
        _, tasks, round_ = str(message).split(":")
        outcomes: List[Optional[str]] = []
        all_done = backend.event()
        count = int(tasks)

        def publish(
            text: str, outcomes: Any = outcomes, all_done: Any = all_done, count: int = count
        ) -> None:
            try:
                websocket.broadcast(text, room=name)
            except Exception as exc:  # reported to the client: the test asserts none
                outcomes.append(f"{type(exc).__name__}: {exc}")
            else:
                outcomes.append(None)
            if len(outcomes) == count:
                all_done.set()

        for task in range(count):  # bounded by the client's request
            backend.spawn(publish, f"{round_}.{task}")
        all_done.wait(30)
        errors = [outcome for outcome in outcomes if outcome is not None]
        ws.send(f"stormed {round_} ok={len(outcomes) - len(errors)} errors={errors!r}")


@app.route("/broadcast/<name>/<message>")
def broadcast_from_view(name: str, message: str) -> str:
    """A plain HTTP view that broadcasts to a room of this worker."""
    websocket.broadcast(message, room=name)
    return f"pid={os.getpid()} members={len(websocket.members(name))}"


@websocket.route("/timeout")
def timeout(ws: WebSocketConnection) -> None:
    """receive(timeout) returns None when nothing arrives in time; then echo once."""
    ws.send(f"waited={ws.receive(timeout=0.2)!r}")
    ws.send(f"then={ws.receive(timeout=10)!r}")


@app.route("/hub")
def hub_kind() -> str:
    """Which hub and backend this worker uses (the defaults depend on the model)."""
    state = app.extensions["websocket"]
    return f"{state.hub.scheme} {state.backend.name}"
