"""The memory hub: one process, nothing to carry."""

from __future__ import annotations

from typing import List

from .base import Envelope, Hub

__all__ = ["MemoryHub"]


class MemoryHub(Hub):
    """Rooms and broadcast inside one worker process (``memory://``)."""

    scheme = "memory"

    def _start(self) -> None:
        pass

    def _stop(self) -> None:
        pass

    def _publish(self, envelope: Envelope) -> None:
        pass  # the registry delivered it: there is no other process

    def _remote_members(self, room: str) -> List[str]:
        return []
