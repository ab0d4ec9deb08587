"""gevent-websocket peer: echo, and fan-out through a set of connections kept by the app.

Production configuration: gevent-websocket's README runs an app with
``WSGIServer(..., handler_class=WebSocketHandler)`` from ``gevent.pywsgi``
and ``geventwebsocket.handler``; one process, ``monkey.patch_all()`` first.
The app is plain WSGI reading ``environ["wsgi.websocket"]``.

No rooms, no broadcast: ``/sub`` joins a module-level set, ``/pub`` sends to
each member (this process only: the two-worker fan-out is a "cannot").
Routes and texts as ``apps/flask_websocket_broadcast.py``; any other path
echoes. Started by peers.py as ``python -m benchmarks.apps.gevent_websocket_app``
with the listening socket inherited (``apps/_peer.py``).
"""

from gevent import monkey

monkey.patch_all()

from gevent.pywsgi import WSGIServer  # noqa: E402
from geventwebsocket.exceptions import WebSocketError  # noqa: E402
from geventwebsocket.handler import WebSocketHandler  # noqa: E402

from benchmarks.apps import _peer  # noqa: E402

SUBSCRIBERS: set = set()


def app(environ, start_response):
    ws = environ.get("wsgi.websocket")
    if ws is None:
        start_response("400 Bad Request", [("Content-Type", "text/plain")])
        return [b"WebSocket upgrade required\n"]
    path = environ.get("PATH_INFO")
    try:
        if path == "/sub":
            subscribe(ws)
        elif path == "/pub":
            publish(ws)
        else:
            while True:
                message = ws.receive()
                if message is None:
                    break
                ws.send(message)
    except WebSocketError:
        pass
    return []


def subscribe(ws) -> None:
    SUBSCRIBERS.add(ws)
    try:
        ws.send(_peer.joined())
        while ws.receive() is not None:
            pass
    finally:
        SUBSCRIBERS.discard(ws)


def publish(ws) -> None:
    ws.send(_peer.ready())
    while True:
        message = ws.receive()
        if message is None:
            return
        _peer.send_to_all(SUBSCRIBERS, message, WebSocketError)
        ws.send(_peer.done(message))


if __name__ == "__main__":
    server = WSGIServer(_peer.listener(), app, handler_class=WebSocketHandler, log=None)
    _peer.say_ready()
    server.serve_forever()
