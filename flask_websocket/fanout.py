"""One message to many connections: the hot path of every broadcast.

A broadcast spends its time in one loop over the members of a room, and a
Python call per member, or even reading each member's state, cost as much
as the write system call. So the registry keeps each room's members in
:class:`Group`\\ s, one per frame kind (plain, ``fws.v1``, compressed
alike: :attr:`~flask_websocket.connection.WebSocketConnection.frame_kind`),
each with the fds of the members a frame may go straight to (their
``_direct_fd``: open, nothing queued). A broadcast frames its message once
per group and writes it to those fds with ``os.write``, in ascending fd
order (the kernel's part costs less so: :func:`_order_by_fd`), as an app on
uWSGI's own API would; the other members get it through
:meth:`~flask_websocket.connection.WebSocketConnection.offer_frame` (send
queue, overflow policy, closed).

The groups of a room are made on a broadcast and dropped when the room's
membership or a member's ``_direct_fd`` changes (the connection tells the
registry: :meth:`~flask_websocket.rooms.RoomRegistry.regroup`). A member's
fd is kept only while the room is in the member's own rooms, which is what
makes the connection tell. Within one broadcast, nothing but the loop runs
until a write fails: then the failing member is torn down, which may wake
its handler at once (gevent, in the hub), and that handler may close other
members; so the rest of the broadcast reads each member's state as its turn
comes. A short write leaves the rest of the frame for that member's queue,
queued when the loop is over (nothing else is written to it meanwhile).

This module reads and calls the connection's private parts
(``_direct_fd``, ``_rooms``, ``_queue``, ``_connection_lost``): it is the
connection's fast path, kept apart from it.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Callable, Dict, Hashable, Iterable, List, Optional, Tuple

from .exceptions import SendQueueFull

if TYPE_CHECKING:  # pragma: no cover
    from .connection import WebSocketConnection

__all__ = ["Group", "group_members", "offer_frame_to_each", "offer_to_groups"]

logger = logging.getLogger("flask_websocket")

#: ``os.write`` on the fd costs about 300 fewer CPU instructions per call
#: than ``socket.send`` (no timeout logic).
_write_fd = os.write
_BlockingErrors = (BlockingIOError, InterruptedError)


class Group:
    """Members that get the same frame: those with a direct fd, and the others."""

    __slots__ = ("direct", "fds", "kind", "others")

    def __init__(self, kind: Optional[Hashable]) -> None:
        #: The members' ``frame_kind``; ``None``: each needs a frame of its own.
        self.kind = kind
        #: The fds a frame may go straight to, and their connections, in step.
        self.fds: List[int] = []
        self.direct: List[WebSocketConnection] = []
        #: Members a frame goes to through ``offer_frame``.
        self.others: List[WebSocketConnection] = []


def group_members(
    members: Iterable[WebSocketConnection], room: Optional[str] = None
) -> List[Group]:
    """``members`` grouped by the frame they get.

    With ``room``, groups kept beyond this broadcast: a member's fd is
    taken only if the member lists ``room`` among its rooms (so that it
    tells the registry when the fd changes).
    """
    groups: Dict[Optional[Hashable], Group] = {}
    for connection in members:
        kind = connection.frame_kind
        group = groups.get(kind)
        if group is None:
            group = groups[kind] = Group(kind)
        fd = connection._direct_fd
        if (
            fd is not None
            and kind is not None
            and (room is None or (connection._rooms is not None and room in connection._rooms))
        ):
            group.fds.append(fd)
            group.direct.append(connection)
        else:
            group.others.append(connection)
    if room is not None:  # kept: worth putting in fd order once
        for group in groups.values():
            _order_by_fd(group)
    return list(groups.values())


def _order_by_fd(group: Group) -> None:
    """Put ``group``'s fds (and their connections, in step) in ascending order.

    The kernel's part of each write (finding the fd's file and the
    receiving socket) costs less when the writes go in fd order, the order
    in which the connections were accepted and their kernel objects
    allocated: at 1000 subscribers, the same writes in the order of the
    room's set of connections took 13 % more worker CPU per delivery
    (docs/performance.rst, "Found: the order of the writes").
    """
    fds = group.fds
    if len(fds) > 1:
        order = sorted(range(len(fds)), key=fds.__getitem__)
        direct = group.direct
        group.fds = [fds[index] for index in order]
        group.direct = [direct[index] for index in order]


def offer_to_groups(
    groups: List[Group],
    frame_for: Callable[[WebSocketConnection], bytes],
    skipped: Optional[WebSocketConnection] = None,
) -> int:
    """Offer a message to every member of ``groups`` but ``skipped``; how many took it.

    ``frame_for(connection)`` frames the message for a connection: it is
    called once per group, and once per member of a group of kind ``None``.
    """
    delivered = 0
    for group in groups:
        if group.kind is None:  # compressed with context takeover: a frame each
            for connection in group.others:
                if connection is not skipped:
                    delivered += offer_frame_to_each(frame_for(connection), [connection])
            continue
        first = group.direct[0] if group.direct else group.others[0]
        if len(group.direct) + len(group.others) == 1 and first is skipped:
            continue
        frame = frame_for(first)
        if group.fds:
            delivered += _write_to_each(frame, group, skipped)
        if group.others:
            delivered += offer_frame_to_each(frame, group.others, skipped)
    return delivered


def _write_to_each(frame: bytes, group: Group, skipped: Optional[WebSocketConnection]) -> int:
    """``frame`` to each fd of ``group`` (but ``skipped``'s); how many took it."""
    fds = group.fds
    skip_fd = skipped._direct_fd if skipped is not None else None
    if skip_fd is None:
        skip_fd = -1  # int against int: the cheap comparison
    write = _write_fd
    size = len(frame)
    short: List[Tuple[int, int]] = []
    delivered = 0
    for fd in fds:
        if fd == skip_fd:
            continue
        try:
            sent = write(fd, frame)
        except _BlockingErrors:
            sent = 0
        except OSError:
            # Lost: tear it down, which may run other handlers right away,
            # so the rest of the broadcast reads each member's state.
            _queue_rests(frame, group, short)
            index = fds.index(fd)
            group.direct[index]._connection_lost()
            return delivered + offer_frame_to_each(frame, group.direct[index + 1 :], skipped)
        delivered += 1
        if sent != size:  # the kernel took part, or none: the rest waits in a queue
            short.append((fd, sent))
    _queue_rests(frame, group, short)
    return delivered


def _queue_rests(frame: bytes, group: Group, short: List[Tuple[int, int]]) -> None:
    """Queue what the kernel did not take of ``frame``: ``(fd, bytes sent)`` each.

    After the loop (nothing else was written to those members meanwhile),
    so that the loop itself never needs a member's connection.
    """
    if not short:
        return
    fds = group.fds
    position: Callable[[int], int] = fds.index
    if len(short) > 16:  # a dict beats that many scans
        position = {fd: index for index, fd in enumerate(fds)}.__getitem__
    for fd, sent in short:
        connection = group.direct[position(fd)]
        connection._queue(memoryview(frame)[sent:] if sent else frame)


def offer_frame_to_each(
    frame: bytes,
    connections: List[WebSocketConnection],
    skipped: Optional[WebSocketConnection] = None,
) -> int:
    """Offer ``frame`` to each of ``connections`` but ``skipped``; how many took it.

    :meth:`~flask_websocket.connection.WebSocketConnection.offer_frame` for
    each, which reads the member's state as its turn comes: the path of the
    members without a direct fd, of the rest of a broadcast after a failed
    write, and of members compressing with context takeover. Under
    ``WEBSOCKET_SEND_QUEUE_OVERFLOW = "raise"`` a full queue drops the frame
    for that member, with a warning.
    """
    delivered = 0
    for connection in connections:
        if connection is skipped:
            continue
        try:
            if connection.offer_frame(frame):
                delivered += 1
        except SendQueueFull:
            logger.warning(
                "dropped a broadcast for %r: its send queue is full "
                "(WEBSOCKET_SEND_QUEUE_OVERFLOW = 'raise')",
                connection,
            )
    return delivered
