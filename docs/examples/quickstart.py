"""The quickstart: an echo server (docs/quickstart.rst).

Run it::

    flask --app docs.examples.quickstart websocket run --port 8080
"""

from flask import Flask

from flask_websocket import WebSocket

app = Flask(__name__)
websocket = WebSocket(app)


@websocket.route("/echo")
def echo(ws):
    for message in ws:  # each message until the client closes
        ws.send(message)  # str comes back as text, bytes as binary
