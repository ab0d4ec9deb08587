"""Flask-WebSocket: WebSockets for Flask apps on uWSGI.

::

    from flask import Flask
    from flask_websocket import WebSocket

    app = Flask(__name__)
    websocket = WebSocket(app)

    @websocket.route("/echo")
    def echo(ws):
        while True:
            ws.send(ws.receive())

Run it with ``flask --app app websocket run`` (which starts uWSGI with the
right flags and prints its command line).
"""

from __future__ import annotations

from .close_codes import CloseCode
from .connection import WebSocketConnection
from .exceptions import (
    ConfigurationError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    HandshakeRejected,
    NotConnected,
    SendQueueFull,
    WebSocketError,
)
from .extension import WebSocket
from .hubs.base import BroadcastTooLarge, HubError

__version__ = "0.1.0"

__all__ = [
    "BroadcastTooLarge",
    "CloseCode",
    "ConfigurationError",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "HandshakeRejected",
    "HubError",
    "NotConnected",
    "SendQueueFull",
    "WebSocket",
    "WebSocketConnection",
    "WebSocketError",
    "__version__",
]
