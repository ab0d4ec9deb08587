"""Hostile load against a real uWSGI server: the fuzzer, the soak, and what they measure.

Shared by the CI-sized tests (tests/test_uwsgi_fuzz.py) and the long runs
(scripts/soak.py). Everything here talks to 127.0.0.1 only, over raw asyncio
sockets, and every loop is bounded in count and in time.

The fuzzer
    :func:`make_case` turns ``(seed, index)`` into one malformed exchange:
    a valid handshake followed by frames that break RFC 6455 (random bytes,
    truncated headers, lengths up to 2**64 - 1, unmasked or wrongly masked
    frames, reserved bits and opcodes, control frames over 125 bytes or
    fragmented, invalid close codes and reasons, invalid UTF-8, stray or
    interleaved fragments, messages over the size limit), or a bad opening
    handshake (random request lines, a required header missing or mangled,
    junk headers, oversized headers, random bytes, a request cut short).
    Each case knows what a correct server does: the close code for frames
    whose error has one, or for random bytes, a close code 1000-1015 (or
    the code of a valid close frame among them) or a dropped connection, and
    never an echo of anything but a complete message that was sent.
    :func:`run_cases` runs them over many concurrent connections and returns
    the failures, each with its index, so that
    ``FWS_FUZZ_SEED=<seed>`` and the index replay it alone.

The soak
    :func:`run_soak` makes connect-send-close cycles that end in four ways:
    a clean close, a reset (``SO_LINGER`` 0), a half-close (FIN without a
    close frame) and a client that goes silent without closing (the server's
    ping timeout must reclaim it).

Measures
    :func:`settle` waits until a process's file descriptors are back to a
    baseline and its RSS stops moving; :class:`Bystander` runs
    tests/bystander.py in a process of its own.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import random
import re
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

import psutil

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 2**20
#: WEBSOCKET_MAX_MESSAGE_SIZE of the app under test (the default).
MAX_MESSAGE = MIB
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
DATA_OPCODES = (OP_CONT, OP_TEXT, OP_BINARY)
CONTROL_OPCODES = (OP_CLOSE, OP_PING, OP_PONG)
KNOWN_OPCODES = DATA_OPCODES + CONTROL_OPCODES
RESERVED_OPCODES = (0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF)
#: Close codes a client may send (RFC 6455 7.4, and the IANA registry as websockets has it).
VALID_CLOSE_CODES = (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014)
#: Seconds to wait for the server's answer to one case.
CASE_TIMEOUT = 10.0
#: A frame with a reserved opcode: ends any stream with a protocol error at its header.
TERMINATOR = bytes([0x80 | 0x3, 0x80]) + b"\x00\x00\x00\x00"


def default_seed() -> int:
    """``FWS_FUZZ_SEED`` if set (to replay a run), else a fresh random seed."""
    value = os.environ.get("FWS_FUZZ_SEED")
    return int(value) if value else random.SystemRandom().randrange(2**32)


# ---------------------------------------------------------------------------
# Frames


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    length: Optional[int] = None,
    key: Optional[bytes] = None,
    mask_with: Optional[bytes] = None,
) -> bytes:
    """One client frame with any header bits.

    ``length`` is announced instead of the payload's (only ``payload`` is
    sent). ``key`` is the masking key put in the header (random if ``None``);
    ``mask_with`` masks the payload with another key than the one announced.
    """
    announced = len(payload) if length is None else length
    first = (0x80 if fin else 0) | ((rsv & 0x7) << 4) | (opcode & 0xF)
    mask_bit = 0x80 if mask else 0
    if announced < 126:
        header = struct.pack("!BB", first, mask_bit | announced)
    elif announced < 2**16:
        header = struct.pack("!BBH", first, mask_bit | 126, announced)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, announced)
    if not mask:
        return header + payload
    key = key if key is not None else os.urandom(4)
    return header + key + apply_mask(payload, mask_with or key)


def apply_mask(data: bytes, key: bytes) -> bytes:
    size = len(data)
    if not size:
        return b""
    stream = (key * (size // 4 + 1))[:size]
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(size, "big")


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


@dataclass
class Split:
    """What a server sees in a byte stream, frame by frame (see :func:`split_frames`)."""

    #: Complete frames before the first error at a header: (fin, opcode, unmasked payload).
    frames: List[Tuple[bool, int, bytes]]
    #: Bytes still needed to complete the last frame (0: the stream ends on a boundary).
    missing: int
    #: The stream breaks at a frame header (the server fails at once, reads no further).
    header_error: bool


def split_frames(data: bytes, max_size: int = MAX_MESSAGE) -> Split:
    """Cut a client byte stream into frames the way a server parses it.

    Errors found at a frame's header (a reserved opcode, no mask, a length
    over ``max_size``) stop the parse; everything else (reserved bits,
    control frame rules, UTF-8, close codes) needs the whole frame, so it is
    left to the caller.
    """
    frames: List[Tuple[bool, int, bytes]] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 2:
            return Split(frames, 2 - (len(data) - pos), False)
        first, second = data[pos], data[pos + 1]
        if first & 0x0F not in KNOWN_OPCODES or not second & 0x80:
            return Split(frames, 0, True)
        length = second & 0x7F
        head = 2
        if length == 126:
            head = 4
        elif length == 127:
            head = 10
        if len(data) - pos < head:
            return Split(frames, head - (len(data) - pos), False)
        if length == 126:
            (length,) = struct.unpack("!H", data[pos + 2 : pos + 4])
        elif length == 127:
            (length,) = struct.unpack("!Q", data[pos + 2 : pos + 10])
        if length > max_size:
            return Split(frames, 0, True)
        need = head + 4 + length
        if len(data) - pos < need:
            return Split(frames, need - (len(data) - pos), False)
        key = data[pos + head : pos + head + 4]
        payload = apply_mask(data[pos + head + 4 : pos + need], key)
        frames.append((bool(first & 0x80), first & 0x0F, payload))
        pos += need
    return Split(frames, 0, False)


def possible_replies(frames: Sequence[Tuple[bool, int, bytes]]) -> Tuple[set, set]:
    """Messages a server may echo and pong payloads it may send, given client ``frames``.

    Generous on purpose: every run of data frames that starts with a text or
    binary frame and ends with a final one counts as a message, valid or not.
    A reply that is none of these is garbage.
    """
    messages: set = set()
    pongs: set = set()
    for index, (fin, opcode, payload) in enumerate(frames):
        if opcode == OP_PING:
            pongs.add(payload)
        if opcode not in (OP_TEXT, OP_BINARY):
            continue
        parts = [payload]
        done = fin
        for next_fin, next_opcode, next_payload in frames[index + 1 :]:
            if done:
                break
            if next_opcode in CONTROL_OPCODES:
                continue
            parts.append(next_payload)
            done = next_fin
        if done:
            messages.add((opcode, b"".join(parts)))
    return messages, pongs


# ---------------------------------------------------------------------------
# Cases


@dataclass
class Case:
    """One hostile exchange and what a correct server answers to it."""

    index: int
    category: str
    #: Bytes to send, in order (after a valid handshake if ``handshake``).
    chunks: List[bytes]
    handshake: bool = True
    #: Frame cases: the close codes that are right (empty: see ``random_frames``).
    codes: FrozenSet[int] = frozenset()
    #: Random frames: check replies against what was sent (see possible_replies).
    random_frames: bool = False
    #: Messages to expect echoed, in order, before the close (a wrong mask's text, say).
    echoes: List[Tuple[int, bytes]] = field(default_factory=list)
    #: How the client ends: "wait" (for the server), "fin" (half-close) or "reset".
    ending: str = "wait"
    #: Handshake cases: status codes that are right; 101 means the echo must work too.
    statuses: FrozenSet[int] = frozenset()
    #: Handshake cases: the server may also say nothing and hang up.
    silence_ok: bool = True


def _random_text(rng: random.Random, size: int) -> bytes:
    alphabet = "abcdefghijklmnopqrstuvwxyz 0123456789éü€𝄞"
    return _valid_utf8_cut("".join(rng.choice(alphabet) for _ in range(size)).encode()[:size])


def _valid_utf8_cut(data: bytes) -> bytes:
    """``data`` cut back to a whole character."""
    for end in range(len(data), max(len(data) - 4, -1), -1):
        try:
            data[:end].decode()
            return data[:end]
        except UnicodeDecodeError:
            continue
    return b""


INVALID_UTF8 = (
    b"\xff",
    b"\xfe",
    b"\xc0\x80",  # overlong NUL
    b"\xc1\xbf",  # overlong
    b"\xe0\x80\x80",  # overlong
    b"\xed\xa0\x80",  # a surrogate half
    b"\xf4\x90\x80\x80",  # over U+10FFFF
    b"\xf8\x88\x80\x80\x80",  # 5-byte form
    b"\x80",  # lone continuation
    b"\xe2\x28\xa1",  # broken continuation
)


def _frame_cases(rng: random.Random) -> Dict[str, Callable[[], Dict[str, Any]]]:
    """Generators of frame cases: name -> a function returning Case fields."""

    def mk(*args: Any, **kwargs: Any) -> bytes:
        kwargs.setdefault("key", rng.randbytes(4))  # seeded: the case replays byte for byte
        return frame(*args, **kwargs)

    def data_opcode() -> int:
        return rng.choice((OP_TEXT, OP_BINARY))

    def small_payload(limit: int = 200) -> bytes:
        return _random_text(rng, rng.randrange(0, limit))

    def random_bytes() -> Dict[str, Any]:
        size = rng.choice((1, 2, 3, 7, 16, 64, 200, 1000))
        data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, size + 1)))
        if rng.random() < 0.5:  # a plausible first byte: a data or control frame, masked
            data = bytes([rng.choice((0x81, 0x82, 0x01, 0x00, 0x88, 0x89, 0x8A))]) + data
        return {"chunks": [data], "random_frames": True}

    def huge_length() -> Dict[str, Any]:
        roll = rng.random()
        if roll < 0.3:
            length = MAX_MESSAGE + 1 + rng.randrange(16)
        elif roll < 0.7:
            length = rng.randrange(MAX_MESSAGE + 1, 2**63)
        else:
            length = 2**63 - 1 - rng.randrange(16)
        codes = {1009}
        if rng.random() < 0.15:  # the top bit set, which RFC 6455 forbids
            length = rng.randrange(2**63, 2**64)
            codes = {1002, 1009}
        body = rng.randbytes(rng.choice((0, 1, 100, 4096)))
        return {
            "chunks": [mk(data_opcode(), body, length=length, fin=rng.random() < 0.8)],
            "codes": frozenset(codes),
        }

    def unmasked() -> Dict[str, Any]:
        opcode = rng.choice((OP_TEXT, OP_BINARY, OP_PING, OP_CLOSE, OP_CONT))
        payload = close_payload(1000) if opcode == OP_CLOSE else small_payload(100)
        return {"chunks": [mk(opcode, payload, mask=False)], "codes": frozenset({1002})}

    def wrong_mask() -> Dict[str, Any]:
        # The payload masked with another key than the header announces: the
        # server unmasks garbage. Its exact bytes are known, so is the answer.
        opcode = data_opcode()
        payload = small_payload(120) or b"x"
        key, other = rng.randbytes(4), rng.randbytes(4)
        seen = apply_mask(apply_mask(payload, other), key)
        chunks = [mk(opcode, payload, key=key, mask_with=other)]
        if opcode == OP_TEXT:
            try:
                seen.decode()
            except UnicodeDecodeError:
                return {"chunks": chunks, "codes": frozenset({1007})}
        chunks.append(mk(OP_CLOSE, close_payload(1000)))
        return {"chunks": chunks, "codes": frozenset({1000}), "echoes": [(opcode, seen)]}

    def reserved_bits() -> Dict[str, Any]:
        opcode = rng.choice((OP_TEXT, OP_BINARY, OP_PING, OP_CONT))
        payload = b"" if opcode == OP_PING else small_payload(100)
        return {
            "chunks": [mk(opcode, payload, rsv=rng.randrange(1, 8))],
            "codes": frozenset({1002}),
        }

    def reserved_opcode() -> Dict[str, Any]:
        return {
            "chunks": [mk(rng.choice(RESERVED_OPCODES), small_payload(100))],
            "codes": frozenset({1002}),
        }

    def control_too_long() -> Dict[str, Any]:
        opcode = rng.choice(CONTROL_OPCODES)
        size = rng.choice((126, 127, 200, 1000, 65535, 70000))
        payload = b"p" * size
        if opcode == OP_CLOSE:
            payload = close_payload(1000) + b"r" * (size - 2)
        return {"chunks": [mk(opcode, payload)], "codes": frozenset({1002})}

    def control_fragmented() -> Dict[str, Any]:
        opcode = rng.choice(CONTROL_OPCODES)
        payload = close_payload(1000) if opcode == OP_CLOSE else small_payload(125)
        chunks = [mk(opcode, payload, fin=False)]
        if rng.random() < 0.5:  # inside a fragmented message
            chunks.insert(0, mk(OP_BINARY, b"start", fin=False))
        return {"chunks": chunks, "codes": frozenset({1002})}

    def close_invalid_code() -> Dict[str, Any]:
        code = rng.choice(
            (
                rng.randrange(0, 1000),
                1004,
                1005,
                1006,
                1015,
                rng.randrange(1016, 3000),
                rng.randrange(5000, 65536),
            )
        )
        reason = _random_text(rng, rng.randrange(0, 60))
        return {
            "chunks": [mk(OP_CLOSE, close_payload(code, reason))],
            "codes": frozenset({1002}),
        }

    def close_one_byte() -> Dict[str, Any]:
        return {
            "chunks": [mk(OP_CLOSE, bytes([rng.getrandbits(8)]))],
            "codes": frozenset({1002}),
        }

    def close_bad_reason() -> Dict[str, Any]:
        code = rng.choice((*VALID_CLOSE_CODES, 3000, 4999, rng.randrange(3000, 5000)))
        reason = small_payload(40)
        cut = rng.randrange(0, len(reason) + 1)
        bad = _valid_utf8_cut(reason[:cut]) + rng.choice(INVALID_UTF8) + b"tail"
        return {
            "chunks": [mk(OP_CLOSE, close_payload(code, bad[:123]))],
            "codes": frozenset({1007}),
        }

    def valid_close() -> Dict[str, Any]:
        # A control case: a legal close code gets a close back (the same code).
        code = rng.choice((*VALID_CLOSE_CODES, rng.randrange(3000, 5000)))
        reason = small_payload(100)
        return {
            "chunks": [mk(OP_CLOSE, close_payload(code, reason))],
            "codes": frozenset({code}),
        }

    def invalid_utf8() -> Dict[str, Any]:
        text = small_payload(200)
        cut = rng.randrange(0, len(text) + 1)
        bad = rng.choice(INVALID_UTF8)
        data = _valid_utf8_cut(text[:cut]) + bad + _random_text(rng, 10)
        if rng.random() < 0.5:
            return {"chunks": [mk(OP_TEXT, data)], "codes": frozenset({1007})}
        # Fragmented: the bad bytes in some fragment (maybe split across two).
        pieces = sorted(rng.sample(range(1, len(data)), min(3, len(data) - 1)))
        parts = [data[a:b] for a, b in zip([0, *pieces], [*pieces, len(data)])]
        chunks = [
            mk(OP_TEXT if i == 0 else OP_CONT, part, fin=i == len(parts) - 1)
            for i, part in enumerate(parts)
        ]
        return {"chunks": chunks, "codes": frozenset({1007})}

    def truncated_utf8_at_end() -> Dict[str, Any]:
        start = _valid_utf8_cut(small_payload(50))
        partial = rng.choice((b"\xc3", b"\xe2\x82", b"\xf0\x9f\x98"))
        if rng.random() < 0.5:
            chunks = [mk(OP_TEXT, start + partial)]
        else:
            chunks = [mk(OP_TEXT, start, fin=False), mk(OP_CONT, partial)]
        return {"chunks": chunks, "codes": frozenset({1007})}

    def stray_continuation() -> Dict[str, Any]:
        return {
            "chunks": [mk(OP_CONT, small_payload(50), fin=rng.random() < 0.5)],
            "codes": frozenset({1002}),
        }

    def interleaved() -> Dict[str, Any]:
        first = mk(data_opcode(), b"first", fin=False)
        second = mk(data_opcode(), b"second", fin=rng.random() < 0.5)
        return {"chunks": [first, second], "codes": frozenset({1002})}

    def oversized_message() -> Dict[str, Any]:
        count = rng.choice((2, 3, 8))
        part = b"a" * (MAX_MESSAGE // count + 1 + rng.randrange(1000))
        opcode = data_opcode()
        chunks = [mk(opcode if i == 0 else OP_CONT, part, fin=i == count - 1) for i in range(count)]
        return {"chunks": chunks, "codes": frozenset({1009})}

    def truncated_header() -> Dict[str, Any]:
        whole = mk(data_opcode(), small_payload(300) + b"x" * rng.choice((0, 200, 70000)))
        cut = rng.randrange(1, min(len(whole), 14))
        return {
            "chunks": [whole[:cut]],
            "ending": rng.choice(("fin", "reset")),
            "random_frames": True,
        }

    return {
        "random-bytes": random_bytes,
        "huge-length": huge_length,
        "unmasked": unmasked,
        "wrong-mask": wrong_mask,
        "reserved-bits": reserved_bits,
        "reserved-opcode": reserved_opcode,
        "control-too-long": control_too_long,
        "control-fragmented": control_fragmented,
        "close-invalid-code": close_invalid_code,
        "close-one-byte": close_one_byte,
        "close-bad-reason": close_bad_reason,
        "close-valid": valid_close,
        "invalid-utf8": invalid_utf8,
        "truncated-utf8": truncated_utf8_at_end,
        "stray-continuation": stray_continuation,
        "interleaved": interleaved,
        "oversized-message": oversized_message,
        "truncated-header": truncated_header,
    }


def handshake_request(port: int, path: str, key: str, extra: Sequence[str] = ()) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


#: Statuses a server may give a request that is not a valid WebSocket handshake.
REFUSED = frozenset(range(400, 500))
#: ... and one whose head is over a buffer: uWSGI's router answers 4xx or 5xx itself.
REFUSED_BY_UWSGI = frozenset(range(400, 600))


def _handshake_cases(rng: random.Random, port: int) -> Dict[str, Callable[[], Dict[str, Any]]]:
    def key() -> str:
        return base64.b64encode(rng.randbytes(16)).decode()

    def token(size: int = 8) -> str:
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz-_0123456789") for _ in range(size))

    def random_request_line() -> Dict[str, Any]:
        method = rng.choice(
            ("GET", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PRI", token(5), "get")
        )
        target = rng.choice(
            (
                "/echo",
                f"/{token()}",
                "*",
                f"http://127.0.0.1:{port}/echo",
                "/echo?" + token(20),
                "/%00%ff",
                "/" + "a" * rng.randrange(100, 3000),
                "//../../etc/passwd",
                token(),
            )
        )
        version = rng.choice(("HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/0.9", "HTTP/1.1x", ""))
        line = f"{method} {target} {version}".encode()
        if rng.random() < 0.2:  # random bytes in it
            at = rng.randrange(len(line) + 1)
            line = line[:at] + rng.randbytes(rng.randrange(1, 8)).replace(b"\n", b"") + line[at:]
        headers = [f"Host: 127.0.0.1:{port}", "Connection: close"]
        if rng.random() < 0.5:
            headers += ["Upgrade: websocket", f"Sec-WebSocket-Key: {key()}"]
            headers += ["Sec-WebSocket-Version: 13"]
        request = line + b"\r\n" + "\r\n".join(headers).encode() + b"\r\n\r\n"
        # Not a WebSocket handshake: 101 is never right, nor is a 500. The
        # app's index ("/") is not among the targets, so a 2xx is right only
        # for OPTIONS (Flask answers it for every route).
        low = 200 if method == "OPTIONS" else 300
        return {"chunks": [request], "statuses": frozenset(range(low, 600)) - {500}}

    def mangled_handshake() -> Dict[str, Any]:
        headers = {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": key(),
            "Sec-WebSocket-Version": "13",
        }
        name = rng.choice(sorted(headers))
        if rng.random() < 0.4:
            del headers[name]
        else:
            headers[name] = rng.choice(
                {
                    "Upgrade": ("websocketx", "h2c", "", "web socket", "websocket\x01"),
                    "Connection": ("keep-alive", "", "close", "upgradex"),
                    "Sec-WebSocket-Key": (
                        "",
                        "short",
                        base64.b64encode(rng.randbytes(15)).decode(),
                        base64.b64encode(rng.randbytes(17)).decode(),
                        "!!!!" * 6,
                    ),
                    "Sec-WebSocket-Version": ("8", "12", "14", "", "thirteen", "13, 8", "013"),
                }[name]
            )
        lines = [f"Host: 127.0.0.1:{port}"] + [f"{k}: {v}" for k, v in headers.items()]
        request = ("GET /echo HTTP/1.1\r\n" + "\r\n".join(lines) + "\r\n\r\n").encode()
        return {"chunks": [request], "statuses": frozenset({400, 426})}

    def junk_headers() -> Dict[str, Any]:
        extra = []
        control = False
        for _ in range(rng.randrange(1, 20)):
            value = bytearray(token(rng.randrange(0, 60)).encode())
            if rng.random() < 0.15:
                bad = rng.choice([*range(0x00, 0x09), *range(0x0B, 0x0D), *range(0x0E, 0x20), 0x7F])
                value.insert(rng.randrange(len(value) + 1), bad)
                control = True
            extra.append(f"X-{token(rng.randrange(1, 20))}: {value.decode('latin-1')}")
        request = handshake_request(port, "/echo", key(), extra)
        if control:  # a control character in a header: the client's error
            return {"chunks": [request.decode("latin-1").encode("latin-1")], "statuses": REFUSED}
        return {"chunks": [request], "statuses": frozenset({101}), "silence_ok": False}

    def oversized_headers() -> Dict[str, Any]:
        if rng.random() < 0.5:
            extra = [f"X-Big: {'a' * rng.randrange(70_000, 200_000)}"]
        else:
            count = rng.randrange(700, 3000)
            extra = [f"X-{i}: {token(100)}" for i in range(count)]
        request = handshake_request(port, "/echo", key(), extra)
        return {"chunks": [request], "statuses": REFUSED_BY_UWSGI}

    def random_bytes() -> Dict[str, Any]:
        data = rng.randbytes(rng.choice((1, 16, 200, 4000)))
        if rng.random() < 0.5:
            data += b"\r\n\r\n"
        return {"chunks": [data], "statuses": REFUSED_BY_UWSGI, "ending": "fin"}

    def cut_short() -> Dict[str, Any]:
        request = handshake_request(port, "/echo", key())
        cut = rng.randrange(1, len(request) - 1)
        return {
            "chunks": [request[:cut]],
            "statuses": REFUSED,
            "ending": rng.choice(("fin", "reset")),
        }

    return {
        "http-request-line": random_request_line,
        "http-mangled-handshake": mangled_handshake,
        "http-junk-headers": junk_headers,
        "http-oversized-headers": oversized_headers,
        "http-random-bytes": random_bytes,
        "http-cut-short": cut_short,
    }


#: How often each kind of case comes up (out of the sum).
WEIGHTS = {
    "random-bytes": 20,
    "huge-length": 5,
    "unmasked": 4,
    "wrong-mask": 5,
    "reserved-bits": 4,
    "reserved-opcode": 4,
    "control-too-long": 4,
    "control-fragmented": 4,
    "close-invalid-code": 5,
    "close-one-byte": 2,
    "close-bad-reason": 4,
    "close-valid": 3,
    "invalid-utf8": 6,
    "truncated-utf8": 3,
    "stray-continuation": 3,
    "interleaved": 3,
    "oversized-message": 0.3,
    "truncated-header": 4,
    "http-request-line": 6,
    "http-mangled-handshake": 6,
    "http-junk-headers": 5,
    "http-oversized-headers": 1,
    "http-random-bytes": 4,
    "http-cut-short": 3,
}


def make_case(seed: int, index: int, port: int) -> Case:
    """Case ``index`` of the run seeded ``seed``: the same bytes every time."""
    rng = random.Random(f"{seed}:{index}")
    category = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
    if category.startswith("http-"):
        fields = _handshake_cases(rng, port)[category]()
        return Case(index, category, handshake=False, **fields)
    fields = _frame_cases(rng)[category]()
    return Case(index, category, **fields)


# ---------------------------------------------------------------------------
# Running cases over raw asyncio sockets


class Closed(Exception):
    """The server closed (``how`` is "eof" or "reset") before the frame was complete."""

    def __init__(self, how: str) -> None:
        super().__init__(how)
        self.how = how


async def _read_exact(reader: asyncio.StreamReader, count: int, deadline: float) -> bytes:
    try:
        return await asyncio.wait_for(
            reader.readexactly(count), max(0.001, deadline - time.monotonic())
        )
    except asyncio.IncompleteReadError:
        raise Closed("eof") from None
    except (ConnectionResetError, BrokenPipeError):
        raise Closed("reset") from None


async def read_frame(reader: asyncio.StreamReader, deadline: float) -> Tuple[int, bytes]:
    """One server frame: (opcode, payload). Raises Closed, or asyncio.TimeoutError."""
    first, second = await _read_exact(reader, 2, deadline)
    if second & 0x80 or first & 0x70:
        raise ValueError(f"a masked frame or RSV bits from the server: {first:#x} {second:#x}")
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await _read_exact(reader, 2, deadline))
    elif length == 127:
        (length,) = struct.unpack("!Q", await _read_exact(reader, 8, deadline))
    if length > 4 * MAX_MESSAGE:
        raise ValueError(f"the server announced a {length}-byte frame")
    return first & 0x0F, await _read_exact(reader, length, deadline)


async def read_until_eof(reader: asyncio.StreamReader, deadline: float) -> Tuple[bytes, str]:
    """Everything until the server hangs up: (bytes, "eof" | "reset" | "timeout")."""
    received = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return received, "timeout"
        try:
            chunk = await asyncio.wait_for(reader.read(65536), remaining)
        except asyncio.TimeoutError:
            return received, "timeout"
        except (ConnectionResetError, BrokenPipeError):
            return received, "reset"
        if not chunk:
            return received, "eof"
        received += chunk


@dataclass
class Reply:
    """What the server sent back after the hostile bytes."""

    frames: List[Tuple[int, bytes]]
    close_code: Optional[int]
    #: How the TCP connection ended: "eof", "reset" or "timeout" (still open).
    ending: str

    def outcome(self) -> str:
        if self.close_code is not None:
            return f"close {self.close_code}"
        return self.ending


async def read_reply(reader: asyncio.StreamReader, timeout: float = CASE_TIMEOUT) -> Reply:
    """Frames up to and including a close frame, then wait for the TCP connection to end."""
    deadline = time.monotonic() + timeout
    frames: List[Tuple[int, bytes]] = []
    for _ in range(10_000):  # bounded by the deadline as well
        try:
            opcode, payload = await read_frame(reader, deadline)
        except Closed as exc:
            return Reply(frames, None, exc.how)
        except asyncio.TimeoutError:
            return Reply(frames, None, "timeout")
        if opcode == OP_CLOSE:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            trailing, ending = await read_until_eof(reader, time.monotonic() + timeout)
            if trailing:
                frames.append((-1, trailing))  # bytes after the close frame: always wrong
            return Reply(frames, code, ending)
        frames.append((opcode, payload))
    return Reply(frames, None, "timeout")


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with a reset (SO_LINGER 0), as a client that crashes does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _send(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Send what the server is willing to read; it may hang up first."""
    with contextlib.suppress(ConnectionResetError, BrokenPipeError, asyncio.TimeoutError):
        writer.write(data)
        await asyncio.wait_for(writer.drain(), CASE_TIMEOUT)


async def open_websocket(
    port: int, path: str = "/echo", timeout: float = CASE_TIMEOUT, rcvbuf: Optional[int] = None
) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to 127.0.0.1 with a completed opening handshake.

    ``rcvbuf`` shrinks the client's receive buffer (set before connecting, so
    that the TCP window is small): a client that stops reading is felt at once.
    """
    if rcvbuf is None:
        connecting = asyncio.open_connection("127.0.0.1", port)
    else:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        connecting = asyncio.open_connection(sock=sock)
    reader, writer = await asyncio.wait_for(connecting, timeout)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(handshake_request(port, path, key))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise AssertionError(f"handshake refused: {head[:300]!r}")
        expected = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest())
        if b"sec-websocket-accept: " + expected.lower() not in head.lower():
            raise AssertionError(f"wrong Sec-WebSocket-Accept: {head[:300]!r}")
    except BaseException:
        writer.transport.abort()
        raise
    return reader, writer


def _with_terminator(data: bytes) -> bytes:
    """``data``, completed to a frame boundary if needed, then a frame no server accepts.

    So that random bytes always end in a verdict: a server that waits for the
    rest of a frame it was promised is right to wait.
    """
    for _ in range(5):  # a header, its extended length, its mask, its payload
        split = split_frames(data)
        if split.header_error:
            return data
        if not split.missing:
            return data + TERMINATOR
        data += b"\x00" * split.missing
    return data + TERMINATOR


async def run_frame_case(case: Case, port: int) -> Tuple[str, Optional[str]]:
    """Run a frame case: (outcome, failure or None)."""
    try:
        reader, writer = await open_websocket(port)
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, AssertionError) as exc:
        return "handshake failed", f"the valid handshake failed: {exc!r}"
    try:
        chunks = list(case.chunks)
        if case.echoes:
            # The echoes first: a close sent with the message may overtake its echo.
            await _send(writer, chunks.pop(0))
            deadline = time.monotonic() + CASE_TIMEOUT
            echoes = []
            try:
                for _ in case.echoes:
                    echoes.append(await read_frame(reader, deadline))
            except (Closed, asyncio.TimeoutError) as exc:
                return "no echo", f"no echo of the message: {exc!r}"
            if echoes != case.echoes:
                return "wrong echo", f"echoed {echoes!r}, expected {case.echoes!r}"
        data = b"".join(chunks)
        if case.random_frames and case.ending == "wait":
            data = _with_terminator(data)
        await _send(writer, data)
        if case.ending == "reset":
            _abort(writer)
            return "client reset", None
        if case.ending == "fin":
            with contextlib.suppress(OSError):
                writer.write_eof()
        reply = await read_reply(reader)
    except ValueError as exc:
        return "garbage", f"the server sent a malformed frame: {exc}"
    finally:
        writer.transport.abort()
    outcome = reply.outcome()
    garbage = [item for item in reply.frames if item[0] == -1]
    if garbage:
        return outcome, f"bytes after the close frame: {garbage[0][1][:100]!r}"
    if reply.ending == "timeout":
        return outcome, f"the server neither closed nor hung up in {CASE_TIMEOUT} s"
    if case.random_frames:
        messages, pongs = possible_replies(split_frames(data).frames)
        for opcode, payload in reply.frames:
            if opcode == OP_PONG and payload in pongs:
                continue
            if (opcode, payload) in messages:
                continue
            return outcome, f"a reply that was never sent: {opcode:#x} {payload[:100]!r}"
        # A close code of the server's own, or the echo of a close frame sent.
        sent_codes = {
            struct.unpack("!H", payload[:2])[0]
            for _, opcode, payload in split_frames(data).frames
            if opcode == OP_CLOSE and len(payload) >= 2
        }
        code = reply.close_code
        if code is not None and not 1000 <= code <= 1015 and code not in sent_codes:
            return outcome, f"close code {code}, not 1000-1015 nor one sent"
        return outcome, None
    if reply.close_code not in case.codes:
        return outcome, f"{outcome}, expected close {sorted(case.codes)}"
    if reply.frames:
        return outcome, f"frames before the close: {reply.frames[:3]!r}"
    return outcome, None


def _parse_response(data: bytes) -> Tuple[Optional[int], Dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    # uWSGI's lenient parser may echo a garbled "protocol" from the request
    # into its status line: the status is the first 3-digit word after it.
    match = re.search(r" ([1-5][0-9][0-9])( |$)", status_line)
    status = int(match.group(1)) if match else None
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines)
    }
    return status, headers, body


async def _read_response(reader: asyncio.StreamReader, deadline: float) -> Tuple[bytes, str]:
    """An HTTP response head and its body (Content-Length), or all until EOF."""
    received = b""
    while True:
        if b"\r\n\r\n" in received:
            status, headers, body = _parse_response(received)
            if status == 101:
                return received, "upgraded"
            length = headers.get("content-length", "")
            if length.isdigit() and len(body) >= int(length):
                return received, "complete"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return received, "timeout"
        try:
            chunk = await asyncio.wait_for(reader.read(65536), remaining)
        except asyncio.TimeoutError:
            return received, "timeout"
        except (ConnectionResetError, BrokenPipeError):
            return received, "reset"
        if not chunk:
            return received, "eof"
        received += chunk


async def run_http_case(case: Case, port: int) -> Tuple[str, Optional[str]]:
    """Run a handshake case: (outcome, failure or None)."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), CASE_TIMEOUT
        )
    except (OSError, asyncio.TimeoutError) as exc:
        return "connect failed", f"could not connect: {exc!r}"
    try:
        await _send(writer, b"".join(case.chunks))
        if case.ending == "reset":
            _abort(writer)
            return "client reset", None
        if case.ending == "fin":
            with contextlib.suppress(OSError):
                writer.write_eof()
        received, ending = await _read_response(reader, time.monotonic() + CASE_TIMEOUT)
        if not received:
            if ending == "timeout":
                return "timeout", f"no answer and no hang-up in {CASE_TIMEOUT} s"
            return ending, None if case.silence_ok else f"{ending} instead of an answer"
        status, _headers, _ = _parse_response(received)
        outcome = f"http {status}"
        if status not in case.statuses:
            expected = sorted(case.statuses)
            return outcome, f"status {status}, expected {expected[:8]}: {received[:200]!r}"
        if status != 101:
            return outcome, None
        # Upgraded: the connection must work as any other.
        leftover = received.partition(b"\r\n\r\n")[2]
        if leftover:
            return outcome, f"bytes after the 101 before any message: {leftover[:100]!r}"
        text = f"still works {case.index}".encode()
        writer.write(frame(OP_TEXT, text))
        try:
            echo = await read_frame(reader, time.monotonic() + CASE_TIMEOUT)
        except (Closed, asyncio.TimeoutError) as exc:
            return outcome, f"no echo after the upgrade: {exc!r}"
        writer.write(frame(OP_CLOSE, close_payload(1000)))
        reply = await read_reply(reader)
        if echo != (OP_TEXT, text) or reply.frames or reply.close_code != 1000:
            return outcome, f"after the upgrade: {echo!r}, {reply.frames[:3]!r}, {reply.outcome()}"
        return outcome, None
    finally:
        writer.transport.abort()


@dataclass
class FuzzResult:
    seed: int
    cases: int = 0
    seconds: float = 0.0
    #: category -> outcome -> count
    outcomes: Dict[str, Dict[str, int]] = field(default_factory=dict)
    #: (index, category, failure), the first few
    failures: List[Tuple[int, str, str]] = field(default_factory=list)
    failure_count: int = 0

    def summary(self) -> str:
        lines = [
            f"fuzz seed {self.seed}: {self.cases} cases in {self.seconds:.1f} s "
            f"({self.cases / max(self.seconds, 1e-9):.0f}/s), {self.failure_count} failed"
        ]
        for category in sorted(self.outcomes):
            counts = ", ".join(f"{k}: {v}" for k, v in sorted(self.outcomes[category].items()))
            lines.append(f"  {category}: {counts}")
        for index, category, failure in self.failures:
            lines.append(f"  FAILED case {index} ({category}): {failure}")
        return "\n".join(lines)


async def _run_cases(
    port: int, seed: int, indexes: Sequence[int], concurrency: int, max_seconds: float
) -> FuzzResult:
    result = FuzzResult(seed)
    started = time.monotonic()
    todo = iter(indexes)

    async def worker() -> None:
        for index in todo:  # shared iterator: each index runs once
            if time.monotonic() - started > max_seconds:
                return
            case = make_case(seed, index, port)
            runner = run_frame_case if case.handshake else run_http_case
            try:
                outcome, failure = await runner(case, port)
            except Exception as exc:  # a bug in a case or the runner: reported, not hidden
                outcome, failure = "error", f"{type(exc).__name__}: {exc}"
            counts = result.outcomes.setdefault(case.category, {})
            counts[outcome] = counts.get(outcome, 0) + 1
            result.cases += 1
            if failure is not None:
                result.failure_count += 1
                if len(result.failures) < 20:
                    result.failures.append((index, case.category, failure))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.monotonic() - started
    return result


def run_cases(
    port: int,
    seed: int,
    count: int,
    *,
    concurrency: int = 32,
    max_seconds: float = 600.0,
    only: Optional[Sequence[int]] = None,
) -> FuzzResult:
    """Run cases 0..count-1 (or the ``only`` indexes) of ``seed`` against 127.0.0.1:``port``."""
    indexes = list(only) if only is not None else list(range(count))
    return asyncio.run(_run_cases(port, seed, indexes, concurrency, max_seconds))


# ---------------------------------------------------------------------------
# Processes and their resources


def process_fds(pid: int) -> int:
    return psutil.Process(pid).num_fds()


def process_rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def settle(pid: int, fds_at_most: Optional[int] = None, timeout: float = 15.0) -> Tuple[int, int]:
    """(fds, RSS) of ``pid`` once its fds are down to ``fds_at_most`` and its RSS stops moving.

    Bounded by ``timeout``: what it returns then is what the caller asserts on.
    """
    deadline = time.monotonic() + timeout
    fds = process_fds(pid)
    while fds_at_most is not None and fds > fds_at_most and time.monotonic() < deadline:
        time.sleep(0.1)
        fds = process_fds(pid)
    rss = process_rss(pid)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = process_rss(pid)
        if now == rss:
            break
        rss = now
    return process_fds(pid), rss


class Bystander:
    """tests/bystander.py in a process of its own: a client that echoes every 100 ms."""

    def __init__(self, url: str, interval: float = 0.1, miss: float = 1.0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.bystander", url, "--interval", str(interval),
             "--miss", str(miss), "--max-seconds", "3600"],
            cwd=REPO_ROOT,
            env=dict(os.environ, PYTHONPATH=REPO_ROOT),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # "ready", or its result if it failed
        if line.strip() != "ready":
            self.process.kill()
            raise AssertionError(f"the bystander did not connect: {line!r}")

    def finish(self, timeout: float = 30.0) -> Dict[str, Any]:
        """Stop it; its result: beats, misses (gaps over 1 s), longest_gap, errors."""
        try:
            out, _ = self.process.communicate("stop\n", timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        lines = out.strip().splitlines()
        return json.loads(lines[-1]) if lines else {"errors": ["no result"], "misses": []}

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


# ---------------------------------------------------------------------------
# The soak: connect-send-close cycles

#: How the soak's cycles end, and how often (out of the sum).
SOAK_WEIGHTS = {"clean": 55, "reset": 20, "half-close": 20, "silent": 5}


@dataclass
class SoakResult:
    seed: int
    cycles: int = 0
    seconds: float = 0.0
    kinds: Dict[str, int] = field(default_factory=dict)
    failures: List[Tuple[int, str, str]] = field(default_factory=list)
    failure_count: int = 0

    def summary(self) -> str:
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(self.kinds.items()))
        lines = [
            f"soak seed {self.seed}: {self.cycles} cycles in {self.seconds:.1f} s "
            f"({self.cycles / max(self.seconds, 1e-9):.0f}/s; {kinds}), "
            f"{self.failure_count} failed"
        ]
        lines += [f"  FAILED cycle {i} ({kind}): {why}" for i, kind, why in self.failures]
        return "\n".join(lines)


async def _soak_cycle(port: int, index: int, kind: str, silent_hold: float) -> Optional[str]:
    """One cycle; a failure, or None."""
    reader, writer = await open_websocket(port)
    text = f"cycle {index}".encode()
    try:
        writer.write(frame(OP_TEXT, text))
        if kind == "clean":
            echo = await read_frame(reader, time.monotonic() + CASE_TIMEOUT)
            if echo != (OP_TEXT, text):
                return f"echo {echo!r}"
            writer.write(frame(OP_CLOSE, close_payload(1000)))
            reply = await read_reply(reader)
            if reply.frames or reply.close_code != 1000 or reply.ending == "timeout":
                return f"clean close answered with {reply.frames[:2]!r} then {reply.outcome()}"
            return None
        if kind == "reset":
            if index % 2:
                await read_frame(reader, time.monotonic() + CASE_TIMEOUT)
            _abort(writer)
            return None
        if kind == "half-close":
            # FIN without a close frame: the server must let go of the connection.
            writer.write_eof()
            reply = await read_reply(reader)
            if reply.ending == "timeout":
                return f"half-closed connection still open after {CASE_TIMEOUT} s"
            if [f for f in reply.frames if f != (OP_TEXT, text)]:
                return f"after a half-close: {reply.frames[:2]!r}"
            return None
        # "silent": the client goes away without a FIN (a half-open connection,
        # as when its host vanishes); only the server's ping timeout can tell.
        await asyncio.sleep(silent_hold)
        reply = await read_reply(reader)
        others = [f for f in reply.frames if f[0] != OP_PING and f != (OP_TEXT, text)]
        if others or reply.close_code != 1011 or reply.ending == "timeout":
            return f"a silent client: {others[:2]!r} then {reply.outcome()}, expected close 1011"
        return None
    finally:
        writer.transport.abort()


async def _run_soak(
    port: int, seed: int, cycles: int, concurrency: int, silent_hold: float, max_seconds: float
) -> SoakResult:
    result = SoakResult(seed)
    rng = random.Random(seed)
    kinds = rng.choices(list(SOAK_WEIGHTS), weights=list(SOAK_WEIGHTS.values()), k=cycles)
    todo = iter(range(cycles))
    started = time.monotonic()
    silent: List[asyncio.Task] = []

    async def one(index: int) -> None:
        kind = kinds[index]
        try:
            failure = await _soak_cycle(port, index, kind, silent_hold)
        except Exception as exc:
            failure = f"{type(exc).__name__}: {exc}"
        result.cycles += 1
        result.kinds[kind] = result.kinds.get(kind, 0) + 1
        if failure is not None:
            result.failure_count += 1
            if len(result.failures) < 20:
                result.failures.append((index, kind, failure))

    async def worker() -> None:
        for index in todo:
            if time.monotonic() - started > max_seconds:
                return
            if kinds[index] == "silent":  # held in the background, not by this worker
                silent.append(asyncio.create_task(one(index)))
                await asyncio.sleep(0)
            else:
                await one(index)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await asyncio.gather(*silent)
    result.seconds = time.monotonic() - started
    return result


def run_soak(
    port: int,
    seed: int,
    cycles: int,
    *,
    concurrency: int = 16,
    silent_hold: float = 5.0,
    max_seconds: float = 3600.0,
) -> SoakResult:
    """``cycles`` connect-send-close cycles against 127.0.0.1:``port``'s ``/echo``.

    ``silent_hold`` must exceed the server's ping interval plus its ping
    timeout: that is when a silent client must have been closed with 1011.
    """
    return asyncio.run(_run_soak(port, seed, cycles, concurrency, silent_hold, max_seconds))


def raw_exchange(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    """Send ``request``, half-close, and return all the server says until it hangs up."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
        received = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
        return received


class FrameStream:
    """Reads a server's frames fast, in big chunks (for floods of messages)."""

    def __init__(self, reader: asyncio.StreamReader, keep: Optional[int] = None) -> None:
        self.reader = reader
        self.buffer = bytearray()
        #: Bytes of each payload to keep (all if None): big floods need only a prefix.
        self.keep = keep

    async def frames(self, timeout: float = 30.0) -> List[Tuple[int, bytes, int]]:
        """(opcode, payload or its first ``keep`` bytes, length) of the frames that
        are complete after the next read: at least one, else Closed or a timeout."""
        while True:
            frames = self._parse()
            if frames:
                return frames
            try:
                chunk = await asyncio.wait_for(self.reader.read(1 << 20), timeout)
            except (ConnectionResetError, BrokenPipeError):
                raise Closed("reset") from None
            if not chunk:
                raise Closed("eof")
            self.buffer += chunk

    def _parse(self) -> List[Tuple[int, bytes, int]]:
        frames = []
        buffer, pos = self.buffer, 0
        while len(buffer) - pos >= 2:
            length, head = buffer[pos + 1] & 0x7F, 2
            if length == 126:
                if len(buffer) - pos < 4:
                    break
                length, head = int.from_bytes(buffer[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if len(buffer) - pos < 10:
                    break
                length, head = int.from_bytes(buffer[pos + 2 : pos + 10], "big"), 10
            if len(buffer) - pos < head + length:
                break
            end = pos + head + (length if self.keep is None else min(length, self.keep))
            frames.append((buffer[pos] & 0x0F, bytes(buffer[pos + head : end]), length))
            pos += head + length
        del buffer[:pos]
        return frames
