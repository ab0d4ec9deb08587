"""A test app exercising the extension's features, served by real uWSGI.

Settings come from environment variables so one module serves every test:
``FWS_PING_INTERVAL``, ``FWS_PING_TIMEOUT``, ``FWS_CLOSE_TIMEOUT``,
``FWS_RATE_LIMIT`` ("rate,burst"), ``FWS_DEBUG`` (set app.debug before
WebSocket(app)).
"""

from __future__ import annotations

import os
from typing import Optional

import gevent
from flask import Blueprint, Flask, abort, g, request, session, url_for

from flask_websocket import ConnectionClosed, WebSocket, WebSocketConnection


def _float_env(name: str) -> Optional[float]:
    value = os.environ.get(name)
    if value is None or value == "none":
        return None
    return float(value)


app = Flask(__name__)
app.secret_key = "test-only-secret"
app.debug = os.environ.get("FWS_DEBUG") == "1"
app.config["WEBSOCKET_ALLOWED_ORIGINS"] = ["http://good.example", None]
if "FWS_PING_INTERVAL" in os.environ:
    app.config["WEBSOCKET_PING_INTERVAL"] = _float_env("FWS_PING_INTERVAL")
if "FWS_PING_TIMEOUT" in os.environ:
    app.config["WEBSOCKET_PING_TIMEOUT"] = _float_env("FWS_PING_TIMEOUT")
if "FWS_CLOSE_TIMEOUT" in os.environ:
    app.config["WEBSOCKET_CLOSE_TIMEOUT"] = _float_env("FWS_CLOSE_TIMEOUT")
if "FWS_RATE_LIMIT" in os.environ:
    rate, burst = os.environ["FWS_RATE_LIMIT"].split(",")
    app.config["WEBSOCKET_RATE_LIMIT"] = (float(rate), int(burst))

websocket = WebSocket(app)
bp = Blueprint("bp", __name__, url_prefix="/bp")


@app.before_request
def load_user() -> None:
    g.user = request.headers.get("X-User")
    if request.headers.get("X-Deny"):
        abort(403)


@app.get("/login/<name>")
def login(name: str) -> str:
    session["user"] = name
    return "ok"


@websocket.route("/echo")
def echo(ws: WebSocketConnection) -> None:
    while True:
        message = ws.receive()
        assert message is not None
        ws.send(message)


@websocket.route("/iterate")
def iterate(ws: WebSocketConnection) -> None:
    for message in ws:
        ws.send(message)


@websocket.route("/close/<int:code>")
def close_with(ws: WebSocketConnection, code: int) -> None:
    """Wait for one message, then close with ``code`` and that message as reason."""
    reason = ws.receive()
    assert isinstance(reason, str)
    ws.close(code, reason)


@websocket.route("/peer-close")
def peer_close(ws: WebSocketConnection) -> None:
    """Report how the peer closed, on a second connection's request."""
    ws.send("ready")
    try:
        while True:
            ws.receive()
    except ConnectionClosed as exc:
        _last_close["code"] = exc.code
        _last_close["reason"] = exc.reason
        _last_close["type"] = type(exc).__name__


_last_close: dict = {}


@websocket.route("/last-close")
def last_close(ws: WebSocketConnection) -> None:
    ws.send(repr(sorted(_last_close.items())))


@websocket.route("/returns")
def returns(ws: WebSocketConnection) -> None:
    ws.send("bye")


@websocket.route("/raises")
def raises(ws: WebSocketConnection) -> None:
    ws.receive()
    raise ValueError("boom from the handler")


@websocket.route("/abort-before")
def abort_before(ws: WebSocketConnection) -> None:
    if request.args.get("token") != "secret":
        abort(401)
    ws.send("welcome")


@websocket.route("/abort-after")
def abort_after(ws: WebSocketConnection) -> None:
    ws.receive()
    abort(403, "not allowed any more")


@websocket.route("/chat/<room>")
def chat(ws: WebSocketConnection, room: str) -> None:
    ws.send(f"room={room} url={url_for('chat', room=room)}")


@websocket.route("/context")
def context(ws: WebSocketConnection) -> None:
    ws.send(f"user={g.user} session={session.get('user')} q={request.args.get('q')}")


@websocket.route("/subprotocol", subprotocols=["chat.v2", "chat.v1"])
def subprotocol(ws: WebSocketConnection) -> None:
    ws.send(f"subprotocol={ws.subprotocol}")


@websocket.route("/small", max_message_size=1024)
def small(ws: WebSocketConnection) -> None:
    while True:
        ws.send(ws.receive())  # type: ignore[arg-type]


@websocket.route("/poll")
def poll(ws: WebSocketConnection) -> None:
    """recv_nb polling: report None once, then echo whatever arrives."""
    ws.send(f"first={ws.recv_nb()!r}")
    deadline = 100  # bounded: 100 x 50 ms
    while deadline:
        message = ws.recv_nb()
        if message is not None:
            ws.send(f"got={message!r}")
            if message == "stop":
                return
            deadline = 100
            continue
        gevent.sleep(0.05)
        deadline -= 1


@websocket.route("/background")
def background(ws: WebSocketConnection) -> None:
    """Another greenlet sends while the handler waits in receive()."""

    def ticker() -> None:
        for i in range(3):
            ws.send(f"tick {i}")

    worker = gevent.spawn(ticker)
    message = ws.receive()
    worker.join(5)
    ws.send(f"handler got {message}")


@websocket.route("/sharedarea")
def sharedarea(ws: WebSocketConnection) -> None:
    import uwsgi  # only under uWSGI with --sharedarea

    uwsgi.sharedarea_write(0, 0, "héllo".encode())
    ws.send_from_sharedarea(0, 0, len("héllo".encode()))
    ws.send_binary_from_sharedarea(0, 1, 3)


@websocket.route("/echo", blueprint=bp, endpoint="bp_echo")
def bp_echo(ws: WebSocketConnection) -> None:
    ws.send(f"blueprint url={url_for('bp.bp_echo')}")
    ws.send(ws.receive())  # type: ignore[arg-type]


@bp.get("/plain")
def bp_plain() -> str:
    return "plain"


app.register_blueprint(bp)


@app.get("/")
def index() -> str:
    return "features app"
