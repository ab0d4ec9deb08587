"""The gevent backend's wake-up without uWSGI: what a handler's greenlet sleeps on."""

from __future__ import annotations

import time
from typing import List

import gevent
from gevent.hub import get_hub

from flask_websocket.concurrency import gevent as gevent_backend
from flask_websocket.concurrency.gevent import GeventBackend


def test_wakeup_remembers_notify_and_times_out() -> None:
    wakeup = GeventBackend().wakeup()
    wakeup.notify()
    assert wakeup.wait(0) is True  # remembered
    # libev's timers count from the loop's last look at the time, which is
    # old when the hub did not run for a while (between tests): one turn.
    gevent.sleep(0.001)
    start = time.monotonic()
    assert wakeup.wait(0.1) is False
    assert time.monotonic() - start >= 0.09
    assert not wakeup.waiting


def test_wakeup_from_another_greenlet_and_from_the_hub() -> None:
    wakeup = GeventBackend().wakeup()
    woken: List[bool] = []

    def sleeper() -> None:
        woken.append(wakeup.wait(5))
        woken.append(wakeup.wait(5))

    task = gevent.spawn(sleeper)
    gevent.sleep(0.01)
    assert wakeup.waiting
    wakeup.notify()  # from this greenlet: through a hub callback
    gevent.sleep(0.01)
    assert woken == [True] and wakeup.waiting
    timer = get_hub().loop.timer(0.01)
    timer.start(wakeup.notify)  # from the hub itself: switched to at once
    task.join(5)
    timer.close()
    assert woken == [True, True]


def test_a_late_notification_never_cuts_another_wait_short() -> None:
    """Woken by its timeout first, the greenlet sleeps elsewhere: a late notification is lost."""
    wakeup = GeventBackend().wakeup()
    slept: List[float] = []

    def sleeper() -> None:
        wakeup.wait(5)
        start = time.monotonic()
        gevent.sleep(0.2)  # a wait of gevent's, not ours
        slept.append(time.monotonic() - start)

    task = gevent.spawn(sleeper)
    gevent.sleep(0.01)
    loop = get_hub().loop
    # In one turn of the loop: the timeout's wake-up, then the notification,
    # which finds the greenlet in gevent.sleep() by then.
    loop.run_callback(wakeup._wake, gevent_backend._TIMED_OUT)  # type: ignore[attr-defined]
    wakeup.notify()
    task.join(5)
    assert slept and slept[0] >= 0.19
    assert wakeup.wait(0) is False  # and it was not remembered either: it had a waiter
