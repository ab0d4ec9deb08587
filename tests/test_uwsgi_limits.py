"""Connection limits on real uWSGI: past them a client gets an answer, not silence."""

from __future__ import annotations

import http.client
import socket
from typing import List, Tuple

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.uwsgi_server import UwsgiServer

pytestmark = pytest.mark.uwsgi

APP = "tests.apps.models:app"


def open_echo(server: UwsgiServer) -> ClientConnection:
    ws = connect(server.url("/echo"), open_timeout=10, ping_interval=None, proxy=None)
    ws.send("hi")
    assert ws.recv(timeout=10) == "hi"
    return ws


def refused(server: UwsgiServer) -> Tuple[int, str, str]:
    """The status, Retry-After and body of an upgrade that is refused."""
    with pytest.raises(InvalidStatus) as caught:
        connect(server.url("/echo"), open_timeout=10, proxy=None)
    response = caught.value.response
    return response.status_code, response.headers.get("Retry-After", ""), response.body.decode()


def http_status(server: UwsgiServer, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def test_past_the_cores_a_client_gets_503_and_plain_http_still_answers(start_uwsgi) -> None:
    server = start_uwsgi(APP, gevent=20)  # automatic limit: 20 cores less 1 in reserve
    held: List[ClientConnection] = [open_echo(server) for _ in range(19)]
    try:
        status, retry_after, body = refused(server)
        assert (status, retry_after) == (503, "5")
        assert "holds all the WebSockets it can" in body
        assert http_status(server, "/hub") == 200  # the reserve serves HTTP
        assert "refused a WebSocket to /echo from 127.0.0.1 with 503" in server.log()
        held.pop().close()
        held.append(open_echo(server))  # room again
    finally:
        for ws in held:
            ws.close()
    assert server.crash_lines() == []


def test_an_explicit_limit_and_a_per_address_cap(start_uwsgi) -> None:
    server = start_uwsgi(
        APP,
        gevent=100,
        env={"FWS_WEBSOCKET_MAX_CONNECTIONS": "6", "FWS_WEBSOCKET_MAX_CONNECTIONS_PER_IP": "4"},
    )
    held = [open_echo(server) for _ in range(4)]
    try:
        status, _, body = refused(server)  # a fifth from 127.0.0.1
        assert status == 429 and "this address holds" in body
        # Another client address (127.0.0.2 is loopback too) may still connect, up to 6.
        for _ in range(2):
            sock = socket.create_connection(
                ("127.0.0.1", server.port), source_address=("127.0.0.2", 0), timeout=10
            )
            ws = connect(server.url("/echo"), sock=sock, open_timeout=10, proxy=None)
            held.append(ws)
        assert refused(server)[0] == 503
    finally:
        for ws in held:
            ws.close()
    assert "with 429" in server.log() and "with 503" in server.log()


def test_slow_request_heads_hold_no_worker_core_behind_the_router(start_uwsgi) -> None:
    """`flask websocket run` puts uWSGI's router in front: 500 clients dripping their
    request heads (more than the worker's 100 cores) lock nobody out."""
    import asyncio

    server = start_uwsgi(APP, mode="http", gevent=100)
    slow = []
    try:
        for _ in range(500):  # bounded
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            slow.append(sock)
        for sock in slow:  # a second drip each, so none is idle from the start
            sock.sendall(b"X-Slow: 1\r\n")

        async def normal_client() -> str:
            from websockets.asyncio.client import connect as async_connect

            async with async_connect(server.url("/echo"), open_timeout=10, proxy=None) as ws:
                await ws.send("through")
                return str(await asyncio.wait_for(ws.recv(), 10))

        assert asyncio.run(normal_client()) == "through"  # within its 10 s open timeout
    finally:
        for sock in slow:
            sock.close()
    assert server.crash_lines() == []
