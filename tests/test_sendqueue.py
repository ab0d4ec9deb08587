"""The send queue and its overflow policies, without sockets (flask_websocket/sendqueue.py)."""

from __future__ import annotations

import socket
from typing import Union

import pytest

from flask_websocket.exceptions import SendQueueFull
from flask_websocket.sendqueue import SendQueue


class KernelBuffer:
    """A socket whose kernel takes ``room`` bytes, then would block."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.written = bytearray()
        self.shut_down = False

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
