"""Tests of docs/examples/handlers.py, as docs/testing.rst shows them.

pytest collects this file (``testpaths`` in pyproject.toml); its directory
is on ``sys.path``, so ``handlers`` is docs/examples/handlers.py.
"""

import pytest
from handlers import app

from flask_websocket import ConnectionClosedOK, HandshakeRejected
from flask_websocket.testing import WebSocketTestClient


@pytest.fixture
def client():
    return WebSocketTestClient(app)


def test_echo_keeps_each_message_type(client):
    with client.connect("/echo") as ws:
        ws.send("hello")
        assert ws.receive() == "hello"
        ws.send(b"\x00\xff")
        assert ws.receive() == b"\x00\xff"


def test_countdown_ends_with_a_close_reason(client):
    with client.connect("/countdown") as ws:
        assert [ws.receive() for _ in range(3)] == ["3", "2", "1"]
        with pytest.raises(ConnectionClosedOK):
            ws.receive()
        assert (ws.close_code, ws.close_reason) == (1000, "lift-off")


def test_private_needs_a_token(client):
    with pytest.raises(HandshakeRejected) as refused:
        client.connect("/private")
    assert refused.value.status == 403
    with client.connect("/private", query_string="token=let-me-in") as ws:
        assert ws.receive() == "welcome, guest"


def test_chat_picks_its_favourite_of_the_subprotocols_offered(client):
    with client.connect("/chat", subprotocols=["chat.v1", "chat.v2"]) as ws:
        assert ws.subprotocol == "chat.v2"  # the route's order decides
        assert ws.receive() == "speaking chat.v2"
