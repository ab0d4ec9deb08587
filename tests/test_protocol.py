"""Unit tests of the sans-I/O protocol adapter: no sockets, no uWSGI."""

from __future__ import annotations

import base64
import os
import random
import struct
from typing import List, Optional, Tuple

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import InvalidHeader
from websockets.frames import Close, Frame, Opcode
from websockets.streams import StreamReader

from flask_websocket.close_codes import CloseCode
from flask_websocket.exceptions import ConnectionClosedError, ConnectionClosedOK
from flask_websocket.protocol import (
    OP_BINARY,
    OP_TEXT,
    ClientProtocol,
    CloseStarted,
    PongReceived,
    ServerProtocol,
    encode_frame,
    request_headers_from_environ,
)


def handshake_headers(**extra: str) -> Headers:
    headers = Headers()
    headers["Upgrade"] = "websocket"
    headers["Connection"] = "Upgrade"
    headers["Sec-WebSocket-Key"] = base64.b64encode(os.urandom(16)).decode()
    headers["Sec-WebSocket-Version"] = "13"
    for key, value in extra.items():
        headers[key.replace("_", "-")] = value
    return headers


def open_server(**kwargs: object) -> ServerProtocol:
    server = ServerProtocol(**kwargs)  # type: ignore[arg-type]
    assert server.accept("GET", "/", handshake_headers()).accepted
    return server


def client_frame(opcode: int, payload: bytes, fin: bool = True, rsv1: bool = False) -> bytes:
    """A masked client frame, built by hand so that it can break the rules."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first, 0x80 | length)
    elif length < 65536:
        header = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, length)
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


def parse_server_frames(data: List[bytes]) -> List[Frame]:
    """Parse what a server wrote, with websockets' own (client-side) parser."""
    reader = StreamReader()
    for chunk in data:
        if chunk:
            reader.feed_data(chunk)
    frames = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=False)
        try:
            next(parser)
        except StopIteration as done:
            frames.append(done.value)
        else:  # pragma: no cover - incomplete frame
            raise AssertionError("incomplete frame")
    return frames


def close_code_sent(server: ServerProtocol) -> Optional[int]:
    frames = parse_server_frames(server.data_to_send())
    closes = [Close.parse(f.data) for f in frames if f.opcode is Opcode.CLOSE]
    return closes[0].code if closes else None


# -- encode_frame -------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
def test_encode_frame_matches_websockets(size: int, opcode: int) -> None:
    payload = (b"a" * size) if opcode == OP_TEXT else os.urandom(size)
    ours = encode_frame(opcode, payload)
    theirs = Frame(Opcode(opcode), payload).serialize(mask=False)
    assert ours == theirs
    (frame,) = parse_server_frames([ours])
    assert frame.fin and frame.opcode == Opcode(opcode) and frame.data == payload


# -- handshake ------------------------------------------------------------------


def test_accept_returns_101_with_accept_key() -> None:
    headers = handshake_headers()
    server = ServerProtocol()
    key_headers = Headers()
    for name, value in headers.raw_items():
        if name != "Sec-WebSocket-Key":
            key_headers[name] = value
    key_headers["Sec-WebSocket-Key"] = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's example
    response = server.accept("GET", "/", key_headers)
    assert response.status == 101
    assert ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") in response.headers
    assert server.open


@pytest.mark.parametrize(
    "change, status, text",
    [
        ({"Sec-WebSocket-Key": None}, 400, b"Sec-WebSocket-Key"),
        ({"Sec-WebSocket-Key": "short"}, 400, b"Sec-WebSocket-Key"),
        ({"Upgrade": None}, 426, b"Upgrade"),
        ({"Sec-WebSocket-Version": "8"}, 426, b"version 13"),
    ],
)
def test_bad_handshakes_get_http_errors(change: dict, status: int, text: bytes) -> None:
    headers = Headers()
    for name, value in handshake_headers().raw_items():
        if name in change:
            if change[name] is not None:
                headers[name] = change[name]
        else:
            headers[name] = value
    response = ServerProtocol().accept("GET", "/", headers)
    assert response.status == status
    assert text in response.body
    if status == 426 and "Sec-WebSocket-Version" in change:
        assert ("Sec-WebSocket-Version", "13") in response.headers


def test_handshake_with_another_method_gets_405() -> None:
    """Only GET opens a connection (websockets 17 checks it; on 15 we do)."""
    server = ServerProtocol()
    response = server.accept("POST", "/", handshake_headers())
    assert response.status == 405
    assert ("Allow", "GET") in response.headers
    assert b"unsupported HTTP method: POST" in response.body
    assert not server.open


def test_origin_check() -> None:
    origins = ["http://good.example"]
    bad = ServerProtocol(origins=origins).accept(
        "GET", "/", handshake_headers(Origin="http://evil.example")
    )
    assert bad.status == 403
    good = ServerProtocol(origins=origins).accept(
        "GET", "/", handshake_headers(Origin="http://good.example")
    )
    assert good.accepted


def test_subprotocol_is_chosen_from_the_offer() -> None:
    server = ServerProtocol(subprotocols=["chat.v2", "chat.v1"])
    response = server.accept("GET", "/", handshake_headers(Sec_WebSocket_Protocol="chat.v1"))
    assert response.accepted
    assert server.subprotocol == "chat.v1"
    assert ("Sec-WebSocket-Protocol", "chat.v1") in response.headers


def test_request_headers_from_environ() -> None:
    headers = request_headers_from_environ(
        {"HTTP_SEC_WEBSOCKET_KEY": "abc", "HTTP_HOST": "x", "CONTENT_TYPE": "text/plain"}
    )
    assert headers["Sec-Websocket-Key"] == "abc"
    assert headers["Host"] == "x"
    assert headers["Content-Type"] == "text/plain"


# -- messages -------------------------------------------------------------------


def test_text_and_binary_keep_their_type() -> None:
    server = open_server()
    data = client_frame(OP_TEXT, "héllo".encode()) + client_frame(OP_BINARY, b"\x00\xff")
    assert server.receive_data(data) == ["héllo", b"\x00\xff"]
    assert server.receive_data(client_frame(OP_TEXT, b"")) == [""]
    assert server.receive_data(client_frame(OP_BINARY, b"")) == [b""]


def test_fragments_are_reassembled_with_utf8_split_across_them() -> None:
    server = open_server()
    encoded = "日本語".encode()
    data = (
        client_frame(OP_TEXT, encoded[:4], fin=False)
        + client_frame(Opcode.PING, b"p")  # control frames may come between fragments
        + client_frame(Opcode.CONT, encoded[4:7], fin=False)
        + client_frame(Opcode.CONT, encoded[7:], fin=True)
    )
    assert server.receive_data(data) == ["日本語"]
    frames = parse_server_frames(server.data_to_send())
    assert [(f.opcode, f.data) for f in frames] == [(Opcode.PONG, b"p")]


def test_binary_fragments() -> None:
    server = open_server()
    data = client_frame(OP_BINARY, b"ab", fin=False) + client_frame(Opcode.CONT, b"cd")
    assert server.receive_data(data) == [b"abcd"]


def test_bytes_fed_one_at_a_time() -> None:
    server = open_server()
    messages = []
    for byte in client_frame(OP_TEXT, b"slow"):
        messages += server.receive_data(bytes([byte]))
    assert messages == ["slow"]


def test_ping_answered_with_same_payload() -> None:
    server = open_server()
    assert server.receive_data(client_frame(Opcode.PING, b"payload")) == []
    (pong,) = parse_server_frames(server.data_to_send())
    assert pong.opcode is Opcode.PONG and pong.data == b"payload"


# -- events: what the connection acts on besides messages --------------------------


def test_data_frames_bring_no_events() -> None:
    server = open_server()
    data = client_frame(OP_TEXT, b"a") + client_frame(OP_BINARY, b"b")
    assert server.receive(data) == (["a", b"b"], ())
    assert server.receive(client_frame(OP_TEXT, b"c", fin=False)) == ([], [])


def test_pongs_are_events_in_order() -> None:
    server = open_server()
    data = (
        client_frame(Opcode.PONG, b"1234")
        + client_frame(OP_TEXT, b"between")
        + client_frame(Opcode.PONG, b"")
    )
    messages, events = server.receive(data)
    assert messages == ["between"]
    assert list(events) == [PongReceived(b"1234"), PongReceived(b"")]
    assert not server.has_output()  # a pong is not answered


def test_a_close_frame_starts_closing_once() -> None:
    server = open_server()
    messages, events = server.receive(
        client_frame(OP_TEXT, b"last") + client_frame(Opcode.CLOSE, Close(1001, "").serialize())
    )
    assert messages == ["last"]
    assert list(events) == [CloseStarted(1001, by_peer=True)]
    assert server.has_output()  # the echo and EOF
    assert server.data_to_send()[-1] == b""
    # Whatever comes while closing is discarded, and reported no more.
    assert server.receive(client_frame(Opcode.PONG, b"late")) == ([], [])


@pytest.mark.parametrize(
    "data, code",
    [
        (client_frame(OP_TEXT, b"\xff"), 1007),  # the fast path's own check
        (client_frame(OP_TEXT, b"a", fin=False) + client_frame(OP_TEXT, b"b"), 1002),
        (client_frame(OP_BINARY, b"x" * 11), 1009),
    ],
    ids=["invalid-utf8-fast-path", "interleaved-fragments", "too-big"],
)
def test_a_violation_starts_closing_with_its_code(data: bytes, code: int) -> None:
    server = open_server(max_message_size=10)
    messages, events = server.receive(data)
    assert messages == []
    assert list(events) == [CloseStarted(code, by_peer=False)]
    assert close_code_sent(server) == code


def test_closing_from_our_side_is_not_an_event() -> None:
    server = open_server()
    server.send_close(1000, "bye")
    server.data_to_send()
    _, events = server.receive(client_frame(Opcode.CLOSE, Close(1000, "bye").serialize()))
    assert list(events) == []  # the connection started closing itself
    assert server.data_to_send() == [b""]


def test_close_is_echoed_and_reported_ok() -> None:
    server = open_server()
    server.receive_data(client_frame(Opcode.CLOSE, Close(1000, "done").serialize()))
    assert not server.open
    out = server.data_to_send()
    assert out[-1] == b""  # server half-closes after echoing
    (echo,) = parse_server_frames(out)
    assert Close.parse(echo.data) == Close(1000, "done")
    exc = server.closed_exception()
    assert isinstance(exc, ConnectionClosedOK) and (exc.code, exc.reason) == (1000, "done")
    server.receive_eof()
    assert server.closed


def test_application_close_code_is_an_error_close() -> None:
    server = open_server()
    server.receive_data(client_frame(Opcode.CLOSE, Close(4001, "bye").serialize()))
    exc = server.closed_exception()
    assert isinstance(exc, ConnectionClosedError) and (exc.code, exc.reason) == (4001, "bye")


def test_eof_without_close_is_1006() -> None:
    server = open_server()
    server.receive_eof()
    exc = server.closed_exception()
    assert isinstance(exc, ConnectionClosedError) and exc.code == CloseCode.ABNORMAL_CLOSURE


@pytest.mark.parametrize(
    "data, code",
    [
        (client_frame(Opcode.CONT, b"stray"), 1002),
        (client_frame(OP_TEXT, b"a", fin=False) + client_frame(OP_TEXT, b"b"), 1002),
        (Frame(Opcode.TEXT, b"unmasked").serialize(mask=False), 1002),
        (bytes([0x83, 0x80]) + os.urandom(4), 1002),  # reserved opcode 3
        (client_frame(OP_TEXT, b"x", rsv1=True), 1002),
        (client_frame(OP_TEXT, b"\xff\xfe"), 1007),
        (client_frame(OP_TEXT, b"ok\xe6", fin=False) + client_frame(Opcode.CONT, b"\x97"), 1007),
        (client_frame(OP_TEXT, b"\xce\xba\xe1\xbd\xb9\xcf", fin=False), None),  # incomplete: fine
        (client_frame(Opcode.CLOSE, struct.pack("!H", 1000) + b"\xff"), 1007),
        (client_frame(Opcode.CLOSE, struct.pack("!H", 999)), 1002),
        (client_frame(Opcode.PING, b"x" * 126), 1002),
    ],
    ids=[
        "stray-continuation",
        "interleaved-fragments",
        "unmasked",
        "reserved-opcode",
        "rsv1",
        "invalid-utf8",
        "invalid-utf8-across-fragments",
        "incomplete-utf8-in-first-fragment",
        "invalid-utf8-close-reason",
        "invalid-close-code",
        "control-frame-too-long",
    ],
)
def test_violations_close_with_the_right_code(data: bytes, code: Optional[int]) -> None:
    server = open_server()
    assert server.receive_data(data) == []
    if code is None:
        assert server.open
        return
    assert close_code_sent(server) == code
    assert not server.open
    # After failing, further input is discarded rather than parsed.
    assert server.receive_data(client_frame(OP_TEXT, b"after")) == []


def test_message_size_limit_closes_1009() -> None:
    server = open_server(max_message_size=10)
    assert server.receive_data(client_frame(OP_BINARY, b"x" * 10)) == [b"x" * 10]
    server.receive_data(client_frame(OP_BINARY, b"x" * 11))
    assert close_code_sent(server) == 1009


def test_message_size_limit_counts_fragments() -> None:
    server = open_server(max_message_size=10)
    data = client_frame(OP_BINARY, b"x" * 6, fin=False) + client_frame(Opcode.CONT, b"x" * 6)
    server.receive_data(data)
    assert close_code_sent(server) == 1009


def test_no_size_limit() -> None:
    server = open_server(max_message_size=None)
    assert server.receive_data(client_frame(OP_BINARY, b"x" * 3_000_000)) == [b"x" * 3_000_000]


def test_send_close_truncates_long_reason() -> None:
    server = open_server()
    server.send_close(1000, "é" * 100)
    (frame,) = parse_server_frames(server.data_to_send())
    close = Close.parse(frame.data)
    assert close.code == 1000 and len(close.reason.encode()) <= 123


def test_client_protocol_round_trip_with_server() -> None:
    server = open_server()
    client = ClientProtocol()
    client.send_message("hi")
    client.send_message(b"\x01")
    messages: List[object] = []
    for chunk in client.data_to_send():
        messages += server.receive_data(chunk)
    assert messages == ["hi", b"\x01"]
    assert client.receive_data(encode_frame(OP_TEXT, b"back")) == ["back"]


def test_close_between_fragments_is_a_normal_close() -> None:
    """Autobahn 7.1.5: text fragment, close 1000, continuation: echo 1000."""
    server = open_server()
    data = (
        client_frame(OP_TEXT, b"fragment1", fin=False)
        + client_frame(Opcode.CLOSE, Close(1000, "").serialize())
        + client_frame(Opcode.CONT, b"fragment2")
    )
    assert server.receive_data(data) == []
    assert close_code_sent(server) == 1000
    assert isinstance(server.closed_exception(), ConnectionClosedOK)


# -- the fast path for simple frames agrees with the websockets parser ----------


def _random_stream(rng: random.Random) -> bytes:
    pieces = []
    for _ in range(rng.randint(1, 12)):
        kind = rng.random()
        size = rng.choice([0, 1, 5, 125, 126, 127, 300, 65535, 65536, 70000])
        if kind < 0.35:
            text = "é" * (size // 2)
            pieces.append(client_frame(OP_TEXT, text.encode()))
        elif kind < 0.6:
            pieces.append(client_frame(OP_BINARY, rng.randbytes(size)))
        elif kind < 0.7:
            pieces.append(client_frame(Opcode.PING, rng.randbytes(min(size, 125))))
        elif kind < 0.8:
            first = "日本".encode()
            pieces.append(client_frame(OP_TEXT, first[:4], fin=False))
            pieces.append(client_frame(Opcode.CONT, first[4:] + b"x" * size))
        elif kind < 0.85:
            pieces.append(client_frame(OP_TEXT, b"ok\xff"))  # invalid UTF-8
        elif kind < 0.9:
            pieces.append(Frame(Opcode.BINARY, b"unmasked").serialize(mask=False))
        elif kind < 0.95:
            pieces.append(client_frame(OP_BINARY, b"r", rsv1=True))
        else:
            pieces.append(client_frame(Opcode.CLOSE, Close(1000, "").serialize()))
    return b"".join(pieces)


def _feed(server: ServerProtocol, stream: bytes, cuts: List[int]) -> tuple:
    messages: List[object] = []
    events: List[object] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        new_messages, new_events = server.receive(stream[start:cut])
        messages += new_messages
        events += new_events
        start = cut
    frames = parse_server_frames(server.data_to_send())
    closes = [Close.parse(f.data) for f in frames if f.opcode is Opcode.CLOSE]
    if closes:
        # Once failing, the fast path stops at the bad frame; the websockets
        # parser has already answered pings that came after it. Compare what
        # matters then: messages before the failure and the close code.
        return messages, events, closes[0].code, server.open
    return messages, events, [(f.opcode, bytes(f.data)) for f in frames], server.open


@pytest.mark.parametrize("seed", range(300))
def test_fast_path_agrees_with_the_websockets_parser(seed: int) -> None:
    rng = random.Random(seed)
    stream = _random_stream(rng)
    cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randint(0, 6))))
    fast = open_server(max_message_size=65536)
    slow = open_server(max_message_size=65536)
    slow._fast_path = False
    assert _feed(fast, stream, cuts) == _feed(slow, stream, cuts)


# -- invalid UTF-8 fails with the bytes that bring it, even inside a frame ------


def _chops(frame: bytes, *sizes: int) -> List[bytes]:
    """``frame`` cut into pieces of ``sizes`` bytes, and the rest."""
    pieces, start = [], 0
    for size in sizes:
        pieces.append(frame[start : start + size])
        start += size
    return [*pieces, frame[start:]]


def _events_per_chop(server: ServerProtocol, chops: List[bytes]) -> List[list]:
    return [list(server.receive(chop)[1]) for chop in chops]


FAILED_1007 = [CloseStarted(1007, by_peer=False)]


@pytest.mark.parametrize(
    "parts",
    [
        # Autobahn 6.4.3 and 6.4.4: a first fragment sent in chops (header, part 1, part 2...)
        [b"", bytes.fromhex("cebae1bdb9cf83cebcceb5"), bytes.fromhex("f4908080"), b"edited"],
        [b"", bytes.fromhex("cebae1bdb9cf83cebcceb5f4"), bytes.fromhex("90"), b""],
    ],
    ids=["6.4.3", "6.4.4"],
)
def test_invalid_utf8_inside_a_fragment_fails_at_once(parts: List[bytes]) -> None:
    server = open_server()
    frame = client_frame(OP_TEXT, b"".join(parts), fin=False)
    header = len(frame) - len(b"".join(parts))
    chops = _chops(frame, header, len(parts[1]), len(parts[2]))
    events = _events_per_chop(server, chops[:3])
    assert events == [[], [], FAILED_1007]  # with the bad bytes, not at the frame's end
    assert close_code_sent(server) == 1007


@pytest.mark.parametrize("size", [20, 300, 70000], ids=["7-bit", "16-bit", "64-bit"])
def test_invalid_utf8_inside_a_final_frame_fails_at_once(size: int) -> None:
    server = open_server()
    payload = "é".encode() * (size // 2) + b"\xff" + b"x" * 50
    frame = client_frame(OP_TEXT, payload)
    bad_at = len(frame) - 51  # the \xff
    chops = _chops(frame, 1, bad_at - 1 - 3, 3, 1)  # a cut header, then up to the bad byte
    events = _events_per_chop(server, chops)
    assert events == [[], [], [], FAILED_1007, []]
    assert close_code_sent(server) == 1007


def test_invalid_utf8_in_a_continuation_fails_at_once_after_a_split_character() -> None:
    server = open_server()
    encoded = "日本".encode()
    first = client_frame(OP_TEXT, encoded[:4], fin=False)  # 本 cut after its first byte
    payload = encoded[4:] + b"ok" + b"\xc0" + b"tail"  # \xc0 is never valid
    rest = client_frame(Opcode.CONT, payload)
    bad_at = len(rest) - len(payload) + 4
    chops = [first + rest[:3], rest[3:bad_at], rest[bad_at : bad_at + 1], rest[bad_at + 1 :]]
    events = _events_per_chop(server, chops)
    assert events == [[], [], FAILED_1007, []]


def test_valid_text_fed_a_byte_at_a_time_is_never_refused() -> None:
    server = open_server()
    encoded = "日本語 κόσμε 🎉".encode()
    stream = (
        client_frame(OP_TEXT, encoded[:4], fin=False)
        + client_frame(Opcode.PING, b"p")
        + client_frame(Opcode.CONT, encoded[4:13], fin=False)
        + client_frame(Opcode.CONT, encoded[13:], fin=True)
        + client_frame(OP_TEXT, encoded)
        + client_frame(OP_BINARY, b"\xff\xfe")
    )
    messages: List[object] = []
    for byte in stream:
        messages += server.receive_data(bytes([byte]))
    assert messages == [encoded.decode(), encoded.decode(), b"\xff\xfe"]
    assert server.open


def _valid_stream(rng: random.Random) -> bytes:
    pieces = []
    for _ in range(rng.randint(0, 8)):
        kind = rng.random()
        size = rng.choice([0, 1, 5, 125, 126, 127, 300, 65535, 65536, 70000])
        if kind < 0.4:
            pieces.append(client_frame(OP_TEXT, ("é" * (size // 2)).encode()))
        elif kind < 0.6:
            pieces.append(client_frame(OP_BINARY, rng.randbytes(size)))
        elif kind < 0.7:
            pieces.append(client_frame(Opcode.PING, rng.randbytes(min(size, 125))))
        else:
            encoded = ("日本" + "é" * (size // 2)).encode()
            cut = rng.randint(0, len(encoded))
            pieces.append(client_frame(OP_TEXT, encoded[:cut], fin=False))
            pieces.append(client_frame(Opcode.PONG, b"between"))
            pieces.append(client_frame(Opcode.CONT, encoded[cut:]))
    return b"".join(pieces)


def _stream_with_a_bad_byte(rng: random.Random) -> Tuple[bytes, int]:
    """Valid frames, then a text frame or fragment with invalid UTF-8; where the bad byte is."""
    stream = _valid_stream(rng)
    encoded = ("é" * rng.randint(0, 40000)).encode()
    at = rng.randint(0, len(encoded) // 2) * 2
    payload = encoded[:at] + b"\xff" + encoded[at:]
    fragmented = rng.random() < 0.5
    if fragmented:
        bad = client_frame(OP_TEXT, b"ok", fin=False) + client_frame(Opcode.CONT, payload)
    else:
        bad = client_frame(OP_TEXT, payload)
    return stream + bad, len(stream) + len(bad) - len(payload) + at


@pytest.mark.parametrize("seed", range(200))
def test_early_utf8_checks_agree_with_the_websockets_parser(seed: int) -> None:
    """Cut anywhere, the server fails as websockets alone would, no later than the bad byte."""
    rng = random.Random(seed)
    stream, bad_at = _stream_with_a_bad_byte(rng)
    cuts = sorted(set(rng.sample(range(1, len(stream)), min(len(stream) - 1, 40))))
    fast = open_server(max_message_size=None)
    slow = open_server(max_message_size=None)
    slow._fast_path = False  # websockets' parser alone, which checks whole frames
    assert _feed(fast, stream, cuts) == _feed(slow, stream, cuts)
    # The chop that brings the bad byte is the one that fails.
    server, start = open_server(max_message_size=None), 0
    for cut in [*cuts, len(stream)]:
        _, events = server.receive(stream[start:cut])
        closing = [event for event in events if isinstance(event, CloseStarted)]
        if closing:
            assert closing == FAILED_1007
            assert start <= bad_at < cut
            break
        start = cut
    else:  # pragma: no cover
        raise AssertionError("no failure")


# -- a failure held back until the messages before it are answered ------------


def test_a_held_failure_keeps_its_close_frame_until_released() -> None:
    server = open_server()
    messages, events = server.receive(client_frame(OP_TEXT, b"valid") + bytes([0x83, 0x80]))
    assert messages == ["valid"]
    assert list(events) == [CloseStarted(1002, by_peer=False)]
    server.hold_failure()
    assert server.open and server.failure_held
    assert server.data_to_send() == []  # the close frame waits
    assert server.receive(client_frame(OP_TEXT, b"after")) == ([], [])  # discarded
    server.release_failure()
    assert not server.open
    assert close_code_sent(server) == 1002


@pytest.mark.parametrize("how", ["send_close", "fail"])
def test_closing_releases_a_held_failure_with_its_own_code(how: str) -> None:
    server = open_server()
    server.receive(client_frame(OP_TEXT, b"valid") + client_frame(OP_TEXT, b"\xff"))
    server.hold_failure()
    if how == "send_close":
        server.send_close(1000, "bye")
    else:
        server.fail(1011, "internal error")
    assert not server.failure_held
    assert close_code_sent(server) == 1007


# -- the handshake checked from the environ -------------------------------------

_RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def handshake_environ(**change: Optional[str]) -> dict:
    environ: dict = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/chat",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1:8080",
        "HTTP_UPGRADE": "websocket",
        "HTTP_CONNECTION": "Upgrade",
        "HTTP_SEC_WEBSOCKET_KEY": _RFC_KEY,
        "HTTP_SEC_WEBSOCKET_VERSION": "13",
        "HTTP_USER_AGENT": "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0",
        "wsgi.input": object(),
    }
    for name, value in change.items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    return environ


#: Handshakes answered from the environ: (changes to the environ).
PLAIN_HANDSHAKES = [
    {},
    {"HTTP_CONNECTION": "keep-alive, Upgrade"},
    {"HTTP_CONNECTION": "upgrade"},
    {"HTTP_CONNECTION": "Upgrade,HTTP2-Settings"},
    {"HTTP_UPGRADE": "WebSocket"},
    {"HTTP_SEC_WEBSOCKET_EXTENSIONS": "permessage-deflate; client_max_window_bits"},
    {"HTTP_ORIGIN": "http://127.0.0.1:8080", "CONTENT_TYPE": "text/plain"},
    {"HTTP_USER_AGENT": "tab\there, and UTF-8 \xe9"},
]

#: Handshakes left to websockets: valid ones it negotiates, and broken ones.
OTHER_HANDSHAKES = [
    {"HTTP_SEC_WEBSOCKET_PROTOCOL": "chat"},
    {"HTTP_SEC_WEBSOCKET_PROTOCOL": "@@ bad"},
    {"HTTP_CONNECTION": "keep-alive"},
    {"HTTP_CONNECTION": "Upgrade, @@@"},
    {"HTTP_CONNECTION": "Upgrade,, keep-alive"},
    {"HTTP_CONNECTION": None},
    {"HTTP_UPGRADE": "websocket, h2c"},
    {"HTTP_UPGRADE": "h2c"},
    {"HTTP_UPGRADE": None},
    {"HTTP_SEC_WEBSOCKET_KEY": None},
    {"HTTP_SEC_WEBSOCKET_KEY": "short"},
    {"HTTP_SEC_WEBSOCKET_KEY": base64.b64encode(b"x" * 17).decode()},
    {"HTTP_SEC_WEBSOCKET_KEY": "!!!!!!!!!!!!!!!!!!!!!!!="},
    {"HTTP_SEC_WEBSOCKET_KEY": "d\xe9lIHNhbXBsZSBub25jZQ=="},
    {"HTTP_SEC_WEBSOCKET_VERSION": None},
    {"HTTP_SEC_WEBSOCKET_VERSION": "8"},
    {"HTTP_SEC_WEBSOCKET_VERSION": "13, 8"},
]

#: Handshakes with a header value websockets' ``Headers`` refuses.
CONTROL_CHARACTER_HANDSHAKES = [
    {"HTTP_X_JUNK": "a\x01b"},
    {"HTTP_USER_AGENT": "a\x7fb"},
    {"CONTENT_TYPE": "text/\x00plain"},
]


def _answer(response) -> Tuple[int, str, List[Tuple[str, str]], bytes]:  # type: ignore[no-untyped-def]
    headers = [(name, value) for name, value in response.headers if name != "Date"]
    return response.status, response.reason, headers, response.body


def _counting_accept(monkeypatch: pytest.MonkeyPatch) -> List[int]:
    calls: List[int] = []
    accept = ServerProtocol.accept

    def counted(self: ServerProtocol, *args: object) -> object:
        calls.append(1)
        return accept(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(ServerProtocol, "accept", counted)
    return calls


@pytest.mark.parametrize("change", PLAIN_HANDSHAKES + OTHER_HANDSHAKES)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_accept_environ_answers_as_accept(
    change: dict, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    environ = handshake_environ(**change)
    expected_server = ServerProtocol(max_message_size=1000)
    expected = expected_server.accept(method, "/chat", request_headers_from_environ(environ))
    calls = _counting_accept(monkeypatch)
    server = ServerProtocol(max_message_size=1000)
    answer = server.accept_environ(method, environ)
    assert _answer(answer) == _answer(expected)
    assert ("Date" in dict(answer.headers)) == ("Date" in dict(expected.headers))
    assert server.open == expected_server.open
    plain = change in PLAIN_HANDSHAKES and method == "GET"
    assert calls == ([] if plain else [1]), "websockets answered" if calls else "not websockets"
    if server.open:  # and it reads frames as one opened by accept() does
        data = client_frame(OP_TEXT, "h\xe9".encode()) + client_frame(OP_BINARY, b"\x00" * 2000)
        assert server.receive_data(data) == expected_server.receive_data(data)
        close = client_frame(Opcode.CLOSE, Close(1000, "").serialize())
        assert server.receive(close)[1] == expected_server.receive(close)[1]
        assert server.data_to_send() == expected_server.data_to_send()


def test_accept_environ_rfc_example_key() -> None:
    answer = ServerProtocol().accept_environ("GET", handshake_environ())
    assert answer.status == 101
    assert ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") in answer.headers


@pytest.mark.parametrize("change", CONTROL_CHARACTER_HANDSHAKES)
def test_accept_environ_treats_control_characters_as_before(change: dict) -> None:
    """websockets 17.4 refuses them when the headers are built; 15.0.1 takes them."""
    environ = handshake_environ(**change)
    try:
        headers = request_headers_from_environ(environ)
    except InvalidHeader:
        with pytest.raises(InvalidHeader):
            ServerProtocol().accept_environ("GET", environ)
    else:
        expected = ServerProtocol().accept("GET", "/chat", headers)
        assert _answer(ServerProtocol().accept_environ("GET", environ)) == _answer(expected)


@pytest.mark.parametrize(
    "options",
    [{"subprotocols": ["chat"]}, {"origins": ["http://127.0.0.1:8080"]}],
)
def test_accept_environ_leaves_negotiation_to_websockets(
    options: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _counting_accept(monkeypatch)
    environ = handshake_environ(
        HTTP_SEC_WEBSOCKET_PROTOCOL=None if "origins" in options else "chat",
        HTTP_ORIGIN="http://127.0.0.1:8080",
    )
    server = ServerProtocol(**options)
    answer = server.accept_environ("GET", environ)
    assert answer.status == 101 and calls == [1]
    if "subprotocols" in options:
        assert server.subprotocol == "chat"
