"""The chat example in a real browser: headless Chromium (Debian's) on real uWSGI.

Two uWSGI workers serve the chat; alice and bob, each in a browser context
of their own, are placed on different workers (so every broadcast and
presence answer between them crosses the local hub), and carol sits in
another room. Then alice loses her connection three ways (the network cut
for 5 s, a graceful reload of the server, her worker killed) while bob
talks: her page shows "reconnecting…", then everything bob said, once, in
order, without being reloaded. Needs the ``chromium`` package
(``scripts/bootstrap.sh`` installs it); without it the tests are skipped,
except under CI, where they fail.
"""

from __future__ import annotations

import os
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Protocol

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Locator,
    Page,
    expect,
)

from tests.browser import launch_chromium
from tests.conftest import StartServer
from tests.private_hub import private_hub
from tests.relay import TcpRelay, worker_holding
from tests.uwsgi_server import UwsgiServer, poll_until

pytestmark = [pytest.mark.browser, pytest.mark.uwsgi]

#: Milliseconds a page action or expectation may wait for its condition.
WAIT_MS = 10_000
#: Milliseconds a page that lost its connection may take to show all it
#: missed: its reconnections back off (up to 15 s apart) while it is away.
RECOVERY_MS = 60_000
#: How many times bob reconnects to land on another worker than alice.
WORKER_ATTEMPTS = 20
#: Messages sent while the first page is away.
AWAY = 20


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the module (each page gets a context of its own)."""
    with launch_chromium() as browser:
        yield browser


@pytest.fixture
def hub_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Dict[str, str]]:
    """The chat's hub and history, private to the test: local (by default) or redis."""
    if getattr(request, "param", "local") == "redis":
        from tests.redis_server import RedisServer, require_redis_server

        require_redis_server()
        with RedisServer(log_dir=tmp_path) as redis:
            yield {"FLASK_WEBSOCKET_HUB_URL": redis.url}
        return
    with private_hub("chat") as env:  # the local hub's history database, removed after
        yield env


@dataclass
class ChatPage:
    """One person's browser context and page, joined to a room."""

    context: BrowserContext
    page: Page
    nick: str
    problems: List[str] = field(default_factory=list)

    @property
    def connection_id(self) -> str:
        value = self.page.locator("#chat").get_attribute("data-connection-id")
        assert value, "the page has no connection id"
        return value

    @property
    def worker(self) -> str:
        """The node (worker process) that holds this page's connection: ``<node>.<n>``."""
        return self.connection_id.split(".")[0]

    def join(self, room: Optional[str] = None) -> None:
        """Fill the join form and wait for the server's welcome."""
        page = self.page
        previous = page.locator("#chat").get_attribute("data-connection-id")
        page.fill("#nick", self.nick)
        if room is not None:
            page.fill("#room", room)
        page.click("#join-form button[type=submit]")
        page.wait_for_function(
            """previous => {
                const chat = document.getElementById("chat");
                return !chat.hidden && chat.dataset.connectionId
                    && chat.dataset.connectionId !== previous;
            }""",
            arg=previous,
        )

    def rejoin(self) -> None:
        """Leave the room with the Leave button, then join it again."""
        self.page.click("#leave")
        expect(self.page.locator("#join")).to_be_visible()
        self.join()

    def say(self, text: str) -> None:
        """Type ``text`` in the message box and press Enter."""
        self.page.fill("#text", text)
        self.page.press("#text", "Enter")

    def members(self) -> Locator:
        """The entries of the member list."""
        return self.page.locator("#members li")

    def messages(self, text: str) -> Locator:
        """The chat messages (not notices) containing ``text``."""
        return self.page.locator("#messages li.message").filter(has_text=text)


class Site(Protocol):
    """Where the chat is: a server, the relay in front of it, a proxy."""

    def http_url(self, path: str = "/") -> str:
        """The URL of ``path`` there."""


def open_chat(browser: Browser, site: Site, nick: str, room: str) -> ChatPage:
    """A new browser context on the chat page of ``room`` at ``site``, joined as ``nick``."""
    context = browser.new_context(viewport={"width": 1000, "height": 640})
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    chat = ChatPage(context, page, nick)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":  # CSP violations, failed loads, script errors
            chat.problems.append(f"console error: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: chat.problems.append(f"page error: {error}"))
    page.goto(site.http_url(f"/?room={room}"))
    expect(page.locator("#room")).to_have_value(room)
    chat.join()
    expect(page.locator("#room-title")).to_have_text(f"#{room}")
    return chat


def start_chat(start_uwsgi: StartServer, hub_env: Dict[str, str]) -> UwsgiServer:
    """The chat on uWSGI: two workers, a local hub (and history) of the test's own."""
    return start_uwsgi(
        "examples.chat:app", processes=2, gevent=100,
        extra=["--gevent-early-monkey-patch"], env=hub_env,
    )  # fmt: skip


def on_other_workers(alice: ChatPage, bob: ChatPage) -> None:
    """Put bob on the other worker than alice's (what they say then crosses the local hub)."""
    for _ in range(WORKER_ATTEMPTS):
        if bob.worker != alice.worker:
            break
        bob.rejoin()
    assert bob.worker != alice.worker, (
        f"bob stayed on alice's worker after {WORKER_ATTEMPTS} reconnections"
    )


def test_chat_between_two_browsers(
    hub_env: Dict[str, str], start_uwsgi: StartServer, browser: Browser, tmp_path: Path
) -> None:
    expect.set_options(timeout=WAIT_MS)
    server = start_chat(start_uwsgi, hub_env)
    alice = open_chat(browser, server, "alice", "lobby")
    bob = open_chat(browser, server, "bob", "lobby")
    on_other_workers(alice, bob)
    carol = open_chat(browser, server, "carol", "kitchen")

    # Presence: each sees the other, whoever joined first; carol's room is hers alone.
    expect(alice.members()).to_have_text(["alice (you)", "bob"])
    expect(bob.members()).to_have_text(["alice", "bob (you)"])
    expect(carol.members()).to_have_text(["carol (you)"])
    expect(alice.page.locator("#member-count")).to_have_text("2")
    expect(alice.page.locator("#messages li.notice-join").last).to_have_text(
        re.compile(r"bob joined\.$")
    )

    # Messages both ways.
    alice.say("Hello bob")
    expect(bob.messages("Hello bob")).to_have_count(1)
    expect(bob.messages("Hello bob").locator(".from")).to_have_text("alice")
    expect(alice.messages("Hello bob")).to_have_class(re.compile(r"\bmine\b"))
    bob.say("Hi alice, how are you?")
    expect(alice.messages("Hi alice, how are you?").locator(".from")).to_have_text("bob")
    expect(alice.page.locator("#text")).to_have_value("")  # the input was cleared

    # HTML in a message is text, never markup.
    hostile = '<img src=x onerror="window.pwned=1"><b>bold</b> & <script>window.pwned=2</script>'
    alice.say(hostile)
    shown = bob.messages("bold")
    expect(shown.locator(".text")).to_have_text(hostile)
    expect(shown.locator("img, b, script")).to_have_count(0)
    expect(alice.messages("bold").locator("img, b, script")).to_have_count(0)
    assert bob.page.evaluate("window.pwned") is None
    assert alice.page.evaluate("window.pwned") is None

    # Dave, who comes later, is shown the conversation so far, in order.
    dave = open_chat(browser, server, "dave", "lobby")
    expect(dave.page.locator("#messages li.message .text")).to_have_text(
        ["Hello bob", "Hi alice, how are you?", hostile]
    )
    expect(dave.page.locator("#messages li.notice-join")).to_have_count(1)  # his own: no old ones
    dave.context.close()
    assert dave.problems == [], dave.problems

    # Carol, in another room, saw none of it: her own message is her only one.
    carol.say("anyone in the kitchen?")
    expect(carol.messages("anyone in the kitchen?")).to_have_count(1)
    expect(carol.page.locator("#messages li.message")).to_have_count(1)
    expect(carol.page.locator("#messages")).not_to_contain_text("bob")

    screenshot = tmp_path / "chat-alice.png"
    alice.page.screenshot(path=str(screenshot))
    assert screenshot.stat().st_size > 10_000  # a real rendering, not a blank page

    # Bob closes his page: alice sees him leave.
    bob.page.close()
    expect(alice.page.locator("#messages li.notice-leave").last).to_have_text(
        re.compile(r"bob left\.$")
    )
    expect(alice.members()).to_have_text(["alice (you)"])
    expect(alice.page.locator("#member-count")).to_have_text("1")
    expect(alice.page.locator("#status")).to_have_text("connected")

    for chat in (alice, bob, carol):
        chat.context.close()
        assert chat.problems == [], f"{chat.nick}'s page: {chat.problems}"
    server.stop()
    assert server.crash_lines() == [], server.log()


def test_chromium_negotiates_compression_with_the_chat(
    hub_env: Dict[str, str], start_uwsgi: StartServer, browser: Browser
) -> None:
    """With ``WEBSOCKET_COMPRESSION`` on, Chromium's offer is accepted and the chat works."""
    expect.set_options(timeout=WAIT_MS)
    server = start_chat(
        start_uwsgi, {**hub_env, "FLASK_WEBSOCKET_COMPRESSION": "permessage-deflate"}
    )
    handshakes: List[Dict[str, str]] = []
    alice = open_chat(browser, server, "alice", "deflate")
    # Bob's page, its WebSocket handshake's response headers seen through CDP.
    bob_context = browser.new_context(viewport={"width": 1000, "height": 640})
    bob_context.set_default_timeout(WAIT_MS)
    bob_page = bob_context.new_page()
    cdp = bob_context.new_cdp_session(bob_page)
    cdp.send("Network.enable")
    cdp.on(
        "Network.webSocketHandshakeResponseReceived",
        lambda event: handshakes.append(
            {name.lower(): value for name, value in event["response"]["headers"].items()}
        ),
    )
    bob = ChatPage(bob_context, bob_page, "bob")
    bob_page.on("pageerror", lambda error: bob.problems.append(f"page error: {error}"))
    bob_page.goto(server.http_url("/?room=deflate"))
    bob.join()
    assert poll_until(lambda: bool(handshakes), 10), "no WebSocket handshake seen"
    extensions = handshakes[-1].get("sec-websocket-extensions", "")
    assert extensions.startswith("permessage-deflate"), handshakes[-1]
    assert "server_no_context_takeover" in extensions, extensions

    # Short messages (sent as they are) and long ones (compressed), both ways.
    long_text = "A long message, long enough to be compressed: " + "la " * 200
    alice.say("hi bob")
    expect(bob.messages("hi bob")).to_have_count(1)
    alice.say(long_text)
    expect(bob.messages("A long message").locator(".text")).to_have_text(long_text.strip())
    bob.say(long_text + "back")
    expect(alice.messages("la back").locator(".from")).to_have_text("bob")
    # A page that joins later gets the history, compressed.
    dave = open_chat(browser, server, "dave", "deflate")
    expect(dave.page.locator("#messages li.message")).to_have_count(3)
    for chat in (alice, bob, dave):
        chat.context.close()
        assert chat.problems == [], f"{chat.nick}'s page: {chat.problems}"
    server.stop()
    assert server.crash_lines() == [], server.log()


# -- a page that loses its connection -----------------------------------------------
#
# Alice's page goes through a relay the test controls (tests/relay.py), bob's
# straight to uWSGI, each on another worker. Alice loses her connection (the
# network is cut; the server reloads; her worker is killed), the relay keeps
# her away while bob says AWAY things, then lets her back: without a reload
# of her page, she shows each of them once, in order, after what she had.


_FAILED_ATTEMPT = re.compile(r"^console error: WebSocket connection to '.*' failed: ")


@dataclass
class Away:
    """Alice behind the relay, bob straight on uWSGI, in one room."""

    server: UwsgiServer
    relay: TcpRelay
    alice: ChatPage
    bob: ChatPage
    room: str

    def texts(self, chat: ChatPage) -> Locator:
        return chat.page.locator("#messages li.message .text")

    def status(self, chat: ChatPage) -> Locator:
        return chat.page.locator("#status")

    def mark_loaded(self) -> None:
        """Leave a mark in alice's page: a reload would lose it."""
        self.alice.page.evaluate("window.loadedOnce = 'the page was not reloaded'")

    def assert_not_reloaded(self) -> None:
        page = self.alice.page
        assert page.evaluate("window.loadedOnce") == "the page was not reloaded"
        assert page.evaluate(
            "performance.getEntriesByType('navigation').map(n => n.type)"
        ) == ["navigate"]

    def bob_says_while_alice_is_away(self) -> List[str]:
        """Bob says AWAY things (seen on his page); alice stays away (the relay refuses)."""
        expect(self.status(self.alice)).to_have_text("reconnecting…")
        expect(self.status(self.bob)).to_have_text("connected")
        said = [f"while away {i}" for i in range(AWAY)]
        for text in said:
            self.bob.say(text)
        expect(self.texts(self.bob)).to_have_text(["before", *said])
        expect(self.status(self.alice)).to_have_text("reconnecting…")  # still away
        return said

    def alice_comes_back(self, said: List[str]) -> None:
        self.relay.refuse(0)
        expect(self.texts(self.alice)).to_have_text(["before", *said], timeout=RECOVERY_MS)
        expect(self.status(self.alice)).to_have_text("connected")
        self.assert_not_reloaded()
        # And she is a member again: what she says reaches bob, once.
        self.alice.say("back")
        expect(self.texts(self.bob)).to_have_text(["before", *said, "back"])
        expect(self.texts(self.alice)).to_have_text(["before", *said, "back"])
        for chat in (self.alice, self.bob):
            # Chromium logs each connection attempt that failed while away.
            problems = [p for p in chat.problems if not _FAILED_ATTEMPT.search(p)]
            assert problems == [], f"{chat.nick}'s page: {problems}"


@pytest.fixture
def away(
    hub_env: Dict[str, str], start_uwsgi: StartServer, browser: Browser
) -> Iterator[Away]:
    expect.set_options(timeout=WAIT_MS)
    server = start_chat(start_uwsgi, hub_env)
    room = "lobby"
    with TcpRelay(server.port) as relay:
        alice = open_chat(browser, relay, "alice", room)  # through the relay
        bob = open_chat(browser, server, "bob", room)
        on_other_workers(alice, bob)
        scene = Away(server, relay, alice, bob, room)
        bob.say("before")
        expect(scene.texts(alice)).to_have_text(["before"])
        scene.mark_loaded()
        yield scene
        for chat in (alice, bob):
            chat.context.close()


@pytest.mark.parametrize("hub_env", ["local", "redis"], indirect=True)
def test_a_page_cut_off_the_network_for_5_s_shows_every_message_once(away: Away) -> None:
    assert away.relay.cut(refuse_for=5) >= 1  # RST to both ends; refused for 5 s
    said = away.bob_says_while_alice_is_away()
    # The client saw the connection fail, not a close from the server.
    assert away.status(away.alice).get_attribute("data-close-code") == "1006"
    away.alice_comes_back(said)
    away.server.stop()
    assert away.server.crash_lines() == [], away.server.log()


def test_a_page_shows_every_message_once_across_a_reload_of_the_server(away: Away) -> None:
    server = away.server
    old = server.worker_pids()
    away.relay.refuse(120)  # alice cannot come back until bob has spoken
    bob_before = away.bob.connection_id
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGHUP)  # a graceful reload: every worker replaced
    expect(away.status(away.alice)).to_have_text("reconnecting…")
    # Bob's page came back by itself, on a new worker.
    away.bob.page.wait_for_function(
        "before => document.getElementById('chat').dataset.connectionId !== before",
        arg=bob_before, timeout=RECOVERY_MS,
    )  # fmt: skip
    assert poll_until(lambda: not set(server.worker_pids()) & set(old), 30)
    said = away.bob_says_while_alice_is_away()
    for chat in (away.alice, away.bob):  # both were told the server restarts
        assert away.status(chat).get_attribute("data-close-code") == "1012"
    away.alice_comes_back(said)
    server.stop()
    assert server.crash_lines() == [], server.log()


def test_a_page_shows_every_message_once_after_its_worker_is_killed(away: Away) -> None:
    server = away.server
    (link,) = away.relay.websockets()  # alice's WebSocket
    victim = worker_holding(server.worker_pids(), server.port, link.upstream_port)
    assert victim is not None, "no worker holds alice's connection"
    bob_before = away.bob.connection_id
    away.relay.refuse(120)
    os.kill(victim, signal.SIGKILL)
    assert poll_until(lambda: victim not in server.worker_pids(), 30)
    said = away.bob_says_while_alice_is_away()
    assert away.bob.connection_id == bob_before  # bob's worker lives on: he never left
    assert away.status(away.alice).get_attribute("data-close-code") == "1006"
    away.alice_comes_back(said)
    server.stop()
    unexpected = [line for line in server.crash_lines() if str(victim) not in line]
    assert unexpected == [], server.log()
