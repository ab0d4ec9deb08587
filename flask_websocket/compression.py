"""permessage-deflate (RFC 7692): the settings, and compressing what the server sends.

Off unless the app turns it on (``WEBSOCKET_COMPRESSION`` or a route's
``compression``): it costs CPU per message and zlib state per connection.

Negotiation and decompression are websockets': its
:class:`~websockets.extensions.permessage_deflate.ServerPerMessageDeflateFactory`
answers the client's offers (an offer with a parameter it does not know, a bad
value or a parameter twice is declined, not negotiated; a header that does not
parse is a ``400``), and its parser inflates compressed frames with zlib's
``max_length`` bounded by the room left under ``WEBSOCKET_MAX_MESSAGE_SIZE``:
a message that would inflate past it fails the connection with ``1009``
before another byte of it is inflated (zip bombs).

Compression of the server's messages is here, because the server frames its
own messages (:func:`~flask_websocket.protocol.encode_frame`), and because of
broadcast: with ``server_no_context_takeover`` (the default), every message
is compressed on its own, so the same compressed bytes are valid for every
connection that negotiated it with the same window. A broadcast is then
compressed once per process for all those members (see
:attr:`Deflater.frame_kind`), and those connections hold no compressor at
all: the process keeps one per window size (:func:`compress_alone`), reset
after each message by ``Z_FULL_FLUSH``. A connection with context takeover
compresses with its own (websockets') compressor, message after message.

Messages shorter than ``WEBSOCKET_COMPRESSION_THRESHOLD`` bytes go out
uncompressed (RFC 7692 lets the sender choose per message).
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

from websockets.exceptions import NegotiationError
from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.frames import Frame, Opcode
from websockets.typing import ExtensionParameter

from .protocol import encode_frame

__all__ = [
    "COMPRESSION_METHODS",
    "DEFLATE_OPTION_DEFAULTS",
    "DeflateSettings",
    "Deflater",
    "compress_alone",
    "deflate_options_problem",
]

#: The values of ``WEBSOCKET_COMPRESSION`` (and a route's ``compression``).
COMPRESSION_METHODS = (None, "permessage-deflate")

#: ``WEBSOCKET_COMPRESSION_OPTIONS``: the keys, and their defaults (chosen for memory).
DEFLATE_OPTION_DEFAULTS: Dict[str, Any] = {
    # No compressor per connection: the process's, shared (and a broadcast
    # compressed once). With False, each connection keeps its own.
    "server_no_context_takeover": True,
    # No decompressor kept between the client's messages.
    "client_no_context_takeover": True,
    # The server's window (9 to 15): with context takeover, 2**(bits+2) bytes
    # of compressor per connection.
    "server_max_window_bits": 15,
    # The client's window (8 to 15), when the client offers to limit it: our
    # decompressor's window is 2**bits bytes while a message is inflated
    # (kept between messages with client context takeover).
    "client_max_window_bits": 15,
}

# RFC 7692, 7.2.1: a message compressed and flushed ends with this empty
# block, which the sender removes and the receiver puts back.
_TAIL = b"\x00\x00\xff\xff"
_RSV1 = 0x40
# Our compressors' zlib memLevel: 8 (zlib's default) for the process's
# shared ones, 5 for one per connection (context takeover): 16 KiB of hash
# tables instead of 128 (websockets' choice too).
_SHARED_MEM_LEVEL = 8
_OWN_MEM_LEVEL = 5


def deflate_options_problem(value: Any) -> Optional[str]:
    """What is wrong with a ``WEBSOCKET_COMPRESSION_OPTIONS`` value, if anything."""
    expected = (
        "a dict with some of server_no_context_takeover and client_no_context_takeover "
        "(True or False), server_max_window_bits (9 to 15) and client_max_window_bits "
        "(8 to 15)"
    )
    if not isinstance(value, Mapping) or set(value) - set(DEFLATE_OPTION_DEFAULTS):
        return expected
    for name in ("server_no_context_takeover", "client_no_context_takeover"):
        if name in value and not isinstance(value[name], bool):
            return expected
    for name, lowest in (("server_max_window_bits", 9), ("client_max_window_bits", 8)):
        if name in value:
            bits = value[name]
            if not isinstance(bits, int) or isinstance(bits, bool) or not lowest <= bits <= 15:
                return expected
    return None


@dataclass(frozen=True)
class DeflateSettings:
    """What a route negotiates, and from what size it compresses."""

    server_no_context_takeover: bool = True
    client_no_context_takeover: bool = True
    server_max_window_bits: int = 15
    client_max_window_bits: int = 15
    #: Messages shorter than this (bytes) are sent uncompressed.
    threshold: int = 128

    @classmethod
    def from_config(cls, options: Mapping[str, Any], threshold: int) -> DeflateSettings:
        """From ``WEBSOCKET_COMPRESSION_OPTIONS`` (checked) and ``..._THRESHOLD``."""
        merged = {**DEFLATE_OPTION_DEFAULTS, **options}
        return cls(threshold=threshold, **merged)

    def factory(self) -> ServerPerMessageDeflateFactory:
        """websockets' negotiator for these settings (one per settings: it keeps no state)."""
        return _factory(self)


class _Factory(ServerPerMessageDeflateFactory):
    """websockets' negotiator, declining a server window of 8 bits on every version.

    zlib cannot compress with a window of 8 bits (websockets 17 declines it
    itself; 15.0.1 accepted it, and the first message would have failed).
    """

    def process_request_params(
        self, params: Sequence[ExtensionParameter], accepted_extensions: Sequence[Extension]
    ) -> Tuple[List[ExtensionParameter], PerMessageDeflate]:
        response, extension = super().process_request_params(params, accepted_extensions)
        if extension.local_max_window_bits < 9:
            raise NegotiationError("unsupported server_max_window_bits = 8, use 9")
        return response, extension


@functools.lru_cache(maxsize=32)
def _factory(settings: DeflateSettings) -> ServerPerMessageDeflateFactory:
    self = settings
    return _Factory(
        server_no_context_takeover=self.server_no_context_takeover,
        client_no_context_takeover=self.client_no_context_takeover,
        server_max_window_bits=self.server_max_window_bits,
        client_max_window_bits=self.client_max_window_bits,
        compress_settings={"memLevel": _OWN_MEM_LEVEL},
    )


# The process's compressors for messages compressed alone, per window size.
# A list each, used as a stack: under gevent one compressor serves every
# message (compress and flush run with no switch in between); threads that
# compress at the same time each pop their own (list.pop and append are
# atomic), so the stack grows to the number of threads compressing at once.
_idle_compressors: Dict[int, List[Any]] = {}


def compress_alone(payload: bytes, bits: int) -> bytes:
    """``payload`` compressed as a message of its own (no context), tail removed.

    Valid for any peer that negotiated ``server_no_context_takeover`` and a
    window of ``bits`` or more: ``Z_FULL_FLUSH`` resets the compressor, so
    nothing in the output refers to an earlier message.
    """
    idle = _idle_compressors.get(bits)
    if idle is None:
        idle = _idle_compressors.setdefault(bits, [])
    try:
        compressor = idle.pop()
    except IndexError:
        compressor = zlib.compressobj(wbits=-bits, memLevel=_SHARED_MEM_LEVEL)
    # (If zlib raises, MemoryError, the compressor is dropped, not put back.)
    data: bytes = compressor.compress(payload) + compressor.flush(zlib.Z_FULL_FLUSH)
    idle.append(compressor)
    return data[:-4] if data.endswith(_TAIL) else data


class Deflater:
    """The compressing side of one connection that negotiated permessage-deflate."""

    __slots__ = ("_extension", "_threshold", "frame_kind", "shared_bits")

    def __init__(self, extension: PerMessageDeflate, threshold: int, kind: Tuple[Any, ...]) -> None:
        self._extension = extension
        self._threshold = threshold
        #: The window of the process's compressor when this connection's
        #: messages are compressed alone (no server context takeover); else 0.
        self.shared_bits = (
            extension.local_max_window_bits if extension.local_no_context_takeover else 0
        )
        #: What the frame of a broadcast depends on: members with the same
        #: kind get the same bytes. ``None``: compressed for this connection alone.
        self.frame_kind: Optional[Hashable] = (
            (*kind, self.shared_bits, threshold) if self.shared_bits else None
        )

    def frame(self, opcode: int, payload: bytes) -> bytes:
        """The frame of one message: compressed (RSV1) from the threshold on."""
        if len(payload) < self._threshold:
            return encode_frame(opcode, payload)
        if self.shared_bits:
            return encode_frame(_RSV1 | opcode, compress_alone(payload, self.shared_bits))
        # Context takeover: the connection's own compressor, websockets'
        # (its public Extension.encode), message after message.
        encoded = self._extension.encode(Frame(Opcode(opcode), payload))
        return encode_frame(_RSV1 | opcode, bytes(encoded.data))
