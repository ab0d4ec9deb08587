"""What the backends that run their own event loop share: the fds they watch
and the timers they run.

The loop thread (:mod:`.loop`: threads, processes) and the waiting uWSGI
cores (:mod:`.uwsgi_async`: greenlet, uGreen, continulets) each poll file
descriptors and run callbacks themselves, unlike gevent and asyncio, whose
loops do both. They keep their watchers in a :class:`FdWatchers` table and
their timers in a :class:`TimerHeap`; how they wait is their own.
"""

from __future__ import annotations

import heapq
import itertools
import time
from typing import Callable, Dict, List, Optional, Tuple

from .base import Timer, ToggleWatcher

__all__ = ["READ", "WRITE", "FdWatchers", "TimerHeap"]

#: Event bits of :meth:`FdWatchers.events` (the values of ``selectors.EVENT_READ``
#: and ``EVENT_WRITE``).
READ = 1
WRITE = 2


class _FdWatcher(ToggleWatcher):
    __slots__ = ("_fd", "_table", "_write", "callback")

    def __init__(
        self, table: FdWatchers, fd: int, write: bool, callback: Callable[[], None]
    ) -> None:
        super().__init__()
        self._table = table
        self._fd = fd
        self._write = write
        self.callback = callback

    def _toggle(self, active: bool) -> None:
        self._table._changed(self, active)


class FdWatchers:
    """Which callbacks want which fds readable or writable.

    ``on_change(fd, events)`` is called each time the events wanted for
    ``fd`` change (``0``: none any more), so the owner can tell its poller.
    """

    def __init__(self, on_change: Callable[[int, int], None]) -> None:
        self._on_change = on_change
        # fd -> [reader, writer], the started ones only
        self._slots: Dict[int, List[Optional[_FdWatcher]]] = {}

    def watch(self, fd: int, write: bool, callback: Callable[[], None]) -> ToggleWatcher:
        """A stopped watcher of ``fd`` for writing (``write``) or reading."""
        return _FdWatcher(self, fd, write, callback)

    def events(self, fd: int) -> int:
        """The :data:`READ` / :data:`WRITE` bits wanted for ``fd``."""
        slots = self._slots.get(fd)
        if slots is None:
            return 0
        return (READ if slots[0] is not None else 0) | (WRITE if slots[1] is not None else 0)

    def dispatch(self, fd: int, ready: int, call: Callable[[Callable[[], None]], None]) -> None:
        """``call`` the callbacks of ``fd`` started for the ``ready`` event bits."""
        slots = self._slots.get(fd)
        if slots is None:
            return
        reader, writer = slots
        if ready & READ and reader is not None and reader._active:
            call(reader.callback)
        if ready & WRITE and writer is not None and writer._active:
            call(writer.callback)

    def _changed(self, watcher: _FdWatcher, active: bool) -> None:
        fd = watcher._fd
        slots = self._slots.get(fd)
        if slots is None:
            slots = self._slots[fd] = [None, None]
        slots[1 if watcher._write else 0] = watcher if active else None
        if slots[0] is None and slots[1] is None:
            del self._slots[fd]
        self._on_change(fd, self.events(fd))


class _HeapTimer(Timer):
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class TimerHeap:
    """Callbacks to run at given times, soonest first."""

    def __init__(self) -> None:
        self._heap: List[Tuple[float, int, _HeapTimer]] = []
        self._sequence = itertools.count()

    def add(self, delay: float, callback: Callable[[], None]) -> _HeapTimer:
        """Schedule ``callback`` in ``delay`` seconds; its ``when`` is that monotonic time."""
        timer = _HeapTimer(time.monotonic() + max(delay, 0.0), callback)
        heapq.heappush(self._heap, (timer.when, next(self._sequence), timer))
        return timer

    def run_due(self, call: Callable[[Callable[[], None]], None]) -> Optional[float]:
        """``call`` the callbacks that are due; the monotonic time of the next (``None``: none)."""
        heap = self._heap
        while heap:
            when, _, timer = heap[0]
            if timer.cancelled:
                heapq.heappop(heap)
                continue
            if when > time.monotonic():
                return when
            heapq.heappop(heap)
            call(timer.callback)
        return None
