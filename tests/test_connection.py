"""Connection core behaviour, in-process over a socket pair (no uWSGI)."""

from __future__ import annotations

import inspect
import logging
import socket
import sys
import time
from types import CodeType, FrameType
from typing import Any, Dict, Iterator, List, Optional, Tuple

import gevent
import pytest
from flask import Flask
from websockets.frames import Opcode

from flask_websocket import ConnectionClosed, WebSocket, WebSocketConnection, ratelimit
from flask_websocket.concurrency.base import Wakeup
from flask_websocket.connection import (
    UNGUARDED,
    ConnectionOptions,
    GuardedConnection,
    _guard_public_api,
)
from flask_websocket.protocol import OP_TEXT, ServerProtocol, encode_frame
from flask_websocket.testing import WebSocketTestClient
from tests.test_protocol import client_frame, open_server, parse_server_frames


@pytest.fixture(params=["gevent", "threads"])
def model(request: pytest.FixtureRequest) -> str:
    """Each test runs its handlers under gevent and under the threads backend."""
    return str(request.param)


def make_app(**config: Any) -> tuple[Flask, WebSocket]:
    app = Flask(__name__)
    app.config.update(config)
    return app, WebSocket(app)


def test_send_waits_when_the_send_queue_is_full_and_loses_nothing(model: str) -> None:
    limit = 256 * 1024
    app, websocket = make_app(WEBSOCKET_SEND_QUEUE_SIZE=limit)
    message = b"x" * 65536
    count = 128  # 8 MiB: far more than the socket buffers hold
    report: Dict[str, int] = {}

    @websocket.route("/flood")
    def flood(ws: WebSocketConnection) -> None:
        peak = 0
        for i in range(count):
            ws.send(i.to_bytes(4, "big") + message)
            peak = max(peak, ws.buffered_amount)
        report["peak"] = peak
        ws.receive()

    with WebSocketTestClient(app, timeout=10, model=model).connect("/flood") as ws:
        time.sleep(0.2)  # let the sender run into the bound while nobody reads
        received = [ws.receive() for _ in range(count)]
        ws.send("done")
    assert [int.from_bytes(m[:4], "big") for m in received] == list(range(count))  # type: ignore[index]
    assert all(m[4:] == message for m in received)  # type: ignore[index]
    assert 0 < report["peak"] <= limit + len(message) + 4 + 10


def test_reading_pauses_when_the_inbox_is_full(model: str) -> None:
    app, websocket = make_app(WEBSOCKET_RECEIVE_QUEUE_SIZE=4)
    sizes: List[int] = []

    @websocket.route("/slow")
    def slow(ws: WebSocketConnection) -> None:
        ws.send("go")
        for _ in range(40):
            gevent.sleep(0.01)
            sizes.append(len(ws._inbox))  # the bound is internal: look inside
        received = 0
        while received < 50:
            ws.receive()
            received += 1
        ws.send(f"received {received}")

    with WebSocketTestClient(app, timeout=10, model=model).connect("/slow") as ws:
        assert ws.receive() == "go"
        for _ in range(50):
            ws.send(b"y" * 65536)
        assert ws.receive() == "received 50"
    assert max(sizes) <= 4 + 2  # one read may complete a couple of messages


def test_close_gives_up_after_the_close_timeout_when_the_peer_is_silent(model: str) -> None:
    app, websocket = make_app(WEBSOCKET_CLOSE_TIMEOUT=0.2)
    timing: Dict[str, float] = {}

    @websocket.route("/close")
    def close(ws: WebSocketConnection) -> None:
        ws.accept()
        start = time.monotonic()
        ws.close(4000, "server says bye")
        timing["close"] = time.monotonic() - start
        timing["closed"] = float(ws.closed)

    ws = WebSocketTestClient(app, timeout=10, model=model).connect("/close")
    ws._run.finished.wait(10)  # the client never reads: no close frame comes back
    assert 0.15 <= timing["close"] < 3
    assert timing["closed"] == 1.0
    with pytest.raises(ConnectionClosed) as info:
        ws.receive()
    assert (info.value.code, info.value.reason) == (4000, "server says bye")
    ws.close()


def test_keepalive_drops_a_peer_that_does_not_answer_pings(model: str) -> None:
    app, websocket = make_app(WEBSOCKET_PING_INTERVAL=0.1, WEBSOCKET_PING_TIMEOUT=0.1)
    seen: List[Any] = []

    @websocket.route("/idle")
    def idle(ws: WebSocketConnection) -> None:
        ws.accept()
        try:
            ws.receive(timeout=10)
        except ConnectionClosed as exc:
            seen.append((exc.code, exc.sent_code))

    ws = WebSocketTestClient(app, timeout=10, model=model).connect("/idle")
    ws._run.finished.wait(10)  # the client does not read, so it never pongs
    assert seen == [(1006, 1011)]
    with pytest.raises(ConnectionClosed) as info:
        while True:
            ws.receive()
    assert info.value.code == 1011
    ws.close()


def test_keepalive_keeps_a_responsive_peer(model: str) -> None:
    app, websocket = make_app(WEBSOCKET_PING_INTERVAL=0.05, WEBSOCKET_PING_TIMEOUT=0.5)

    @websocket.route("/echo")
    def echo(ws: WebSocketConnection) -> None:
        for message in ws:
            ws.send(message)

    with WebSocketTestClient(app, timeout=10, model=model).connect("/echo") as ws:
        for i in range(10):  # the client answers pings while it reads
            ws.send(str(i))
            assert ws.receive() == str(i)
            time.sleep(0.03)


def test_send_from_sharedarea_outside_uwsgi_says_what_to_do(model: str) -> None:
    app, websocket = make_app()
    errors: List[str] = []

    @websocket.route("/sa")
    def sa(ws: WebSocketConnection) -> None:
        try:
            ws.send_from_sharedarea(0, 0)
        except Exception as exc:
            errors.append(str(exc))
        ws.send("done")

    with WebSocketTestClient(app, model=model).connect("/sa") as ws:
        assert ws.receive() == "done"
    assert errors and "--sharedarea" in errors[0]


@pytest.mark.parametrize("policy", ["drop_oldest", "raise", "disconnect"])
def test_send_nowait_applies_the_overflow_policy(policy: str, model: str) -> None:
    limit = 128 * 1024
    app, websocket = make_app(WEBSOCKET_SEND_QUEUE_SIZE=limit, WEBSOCKET_SEND_QUEUE_OVERFLOW=policy)
    count, size = 200, 16 * 1024  # 3 MiB: far more than the queue and the kernel hold
    report: Dict[str, Any] = {}

    @websocket.route("/burst")
    def burst(ws: WebSocketConnection) -> None:
        ws.receive()  # "go": the client has stopped reading by now
        sent = 0
        try:
            for i in range(count):
                ws.send_nowait(i.to_bytes(4, "big") + bytes(size))
                sent += 1
                report["peak"] = max(report.get("peak", 0), ws.buffered_amount)
        except Exception as exc:
            report["error"] = type(exc).__name__
        report["sent"] = sent
        if policy != "disconnect":
            ws.send_nowait("end")
            ws.receive(timeout=10)

    client = WebSocketTestClient(app, timeout=10, model=model)
    ws = client.connect("/burst")
    ws.send("go")
    deadline = time.monotonic() + 10
    while "sent" not in report and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "sent" in report
    received: List[Any] = []
    try:
        while True:
            message = ws.receive()
            if message == "end":
                break
            received.append(int.from_bytes(message[:4], "big"))  # type: ignore[index]
    except ConnectionClosed as exc:
        report["close"] = exc.code
    ws.close()
    assert received == sorted(received)  # whatever arrived, arrived in order
    assert report["peak"] <= limit + size + 14
    if policy == "drop_oldest":
        assert report["sent"] == count and "error" not in report
        assert received[-1] == count - 1 and len(received) < count  # newest kept
    elif policy == "raise":
        assert report["error"] == "SendQueueFull"
        assert received == list(range(report["sent"]))  # nothing lost before the error
    else:
        assert report["error"] in ("ConnectionClosedError", "ConnectionClosedOK")
        assert report["close"] == 1013
        assert received == list(range(len(received)))


# -- GuardedConnection: every public member runs holding the backend's guard ---------


class _CountingGuard:
    """A guard that counts how deeply it is held."""

    def __init__(self) -> None:
        self.depth = 0

    def __enter__(self) -> None:
        self.depth += 1

    def __exit__(self, *exc_info: Any) -> None:
        self.depth -= 1


class _NullWakeup(Wakeup):
    def wait(self, timeout: Optional[float] = None) -> bool:
        return True

    def notify(self) -> None:
        pass

    @property
    def waiting(self) -> bool:
        return False


class _GuardOnlyBackend:
    """Just enough of a backend for a connection that is never accepted."""

    def __init__(self) -> None:
        self.guard = _CountingGuard()

    def wakeup(self) -> Wakeup:
        return _NullWakeup()

    def sleep(self, seconds: float) -> None:
        pass

    def in_event_loop(self) -> bool:
        return False


def _no_socket() -> Any:
    raise RuntimeError("no socket in this test")


#: Arguments to call each public method with; every call ends early (the
#: connection cannot be accepted), but only after its body started.
_CALLS: Dict[str, Tuple[Any, ...]] = {
    "accept": (),
    "close": (),
    "close_nowait": (),
    "finish": (),
    "join": ("room",),
    "leave": ("room",),
    "message_frame": (1, b"text"),
    "offer_frame": (b"\x81\x00",),
    "receive": (0.0,),
    "recv": (0.0,),
    "recv_nb": (),
    "send": ("text",),
    "send_binary": (b"bytes",),
    "send_binary_from_sharedarea": (0, 0),
    "send_from_sharedarea": (0, 0),
    "send_frame": (b"\x81\x00",),
    "send_nowait": ("text",),
    "sleep": (0.0,),
}


def _public_names(cls: type) -> List[str]:
    return sorted(name for name in dir(cls) if not name.startswith("_"))


def test_every_public_member_of_the_connection_runs_under_the_guard() -> None:
    public = _public_names(WebSocketConnection)
    handler_api = {"receive", "recv", "recv_nb", "send", "send_binary", "close", "closed"}
    assert handler_api | {"send_from_sharedarea", "offer_frame", "id", "join"} <= set(public)
    # The deliberate exceptions, each a plain attribute set once in __init__.
    assert set(UNGUARDED) == {"frame_kind", "subprotocol", "wire"}
    for name in UNGUARDED:
        assert (
            type(inspect.getattr_static(WebSocketConnection, name)).__name__ == "member_descriptor"
        )

    backend = _GuardOnlyBackend()
    connection = GuardedConnection(
        ServerProtocol(),
        backend,
        ConnectionOptions(),
        _no_socket,  # type: ignore[arg-type]
    )
    # The code each public name runs in the unguarded class: a method, or a property's getter.
    code_of: Dict[str, CodeType] = {}
    for name in public:
        member = inspect.getattr_static(WebSocketConnection, name)
        function = member.fget if isinstance(member, property) else member
        if inspect.isfunction(function):
            code_of[name] = function.__code__
    assert set(public) - set(code_of) == set(UNGUARDED)
    unknown = {
        n
        for n in code_of
        if not isinstance(inspect.getattr_static(WebSocketConnection, n), property)
    } - set(_CALLS)
    assert not unknown, f"a new public method: add it to _CALLS to check it is guarded: {unknown}"

    depths: Dict[CodeType, List[int]] = {code: [] for code in code_of.values()}

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code in depths:
            depths[frame.f_code].append(backend.guard.depth)

    for name, code in code_of.items():
        depths[code].clear()
        sys.setprofile(profile)
        try:
            member = getattr(connection, name)  # a property runs here
            if callable(member) and name in _CALLS:
                member(*_CALLS[name])
        except Exception:
            pass  # not accepted: the call ends early, after its body started
        finally:
            sys.setprofile(None)
        assert depths[code], f"{name}: its body never ran"
        assert min(depths[code]) >= 1, f"{name} ran without holding backend.guard"
    assert backend.guard.depth == 0


def test_the_plain_connection_is_not_guarded() -> None:
    """gevent's connection pays nothing: its public members are not wrapped."""
    for name in _public_names(WebSocketConnection):
        member = inspect.getattr_static(WebSocketConnection, name)
        function = member.fget if isinstance(member, property) else member
        assert not hasattr(function, "__wrapped__"), name


def test_a_public_method_added_later_is_guarded_too() -> None:
    class Extended(WebSocketConnection):
        __slots__ = ()

        def shout(self) -> int:
            return self._backend.guard.depth  # type: ignore[no-any-return]

    guarded = _guard_public_api(type("GuardedExtended", (Extended,), {"__slots__": ()}))
    connection = guarded(ServerProtocol(), _GuardOnlyBackend(), ConnectionOptions(), _no_socket)
    assert connection.shout() == 1


def test_a_public_member_that_cannot_be_guarded_stops_the_import() -> None:
    class WithGenerator(WebSocketConnection):
        __slots__ = ()

        def messages(self) -> Iterator[int]:
            yield 1

    with pytest.raises(TypeError, match="messages: cannot guard"):
        _guard_public_api(type("GuardedWithGenerator", (WithGenerator,), {"__slots__": ()}))


# -- the peer breaks the protocol after valid messages -------------------------

RESERVED_OPCODE_FRAME = bytes([0x83, 0x80, 1, 2, 3, 4])  # opcode 3, masked, empty: 1002


def test_messages_before_a_violation_are_answered_before_the_close(model: str) -> None:
    """Autobahn 3.2, 4.1.3, 5.15...: what arrived valid is echoed, then 1002 (no pong)."""
    app, websocket = make_app()

    @websocket.route("/echo")
    def echo(ws: WebSocketConnection) -> None:
        for message in ws:
            ws.send(message)

    with WebSocketTestClient(app, timeout=10, model=model).connect("/echo") as ws:
        ws._sock.sendall(  # one write: the server reads it all at once
            client_frame(OP_TEXT, b"first")
            + client_frame(OP_TEXT, b"sec", fin=False)
            + client_frame(Opcode.CONT, b"ond")
            + RESERVED_OPCODE_FRAME
            + client_frame(Opcode.PING, b"unanswered")
        )
        assert ws.receive() == "first"
        assert ws.receive() == "second"
        with pytest.raises(ConnectionClosed) as info:
            ws.receive()
    assert info.value.code == 1002


def test_a_handler_that_does_not_come_back_gets_the_failure_anyway(model: str) -> None:
    """The close frame is held for the handler at most WEBSOCKET_CLOSE_TIMEOUT seconds."""
    app, websocket = make_app(WEBSOCKET_CLOSE_TIMEOUT=0.2)
    state: Dict[str, Any] = {"done": False}

    @websocket.route("/busy")
    def busy(ws: WebSocketConnection) -> None:
        ws.send(f"got {ws.receive()}")
        while not state["done"]:  # busy elsewhere, never receiving again
            ws.sleep(0.02)
        state["closed"] = ws.closed

    with WebSocketTestClient(app, timeout=10, model=model).connect("/busy") as ws:
        ws._sock.sendall(client_frame(OP_TEXT, b"one") + RESERVED_OPCODE_FRAME)
        assert ws.receive() == "got one"
        with pytest.raises(ConnectionClosed) as info:
            ws.receive()
        state["done"] = True
    assert info.value.code == 1002
    assert state["closed"] is True


def test_closing_during_the_hold_sends_the_failures_code(model: str) -> None:
    app, websocket = make_app()

    @websocket.route("/close")
    def close(ws: WebSocketConnection) -> None:
        message = ws.receive()
        ws.send(f"{message} (and {ws.closed=})")
        ws.close(4000, "the handler's own")

    with WebSocketTestClient(app, timeout=10, model=model).connect("/close") as ws:
        ws._sock.sendall(client_frame(OP_TEXT, b"one") + client_frame(OP_TEXT, b"\xff"))
        assert ws.receive() == "one (and ws.closed=False)"
        with pytest.raises(ConnectionClosed) as info:
            ws.receive()
    assert info.value.code == 1007  # invalid UTF-8: the failure, not the handler's 4000


# -- the message rate (WEBSOCKET_RATE_LIMIT) -------------------------------------


def _echo_app(**config: Any) -> Tuple[Flask, WebSocket]:
    app, websocket = make_app(**config)

    @websocket.route("/echo")
    def echo(ws: WebSocketConnection) -> None:
        for message in ws:
            ws.send(message)

    @websocket.route("/unlimited", rate_limit=None)
    def unlimited(ws: WebSocketConnection) -> None:
        for message in ws:
            ws.send(message)

    @websocket.route("/limited", rate_limit=(50, 5))
    def limited(ws: WebSocketConnection) -> None:
        for message in ws:
            ws.send(message)

    return app, websocket


def _flood(ws: Any, batches: int = 50, size: int = 20) -> Tuple[int, Optional[int]]:
    """Batches of messages in one write each, reading the echoes: (echoes, close code)."""
    echoes = 0
    try:
        for batch in range(batches):
            ws._sock.sendall(
                b"".join(client_frame(OP_TEXT, f"{batch}.{i}".encode()) for i in range(size))
            )
            for _ in range(size):
                ws.receive()
                echoes += 1
    except ConnectionClosed as exc:
        return echoes, exc.code
    return echoes, None


@pytest.fixture
def fresh_rate_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rate's log lines are rate-limited per process: start each test afresh."""
    monkeypatch.setattr(ratelimit, "_log", ratelimit.RateLimitedLog(ratelimit.logger, 1.0))


@pytest.mark.parametrize("path, config", [("/echo", (50, 5)), ("/limited", None)])
@pytest.mark.usefixtures("fresh_rate_log")
def test_a_client_that_goes_on_over_its_rate_is_warned_then_closed_1008(
    model: str, path: str, config: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app, _ = _echo_app(WEBSOCKET_RATE_LIMIT=config)
    client = WebSocketTestClient(app, timeout=10, model=model)
    with caplog.at_level(logging.WARNING, "flask_websocket"), client.connect(path) as ws:
        echoes, code = _flood(ws)
    assert code == 1008
    assert echoes >= 5  # what was read before the close reached the handler, and was echoed
    warned = caplog.text.index("faster than WEBSOCKET_RATE_LIMIT allows (50/s, burst 5)")
    assert caplog.text.index("with 1008: over its message rate again") > warned


@pytest.mark.parametrize("path, config", [("/echo", None), ("/unlimited", (50, 5))])
def test_without_a_limit_a_flood_is_served(model: str, path: str, config: Any) -> None:
    app, _ = _echo_app(WEBSOCKET_RATE_LIMIT=config)
    with WebSocketTestClient(app, timeout=10, model=model).connect(path) as ws:
        assert _flood(ws, batches=20) == (400, None)


def test_one_burst_over_the_limit_only_slows_the_client(model: str) -> None:
    app, _ = _echo_app(WEBSOCKET_RATE_LIMIT=(50, 5))
    with WebSocketTestClient(app, timeout=10, model=model).connect("/echo") as ws:
        assert _flood(ws, batches=1) == (20, None)  # warned: reading paused a while
        time.sleep(0.5)  # calm until the bucket is full again (20 tokens' time at 50/s)
        assert _flood(ws, batches=1) == (20, None)  # warned again, not closed
        ws.send("still open")
        assert ws.receive() == "still open"


def test_a_bad_rate_limit_on_a_route_is_refused_at_once() -> None:
    _, websocket = make_app()
    with pytest.raises(ValueError, match=r"rate_limit of '/x' is \(10, 0\): use"):
        websocket.route("/x", rate_limit=(10, 0))


# -- A broadcast's delivery: straight to the socket, never past a close --------------


def _read_all(sock: socket.socket, rounds: int = 200) -> List[bytes]:
    """What the peer can read now, letting the gevent loop flush queued bytes meanwhile."""
    chunks: List[bytes] = []
    idle = 0
    for _ in range(rounds):  # bounded: at most `rounds` short waits
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            idle += 1
            if idle > 20:
                break
            gevent.sleep(0.005)
            continue
        if not data:
            break
        idle = 0
        chunks.append(data)
    return chunks


@pytest.fixture
def accepted() -> Iterator[Tuple[WebSocketConnection, socket.socket]]:
    """An accepted connection on the gevent backend, over a socket pair, and its peer."""
    from flask_websocket.concurrency.gevent import GeventBackend

    server, client = socket.socketpair()
    server.setblocking(False)
    client.setblocking(False)
    connection = WebSocketConnection(
        open_server(),
        GeventBackend("gevent"),
        ConnectionOptions(ping_interval=None, close_timeout=0.5),
        lambda: server,
    )
    connection.accept()
    yield connection, client
    connection._teardown(lost=True)
    server.close()
    client.close()


def test_an_idle_connections_helpers_have_no_instance_dict() -> None:
    """The read watcher, the keepalive and the wake-up: slots only (memory per connection).

    Their abstract bases declare empty ``__slots__``, else every instance
    would carry a ``__dict__`` and a ``__weakref__`` all the same.
    """
    from flask_websocket.concurrency.gevent import GeventBackend

    server, client = socket.socketpair()
    server.setblocking(False)
    connection = WebSocketConnection(
        open_server(), GeventBackend("gevent"), ConnectionOptions(ping_interval=30), lambda: server
    )
    try:
        connection.accept()
        assert connection._keepalive is not None
        helpers = [connection._reader, connection._keepalive, connection._inbox_wakeup]
        assert all(helper is not None for helper in helpers)
        assert [type(h).__name__ for h in helpers if hasattr(h, "__dict__")] == []
    finally:
        connection._teardown(lost=True)
        server.close()
        client.close()


def test_offer_frame_after_our_close_sends_nothing_more(
    accepted: Tuple[WebSocketConnection, socket.socket],
) -> None:
    connection, client = accepted
    assert connection.offer_frame(encode_frame(OP_TEXT, b"before"))
    connection.close_nowait(1000, "bye")
    assert not connection.offer_frame(encode_frame(OP_TEXT, b"after"))
    frames = parse_server_frames(_read_all(client))
    assert [(f.opcode, bytes(f.data)) for f in frames[:1]] == [(Opcode.TEXT, b"before")]
    assert [f.opcode for f in frames[1:]] == [Opcode.CLOSE]  # and nothing after it


def test_offer_frame_after_the_peers_close_is_refused(
    accepted: Tuple[WebSocketConnection, socket.socket],
) -> None:
    connection, client = accepted
    client.sendall(client_frame(0x8, b"\x03\xe8"))
    for _ in range(100):  # the read watcher sees the close frame
        if connection.closed:
            break
        gevent.sleep(0.01)
    assert connection.closed
    assert not connection.offer_frame(encode_frame(OP_TEXT, b"after"))
    frames = parse_server_frames(_read_all(client))
    assert [f.opcode for f in frames] == [Opcode.CLOSE]  # the echo, nothing after it


def test_short_writes_queue_the_rest_and_every_frame_arrives_whole_in_order(
    accepted: Tuple[WebSocketConnection, socket.socket],
) -> None:
    connection, client = accepted
    payloads = [f"{i:05d}".encode() * 200 for i in range(800)]  # 800 KB: past the buffers
    assert all(connection.offer_frame(encode_frame(OP_TEXT, p)) for p in payloads[:400])
    assert connection.buffered_amount > 0  # some waited for the peer
    # The peer reads a little, so the kernel could take more, before the
    # connection's writer had a turn: what comes next must wait behind the queue.
    early = [client.recv(32768)]
    assert all(connection.offer_frame(encode_frame(OP_TEXT, p)) for p in payloads[400:])
    frames = parse_server_frames(early + _read_all(client, rounds=5000))
    assert [bytes(f.data) for f in frames] == payloads
    assert connection.buffered_amount == 0
    assert connection.offer_frame(encode_frame(OP_TEXT, b"direct again"))
    assert [bytes(f.data) for f in parse_server_frames(_read_all(client))] == [b"direct again"]
