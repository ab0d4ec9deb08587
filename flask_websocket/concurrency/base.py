"""The small interface the connection core needs from a concurrency model.

A backend answers these needs: be called back when a file descriptor is
readable or writable, run something later, let one task sleep until another
wakes it, spawn a task, sleep, and, for code that blocks (redis-py), run a
call in a thread while the task waits and hand results back to the loop
from another thread. The connection core (``connection.py``) and the hubs
use nothing else, so a new model (threads, uWSGI's native async) plugs in by
writing one module.

Callbacks given to :meth:`Backend.watch_readable`, :meth:`Backend.watch_writable`
and :meth:`Backend.call_later` run in the backend's event loop: they must not
block. :meth:`Backend.in_event_loop` tells code which side it runs on.
"""

from __future__ import annotations

import abc
import contextlib
from typing import Any, Callable, ContextManager, List, Optional

__all__ = [
    "Backend",
    "Event",
    "Timer",
    "ToggleWatcher",
    "Wakeup",
    "WakeupEvent",
    "Watcher",
]


class Watcher(abc.ABC):
    """Calls a callback each time a file descriptor is ready, while started."""

    # Empty slots on every base here, so that the backends' own __slots__
    # leave their instances without a __dict__ and a __weakref__: a watcher,
    # a timer and a wake-up live as long as each connection (about 40 bytes
    # each).
    __slots__ = ()

    @abc.abstractmethod
    def start(self) -> None:
        """Start watching (no-op if started)."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop watching (no-op if stopped)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop and release the watcher; it cannot be started again."""

    @property
    @abc.abstractmethod
    def active(self) -> bool:
        """True while the watcher is started."""


class ToggleWatcher(Watcher):
    """A :class:`Watcher` that keeps its own started/closed state.

    Subclasses say only how to begin and end watching: :meth:`_toggle`.
    """

    __slots__ = ("_active", "_closed")

    def __init__(self) -> None:
        self._active = False
        self._closed = False

    @abc.abstractmethod
    def _toggle(self, active: bool) -> None:
        """Begin (``True``) or end (``False``) watching."""

    def start(self) -> None:
        if not self._active and not self._closed:
            self._toggle(True)
            self._active = True

    def stop(self) -> None:
        if self._active:
            self._toggle(False)
            self._active = False

    def close(self) -> None:
        self.stop()
        self._closed = True

    @property
    def active(self) -> bool:
        return self._active


class Timer(abc.ABC):
    """A callback scheduled once, after a delay."""

    __slots__ = ()

    @abc.abstractmethod
    def cancel(self) -> None:
        """Do not run the callback (no-op if it ran already)."""


class Wakeup(abc.ABC):
    """Lets one task sleep until another task, or the event loop, wakes it.

    A :meth:`notify` that comes while nobody waits is remembered: the next
    :meth:`wait` returns at once. Cheaper than an event: one waiter only.
    """

    __slots__ = ()

    @abc.abstractmethod
    def wait(self, timeout: Optional[float] = None) -> bool:
        """Sleep until notified; ``False`` if ``timeout`` seconds passed first."""

    @abc.abstractmethod
    def notify(self) -> None:
        """Wake the waiter, or remember the notification if there is none."""

    @property
    @abc.abstractmethod
    def waiting(self) -> bool:
        """True while a task sleeps in :meth:`wait`."""


class Event(abc.ABC):
    """A flag many tasks can wait for, as :class:`threading.Event`."""

    __slots__ = ()

    @abc.abstractmethod
    def set(self) -> None:
        """Set the flag and wake every waiter."""

    @abc.abstractmethod
    def clear(self) -> None:
        """Reset the flag."""

    @abc.abstractmethod
    def is_set(self) -> bool:
        """True if the flag is set."""

    @abc.abstractmethod
    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait until the flag is set; return the flag."""


class Backend(abc.ABC):
    """A concurrency model: the primitives the connection core runs on."""

    #: Short name, as used in logs and error messages.
    name: str = ""

    def __init__(self, name: Optional[str] = None) -> None:
        if name is not None:  # the model's name: "processes" runs the threads backend
            self.name = name

    #: True when watchers and timers run whether or not any task waits (a
    #: loop of its own: gevent's hub, a loop thread, asyncio), so a process
    #: can listen for other processes' broadcasts while its handlers compute
    #: or it has no connection at all. False where only waiting tasks drive
    #: the loop (uWSGI's greenlet, uGreen and continulet cores).
    background_io: bool = True

    #: ``None`` when callbacks and tasks share one cooperative thread (gevent).
    #: Otherwise a re-entrant lock that every connection call must hold, and
    #: that callbacks run under (see :mod:`flask_websocket.concurrency.loop`).
    guard: Any = None

    def guarded(self) -> ContextManager[Any]:
        """:attr:`guard`, or a context that does nothing where there is none."""
        guard: Optional[ContextManager[Any]] = self.guard
        return guard if guard is not None else contextlib.nullcontext()

    @abc.abstractmethod
    def watch_readable(self, fd: int, callback: Callable[[], None]) -> Watcher:
        """A stopped watcher that calls ``callback`` when ``fd`` is readable."""

    @abc.abstractmethod
    def watch_writable(self, fd: int, callback: Callable[[], None]) -> Watcher:
        """A stopped watcher that calls ``callback`` when ``fd`` is writable."""

    @abc.abstractmethod
    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` in the event loop after ``delay`` seconds."""

    @abc.abstractmethod
    def wakeup(self) -> Wakeup:
        """A new :class:`Wakeup`."""

    @abc.abstractmethod
    def event(self) -> Event:
        """A new, cleared :class:`Event`."""

    @abc.abstractmethod
    def spawn(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run ``function(*args)`` as a new task; return a handle to it."""

    @abc.abstractmethod
    def sleep(self, seconds: float) -> None:
        """Let the current task sleep, letting others run."""

    @abc.abstractmethod
    def in_event_loop(self) -> bool:
        """True when called from the event loop, where nothing may block."""

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` in the event loop (under :attr:`guard`), from any thread.

        How code that runs in a thread of its own (see :mod:`.blocking`)
        hands its results to the connections.
        """
        raise NotImplementedError(f"the {self.name} backend has no loop to call into")

    def on_signal(self, signum: int, callback: Callable[[], None]) -> bool:
        """Also call ``callback`` in the event loop when the process receives ``signum``.

        Without taking the signal from whoever handles it already (uWSGI).
        ``False`` where the model cannot (uWSGI's own C handlers are the
        only ones there).
        """
        return False

    def in_foreign_thread(self) -> bool:
        """True in a system thread that is neither the loop's nor one of its tasks'.

        There, connections and hubs must not be touched directly: hand the
        work to the loop with :meth:`run_in_loop`. Backends whose every call
        holds :attr:`guard` (threads, processes) take calls from any thread.
        """
        return False

    def run_in_loop(self, function: Callable[..., Any], *args: Any) -> Any:
        """From a foreign thread: run ``function(*args)`` as a task of this backend; its result.

        The task may wait (a broadcast waits for other workers); this thread
        waits for it, and exceptions are raised here.
        """
        from .blocking import thread_event

        done = thread_event()
        outcome: List[Any] = []

        def task() -> None:
            try:
                outcome.append((True, function(*args)))
            except BaseException as exc:  # handed to the caller's thread
                outcome.append((False, exc))
            finally:
                done.set()

        self.call_soon_threadsafe(lambda: self.spawn(task))
        done.wait()
        succeeded, value = outcome[0]
        if not succeeded:
            raise value
        return value

    def run_in_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        """As :meth:`run_blocking`, but always in a system thread.

        For calls that block in C whatever gevent patched (SQLite).
        """
        return self.run_blocking(function, *args)

    def run_blocking(self, function: Callable[..., Any], *args: Any) -> Any:
        """Call ``function(*args)``, which may block on I/O, and return its result.

        The calling task waits without holding up the others (nor
        :attr:`guard`): the call runs in a thread of :func:`.blocking.executor`.
        Exceptions are raised here. Not from the event loop.
        """
        if self.in_event_loop():
            raise RuntimeError("run_blocking() cannot wait in the event loop")
        from .blocking import executor

        future = executor().submit(function, *args)
        wakeup = self.wakeup()
        future.add_done_callback(lambda _: self.call_soon_threadsafe(wakeup.notify))
        while not future.done():
            wakeup.wait()  # releases the guard while it sleeps
        return future.result()


class WakeupEvent(Event):
    """An :class:`Event` built on a backend's wakeups (one per waiting task)."""

    __slots__ = ("_backend", "_flag", "_waiters")

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._flag = False
        self._waiters: List[Wakeup] = []

    def set(self) -> None:
        with self._backend.guarded():
            self._flag = True
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.notify()

    def clear(self) -> None:
        self._flag = False

    def is_set(self) -> bool:
        return self._flag

    def wait(self, timeout: Optional[float] = None) -> bool:
        with self._backend.guarded():
            if self._flag:
                return True
            waiter = self._backend.wakeup()
            self._waiters.append(waiter)
            try:
                waiter.wait(timeout)
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            return self._flag
