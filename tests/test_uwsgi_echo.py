"""Echo over real uWSGI (``--http-socket`` and ``--http``): types, sizes, close codes, load.

Every test here starts (or shares) a real uWSGI with the gevent loop and talks
to it over 127.0.0.1 with the ``websockets`` client library.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import List, Tuple

import psutil
import pytest
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK
from websockets.protocol import State
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as sync_connect

from tests.uwsgi_server import UwsgiServer

pytestmark = pytest.mark.uwsgi

MODES = ["http-socket", "http"]
MIB = 2**20
#: Seconds any single receive may take before the test fails.
RECV_TIMEOUT = 10.0


def open_ws(server: UwsgiServer, path: str = "/echo") -> ClientConnection:
    """A sync client connection with generous size limits and no keepalive noise."""
    return sync_connect(
        server.url(path),
        open_timeout=10,
        close_timeout=10,
        ping_interval=None,
        max_size=4 * MIB,
        compression=None,
        proxy=None,
    )


def echo_once(ws: ClientConnection, message: str | bytes) -> str | bytes:
    ws.send(message)
    return ws.recv(timeout=RECV_TIMEOUT)


def assert_same_message(sent: str | bytes, got: str | bytes) -> None:
    """Same content and same type: text stays ``str``, binary stays ``bytes``."""
    assert type(got) is type(sent), f"sent {type(sent).__name__}, got {type(got).__name__}"
    assert len(got) == len(sent)
    assert got == sent


# ---------------------------------------------------------------------------
# Round trips


def _one_mib_text() -> str:
    # Mixed 1-, 2-, 3- and 4-byte UTF-8 characters, exactly 1 MiB when encoded.
    unit = "aé€😀"  # 1 + 2 + 3 + 4 = 10 bytes
    text = unit * (MIB // 10)
    text += "z" * (MIB - len(text.encode()))
    assert len(text.encode()) == MIB
    return text


MESSAGES = {
    "text": "hello, wörld ✓",
    "binary": bytes(range(256)) + b"\x00\xff",
    "empty-text": "",
    "empty-binary": b"",
    "1mib-text": _one_mib_text(),
    "1mib-binary": os.urandom(MIB),
}


@pytest.mark.parametrize("name", list(MESSAGES))
def test_round_trip_preserves_content_and_type(echo_server: UwsgiServer, name: str) -> None:
    message = MESSAGES[name]
    with open_ws(echo_server) as ws:
        assert_same_message(message, echo_once(ws, message))
        # The connection is still usable afterwards.
        assert_same_message("after", echo_once(ws, "after"))


def test_many_messages_in_order_on_one_connection(echo_server: UwsgiServer) -> None:
    messages: List[str | bytes] = []
    for i in range(200):
        messages.append(f"message {i}" if i % 2 else f"message {i}".encode())
    with open_ws(echo_server) as ws:
        for message in messages:  # pipelined: all sent before any reply is read
            ws.send(message)
        for message in messages:
            assert_same_message(message, ws.recv(timeout=RECV_TIMEOUT))


@pytest.mark.parametrize(
    ("fragments", "expected"),
    [
        pytest.param(["frag", "mented ", "", "téxt ✓"], "fragmented téxt ✓", id="text"),
        pytest.param(
            [b"\x00\x01", b"", b"\xff" * 70000, b"end"],
            b"\x00\x01" + b"\xff" * 70000 + b"end",
            id="binary",
        ),
    ],
)
def test_fragmented_message_round_trips_whole(
    echo_server: UwsgiServer, fragments: List[str | bytes], expected: str | bytes
) -> None:
    with open_ws(echo_server) as ws:
        ws.send(iter(fragments))  # TEXT/BINARY fin=0, CONT..., CONT fin=1
        assert_same_message(expected, ws.recv(timeout=RECV_TIMEOUT))
        assert_same_message("after", echo_once(ws, "after"))


def test_fragmented_text_split_inside_a_character(echo_server: UwsgiServer) -> None:
    """UTF-8 sequences cut between fragments are reassembled, not rejected."""
    encoded = "a😀b€".encode()
    pieces = [encoded[:2], encoded[2:4], encoded[4:7], encoded[7:]]
    with open_ws(echo_server) as ws:
        ws.send(iter(pieces), text=True)  # bytes sent as TEXT fragments
        assert_same_message("a😀b€", ws.recv(timeout=RECV_TIMEOUT))


# ---------------------------------------------------------------------------
# Close codes and reasons


def test_client_close_code_and_reason_are_echoed(echo_server: UwsgiServer) -> None:
    with open_ws(echo_server) as ws:
        assert_same_message("hi", echo_once(ws, "hi"))
        ws.close(4001, "bye")
        # The server echoes the client's close frame (RFC 6455, 5.5.1).
        assert ws.close_code == 4001
        assert ws.close_reason == "bye"
        with pytest.raises(ConnectionClosedError) as info:
            ws.recv(timeout=1)
        assert info.value.sent is not None and info.value.sent.code == 4001
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "bye")


def _last_close(server: UwsgiServer, deadline: float) -> str:
    """What the features app's /peer-close handler last saw, once it saw something."""
    report = ""
    while time.monotonic() < deadline:
        with open_ws(server, "/last-close") as ws:
            report = ws.recv(timeout=RECV_TIMEOUT)  # type: ignore[assignment]
        if "code" in report:
            return report
        time.sleep(0.05)  # the handler records the close right after it arrives
    return report


@pytest.mark.parametrize("mode", MODES)
def test_close_codes_and_reasons_travel_both_ways(start_uwsgi, mode: str) -> None:  # type: ignore[no-untyped-def]
    server: UwsgiServer = start_uwsgi("tests.apps.features:app", mode=mode)
    workers = server.worker_pids()
    assert len(workers) == 1

    # Server -> client: /close/<code> closes with that code and the message as reason.
    cases: List[Tuple[int, str, type]] = [
        (4002, "server says bye", ConnectionClosedError),
        (1000, "done", ConnectionClosedOK),
        (1001, "going away ✓", ConnectionClosedOK),
        (3000, "", ConnectionClosedError),
    ]
    for code, reason, exc_type in cases:
        with open_ws(server, f"/close/{code}") as ws:
            ws.send(reason)
            with pytest.raises(exc_type) as info:
                ws.recv(timeout=RECV_TIMEOUT)
            assert info.value.rcvd is not None, f"no close frame from the server for {code}"
            assert info.value.rcvd.code == code
            assert info.value.rcvd.reason == reason
            assert ws.close_code == code
            assert ws.close_reason == reason

    # Client -> server: the handler sees the client's code and reason.
    with open_ws(server, "/peer-close") as ws:
        assert ws.recv(timeout=RECV_TIMEOUT) == "ready"
        ws.close(4003, "client says bye")
        assert ws.close_code == 4003
    report = _last_close(server, time.monotonic() + 10)
    assert "('code', 4003)" in report, report
    assert "('reason', 'client says bye')" in report, report
    assert "ConnectionClosedError" in report, report

    with open_ws(server, "/peer-close") as ws:
        assert ws.recv(timeout=RECV_TIMEOUT) == "ready"
        ws.close(1000, "normal")
        assert ws.close_code == 1000
    # Poll until the new close replaced the previous report.
    deadline = time.monotonic() + 10
    report = _last_close(server, deadline)
    while "('code', 1000)" not in report and time.monotonic() < deadline:
        report = _last_close(server, deadline)
    assert "('code', 1000)" in report, report
    assert "('reason', 'normal')" in report, report
    assert "ConnectionClosedOK" in report, report

    assert server.worker_pids() == workers
    assert server.crash_lines() == [], server.log()


# ---------------------------------------------------------------------------
# Many concurrent connections on one gevent worker

CONNECTIONS = 1000
BATCH = 100


def _established_sockets(pid: int) -> int:
    """TCP sockets of process ``pid`` in ESTABLISHED state."""
    return sum(
        1
        for conn in psutil.Process(pid).net_connections(kind="tcp")
        if conn.status == psutil.CONN_ESTABLISHED
    )


async def _many_connections(url: str, count: int, worker: int) -> Tuple[int, int, int, int, int]:
    """Open ``count`` connections, echo a unique message on each while all are open, close all.

    Returns (successful echoes, connections open at once on the client side,
    established sockets the worker held meanwhile, file descriptors the
    worker opened for them, connections closed with 1000).
    """
    fds_before = psutil.Process(worker).num_fds()
    connections: list = []
    try:
        for start in range(0, count, BATCH):
            batch = [
                async_connect(
                    url,
                    open_timeout=30,
                    close_timeout=10,
                    ping_interval=None,
                    compression=None,
                    proxy=None,
                )
                for _ in range(start, min(start + BATCH, count))
            ]
            connections.extend(await asyncio.wait_for(asyncio.gather(*batch), 60))

        async def echo(index: int, ws) -> bool:  # type: ignore[no-untyped-def]
            text = f"connection {index} says {os.urandom(8).hex()}"
            data = text.encode()
            await ws.send(text)
            await ws.send(data)
            return await ws.recv() == text and await ws.recv() == data

        results = await asyncio.wait_for(
            asyncio.gather(*(echo(i, ws) for i, ws in enumerate(connections))), 60
        )
        # Every handler has answered and is waiting in receive() again.
        open_at_once = sum(1 for ws in connections if ws.state is State.OPEN)
        held = _established_sockets(worker)
        fds_added = psutil.Process(worker).num_fds() - fds_before
        await asyncio.wait_for(asyncio.gather(*(ws.close() for ws in connections)), 60)
        closed_ok = sum(1 for ws in connections if ws.close_code == 1000)
        return sum(1 for ok in results if ok), open_at_once, held, fds_added, closed_ok
    finally:  # after a failure: release whatever is still open
        await asyncio.wait_for(
            asyncio.gather(*(ws.close() for ws in connections), return_exceptions=True), 60
        )


@pytest.mark.timeout(240)
def test_1000_concurrent_connections_on_one_worker(echo_server: UwsgiServer) -> None:
    workers = echo_server.worker_pids()
    assert len(workers) == 1
    started = time.monotonic()
    successes, open_at_once, held, fds_added, closed_ok = asyncio.run(
        _many_connections(echo_server.url("/echo"), CONNECTIONS, workers[0])
    )
    elapsed = time.monotonic() - started
    assert successes == CONNECTIONS, f"{successes}/{CONNECTIONS} echoed in {elapsed:.1f} s"
    assert open_at_once == CONNECTIONS
    # The one worker really held them all at once: one established socket per
    # connection (the client's in --http-socket mode, the router's in --http).
    assert held >= CONNECTIONS, held
    # One file descriptor per connection (uWSGI's own, borrowed, not
    # duplicated), so a worker holds as many connections as its fd limit.
    assert CONNECTIONS <= fds_added <= CONNECTIONS + 20, fds_added
    assert closed_ok == CONNECTIONS  # the server echoed every close frame
    print(
        f"{echo_server.mode}: {successes} echoes, worker held {held} sockets "
        f"on {fds_added} new fds, {elapsed:.1f} s"
    )
    assert echo_server.worker_pids() == workers
    assert echo_server.crash_lines() == [], echo_server.log()
    # The worker is still serving afterwards.
    with open_ws(echo_server) as ws:
        assert_same_message("still here", echo_once(ws, "still here"))
