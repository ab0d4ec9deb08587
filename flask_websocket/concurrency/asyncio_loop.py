"""uWSGI's asyncio loop engine: ``--asyncio N --greenlet``.

uWSGI runs an asyncio event loop in the worker's main greenlet and each
request in a greenlet of its own. This backend uses that loop the way the
gevent backend uses gevent's hub: sockets are watched with
``loop.add_reader`` / ``add_writer``, timers are ``loop.call_later``, and a
handler sleeps by switching to the loop's greenlet until a callback switches
back (the pattern uWSGI's asyncio documentation gives). Everything runs in
one thread, so, as under gevent, nothing needs a lock.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, Optional

import greenlet

from .base import (
    Backend,
    Event,
    Timer,
    ToggleWatcher,
    Wakeup,
    WakeupEvent,
    Watcher,
)

__all__ = ["AsyncioBackend"]

_TIMED_OUT = object()


class _LoopWatcher(ToggleWatcher):
    __slots__ = ("_callback", "_fd", "_loop", "_write")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, fd: int, write: bool, callback: Callable[[], None]
    ) -> None:
        super().__init__()
        self._loop = loop
        self._fd = fd
        self._write = write
        self._callback = callback

    def _toggle(self, active: bool) -> None:
        if active and self._write:
            self._loop.add_writer(self._fd, self._callback)
        elif active:
            self._loop.add_reader(self._fd, self._callback)
        elif self._write:
            self._loop.remove_writer(self._fd)
        else:
            self._loop.remove_reader(self._fd)


class _LoopTimer(Timer):
    __slots__ = ("_handle",)

    def __init__(self, handle: asyncio.TimerHandle) -> None:
        self._handle = handle

    def cancel(self) -> None:
        self._handle.cancel()


def _in_loop_greenlet() -> bool:
    return greenlet.getcurrent().parent is None  # the main greenlet runs the loop


class GreenletWakeup(Wakeup):
    """One request greenlet sleeps in the loop's greenlet until notified."""

    __slots__ = ("_loop", "_notified", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiter: Optional[greenlet.greenlet] = None
        self._notified = False

    @property
    def waiting(self) -> bool:
        return self._waiter is not None

    def wait(self, timeout: Optional[float] = None) -> bool:
        if self._notified:
            self._notified = False
            return True
        if self._waiter is not None:
            raise RuntimeError("another greenlet is already waiting on this connection")
        current = greenlet.getcurrent()
        loop_greenlet = current.parent
        if loop_greenlet is None:
            raise RuntimeError("cannot wait in the event loop's own greenlet")
        self._waiter = current
        handle = None
        if timeout is not None:
            handle = self._loop.call_later(max(timeout, 0.0), self._time_out, current)
        try:
            result = loop_greenlet.switch()
        finally:
            self._waiter = None
            if handle is not None:
                handle.cancel()
        self._notified = False
        return result is not _TIMED_OUT

    def _time_out(self, waiter: Any) -> None:
        current = self._waiter
        if current is None or current is not waiter:
            return  # notified first
        self._waiter = None
        current.switch(_TIMED_OUT)

    def notify(self) -> None:
        waiter = self._waiter
        if waiter is None:
            self._notified = True
            return
        self._waiter = None
        if _in_loop_greenlet():
            waiter.switch(True)
        else:  # another request's greenlet: wake this one from the loop
            self._loop.call_soon(waiter.switch, True)


class AsyncioBackend(Backend):
    """Connections on uWSGI's asyncio loop engine, one greenlet per request."""

    name = "asyncio"

    def __init__(self, name: Optional[str] = None) -> None:
        super().__init__(name)
        self._loop = asyncio.get_event_loop()
        self._thread = threading.get_ident()

    def watch_readable(self, fd: int, callback: Callable[[], None]) -> Watcher:
        return _LoopWatcher(self._loop, fd, False, callback)

    def watch_writable(self, fd: int, callback: Callable[[], None]) -> Watcher:
        return _LoopWatcher(self._loop, fd, True, callback)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return _LoopTimer(self._loop.call_later(max(delay, 0.0), callback))

    def wakeup(self) -> Wakeup:
        return GreenletWakeup(self._loop)

    def event(self) -> Event:
        return WakeupEvent(self)

    def spawn(self, function: Callable[..., Any], *args: Any) -> Any:
        main = greenlet.getcurrent()
        while main.parent is not None:
            main = main.parent
        task = greenlet.greenlet(lambda: function(*args), parent=main)
        self._loop.call_soon(task.switch)
        return task

    def sleep(self, seconds: float) -> None:
        self.wakeup().wait(seconds)

    def in_event_loop(self) -> bool:
        return _in_loop_greenlet()

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        self._loop.call_soon_threadsafe(callback)

    def in_foreign_thread(self) -> bool:
        return threading.get_ident() != self._thread
