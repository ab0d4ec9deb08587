"""The JavaScript client (``/_websocket/client.js``) in headless Chromium, against real uWSGI.

The page is loaded through a TCP relay the test controls (tests/relay.py),
which cuts the network for real: Chromium keeps a WebSocket open through
Playwright's ``set_offline``. Every event of the client is recorded in the
page (``window.events``) and read back here.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List

import pytest
from playwright.sync_api import Browser, Page

from tests.browser import launch_chromium
from tests.conftest import StartServer
from tests.private_hub import private_hub
from tests.relay import TcpRelay
from tests.uwsgi_server import UwsgiServer

pytestmark = [pytest.mark.browser, pytest.mark.uwsgi]

#: The server's ping (and heartbeat) interval, s: a silent connection is
#: taken for dead after 2.5 of them.
PING_INTERVAL = 2
#: Messages a room's history keeps.
HISTORY_SIZE = 8
#: Milliseconds a wait for the page may last (reconnections back off).
WAIT_MS = 30_000

#: Records the client's events in the page; ``openClient(path, options)`` starts one.
HARNESS = """() => {
window.events = [];
window.openClient = (path, options) => {
  const socket = new FlaskWebSocket(path, options);
  window.socket = socket;
  const record = (type, fields) => window.events.push(Object.assign({ type }, fields));
  socket.onmessage = (data, info) => record("message", Object.assign({
    data: typeof data === "string" ? data : "bytes:" + new TextDecoder().decode(data),
  }, info));
  socket.onstatechange = (state, detail) => record("state", Object.assign({ state }, detail));
  socket.onjoined = (room, info) => record("joined", Object.assign({ room }, info));
  socket.onrecoveryincomplete = (room, info) => record("incomplete", Object.assign({ room }, info));
  socket.onclose = (detail) => record("close", detail);
};
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launch_chromium() as browser:
        yield browser


@dataclass
class Served:
    server: UwsgiServer
    relay: TcpRelay

    def say(self, room: str, text: str) -> None:
        """Broadcast ``text`` to the room from a plain view, straight to uWSGI (not the relay)."""
        query = urllib.parse.urlencode({"text": text})
        url = self.server.http_url(f"/say/{room}?{query}")
        with urllib.request.urlopen(url, timeout=20) as response:
            assert response.read() == b"ok"


@pytest.fixture
def served(start_uwsgi: StartServer) -> Iterator[Served]:
    """The client's test app on uWSGI (one worker), and a relay in front of it."""
    env = {
        "FWS_WEBSOCKET_PING_INTERVAL": str(PING_INTERVAL),
        "FWS_HISTORY_SIZE": str(HISTORY_SIZE),
    }
    with private_hub("client") as hub:
        hub_options = json.loads(hub["FLASK_WEBSOCKET_HUB_OPTIONS"])
        env["FWS_WEBSOCKET_HUB_OPTIONS"] = json.dumps(hub_options)
        server = start_uwsgi(
            "tests.apps.client:app", processes=1, gevent=100,
            extra=["--gevent-early-monkey-patch"], env=env,
        )  # fmt: skip
        with TcpRelay(server.port) as relay:
            yield Served(server, relay)
        server.stop()
        assert server.crash_lines() == [], server.log()


@pytest.fixture
def page(browser: Browser, served: Served) -> Iterator[Page]:
    """A page of the app, loaded through the relay, with the harness installed."""
    context = browser.new_context()
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    problems: List[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(served.relay.http_url("/"))
    page.evaluate(HARNESS)
    yield page
    context.close()
    assert problems == []


def events(page: Page, kind: str) -> List[Dict[str, Any]]:
    found: List[Dict[str, Any]] = page.evaluate(
        "kind => window.events.filter(e => e.type === kind)", kind
    )
    return found


def wait_for(page: Page, expression: str, arg: Any = None) -> None:
    """Wait until the JavaScript ``expression`` (a function of ``arg``) is true."""
    page.wait_for_function(expression, arg=arg, timeout=WAIT_MS)


def wait_for_count(page: Page, kind: str, count: int) -> None:
    wait_for(
        page,
        "([kind, count]) => window.events.filter(e => e.type === kind).length >= count",
        [kind, count],
    )


def wait_for_state(page: Page, state: str) -> None:
    wait_for(page, "state => window.socket.state === state", state)


def texts(page: Page) -> List[str]:
    return [event["data"] for event in events(page, "message")]


def room_name() -> str:
    return f"r{time.monotonic_ns()}"


def test_messages_arrive_with_their_positions(page: Page) -> None:
    room = room_name()
    page.evaluate("path => openClient(path)", f"/ws/{room}")
    wait_for_count(page, "joined", 1)
    assert page.evaluate("window.socket.state") == "open"
    assert page.evaluate("window.socket.resumable") is True
    (joined,) = events(page, "joined")
    assert (joined["room"], joined["resumed"], joined["recovered"]) == (f"h:{room}", False, True)
    for command in ("plain:just for you", "bin:some bytes", "say:one", "say:two"):
        assert page.evaluate("command => window.socket.send(command)", command) is True
    wait_for_count(page, "message", 4)
    plain, binary, one, two = events(page, "message")
    assert (plain["data"], plain["room"]) == ("just for you", None)
    assert (binary["data"], binary["room"]) == ("bytes:some bytes", None)
    assert (one["data"], one["room"], one["epoch"]) == ("one", f"h:{room}", joined["epoch"])
    assert (one["offset"], two["offset"]) == (joined["offset"] + 1, joined["offset"] + 2)
    assert page.evaluate("window.socket.positions") == {
        f"h:{room}": {"epoch": joined["epoch"], "offset": two["offset"]}
    }
    # A second client that starts from a position (a page rendered with the
    # history would give its last one) gets what follows it, once.
    page.evaluate(
        "([path, positions]) => { window.socket.close(); window.events = []; "
        "openClient(path, { positions }); }",
        [f"/ws/{room}", {f"h:{room}": {"epoch": joined["epoch"], "offset": one["offset"]}}],
    )
    wait_for_count(page, "message", 1)
    (again,) = events(page, "joined")
    assert (again["resumed"], again["recovered"]) == (True, True)
    assert [(m["data"], m["offset"]) for m in events(page, "message")] == [("two", two["offset"])]


def test_after_a_cut_it_resumes_and_misses_nothing(page: Page, served: Served) -> None:
    room = room_name()
    page.evaluate("path => openClient(path)", f"/ws/{room}")
    wait_for_count(page, "joined", 1)
    page.evaluate("window.socket.send('say:before')")
    wait_for_count(page, "message", 1)
    epoch = events(page, "joined")[0]["epoch"]
    (link,) = served.relay.websockets()
    assert "fws_since" not in link.request_line  # a first connection has nothing to resume

    assert served.relay.cut(refuse_for=3) >= 1
    wait_for_state(page, "reconnecting")
    assert page.evaluate("window.socket.send('say:lost')") is False  # not connected: refused
    for i in range(5):
        served.say(room, f"away {i}")
    wait_for_count(page, "joined", 2)
    wait_for_count(page, "message", 6)

    assert texts(page) == ["before"] + [f"away {i}" for i in range(5)]
    offsets = [event["offset"] for event in events(page, "message")]
    assert offsets == list(range(offsets[0], offsets[0] + 6))
    back = events(page, "joined")[1]
    assert (back["resumed"], back["recovered"]) == (True, True)
    assert events(page, "incomplete") == []
    (link,) = served.relay.websockets()  # the new connection gave its position back
    since = urllib.parse.quote(f"h:{room}:{epoch}:{offsets[0]}", safe="")
    assert f"fws_since={since}" in link.request_line, link.request_line
    # The drop, then one scheduled reconnection per failed attempt, with a
    # backoff that grows and is capped, each delay drawn below its ceiling.
    states = events(page, "state")
    assert states[0]["state"] == "open" and states[-1]["state"] == "open", json.dumps(states)
    retries = [s for s in states if s["state"] == "reconnecting"]
    assert retries[0]["code"] == 1006
    assert [s["attempt"] for s in retries] == list(range(1, len(retries) + 1))
    for retry in retries:
        assert 0 <= retry["delay"] <= min(15000, 500 * 2 ** (retry["attempt"] - 1))


def test_a_policy_violation_closes_for_good(page: Page, served: Served) -> None:
    page.evaluate("path => openClient(path)", f"/ws/{room_name()}")
    wait_for_state(page, "open")
    page.evaluate("window.socket.send('close:1008')")
    wait_for_count(page, "close", 1)
    (closed,) = events(page, "close")
    assert (closed["code"], closed["reason"]) == (1008, "bye")
    accepted = served.relay.accepted
    # Longer than any first retry would wait (minDelay, 500 ms): nobody comes back.
    page.wait_for_timeout(1500)
    assert served.relay.accepted == accepted
    assert page.evaluate("window.socket.state") == "closed"
    assert [s["state"] for s in events(page, "state")] == ["open", "closed"]


def test_a_restarting_server_is_rejoined_at_once(page: Page) -> None:
    room = room_name()
    page.evaluate("path => openClient(path)", f"/ws/{room}")
    wait_for_count(page, "joined", 1)
    page.evaluate("window.socket.send('close:1012')")  # what a reload sends
    wait_for_count(page, "joined", 2)
    page.evaluate("window.socket.send('close:1011')")  # any other failure: the backoff
    wait_for_count(page, "joined", 3)
    retries = [s for s in events(page, "state") if s["state"] == "reconnecting"]
    assert [(s["code"], s["attempt"]) for s in retries] == [(1012, 0), (1011, 1)]
    assert retries[0]["delay"] <= 1000  # restartDelay: at once, spread over a second
    assert retries[1]["delay"] <= 500  # minDelay * 2^0
    assert all(e["resumed"] for e in events(page, "joined")[1:])


def test_a_silent_dead_connection_is_found_by_its_heartbeat(page: Page, served: Served) -> None:
    room = room_name()
    page.evaluate("path => openClient(path)", f"/ws/{room}")
    wait_for(page, "interval => window.socket.heartbeat === interval", PING_INTERVAL)
    assert len(served.relay.websockets()) == 1
    assert served.relay.blackhole() >= 1  # nothing passes; nothing is closed
    served.say(room, "into the void")  # never reaches the page on that connection
    wait_for_count(page, "joined", 2)  # a new connection, found without any close
    wait_for_count(page, "message", 1)
    retries = [s for s in events(page, "state") if s["state"] == "reconnecting"]
    assert [(s["code"], s["reason"]) for s in retries] == [(1006, "no heartbeat")]
    assert texts(page) == ["into the void"]  # resumed: given once, by the new connection
    assert events(page, "joined")[1]["recovered"] is True


def test_when_history_no_longer_reaches_back_the_page_is_told(page: Page, served: Served) -> None:
    room = room_name()
    page.evaluate("path => openClient(path)", f"/ws/{room}")
    wait_for_count(page, "joined", 1)
    page.evaluate("window.socket.send('say:seen')")
    wait_for_count(page, "message", 1)
    served.relay.cut(refuse_for=3)
    missed = HISTORY_SIZE + 4
    for i in range(missed):
        served.say(room, f"m{i}")
    wait_for_count(page, "joined", 2)
    wait_for_count(page, "message", 1 + HISTORY_SIZE)
    (incomplete,) = events(page, "incomplete")
    assert (incomplete["room"], incomplete["recovered"], incomplete["reason"]) == (
        f"h:{room}", False, "history",
    )  # fmt: skip
    # What history still holds, in order, once: the last HISTORY_SIZE.
    assert texts(page) == ["seen"] + [f"m{i}" for i in range(missed - HISTORY_SIZE, missed)]
