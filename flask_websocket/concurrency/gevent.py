"""The gevent backend: libev watchers in gevent's hub, greenlets for tasks.

Under ``uwsgi --gevent N`` each request runs in a greenlet uWSGI spawns; the
connection core parks that greenlet on a :class:`GeventWakeup` and reads the
socket from an io watcher callback in the hub, so an idle connection costs
no greenlet beyond the request's own.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, List, Optional

import gevent
import gevent.event
from gevent import monkey
from gevent.hub import get_hub
from greenlet import getcurrent

from .base import Backend, Event, Timer, Wakeup, Watcher

__all__ = ["GeventBackend"]

#: The system thread's id, whatever gevent patched (its patched get_ident
#: tells greenlets apart).
_system_thread_id = monkey.get_original("_thread", "get_ident")

_READ = 1
_WRITE = 2
_TIMED_OUT = object()


class _IoWatcher(Watcher):
    __slots__ = ("_callback", "_watcher")

    def __init__(self, fd: int, events: int, callback: Callable[[], None]) -> None:
        self._watcher = get_hub().loop.io(fd, events)
        self._callback = callback

    def start(self) -> None:
        if not self._watcher.active:
            self._watcher.start(self._callback)

    def stop(self) -> None:
        self._watcher.stop()

    def close(self) -> None:
        # An io watcher left active on a closed fd aborts the whole worker
        # (libev asserts): always stop before the fd goes away.
        self._watcher.stop()
        self._watcher.close()

    @property
    def active(self) -> bool:
        return bool(self._watcher.active)


class _Timer(Timer):
    __slots__ = ("_watcher",)

    def __init__(self, delay: float, callback: Callable[[], None]) -> None:
        self._watcher = get_hub().loop.timer(delay)
        self._watcher.start(callback)

    def cancel(self) -> None:
        self._watcher.stop()
        self._watcher.close()


class GeventWakeup(Wakeup):
    """One greenlet sleeps in the hub until notified.

    What a gevent :class:`~gevent.hub.Waiter` would do, without one per
    wait: an idle connection's greenlet waits here for as long as the
    connection lives, and a Waiter is 72 bytes more for all that time. As
    with a Waiter, the greenlet is only switched to from the hub, and only
    while it still waits here (:meth:`_wake`): a notification that comes
    late, after a timeout, never resumes it in the middle of another wait.
    """

    __slots__ = ("_greenlet", "_notified")

    def __init__(self) -> None:
        #: The greenlet in :meth:`wait`, until it is woken.
        self._greenlet: Any = None
        self._notified = False

    @property
    def waiting(self) -> bool:
        return self._greenlet is not None

    def wait(self, timeout: Optional[float] = None) -> bool:
        if self._notified:
            self._notified = False
            return True
        if self._greenlet is not None:
            raise RuntimeError("another greenlet is already waiting on this connection")
        hub = get_hub()
        self._greenlet = getcurrent()
        timer = None
        if timeout is not None:
            timer = hub.loop.timer(max(timeout, 0.0))
            timer.start(self._wake, _TIMED_OUT)
        try:
            result = _sleep_in(hub)
        finally:
            self._greenlet = None
            if timer is not None:
                timer.stop()
                timer.close()
        self._notified = False
        return result is not _TIMED_OUT

    def notify(self) -> None:
        if self._greenlet is None:
            self._notified = True
            return
        hub = get_hub()
        if getcurrent() is hub:
            self._wake(True)
        else:
            hub.loop.run_callback(self._wake, True)

    def _wake(self, value: object) -> None:
        """In the hub: resume the greenlet with ``value`` if it still waits here."""
        greenlet = self._greenlet
        if greenlet is None:  # woken already (a timeout, another notification)
            return
        self._greenlet = None
        try:
            greenlet.switch(value)
        except BaseException:  # as Waiter.switch: never into the hub's loop
            get_hub().handle_error(greenlet.switch, *sys.exc_info())


def _sleep_in(hub: Any) -> object:
    """Switch to the hub until switched back to; what came with the switch.

    A function of its own, with one local: greenlet keeps the innermost
    Python frame of a sleeping greenlet as a frame object, and this one is
    64 bytes smaller than :meth:`GeventWakeup.wait`'s (per idle connection).
    """
    return hub.switch()


class _GeventEvent(Event):
    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = gevent.event.Event()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    def is_set(self) -> bool:
        return bool(self._event.is_set())

    def wait(self, timeout: Optional[float] = None) -> bool:
        return bool(self._event.wait(timeout))


class GeventBackend(Backend):
    """Connections on gevent: what ``uwsgi --gevent N`` runs.

    Made in the thread whose gevent hub serves the connections (the worker's
    main thread under uWSGI): :meth:`call_soon_threadsafe` calls into that
    hub's loop.
    """

    name = "gevent"

    def __init__(self, name: Optional[str] = None) -> None:
        super().__init__(name)
        self._loop = get_hub().loop
        self._thread = _system_thread_id()
        self._signal_watchers: List[Any] = []

    def watch_readable(self, fd: int, callback: Callable[[], None]) -> Watcher:
        return _IoWatcher(fd, _READ, callback)

    def watch_writable(self, fd: int, callback: Callable[[], None]) -> Watcher:
        return _IoWatcher(fd, _WRITE, callback)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return _Timer(delay, callback)

    def wakeup(self) -> Wakeup:
        return GeventWakeup()

    def event(self) -> Event:
        return _GeventEvent()

    def spawn(self, function: Callable[..., Any], *args: Any) -> Any:
        return gevent.spawn(function, *args)

    def sleep(self, seconds: float) -> None:
        gevent.sleep(seconds)

    def in_event_loop(self) -> bool:
        return getcurrent() is get_hub()

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        self._loop.run_callback_threadsafe(callback)

    def on_signal(self, signum: int, callback: Callable[[], None]) -> bool:
        # A libev signal watcher of our own beside uWSGI's (its gevent plugin
        # handles SIGHUP, SIGINT and SIGTERM with gevent's, and libev calls
        # every watcher of a signal). Run in the hub itself, not in a new
        # greenlet: it is done before uWSGI's handler greenlet runs.
        watcher = self._loop.signal(signum, ref=False)
        watcher.start(callback)
        self._signal_watchers.append(watcher)
        return True

    def in_foreign_thread(self) -> bool:
        return bool(_system_thread_id() != self._thread)

    def run_in_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        if self.in_event_loop():
            raise RuntimeError("run_in_thread() cannot wait in the event loop")
        return get_hub().threadpool.apply(function, args)

    def run_blocking(self, function: Callable[..., Any], *args: Any) -> Any:
        if self.in_event_loop():
            raise RuntimeError("run_blocking() cannot wait in the event loop")
        if monkey.is_module_patched("socket"):
            return function(*args)  # blocking calls are cooperative already
        return get_hub().threadpool.apply(function, args)
