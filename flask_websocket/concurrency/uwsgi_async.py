"""uWSGI's own async mode: ``--async N`` with the ``--greenlet`` suspend engine,
or with the continulet engine of uWSGI's PyPy plugin (``--ugreen`` is refused
at start, see ``docs/concurrency.rst``).

Here uWSGI's event loop is C and keeps Python's GIL while it waits, so no
Python thread can serve as the event loop, and there is no Python loop to
borrow either (as there is under gevent or asyncio). Instead the waiting
cores drive the loop themselves. A handler that sleeps:

1. runs the timers that are due (any connection's: keepalive, close timeouts);
2. puts its own connection's socket (for reading, and for writing while a
   send queue waits) and its wake-up fd in an epoll of its own, asks uWSGI to
   resume it when that epoll is readable (``uwsgi.wait_fd_read``) and
   suspends (``uwsgi.suspend``), so the worker's other cores run meanwhile
   (uWSGI is never given two fds at once: when both are ready in one pass it
   closes the second);
3. once resumed, runs its connection's read and write callbacks, which feed
   the protocol and queue messages exactly as under gevent.

The wake-up fd is a Linux timerfd: armed for "now" it wakes the core (a
broadcast from another core that leaves bytes queued, a close), armed for a
deadline it is the core's timeout, with sub-second precision that uWSGI's
own whole-second timeouts lack.

What differs from gevent: a connection's socket is read only while its
handler waits (in ``receive``, ``send`` on a full queue, ``sleep``...), so a
handler busy for a long time answers pings late.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import time
from typing import Any, Callable, Dict, List, Optional

from .. import transport
from ..exceptions import ConfigurationError
from .base import Backend, Event, Timer, Wakeup, WakeupEvent, Watcher
from .polling import READ, WRITE, FdWatchers, TimerHeap

__all__ = ["UwsgiAsyncBackend"]

logger = logging.getLogger("flask_websocket")

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = 0o4000
_TFD_CLOEXEC = 0o2000000


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class _TimerFd:
    """A Linux timerfd: readable once armed time has passed."""

    __slots__ = ("armed", "fd")

    _libc: Any = None

    def __init__(self) -> None:
        self.armed = False  # armed since the last clear(): it may have fired
        create = getattr(os, "timerfd_create", None)  # Python 3.13+
        if create is not None:
            self.fd = create(
                os.CLOCK_MONOTONIC,  # type: ignore[attr-defined]
                flags=os.TFD_NONBLOCK | os.TFD_CLOEXEC,  # type: ignore[attr-defined]
            )
            return
        libc = _TimerFd._load_libc()
        fd = libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"timerfd_create: {os.strerror(errno)}")
        self.fd = int(fd)

    @staticmethod
    def _load_libc() -> Any:
        if _TimerFd._libc is None:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
            libc.timerfd_settime.argtypes = [
                ctypes.c_int,
                ctypes.c_int,
                ctypes.POINTER(_Itimerspec),
                ctypes.c_void_p,
            ]
            _TimerFd._libc = libc
        return _TimerFd._libc

    def arm(self, seconds: float) -> None:
        """Fire after ``seconds`` (at once if ``<= 0``)."""
        self.armed = True
        seconds = max(seconds, 1e-9)  # zero would disarm it
        if hasattr(os, "timerfd_settime"):
            os.timerfd_settime(self.fd, initial=seconds)
            return
        whole = int(seconds)
        spec = _Itimerspec()
        spec.it_value.tv_sec = whole
        spec.it_value.tv_nsec = max(int((seconds - whole) * 1e9), 1 if not whole else 0)
        if _TimerFd._load_libc().timerfd_settime(self.fd, 0, ctypes.byref(spec), None) < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"timerfd_settime: {os.strerror(errno)}")

    def clear(self) -> None:
        """Disarm, and consume an expiry that made it readable (no-op if never armed)."""
        if not self.armed:
            return
        self.armed = False
        if hasattr(os, "timerfd_settime"):
            os.timerfd_settime(self.fd, initial=0)
        else:
            _TimerFd._load_libc().timerfd_settime(self.fd, 0, ctypes.byref(_Itimerspec()), None)
        with contextlib.suppress(BlockingIOError):
            os.read(self.fd, 8)


class _CoreWaiter:
    """What one sleeping core waits on: its socket and its timerfd, in one epoll.

    uWSGI is given only the epoll's fd: when two fds registered for one
    suspension are ready in the same pass, uWSGI reports the first and
    *closes* the other, which would close the client's socket.
    """

    __slots__ = ("_events", "_watched", "epoll", "timer")

    def __init__(self) -> None:
        self.timer = _TimerFd()
        self.epoll = select.epoll()
        self.epoll.register(self.timer.fd, select.EPOLLIN)
        self._watched: Optional[int] = None  # the socket fd in the epoll, if any
        self._events = 0

    def watch(self, fd: Optional[int], events: int) -> None:
        """Watch ``fd`` for ``events`` (``0``: not at all) besides the timer.

        The kernel recomputes an epoll's readiness each time uWSGI polls it,
        so nothing needs draining between suspensions; only changes cost a
        system call.
        """
        if self._watched is not None and (fd != self._watched or not events):
            with contextlib.suppress(OSError):
                self.epoll.unregister(self._watched)
            self._watched = None
        if fd is None or not events:
            return
        if self._watched is None:
            self.epoll.register(fd, events)
            self._watched, self._events = fd, events
        elif events != self._events:
            self.epoll.modify(fd, events)
            self._events = events


class CoreWakeup(Wakeup):
    """One async core sleeps, suspended in uWSGI, until notified."""

    __slots__ = ("_backend", "_notified", "_waiter")

    def __init__(self, backend: UwsgiAsyncBackend) -> None:
        self._backend = backend
        self._waiter: Optional[_CoreWaiter] = None
        self._notified = False

    @property
    def waiting(self) -> bool:
        return self._waiter is not None

    def wait(self, timeout: Optional[float] = None) -> bool:
        if not self._notified:
            if self._waiter is not None:
                raise RuntimeError("another task is already waiting on this connection")
            deadline = None if timeout is None else time.monotonic() + timeout
            self._backend._sleep_until(self, deadline)
        notified = self._notified
        self._notified = False
        return notified

    def notify(self) -> None:
        self._notified = True
        waiter = self._waiter
        if waiter is not None:
            waiter.timer.arm(0)  # wake the core: it re-checks at once


class UwsgiAsyncBackend(Backend):
    """Connections in uWSGI's async cores, driven by the cores that wait."""

    background_io = False  # only a waiting core runs the loop

    def __init__(self, name: Optional[str] = None) -> None:
        super().__init__(name)
        self._watchers = FdWatchers(self._watched_events_changed)
        # fd -> the wakeup of the core sleeping on that fd
        self._sleepers: Dict[int, CoreWakeup] = {}
        self._timers = TimerHeap()
        self._free_waiters: List[_CoreWaiter] = []
        self._pid = os.getpid()
        self._in_callback = False
        try:
            self._free_waiters.append(_CoreWaiter())
        except (OSError, AttributeError) as exc:
            raise ConfigurationError(
                f"uWSGI's {self.name} suspend engine needs Linux timerfds ({exc}); "
                "use --gevent N or --threads N"
            ) from exc

    # ------------------------------------------------------------------
    # Backend

    def watch_readable(self, fd: int, callback: Callable[[], None]) -> Watcher:
        return self._watchers.watch(fd, False, callback)

    def watch_writable(self, fd: int, callback: Callable[[], None]) -> Watcher:
        return self._watchers.watch(fd, True, callback)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self._timers.add(delay, callback)

    def wakeup(self) -> Wakeup:
        return CoreWakeup(self)

    def event(self) -> Event:
        return WakeupEvent(self)

    def spawn(self, function: Callable[..., Any], *args: Any) -> Any:
        raise ConfigurationError(
            f"uWSGI's {self.name} async mode runs only request cores: a background "
            "task cannot be started (use --gevent N for that)"
        )

    def sleep(self, seconds: float) -> None:
        CoreWakeup(self).wait(seconds)

    def in_event_loop(self) -> bool:
        return self._in_callback

    # ------------------------------------------------------------------
    # The loop, run by whichever core waits

    def _watched_events_changed(self, fd: int, events: int) -> None:
        sleeper = self._sleepers.get(fd)
        if sleeper is not None and sleeper._waiter is not None:
            sleeper._waiter.timer.arm(0)  # let it wait for the new events

    def _call(self, callback: Callable[[], None]) -> None:
        self._in_callback = True
        try:
            callback()
        except Exception:  # one connection's error must not reach another's core
            logger.exception("error in a Flask-WebSocket callback")
        finally:
            self._in_callback = False

    def _take_waiter(self) -> _CoreWaiter:
        if self._pid != os.getpid():  # forked: those belong to the parent
            self._free_waiters, self._pid = [], os.getpid()
        return self._free_waiters.pop() if self._free_waiters else _CoreWaiter()

    def _sleep_until(self, wakeup: CoreWakeup, deadline: Optional[float]) -> None:
        """Suspend this core until ``wakeup`` is notified or ``deadline`` passes."""
        own_fd = transport.current_connection_fd()
        waiter = self._take_waiter()
        wakeup._waiter = waiter
        if own_fd is not None:
            self._sleepers[own_fd] = wakeup
        try:
            while not wakeup._notified:
                next_timer = self._timers.run_due(self._call)
                if own_fd is not None:  # what arrived while we were busy
                    self._watchers.dispatch(own_fd, READ | WRITE, self._call)
                if wakeup._notified:
                    break
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                waiter.timer.clear()
                wake_times = [t for t in (deadline, next_timer) if t is not None]
                if wake_times:
                    waiter.timer.arm(min(wake_times) - now)
                events = 0
                if own_fd is not None:
                    wanted = self._watchers.events(own_fd)
                    events = (select.EPOLLIN if wanted & READ else 0) | (
                        select.EPOLLOUT if wanted & WRITE else 0
                    )
                waiter.watch(own_fd, events)
                transport.suspend_until_readable(waiter.epoll.fileno())
        finally:
            wakeup._waiter = None
            if own_fd is not None and self._sleepers.get(own_fd) is wakeup:
                del self._sleepers[own_fd]
            waiter.watch(None, 0)  # never keep a socket uWSGI will close
            waiter.timer.clear()
            self._free_waiters.append(waiter)
