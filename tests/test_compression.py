"""permessage-deflate without a server: negotiation, inflating, compressing, the threshold."""

from __future__ import annotations

import resource
import zlib
from typing import Any, Dict, List, Optional

import pytest
from flask import Flask
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame, Opcode

from flask_websocket import WebSocket, compression
from flask_websocket.compression import (
    DEFLATE_OPTION_DEFAULTS,
    Deflater,
    DeflateSettings,
    compress_alone,
    deflate_options_problem,
)
from flask_websocket.hubs.base import KIND_ALL, Envelope
from flask_websocket.protocol import OP_BINARY, OP_TEXT, ServerProtocol, encode_frame
from flask_websocket.rooms import RoomRegistry
from flask_websocket.testing import WebSocketTestClient
from tests.test_protocol import client_frame, close_code_sent, handshake_headers

EXTENSIONS = "sec-websocket-extensions"


def server_for(settings: Optional[DeflateSettings] = None, **kwargs: Any) -> ServerProtocol:
    settings = settings or DeflateSettings()
    return ServerProtocol(deflate=settings.factory(), **kwargs)


def negotiate(offer: Optional[str], settings: Optional[DeflateSettings] = None, **kwargs: Any):
    server = server_for(settings, **kwargs)
    extra = {"Sec-WebSocket-Extensions": offer} if offer is not None else {}
    response = server.accept("GET", "/", handshake_headers(**extra))
    headers = {name.lower(): value for name, value in response.headers}
    return server, response, headers.get(EXTENSIONS)


def compress(payload: bytes, bits: int = 15) -> bytes:
    compressor = zlib.compressobj(wbits=-bits)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


def client_inflater(server_no_context_takeover: bool = True, bits: int = 15) -> PerMessageDeflate:
    """The client's side of the extension: reads what the server compressed."""
    return PerMessageDeflate(False, server_no_context_takeover, bits, bits)


def parse_server_frames(data: List[bytes]) -> List[Frame]:
    """Split unmasked server frames, RSV1 kept (websockets' parser would refuse it alone)."""
    buffer = b"".join(data)
    frames = []
    while buffer:
        first, second = buffer[0], buffer[1]
        assert not second & 0x80, "a server frame is masked"
        length, at = second & 0x7F, 2
        if length == 126:
            length, at = int.from_bytes(buffer[2:4], "big"), 4
        elif length == 127:
            length, at = int.from_bytes(buffer[2:10], "big"), 10
        assert len(buffer) >= at + length, "incomplete frame"
        frames.append(
            Frame(
                Opcode(first & 0x0F),
                buffer[at : at + length],
                bool(first & 0x80),
                bool(first & 0x40),
            )
        )
        buffer = buffer[at + length :]
    return frames


def inflate(inflater: PerMessageDeflate, frame: Frame) -> bytes:
    return bytes(inflater.decode(frame, max_size=None).data)


# -- negotiation --------------------------------------------------------------


def test_not_negotiated_without_an_offer() -> None:
    server, response, header = negotiate(None)
    assert response.accepted and header is None and server.deflate is None


def test_not_negotiated_when_the_route_does_not_compress() -> None:
    server = ServerProtocol()
    response = server.accept(
        "GET", "/", handshake_headers(**{"Sec-WebSocket-Extensions": "permessage-deflate"})
    )
    headers = {name.lower() for name, _ in response.headers}
    assert response.accepted and EXTENSIONS not in headers and server.deflate is None


def test_a_bare_offer_gets_the_memory_defaults() -> None:
    server, response, header = negotiate("permessage-deflate")
    assert response.accepted
    assert header == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
        "server_max_window_bits=15"
    )
    deflate = server.deflate
    assert deflate is not None
    assert deflate.local_no_context_takeover and deflate.remote_no_context_takeover


def test_a_browser_offer_is_answered() -> None:
    # What Chromium and Firefox send.
    server, response, header = negotiate("permessage-deflate; client_max_window_bits")
    assert response.accepted and header is not None
    assert "client_max_window_bits=15" in header and server.deflate is not None


def test_the_client_may_lower_the_server_window() -> None:
    server, _, header = negotiate("permessage-deflate; server_max_window_bits=10")
    assert header is not None and "server_max_window_bits=10" in header
    assert server.deflate is not None and server.deflate.local_max_window_bits == 10


def test_configured_context_takeover_and_windows() -> None:
    settings = DeflateSettings(
        server_no_context_takeover=False,
        client_no_context_takeover=False,
        server_max_window_bits=12,
        client_max_window_bits=11,
    )
    server, _, header = negotiate("permessage-deflate; client_max_window_bits", settings)
    assert header == "permessage-deflate; server_max_window_bits=12; client_max_window_bits=11"
    assert server.deflate is not None
    assert not server.deflate.local_no_context_takeover
    assert server.deflate.remote_max_window_bits == 11


@pytest.mark.parametrize(
    "offer",
    [
        "permessage-deflate; unknown_parameter",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=8",  # zlib cannot compress with 8
        "permessage-deflate; client_max_window_bits=7",
        "permessage-deflate; server_no_context_takeover=yes",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "x-webkit-deflate-frame",
    ],
)
def test_an_invalid_offer_is_declined_not_refused(offer: str) -> None:
    # RFC 7692, 5.1: the server declines (no extension), the connection opens.
    server, response, header = negotiate(offer)
    assert response.accepted and header is None and server.deflate is None


def test_the_first_acceptable_offer_wins() -> None:
    offer = "permessage-deflate; bogus, permessage-deflate; server_max_window_bits=11"
    _server, response, header = negotiate(offer)
    assert response.accepted and header is not None and "server_max_window_bits=11" in header


@pytest.mark.parametrize("offer", ["permessage-deflate; =", "permessage-deflate;;", ", ,;"])
def test_a_header_that_does_not_parse_is_a_400(offer: str) -> None:
    _server, response, header = negotiate(offer)
    assert response.status == 400 and header is None
    assert b"Sec-WebSocket-Extensions" in response.body


# -- receiving ------------------------------------------------------------------


def open_deflate_server(**kwargs: Any) -> ServerProtocol:
    server, response, header = negotiate("permessage-deflate", **kwargs)
    assert response.accepted and header is not None
    return server


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
def test_compressed_messages_are_inflated(opcode: int) -> None:
    server = open_deflate_server()
    payload = "é compressed ".encode() * 100
    messages = server.receive_data(client_frame(opcode, compress(payload), rsv1=True))
    assert messages == [payload.decode() if opcode == OP_TEXT else payload]
    # Uncompressed messages still take the fast path and arrive as they are.
    assert server.receive_data(client_frame(opcode, b"plain")) == [
        "plain" if opcode == OP_TEXT else b"plain"
    ]


def test_a_compressed_fragmented_text_fed_byte_by_byte() -> None:
    # The fast path follows a frame arriving in parts to check its UTF-8:
    # it must not read compressed bytes as text.
    server = open_deflate_server()
    text = ("ünïcödé " * 200).encode()
    data = compress(text)
    half = len(data) // 2
    wire = client_frame(OP_TEXT, data[:half], fin=False, rsv1=True) + client_frame(
        Opcode.CONT, data[half:]
    )
    messages: List[Any] = []
    for index in range(len(wire)):
        messages += server.receive_data(wire[index : index + 1])
    assert messages == [text.decode()] and server.open


def test_invalid_utf8_inside_a_compressed_message_closes_1007() -> None:
    server = open_deflate_server()
    server.receive_data(client_frame(OP_TEXT, compress(b"ok \xff" * 50), rsv1=True))
    assert close_code_sent(server) == 1007


def test_rsv1_without_deflate_is_a_protocol_error() -> None:
    server = ServerProtocol()
    assert server.accept("GET", "/", handshake_headers()).accepted
    server.receive_data(client_frame(OP_TEXT, compress(b"hello"), rsv1=True))
    assert close_code_sent(server) == 1002


def test_garbage_compressed_data_closes_1002() -> None:
    server = open_deflate_server()
    server.receive_data(client_frame(OP_BINARY, b"\xff\xff\xff\xff not deflate", rsv1=True))
    assert close_code_sent(server) == 1002


def _max_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


@pytest.mark.parametrize("fragmented", [False, True])
def test_a_zip_bomb_closes_1009_without_inflating_it(fragmented: bool) -> None:
    # 512 MiB of zeros, about 500 KiB compressed: under the 1 MiB limit as
    # sent, 512 times over it inflated.
    limit = 2**20
    server = open_deflate_server(max_message_size=limit)
    compressor = zlib.compressobj(wbits=-15)
    chunk = bytes(2**20)
    pieces = [compressor.compress(chunk) for _ in range(512)]
    bomb = b"".join(pieces) + compressor.flush(zlib.Z_SYNC_FLUSH)[:-4]
    assert len(bomb) < limit
    before = _max_rss_kib()
    if fragmented:
        half = len(bomb) // 2
        wire = client_frame(OP_BINARY, bomb[:half], fin=False, rsv1=True) + client_frame(
            Opcode.CONT, bomb[half:]
        )
    else:
        wire = client_frame(OP_BINARY, bomb, rsv1=True)
    assert server.receive_data(wire) == []
    assert close_code_sent(server) == 1009
    # Bounded: nowhere near the 512 MiB it would inflate to.
    assert _max_rss_kib() - before < 64 * 1024


def test_a_message_just_under_the_limit_inflates() -> None:
    server = open_deflate_server(max_message_size=1000)
    assert server.receive_data(client_frame(OP_BINARY, compress(bytes(1000)), rsv1=True)) == [
        bytes(1000)
    ]
    server.receive_data(client_frame(OP_BINARY, compress(bytes(1001)), rsv1=True))
    assert close_code_sent(server) == 1009


# -- sending ------------------------------------------------------------------


def deflater_for(offer: str, threshold: int = 0, settings: Optional[DeflateSettings] = None):
    server, _, _header = negotiate(offer, settings)
    assert server.deflate is not None
    return Deflater(server.deflate, threshold, (False,))


def test_messages_under_the_threshold_go_uncompressed() -> None:
    deflater = deflater_for("permessage-deflate", threshold=100)
    (small,) = parse_server_frames([deflater.frame(OP_TEXT, b"x" * 99)])
    (large,) = parse_server_frames([deflater.frame(OP_TEXT, b"x" * 100)])
    assert not small.rsv1 and small.data == b"x" * 99
    assert large.rsv1 and len(large.data) < 100
    assert inflate(client_inflater(), large) == b"x" * 100


def test_without_context_takeover_each_message_stands_alone() -> None:
    deflater = deflater_for("permessage-deflate")
    assert deflater.frame_kind == (False, 15, 0)
    payload = b'{"user": "ann", "text": "hello there"}' * 4
    frames = [deflater.frame(OP_TEXT, payload) for _ in range(3)]
    assert frames[0] == frames[1] == frames[2]  # the same bytes: shareable
    for frame in parse_server_frames(frames):
        assert inflate(client_inflater(), frame) == payload  # a fresh inflater each


def test_with_context_takeover_the_connection_keeps_its_own_compressor() -> None:
    settings = DeflateSettings(server_no_context_takeover=False)
    deflater = deflater_for("permessage-deflate", settings=settings)
    assert deflater.frame_kind is None  # never shared
    payload = b"the same message again and again " * 4
    frames = parse_server_frames([deflater.frame(OP_BINARY, payload) for _ in range(3)])
    assert len(frames[1].data) < len(frames[0].data)  # the second refers to the first
    inflater = client_inflater(server_no_context_takeover=False)
    assert [inflate(inflater, frame) for frame in frames] == [payload] * 3


@pytest.mark.parametrize("bits", [9, 12, 15])
def test_compress_alone_respects_the_window(bits: int) -> None:
    payload = bytes(range(256)) * 300  # repeats at 256: fits every window
    data = compress_alone(payload, bits)
    inflater = zlib.decompressobj(wbits=-bits)
    assert inflater.decompress(data + b"\x00\x00\xff\xff") == payload
    # Independent of the message before: a fresh inflater reads the next one.
    again = compress_alone(payload, bits)
    assert zlib.decompressobj(wbits=-bits).decompress(again + b"\x00\x00\xff\xff") == payload


def test_large_messages_round_trip() -> None:
    deflater = deflater_for("permessage-deflate; server_max_window_bits=9")
    payload = bytes(range(256)) * 4096 + b"tail"
    (frame,) = parse_server_frames([deflater.frame(OP_BINARY, payload)])
    assert frame.rsv1 and inflate(client_inflater(bits=9), frame) == payload


# -- settings -----------------------------------------------------------------


def test_the_options_defaults_are_the_settings_defaults() -> None:
    assert DeflateSettings.from_config({}, 128) == DeflateSettings()
    fields: Dict[str, Any] = {
        name: getattr(DeflateSettings(), name) for name in DEFLATE_OPTION_DEFAULTS
    }
    assert fields == DEFLATE_OPTION_DEFAULTS


@pytest.mark.parametrize(
    "value",
    [
        None,
        [],
        {"level": 9},
        {"server_no_context_takeover": 1},
        {"server_max_window_bits": 8},
        {"server_max_window_bits": 16},
        {"client_max_window_bits": 7},
        {"client_max_window_bits": True},
    ],
)
def test_bad_options_are_named(value: Any) -> None:
    assert deflate_options_problem(value) is not None


def test_good_options_pass() -> None:
    assert deflate_options_problem({}) is None
    assert (
        deflate_options_problem({"client_max_window_bits": 8, "server_max_window_bits": 9}) is None
    )


def test_websockets_frame_api_used_here() -> None:
    # Frame(opcode, data) is what Deflater builds for websockets' encoder.
    frame = Frame(Opcode.TEXT, b"x")
    assert frame.fin and not frame.rsv1


# -- routes (in-process, the test client) ------------------------------------


def compression_app(**config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(config)
    websocket = WebSocket(app)

    @websocket.route("/default")
    def default(ws: Any) -> None:
        ws.send(ws.receive())

    @websocket.route("/on", compression="permessage-deflate")
    def on(ws: Any) -> None:
        ws.send(ws.receive())

    @websocket.route("/off", compression=None)
    def off(ws: Any) -> None:
        ws.send(ws.receive())

    return app


OFFER = {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}


@pytest.mark.parametrize(
    ("config", "path", "negotiated"),
    [
        ({}, "/default", False),
        ({}, "/on", True),
        ({}, "/off", False),
        ({"WEBSOCKET_COMPRESSION": "permessage-deflate"}, "/default", True),
        ({"WEBSOCKET_COMPRESSION": "permessage-deflate"}, "/off", False),
    ],
)
@pytest.mark.parametrize("model", ["gevent", "threads"])
def test_the_route_overrides_the_app(
    config: Dict[str, Any], path: str, negotiated: bool, model: str
) -> None:
    client = WebSocketTestClient(compression_app(**config), model=model)
    with client.connect(path, headers=OFFER) as ws:
        assert ("permessage-deflate" in ws.headers.get(EXTENSIONS, "")) is negotiated
        ws.send("short")  # under the threshold: sent back uncompressed
        assert ws.receive() == "short"


def test_the_configured_options_are_negotiated() -> None:
    app = compression_app(
        WEBSOCKET_COMPRESSION_OPTIONS={"server_no_context_takeover": False},
        WEBSOCKET_COMPRESSION_THRESHOLD=1000,
    )
    with WebSocketTestClient(app).connect("/on", headers=OFFER) as ws:
        assert ws.headers[EXTENSIONS] == (
            "permessage-deflate; client_no_context_takeover; server_max_window_bits=15; "
            "client_max_window_bits=15"
        )
        ws.send("x" * 999)
        assert ws.receive() == "x" * 999


def test_a_bad_compression_on_a_route_is_refused_at_once() -> None:
    websocket = WebSocket(Flask(__name__))
    with pytest.raises(ValueError, match=r"compression of '/x' is 'gzip': use"):
        websocket.route("/x", compression="gzip")


# -- broadcast: compressed once per kind of member ------------------------------


class Member:
    """What RoomRegistry.deliver uses of a connection, with a real Deflater."""

    _direct_fd = None  # no socket: the fan-out offers each frame (offer_frame)

    def __init__(self, registry: RoomRegistry, deflater: Optional[Deflater]) -> None:
        self.wire = False
        self.user_id = None
        self.assigned_id = None
        self.rooms: frozenset = frozenset()
        self.deflater = deflater
        self.frames: List[bytes] = []
        registry.add(self)  # type: ignore[arg-type]

    @property
    def frame_kind(self) -> Any:
        return self.deflater.frame_kind if self.deflater is not None else False

    def message_frame(self, opcode: int, payload: bytes) -> bytes:
        if self.deflater is not None:
            return self.deflater.frame(opcode, payload)
        return encode_frame(opcode, payload)

    def offer_frame(self, frame: bytes) -> bool:
        self.frames.append(frame)
        return True


def test_a_broadcast_is_compressed_once_per_window(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: List[int] = []
    real = compression.compress_alone

    def counting(payload: bytes, bits: int) -> bytes:
        calls.append(bits)
        return real(payload, bits)

    monkeypatch.setattr(compression, "compress_alone", counting)
    takeover = DeflateSettings(server_no_context_takeover=False)
    registry = RoomRegistry()
    alone = [Member(registry, deflater_for("permessage-deflate")) for _ in range(50)]
    small_window = [
        Member(registry, deflater_for("permessage-deflate; server_max_window_bits=10"))
        for _ in range(20)
    ]
    own = [
        Member(registry, deflater_for("permessage-deflate", settings=takeover)) for _ in range(3)
    ]
    plain = [Member(registry, None) for _ in range(10)]
    payload = b'{"text": "hello to all of you"}' * 10
    assert registry.deliver(Envelope(KIND_ALL, OP_TEXT, payload)) == 83
    assert sorted(calls) == [10, 15]  # once per window, whatever the number of members
    for group in (alone, small_window, plain):
        assert len({id(member.frames[0]) for member in group}) == 1  # the same bytes object
    assert len({id(member.frames[0]) for member in own}) == 3  # each its own compressor
    for member in alone + small_window + own:
        (frame,) = parse_server_frames(member.frames)
        bits = 10 if member in small_window else 15
        assert frame.rsv1 and inflate(client_inflater(bits=bits), frame) == payload
    (frame,) = parse_server_frames(plain[0].frames)
    assert not frame.rsv1 and frame.data == payload
