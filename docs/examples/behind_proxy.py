"""An app behind nginx or HAProxy (docs/deployment.rst, deploy/).

The proxy terminates TLS and tells the app, in X-Forwarded-* headers, who
the client is and what it asked for; ProxyFix makes the app trust them.
"""

import json

from flask import Flask, request, url_for
from werkzeug.middleware.proxy_fix import ProxyFix

from flask_websocket import WebSocket

app = Flask(__name__)
# FLASK_WEBSOCKET_ALLOWED_ORIGINS='["https://example.com"]' and other settings
# from the environment (the systemd unit's EnvironmentFile, docker run -e).
app.config.from_prefixed_env()
# One proxy in front, which sets X-Forwarded-For, -Proto and -Host: trust one
# hop of each, no more (a client could then forge its own address).
app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)
websocket = WebSocket(app)


def seen_by_the_app():
    """What the app knows of the client and of its own public address."""
    return {
        "client": request.remote_addr,
        "scheme": request.scheme,
        "host": request.host,
        "url": url_for(request.endpoint, _external=True),
    }


@app.get("/whoami")
def whoami():
    return seen_by_the_app()


@websocket.route("/ws/whoami")
def ws_whoami(ws):
    ws.send(json.dumps(seen_by_the_app()))


@websocket.route("/ws/echo")
def echo(ws):
    for message in ws:
        ws.send(message)
