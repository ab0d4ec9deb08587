"""Every example the documentation site shows, run.

The pages include these files with ``literalinclude``; here they run, with
the in-process test client (``flask_websocket.testing``) or on real uWSGI
for what needs a server: the quickstart and its Python client, the
``flask websocket run`` transcript, the configuration and its environment
file, and rooms across two workers with the ``flask announce`` command.
docs/examples/test_handlers.py (the testing page's example) runs as a test
module of its own; docs/examples/behind_proxy.py runs behind real proxies
in tests/test_deploy.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, List

import psutil
import pytest
from websockets.sync.client import connect as sync_connect

from flask_websocket import ConnectionClosedError, ConnectionClosedOK, HandshakeRejected
from flask_websocket.testing import WebSocketTestClient
from tests.conftest import StartServer
from tests.uwsgi_server import REPO_ROOT, UwsgiServer, run_python

EXAMPLES = REPO_ROOT / "docs" / "examples"
RECV_TIMEOUT = 10.0
#: The environment for commands the docs show: this repository importable, no proxies.
_CLEAN_ENV = {
    key: value
    for key, value in os.environ.items()
    if not key.lower().endswith("_proxy") and not key.startswith("FLASK_")
}


@pytest.fixture
def handlers_client() -> Iterator[WebSocketTestClient]:
    from docs.examples.handlers import app

    yield WebSocketTestClient(app)


# ---------------------------------------------------------------------------
# docs/examples/handlers.py (docs/handlers.rst)


def test_echo_keeps_text_and_binary(handlers_client: WebSocketTestClient) -> None:
    with handlers_client.connect("/echo") as ws:
        for message in ("hello", "", b"\x00\x01", b""):
            ws.send(message)
            assert ws.receive() == message


def test_shout_until_the_client_closes(handlers_client: WebSocketTestClient) -> None:
    with handlers_client.connect("/shout") as ws:
        ws.send("quiet")
        assert ws.receive() == "QUIET"
        ws.send(b"\x01\x02\x03")
        assert ws.receive() == b"\x03\x02\x01"
        ws.close()
        assert ws.close_code == 1000


def test_countdown_closes_with_its_reason(handlers_client: WebSocketTestClient) -> None:
    with handlers_client.connect("/countdown") as ws:
        assert [ws.receive(), ws.receive(), ws.receive()] == ["3", "2", "1"]
        with pytest.raises(ConnectionClosedOK):
            ws.receive()
        assert (ws.close_code, ws.close_reason) == (1000, "lift-off")


def test_goodbye_logs_how_the_client_left(
    handlers_client: WebSocketTestClient, caplog: pytest.LogCaptureFixture
) -> None:
    app = handlers_client.app
    with caplog.at_level(logging.INFO, logger=app.logger.name):
        ws = handlers_client.connect("/goodbye")
        ws.send("anything")
        ws.close(4001, "see you")
        deadline = time.monotonic() + RECV_TIMEOUT
        while time.monotonic() < deadline and not any(
            "client left" in record.getMessage() for record in caplog.records
        ):
            time.sleep(0.02)
    messages = [record.getMessage() for record in caplog.records]
    assert "client left: 4001 'see you'" in messages, messages


def test_private_refuses_with_http_403_before_the_upgrade(
    handlers_client: WebSocketTestClient,
) -> None:
    with pytest.raises(HandshakeRejected) as refused:
        handlers_client.connect("/private", query_string="token=wrong")
    assert refused.value.status == 403
    with handlers_client.connect("/private", query_string="token=let-me-in") as ws:
        assert ws.receive() == "welcome, guest"


def test_room_url_for_gives_a_websocket_url(handlers_client: WebSocketTestClient) -> None:
    with handlers_client.connect("/rooms/7") as ws:
        assert ws.receive() == "room 7 is at ws://localhost/rooms/7"


def test_json_api_sums_and_refuses_what_is_not_json(handlers_client: WebSocketTestClient) -> None:
    with handlers_client.connect("/json") as ws:
        ws.send(json.dumps({"numbers": [1, 2, 39]}))
        assert json.loads(ws.receive()) == {"sum": 42}
        ws.send("not json")
        with pytest.raises(ConnectionClosedError):
            ws.receive()
        assert (ws.close_code, ws.close_reason) == (1007, "expected JSON")


def test_chat_subprotocols(handlers_client: WebSocketTestClient) -> None:
    with handlers_client.connect("/chat", subprotocols=["chat.v1"]) as ws:
        assert ws.subprotocol == "chat.v1"
        assert ws.receive() == "speaking chat.v1"
    with handlers_client.connect("/chat", subprotocols=["chat.v1", "chat.v2"]) as ws:
        assert ws.receive() == "speaking chat.v2"  # the route's favourite
    with pytest.raises(HandshakeRejected) as refused:
        handlers_client.connect("/chat", subprotocols=["other"])
    assert refused.value.status >= 400


def test_upload_takes_more_than_the_default_limit(handlers_client: WebSocketTestClient) -> None:
    big = os.urandom(3 * 2**20)  # over the 1 MiB default, under the route's 16 MiB
    with handlers_client.connect("/upload") as ws:
        ws.send(big)
        assert ws.receive() == f"got {len(big)} bytes"
    with handlers_client.connect("/echo") as ws:  # the default limit elsewhere
        ws.send(big)
        with pytest.raises(ConnectionClosedError):
            ws.receive()
        assert ws.close_code == 1009


def test_ask_waits_for_the_answer(handlers_client: WebSocketTestClient) -> None:
    with handlers_client.connect("/ask") as ws:
        assert ws.receive() == "what is your name?"
        ws.send("Ada")
        assert ws.receive() == "hello Ada"


def test_ask_gives_up_after_its_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``None`` branch: ``receive(timeout=30)``, made short for the test."""
    from docs.examples import handlers
    from flask_websocket import WebSocketConnection

    receive = WebSocketConnection.receive

    def quick_receive(self: WebSocketConnection, timeout: object = None) -> object:
        return receive(self, 0.2 if timeout == 30 else timeout)  # type: ignore[arg-type]

    monkeypatch.setattr(WebSocketConnection, "receive", quick_receive)
    with WebSocketTestClient(handlers.app).connect("/ask") as ws:
        assert ws.receive() == "what is your name?"
        with pytest.raises(ConnectionClosedError):
            ws.receive()
        assert (ws.close_code, ws.close_reason) == (1008, "too slow")


def test_poll_echoes_with_recv_nb(handlers_client: WebSocketTestClient) -> None:
    with handlers_client.connect("/poll") as ws:
        for message in ("one", b"two", "three"):
            ws.send(message)
            assert ws.receive() == message


def test_blueprint_route(handlers_client: WebSocketTestClient) -> None:
    with handlers_client.connect("/api/events") as ws:
        assert ws.receive() == "ws://localhost/api/events"


# ---------------------------------------------------------------------------
# The quickstart (docs/quickstart.rst), on real uWSGI


@pytest.mark.uwsgi
def test_quickstart_app_and_client_on_uwsgi(start_uwsgi: StartServer) -> None:
    server: UwsgiServer = start_uwsgi("docs.examples.quickstart:app", mode="http")
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "client.py"), server.url("/echo")],
        cwd=REPO_ROOT,
        env=dict(_CLEAN_ENV, PYTHONPATH=str(REPO_ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hello\nb'\\x00\\x01'\n"
    assert server.crash_lines() == [], server.log()


def _console_transcript(path: Path) -> List[tuple]:
    """(command, expected output) pairs of a ``$ command`` transcript."""
    pairs: List[tuple] = []
    for line in path.read_text().splitlines():
        if line.startswith("$ "):
            pairs.append((line[2:], []))
        else:
            assert pairs, f"{path.name}: output before any command"
            pairs[-1][1].append(line)
    return [(command, "\n".join(output)) for command, output in pairs]


def test_quickstart_run_transcript(tmp_path: Path) -> None:
    """``flask --app app websocket run --dry-run`` prints what the page shows."""
    shutil.copy(EXAMPLES / "quickstart.py", tmp_path / "app.py")
    flask = str(Path(sys.executable).with_name("flask"))
    transcript = _console_transcript(EXAMPLES / "quickstart-run.console")
    assert len(transcript) >= 2
    for command, expected in transcript:
        argv = shlex.split(command)
        assert argv[0] == "flask"
        result = subprocess.run(
            [flask, *argv[1:]],
            cwd=tmp_path,
            env=dict(_CLEAN_ENV, PYTHONPATH=str(REPO_ROOT)),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert (result.stdout + result.stderr).rstrip("\n") == expected, command


# ---------------------------------------------------------------------------
# Configuration (docs/configuration.rst)


def _environment_file() -> Dict[str, str]:
    """The variables of docs/examples/websocket.env, read as a shell would."""
    variables: Dict[str, str] = {}
    for line in (EXAMPLES / "websocket.env").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        (assignment,) = shlex.split(line)
        name, _, value = assignment.partition("=")
        variables[name] = value
    return variables


_SHOW_CONFIG = """
import json
from docs.examples.configuration import app
print(json.dumps({key: app.config[key] for key in app.config if key.startswith("WEBSOCKET_")}))
"""


def test_configuration_example_and_its_environment_file() -> None:
    plain = run_python(_SHOW_CONFIG)
    assert plain.returncode == 0, plain.stderr
    config = json.loads(plain.stdout)
    assert config["WEBSOCKET_MAX_MESSAGE_SIZE"] == 64 * 1024
    assert config["WEBSOCKET_PING_INTERVAL"] == 20
    assert config["WEBSOCKET_ALLOWED_ORIGINS"] == ["https://chat.example.com"]

    env = _environment_file()
    assert set(env) >= {"FLASK_WEBSOCKET_PING_INTERVAL", "FLASK_WEBSOCKET_ALLOWED_ORIGINS"}
    code = (
        "import os; os.environ.update(" + repr(env) + ")\n" + _SHOW_CONFIG
    )  # the same interpreter set-up as above, plus the file's variables
    configured = run_python(code)
    assert configured.returncode == 0, configured.stderr
    config = json.loads(configured.stdout)
    assert config["WEBSOCKET_PING_INTERVAL"] == 10
    assert config["WEBSOCKET_ALLOWED_ORIGINS"] == ["https://chat.example.com"]
    assert config["WEBSOCKET_HUB_URL"] == "redis://redis.internal:6379/0"
    assert config["WEBSOCKET_MAX_MESSAGE_SIZE"] == 64 * 1024  # untouched by the file


def test_configuration_example_limits_and_origins() -> None:
    from docs.examples.configuration import app

    client = WebSocketTestClient(app)
    with pytest.raises(HandshakeRejected) as refused:
        client.connect("/echo", origin="https://elsewhere.example")
    assert refused.value.status == 403
    with client.connect("/echo", origin="https://chat.example.com") as ws:
        ws.send("x" * (64 * 1024))
        assert ws.receive() == "x" * (64 * 1024)
        ws.send("x" * (64 * 1024 + 1))
        with pytest.raises(ConnectionClosedError):
            ws.receive()
        assert ws.close_code == 1009


# ---------------------------------------------------------------------------
# Rooms (docs/rooms.rst), on uWSGI with two workers and the local hub


def _recv(ws: object) -> object:
    return ws.recv(timeout=RECV_TIMEOUT)  # type: ignore[attr-defined]


@pytest.mark.uwsgi
@pytest.mark.timeout(120)
def test_rooms_example_across_workers_and_from_a_flask_command(
    start_uwsgi: StartServer,
) -> None:
    server: UwsgiServer = start_uwsgi(
        "docs.examples.rooms:app", processes=2, extra=["--gevent-early-monkey-patch"]
    )

    def open_ws(path: str):  # type: ignore[no-untyped-def]
        return sync_connect(server.url(path), open_timeout=RECV_TIMEOUT, proxy=None)

    def worker_of(ws) -> int:  # type: ignore[no-untyped-def]
        """The worker pid that holds ``ws``'s connection (--http-socket: the client's)."""
        port = ws.socket.getsockname()[1]
        for pid in server.worker_pids():
            for conn in psutil.Process(pid).net_connections(kind="tcp"):
                if conn.raddr and conn.raddr.port == port:
                    return pid
        raise AssertionError(f"no worker holds the connection from port {port}")

    with contextlib.ExitStack() as stack:
        # Two lobby members on different workers, so that what follows crosses the hub.
        lobby = [stack.enter_context(open_ws("/chat/lobby"))]
        for _ in range(20):
            lobby.append(stack.enter_context(open_ws("/chat/lobby")))
            if worker_of(lobby[-1]) != worker_of(lobby[0]):
                break
            lobby.pop().close()
        alice, bob = lobby[0], lobby[-1]
        assert worker_of(alice) != worker_of(bob), "all connections landed on one worker"
        carol = stack.enter_context(open_ws("/chat/kitchen"))

        # Presence counts the members of every worker.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + RECV_TIMEOUT
        members = None
        while time.monotonic() < deadline:
            with opener.open(server.http_url("/rooms/lobby"), timeout=RECV_TIMEOUT) as response:
                members = json.loads(response.read())["members"]
            if members == 2:
                break
            time.sleep(0.05)
        assert members == 2

        alice.send("hi lobby")
        assert _recv(bob) == "hi lobby"  # not to alice (skip=ws), not to carol

        request = urllib.request.Request(server.http_url("/announce"), data=b"from a view")
        with opener.open(request, timeout=RECV_TIMEOUT) as response:
            assert response.read() == b"sent"
        for ws in (alice, bob, carol):
            assert _recv(ws) == "from a view"

        # The flask command, in its own process, reaches both workers.
        flask = str(Path(sys.executable).with_name("flask"))
        result = subprocess.run(
            [flask, "--app", "docs.examples.rooms", "announce", "from a shell"],
            cwd=REPO_ROOT,
            env=dict(_CLEAN_ENV, PYTHONPATH=str(REPO_ROOT)),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        for ws in (alice, bob, carol):
            assert _recv(ws) == "from a shell"
        # Nothing else arrived: alice never got her own message.
        with pytest.raises(TimeoutError):
            alice.recv(timeout=0.3)
    assert server.crash_lines() == [], server.log()


# ---------------------------------------------------------------------------
# docs/examples/security.py (docs/security.rst)


def _session_cookie(browser: object) -> str:
    """Log in with Flask's test client (a browser that keeps its cookies); the cookie."""
    response = browser.post("/login/alice")  # type: ignore[attr-defined]
    cookie = response.headers["Set-Cookie"].split(";", 1)[0]
    assert cookie.startswith("session=")
    return str(cookie)


def test_security_example_in_process() -> None:
    from docs.examples.security import app

    client = WebSocketTestClient(app)
    with pytest.raises(HandshakeRejected) as refused:
        client.connect("/ws/notifications")
    assert refused.value.status == 401  # no session: a plain 401, never a 101
    browser = app.test_client()
    cookie = _session_cookie(browser)
    with client.connect("/ws/notifications", headers={"Cookie": cookie}) as ws:
        assert ws.receive() == "hello alice"
        ws.send("hi")
        assert ws.receive() == "alice said hi"
    # The user's cookie from another site's page: refused by the Origin check.
    with pytest.raises(HandshakeRejected) as refused:
        client.connect(
            "/ws/notifications", headers={"Cookie": cookie}, origin="https://evil.example"
        )
    assert refused.value.status == 403
    with client.connect(
        "/ws/notifications", headers={"Cookie": cookie}, origin="https://admin.example.com"
    ) as ws:
        assert ws.receive() == "hello alice"
    with pytest.raises(HandshakeRejected) as refused:
        client.connect("/ws/service", headers={"Authorization": "Bearer wrong"})
    assert refused.value.status == 403
    with client.connect("/ws/service", headers={"Authorization": "Bearer s3cret-token"}) as ws:
        assert ws.receive() == "hello build-bot"
    # Logging out closes every tab of the user.
    tabs = [client.connect("/ws/notifications", headers={"Cookie": cookie}) for _ in range(2)]
    assert [tab.receive() for tab in tabs] == ["hello alice"] * 2
    assert browser.post("/logout").data == b"logged out"  # a view in another thread
    for tab in tabs:
        with pytest.raises(ConnectionClosedError) as closed:
            tab.receive()
        assert (closed.value.code, closed.value.reason) == (4001, "logged out")


def test_security_example_on_uwsgi(start_uwsgi: StartServer) -> None:
    server = start_uwsgi("docs.examples.security:app", gevent=100)
    request = urllib.request.Request(server.http_url("/login/alice"), method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        cookie = response.headers["Set-Cookie"].split(";", 1)[0]
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as refused:
        sync_connect(server.url("/ws/notifications"), open_timeout=10, proxy=None)
    assert refused.value.response.status_code == 401
    own_origin = f"http://127.0.0.1:{server.port}"
    headers = {"Cookie": cookie}
    with sync_connect(
        server.url("/ws/notifications"), additional_headers=headers, origin=own_origin, proxy=None
    ) as ws:
        assert ws.recv(timeout=RECV_TIMEOUT) == "hello alice"
    with pytest.raises(InvalidStatus) as refused:
        sync_connect(
            server.url("/ws/notifications"),
            additional_headers=headers,
            origin="http://evil.example",
            proxy=None,
        )
    assert refused.value.response.status_code == 403
    assert "refused a WebSocket handshake to /ws/notifications" in server.log()


# ---------------------------------------------------------------------------
# docs/examples/migrating.py (docs/migrating.rst)


def test_migrated_socketio_chat() -> None:
    from docs.examples.migrating import app

    client = WebSocketTestClient(app)
    with (
        client.connect("/ws", query_string="nick=ann") as ann,
        client.connect("/ws", query_string="nick=bob") as bob,
    ):
        ann.send(json.dumps({"type": "join", "room": "r"}))
        bob.send(json.dumps({"type": "whoami"}))
        you = json.loads(bob.receive())
        assert you["type"] == "you" and you["nick"] == "bob"
        bob.send(json.dumps({"type": "join", "room": "r"}))
        assert json.loads(ann.receive()) == {"type": "joined", "nick": "bob"}
        ann.send(json.dumps({"type": "say", "text": "hi"}))
        said = {"type": "said", "nick": "ann", "text": "hi"}
        assert json.loads(ann.receive()) == said and json.loads(bob.receive()) == said
        bob.close()
        assert json.loads(ann.receive()) == {"type": "left", "nick": "bob"}


# ---------------------------------------------------------------------------
# docs/examples/history.py (docs/rooms.rst)


def test_history_example_replays_what_a_resuming_client_missed() -> None:
    from docs.examples.history import app

    client = WebSocketTestClient(app)
    reader = client.connect("/news/tech", subprotocols=["fws.v1"])
    joined = json.loads(reader.receive())
    assert joined["j"] == "news:tech" and joined["recovered"] is True
    writer = client.connect("/news/tech")  # a plain client: no positions
    writer.send("first")
    first = json.loads(reader.receive())
    assert first["d"] == "first" and first["r"] == "news:tech"
    reader.close()
    writer.send("second")
    writer.send("third")
    since = f"news:tech:{first['e']}:{first['o']}"
    back = client.connect("/news/tech", subprotocols=["fws.v1"], query_string=f"fws_since={since}")
    answer = json.loads(back.receive())
    assert answer["recovered"] is True
    assert [json.loads(back.receive())["d"] for _ in range(2)] == ["second", "third"]
    assert app.test_client().get("/news/tech/latest").json == ["first", "second", "third"]
    back.close()
    writer.close()


# ---------------------------------------------------------------------------
# The Python client following a chat room (docs/client.rst), across a reload


@pytest.mark.uwsgi
def test_follow_room_prints_each_message_once_across_a_reload(start_uwsgi: StartServer) -> None:
    import asyncio
    import signal

    from websockets.asyncio.client import connect as async_connect

    from tests.private_hub import private_hub
    from tests.uwsgi_server import poll_until

    with private_hub("follow") as hub_env:
        server: UwsgiServer = start_uwsgi(
            "examples.chat:app", processes=2, gevent=100,
            extra=["--gevent-early-monkey-patch"], env=hub_env,
        )  # fmt: skip
        room_url = server.url("/ws/lobby")

        async def say(texts: List[str]) -> None:
            async with async_connect(f"{room_url}?nick=alice", open_timeout=20) as ws:
                for text in texts:
                    await ws.send(json.dumps({"type": "message", "text": text}))
                for _ in range(100):  # bounded: the welcome, notices, then her own messages
                    event = json.loads(await asyncio.wait_for(ws.recv(), RECV_TIMEOUT))
                    if event.get("type") == "message" and event["text"] == texts[-1]:
                        return
                raise AssertionError("alice never saw her own last message")

        async def scenario() -> List[str]:
            follower = await asyncio.create_subprocess_exec(
                sys.executable, str(EXAMPLES / "follow_room.py"), f"{room_url}?nick=bot",
                "--count", "4", cwd=REPO_ROOT, env=dict(_CLEAN_ENV, PYTHONPATH=str(REPO_ROOT)),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            assert follower.stdout is not None
            lines: List[str] = []

            async def line() -> str:
                text = (await asyncio.wait_for(follower.stdout.readline(), 60)).decode()
                lines.append(text.rstrip("\n"))
                return lines[-1]

            try:
                # Whenever the follower joins, the chat gives it the room's
                # history first: "hello" reaches it either way.
                await say(["hello"])
                assert await line() == "alice: hello"
                await say(["before the reload"])
                assert await line() == "alice: before the reload"
                old = server.worker_pids()
                assert server.process is not None
                os.kill(server.process.pid, signal.SIGHUP)  # every worker replaced; 1012
                assert await asyncio.to_thread(
                    poll_until, lambda: not set(server.worker_pids()) & set(old), 30
                )
                await say(["after it", "and again"])
                assert await line() == "alice: after it"
                assert await line() == "alice: and again"
                assert await asyncio.wait_for(follower.wait(), 30) == 0  # --count 4: done
                assert follower.stderr is not None
                assert (await follower.stderr.read()) == b""
            finally:
                if follower.returncode is None:
                    follower.kill()
                    await follower.wait()
            return lines

        lines = asyncio.run(scenario())
        server.stop()
    assert lines == [
        "alice: hello", "alice: before the reload", "alice: after it", "alice: and again",
    ]  # fmt: skip
    assert server.crash_lines() == [], server.log()
