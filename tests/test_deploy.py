"""The files of deploy/, run for real: uWSGI behind nginx and HAProxy, over TLS.

For each proxy set-up (nginx over HTTP, nginx over the uwsgi protocol,
HAProxy in mode http), the test renders the files with free 127.0.0.1 ports
and a self-signed certificate it makes, starts uWSGI from the ini and the
proxy in front (Debian's nginx and haproxy packages), and talks ``wss://``
to the proxy. The app is docs/examples/behind_proxy.py (ProxyFix) with a
few test routes (tests/apps/proxied.py); the browser test serves the chat
example. Without nginx, haproxy or openssl the tests are skipped, saying
why, except under CI, where they fail.

The systemd unit and the Dockerfile are checked without systemd or Docker
running: ``systemd-analyze verify``, uWSGI's readiness notification, and a
syntax check of the Dockerfile whose uWSGI options must be the ini's.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
from flask import Flask
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK, InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as sync_connect

from tests.deploy_servers import (
    DEPLOY,
    Certificate,
    Haproxy,
    IniUwsgi,
    Nginx,
    Server,
    make_certificate,
    missing_programs,
    read_ini,
    render,
)
from tests.uwsgi_server import REPO_ROOT, UWSGI, UwsgiServer, poll_until

pytestmark = pytest.mark.uwsgi

#: The proxy set-ups: nginx's two deploy/ sites and HAProxy.
PROXIES = ["nginx-proxy", "nginx-uwsgi", "haproxy"]
MIB = 2**20
#: Seconds any single receive may take before the test fails.
RECV_TIMEOUT = 15.0
#: Another loopback address for the client, so that the app can tell the
#: client's address from the proxy's (127.0.0.1).
CLIENT_ADDRESS = "127.0.0.2"


def require(*programs: str) -> None:
    """Skip (fail under CI) unless ``programs`` are installed."""
    missing = missing_programs(*programs)
    if missing:
        message = f"{', '.join(missing)} not installed (scripts/bootstrap.sh installs them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def programs_for(kind: str) -> Tuple[str, ...]:
    return ("openssl", "haproxy") if kind == "haproxy" else ("openssl", "nginx")


@dataclass
class Deployment:
    """uWSGI from deploy/uwsgi.ini behind one proxy from deploy/, over TLS."""

    kind: str
    uwsgi: IniUwsgi
    proxy: Server
    certificate: Certificate
    started: List[Server] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.proxy.port)  # type: ignore[attr-defined]

    @property
    def origin(self) -> str:
        """The public origin: what a browser on the site sends as ``Origin``."""
        return f"https://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"wss://127.0.0.1:{self.port}{path}"

    def http_url(self, path: str = "/") -> str:
        """The page's ``https://`` URL (the name the browser test's helpers expect)."""
        return f"{self.origin}{path}"

    def connect(
        self,
        path: str,
        *,
        origin: Optional[str] = None,
        headers: Optional[Dict[str, str]] = None,
        source: str = "127.0.0.1",
    ) -> ClientConnection:
        """A ``wss://`` client connection to the proxy, from ``source``."""
        sock = socket.socket()
        sock.settimeout(RECV_TIMEOUT)
        sock.bind((source, 0))
        try:
            sock.connect(("127.0.0.1", self.port))
            return sync_connect(
                self.url(path),
                sock=sock,
                ssl=self.certificate.client_context(),
                server_hostname="127.0.0.1",
                origin=origin,  # type: ignore[arg-type]
                additional_headers=headers,
                open_timeout=RECV_TIMEOUT,
                close_timeout=RECV_TIMEOUT,
                ping_interval=None,
                max_size=4 * MIB,
                compression=None,
                proxy=None,
            )
        except BaseException:
            sock.close()
            raise

    def https(self, source: str = "127.0.0.1") -> http.client.HTTPSConnection:
        """An HTTPS client of the proxy, from ``source``."""
        return http.client.HTTPSConnection(
            "127.0.0.1",
            self.port,
            context=self.certificate.client_context(),
            timeout=RECV_TIMEOUT,
            source_address=(source, 0),
        )

    def stop(self) -> None:
        for server in reversed(self.started):
            server.stop()

    def problems(self) -> List[str]:
        return [f"{server.name}: {line}" for server in self.started for line in server.problems()]


def deploy(
    directory: Path,
    kind: str,
    module: str,
    certificate: Certificate,
    *,
    env: Optional[Dict[str, str]] = None,
    timeout: Optional[str] = None,
    allow_no_origin: bool = True,
) -> Deployment:
    """Start uWSGI serving ``module`` and the proxy ``kind`` in front of it.

    The app's ``WEBSOCKET_ALLOWED_ORIGINS`` is the proxy's public origin (and
    no ``Origin`` at all, for the test's own clients, with ``allow_no_origin``).
    """
    require(*programs_for(kind))
    directory.mkdir(parents=True, exist_ok=True)
    protocol = "uwsgi" if kind == "nginx-uwsgi" else "http"
    uwsgi = IniUwsgi(directory, module, protocol=protocol, env=env)
    proxy: Server
    if kind == "haproxy":
        proxy = Haproxy(
            directory, upstream_port=uwsgi.port, certificate=certificate, timeout=timeout
        )
    else:
        proxy = Nginx(
            directory, f"{kind}.conf", upstream_port=uwsgi.port, certificate=certificate,
            timeout=timeout,
        )  # fmt: skip
    checked = proxy.check()  # type: ignore[attr-defined]
    assert checked.returncode == 0, checked.stdout + checked.stderr
    deployment = Deployment(kind, uwsgi, proxy, certificate)
    origins: List[Optional[str]] = [deployment.origin]
    if allow_no_origin:
        origins.append(None)
    uwsgi.env.setdefault("FLASK_WEBSOCKET_ALLOWED_ORIGINS", json.dumps(origins))
    try:
        deployment.started.append(uwsgi.start())
        deployment.started.append(proxy.start())
    except BaseException:
        deployment.stop()
        raise
    return deployment


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    require("openssl")
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module", params=PROXIES)
def deployment(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    certificate: Certificate,
) -> Iterator[Deployment]:
    """The test app behind each proxy set-up, shared by the tests of this module."""
    directory = tmp_path_factory.mktemp(request.param)
    running = deploy(directory, request.param, "tests.apps.proxied:app", certificate)
    yield running
    running.stop()
    assert running.problems() == [], running.uwsgi.log() + running.proxy.log()


# ---------------------------------------------------------------------------
# Slow request heads (slowloris)

#: What deploy/'s proxies give a client to send its whole request head.
HEAD_TIMEOUT = 10.0


@pytest.mark.parametrize("kind", PROXIES)
def test_slow_request_heads_are_cut_and_the_others_served(
    kind: str, tmp_path: Path, certificate: Certificate
) -> None:
    """300 clients drip their request head a byte a second: the proxy drops each within
    its bound (10 s for the whole head), and a normal client connects meanwhile.

    A deployment of its own: the other tests' proxy is not left with these clients.
    """
    deployment = deploy(tmp_path, kind, "tests.apps.proxied:app", certificate)
    try:
        _slow_heads(deployment)
    finally:
        deployment.stop()
    assert deployment.problems() == [], deployment.uwsgi.log() + deployment.proxy.log()


def _slow_heads(deployment: Deployment) -> None:
    slow_clients = 300
    context = deployment.certificate.client_context()

    async def drip() -> float:
        """Drip until the proxy hangs up; the seconds it took (bounded)."""
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", deployment.port, ssl=context, server_hostname="127.0.0.1"
        )
        started = time.monotonic()
        head = b"GET /ws/whoami HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"x" * 100
        try:
            for byte in head:  # bounded: the head is 140 bytes, one a second
                writer.write(bytes([byte]))
                await writer.drain()
                with contextlib.suppress(asyncio.TimeoutError):
                    if not await asyncio.wait_for(reader.read(4096), 1.0):
                        break  # end of stream: dropped
        except (ConnectionError, OSError):
            pass  # dropped hard
        finally:
            writer.close()
        return time.monotonic() - started

    async def scenario() -> List[float]:
        tasks = [asyncio.create_task(drip()) for _ in range(slow_clients)]
        await asyncio.sleep(2.0)  # every slow client holds its connection now
        with await asyncio.to_thread(deployment.connect, "/ws/whoami") as ws:
            assert json.loads(await asyncio.to_thread(ws.recv, RECV_TIMEOUT))["scheme"] == "https"
        return list(await asyncio.gather(*tasks))

    held = asyncio.run(scenario())
    assert len(held) == slow_clients
    assert max(held) < HEAD_TIMEOUT + 5, sorted(held)[-5:]  # dropped, none dripped to the end


# ---------------------------------------------------------------------------
# Messages and close codes through each proxy


def _one_mib_text() -> str:
    unit = "aé€😀"  # 1 + 2 + 3 + 4 bytes of UTF-8
    text = unit * (MIB // 10)
    return text + "z" * (MIB - len(text.encode()))


def test_echo_through_the_proxy(deployment: Deployment) -> None:
    messages: List[Any] = ["hello, wörld ✓", b"\x00\xff" * 10, "", b""]
    messages += [_one_mib_text(), os.urandom(MIB)]
    with deployment.connect("/ws/echo") as ws:
        for message in messages:
            ws.send(message)
            echoed = ws.recv(timeout=RECV_TIMEOUT)
            assert type(echoed) is type(message)
            assert echoed == message


def test_close_codes_and_reasons_both_ways(deployment: Deployment) -> None:
    # Server -> client.
    for code, reason, exc_type in [
        (4002, "server says bye", ConnectionClosedError),
        (1001, "going away ✓", ConnectionClosedOK),
    ]:
        with deployment.connect(f"/ws/close/{code}") as ws:
            ws.send(reason)
            with pytest.raises(exc_type) as info:
                ws.recv(timeout=RECV_TIMEOUT)
            assert info.value.rcvd is not None, "no close frame came through the proxy"
            assert (info.value.rcvd.code, info.value.rcvd.reason) == (code, reason)

    # Client -> server: the handler reports what it saw to a listener (any worker).
    with deployment.connect("/ws/closes") as listener:
        assert listener.recv(timeout=RECV_TIMEOUT) == "listening"
        for code, reason in [(4003, "client says bye"), (1000, "normal")]:
            with deployment.connect("/ws/peer-close") as ws:
                assert ws.recv(timeout=RECV_TIMEOUT) == "ready"
                ws.close(code, reason)
                assert ws.close_code == code  # the server echoed the close frame
            assert listener.recv(timeout=RECV_TIMEOUT) == f"{code} {reason}"


async def _many_connections(deployment: Deployment, count: int) -> Tuple[int, int]:
    """Open ``count`` connections, echo on each while all are open, close them all.

    Returns (connections that echoed both messages, close handshakes completed with 1000).
    """
    context = deployment.certificate.client_context()
    connections: List[Any] = []
    try:
        for start in range(0, count, 50):
            batch = [
                async_connect(
                    deployment.url("/ws/echo"),
                    ssl=context,
                    open_timeout=60,
                    close_timeout=30,
                    ping_interval=None,
                    compression=None,
                    proxy=None,
                )
                for _ in range(start, min(start + 50, count))
            ]
            connections.extend(await asyncio.wait_for(asyncio.gather(*batch), 120))

        async def echo(index: int, ws: Any) -> bool:
            text = f"connection {index} says {os.urandom(8).hex()}"
            await ws.send(text)
            await ws.send(text.encode())
            return bool(await ws.recv() == text and await ws.recv() == text.encode())

        results = await asyncio.wait_for(
            asyncio.gather(*(echo(i, ws) for i, ws in enumerate(connections))), 120
        )
        await asyncio.wait_for(asyncio.gather(*(ws.close() for ws in connections)), 120)
        closed_ok = sum(1 for ws in connections if ws.close_code == 1000)
        return sum(1 for ok in results if ok), closed_ok
    finally:
        await asyncio.wait_for(
            asyncio.gather(*(ws.close() for ws in connections), return_exceptions=True), 120
        )


@pytest.mark.timeout(400)
def test_200_concurrent_connections(deployment: Deployment) -> None:
    echoed, closed_ok = asyncio.run(_many_connections(deployment, 200))
    assert echoed == 200
    assert closed_ok == 200
    with deployment.connect("/ws/echo") as ws:  # still serving
        ws.send("after the crowd")
        assert ws.recv(timeout=RECV_TIMEOUT) == "after the crowd"


# ---------------------------------------------------------------------------
# What the app sees behind the proxy (ProxyFix) and the Origin check

#: Headers a client could send to pass itself off as someone else; every
#: proxy set-up replaces (or, for X-Forwarded-For, appends to) them.
FORGED = {
    "X-Forwarded-For": "203.0.113.9",
    "X-Forwarded-Proto": "http",
    "X-Forwarded-Host": "forged.example",
}


@pytest.mark.parametrize("forged", [False, True], ids=["honest", "forged-headers"])
def test_app_sees_the_client_and_its_public_address(deployment: Deployment, forged: bool) -> None:
    headers = dict(FORGED) if forged else None
    host = f"127.0.0.1:{deployment.port}"
    with deployment.connect("/ws/whoami", headers=headers, source=CLIENT_ADDRESS) as ws:
        seen = json.loads(ws.recv(timeout=RECV_TIMEOUT))
    assert seen == {
        "client": CLIENT_ADDRESS,
        "scheme": "https",
        "host": host,
        "url": f"wss://{host}/ws/whoami",
    }
    connection = deployment.https(source=CLIENT_ADDRESS)
    try:
        connection.request("GET", "/whoami", headers=headers or {})
        response = connection.getresponse()
        assert response.status == 200
        seen = json.loads(response.read())
    finally:
        connection.close()
    assert seen == {
        "client": CLIENT_ADDRESS,
        "scheme": "https",
        "host": host,
        "url": f"https://{host}/whoami",
    }


def test_origin_check_uses_the_public_origin(deployment: Deployment) -> None:
    # A page of the site (the public origin) may connect; the app agrees that
    # this is its own origin: what a same-origin rule would compare with.
    with deployment.connect("/ws/whoami", origin=deployment.origin) as ws:
        seen = json.loads(ws.recv(timeout=RECV_TIMEOUT))
    assert f"{seen['scheme']}://{seen['host']}" == deployment.origin
    # Another site's page, and the app's private address, may not.
    for origin in ("https://elsewhere.example", f"http://127.0.0.1:{deployment.uwsgi.port}"):
        with pytest.raises(InvalidStatus) as refused:
            deployment.connect("/ws/whoami", origin=origin)
        assert refused.value.response.status_code == 403, origin


def test_plain_http_redirects_to_https(deployment: Deployment) -> None:
    port = deployment.proxy.http_port  # type: ignore[attr-defined]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=RECV_TIMEOUT)
    try:
        connection.request("GET", "/whoami?x=1")
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()
    assert response.status == 301
    location = response.getheader("Location") or ""
    assert location.startswith("https://127.0.0.1"), location
    assert location.endswith("/whoami?x=1"), location


def test_without_the_upgrade_headers_nginx_turns_handshakes_into_400(
    tmp_path: Path, certificate: Certificate
) -> None:
    """Why deploy/nginx-proxy.conf sets Upgrade and Connection: a plain proxy_pass fails."""
    require("nginx")
    plain = render(
        (DEPLOY / "nginx-proxy.conf").read_text(),
        {
            "        proxy_set_header Upgrade $http_upgrade;\n": "",
            "        proxy_set_header Connection $connection_upgrade;\n": "",
        },
    )
    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / "nginx-plain.conf").write_text(plain)
    uwsgi = IniUwsgi(tmp_path, "tests.apps.proxied:app")
    proxy = Nginx(
        tmp_path, "nginx-plain.conf", upstream_port=uwsgi.port, certificate=certificate,
        deploy=tmp_path / "deploy",
    )  # fmt: skip
    running = Deployment("nginx-plain", uwsgi, proxy, certificate)
    try:
        running.started.append(uwsgi.start())
        running.started.append(proxy.start())
        with pytest.raises(InvalidStatus) as refused:
            running.connect("/ws/echo")
        assert refused.value.response.status_code == 400
        assert b"expected a WebSocket upgrade" in refused.value.response.body
    finally:
        running.stop()


# ---------------------------------------------------------------------------
# Idle connections: the server's pings keep them open through each hop

PROXY_TIMEOUT = "3s"


def _idle_pair(kind: str, directory: Path, certificate: Certificate) -> Tuple[Any, Any, List[Any]]:
    """(pinged, unpinged) servers behind ``kind`` with a 3-second idle timeout."""
    servers: List[Any] = []
    pair = []
    for ping in ("1", "null"):
        env = {"FLASK_WEBSOCKET_PING_INTERVAL": ping}
        if kind == "uwsgi-router":
            server = UwsgiServer(
                "tests.apps.proxied:app",
                mode="http",
                extra=["--http-timeout", PROXY_TIMEOUT.rstrip("s")],
                env=env,
                log_dir=directory,
            )
            servers.append(server)
            server.start()
        else:
            server = deploy(
                directory / f"ping-{ping}", kind, "tests.apps.proxied:app", certificate,
                env=env, timeout=PROXY_TIMEOUT,
            )  # fmt: skip
            servers.append(server)
        pair.append(server)
    return pair[0], pair[1], servers


def _open_idle(server: Any) -> ClientConnection:
    if isinstance(server, Deployment):
        return server.connect("/ws/echo")
    return sync_connect(
        server.url("/ws/echo"), open_timeout=RECV_TIMEOUT, ping_interval=None, proxy=None
    )


def _log_of(server: Any) -> str:
    return str(server.uwsgi.log() if isinstance(server, Deployment) else server.log())


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", [*PROXIES, "uwsgi-router"])
def test_server_pings_keep_idle_connections_open_through_the_proxy(
    kind: str, tmp_path: Path, certificate: Certificate
) -> None:
    pinged, unpinged, servers = _idle_pair(kind, tmp_path, certificate)
    try:
        with _open_idle(pinged) as kept, _open_idle(unpinged) as cut:
            opened = time.monotonic()
            # Nobody sends a message. Without pings the proxy cuts the
            # connection after its idle timeout, without a close frame.
            with pytest.raises(ConnectionClosedError) as info:
                cut.recv(timeout=60)
            assert info.value.rcvd is None
            assert cut.close_code == 1006
            # With pings every second, the other one outlives three timeouts.
            time.sleep(max(0.0, opened + 10 - time.monotonic()))
            kept.send("still here")
            assert kept.recv(timeout=RECV_TIMEOUT) == "still here"
        assert "WEBSOCKET_PING_INTERVAL is None: the server sends no pings" in _log_of(unpinged)
        assert "WEBSOCKET_PING_INTERVAL is" not in _log_of(pinged)
    finally:
        for server in servers:
            server.stop()


def test_no_pings_warning_at_start(caplog: pytest.LogCaptureFixture) -> None:
    from flask_websocket import WebSocket

    for interval, warned in [(None, True), (0, True), (25.0, False), (1, False)]:
        app = Flask(f"pings_{interval}")
        app.config["WEBSOCKET_PING_INTERVAL"] = interval
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=app.logger.name):
            WebSocket(app)
        messages = [r.getMessage() for r in caplog.records if r.name == app.logger.name]
        assert bool(messages) == warned, (interval, messages)
        if warned:
            assert f"WEBSOCKET_PING_INTERVAL is {interval!r}" in messages[0]
            assert "proxy_read_timeout" in messages[0]
            assert "timeout tunnel" in messages[0]
            assert "--http-timeout" in messages[0]


def test_no_pings_warning_is_the_one_the_docs_show() -> None:
    from flask_websocket.extension import _NO_PINGS

    page = " ".join((REPO_ROOT / "docs" / "deployment.rst").read_text().split())
    assert " ".join((_NO_PINGS % (None,)).split()) in page


# ---------------------------------------------------------------------------
# The chat example in Chromium, over wss:// through each proxy


@pytest.fixture
def chat_hub() -> Iterator[Dict[str, str]]:
    """A hub of the test's own for the chat: its rooms' history outlives deployments."""
    from tests.private_hub import private_hub

    with private_hub("deploy-chat") as env:
        yield env


@pytest.mark.browser
@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", PROXIES)
def test_chat_in_chromium_over_wss(
    kind: str, tmp_path: Path, certificate: Certificate, chat_hub: Dict[str, str]
) -> None:
    from playwright.sync_api import expect, sync_playwright

    from tests.browser import CHROMIUM_ARGS, find_chromium
    from tests.test_chat_browser import WAIT_MS, open_chat

    executable = find_chromium()
    if executable is None:
        message = "chromium is not installed: apt-get install chromium (scripts/bootstrap.sh)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    # Only the public origin may connect: the browser's Origin must be it.
    running = deploy(
        tmp_path, kind, "examples.chat:app", certificate,
        env={"FLASK_SECRET_KEY": "test-only", **chat_hub}, allow_no_origin=False,
    )  # fmt: skip
    try:
        expect.set_options(timeout=WAIT_MS)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=executable,
                headless=True,
                args=[*CHROMIUM_ARGS, "--ignore-certificate-errors"],
                timeout=60_000,
            )
            try:
                alice = open_chat(browser, running, "alice", "lobby")  # type: ignore[arg-type]
                bob = open_chat(browser, running, "bob", "lobby")  # type: ignore[arg-type]
                assert alice.page.url.startswith("https://")
                expect(alice.members()).to_have_text(["alice (you)", "bob"])
                expect(bob.members()).to_have_text(["alice", "bob (you)"])
                alice.say("Hello bob, over wss")
                expect(bob.messages("Hello bob, over wss").locator(".from")).to_have_text("alice")
                bob.say("Hi alice")
                expect(alice.messages("Hi alice").locator(".from")).to_have_text("bob")
                bob.page.close()
                expect(alice.members()).to_have_text(["alice (you)"])
                expect(alice.page.locator("#status")).to_have_text("connected")
                for chat in (alice, bob):
                    chat.context.close()
                    assert chat.problems == [], f"{chat.nick}'s page: {chat.problems}"
            finally:
                browser.close()
        if kind.startswith("nginx"):
            # Pages over HTTP/2, WebSocket handshakes over HTTP/1.1 (101).
            access = (running.proxy.directory / "access.log").read_text()
            assert re.search(r'"GET /\?room=lobby HTTP/2\.0" 200', access), access
            assert re.search(r'"GET /ws/lobby\?nick=alice HTTP/1\.1" 101', access), access
    finally:
        running.stop()
    assert running.problems() == [], running.uwsgi.log() + running.proxy.log()


# ---------------------------------------------------------------------------
# The systemd unit and the Dockerfile


def _unit() -> Dict[str, Dict[str, str]]:
    sections: Dict[str, Dict[str, str]] = {}
    current: Dict[str, str] = {}
    for raw in (DEPLOY / "flask-websocket.service").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            current[key] = value
    return sections


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    require("systemd-analyze")
    text = render(
        (DEPLOY / "flask-websocket.service").read_text(),
        {
            "ExecStart=/srv/flask-websocket/.venv/bin/uwsgi": f"ExecStart={UWSGI}",
            "WorkingDirectory=/srv/flask-websocket": f"WorkingDirectory={REPO_ROOT}",
        },
    )
    unit = tmp_path / "flask-websocket.service"
    unit.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""  # no unknown keys, no bad values


def test_systemd_unit_runs_the_ini_and_uwsgi_notifies_readiness(tmp_path: Path) -> None:
    service = _unit()["Service"]
    command = shlex.split(service["ExecStart"])
    assert command[0].endswith("/uwsgi")
    assert command[1:] == ["--ini", "deploy/uwsgi.ini"]
    assert service["Type"] == "notify"
    assert service["KillSignal"] == "SIGTERM"
    ini = read_ini(DEPLOY / "uwsgi.ini")
    assert ini["die-on-term"] == "true"  # SIGTERM stops instead of reloading
    assert int(service["LimitNOFILE"]) > 2 * int(ini["gevent"])

    # uWSGI started from the ini, as the unit does, with systemd's notify socket.
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(1.0)
    uwsgi = IniUwsgi(tmp_path, "tests.apps.proxied:app", env={"NOTIFY_SOCKET": str(notify_path)})
    try:
        uwsgi.start()
        received: List[bytes] = []

        def ready() -> bool:
            with contextlib.suppress(socket.timeout):
                received.append(notify.recv(4096))
            return any(b"READY=1" in datagram for datagram in received)

        assert poll_until(ready, 30), received
        assert uwsgi.process is not None
        uwsgi.process.send_signal(signal.SIGTERM)
        assert uwsgi.process.wait(30) == 0
        assert "goodbye to uWSGI" in uwsgi.log()
    finally:
        uwsgi.stop()
        notify.close()


#: Dockerfile instructions (the reference's list).
DOCKER_INSTRUCTIONS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK",
    "LABEL", "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
}  # fmt: skip


def _dockerfile() -> List[Tuple[str, str]]:
    """(instruction, arguments) of deploy/Dockerfile, continuation lines joined."""
    instructions: List[Tuple[str, str]] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, arguments = full.partition(" ")
        instructions.append((keyword, arguments.strip()))
    assert pending == "", "the Dockerfile ends inside a continued line"
    return instructions


def _flags(arguments: List[str]) -> Dict[str, str]:
    """``--name value`` / ``--name`` pairs of a command line, as ini options."""
    options: Dict[str, str] = {}
    index = 0
    while index < len(arguments):
        name = arguments[index]
        assert name.startswith("--"), f"not an option: {name!r}"
        following = arguments[index + 1] if index + 1 < len(arguments) else None
        if following is None or following.startswith("--"):
            options[name[2:]] = "true"
            index += 1
        else:
            options[name[2:]] = following
            index += 2
    return options


def test_dockerfile_syntax_and_uwsgi_options_match_the_ini() -> None:
    instructions = _dockerfile()
    for keyword, arguments in instructions:
        assert keyword in DOCKER_INSTRUCTIONS, f"unknown instruction {keyword!r}"
        assert keyword == keyword.upper()
        assert arguments, f"{keyword} without arguments"
    assert instructions[0][0] == "FROM"
    stages = [arguments.split() for keyword, arguments in instructions if keyword == "FROM"]
    names = {stage[2] for stage in stages if len(stage) == 3 and stage[1].upper() == "AS"}
    for keyword, arguments in instructions:
        if keyword == "COPY" and arguments.startswith("--from="):
            assert arguments.split()[0].split("=", 1)[1] in names, arguments
    commands = [arguments for keyword, arguments in instructions if keyword == "CMD"]
    assert len(commands) == 1
    command = json.loads(commands[0])  # the exec form: a JSON array of strings
    assert isinstance(command, list) and all(isinstance(part, str) for part in command)
    assert command[0] == "uwsgi"

    in_docker = _flags(command[1:])
    in_ini = read_ini(DEPLOY / "uwsgi.ini")
    assert set(in_docker) == set(in_ini)
    for name, value in in_ini.items():
        if name == "http-socket":  # the container listens on its own interfaces
            assert in_docker[name] == "0.0.0.0:" + value.rsplit(":", 1)[1]
        else:
            assert in_docker[name] == value, name
    # The app the image copies is the one it runs.
    module = in_docker["module"].split(":")[0]
    copied = [arguments.split() for keyword, arguments in instructions if keyword == "COPY"]
    assert any(module.split(".")[0] == Path(parts[0]).name for parts in copied), copied
