"""Unit tests of the Flask extension, in-process (no uWSGI)."""

from __future__ import annotations

import logging
from typing import Any, List

import pytest
from flask import Blueprint, Flask, url_for
from werkzeug.debug import DebuggedApplication

from flask_websocket import (
    ConnectionClosed,
    HandshakeRejected,
    WebSocket,
    WebSocketConnection,
)
from flask_websocket.extension import CONFIG_DEFAULTS
from flask_websocket.testing import WebSocketTestClient


def make_app(**config: object) -> Flask:
    app = Flask(__name__)
    app.config.update(config)
    return app


def test_double_init_is_a_clear_error() -> None:
    app = make_app()
    websocket = WebSocket(app)
    with pytest.raises(RuntimeError, match="already initialised"):
        websocket.init_app(app)
    with pytest.raises(RuntimeError, match="already initialised"):
        WebSocket(app)


def test_config_defaults_are_set_without_overriding() -> None:
    app = make_app(WEBSOCKET_PING_INTERVAL=3)
    WebSocket(app)
    assert app.config["WEBSOCKET_PING_INTERVAL"] == 3
    for key, value in CONFIG_DEFAULTS.items():
        if key != "WEBSOCKET_PING_INTERVAL":
            assert app.config[key] == value
    assert app.config["WEBSOCKET_MAX_MESSAGE_SIZE"] == 2**20
    assert "websocket" in app.extensions


def test_factory_pattern_routes_declared_before_init_app() -> None:
    websocket = WebSocket()

    @websocket.route("/early")
    def early(ws: WebSocketConnection) -> None:
        ws.send("early")

    apps = [make_app(), make_app()]
    for app in apps:
        websocket.init_app(app)

    @websocket.route("/late")
    def late(ws: WebSocketConnection) -> None:
        ws.send("late")

    for app in apps:
        client = WebSocketTestClient(app)
        for path in ("/early", "/late"):
            with client.connect(path) as ws:
                assert ws.receive() == path[1:]


def test_rules_are_in_the_url_map_and_url_for_works() -> None:
    app = make_app()
    websocket = WebSocket(app)

    @websocket.route("/chat/<room>")
    def chat(ws: WebSocketConnection, room: str) -> None:
        ws.send(room)

    rules = [r for r in app.url_map.iter_rules() if r.endpoint == "chat"]
    assert sorted(r.websocket for r in rules) == [False, True]
    with app.test_request_context():
        assert url_for("chat", room="lobby").endswith("/chat/lobby")
    with WebSocketTestClient(app).connect("/chat/lobby") as ws:
        assert ws.receive() == "lobby"


def test_plain_get_gets_400_saying_an_upgrade_was_expected() -> None:
    app = make_app()
    websocket = WebSocket(app)

    @websocket.route("/ws")
    def handler(ws: WebSocketConnection) -> None:  # pragma: no cover - never upgraded
        ws.send("x")

    response = app.test_client().get("/ws")
    assert response.status_code == 400
    assert b"expected a WebSocket upgrade" in response.data


def test_blueprint_route() -> None:
    app = make_app()
    websocket = WebSocket(app)
    bp = Blueprint("api", __name__, url_prefix="/api")

    @websocket.route("/live", blueprint=bp)
    def live(ws: WebSocketConnection) -> None:
        ws.send(url_for("api.live"))

    app.register_blueprint(bp)
    with WebSocketTestClient(app).connect("/api/live") as ws:
        assert ws.receive().endswith("/api/live")  # type: ignore[union-attr]


def test_debug_wraps_in_debugged_application_and_routes_still_work() -> None:
    app = make_app()
    app.debug = True
    websocket = WebSocket(app)

    @websocket.route("/echo")
    def echo(ws: WebSocketConnection) -> None:
        ws.send(ws.receive())  # type: ignore[arg-type]

    assert isinstance(app.wsgi_app.wsgi_app, DebuggedApplication)  # type: ignore[attr-defined]
    with WebSocketTestClient(app).connect("/echo") as ws:
        ws.send("dbg")
        assert ws.receive() == "dbg"


def test_handler_returning_a_response_before_io_is_plain_http() -> None:
    app = make_app()
    websocket = WebSocket(app)

    @websocket.route("/maybe")
    def maybe(ws: WebSocketConnection) -> object:
        return "come back later", 503

    with pytest.raises(HandshakeRejected) as info:
        WebSocketTestClient(app).connect("/maybe")
    assert info.value.status == 503
    assert info.value.body == b"come back later"


def test_handler_returning_none_without_io_closes_1000() -> None:
    app = make_app()
    websocket = WebSocket(app)

    @websocket.route("/nothing")
    def nothing(ws: WebSocketConnection) -> None:
        return None

    ws = WebSocketTestClient(app).connect("/nothing")
    with pytest.raises(ConnectionClosed) as info:
        ws.receive()
    assert info.value.code == 1000
    ws.close()


def test_exception_closes_1011_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app()
    websocket = WebSocket(app)

    @websocket.route("/boom")
    def boom(ws: WebSocketConnection) -> None:
        ws.receive()
        raise KeyError("boom")

    with caplog.at_level(logging.ERROR), WebSocketTestClient(app).connect("/boom") as ws:
        ws.send("go")
        with pytest.raises(ConnectionClosed) as info:
            ws.receive()
    assert info.value.code == 1011
    assert any("Exception on /boom" in r.getMessage() for r in caplog.records)


def test_peer_leaving_ends_the_seed_loop_quietly(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app()
    websocket = WebSocket(app)
    seen: List[str] = []

    @websocket.route("/echo")
    def echo(ws: WebSocketConnection) -> None:
        while True:
            message = ws.receive()
            seen.append(message)  # type: ignore[arg-type]
            ws.send(message)  # type: ignore[arg-type]

    with caplog.at_level(logging.DEBUG), WebSocketTestClient(app).connect("/echo") as ws:
        ws.send("one")
        assert ws.receive() == "one"
    assert seen == ["one"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_connection_state_and_send_after_close() -> None:
    app = make_app()
    websocket = WebSocket(app)
    report: List[object] = []

    @websocket.route("/state")
    def state(ws: WebSocketConnection) -> None:
        report.append((ws.closed, ws.close_code, ws.close_reason))
        ws.send("hello")
        try:
            ws.receive()
        except ConnectionClosed as exc:
            report.append((type(exc).__name__, exc.code, exc.reason))
        report.append((ws.closed, ws.close_code, ws.close_reason))
        try:
            ws.send("too late")
        except ConnectionClosed as exc:
            report.append(("send raised", exc.code))

    client = WebSocketTestClient(app)
    with client.connect("/state") as ws:
        assert ws.receive() == "hello"
        ws.close(1001, "navigating away")
    assert report == [
        (False, None, None),
        ("ConnectionClosedOK", 1001, "navigating away"),
        (True, 1001, "navigating away"),
        ("send raised", 1001),
    ]


def test_receive_timeout_returns_none_and_recv_nb_distinguishes_empty() -> None:
    app = make_app()
    websocket = WebSocket(app)

    @websocket.route("/t")
    def t(ws: WebSocketConnection) -> None:
        ws.send(repr(ws.receive(timeout=0.05)))
        ws.send(repr(ws.recv_nb()))
        ws.send("ready")
        ws.send(repr(ws.receive(timeout=5)))

    with WebSocketTestClient(app).connect("/t") as ws:
        assert ws.receive() == "None"
        assert ws.receive() == "None"
        assert ws.receive() == "ready"
        ws.send("")
        assert ws.receive() == "''"


def test_iteration_stops_on_normal_close() -> None:
    app = make_app()
    websocket = WebSocket(app)
    received: List[object] = []

    @websocket.route("/it")
    def it(ws: WebSocketConnection) -> None:
        for message in ws:
            received.append(message)

    with WebSocketTestClient(app).connect("/it") as ws:
        ws.send("a")
        ws.send(b"b")
    assert received == ["a", b"b"]


def test_send_rejects_other_types() -> None:
    app = make_app()
    websocket = WebSocket(app)
    errors: List[str] = []

    @websocket.route("/types")
    def types(ws: WebSocketConnection) -> None:
        for bad in (123, None, ["x"]):
            try:
                ws.send(bad)  # type: ignore[arg-type]
            except TypeError as exc:
                errors.append(str(exc))
        try:
            ws.send_binary("text")  # type: ignore[arg-type]
        except TypeError as exc:
            errors.append(str(exc))
        ws.send_binary(bytearray(b"ok"))

    with WebSocketTestClient(app).connect("/types") as ws:
        assert ws.receive() == b"ok"
    assert len(errors) == 4 and "not int" in errors[0]


def test_outside_uwsgi_the_upgrade_fails_with_the_command_to_use(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Under Werkzeug's dev server (no uWSGI, no test socket) the view says what to run."""
    app = make_app()
    websocket = WebSocket(app)

    @websocket.route("/ws")
    def handler(ws: WebSocketConnection) -> None:
        ws.send("never")

    headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    with caplog.at_level(logging.ERROR):
        response = app.test_client().get("/ws", headers=headers)
    assert response.status_code == 500
    assert any(
        "websocket run" in r.getMessage() or "websocket run" in str(r.exc_info)
        for r in caplog.records
    )


def test_user_id_loader_send_to_user_and_close_user() -> None:
    """Each connection knows its user; a view reaches every connection of one user."""
    from flask import request as flask_request

    app = Flask(__name__)
    websocket = WebSocket(app)

    @websocket.user_id_loader
    def user() -> object:
        return flask_request.args.get("user")

    @websocket.route("/live")
    def live(ws: Any) -> None:
        ws.send(f"user={ws.user_id}")
        for message in ws:
            ws.send(message)

    client = WebSocketTestClient(app)
    tabs = [client.connect("/live", query_string="user=7") for _ in range(3)]
    other = client.connect("/live", query_string="user=8")
    anonymous = client.connect("/live")
    assert [t.receive() for t in tabs] == ["user=7"] * 3
    assert other.receive() == "user=8" and anonymous.receive() == "user=None"
    with app.app_context():
        websocket.send_to_user(7, "you have mail")  # an int id is the same user as "7"
    assert [t.receive() for t in tabs] == ["you have mail"] * 3
    with app.app_context():
        websocket.close_user("7", 4001, "logged out")
    for tab in tabs:
        with pytest.raises(ConnectionClosed) as closed:
            tab.receive()
        assert (closed.value.code, closed.value.reason) == (4001, "logged out")
    other.send("still here")
    assert other.receive() == "still here"
    with pytest.raises(ValueError), app.app_context():
        websocket.close_user("8", 1006)  # a code no server may send
    other.close()
    anonymous.close()
