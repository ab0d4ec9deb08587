"""flask_websocket.client without uWSGI: the backoff, the URL, and the stream's bookkeeping.

The backoff and the URL are pure functions (no network). The rest talks to a
scripted ``websockets`` server on 127.0.0.1 that sends exactly the ``fws.v1``
frames a test gives, so that duplicates, gaps, new epochs and close codes can
be produced on purpose; tests/test_uwsgi_client.py runs the client against
real uWSGI.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import urllib.parse
from typing import Any, Awaitable, Callable, List, Optional, Tuple

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from flask_websocket import ConnectionClosedError, HandshakeRejected, NotConnected
from flask_websocket.client import (
    MAX_ROOMS,
    Joined,
    Message,
    RecoveryIncomplete,
    ResumingClient,
    StateChange,
    backoff_delay,
    restart_delay,
    url_with_positions,
)
from flask_websocket.history import Position
from flask_websocket.wire import parse_since
from tests.uwsgi_server import run_python

# -- the backoff ---------------------------------------------------------------------


@pytest.mark.parametrize("attempt", range(8))
def test_the_backoff_is_full_jitter_below_a_doubling_capped_ceiling(attempt: int) -> None:
    rng = random.Random(attempt)
    ceiling = min(15.0, 0.5 * 2**attempt)
    delays = [backoff_delay(attempt, min_delay=0.5, max_delay=15.0, rng=rng) for _ in range(2000)]
    assert all(0 <= delay <= ceiling for delay in delays)
    # Spread over the whole range, not bunched: what makes a storm of
    # reconnections a trickle.
    assert min(delays) < ceiling * 0.05 and max(delays) > ceiling * 0.95
    assert abs(statistics.mean(delays) - ceiling / 2) < ceiling * 0.05
    quarters = [sum(q * ceiling / 4 <= d < (q + 1) * ceiling / 4 for d in delays) for q in range(4)]
    assert all(400 <= count <= 600 for count in quarters), quarters
    without = backoff_delay(attempt, min_delay=0.5, max_delay=15.0, jitter=False)
    assert without == ceiling


def test_the_backoff_never_overflows() -> None:
    assert backoff_delay(10_000, min_delay=0.5, max_delay=15.0, jitter=False) == 15.0


def test_after_a_restart_the_delay_is_spread_below_its_ceiling() -> None:
    rng = random.Random(7)
    delays = [restart_delay(1.0, rng=rng) for _ in range(1000)]
    assert all(0 <= delay <= 1.0 for delay in delays)
    assert min(delays) < 0.05 and max(delays) > 0.95
    assert restart_delay(1.0, jitter=False) == 1.0


# -- the URL -------------------------------------------------------------------------


def test_the_url_gives_each_position_as_the_server_reads_it() -> None:
    positions = [
        ("h:lobby", Position("e1", 41)),
        ("a room/with:odd chars&=", Position("xy", 3)),
        ("new", Position("", 0)),  # joined before the room had a stream
        ("broken", Position("", 5)),  # cannot be: not given
    ]
    url, given = url_with_positions(
        "ws://127.0.0.1:8000/ws/lobby?token=a%20b&fws_since=old:e:1", positions
    )
    assert given == {"h:lobby", "a room/with:odd chars&=", "new"}
    parts = urllib.parse.urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("ws", "127.0.0.1:8000", "/ws/lobby")
    query = urllib.parse.parse_qs(parts.query)
    assert query["token"] == ["a b"]  # the app's own parameters stay
    # The server's parser (flask_websocket.wire) reads back exactly these;
    # the old position in the URL was replaced.
    assert parse_since(query["fws_since"]) == {
        "h:lobby": Position("e1", 41),
        "a room/with:odd chars&=": Position("xy", 3),
        "new": Position("", 0),
    }


def test_the_url_gives_at_most_max_rooms_positions() -> None:
    positions = [(f"r{i}", Position("e", i)) for i in range(MAX_ROOMS + 20)]
    url, given = url_with_positions("wss://example.com/ws", positions)
    assert given == {f"r{i}" for i in range(MAX_ROOMS)}
    assert url.count("fws_since=") == MAX_ROOMS
    assert url_with_positions("ws://h/p?fws_since=r:e:1", []) == ("ws://h/p", set())


def test_a_url_that_is_not_a_websocket_url_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="ws:// or wss://"):
        ResumingClient("http://127.0.0.1/ws")
    with pytest.raises(ValueError, match="max_delay"):
        ResumingClient("ws://127.0.0.1/ws", min_delay=2, max_delay=1)


def test_importing_the_extension_does_not_import_the_client() -> None:
    code = (
        "import sys, flask_websocket\n"
        "print(sorted(m for m in sys.modules if m in "
        "('flask_websocket.client', 'websockets.asyncio.client')))"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# -- against a scripted server -------------------------------------------------------------

Script = Callable[[ServerConnection, int], Awaitable[None]]


class Scripted:
    """A websockets server on 127.0.0.1 that runs ``script(ws, n)`` for its n-th connection."""

    def __init__(self, script: Script, *, subprotocol: Optional[str] = "fws.v1") -> None:
        self.script = script
        self.subprotocol = subprotocol
        self.paths: List[str] = []
        self.statuses: List[int] = []
        self.refuse_with: Optional[int] = None

    def _select(self, ws: ServerConnection, offered: Any) -> Any:
        return self.subprotocol if self.subprotocol in offered else None

    def _process(self, ws: ServerConnection, request: Request) -> Optional[Response]:
        self.paths.append(request.path)
        if self.refuse_with is not None:
            self.statuses.append(self.refuse_with)
            return Response(self.refuse_with, "Refused", Headers(), b"go away")
        self.statuses.append(101)
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        await self.script(ws, len(self.paths) - 1)

    def serve(self) -> Any:
        return serve(
            self._handler,
            "127.0.0.1",
            0,
            select_subprotocol=self._select,
            process_request=self._process,
            ping_interval=None,
        )


def frame(**fields: Any) -> str:
    return json.dumps(fields)


async def with_client(
    server: Scripted, scenario: Callable[[ResumingClient], Awaitable[Any]], **options: Any
) -> Tuple[Any, List[StateChange]]:
    changes: List[StateChange] = []
    options.setdefault("min_delay", 0.01)
    options.setdefault("max_delay", 0.05)
    options.setdefault("restart_delay", 0.01)
    async with server.serve() as listening:
        port = listening.sockets[0].getsockname()[1]
        client = ResumingClient(
            f"ws://127.0.0.1:{port}/ws?x=1", on_state_change=changes.append, **options
        )
        async with client:
            result = await asyncio.wait_for(scenario(client), 20)
    return result, changes


async def take(client: ResumingClient, count: int) -> List[Message]:
    return [await client.recv() for _ in range(count)]


def test_stream_messages_are_given_once_in_order_with_what_was_lost_said_first() -> None:
    async def script(ws: ServerConnection, n: int) -> None:
        await ws.send(frame(h=7))
        await ws.send(frame(j="r", e="E", o=3, recovered=True))
        for offset in (1, 2, 3):  # a first join's history, older than the join's position
            await ws.send(frame(r="r", e="E", o=offset, d=f"m{offset}"))
        await ws.send(frame(r="r", e="E", o=2, d="m2 again"))  # a duplicate: dropped
        await ws.send(frame(d="plain"))
        await ws.send(frame(b="AAEC"))  # bytes 0, 1, 2
        await ws.send(frame(r="r", e="E", o=4, d="m4"))
        await ws.send(frame(r="r", e="E", o=6, d="m6"))  # 5 is missing: a gap
        await ws.send(frame(r="r", e="F", o=1, d="f1"))  # a new stream: an epoch
        await ws.wait_closed()

    events: List[Any] = []

    async def scenario(client: ResumingClient) -> List[Message]:
        client.on_joined = events.append
        client.on_recovery_incomplete = events.append
        messages = []
        for _ in range(8):
            message = await client.recv()
            events.append(message)
            messages.append(message)
        assert client.heartbeat == 7
        assert client.resumable is True
        assert client.positions == {"r": Position("F", 1)}
        return messages

    messages, _ = asyncio.run(with_client(Scripted(script), scenario))
    assert [(m.data, m.room, m.offset) for m in messages] == [
        ("m1", "r", 1), ("m2", "r", 2), ("m3", "r", 3), ("plain", None, None),
        (b"\x00\x01\x02", None, None), ("m4", "r", 4), ("m6", "r", 6), ("f1", "r", 1),
    ]  # fmt: skip
    kinds = [
        type(e).__name__ + (f":{e.reason}" if isinstance(e, RecoveryIncomplete) else "")
        for e in events
    ]
    assert kinds == [
        "Joined", "Message", "Message", "Message", "Message", "Message", "Message",
        "RecoveryIncomplete:gap", "Message", "RecoveryIncomplete:epoch", "Message",
    ]  # fmt: skip
    assert events[0] == Joined("r", "E", 3, recovered=True, resumed=False)


def test_it_reconnects_with_its_positions_and_drops_what_it_had() -> None:
    async def script(ws: ServerConnection, n: int) -> None:
        if n == 0:
            await ws.send(frame(j="r", e="E", o=0, recovered=True))
            await ws.send(frame(r="r", e="E", o=1, d="one"))
            await ws.close(1011, "oops")  # any failure: reconnect with the backoff
        elif n == 1:
            await ws.send(frame(j="r", e="E", o=2, recovered=True))
            await ws.send(frame(r="r", e="E", o=1, d="one again"))  # had it: dropped
            await ws.send(frame(r="r", e="E", o=2, d="two"))
            await ws.close(1012, "restart")  # a reload: at once, spread
        else:
            await ws.send(frame(j="r", e="E", o=2, recovered=False))  # history lost
            await ws.send(frame(r="r", e="E", o=5, d="five"))  # no gap told twice
            await ws.wait_closed()

    server = Scripted(script)
    events: List[Any] = []

    async def scenario(client: ResumingClient) -> List[Message]:
        client.on_recovery_incomplete = events.append
        return await take(client, 3)

    messages, changes = asyncio.run(with_client(server, scenario))
    assert [m.data for m in messages] == ["one", "two", "five"]
    assert server.paths[0] == "/ws?x=1"
    assert server.paths[1] == "/ws?x=1&fws_since=r%3AE%3A1"
    assert server.paths[2] == "/ws?x=1&fws_since=r%3AE%3A2"
    assert events == [RecoveryIncomplete("r", "E", 2, "history", resumed=True)]
    retries = [(c.code, c.attempt) for c in changes if c.state == "reconnecting"]
    assert retries == [(1011, 1), (1012, 1)]
    assert [c.state for c in changes][-1] == "closed"


def test_a_policy_violation_is_not_retried() -> None:
    async def script(ws: ServerConnection, n: int) -> None:
        await ws.send(frame(d="hello"))
        await ws.close(1008, "banned")

    server = Scripted(script)

    async def scenario(client: ResumingClient) -> Tuple[Message, BaseException]:
        message = await client.recv()  # what came before the close is still given
        with pytest.raises(ConnectionClosedError) as raised:
            await client.recv()
        await asyncio.sleep(0.2)  # far longer than any retry would wait here
        with pytest.raises(ConnectionClosedError):
            await client.send("anything")
        return message, raised.value

    (message, error), changes = asyncio.run(with_client(server, scenario))
    assert message.data == "hello"
    assert (error.code, error.reason) == (1008, "banned")  # type: ignore[attr-defined]
    assert len(server.paths) == 1
    assert [c.state for c in changes] == ["open", "closed"]


def test_a_normal_close_ends_the_iteration() -> None:
    async def script(ws: ServerConnection, n: int) -> None:
        await ws.send(frame(d="a"))
        await ws.send(frame(d="b"))
        await ws.close(1000)

    async def scenario(client: ResumingClient) -> List[Any]:
        return [message.data async for message in client]

    got, _ = asyncio.run(with_client(Scripted(script), scenario))
    assert got == ["a", "b"]


@pytest.mark.parametrize("status", [401, 403, 404])
def test_a_refused_handshake_is_not_retried(status: int) -> None:
    server = Scripted(lambda ws, n: ws.wait_closed())
    server.refuse_with = status

    async def scenario(client: ResumingClient) -> BaseException:
        with pytest.raises(HandshakeRejected) as raised:
            await client.recv()
        with pytest.raises(HandshakeRejected):
            await client.wait_open(1)
        return raised.value

    error, changes = asyncio.run(with_client(server, scenario))
    assert error.status == status  # type: ignore[attr-defined]
    assert error.body == b"go away"  # type: ignore[attr-defined]
    assert server.statuses == [status]
    assert [c.state for c in changes] == ["closed"]


def test_an_unavailable_server_is_retried_until_max_retries() -> None:
    server = Scripted(lambda ws, n: ws.wait_closed())
    server.refuse_with = 503

    async def scenario(client: ResumingClient) -> BaseException:
        with pytest.raises(ConnectionClosedError) as raised:
            await client.recv()
        return raised.value

    error, changes = asyncio.run(with_client(server, scenario, max_retries=3))
    assert server.statuses == [503] * 4  # the first attempt and 3 retries
    assert "gave up after 4 failures" in str(error)
    assert [c.attempt for c in changes if c.state == "reconnecting"] == [1, 2, 3]


def test_a_silent_connection_is_taken_for_dead() -> None:
    async def script(ws: ServerConnection, n: int) -> None:
        await ws.send(frame(h=0.1))  # heartbeats every 0.1 s... then none
        if n == 0:
            await asyncio.sleep(5)  # silent, open
        await ws.send(frame(d=f"from connection {n}"))
        await ws.wait_closed()

    async def scenario(client: ResumingClient) -> Message:
        return await client.recv()

    message, changes = asyncio.run(with_client(Scripted(script), scenario, dead_after=2))
    assert message.data == "from connection 1"
    assert [(c.code, c.reason) for c in changes if c.state == "reconnecting"] == [
        (1006, "no heartbeat")
    ]


def test_without_fws_v1_it_reconnects_without_positions() -> None:
    async def script(ws: ServerConnection, n: int) -> None:
        await ws.send(frame(r="r", e="E", o=1, d="looks like fws.v1"))  # but was not negotiated
        await ws.send(b"raw bytes")
        if n == 0:
            await ws.close(1011)
        await ws.wait_closed()

    server = Scripted(script, subprotocol=None)

    async def scenario(client: ResumingClient) -> List[Message]:
        messages = await take(client, 4)
        assert client.resumable is False
        return messages

    messages, _ = asyncio.run(with_client(server, scenario))
    assert [m.data for m in messages][1::2] == [b"raw bytes", b"raw bytes"]
    assert all(m.room is None for m in messages)
    assert server.paths == ["/ws?x=1", "/ws?x=1"]


def test_send_waits_for_a_connection_or_says_there_is_none() -> None:
    async def script(ws: ServerConnection, n: int) -> None:
        async for message in ws:
            await ws.send(frame(d=f"echo {message}"))

    async def scenario(client: ResumingClient) -> Message:
        await client.send("hi")  # waits for the connection to open
        return await client.recv()

    message, _ = asyncio.run(with_client(Scripted(script), scenario))
    assert message.data == "echo hi"

    async def nobody() -> None:
        client = ResumingClient("ws://127.0.0.1:9/nothing-listens", min_delay=0.01)
        async with client:
            with pytest.raises(NotConnected, match=r"within 0\.2 s"):
                await client.send("lost", timeout=0.2)
            with pytest.raises(NotConnected, match="no open connection"):
                await client.send("lost", timeout=0)

    asyncio.run(nobody())


def test_a_certificate_that_does_not_verify_is_not_retried(tmp_path: Any) -> None:
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    handshakes: List[str] = []

    async def scenario() -> BaseException:
        async def handler(ws: ServerConnection) -> None:
            handshakes.append(ws.request.path if ws.request else "")

        async with serve(handler, "127.0.0.1", 0, ssl=context) as listening:
            port = listening.sockets[0].getsockname()[1]
            async with ResumingClient(f"wss://127.0.0.1:{port}/", min_delay=0.01) as client:
                with pytest.raises(ConnectionClosedError) as raised:
                    await asyncio.wait_for(client.recv(), 20)
                await asyncio.sleep(0.2)  # no retry comes
                return raised.value

    error = asyncio.run(scenario())
    assert error.code == 1015  # type: ignore[attr-defined]
    assert "self-signed" in str(error) or "self signed" in str(error)
    assert handshakes == []
