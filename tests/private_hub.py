"""A local hub (and history database) of a test's own, for apps on uWSGI."""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any, Dict, Iterator

from flask_websocket.sqlite_history import private_directory

__all__ = ["private_hub"]


@contextlib.contextmanager
def private_hub(prefix: str, **options: Any) -> Iterator[Dict[str, str]]:
    """Environment for a uWSGI app whose local hub (and history database) is its own.

    The local hub keeps rooms' history in an SQLite database per deployment
    that outlives the workers (and the test); this one gets a name of its
    own, and its files are removed afterwards (stop the server first).
    ``options`` are more of ``WEBSOCKET_HUB_OPTIONS``.
    """
    name = f"{prefix}-{os.getpid()}-{time.monotonic_ns()}"
    try:
        yield {"FLASK_WEBSOCKET_HUB_OPTIONS": json.dumps({**options, "name": name})}
    finally:
        directory = private_directory()
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                (directory / f"{name}.sqlite3{suffix}").unlink()
