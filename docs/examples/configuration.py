"""Configuring Flask-WebSocket (docs/configuration.rst)."""

from flask import Flask

from flask_websocket import WebSocket

app = Flask(__name__)
app.config.update(
    WEBSOCKET_MAX_MESSAGE_SIZE=64 * 1024,  # bytes; larger messages close with 1009
    WEBSOCKET_PING_INTERVAL=20,  # seconds between the server's pings
    WEBSOCKET_ALLOWED_ORIGINS=["https://chat.example.com"],
)
# FLASK_WEBSOCKET_PING_INTERVAL=10 in the environment sets WEBSOCKET_PING_INTERVAL
# (values are JSON: null for None, ["..."] for a list).
app.config.from_prefixed_env()
websocket = WebSocket(app)  # after the configuration


@websocket.route("/echo")
def echo(ws):
    for message in ws:
        ws.send(message)
