"""Threads and processes: ``--threads N`` and ``--processes N`` without gevent.

Each connection's handler runs in the thread uWSGI gave the request and
sleeps on a condition variable; the socket is read by the process's
:class:`~flask_websocket.concurrency.loop.LoopThread`. With ``--processes N``
and no threads a worker serves one connection at a time.
"""

from __future__ import annotations

import threading
from typing import Any, Optional

from .base import Wakeup
from .loop import LoopBackend

__all__ = ["ThreadBackend"]


class ThreadWakeup(Wakeup):
    """One thread sleeps on a condition of the backend's guard until notified."""

    __slots__ = ("_condition", "_notified", "_waiting")

    def __init__(self, guard: Any) -> None:
        self._condition = threading.Condition(guard)
        self._notified = False
        self._waiting = False

    @property
    def waiting(self) -> bool:
        return self._waiting

    def wait(self, timeout: Optional[float] = None) -> bool:
        with self._condition:
            if not self._notified:
                if self._waiting:
                    raise RuntimeError("another thread is already waiting on this connection")
                self._waiting = True
                try:
                    self._condition.wait_for(lambda: self._notified, timeout)
                finally:
                    self._waiting = False
            notified = self._notified
            self._notified = False
            return notified

    def notify(self) -> None:
        with self._condition:
            self._notified = True
            self._condition.notify()


class ThreadBackend(LoopBackend):
    """Connections on OS threads: what ``--threads N`` and ``--processes N`` run."""

    name = "threads"

    def wakeup(self) -> Wakeup:
        return ThreadWakeup(self.guard)
