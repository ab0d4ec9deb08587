"""The send queue and its overflow policies, without sockets (flask_websocket/sendqueue.py)."""

from __future__ import annotations

import socket
import struct
from typing import Optional, Union

import pytest

from flask_websocket.exceptions import SendQueueFull
from flask_websocket.protocol import OP_CLOSE, OP_PONG, OP_TEXT, encode_frame
from flask_websocket.sendqueue import SendQueue, reset_on_close


class KernelBuffer:
    """A socket whose kernel takes ``room`` bytes, then would block.

    Its send buffer grows as Linux's does: ``SO_SNDBUF`` set to ``n`` makes
    it ``2 * n``, at most ``2 * cap``.
    """

    def __init__(self, room: int, sndbuf: int = 8192, cap: int = 2**22) -> None:
        self.room = room
        self.sndbuf = sndbuf
        self.cap = cap
        self.written = bytearray()
        self.shut_down = False
        self.linger: Optional[bytes] = None

    def getsockopt(self, level: int, option: int) -> int:
        assert (level, option) == (socket.SOL_SOCKET, socket.SO_SNDBUF)
        return self.sndbuf

    def setsockopt(self, level: int, option: int, value: Union[int, bytes]) -> None:
        assert level == socket.SOL_SOCKET
        if option == socket.SO_LINGER:
            assert isinstance(value, bytes)
            self.linger = value
            return
        assert option == socket.SO_SNDBUF and isinstance(value, int)
        grown = 2 * min(value, self.cap)
        self.room = max(self.room + grown - self.sndbuf, 0)
        self.sndbuf = grown

    def send(self, data: Union[bytes, memoryview]) -> int:
        taken = min(self.room, len(data))
        if not taken:
            raise BlockingIOError
        self.room -= taken
        self.written += data[:taken]
        return taken

    def shutdown(self, how: int) -> None:
        assert how == socket.SHUT_WR
        self.shut_down = True


def queue_of(*frames: bytes) -> SendQueue:
    queue = SendQueue()
    for frame in frames:
        queue.append(frame)
    return queue


def test_flush_writes_in_order_and_keeps_the_rest_of_a_partial_frame() -> None:
    queue = queue_of(b"aaaa", b"bbbb", b"")
    sock = KernelBuffer(room=6)
    assert queue.flush(sock) is False  # type: ignore[arg-type]
    assert (bytes(sock.written), queue.size) == (b"aaaabb", 2)
    sock.room = 100
    assert queue.flush(sock) is True  # type: ignore[arg-type]
    assert (bytes(sock.written), queue.size, sock.shut_down) == (b"aaaabbbb", 0, True)


def test_drop_oldest_drops_whole_frames_but_never_a_partly_written_one() -> None:
    queue = queue_of(b"1111", b"2222", b"3333", b"4444")
    sock = KernelBuffer(room=2)
    queue.flush(sock)  # type: ignore[arg-type]  # "11" written: "11" of frame 1 left
    assert queue.size == 14
    assert queue.make_room(4, limit=12, policy="drop_oldest") is True
    assert queue.size == 6  # frames 2 and 3 dropped: 2 + 4 + the new 4 fit in 12
    sock.room = 100
    queue.flush(sock)  # type: ignore[arg-type]
    assert bytes(sock.written) == b"11114444"  # frame 1 whole, then the newest


def test_disconnect_drops_every_frame_not_started() -> None:
    queue = queue_of(b"1111", b"2222", b"3333")
    sock = KernelBuffer(room=1)
    queue.flush(sock)  # type: ignore[arg-type]
    assert queue.make_room(4, limit=8, policy="disconnect") is False
    assert queue.size == 3  # the rest of frame 1: cutting it would corrupt the stream
    sock.room = 100
    assert queue.flush(sock) is True  # type: ignore[arg-type]
    assert bytes(sock.written) == b"1111"


def test_raise_keeps_everything() -> None:
    queue = queue_of(b"1111", b"2222")
    with pytest.raises(SendQueueFull, match="8 bytes are waiting"):
        queue.make_room(4, limit=8, policy="raise")
    assert queue.size == 8


def test_hand_over_ends_the_stream_at_a_frame_boundary() -> None:
    first, second = encode_frame(OP_TEXT, b"1" * 100), encode_frame(OP_TEXT, b"2" * 100)
    pong = encode_frame(OP_PONG, b"p")
    close = encode_frame(OP_CLOSE, struct.pack("!H", 1013))
    queue = queue_of(first, second, pong, close, b"")
    sock = KernelBuffer(room=30)
    queue.flush(sock)  # type: ignore[arg-type]  # 30 bytes of the first frame written
    sock.room = 0  # and the kernel's buffer is full
    assert queue.hand_over(sock) is True  # type: ignore[arg-type]
    # The first frame finished, the second (not started) dropped, control frames kept.
    assert bytes(sock.written) == first + pong + close
    assert (sock.shut_down, queue.size) == (True, 0)
    assert sock.sndbuf > 8192  # it took a larger send buffer


def test_hand_over_says_when_the_kernel_cannot_take_the_rest() -> None:
    frame = encode_frame(OP_TEXT, b"x" * 50000)
    queue = queue_of(frame, encode_frame(OP_CLOSE, struct.pack("!H", 1013)), b"")
    sock = KernelBuffer(room=1000, sndbuf=8192, cap=4096)  # net.core.wmem_max of 4096
    queue.flush(sock)  # type: ignore[arg-type]
    assert queue.hand_over(sock) is False  # type: ignore[arg-type]
    assert not sock.shut_down  # a cut frame must not look like the end of the stream
    reset_on_close(sock)  # type: ignore[arg-type]
    assert sock.linger == struct.pack("ii", 1, 0)


def test_hand_over_of_whole_frames_only_keeps_the_close() -> None:
    close = encode_frame(OP_CLOSE, struct.pack("!H", 1000))
    queue = queue_of(encode_frame(OP_TEXT, b"a"), encode_frame(OP_TEXT, b"b"), close)
    sock = KernelBuffer(room=100)
    assert queue.hand_over(sock) is True  # type: ignore[arg-type]
    assert bytes(sock.written) == close
