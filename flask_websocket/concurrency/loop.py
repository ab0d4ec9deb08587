"""An event loop in a thread of its own, for the models that are not gevent.

Under threads, processes and uWSGI's own async modes (uGreen, greenlet,
asyncio) nothing runs callbacks while a handler computes, so each worker
process gets one :class:`LoopThread`: a daemon thread that waits on every
connection's socket with the platform's selector (epoll on Linux), runs timer
callbacks, and calls the connection core's read and write callbacks exactly
as gevent's hub does. Handlers keep their own task (a thread, or a uWSGI
async core) and sleep on a :class:`~flask_websocket.concurrency.base.Wakeup`
that the loop notifies.

Everything the connection core does runs under one re-entrant lock, the
loop's :attr:`LoopThread.guard`: the loop thread holds it while it runs
callbacks, handler tasks hold it inside each connection call and release it
while they sleep. So the core, written for one cooperative thread, sees no
more interleaving than it does under gevent.

How a task sleeps differs per model (a condition variable for threads, a
wake-up file descriptor and ``uwsgi.suspend()`` for uWSGI's async cores):
that is the one thing a backend built on this module provides.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import os
import selectors
import threading
import time
from typing import Any, Callable, Optional

from .base import Backend, Event, Timer, Wakeup, WakeupEvent, Watcher
from .polling import READ, FdWatchers, TimerHeap

__all__ = ["LoopBackend", "LoopThread"]

logger = logging.getLogger("flask_websocket")


class LoopThread:
    """One selector loop per process, run by a daemon thread.

    Watchers and timers may be started from any thread while holding
    :attr:`guard`; their callbacks run in the loop thread, holding it too.
    """

    def __init__(self, guard: Any) -> None:
        #: The lock every connection call and every callback holds.
        self.guard = guard
        self._selector = selectors.DefaultSelector()
        # One selector registration per fd, for its reader and writer.
        self.watchers = FdWatchers(self._watched_events_changed)
        self._timers = TimerHeap()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._selector.register(self._wake_read, READ)
        self._deadline = float("inf")  # when the loop's current select ends
        self.thread = threading.Thread(target=self._run, name="flask-websocket-loop", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------------
    # Called with the guard held, from any thread

    def _watched_events_changed(self, fd: int, events: int) -> None:
        # READ and WRITE are the selectors module's bits. epoll takes
        # registrations made while another thread waits in it, so the loop
        # needs no wake-up for these.
        try:
            if not events:
                self._selector.unregister(fd)
            else:
                try:
                    self._selector.modify(fd, events)
                except KeyError:
                    self._selector.register(fd, events)
        except (KeyError, ValueError, OSError):
            if events:
                raise

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` in the loop thread after ``delay`` seconds."""
        timer = self._timers.add(delay, callback)
        if timer.when < self._deadline and threading.current_thread() is not self.thread:
            self.wake()
        return timer

    def wake(self) -> None:
        """Make the loop's current wait end now."""
        with contextlib.suppress(BlockingIOError):  # full: it will wake anyway
            os.write(self._wake_write, b"\0")

    # ------------------------------------------------------------------
    # The loop thread

    def _run(self) -> None:
        selector = self._selector
        guard = self.guard
        while True:
            with guard:
                next_timer = self._timers.run_due(self._call)
                self._deadline = float("inf") if next_timer is None else next_timer
                timeout = None if next_timer is None else max(next_timer - time.monotonic(), 0.0)
            ready = selector.select(timeout)
            with guard:
                self._deadline = 0.0  # running: a new timer is seen before the next wait
                for key, events in ready:
                    if key.fd == self._wake_read:
                        self._drain_wake()
                    else:
                        self.watchers.dispatch(key.fd, events, self._call)

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_read, 4096):
                pass
        except BlockingIOError:
            pass

    @staticmethod
    def _call(callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception:  # one connection's error must not stop the loop
            logger.exception("error in a Flask-WebSocket loop callback")


class LoopBackend(Backend):
    """A backend whose event loop is a :class:`LoopThread` (one per process).

    Subclasses say how a task sleeps: :meth:`wakeup`.
    """

    def __init__(self, name: Optional[str] = None) -> None:
        super().__init__(name)
        self._loop: Optional[LoopThread] = None
        self._loop_pid = 0
        self._loop_lock = threading.Lock()
        #: Held by every connection call and loop callback (see the module docs).
        self.guard: Any = threading.RLock()

    @property
    def loop(self) -> LoopThread:
        """This process's loop thread, started on first use (after uWSGI forks)."""
        loop = self._loop
        if loop is None or self._loop_pid != os.getpid():
            with self._loop_lock:
                if self._loop is None or self._loop_pid != os.getpid():
                    self._loop = LoopThread(self.guard)
                    self._loop_pid = os.getpid()
                loop = self._loop
        return loop

    def watch_readable(self, fd: int, callback: Callable[[], None]) -> Watcher:
        return self.loop.watchers.watch(fd, False, callback)

    def watch_writable(self, fd: int, callback: Callable[[], None]) -> Watcher:
        return self.loop.watchers.watch(fd, True, callback)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        with self.guard:
            return self.loop.call_later(delay, callback)

    @abc.abstractmethod
    def wakeup(self) -> Wakeup:
        """A new wakeup; its ``wait`` releases :attr:`guard` while it sleeps."""

    def event(self) -> Event:
        return WakeupEvent(self)

    def spawn(self, function: Callable[..., Any], *args: Any) -> Any:
        thread = threading.Thread(target=function, args=args, daemon=True)
        thread.start()
        return thread

    def sleep(self, seconds: float) -> None:
        self.wakeup().wait(seconds)

    def in_event_loop(self) -> bool:
        loop = self._loop
        return loop is not None and threading.current_thread() is loop.thread

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        with self.guard:  # held briefly: the loop thread runs the callback under it
            self.loop.call_later(0.0, callback)
