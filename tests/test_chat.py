"""The chat example's server logic, in-process (``WebSocketTestClient``, no uWSGI).

Each test has rooms of its own: the app's rooms keep a history (the memory
hub's, for as long as the process runs), which a page that joins is given.
"""

from __future__ import annotations

import itertools
import json
import urllib.parse
from typing import Any, Dict, Iterator, List

import pytest

from examples.chat import (
    MAX_MESSAGE_LENGTH,
    MAX_NICK_LENGTH,
    MAX_ROOM_LENGTH,
    app,
    nick_problem,
    room_problem,
    stream_room,
)
from flask_websocket import CloseCode, ConnectionClosed
from flask_websocket.testing import TestConnection, WebSocketTestClient


@pytest.fixture(params=["gevent", "threads"])
def client(request: pytest.FixtureRequest) -> Iterator[WebSocketTestClient]:
    """A test client for the chat app (its connections share the memory hub),
    with the handlers under gevent, then under the threads backend."""
    yield WebSocketTestClient(app, timeout=5.0, model=request.param)


_rooms = itertools.count()


@pytest.fixture
def room() -> str:
    """A room no other test used: its history is empty."""
    return f"lobby-{next(_rooms)}"


@pytest.fixture
def kitchen() -> str:
    """A second room of the test's own."""
    return f"kitchen-{next(_rooms)}"


def receive_json(ws: TestConnection) -> Dict[str, Any]:
    """The next message, parsed; it must be a JSON object."""
    message = ws.receive()
    assert isinstance(message, str), message
    data = json.loads(message)
    assert isinstance(data, dict)
    return data


def join(client: WebSocketTestClient, nick: str, room: str) -> TestConnection:
    """Connect as ``nick`` to ``room`` and read the welcome (always the first message)."""
    ws = client.connect(f"/ws/{room}", query_string=f"nick={nick}")
    welcome = receive_json(ws)
    assert welcome["type"] == "welcome"
    assert welcome["nick"] == nick
    assert welcome["room"] == room
    assert welcome["id"]
    return ws


def receive_next(ws: TestConnection, kind: str = "message") -> Dict[str, Any]:
    """The next message of type ``kind``, skipping join notices.

    A member that joined just before may still be announcing itself when the
    next one connects (under threads its handler runs when it runs): the
    newcomer may get its ``join`` too, which the page would simply list.
    """
    for _ in range(10):  # bounded
        data = receive_json(ws)
        if data["type"] != "join" or kind == "join":
            assert data["type"] == kind, data
            return data
    raise AssertionError(f"no {kind!r} after 10 join notices")


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


def test_join_presence_and_leave(client: WebSocketTestClient, room: str) -> None:
    alice = join(client, "alice", room)
    bob = join(client, "bob", room)
    joined = receive_json(alice)
    assert joined["type"] == "join"
    assert (joined["nick"], joined["room"]) == ("bob", room)
    bob_id = joined["id"]
    # Alice's page answers the join; bob's page learns she was there first.
    alice.send(json.dumps({"type": "here", "to": bob_id}))
    present = receive_next(bob, "present")
    assert (present["nick"], present["room"]) == ("alice", room)
    assert present["id"] != bob_id
    bob.close()
    left = receive_json(alice)
    assert left == {"type": "leave", "id": bob_id, "nick": "bob", "room": room}
    alice.close()


def test_join_is_not_sent_to_other_rooms(
    client: WebSocketTestClient, room: str, kitchen: str
) -> None:
    carol = join(client, "carol", kitchen)
    alice = join(client, "alice", room)
    say(carol, "marker")
    # Carol's next message is her own, not alice's join in another room.
    assert receive_json(carol)["text"] == "marker"
    alice.close()
    carol.close()


# -- messages -------------------------------------------------------------------


def test_message_reaches_the_room_and_only_the_room(
    client: WebSocketTestClient, room: str, kitchen: str
) -> None:
    alice = join(client, "alice", room)
    bob = join(client, "bob", room)
    carol = join(client, "carol", kitchen)
    assert receive_json(alice)["type"] == "join"  # bob
    say(alice, "hello <b>bob</b>")
    expected = {"type": "message", "from": "alice", "text": "hello <b>bob</b>", "room": room}
    for ws in (alice, bob):  # the sender gets its own message too
        message = receive_next(ws)
        alice_id = message.pop("id")
        sent_at = message.pop("time")
        assert message == expected
        assert alice_id
        assert isinstance(sent_at, int) and sent_at > 1_700_000_000_000  # ms since 1970
    say(bob, "hi alice")
    assert receive_next(alice)["text"] == "hi alice"
    assert receive_next(bob)["text"] == "hi alice"
    # Carol, in another room, got none of it: her next message is her own.
    say(carol, "anyone?")
    got = receive_json(carol)
    assert (got["from"], got["text"], got["room"]) == ("carol", "anyone?", kitchen)
    for ws in (alice, bob, carol):
        ws.close()


def test_message_length_limit(client: WebSocketTestClient, room: str) -> None:
    alice = join(client, "alice", room)
    bob = join(client, "bob", room)
    receive_json(alice)  # bob's join
    longest = "é" * MAX_MESSAGE_LENGTH  # characters, not bytes
    say(alice, longest)
    assert receive_next(bob)["text"] == longest
    assert receive_next(alice)["text"] == longest
    say(alice, "x" * (MAX_MESSAGE_LENGTH + 1))
    error = receive_json(alice)
    assert error["type"] == "error"
    assert "too long" in error["text"]
    say(alice, "after")
    assert receive_next(bob)["text"] == "after"  # bob never saw the long one
    bob.close()
    alice.close()


def test_oversized_frame_closes_with_1009(client: WebSocketTestClient, room: str) -> None:
    alice = join(client, "alice", room)
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
def test_bad_messages_get_an_error(
    client: WebSocketTestClient, room: str, raw: str, problem: str
) -> None:
    alice = join(client, "alice", room)
    alice.send(raw)
    error = receive_json(alice)
    assert error["type"] == "error"
    assert problem in error["text"]
    say(alice, "still here")  # the connection stays usable
    assert receive_json(alice)["text"] == "still here"
    alice.close()


def test_here_with_a_bogus_target_is_harmless(client: WebSocketTestClient, room: str) -> None:
    alice = join(client, "alice", room)
    for target in ("nobody.1", "", 7, "x" * 500):
        alice.send(json.dumps({"type": "here", "to": target}))
    say(alice, "fine")
    assert receive_json(alice)["text"] == "fine"
    alice.close()


# -- history ---------------------------------------------------------------------


def test_a_page_that_joins_gets_the_rooms_last_messages_and_no_old_presence(
    client: WebSocketTestClient, room: str
) -> None:
    alice = join(client, "alice", room)
    bob = join(client, "bob", room)
    assert receive_json(alice)["type"] == "join"  # bob
    for text in ("one", "two", "three"):
        say(alice, text)
    for ws in (alice, bob):
        assert [receive_next(ws)["text"] for _ in range(3)] == ["one", "two", "three"]
    bob.close()
    assert receive_json(alice)["type"] == "leave"
    # Carol comes later: after her welcome, the conversation so far, in order;
    # none of the presence notices (bob's join and leave are not history).
    carol = join(client, "carol", room)
    replayed = [receive_json(carol) for _ in range(3)]
    assert [(m["type"], m["from"], m["text"]) for m in replayed] == [
        ("message", "alice", text) for text in ("one", "two", "three")
    ]
    say(carol, "marker")
    assert receive_json(carol)["text"] == "marker"  # nothing else was queued before it
    alice.close()
    carol.close()


def fws_stream(ws: TestConnection, count: int) -> List[Dict[str, Any]]:
    """The next ``count`` stream messages of a ``fws.v1`` connection (others skipped)."""
    got: List[Dict[str, Any]] = []
    for _ in range(count * 3 + 10):  # bounded: presence notices come between
        if len(got) == count:
            break
        envelope = receive_json(ws)
        if "r" in envelope:
            got.append(envelope)
    assert len(got) == count
    return got


def test_a_page_that_comes_back_gets_what_it_missed_once(
    client: WebSocketTestClient, room: str
) -> None:
    """What the JavaScript client does, by hand: fws.v1, then its position on reconnecting."""
    page = client.connect(f"/ws/{room}", query_string="nick=alice", subprotocols=["fws.v1"])
    assert page.subprotocol == "fws.v1"
    assert json.loads(receive_json(page)["d"])["type"] == "welcome"
    first = receive_json(page)  # the join's answer: the room's position
    assert (first["j"], first["recovered"]) == (stream_room(room), True)
    bob = join(client, "bob", room)
    say(bob, "before")
    (before,) = fws_stream(page, 1)
    assert json.loads(before["d"])["text"] == "before"
    page.close()
    for text in ("while away 1", "while away 2"):
        say(bob, text)
    # Both are in the room's history once bob has them back.
    texts: List[str] = []
    for _ in range(10):  # bounded: his "before", alice's leave, then these
        message = receive_json(bob)
        if message["type"] == "message":
            texts.append(message["text"])
        if texts[-1:] == ["while away 2"]:
            break
    assert texts == ["before", "while away 1", "while away 2"]
    since = f"{stream_room(room)}:{before['e']}:{before['o']}"
    query = urllib.parse.urlencode({"nick": "alice", "fws_since": since})
    back = client.connect(f"/ws/{room}", query_string=query, subprotocols=["fws.v1"])
    assert json.loads(receive_json(back)["d"])["type"] == "welcome"
    joined = receive_json(back)
    assert (joined["j"], joined["recovered"]) == (stream_room(room), True)
    missed = fws_stream(back, 2)
    assert [json.loads(m["d"])["text"] for m in missed] == ["while away 1", "while away 2"]
    assert [m["o"] for m in missed] == [before["o"] + 1, before["o"] + 2]
    say(bob, "live")
    assert [json.loads(m["d"])["text"] for m in fws_stream(back, 1)] == ["live"]
    back.close()
    bob.close()


# -- the page -------------------------------------------------------------------


def test_page_and_assets() -> None:
    http = app.test_client()
    page = http.get("/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'value="lobby"' in html
    assert "/static/chat.js" in html and "/static/chat.css" in html
    assert html.index("/_websocket/client.js") < html.index("/static/chat.js")
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert "http://" not in html and "https://" not in html  # nothing from elsewhere
    assert 'value="kitchen"' in http.get("/?room=kitchen").get_data(as_text=True)
    hostile = http.get("/?room=%3Cscript%3Ex%3C/script%3E").get_data(as_text=True)
    assert "<script>x" not in hostile  # autoescaped
    assert 'value="lobby"' in http.get("/?room=" + "r" * 100).get_data(as_text=True)
    for asset in ("/static/chat.js", "/static/chat.css", "/_websocket/client.js"):
        response = http.get(asset)
        assert response.status_code == 200, asset
        response.close()


def test_plain_get_on_the_websocket_route_is_400() -> None:
    response = app.test_client().get("/ws/lobby?nick=alice")
    assert response.status_code == 400
