"""A backend whose tasks are started from outside it: the in-process test server.

Under uWSGI the server starts each request's task. The test client
(:mod:`flask_websocket.testing`) has no server, so it asks a
:class:`TaskHost` to run each connection's WSGI call as a task of the
backend under test, from the test's own thread:

- ``gevent``: one daemon thread runs a gevent hub, and each call is a
  greenlet spawned there (all connections share that loop, as in one
  uWSGI worker);
- ``threads``: each call runs in a thread of its own, with the threads
  backend's loop thread reading the sockets, as under ``--threads N``.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, Optional

from .base import Backend

__all__ = ["MODELS", "TaskHost", "task_host"]

#: The models the test client can run handlers under.
MODELS = ("gevent", "threads")

_hosts: Dict[str, TaskHost] = {}
_hosts_lock = threading.Lock()


class TaskHost:
    """Runs functions as tasks of one backend, started from any thread."""

    def __init__(self, model: str) -> None:
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r} for the test client: use one of {MODELS}")
        self.model = model
        self._hub: Any = None
        self.thread: Optional[threading.Thread] = None
        if model == "gevent":
            ready = threading.Event()
            made: Dict[str, Backend] = {}
            self.thread = threading.Thread(
                target=self._run_gevent,
                args=(ready, made),
                name="websocket-test-server",
                daemon=True,
            )
            self.thread.start()
            ready.wait()
            self.backend: Backend = made["backend"]
        else:
            from .threads import ThreadBackend

            self.backend = ThreadBackend("threads")

    def _run_gevent(self, ready: threading.Event, made: Dict[str, Backend]) -> None:
        import gevent

        from .gevent import GeventBackend

        self._hub = gevent.get_hub()
        made["backend"] = GeventBackend()  # in this thread: its hub serves the connections
        ready.set()
        while True:  # keep the loop alive; work arrives through submit()
            gevent.sleep(3600)

    @property
    def alive(self) -> bool:
        """False once the host's loop thread has died (it never should)."""
        return self.thread is None or self.thread.is_alive()

    def submit(self, function: Callable[[], Any]) -> None:
        """Run ``function()`` as a new task of the backend (``Backend.spawn``)."""
        if self.model == "gevent":  # spawned from the hub's own thread
            self._hub.loop.run_callback_threadsafe(self.backend.spawn, function)
        else:
            self.backend.spawn(function)


def task_host(model: str) -> TaskHost:
    """This process's host for ``model``, made on first use."""
    with _hosts_lock:
        host = _hosts.get(model)
        if host is None or not host.alive:
            host = _hosts[model] = TaskHost(model)
        return host
