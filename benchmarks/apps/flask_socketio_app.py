"""Flask-SocketIO peer on gevent, WebSocket transport only.

Production configuration: Flask-SocketIO's "Deployment" docs, "Embedded
Server": ``socketio.run(app)`` on gevent, which with gevent-websocket
installed is ``gevent.pywsgi.WSGIServer(..., handler_class=WebSocketHandler)``;
that is what runs here, on the listening socket peers.py passes down
(``socketio.run`` only takes a host and port), one process,
``monkey.patch_all()`` first (the docs ask for it with a message queue).
``async_mode="gevent"``; ``transports=["websocket"]`` (no long-polling).

Clients speak Engine.IO 4 / Socket.IO 5 over one WebSocket
(``/socket.io/?EIO=4&transport=websocket&role=...``; peerlib's client does
the framing). Every message is the event ``"m"`` with one string (text) or
bytes (binary attachment) argument:

* ``role=echo`` - each ``m`` is emitted back to the sender;
* ``role=sub`` - on connect: ``join_room("bench")`` and ``m "joined <pid>"``;
* ``role=pub`` - on connect ``m "ready <pid>"``; each ``m`` is emitted to room
  ``"bench"``, then answered with ``m "done <seq> <monotonic ns>"``.

``BENCH_REDIS_URL`` set: ``message_queue`` is that Redis (Flask-SocketIO's
way to emit across worker processes: the two-worker fan-out).
"""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402

from flask import Flask, request  # noqa: E402
from flask_socketio import SocketIO, emit, join_room  # noqa: E402

from benchmarks.apps import _peer  # noqa: E402

app = Flask(__name__)
socketio = SocketIO(
    app,
    async_mode="gevent",
    transports=["websocket"],
    message_queue=os.environ.get("BENCH_REDIS_URL") or None,
)


@socketio.on("connect")
def connect(auth=None) -> None:
    role = request.args.get("role")
    if role == "sub":
        join_room(_peer.ROOM)
        emit("m", _peer.joined())
    elif role == "pub":
        emit("m", _peer.ready())


@socketio.on("m")
def message(data) -> None:
    if request.args.get("role") == "pub":
        emit("m", data, to=_peer.ROOM)
        emit("m", _peer.done(data))
    else:
        emit("m", data)


if __name__ == "__main__":
    from gevent.pywsgi import WSGIServer
    from geventwebsocket.handler import WebSocketHandler

    server = WSGIServer(_peer.listener(), app, handler_class=WebSocketHandler, log=None)
    _peer.say_ready()
    server.serve_forever()
