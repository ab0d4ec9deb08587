"""One message to many connections: the hot path of every broadcast.

A room's members are grouped by their
:attr:`~flask_websocket.connection.WebSocketConnection.frame_kind` (plain,
``fws.v1``, compressed alike) when the room's membership changes, not on
every broadcast. A broadcast frames its message once per group and offers
the same bytes to each member of the group
(:func:`~flask_websocket.connection.offer_frame_to_each`: straight to the
socket when nothing waits there). Members compressing with context takeover
(a kind of ``None``) get a frame each.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Dict, Hashable, Iterable, List, Optional, Tuple

from .connection import offer_frame_to_each

if TYPE_CHECKING:  # pragma: no cover
    from .connection import WebSocketConnection

__all__ = ["Groups", "group_by_kind", "offer_to_groups"]

#: Connections grouped by frame kind: ``(kind, members)`` pairs.
Groups = List[Tuple[Optional[Hashable], List["WebSocketConnection"]]]


def group_by_kind(members: Iterable[WebSocketConnection]) -> Groups:
    """``members`` grouped by the frame they get (their ``frame_kind``)."""
    by_kind: Dict[Optional[Hashable], List[WebSocketConnection]] = {}
    for connection in members:
        by_kind.setdefault(connection.frame_kind, []).append(connection)
    return list(by_kind.items())


def offer_to_groups(
    groups: Groups,
    frame_for: Callable[[WebSocketConnection], bytes],
    skipped: Optional[WebSocketConnection] = None,
) -> int:
    """Offer a message to every member of ``groups`` but ``skipped``; how many took it.

    ``frame_for(connection)`` frames the message for a connection: it is
    called once per group, and once per member of the group of kind ``None``.
    """
    delivered = 0
    for kind, connections in groups:
        if kind is None:
            for connection in connections:
                if connection is not skipped:
                    delivered += offer_frame_to_each(frame_for(connection), [connection])
        elif len(connections) > 1 or connections[0] is not skipped:
            frame = frame_for(connections[0])
            delivered += offer_frame_to_each(frame, connections, skipped)
    return delivered
