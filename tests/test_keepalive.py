"""Keepalive pings on the clocks connections share (unit tests: a fake backend and time).

The real thing, through uWSGI: tests/test_uwsgi_features.py; in process,
under gevent and threads: tests/test_connection.py.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, List, Optional, Tuple

import pytest

from flask_websocket import keepalive as keepalive_module
from flask_websocket.concurrency.base import Timer
from flask_websocket.connection import ConnectionOptions
from flask_websocket.keepalive import Keepalive


class _Now:
    def __init__(self) -> None:
        self.value = 1000.0

    def __call__(self) -> float:
        return self.value


class _FakeTimer(Timer):
    __slots__ = ()

    def cancel(self) -> None:
        raise AssertionError("a clock never cancels its timer")


class _FakeBackend:
    """Timers that fire when the test says so."""

    def __init__(self) -> None:
        self.timers: List[Tuple[float, Callable[[], None]]] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        self.timers.append((delay, callback))
        return _FakeTimer()

    def fire(self) -> float:
        """Run the one timer there is; its delay."""
        assert len(self.timers) == 1, self.timers
        delay, callback = self.timers.pop()
        callback()
        return delay


class _Peer:
    """A connection as a Keepalive sees it."""

    def __init__(self, name: str, log: List[Tuple[str, str]], fail: bool = False) -> None:
        self.name = name
        self.log = log
        self.fail = fail
        self.payload: Optional[bytes] = None

    def _send_keepalive_ping(self, payload: bytes) -> bool:
        if self.fail:
            raise RuntimeError("broken")
        self.payload = payload
        self.log.append(("ping", self.name))
        return True

    def _keepalive_timed_out(self) -> None:
        self.log.append(("timeout", self.name))


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> _Now:
    clock = _Now()
    monkeypatch.setattr(keepalive_module.time, "monotonic", clock)
    return clock


def _keepalive(peer: _Peer, backend: _FakeBackend, interval: float, timeout: float) -> Keepalive:
    options = ConnectionOptions(ping_interval=interval, ping_timeout=timeout)
    return Keepalive(peer, backend, options)  # type: ignore[arg-type]


def test_connections_share_one_timer_and_are_pinged_when_due(now: _Now) -> None:
    backend = _FakeBackend()
    log: List[Tuple[str, str]] = []
    peers = [_Peer(name, log) for name in "abc"]
    keepalives = []
    for peer in peers:
        keepalives.append(_keepalive(peer, backend, 25.0, 20.0))
        keepalives[-1].start()
        now.value += 1.0
    assert len(backend.timers) == 1  # one timer for the three of them
    now.value = 1025.0  # a is due (added at 1000), b and c not yet
    assert backend.fire() == 25.0
    assert log == [("ping", "a")]
    # Two timers now: the interval clock's for b (in 1 s), the timeout clock's for a's pong.
    assert sorted(delay for delay, _ in backend.timers) == [1.0, 20.0]
    now.value = 1026.0
    next_place = min(backend.timers, key=lambda timer: timer[0])
    backend.timers.remove(next_place)
    next_place[1]()
    assert log == [("ping", "a"), ("ping", "b")]


def test_a_pong_starts_the_next_interval_a_missing_one_times_out(now: _Now) -> None:
    backend = _FakeBackend()
    log: List[Tuple[str, str]] = []
    answering, silent = _Peer("answering", log), _Peer("silent", log)
    first = _keepalive(answering, backend, 10.0, 10.0)
    second = _keepalive(silent, backend, 10.0, 10.0)
    first.start()
    second.start()
    now.value += 10.0
    backend.fire()
    assert log == [("ping", "answering"), ("ping", "silent")]
    assert answering.payload is not None
    now.value += 4.0
    first.pong(b"not ours")  # unsolicited: ignored
    first.pong(answering.payload)  # the next ping in 10 s, not when the pong was due
    now.value += 6.0  # 10 s after the pings: the silent one times out, the stale place is skipped
    backend.fire()
    assert log[2:] == [("timeout", "silent")]
    now.value += 4.0  # 10 s after the pong
    backend.fire()
    assert log[3:] == [("ping", "answering")]
    assert backend.timers  # waiting for the second pong


def test_a_clock_never_pings_early_and_skips_cancelled_keepalives(now: _Now) -> None:
    backend = _FakeBackend()
    log: List[Tuple[str, str]] = []
    gone, staying = _Peer("gone", log), _Peer("staying", log)
    cancelled = _keepalive(gone, backend, 5.0, 5.0)
    cancelled.start()
    now.value += 1.0
    _keepalive(staying, backend, 5.0, 5.0).start()
    cancelled.cancel()
    assert cancelled._connection is None  # its place in the clock keeps no connection
    now.value += 3.9  # the timer fires early (a loop's clock runs behind)
    backend.fire()
    assert log == []
    assert backend.timers[0][0] == pytest.approx(0.1)  # again, for what is left
    now.value += 1.2
    backend.fire()
    assert log == [("ping", "staying")]


def test_one_keepalives_error_stops_no_other(now: _Now, caplog: pytest.LogCaptureFixture) -> None:
    backend = _FakeBackend()
    log: List[Tuple[str, str]] = []
    peers = [_Peer("broken", log, fail=True), _Peer("fine", log)]
    keepalives: List[Any] = [_keepalive(p, backend, 1.0, 1.0) for p in peers]
    for keepalive in keepalives:
        keepalive.start()
    now.value += 1.0
    with caplog.at_level(logging.ERROR, logger="flask_websocket"):
        backend.fire()
    assert log == [("ping", "fine")]
    assert "unexpected error in a WebSocket keepalive" in caplog.text
    assert len(backend.timers) == 1  # the fine one's pong deadline
