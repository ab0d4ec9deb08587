"""Strict protocol behaviour on real uWSGI, seen from a raw socket (both front ends).

What the Autobahn|Testsuite calls strict (tests/conformance/): messages that
arrived valid before a bad frame are answered before the connection fails,
and invalid UTF-8 fails it with the bytes that bring it, not once its frame
is complete.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.test_uwsgi_hostile import (
    OP_CONT,
    OP_PING,
    OP_TEXT,
    build_frame,
    raw_connect,
)
from tests.uwsgi_server import UwsgiServer

pytestmark = pytest.mark.uwsgi


@pytest.fixture(scope="module", params=["http-socket", "http"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[UwsgiServer]:
    uwsgi = UwsgiServer(
        "tests.apps.features:app",
        mode=request.param,
        gevent=20,
        log_dir=tmp_path_factory.mktemp("uwsgi"),
    )
    uwsgi.start()
    yield uwsgi
    uwsgi.stop()
    assert uwsgi.crash_lines() == [], uwsgi.log()


RESERVED_OPCODE = 0x3


@pytest.mark.parametrize(
    "bad, code",
    [
        (build_frame(RESERVED_OPCODE), 1002),
        (build_frame(OP_TEXT, b"rsv", rsv=2), 1002),
        (build_frame(OP_CONT, b"nothing to continue", fin=False), 1002),
        (build_frame(OP_TEXT, b"\xff"), 1007),
    ],
    ids=["reserved-opcode", "rsv-bit", "stray-continuation", "invalid-utf8"],
)
def test_messages_before_a_bad_frame_are_echoed_first(
    server: UwsgiServer, bad: bytes, code: int
) -> None:
    """Autobahn 3.2, 4.1.3, 5.15: the echo first, then the close; the ping after is ignored."""
    ws = raw_connect(server.port, "/echo")
    try:
        ws.send(  # one write: the valid messages, the bad frame and a ping arrive together
            build_frame(OP_TEXT, b"one")
            + build_frame(OP_TEXT, b"tw", fin=False)
            + build_frame(OP_CONT, b"o")
            + bad
            + build_frame(OP_PING, b"not answered")
        )
        received_code, _, before = ws.read_close()
        assert before == [(OP_TEXT, b"one"), (OP_TEXT, b"two")]
        assert received_code == code
        assert ws.wait_eof() == b""
    finally:
        ws.close()


@pytest.mark.parametrize("fin", [True, False], ids=["final-frame", "first-fragment"])
def test_invalid_utf8_fails_before_its_frame_is_complete(server: UwsgiServer, fin: bool) -> None:
    """Autobahn 6.4.3: the frame's first part is valid, the second is not, the rest never comes."""
    valid = bytes.fromhex("cebae1bdb9cf83cebcceb5")  # κόσμε
    invalid = bytes.fromhex("f4908080")  # above U+10FFFF
    frame = build_frame(OP_TEXT, valid + invalid + b"x" * 1000, fin=fin)
    header = len(frame) - len(valid) - len(invalid) - 1000
    ws = raw_connect(server.port, "/echo")
    try:
        ws.send(build_frame(OP_TEXT, b"warm-up"))
        assert ws.read_frame() == (OP_TEXT, b"warm-up")
        ws.send(frame[: header + len(valid)])
        ws.send(frame[header + len(valid) : header + len(valid) + len(invalid)])
        code, reason, before = ws.read_close()  # the other 1000 bytes are never sent
        assert (code, before) == (1007, [])
        assert "invalid UTF-8" in reason
    finally:
        ws.close()
