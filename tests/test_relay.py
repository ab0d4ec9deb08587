"""The TCP relay the browser tests fail the network with (tests/relay.py) does what it says."""

from __future__ import annotations

import socket
import threading
from typing import Iterator

import pytest

from tests.relay import TcpRelay


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A TCP echo server on 127.0.0.1, a thread per connection."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    stop = threading.Event()

    def echo(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join(5)
    listener.close()


def connect(relay: TcpRelay) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", relay.port), timeout=5)
    return sock


def refused_once(relay: TcpRelay) -> None:
    """Connect and read: the relay's RST comes during the connect or at the first read."""
    with connect(relay) as sock:
        sock.recv(100)


def test_it_forwards_both_ways_and_passes_the_end_on(echo_port: int) -> None:
    with TcpRelay(echo_port) as relay, connect(relay) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert sock.recv(100) == b"GET / HTTP/1.1\r\n\r\n"
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(100) == b""  # the echo server closed after our end


def test_a_cut_resets_open_connections_and_refuses_new_ones(echo_port: int) -> None:
    with TcpRelay(echo_port) as relay:
        sock = connect(relay)
        sock.sendall(b"hello")
        assert sock.recv(100) == b"hello"
        assert relay.cut(refuse_for=30) == 1
        with pytest.raises(ConnectionResetError):
            sock.recv(100)  # an RST, not an orderly end
        sock.close()
        with pytest.raises(ConnectionResetError):
            refused_once(relay)
        relay.refuse(0)
        with connect(relay) as again:
            again.sendall(b"back")
            assert again.recv(100) == b"back"


def test_a_blackhole_forwards_nothing_on_open_connections_only(echo_port: int) -> None:
    with TcpRelay(echo_port) as relay:
        old = connect(relay)
        old.sendall(b"one")
        assert old.recv(100) == b"one"
        assert relay.blackhole() == 1
        old.sendall(b"two")
        old.settimeout(0.5)
        with pytest.raises(socket.timeout):
            old.recv(100)
        old.close()
        with connect(relay) as new:
            new.sendall(b"three")
            assert new.recv(100) == b"three"
