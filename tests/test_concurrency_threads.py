"""The threads backend without uWSGI: its loop thread, wakeups, queue, and a
guarded connection used from several threads at once, over a socket pair."""

from __future__ import annotations

import _socket
import base64
import os
import queue
import socket
import threading
import time
from typing import Iterator, List, Tuple

import pytest
from websockets.datastructures import Headers

from flask_websocket import ConnectionClosedOK
from flask_websocket.concurrency.threads import ThreadBackend
from flask_websocket.connection import ConnectionOptions, GuardedConnection
from flask_websocket.protocol import OP_TEXT, ClientProtocol, ServerProtocol, encode_frame


@pytest.fixture
def backend() -> ThreadBackend:
    return ThreadBackend()


def test_readable_watcher_calls_back_in_the_loop_thread(backend: ThreadBackend) -> None:
    left, right = socket.socketpair()
    calls: List[str] = []
    seen = threading.Event()

    def on_readable() -> None:
        calls.append(threading.current_thread().name)
        left.recv(100)
        seen.set()

    with backend.guard:
        watcher = backend.watch_readable(left.fileno(), on_readable)
        watcher.start()
    right.send(b"x")
    assert seen.wait(5)
    assert calls == ["flask-websocket-loop"]
    with backend.guard:
        watcher.close()
    seen.clear()
    right.send(b"y")
    assert not seen.wait(0.2)  # stopped: no more calls
    left.close()
    right.close()


def test_timers_run_in_order_and_cancel(backend: ThreadBackend) -> None:
    fired: List[str] = []
    done = threading.Event()
    backend.call_later(0.05, lambda: fired.append("b"))
    cancelled = backend.call_later(0.02, lambda: fired.append("never"))
    backend.call_later(0.01, lambda: fired.append("a"))
    backend.call_later(0.1, done.set)
    cancelled.cancel()
    assert done.wait(5)
    assert fired == ["a", "b"]


def test_wakeup_remembers_notify_and_times_out(backend: ThreadBackend) -> None:
    wakeup = backend.wakeup()
    wakeup.notify()
    assert wakeup.wait(0) is True  # remembered
    start = time.monotonic()
    assert wakeup.wait(0.1) is False
    assert time.monotonic() - start >= 0.09
    threading.Timer(0.05, wakeup.notify).start()
    assert wakeup.wait(5) is True


def test_event_across_threads(backend: ThreadBackend) -> None:
    event = backend.event()
    assert event.wait(0.05) is False
    threading.Timer(0.05, event.set).start()
    assert event.wait(5) is True and event.is_set()


def test_call_soon_threadsafe_and_run_blocking(backend: ThreadBackend) -> None:
    """A thread hands work to the loop; a task waits for a blocking call, guard released."""
    ran_in: List[bool] = []
    done = threading.Event()
    backend.call_soon_threadsafe(lambda: (ran_in.append(backend.in_event_loop()), done.set()))
    assert done.wait(5) and ran_in == [True]
    with backend.guard:
        # While run_blocking waits, another thread can take the guard.
        def blocking_call() -> str:
            with backend.guard:
                return "took the guard"

        assert backend.run_blocking(blocking_call) == "took the guard"
        with pytest.raises(ZeroDivisionError):
            backend.run_blocking(lambda: 1 / 0)


def _open_pair(
    backend: ThreadBackend,
) -> Tuple[GuardedConnection, socket.socket, socket.socket]:
    """A connection on a borrowed fd (the server socket owns it, as uWSGI does)."""
    server, client = socket.socketpair()
    protocol = ServerProtocol()
    key = base64.b64encode(os.urandom(16)).decode()
    headers = Headers(
        [
            ("Host", "test"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", key),
            ("Sec-WebSocket-Version", "13"),
        ]
    )
    assert protocol.accept("GET", "/", headers).accepted

    def opener() -> _socket.socket:
        sock = _socket.socket(fileno=server.fileno())  # borrowed, as from uWSGI
        sock.setblocking(False)
        return sock

    options = ConnectionOptions(ping_interval=None)
    return GuardedConnection(protocol, backend, options, opener), server, client


class Peer:
    """The client end: sends masked frames, collects messages in a thread."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.protocol = ClientProtocol()
        self.messages: queue.Queue[object] = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for _ in range(100000):  # bounded
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:  # the server closed its side: close ours, as a client does
                self.protocol.receive_eof()
                self.messages.put(EOFError())
                self.sock.shutdown(socket.SHUT_WR)
                return
            for message in self.protocol.receive_data(data):
                self.messages.put(message)
            for out in self.protocol.data_to_send():
                if out:
                    self.sock.sendall(out)

    def send(self, message: str) -> None:
        self.protocol.send_message(message)
        for out in self.protocol.data_to_send():
            self.sock.sendall(out)


@pytest.fixture
def pair(backend: ThreadBackend) -> Iterator[Tuple[GuardedConnection, Peer]]:
    connection, server, client = _open_pair(backend)
    peer = Peer(client)
    yield connection, peer
    connection.finish()
    server.close()
    client.close()


def test_guarded_connection_echoes_with_a_sender_in_another_thread(
    pair: Tuple[GuardedConnection, Peer],
) -> None:
    connection, peer = pair
    connection.accept()
    # Another thread writes frames while this one waits in receive().
    frames = [encode_frame(OP_TEXT, f"from thread {i}".encode()) for i in range(50)]
    sender = threading.Thread(target=lambda: [connection.offer_frame(f) for f in frames])
    sender.start()
    peer.send("hello")
    assert connection.receive(timeout=5) == "hello"
    sender.join(5)
    got = [peer.messages.get(timeout=5) for _ in range(50)]
    assert got == [f"from thread {i}" for i in range(50)]
    assert connection.receive(timeout=0.05) is None  # timed out, nothing lost
    connection.send("bye")
    assert peer.messages.get(timeout=5) == "bye"


def test_recv_nb_and_peer_close(pair: Tuple[GuardedConnection, Peer]) -> None:
    connection, peer = pair
    assert connection.recv_nb() is None
    peer.send("one")
    deadline = time.monotonic() + 5
    message = None
    while message is None and time.monotonic() < deadline:
        message = connection.recv_nb()
        connection.sleep(0.01)
    assert message == "one"
    peer.protocol.send_close(1000, "done")
    for out in peer.protocol.data_to_send():
        peer.sock.sendall(out)
    with pytest.raises(ConnectionClosedOK):
        connection.receive(timeout=5)
    assert connection.close_code == 1000
