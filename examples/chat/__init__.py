"""A chat with rooms: a web page, nicknames, presence, join and leave notices, history.

Run it::

    flask --app examples.chat websocket run               # one worker
    flask --app examples.chat websocket run --workers 4   # several: works the same

or with uWSGI directly::

    uwsgi --http :8080 --http-websockets --gevent 1000 --gevent-early-monkey-patch \\
          --processes 2 --module examples.chat:app --master --need-app --die-on-term

then open http://127.0.0.1:8080/ (``/?room=name`` picks a room; "lobby" by
default).

The page uses the extension's JavaScript client (``/_websocket/client.js``)
to connect to ``/ws/<room>?nick=<nickname>``: it speaks ``fws.v1``, so it
reconnects by itself and gives back where it was. Every message of the app
is a JSON text message (one object with a ``type``):

====================================================  =================================
page → server
====================================================  =================================
``{"type": "message", "text": ...}``                  say something (at most 2000
                                                      characters)
``{"type": "here", "to": id}``                        answer a ``join``: tell the
                                                      newcomer who is already here
====================================================  =================================

==============================================================  =========================
server → page
==============================================================  =========================
``{"type": "welcome", "id", "nick", "room"}``                   first message of each
                                                                connection: who you are
``{"type": "join", "id", "nick", "room"}``                      someone entered the room
``{"type": "present", "id", "nick", "room"}``                   someone already here (an
                                                                answer to your ``join``)
``{"type": "leave", "id", "nick", "room"}``                     someone left
``{"type": "message", "id", "from", "text", "room", "time"}``   a message, sender's own
                                                                included (``time``: ms
                                                                since 1970)
``{"type": "error", "text"}``                                   your last message was
                                                                refused
==============================================================  =========================

History: the room's messages are a stream. They are broadcast to the hub
room ``chat:<room>``, which keeps its last 100 messages for an hour
(``WEBSOCKET_HISTORY``), each with a position. A page that joins gets those
first (the room's recent conversation); a page that comes back after a
drop, a reload of the server or a killed worker gives its last position and
gets exactly what it missed, once, in order, before anything newer.

Presence is not history: ``join``, ``present`` and ``leave`` describe who
is connected *now*, and replayed later they would be false (a member who
left an hour ago would be listed, and each page would answer ``here`` to
connections long gone). So they go to a second hub room without history,
``who:<room>``, and ``welcome`` and ``present`` to one connection
(``ws.send``, ``websocket.send_to``). A page that reconnects is a new
connection: it is welcomed again and rebuilds its member list the same way.

Presence across workers: every nickname is attached by the server, never
taken from the page, and travels in broadcasts (``websocket.broadcast(...,
room=...)``) and direct sends (``websocket.send_to(id, ...)``), which reach
connections in every uWSGI worker. A worker only knows the nicknames of its
own connections, so the page keeps the member list: it adds whoever
``join``\\s after it, and answers each ``join`` with ``here`` so that the
newcomer's page learns who was there before it (the answering worker sends a
``present`` carrying its own connection's nickname). Because each connection
joins the room before it announces itself, any two members learn of each
other, whichever joined first. Invalid nicknames and room names close the
connection with 1008 (policy violation) and a reason the page shows; the
client does not reconnect after that.
"""

from __future__ import annotations

import json
import logging
import time
import unicodedata
from typing import Any, Dict, Optional

from flask import Flask, Response, render_template, request

from flask_websocket import CloseCode, WebSocket, WebSocketConnection
from flask_websocket.history import Position
from flask_websocket.hubs import HubError
from flask_websocket.wire import SINCE_PARAMETER, parse_since

__all__ = [
    "DEFAULT_ROOM",
    "HISTORY_SIZE",
    "HISTORY_TTL",
    "MAX_MESSAGE_LENGTH",
    "MAX_NICK_LENGTH",
    "MAX_ROOM_LENGTH",
    "app",
    "nick_problem",
    "presence_room",
    "room_problem",
    "stream_room",
    "websocket",
]

#: Longest nickname, in characters.
MAX_NICK_LENGTH = 32
#: Longest room name, in characters (48 characters of 4-byte UTF-8 with the
#: 5-byte prefix of its hub rooms still fit the hubs' 200-byte limit).
MAX_ROOM_LENGTH = 48
#: Longest chat message, in characters.
MAX_MESSAGE_LENGTH = 2000
#: The room of ``/`` without ``?room=``.
DEFAULT_ROOM = "lobby"
#: Largest WebSocket message accepted, in bytes: a 2000-character text in a
#: JSON object, even with every character escaped as ``\\uXXXX``, fits.
#: Larger closes the connection with 1009.
MAX_FRAME_SIZE = 16 * 1024
#: Longest connection id a ``here`` may name (ids are ``<node>.<n>``, short).
_MAX_ID_LENGTH = 64
#: Messages a room's history keeps: a page that joins shows them.
HISTORY_SIZE = 100
#: Seconds a message stays in its room's history.
HISTORY_TTL = 3600
#: Where a page that gives no position starts: the start of the room's
#: stream (an empty epoch), so that it gets what the history holds.
_FROM_THE_START = Position("", 0)

logger = logging.getLogger(__name__)

app = Flask(__name__)
# The rooms' messages (hub rooms chat:<room>) keep a history; presence
# (who:<room>) does not: see the module's docstring.
app.config["WEBSOCKET_HISTORY"] = {"chat:*": {"size": HISTORY_SIZE, "ttl": HISTORY_TTL}}
# Configuration from FLASK_* environment variables, JSON-decoded where they
# parse (Flask's from_prefixed_env): FLASK_SECRET_KEY, FLASK_WEBSOCKET_HUB_URL,
# FLASK_WEBSOCKET_HUB_OPTIONS='{"name": "chat"}', FLASK_WEBSOCKET_ALLOWED_ORIGINS...
app.config.from_prefixed_env()
websocket = WebSocket(app)


def stream_room(room: str) -> str:
    """The hub room of ``room``'s messages: it keeps a history."""
    return f"chat:{room}"


def presence_room(room: str) -> str:
    """The hub room of ``room``'s presence notices: no history."""
    return f"who:{room}"


# -- validation -------------------------------------------------------------


def _name_problem(value: str, what: str, limit: int) -> Optional[str]:
    """Why ``value`` cannot be a nickname or room name, or ``None`` if it can."""
    if not value or not value.strip():
        return f"{what} is empty"
    if len(value) > limit:
        return f"{what} is longer than {limit} characters"
    if value != value.strip():
        return f"{what} starts or ends with spaces"
    # Category C*: control (\n, \x00, ...), format (bidi overrides), surrogates,
    # private use and unassigned code points.
    if any(unicodedata.category(char).startswith("C") for char in value):
        return f"{what} contains control characters"
    return None


def nick_problem(nick: str) -> Optional[str]:
    """Why ``nick`` is not a valid nickname (1-32 characters, no control characters)."""
    return _name_problem(nick, "nickname", MAX_NICK_LENGTH)


def room_problem(room: str) -> Optional[str]:
    """Why ``room`` is not a valid room name (1-48 characters, no control characters)."""
    return _name_problem(room, "room name", MAX_ROOM_LENGTH)


# -- the page -----------------------------------------------------------------


@app.get("/")
def index() -> str:
    """The chat page; ``?room=name`` pre-selects a room."""
    room = request.args.get("room", DEFAULT_ROOM).strip()
    if room_problem(room) is not None:
        room = DEFAULT_ROOM
    return render_template(
        "index.html",
        room=room,
        max_nick=MAX_NICK_LENGTH,
        max_room=MAX_ROOM_LENGTH,
        max_message=MAX_MESSAGE_LENGTH,
    )


@app.after_request
def security_headers(response: Response) -> Response:
    """A strict Content-Security-Policy: scripts and styles from this site only.

    The page never turns user data into HTML (it uses ``textContent``); the
    policy is a second line of defence should that ever change.
    """
    if response.mimetype == "text/html":
        host = request.host
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            f"connect-src 'self' ws://{host} wss://{host}; base-uri 'none'; "
            "form-action 'self'; frame-ancestors 'none'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
    return response


# -- the WebSocket ------------------------------------------------------------


def _dump(**fields: Any) -> str:
    """One protocol message as compact JSON text."""
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":"))


def _broadcast(message: str, room: str, skip: Optional[WebSocketConnection] = None) -> bool:
    """Broadcast to ``room``; ``False`` (and a log line) if some worker did not get it.

    A :class:`HubError` is not fatal: the hub delivered to the members in
    this worker, and to every worker it could reach, before it raised, and
    its message names the ones it could not.
    """
    try:
        websocket.broadcast(message, room=room, skip=skip)
    except HubError as exc:
        logger.warning("chat: broadcast to %r did not reach every worker: %s", room, exc)
        return False
    return True


def _parse(raw: Any) -> Optional[Dict[str, Any]]:
    """The JSON object in a text message, or ``None`` if it is not one."""
    if not isinstance(raw, str):
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _error(ws: WebSocketConnection, text: str) -> None:
    """Tell the page its last message was refused (only that page)."""
    ws.send(_dump(type="error", text=text))


def _handle(ws: WebSocketConnection, raw: Any, nick: str, room: str) -> None:
    """Act on one message from the page of ``ws`` (``nick`` in ``room``)."""
    data = _parse(raw)
    kind = data.get("type") if data is not None else None
    if data is None or not isinstance(kind, str):
        _error(ws, "expected a JSON object with a 'type'")
    elif kind == "message":
        text = data.get("text")
        if not isinstance(text, str) or not text.strip():
            _error(ws, "a message needs some text")
        elif len(text) > MAX_MESSAGE_LENGTH:
            _error(ws, f"message too long: at most {MAX_MESSAGE_LENGTH} characters")
        else:  # to everyone in the room, the sender too: its page shows it on arrival
            message = _dump(
                type="message", id=ws.id, text=text, room=room, time=int(time.time() * 1000),
                **{"from": nick},
            )  # fmt: skip
            if not _broadcast(message, stream_room(room)):
                _error(ws, "the server is busy: your last message may not have reached everyone")
    elif kind == "here":
        target = data.get("to")
        if isinstance(target, str) and 0 < len(target) <= _MAX_ID_LENGTH:
            # Any id is accepted: the page ignores a "present" for another room.
            try:
                websocket.send_to(target, _dump(type="present", id=ws.id, nick=nick, room=room))
            except HubError as exc:
                logger.warning("chat: presence answer not delivered: %s", exc)
    else:
        _error(ws, f"unknown message type {kind[:40]!r}")


def _join_stream(ws: WebSocketConnection, room: str) -> None:
    """Join ``room``'s messages: what this page missed, or the room's last messages.

    A page that comes back gives its position in the room's stream
    (``fws_since``) and gets every message after it; a page that gives none
    gets what the history holds.
    """
    stream = stream_room(room)
    since = parse_since(request.args.getlist(SINCE_PARAMETER)).get(stream)
    ws.join(stream, since if since is not None else _FROM_THE_START)


@websocket.route("/ws/<room>", max_message_size=MAX_FRAME_SIZE)
def chat(ws: WebSocketConnection, room: str) -> None:
    """One member of ``room``: relay its messages, announce its coming and going."""
    nick = request.args.get("nick", "").strip()
    problem = room_problem(room) or nick_problem(nick)
    if problem is not None:
        ws.close(CloseCode.POLICY_VIOLATION, problem)
        return
    me = ws.id
    ws.send(_dump(type="welcome", id=me, nick=nick, room=room))  # first, always
    who = presence_room(room)
    ws.join(who)  # before announcing: see the module's docstring
    _broadcast(_dump(type="join", id=me, nick=nick, room=room), who, skip=ws)
    try:
        _join_stream(ws, room)  # then the room's last messages, or what this page missed
        for raw in ws:
            _handle(ws, raw, nick, room)
    finally:
        # However the connection ended (the page left, the network failed,
        # the worker is stopping), tell the others; not this connection,
        # which may still be in the room until the extension tears it down.
        _broadcast(_dump(type="leave", id=me, nick=nick, room=room), who, skip=ws)
