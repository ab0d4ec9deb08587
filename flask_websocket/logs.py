"""Logging for what others can make happen at will: at most one line per kind of event.

Malformed packets, refused peers and refused handshakes are cheap to cause;
the log must say that they happen, and how often, without letting anyone
fill the disk.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Dict, Tuple

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """Logs at most one line per kind of event per ``interval`` seconds.

    For what other processes can make happen at will (malformed packets,
    refused peers): the log says it happens, and how often, without letting
    anyone fill the disk.
    """

    def __init__(self, target: logging.Logger, interval: float = 10.0) -> None:
        self._logger = target
        self._interval = interval
        self._last: Dict[str, Tuple[float, int]] = {}  # kind -> (logged at, suppressed since)

    def warning(self, kind: str, message: str, *args: Any) -> None:
        """Log ``message % args`` as a warning unless ``kind`` was logged lately."""
        self._log(logging.WARNING, kind, message, args, False)

    def exception(self, kind: str, message: str, *args: Any) -> None:
        """As :meth:`warning`, at ERROR level with the current traceback."""
        self._log(logging.ERROR, kind, message, args, True)

    def _log(self, level: int, kind: str, message: str, args: Any, exc_info: bool) -> None:
        now = time.monotonic()
        logged_at, suppressed = self._last.get(kind, (-self._interval, 0))
        if now - logged_at < self._interval:
            self._last[kind] = (logged_at, suppressed + 1)
            return
        if suppressed:
            message += f" ({suppressed} more like it in the last {now - logged_at:.0f} s)"
        self._last[kind] = (now, 0)
        self._logger.log(level, message, *args, exc_info=exc_info)
