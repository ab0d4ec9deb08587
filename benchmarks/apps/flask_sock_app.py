"""flask-sock peer: echo, and fan-out through a set of connections kept by the app.

Production configuration: flask-sock's README says that for production it
runs on Gunicorn, Eventlet or gevent; this is gevent's ``WSGIServer`` set up
as Flask's "Deploying to Production / gevent" page writes it
(``monkey.patch_all()`` first), one process. WebSockets come from
simple-websocket (flask-sock's only engine).

flask-sock has no rooms and no broadcast: ``/sub`` puts its connection in a
module-level set and ``/pub`` sends each message to every connection in it,
as an app would. That reaches the connections of this process only, so the
two-worker fan-out is a "cannot" for flask-sock. Routes as
``apps/flask_websocket_broadcast.py`` (``joined``/``ready``/``done`` texts).

Started by peers.py as ``python -m benchmarks.apps.flask_sock_app`` with the
listening socket inherited (``apps/_peer.py``).
"""

from gevent import monkey

monkey.patch_all()

from flask import Flask  # noqa: E402
from flask_sock import ConnectionClosed, Sock  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

from benchmarks.apps import _peer  # noqa: E402

app = Flask(__name__)
sock = Sock(app)
SUBSCRIBERS: set = set()


@sock.route("/echo")
def echo(ws) -> None:
    while True:
        ws.send(ws.receive())


@sock.route("/sub")
def sub(ws) -> None:
    SUBSCRIBERS.add(ws)
    try:
        ws.send(_peer.joined())
        while True:
            ws.receive()
    finally:
        SUBSCRIBERS.discard(ws)


@sock.route("/pub")
def pub(ws) -> None:
    ws.send(_peer.ready())
    while True:
        message = ws.receive()
        _peer.send_to_all(SUBSCRIBERS, message, ConnectionClosed)
        ws.send(_peer.done(message))


if __name__ == "__main__":
    server = WSGIServer(_peer.listener(), app, log=None)
    _peer.say_ready()
    server.serve_forever()
