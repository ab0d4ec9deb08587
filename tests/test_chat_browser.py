"""The chat example in a real browser: headless Chromium (Debian's) on real uWSGI.

Two uWSGI workers serve the chat; alice and bob, each in a browser context
of their own, are placed on different workers (so every broadcast and
presence answer between them crosses the local hub), and carol sits in
another room. Needs the ``chromium`` package (``scripts/bootstrap.sh``
installs it); without it the test is skipped, except under CI, where it
fails.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Locator,
    Page,
    expect,
    sync_playwright,
)

from tests.conftest import StartServer
from tests.uwsgi_server import UwsgiServer

pytestmark = [pytest.mark.browser, pytest.mark.uwsgi]

#: Flags for a headless Chromium that talks to nothing but 127.0.0.1.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Milliseconds a page action or expectation may wait for its condition.
WAIT_MS = 10_000
#: How many times bob reconnects to land on another worker than alice.
WORKER_ATTEMPTS = 20


def find_chromium() -> Optional[str]:
    """Debian's chromium, found at run time (Playwright's own build cannot be downloaded)."""
    found = shutil.which("chromium")
    if found is None and os.access("/usr/bin/chromium", os.X_OK):
        found = "/usr/bin/chromium"
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the module (each page gets a context of its own).

    ``launch`` gives the browser a fresh, temporary user-data directory.
    """
    executable = find_chromium()
    if executable is None:
        message = "chromium is not installed: apt-get install chromium (scripts/bootstrap.sh)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS, timeout=60_000
        )
        try:
            yield browser
        finally:
            browser.close()


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


def open_chat(browser: Browser, server: UwsgiServer, nick: str, room: str) -> ChatPage:
    """A new browser context on the chat page of ``room``, joined as ``nick``."""
    context = browser.new_context(viewport={"width": 1000, "height": 640})
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    chat = ChatPage(context, page, nick)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":  # CSP violations, failed loads, script errors
            chat.problems.append(f"console error: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: chat.problems.append(f"page error: {error}"))
    page.goto(server.http_url(f"/?room={room}"))
    expect(page.locator("#room")).to_have_value(room)
    chat.join()
    expect(page.locator("#room-title")).to_have_text(f"#{room}")
    return chat


def test_chat_between_two_browsers(
    start_uwsgi: StartServer, browser: Browser, tmp_path: Path
) -> None:
    expect.set_options(timeout=WAIT_MS)
    server = start_uwsgi(
        "examples.chat:app", processes=2, gevent=100, extra=["--gevent-early-monkey-patch"]
    )
    alice = open_chat(browser, server, "alice", "lobby")
    bob = open_chat(browser, server, "bob", "lobby")
    # Put bob on the other worker, so that what follows crosses the local hub.
    for _ in range(WORKER_ATTEMPTS):
        if bob.worker != alice.worker:
            break
        bob.rejoin()
    assert bob.worker != alice.worker, (
        f"bob stayed on alice's worker after {WORKER_ATTEMPTS} reconnections"
    )
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
