"""WEBSOCKET_RATE_LIMIT on real uWSGI (both front ends): warned, then closed with 1008."""

from __future__ import annotations

from typing import Iterator, Optional, Tuple

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.uwsgi_server import UwsgiServer

pytestmark = pytest.mark.uwsgi


@pytest.fixture(scope="module", params=["http-socket", "http"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[UwsgiServer]:
    uwsgi = UwsgiServer(
        "tests.apps.features:app",
        mode=request.param,
        gevent=20,
        env={"FWS_RATE_LIMIT": "50,5"},
        log_dir=tmp_path_factory.mktemp("uwsgi"),
    )
    uwsgi.start()
    yield uwsgi
    uwsgi.stop()
    assert uwsgi.crash_lines() == [], uwsgi.log()


def flood(ws: ClientConnection, batches: int, size: int = 20) -> Tuple[int, Optional[int]]:
    """Send batches of messages, reading the echoes; (echoes, the server's close code)."""
    echoes = 0
    try:
        for batch in range(batches):
            for i in range(size):
                ws.send(f"{batch}.{i}")
            for _ in range(size):
                ws.recv(timeout=10)
                echoes += 1
    except ConnectionClosed as exc:
        return echoes, exc.rcvd.code if exc.rcvd else None
    return echoes, None


def test_a_client_that_goes_on_is_closed_1008(server: UwsgiServer) -> None:
    with connect(server.url("/echo"), open_timeout=10) as ws:
        echoes, code = flood(ws, batches=50)
    assert code == 1008
    assert echoes >= 5
    log = server.log()
    assert "sends messages faster than WEBSOCKET_RATE_LIMIT allows (50/s, burst 5)" in log
    assert "with 1008: over its message rate again after a warning" in log


def test_a_burst_within_the_limit_is_served(server: UwsgiServer) -> None:
    with connect(server.url("/echo"), open_timeout=10) as ws:
        assert flood(ws, batches=1, size=5) == (5, None)
        ws.close()
        assert ws.close_code == 1000
