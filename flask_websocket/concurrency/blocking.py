"""Threads for code that blocks, next to whatever event loop serves the connections.

Some work cannot be made to wait on the backend's watchers: redis-py's calls
block on their sockets. The redis hub runs them in threads of its own (a
listener, a maintainer) and, for calls a handler waits on, in a small pool
(:meth:`~flask_websocket.concurrency.base.Backend.run_blocking`). This module
gives that code its threads, locks and events, so that nothing outside
``flask_websocket/concurrency/`` imports :mod:`threading`.

Everything here looks :mod:`threading` up at call time: where gevent has
monkey-patched the standard library (``uwsgi --gevent-early-monkey-patch``),
the threads are greenlets and the locks cooperative, and blocking socket
calls in them let the other greenlets run; elsewhere they are system threads.
Code in these threads never touches connections or the room registry: it
hands results to the event loop with
:meth:`~flask_websocket.concurrency.base.Backend.call_soon_threadsafe`.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from typing import Any, Callable, Optional

__all__ = [
    "executor",
    "start_thread",
    "system_lock",
    "thread_condition",
    "thread_event",
    "thread_lock",
    "thread_rlock",
]

#: Threads of the pool behind ``Backend.run_blocking``, per process.
POOL_SIZE = 8

_executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
_executor_pid = 0
_executor_lock = threading.Lock()


def start_thread(function: Callable[..., Any], *args: Any, name: str) -> Any:
    """Run ``function(*args)`` in a daemon thread of its own; the started thread."""
    thread = threading.Thread(target=function, args=args, name=name, daemon=True)
    thread.start()
    return thread


def thread_lock() -> Any:
    """A lock for state shared with those threads (hold it briefly, never across I/O)."""
    return threading.Lock()


def system_lock() -> Any:
    """A lock of the operating system, even where gevent patched :mod:`threading`.

    For state that system threads share (``Backend.run_in_thread``: SQLite's
    calls): a cooperative lock that two of them want at once hangs them,
    since neither runs the gevent hub that would wake it. Hold it briefly.
    """
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return threading.Lock()
    if monkey.is_module_patched("threading"):
        return monkey.get_original("_thread", "allocate_lock")()
    return threading.Lock()


def thread_rlock() -> Any:
    """A re-entrant lock for state shared with those threads."""
    return threading.RLock()


def thread_condition(lock: Any) -> Any:
    """A condition variable on ``lock``, for a thread that waits for another."""
    return threading.Condition(lock)


def thread_event() -> Any:
    """An event a thread can sleep on with a timeout (:class:`threading.Event`)."""
    return threading.Event()


def executor() -> concurrent.futures.ThreadPoolExecutor:
    """This process's pool for blocking calls (made after the fork, on first use)."""
    global _executor, _executor_pid
    pool = _executor
    if pool is None or _executor_pid != os.getpid():
        with _executor_lock:
            if _executor is None or _executor_pid != os.getpid():
                _executor = concurrent.futures.ThreadPoolExecutor(
                    POOL_SIZE, thread_name_prefix="flask-websocket-blocking"
                )
                _executor_pid = os.getpid()
            pool = _executor
    return pool
