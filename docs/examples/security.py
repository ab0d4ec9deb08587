"""Authentication before the upgrade (docs/security.rst).

A WebSocket route is an ordinary Flask view until its first I/O: a
``before_request`` hook, ``abort()`` or a decorator refuses with a plain
HTTP status, and no ``101 Switching Protocols`` is ever sent.
"""

import functools

from flask import Flask, abort, g, request, session

from flask_websocket import WebSocket

app = Flask(__name__)
app.config["SECRET_KEY"] = "change me: a long random value, the same in every worker"
# Other sites' pages are refused by default; list the ones you trust:
app.config["WEBSOCKET_ALLOWED_ORIGINS"] = ["https://admin.example.com"]
# At most 20 WebSockets per client address in each worker (429 past it).
app.config["WEBSOCKET_MAX_CONNECTIONS_PER_IP"] = 20
websocket = WebSocket(app)

API_TOKENS = {"s3cret-token": "build-bot"}


@app.post("/login/<name>")
def login(name):
    session["user"] = name  # a real app checks a password first
    return "logged in"


@websocket.user_id_loader
def current_user_id():
    """Which user a WebSocket belongs to (Flask-Login: current_user.get_id())."""
    return session.get("user")


@app.post("/logout")
def logout():
    """Log out everywhere: every open WebSocket of the user closes, in every worker."""
    user = session.pop("user", None)
    if user is not None:
        websocket.close_user(user, 4001, "logged out")
    return "logged out"


def login_required(view):
    """A decorator of the Flask-Login kind: 401 unless the session has a user."""

    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        if "user" not in session:
            abort(401)
        return view(*args, **kwargs)

    return wrapped


@websocket.route("/ws/notifications")
@login_required
def notifications(ws):
    ws.send(f"hello {session['user']}")
    for message in ws:
        ws.send(f"{session['user']} said {message}")


@app.before_request
def token_for_services():
    """Services (no cookies) authenticate with a bearer token, before the upgrade."""
    if request.path.startswith("/ws/service"):
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or token not in API_TOKENS:
            abort(403)
        g.service = API_TOKENS[token]


@websocket.route("/ws/service")
def service(ws):
    ws.send(f"hello {g.service}")
