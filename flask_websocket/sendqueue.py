"""A connection's send queue, and what happens when it is full.

Writes go to the socket at once; what the kernel does not take waits in the
connection's :class:`SendQueue`, in order, and is flushed when the socket is
writable again. A queue exists only while something waits in it, so an idle
connection has none.

The queue is bounded in bytes by ``WEBSOCKET_SEND_QUEUE_SIZE``. A handler's
``send()`` that finds it over the bound waits for the peer to drain it, and
the connection stops reading meanwhile, so a peer that sends but never reads
cannot grow it (``connection.py``). Sends that cannot wait (a broadcast,
``send_to``, ``send_nowait``) apply ``WEBSOCKET_SEND_QUEUE_OVERFLOW``, one of
:data:`OVERFLOW_POLICIES`, through :meth:`SendQueue.make_room`.

A connection let go with bytes still waiting (its peer did not read them
within the close timeout) must not leave the stream cut inside a frame: the
kernel already holds the beginning of the queue's first frame, and would
deliver it, then the end of stream, to a peer that reads later.
:meth:`SendQueue.hand_over` gives the kernel what ends the stream at a frame
boundary; :func:`reset_on_close` is for when it cannot.
"""

from __future__ import annotations

import _socket
import contextlib
import socket
import struct
from collections import deque
from typing import Deque, Union

from .exceptions import SendQueueFull

__all__ = ["OVERFLOW_POLICIES", "SendQueue", "reset_on_close", "shutdown_write"]

#: Overflow policies of the send queue, for sends that cannot wait (broadcast,
#: ``send_to``, ``send_nowait``): drop the oldest queued messages, close the
#: connection with 1013 (try again later), or raise :class:`SendQueueFull`.
OVERFLOW_POLICIES = ("drop_oldest", "disconnect", "raise")

_BlockingErrors = (BlockingIOError, InterruptedError)

#: SO_LINGER on, with a zero timeout: close() resets the connection.
_LINGER_RESET = struct.pack("ii", 1, 0)


def shutdown_write(sock: _socket.socket) -> None:
    """End the stream: shut down the write side (the peer may be gone already)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)


def reset_on_close(sock: _socket.socket) -> None:
    """Make the coming close of ``sock`` reset the connection (SO_LINGER 0).

    The kernel then discards what it still holds for the peer and sends RST,
    so the peer sees a lost connection rather than a normal end of stream.
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)


class SendQueue:
    """Serialised frames the kernel has not taken yet, oldest first.

    Only the first may be partly written (a ``memoryview`` of its rest). An
    empty chunk (``b""``) ends the stream: the write side is shut down once
    everything before it is written.
    """

    __slots__ = ("_chunks", "size")

    def __init__(self) -> None:
        self._chunks: Deque[Union[bytes, memoryview]] = deque()
        #: Bytes waiting (what browsers call ``bufferedAmount``).
        self.size = 0

    def append(self, data: Union[bytes, memoryview]) -> None:
        """Queue ``data`` after everything already waiting."""
        self._chunks.append(data)
        self.size += len(data)

    def flush(self, sock: _socket.socket) -> bool:
        """Write what ``sock`` takes now, in order; ``True`` once nothing is left.

        Raises:
            OSError: the connection is lost.
        """
        chunks = self._chunks
        while chunks:
            data = chunks[0]
            if not data:
                chunks.popleft()
                shutdown_write(sock)
                continue
            try:
                sent = sock.send(data)
            except _BlockingErrors:
                return False
            self.size -= sent
            if sent != len(data):
                chunks[0] = memoryview(data)[sent:]
                return False
            chunks.popleft()
        return True

    def make_room(self, size: int, limit: int, policy: str) -> bool:
        """Apply the overflow ``policy``: ``size`` more bytes do not fit under ``limit``.

        Returns ``True`` when the new frame may be queued: ``"drop_oldest"``
        dropped the oldest whole frames until it fits. Returns ``False`` for
        ``"disconnect"``: every whole frame was dropped, so that the close
        frame the caller sends next (1013) goes out at once.

        Raises:
            SendQueueFull: the policy is ``"raise"``.
        """
        if policy == "raise":
            raise SendQueueFull(
                f"{self.size} bytes are waiting for a slow peer "
                f"(WEBSOCKET_SEND_QUEUE_SIZE is {limit})"
            )
        if policy == "disconnect":
            self._drop_whole_frames(0)
            return False
        self._drop_whole_frames(limit - size)
        return True

    def _drop_whole_frames(self, keep: int) -> None:
        """Drop frames, oldest first, until at most ``keep`` bytes wait.

        A frame partly written already (a ``memoryview`` at the head) is
        kept: cutting it would corrupt the stream.
        """
        chunks = self._chunks
        if not chunks:
            return
        head = chunks.popleft() if isinstance(chunks[0], memoryview) else None
        while chunks and self.size > keep:
            self.size -= len(chunks.popleft())
        if head is not None:
            chunks.appendleft(head)

    def hand_over(self, sock: _socket.socket) -> bool:
        """End the stream at a frame boundary, in the kernel's hands: ``sock`` is let go.

        For a connection released with bytes still waiting. Data frames not
        started are dropped; kept are the rest of the frame the kernel holds
        the beginning of, control frames (pongs, the close frame) and the
        end of stream. The kernel's send buffer is enlarged (``SO_SNDBUF``)
        until it takes them, so the peer finds whole frames, then the close
        frame, whenever it reads again: TCP delivers what was written before
        a close.

        Returns ``True`` when the kernel took everything kept; ``False``
        when it would not (a send buffer capped by ``net.core.wmem_max``
        smaller than the rest of the frame): the stream cannot end at a
        frame boundary, and the caller should :func:`reset_on_close`.

        Raises:
            OSError: the connection is lost.
        """
        chunks = self._chunks
        kept: Deque[Union[bytes, memoryview]] = deque()
        if chunks and isinstance(chunks[0], memoryview):  # partly written
            kept.append(chunks.popleft())
        # Every chunk is one frame: an opcode of 8 and above is a control frame.
        kept.extend(chunk for chunk in chunks if not chunk or chunk[0] & 0x08)
        self._chunks = kept
        self.size = sum(len(chunk) for chunk in kept)
        if self.flush(sock):
            return True
        try:
            buffer_size = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            # Linux doubles the value set (for its bookkeeping) and reports
            # the doubled one: this leaves room for the rest and more.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_size + 2 * self.size)
        except OSError:
            return False
        return self.flush(sock)
