"""Configuration mistakes: one exception type, naming the key; and one public surface."""

from __future__ import annotations

import inspect
from typing import Any, Dict

import pytest
from flask import Flask

from flask_websocket import ConfigurationError, HandshakeRejected, WebSocket, WebSocketError
from flask_websocket.config import CONFIG_DEFAULTS, check_config
from flask_websocket.hubs import create_hub
from flask_websocket.rooms import RoomRegistry
from flask_websocket.testing import WebSocketTestClient

BAD_VALUES = [
    ("WEBSOCKET_MAX_MESSAGE_SIZE", 0),
    ("WEBSOCKET_MAX_MESSAGE_SIZE", "1MB"),
    ("WEBSOCKET_PING_INTERVAL", -1),
    ("WEBSOCKET_PING_TIMEOUT", "20"),
    ("WEBSOCKET_CLOSE_TIMEOUT", None),
    ("WEBSOCKET_ALLOWED_ORIGINS", "https://example.com"),
    ("WEBSOCKET_ALLOWED_ORIGINS", [b"https://example.com"]),
    ("WEBSOCKET_RECEIVE_QUEUE_SIZE", True),
    ("WEBSOCKET_SEND_QUEUE_SIZE", 1.5),
    ("WEBSOCKET_SEND_QUEUE_OVERFLOW", "block"),
    ("WEBSOCKET_HUB_URL", "amqp://localhost"),
    ("WEBSOCKET_HUB_OPTIONS", ["name", "x"]),
    ("WEBSOCKET_MAX_CONNECTIONS", 0),
    ("WEBSOCKET_MAX_CONNECTIONS_PER_IP", "10"),
    ("WEBSOCKET_HISTORY", {"chat:*": {"size": 0}}),
    ("WEBSOCKET_RATE_LIMIT", 10),
    ("WEBSOCKET_RATE_LIMIT", (0, 5)),
    ("WEBSOCKET_RATE_LIMIT", (10, 2.5)),
    ("WEBSOCKET_RATE_LIMIT", (10, 20, 30)),
    ("WEBSOCKET_COMPRESSION", "deflate"),
    ("WEBSOCKET_COMPRESSION", True),
    ("WEBSOCKET_COMPRESSION_OPTIONS", {"server_max_window_bits": 8}),
    ("WEBSOCKET_COMPRESSION_OPTIONS", {"memLevel": 9}),
    ("WEBSOCKET_COMPRESSION_OPTIONS", {"client_no_context_takeover": "yes"}),
    ("WEBSOCKET_COMPRESSION_THRESHOLD", -1),
    ("WEBSOCKET_COMPRESSION_THRESHOLD", 1.5),
]


@pytest.mark.parametrize(("key", "value"), BAD_VALUES)
def test_a_bad_value_at_init_app_names_its_key(key: str, value: Any) -> None:
    app = Flask(__name__)
    app.config[key] = value
    with pytest.raises(ConfigurationError) as caught:
        WebSocket(app)
    assert caught.value.key == key
    assert str(caught.value).startswith(f"{key} is {value!r}: use ")


@pytest.mark.parametrize(("key", "value"), BAD_VALUES[:10] + BAD_VALUES[12:])
def test_a_bad_value_set_after_init_app_is_caught_at_the_first_connection(
    key: str, value: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The upgrade fails with a 500, and the app's log names the key."""
    app = Flask(__name__)
    websocket = WebSocket(app)

    @websocket.route("/echo")
    def echo(ws: Any) -> None:
        ws.send(ws.receive())

    app.config[key] = value
    with pytest.raises(HandshakeRejected) as caught:
        WebSocketTestClient(app).connect("/echo")
    assert caught.value.status == 500
    errors = [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert [e.key for e in errors if isinstance(e, ConfigurationError)] == [key]


@pytest.mark.parametrize("overflow", ["drop_oldest", "raise"])
def test_context_takeover_needs_the_disconnect_policy(overflow: str) -> None:
    app = Flask(__name__)
    app.config["WEBSOCKET_COMPRESSION_OPTIONS"] = {"server_no_context_takeover": False}
    app.config["WEBSOCKET_SEND_QUEUE_OVERFLOW"] = overflow
    with pytest.raises(ConfigurationError, match="would corrupt every later one") as caught:
        WebSocket(app)
    assert caught.value.key == "WEBSOCKET_COMPRESSION_OPTIONS"
    app.config["WEBSOCKET_SEND_QUEUE_OVERFLOW"] = "disconnect"
    WebSocket(app)  # accepted
    app = Flask(__name__)
    app.config["WEBSOCKET_SEND_QUEUE_OVERFLOW"] = overflow  # no context takeover: fine
    app.config["WEBSOCKET_COMPRESSION"] = "permessage-deflate"
    WebSocket(app)


def test_the_defaults_pass_and_every_key_is_checked() -> None:
    check_config(CONFIG_DEFAULTS)
    assert {key for key, _ in BAD_VALUES} == set(CONFIG_DEFAULTS)


@pytest.mark.parametrize(
    ("url", "options", "key"),
    [
        ("local://", {"send_timeout": 0}, "WEBSOCKET_HUB_OPTIONS['send_timeout']"),
        ("local://", {"name": "a/b"}, "WEBSOCKET_HUB_OPTIONS['name']"),
        ("local://", {"max_queued_bytes": "lots"}, "WEBSOCKET_HUB_OPTIONS['max_queued_bytes']"),
        ("redis://127.0.0.1:1/0", {"presence_ttl": -5}, "WEBSOCKET_HUB_OPTIONS['presence_ttl']"),
        ("nats://x", {}, "WEBSOCKET_HUB_URL"),
    ],
)
def test_a_bad_hub_option_names_the_option(url: str, options: Dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        create_hub(url, RoomRegistry(), {"name": "x", **options})
    assert caught.value.key == key and key in str(caught.value)


def test_every_exception_a_user_can_meet_is_importable_from_the_package() -> None:
    """Every WebSocketError subclass defined in the package is exported at its top."""
    import flask_websocket.emitter
    import flask_websocket.hubs.redis

    def subclasses(cls: type) -> set:
        found = set(cls.__subclasses__())
        for sub in list(found):
            found |= subclasses(sub)
        return found

    ours = {c for c in subclasses(WebSocketError) if c.__module__.startswith("flask_websocket")}
    exported = {getattr(flask_websocket, name) for name in flask_websocket.__all__}
    assert ours and ours <= exported, sorted(c.__name__ for c in ours - exported)
    assert all(
        inspect.isclass(getattr(flask_websocket, name)) or name == "__version__"
        for name in flask_websocket.__all__
    )
