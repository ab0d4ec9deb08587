"""Handlers shown in docs/handlers.rst; tests/test_docs_examples.py runs each one."""

import json

from flask import Blueprint, Flask, abort, request, session, url_for

from flask_websocket import CloseCode, ConnectionClosed, WebSocket

app = Flask(__name__)
app.secret_key = "change me"
websocket = WebSocket(app)


@websocket.route("/echo")
def echo(websocket):
    while True:
        message = websocket.receive()
        websocket.send(message)


@websocket.route("/shout")
def shout(ws):
    for message in ws:  # ends when the client closes normally
        if isinstance(message, str):
            ws.send(message.upper())
        else:
            ws.send_binary(message[::-1])


@websocket.route("/countdown")
def countdown(ws):
    for number in (3, 2, 1):
        ws.send(str(number))
    ws.close(CloseCode.NORMAL_CLOSURE, "lift-off")


@websocket.route("/goodbye")
def goodbye(ws):
    try:
        while True:
            ws.receive()
    except ConnectionClosed as closed:
        app.logger.info("client left: %s %r", closed.code, closed.reason)


@websocket.route("/private")
def private(ws):
    if request.args.get("token") != "let-me-in":
        abort(403)  # before any I/O: the client gets a plain HTTP 403
    ws.send(f"welcome, {session.get('user', 'guest')}")


@websocket.route("/rooms/<int:number>")
def room(ws, number):
    ws.send(f"room {number} is at {url_for('room', number=number)}")


@websocket.route("/json")
def json_api(ws):
    for raw in ws:
        try:
            data = json.loads(raw)
        except ValueError:
            ws.close(CloseCode.INVALID_DATA, "expected JSON")
            return
        ws.send(json.dumps({"sum": sum(data["numbers"])}))


@websocket.route("/chat", subprotocols=["chat.v2", "chat.v1"])
def chat(ws):
    ws.send(f"speaking {ws.subprotocol}")


@websocket.route("/upload", max_message_size=16 * 2**20)
def upload(ws):
    data = ws.receive()
    ws.send(f"got {len(data)} bytes")


@websocket.route("/ask")
def ask(ws):
    ws.send("what is your name?")
    name = ws.receive(timeout=30)
    if name is None:  # 30 seconds passed
        ws.close(CloseCode.POLICY_VIOLATION, "too slow")
        return
    ws.send(f"hello {name}")


@websocket.route("/poll")
def poll(ws):
    while True:
        message = ws.recv_nb()  # None when nothing is waiting
        if message is None:
            ws.sleep(0.05)
            continue
        ws.send(message)


api = Blueprint("api", __name__, url_prefix="/api")


@websocket.route("/events", blueprint=api)
def events(ws):
    ws.send(url_for("api.events"))


app.register_blueprint(api)
