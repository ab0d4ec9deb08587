"""The fence around websockets' internals: flask_websocket/_websockets_internals.py.

scripts/test.sh runs this file on the oldest and the newest websockets that
setup.cfg allows. If a websockets release changes an internal we rely on,
the first test here fails and names it.
"""

from __future__ import annotations

from typing import Any, Generator, List

import pytest
from websockets.frames import Frame
from websockets.protocol import Protocol
from websockets.streams import StreamReader
from websockets.version import version as websockets_version

from flask_websocket import _websockets_internals as internals
from flask_websocket.protocol import ServerProtocol
from tests.test_protocol import client_frame, open_server


def test_the_installed_websockets_meets_every_assumption() -> None:
    problems = internals.check()
    assert problems == [], (
        f"websockets {websockets_version} breaks what flask_websocket/_websockets_internals.py "
        "relies on:\n" + "\n".join(problems)
    )


def test_the_fast_path_is_taken() -> None:
    """Not a silent slow path: simple frames never reach the websockets parser."""
    server = open_server(max_message_size=1000)
    assert server.simple_frame_limit() == 1000

    def parser_called(data: bytes) -> None:
        raise AssertionError("the websockets parser was called for simple frames")

    server._ws.receive_data = parser_called  # type: ignore[method-assign]
    data = client_frame(0x1, b"text") + client_frame(0x2, b"binary" * 100)
    assert server.receive(data) == (["text", b"binary" * 100], ())


def test_an_idle_connection_keeps_no_parser() -> None:
    """No websockets parser after the handshake, nor once a pong was taken."""
    server = open_server()
    assert server._ws.parser is internals._NO_PARSER
    assert server.receive(client_frame(0x1, b"fast path")) == (["fast path"], ())
    assert server._ws.parser is internals._NO_PARSER
    messages, events = server.receive(client_frame(0xA, b"pong"))
    assert (messages, [type(e).__name__ for e in events]) == ([], ["PongReceived"])
    assert server._ws.parser is internals._NO_PARSER
    server.receive(client_frame(0x9, b"ping"))
    assert server.data_to_send() == [b"\x8a\x04ping"]  # answered by a parser started for it
    assert server._ws.parser is internals._NO_PARSER


def test_the_parser_stays_while_data_frames_need_it() -> None:
    """Not started again for every large or fragmented frame: kept after data frames."""
    server = open_server()
    big = b"x" * 70_000  # a 64-bit length: never the fast path
    assert server.receive_data(client_frame(0x2, big)) == [big]
    parser = server._ws.parser
    assert parser is not internals._NO_PARSER
    assert server.receive_data(client_frame(0x2, big)) == [big]
    assert server._ws.parser is parser
    server.receive(client_frame(0x1, b"frag", fin=False))
    server.receive(client_frame(0xA, b"pong"))  # between fragments: kept
    assert server._ws.parser is parser
    assert server.receive_data(client_frame(0x0, b"ment")) == ["fragment"]
    assert server._ws.parser is parser


def test_end_of_stream_without_a_parser_fails_the_connection() -> None:
    server = open_server()
    assert server._ws.parser is internals._NO_PARSER
    server.receive_eof()
    assert server.closed
    assert server.closed_exception().code == 1006


def test_no_parser_is_never_stepped_by_mistake() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        next(internals._NO_PARSER)


# -- the check notices when an assumption breaks ------------------------------------


def test_check_notices_a_parser_that_no_longer_parks_in_at_eof(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = StreamReader.at_eof

    def at_eof(self: StreamReader) -> Generator[None, None, bool]:
        return (yield from original(self))

    monkeypatch.setattr(StreamReader, "at_eof", at_eof)
    problems = internals.check()
    assert any(p.startswith("parser parked in StreamReader.at_eof") for p in problems), problems
    # ... and the fast path would have gone quiet after the first frame the
    # parser took: that is why it refuses to load.
    server = open_server()
    server.receive(client_frame(0x9, b"ping"))
    assert server.simple_frame_limit() == -1


def test_check_notices_a_renamed_state_attribute(monkeypatch: pytest.MonkeyPatch) -> None:
    def get_state(self: Protocol) -> Any:
        return self.__dict__["_status"]

    def set_state(self: Protocol, value: Any) -> None:
        self.__dict__["_status"] = value

    monkeypatch.setattr(Protocol, "state", property(get_state, set_state))
    problems = internals.check()
    assert any(p.startswith("Protocol._state: AttributeError") for p in problems), problems


def test_check_notices_state_the_fast_path_would_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Protocol.recv_frame

    def recv_frame(self: Protocol, frame: Frame) -> None:
        self.__dict__["frames_seen"] = self.__dict__.get("frames_seen", 0) + 1
        original(self, frame)

    monkeypatch.setattr(Protocol, "recv_frame", recv_frame)
    problems = internals.check()
    assert any(p.startswith("fast path skips no state") and "frames_seen" in p for p in problems), (
        problems
    )


def test_an_incompatible_websockets_is_refused_at_import(monkeypatch: pytest.MonkeyPatch) -> None:
    broken: List[str] = ["Protocol._state: AttributeError: '_state'"]
    monkeypatch.setattr(internals, "check", lambda: broken)
    with pytest.raises(ImportError) as info:
        internals._refuse_if_incompatible()
    message = str(info.value)
    assert f"websockets {websockets_version}" in message
    assert "Protocol._state: AttributeError" in message
    assert "websockets>=15.0.1,<18" in message


def test_the_declared_range_is_the_one_checked() -> None:
    """setup.cfg's range is the one the module names (and scripts/test.sh tests)."""
    import configparser
    from pathlib import Path

    config = configparser.ConfigParser()
    config.read(Path(__file__).resolve().parent.parent / "setup.cfg")
    requirements = config["options"]["install_requires"].split()
    assert internals.TESTED_RANGE in requirements
    low = internals.TESTED_RANGE.split(">=")[1].split(",")[0]
    assert internals.CHECKED_ON[0] == low


def test_server_protocol_uses_the_fenced_classes() -> None:
    server = ServerProtocol()
    assert isinstance(server._ws, internals.ValidatingServerProtocol)
