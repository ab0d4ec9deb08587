"""Echo every WebSocket message back with its own type (text stays text).

Run it::

    flask --app examples.echo websocket run --port 8080

or with uWSGI directly::

    uwsgi --http :8080 --http-websockets --gevent 1000 --module examples.echo:app \
          --master --need-app --die-on-term

then open ``ws://127.0.0.1:8080/echo``. ``GET /`` shows a page that talks to it.
``/echo-compressed`` is the same echo with permessage-deflate, for the
clients that offer it.
"""

from __future__ import annotations

from flask import Flask

from flask_websocket import WebSocket, WebSocketConnection

app = Flask(__name__)
# The Autobahn|Testsuite sends messages of up to 16 MiB; allow them here.
app.config["WEBSOCKET_MAX_MESSAGE_SIZE"] = 16 * 2**20
websocket = WebSocket(app)


@websocket.route("/echo")
def echo(ws: WebSocketConnection) -> None:
    """Send each message back as it came."""
    while True:
        message = ws.receive()
        ws.send(message)  # type: ignore[arg-type]


@websocket.route("/echo-compressed", compression="permessage-deflate")
def echo_compressed(ws: WebSocketConnection) -> None:
    """The same echo, compressed (permessage-deflate) when the client offers it."""
    for message in ws:
        ws.send(message)


@app.get("/")
def index() -> str:
    """A small page to try the echo from a browser."""
    return _PAGE


_PAGE = """<!doctype html>
<meta charset="utf-8">
<title>Flask-WebSocket echo</title>
<h1>Echo</h1>
<form id="form"><input id="text" autocomplete="off" autofocus> <button>Send</button></form>
<pre id="log"></pre>
<script>
const log = (line) => { document.getElementById("log").textContent += line + "\\n"; };
const scheme = location.protocol === "https:" ? "wss://" : "ws://";
const ws = new WebSocket(scheme + location.host + "/echo");
ws.onopen = () => log("connected");
ws.onmessage = (event) => log("< " + event.data);
ws.onclose = (event) => log("closed " + event.code);
document.getElementById("form").onsubmit = (event) => {
  event.preventDefault();
  const input = document.getElementById("text");
  ws.send(input.value); log("> " + input.value); input.value = "";
};
</script>
"""
