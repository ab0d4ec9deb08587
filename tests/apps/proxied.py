"""The app of docs/examples/behind_proxy.py, plus routes the deployment tests need.

Served by uWSGI from a rendered deploy/uwsgi.ini behind nginx or HAProxy
(tests/test_deploy.py).
"""

from __future__ import annotations

from docs.examples.behind_proxy import app, websocket
from flask_websocket import ConnectionClosed, WebSocketConnection

__all__ = ["app", "websocket"]

#: The room where /ws/closes listeners hear how /ws/peer-close connections ended.
CLOSES_ROOM = "closes"


@websocket.route("/ws/close/<int:code>")
def close_with(ws: WebSocketConnection, code: int) -> None:
    """Wait for one message, then close with ``code`` and that message as reason."""
    reason = ws.receive()
    assert isinstance(reason, str)
    ws.close(code, reason)


@websocket.route("/ws/closes")
def closes(ws: WebSocketConnection) -> None:
    """Listen to how /ws/peer-close connections ended, in any worker."""
    ws.join(CLOSES_ROOM)
    ws.send("listening")
    for _ in ws:
        pass


@websocket.route("/ws/peer-close")
def peer_close(ws: WebSocketConnection) -> None:
    """Tell /ws/closes listeners the code and reason the client closed with."""
    ws.send("ready")
    try:
        while True:
            ws.receive()
    except ConnectionClosed as exc:
        websocket.broadcast(f"{exc.code} {exc.reason}", room=CLOSES_ROOM)
