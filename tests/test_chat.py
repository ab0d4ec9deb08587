"""The chat example's server logic, in-process (``WebSocketTestClient``, no uWSGI)."""

from __future__ import annotations

import json
from typing import Any, Dict, Iterator

import pytest

from examples.chat import (
    MAX_MESSAGE_LENGTH,
    MAX_NICK_LENGTH,
    MAX_ROOM_LENGTH,
    app,
    nick_problem,
    room_problem,
)
from flask_websocket import CloseCode, ConnectionClosed
from flask_websocket.testing import TestConnection, WebSocketTestClient


@pytest.fixture(params=["gevent", "threads"])
def client(request: pytest.FixtureRequest) -> Iterator[WebSocketTestClient]:
    """A test client for the chat app (its connections share the memory hub),
    with the handlers under gevent, then under the threads backend."""
    yield WebSocketTestClient(app, timeout=5.0, model=request.param)


def receive_json(ws: TestConnection) -> Dict[str, Any]:
    """The next message, parsed; it must be a JSON object."""
    message = ws.receive()
    assert isinstance(message, str), message
    data = json.loads(message)
    assert isinstance(data, dict)
    return data


def join(client: WebSocketTestClient, nick: str, room: str = "lobby") -> TestConnection:
    """Connect as ``nick`` to ``room`` and read the welcome."""
    ws = client.connect(f"/ws/{room}", query_string=f"nick={nick}")
    welcome = receive_json(ws)
    assert welcome["type"] == "welcome"
    assert welcome["nick"] == nick
    assert welcome["room"] == room
    assert welcome["id"]
    return ws


def say(ws: TestConnection, text: str) -> None:
    ws.send(json.dumps({"type": "message", "text": text}))


# -- validation ---------------------------------------------------------------


@pytest.mark.parametrize(
    "nick", ["alice", "a", "x" * MAX_NICK_LENGTH, "Zoë", "Bob Smith", "日本語", "<b>bob</b>"]
)
def test_valid_nicknames(nick: str) -> None:
    assert nick_problem(nick) is None


@pytest.mark.parametrize(
    ("nick", "problem"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("x" * (MAX_NICK_LENGTH + 1), "longer than 32"),
        ("a\nb", "control"),
        ("a\x00b", "control"),
        ("a\x7f", "control"),
        ("\u202eevil", "control"),  # right-to-left override: a format character
        (" alice", "spaces"),
    ],
)
def test_invalid_nicknames(nick: str, problem: str) -> None:
    found = nick_problem(nick)
    assert found is not None and problem in found


def test_room_names() -> None:
    assert room_problem("lobby") is None
    assert room_problem("🙂" * MAX_ROOM_LENGTH) is None  # 192 bytes: under the hubs' 200
    assert room_problem("x" * (MAX_ROOM_LENGTH + 1)) is not None
    assert room_problem("a\tb") is not None
    assert room_problem("") is not None


@pytest.mark.parametrize(
    "query",
    [
        "",  # no nick at all
        "nick=",
        "nick=%20%20",
        "nick=" + "x" * (MAX_NICK_LENGTH + 1),
        "nick=a%0Ab",
        "nick=a%00b",
        "nick=%E2%80%AEevil",
    ],
)
def test_invalid_nickname_closes_with_1008(client: WebSocketTestClient, query: str) -> None:
    with client.connect("/ws/lobby", query_string=query) as ws:
        with pytest.raises(ConnectionClosed) as info:
            ws.receive()
        assert info.value.code == CloseCode.POLICY_VIOLATION
        assert "nickname" in info.value.reason


def test_invalid_room_closes_with_1008(client: WebSocketTestClient) -> None:
    with client.connect("/ws/" + "r" * (MAX_ROOM_LENGTH + 1), query_string="nick=alice") as ws:
        with pytest.raises(ConnectionClosed) as info:
            ws.receive()
        assert info.value.code == CloseCode.POLICY_VIOLATION
        assert "room name" in info.value.reason


def test_nickname_is_stripped(client: WebSocketTestClient) -> None:
    with client.connect("/ws/lobby", query_string="nick=%20alice%20") as ws:
        assert receive_json(ws)["nick"] == "alice"


# -- presence -------------------------------------------------------------------


def test_join_presence_and_leave(client: WebSocketTestClient) -> None:
    alice = join(client, "alice")
    bob = join(client, "bob")
    joined = receive_json(alice)
    assert joined["type"] == "join"
    assert (joined["nick"], joined["room"]) == ("bob", "lobby")
    bob_id = joined["id"]
    # Alice's page answers the join; bob's page learns she was there first.
    alice.send(json.dumps({"type": "here", "to": bob_id}))
    present = receive_json(bob)
    assert present["type"] == "present"
    assert (present["nick"], present["room"]) == ("alice", "lobby")
    assert present["id"] != bob_id
    bob.close()
    left = receive_json(alice)
    assert left == {"type": "leave", "id": bob_id, "nick": "bob", "room": "lobby"}
    alice.close()


def test_join_is_not_sent_to_other_rooms(client: WebSocketTestClient) -> None:
    carol = join(client, "carol", room="kitchen")
    alice = join(client, "alice")
    say(carol, "marker")
    # Carol's next message is her own, not alice's join in another room.
    assert receive_json(carol)["text"] == "marker"
    alice.close()
    carol.close()


# -- messages -------------------------------------------------------------------


def test_message_reaches_the_room_and_only_the_room(client: WebSocketTestClient) -> None:
    alice = join(client, "alice")
    bob = join(client, "bob")
    carol = join(client, "carol", room="kitchen")
    assert receive_json(alice)["type"] == "join"  # bob
    say(alice, "hello <b>bob</b>")
    expected = {"type": "message", "from": "alice", "text": "hello <b>bob</b>", "room": "lobby"}
    for ws in (alice, bob):  # the sender gets its own message too
        message = receive_json(ws)
        alice_id = message.pop("id")
        assert message == expected
        assert alice_id
    say(bob, "hi alice")
    assert receive_json(alice)["text"] == "hi alice"
    assert receive_json(bob)["text"] == "hi alice"
    # Carol, in another room, got none of it: her next message is her own.
    say(carol, "anyone?")
    got = receive_json(carol)
    assert (got["from"], got["text"], got["room"]) == ("carol", "anyone?", "kitchen")
    for ws in (alice, bob, carol):
        ws.close()


def test_message_length_limit(client: WebSocketTestClient) -> None:
    alice = join(client, "alice")
    bob = join(client, "bob")
    receive_json(alice)  # bob's join
    longest = "é" * MAX_MESSAGE_LENGTH  # characters, not bytes
    say(alice, longest)
    assert receive_json(bob)["text"] == longest
    assert receive_json(alice)["text"] == longest
    say(alice, "x" * (MAX_MESSAGE_LENGTH + 1))
    error = receive_json(alice)
    assert error["type"] == "error"
    assert "too long" in error["text"]
    say(alice, "after")
    assert receive_json(bob)["text"] == "after"  # bob never saw the long one
    bob.close()
    alice.close()


def test_oversized_frame_closes_with_1009(client: WebSocketTestClient) -> None:
    alice = join(client, "alice")
    say(alice, "x" * 20000)  # over MAX_FRAME_SIZE before any JSON is parsed
    with pytest.raises(ConnectionClosed) as info:
        receive_json(alice)
    assert info.value.code == CloseCode.MESSAGE_TOO_BIG
    alice.close()


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("not json", "JSON object"),
        ("[1, 2]", "JSON object"),
        ('{"text": "no type"}', "JSON object"),
        ('{"type": "shout"}', "unknown message type"),
        ('{"type": "message", "text": "   "}', "needs some text"),
        ('{"type": "message", "text": 42}', "needs some text"),
    ],
)
def test_bad_messages_get_an_error(client: WebSocketTestClient, raw: str, problem: str) -> None:
    alice = join(client, "alice")
    alice.send(raw)
    error = receive_json(alice)
    assert error["type"] == "error"
    assert problem in error["text"]
    say(alice, "still here")  # the connection stays usable
    assert receive_json(alice)["text"] == "still here"
    alice.close()


def test_here_with_a_bogus_target_is_harmless(client: WebSocketTestClient) -> None:
    alice = join(client, "alice")
    for target in ("nobody.1", "", 7, "x" * 500):
        alice.send(json.dumps({"type": "here", "to": target}))
    say(alice, "fine")
    assert receive_json(alice)["text"] == "fine"
    alice.close()


# -- the page -------------------------------------------------------------------


def test_page_and_assets() -> None:
    http = app.test_client()
    page = http.get("/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'value="lobby"' in html
    assert "/static/chat.js" in html and "/static/chat.css" in html
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert "http://" not in html and "https://" not in html  # nothing from elsewhere
    assert 'value="kitchen"' in http.get("/?room=kitchen").get_data(as_text=True)
    hostile = http.get("/?room=%3Cscript%3Ex%3C/script%3E").get_data(as_text=True)
    assert "<script>x" not in hostile  # autoescaped
    assert 'value="lobby"' in http.get("/?room=" + "r" * 100).get_data(as_text=True)
    for asset in ("/static/chat.js", "/static/chat.css"):
        response = http.get(asset)
        assert response.status_code == 200, asset
        response.close()


def test_plain_get_on_the_websocket_route_is_400() -> None:
    response = app.test_client().get("/ws/lobby?nick=alice")
    assert response.status_code == 400
