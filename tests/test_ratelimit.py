"""The message rate's token bucket, without sockets (flask_websocket/ratelimit.py)."""

from __future__ import annotations

import logging
from typing import Callable, List, Optional, Tuple

import pytest

from flask_websocket import ratelimit
from flask_websocket.ratelimit import MessageRate


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeTimer:
    def __init__(self, delay: float, callback: Callable[[], None]) -> None:
        self.delay, self.callback, self.cancelled = delay, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeBackend:
    def __init__(self) -> None:
        self.timers: List[FakeTimer] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        self.timers.append(FakeTimer(delay, callback))
        return self.timers[-1]


class Connection:
    """Records what the bucket asks of its connection."""

    def __init__(self) -> None:
        self.calls: List[str] = []

    def _pause_for_rate(self) -> None:
        self.calls.append("pause")

    def _resume_after_rate(self) -> None:
        self.calls.append("resume")

    def _rate_exceeded(self) -> None:
        self.calls.append("close 1008")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(ratelimit.time, "monotonic", clock)
    # Every line, however close together: the lines themselves are under test.
    monkeypatch.setattr(ratelimit, "_log", ratelimit.RateLimitedLog(ratelimit.logger, 0.0))
    return clock


def bucket(rate: float = 10, burst: int = 5) -> Tuple[MessageRate, Connection, FakeBackend]:
    connection, backend = Connection(), FakeBackend()
    return MessageRate(connection, backend, rate, burst), connection, backend  # type: ignore[arg-type]


def test_a_burst_and_the_rate_pass(clock: Clock) -> None:
    rate, connection, _ = bucket(rate=10, burst=5)
    rate.count(5)  # the whole burst at once
    for _ in range(20):  # then 10 a second
        clock.now += 0.1
        rate.count(1)
    assert connection.calls == []


def test_over_once_is_warned_and_paused_until_one_message_is_allowed(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    rate, connection, backend = bucket(rate=10, burst=5)
    with caplog.at_level(logging.WARNING, "flask_websocket"):
        rate.count(8)  # 3 over
    assert connection.calls == ["pause"]
    assert rate.paused
    (timer,) = backend.timers
    assert timer.delay == pytest.approx(0.4)  # from -3 tokens back to 1, at 10 a second
    assert "faster than WEBSOCKET_RATE_LIMIT allows (10/s, burst 5)" in caplog.text
    timer.callback()
    assert connection.calls == ["pause", "resume"] and not rate.paused


def test_over_again_before_the_bucket_refilled_closes_1008(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    rate, connection, backend = bucket(rate=10, burst=5)
    rate.count(8)
    clock.now += 0.4
    backend.timers[0].callback()
    with caplog.at_level(logging.WARNING, "flask_websocket"):
        rate.count(3)  # 1 token back, 3 asked
    assert connection.calls == ["pause", "resume", "close 1008"]
    assert "with 1008: over its message rate again after a warning" in caplog.text


def test_calm_until_the_bucket_is_full_again_forgives_the_warning(clock: Clock) -> None:
    rate, connection, backend = bucket(rate=10, burst=5)
    rate.count(8)
    backend.timers[0].callback()
    clock.now += 1.0  # -3 tokens + 10: full again (5 at most)
    rate.count(8)
    assert connection.calls == ["pause", "resume", "pause"]  # warned again, not closed


def test_cancel_stops_the_pause_timer(clock: Clock) -> None:
    rate, _, backend = bucket()
    rate.count(100)
    rate.cancel()
    assert backend.timers[0].cancelled and not rate.paused


@pytest.mark.parametrize(
    "value, problem",
    [
        (None, None),
        ((10, 20), None),
        ([0.5, 1], None),
        (10, "(messages per second, burst)"),
        ((0, 5), "(messages per second, burst)"),
        ((10, 0), "(messages per second, burst)"),
        ((True, 5), "(messages per second, burst)"),
    ],
)
def test_rate_limit_values(value: object, problem: Optional[str]) -> None:
    from flask_websocket.config import rate_limit_problem

    found = rate_limit_problem(value)
    assert (found is None) if problem is None else (found is not None and problem in found)
