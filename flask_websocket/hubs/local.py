"""The local hub: the workers of one host, over unix sockets, no external service.

Each worker listens on a unix ``SOCK_SEQPACKET`` socket in Linux's abstract
namespace, named ``flask-websocket/<group>/w<worker>-<pid>-<node>``, and
keeps one connection to each other worker of its group, over which it sends
its broadcasts and presence questions. Why connections of sequenced packets:

- message boundaries are kept, so there is no framing to write;
- a connected pair is bounded by bytes (the sender's ``SO_SNDBUF``), not by
  the receive queue of a datagram socket, which holds only
  ``net.unix.max_dgram_qlen`` (10 by default) datagrams however small;
- a dead peer shows at once (end of stream, ``EPIPE``), so a worker that was
  killed is forgotten quietly: its clients went with it;
- ``SO_PEERCRED`` says which user is at the other end, checked by the
  kernel: both ends refuse a process of another user, root excepted
  (abstract unix names have no file permissions, so anyone on the host may
  connect).

**Finding each other.** A process binds its socket, then lists the bound
names of its group (``/proc/net/unix``), connects to each and says hello
(with its own address); each peer adds the newcomer and answers. Since every
process binds before it lists, of any two processes the later one sees the
earlier, and its hello introduces it to the earlier one. ``start()`` waits
briefly for the answers, so broadcasts reach a worker from the moment its
hub has started. The listing is read again now and then, as a safety net.

**Sending.** Each peer connection has one queue: a message is written at once
when nothing waits before it, otherwise queued and written, in order, when
the socket is writable. So any number of tasks may publish at once, and each
peer receives the messages of each publisher in the order they were sent. A
publisher waits until its message is in every peer's socket, at most
``send_timeout``; a peer that is alive but has not taken it by then is named
in a :class:`~.base.HubError`, and the message is withdrawn from that peer's
queue (it never arrives late). A publisher in the event loop, which cannot
wait, queues the message and goes on; each queue is bounded
(``max_queued_bytes``), and a publisher that would overflow it gets a
:class:`~.base.HubError` at once.

**Presence** asks every peer for its members of a room and waits for every
answer, at most ``presence_timeout``: a peer that dies meanwhile is not
counted, a live peer that does not answer in time is a :class:`~.base.HubError`.

Processes that serve no WebSocket (a ``flask`` CLI command, a script) only
publish: they connect to the workers but do not listen themselves.
"""

from __future__ import annotations

import _socket
import contextlib
import logging
import os
import socket
import struct
import time
from collections import deque
from typing import Any, Deque, Dict, List, Mapping, Optional, Set, Tuple

from .. import transport
from ..concurrency.base import Backend, Event, Timer, Watcher
from ..config import option_error
from ..exceptions import ConfigurationError
from ..history import HistoryStore
from .base import Envelope, Hub, HubError, RateLimitedLog

__all__ = ["MAX_MESSAGE", "LocalHub", "group_addresses"]

logger = logging.getLogger("flask_websocket.hubs")

_PREFIX = "flask-websocket/"
#: Largest message between workers, in bytes. A sequenced packet must fit the
#: sender's socket buffer (208 KiB by default on Linux, the least it can be).
MAX_MESSAGE = 192 * 1024
#: Bytes queued for one peer before publishers that cannot wait are refused.
DEFAULT_MAX_QUEUED = 16 * 2**20
#: Messages read, or connections accepted, per readiness callback (fairness).
_BATCH = 64
#: Seconds between two readings of the bound names, at most (a safety net:
#: hellos introduce new workers at once).
_RELIST_INTERVAL = 5.0
_SO_PEERCRED = getattr(socket, "SO_PEERCRED", 17)
_CREDENTIALS = struct.Struct("3i")  # pid, uid, gid
_SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)

# Message types: the first byte of every packet.
_ENVELOPE = b"E"  # a broadcast (publisher -> peer)
_HELLO = b"H"  # first packet on a connection: the sender's listening address, or empty
_WELCOME = b"W"  # the answer to a hello
_QUERY = b"Q"  # presence: request id, room
_ANSWER = b"A"  # presence: request id, member ids separated by "\n"
_REQUEST_ID = struct.Struct("!I")

#: Errors that mean the other end is gone (or was never there).
_GONE = (
    BrokenPipeError,
    ConnectionResetError,
    ConnectionRefusedError,
    FileNotFoundError,
    ConnectionAbortedError,
)


class _Delivery:
    """One message on its way to several peers; its publisher may wait for it."""

    __slots__ = ("_backend", "done", "left")

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        #: Set when no peer is left to take it; made once a peer queues it.
        self.done: Optional[Event] = None
        self.left = 0

    def queued(self) -> None:
        """One more peer queued the message."""
        if self.done is None:
            self.done = self._backend.event()
        self.left += 1

    def settle(self) -> None:
        """One peer took the message (or is gone)."""
        self.left -= 1
        if self.left <= 0 and self.done is not None:
            self.done.set()


class _Item:
    """A packet waiting in a link's queue."""

    __slots__ = ("data", "delivery")

    def __init__(self, data: bytes, delivery: Optional[_Delivery]) -> None:
        self.data = data
        self.delivery = delivery


class _Link:
    """One connection with another process, and the packets waiting to be written to it.

    An outbound link is ours, to a peer's listening socket (``address``); an
    inbound link was accepted by our listening socket (``address`` is empty).
    """

    def __init__(self, hub: LocalHub, sock: _socket.socket, address: str = "") -> None:
        self.hub = hub
        self.sock = sock
        self.address = address
        #: Connected and checked (an outbound link starts by connecting).
        self.open = not address
        self.welcomed = False
        self.closed = False
        self.queue: Deque[_Item] = deque()
        self.queued_bytes = 0
        backend = hub.backend
        fd = sock.fileno()
        self.reader: Watcher = backend.watch_readable(fd, self.on_readable)
        self.writer: Watcher = backend.watch_writable(fd, self.on_writable)
        self.retry: Optional[Timer] = None
        self.retry_delay = 0.005

    @property
    def name(self) -> str:
        """The peer, as people read it: ``w2-1234-<node>``."""
        return self.address.rsplit("/", 1)[-1] if self.address else "an inbound connection"

    # -- writing ---------------------------------------------------------------

    def send(self, data: bytes, delivery: Optional[_Delivery] = None) -> Optional[_Item]:
        """Write ``data`` now if nothing waits before it; else queue it and return its item.

        Raises:
            HubError: the queue is over its bound (``max_queued_bytes``).
        """
        if self.open and not self.queue:
            try:
                self.sock.send(data, _SEND_FLAGS)
                return None
            except (BlockingIOError, InterruptedError):
                pass
            except _GONE:
                self.hub._lost(self)
                return None
            except OSError as exc:
                raise HubError(f"local hub: cannot send to {self.name}: {exc}") from exc
        if self.queued_bytes + len(data) > self.hub.max_queued_bytes:
            raise HubError(
                f"local hub: {self.queued_bytes} bytes already wait for {self.name}, which "
                "is not reading (max_queued_bytes)"
            )
        item = _Item(data, delivery)
        self.queue.append(item)
        self.queued_bytes += len(data)
        if delivery is not None:
            delivery.queued()
        if self.open:
            self.writer.start()
        return item

    def withdraw(self, item: _Item) -> bool:
        """Take ``item`` out of the queue if it was not written yet; ``True`` if it was there."""
        try:
            self.queue.remove(item)
        except ValueError:
            return False
        self.queued_bytes -= len(item.data)
        if not self.queue:
            self.writer.stop()
        return True

    def on_writable(self) -> None:
        """Write what waits, in order, until the socket is full again."""
        queue = self.queue
        while queue:
            item = queue[0]
            try:
                self.sock.send(item.data, _SEND_FLAGS)
            except (BlockingIOError, InterruptedError):
                return
            except _GONE:
                self.hub._lost(self)
                return
            except OSError as exc:  # this packet only (EMSGSIZE...): drop it, say so
                self.hub.log.warning(
                    "send-error", "local hub: could not send to %s (%s)", self.name, exc
                )
            queue.popleft()
            self.queued_bytes -= len(item.data)
            if item.delivery is not None:
                item.delivery.settle()
        self.writer.stop()

    # -- connecting (outbound links) -------------------------------------------

    def connect(self) -> None:
        """Connect to the peer's listening socket; write the queue once connected."""
        self.retry = None
        if self.closed:
            return
        try:
            # Bytes: PyPy under uWSGI refuses a NUL in a str address.
            self.sock.connect(self.address.encode())
        except (BlockingIOError, InterruptedError):  # its backlog is full: try again soon
            self.retry = self.hub.backend.call_later(self.retry_delay, self.connect)
            self.retry_delay = min(self.retry_delay * 2, 0.2)
            return
        except _GONE:
            self.hub._lost(self)
            return
        except OSError as exc:
            self.hub.log.warning("connect", "local hub: cannot connect to %s (%s)", self.name, exc)
            self.hub._lost(self)
            return
        if not self.hub._same_user(self.sock, f"the socket {self.address[1:]!r}"):
            self.hub._lost(self, refused=True)
            return
        self.open = True
        self.reader.start()
        if self.queue:
            self.writer.start()

    # -- reading ----------------------------------------------------------------

    def on_readable(self) -> None:
        """Read the packets that are there (a batch at most) and act on each."""
        hub = self.hub
        buffer = hub._buffer
        for _ in range(_BATCH):
            try:
                size = self.sock.recv_into(buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                hub._lost(self)
                return
            if size == 0:  # end of stream: the peer closed or died
                hub._lost(self)
                return
            if size > MAX_MESSAGE:
                hub.log.warning("too-large", "local hub: dropped a packet over %d bytes", size)
                continue
            try:
                hub._handle(self, bytes(buffer[:size]))
            except Exception:  # one bad packet must not stop the others
                hub.log.exception("handle", "local hub: error handling a packet")
            if self.closed:
                return

    def close(self) -> None:
        """Stop watching and close the socket (queued packets are dropped)."""
        if self.closed:
            return
        self.closed = True
        if self.retry is not None:
            self.retry.cancel()
            self.retry = None
        self.reader.close()  # before the fd goes: see docs/design.md (libev)
        self.writer.close()
        self.sock.close()


class _Query:
    """A presence question to every peer, and the answers so far."""

    __slots__ = ("answers", "done", "waiting")

    def __init__(self, done: Event, waiting: Set[_Link]) -> None:
        self.done = done
        self.waiting = waiting
        self.answers: List[str] = []

    def answered(self, link: _Link, members: List[str]) -> None:
        if link in self.waiting:
            self.waiting.discard(link)
            self.answers.extend(members)
            if not self.waiting:
                self.done.set()

    def gone(self, link: _Link) -> None:
        self.waiting.discard(link)
        if not self.waiting:
            self.done.set()


class LocalHub(Hub):
    """Rooms and broadcast across the processes of one host (``local://``).

    Options (``WEBSOCKET_HUB_OPTIONS``):

    ``name``
        the group: processes of the same user with the same name share
        rooms. The extension's default names the deployment (the app's
        import name, the real path of its directory and its ``SECRET_KEY``),
        so two deployments on one host share nothing unless given the same
        name.
    ``send_timeout``
        seconds a broadcast waits for a peer that is alive but not reading
        before a :class:`~.base.HubError` names it (default 1.0).
    ``presence_timeout``
        seconds ``members()`` waits for every peer's answer (default 1.0).
    ``max_queued_bytes``
        bytes queued for one peer, at most (default 16 MiB).
    ``listen``
        whether this process receives broadcasts (default: under uWSGI
        only; other processes publish and ask, but hold no connections).
    """

    scheme = "local"
    max_payload = MAX_MESSAGE - 1024

    def __init__(
        self,
        registry: Any,
        options: Optional[Mapping[str, Any]] = None,
        backend: Optional[Backend] = None,
    ) -> None:
        super().__init__(registry, options, backend)
        name = str(self.options.get("name") or "app")
        if "/" in name or len(name) > 60 or any(ord(c) < 33 for c in name):
            raise option_error(
                "local", "name", name, "at most 60 characters, no '/', spaces or control characters"
            )
        self.group = f"{_PREFIX}{name}/"
        # Unique per process and registry; the worker number is there for
        # people reading `ss -x` output.
        worker = transport.worker_id()
        self.address = "\0" + self.group + f"w{worker or 0}-{os.getpid()}-{registry.node_id}"
        self.send_timeout = _positive(self.options, "send_timeout", 1.0)
        self.presence_timeout = _positive(self.options, "presence_timeout", 1.0)
        self.max_queued_bytes = int(_positive(self.options, "max_queued_bytes", DEFAULT_MAX_QUEUED))
        listen = self.options.get("listen")
        self.listening = worker is not None if listen is None else bool(listen)
        self.log = RateLimitedLog(logger)
        self._uid = os.geteuid()
        self._listener: Optional[_socket.socket] = None
        self._accepter: Optional[Watcher] = None
        #: Outbound links, by the peer's address.
        self._peers: Dict[str, _Link] = {}
        self._inbound: Set[_Link] = set()
        #: Addresses that are not ours to talk to (another user's), ignored.
        self._foreign: Set[str] = set()
        self._listed_at = 0.0
        self._queries: Dict[int, _Query] = {}
        self._next_query = 0
        self._buffer = bytearray(MAX_MESSAGE + 1)
        self._warned_alone = False

    # -- hooks -----------------------------------------------------------------

    def _start(self) -> None:
        if self.listening:
            self._listen()
        for address in self._list():
            self._peer(address)
        self._wait_welcomed()

    def _stop(self) -> None:
        if self._accepter is not None:
            self._accepter.close()
            self._accepter = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for link in [*self._peers.values(), *self._inbound]:
            self._lost(link)
        self._peers.clear()
        self._inbound.clear()

    def _publish(self, envelope: Envelope) -> None:
        self._relist_if_stale()
        links = list(self._peers.values())
        if not links:
            self._warn_if_alone()
            return
        data = _ENVELOPE + envelope.encode()
        delivery = _Delivery(self.backend)
        queued: List[Tuple[_Link, _Item]] = []
        refused: List[str] = []
        for link in links:
            try:
                item = link.send(data, delivery)
            except HubError as exc:
                refused.append(str(exc))
                continue
            if item is not None:
                queued.append((link, item))
        if queued and not self.backend.in_event_loop():
            if delivery.done is not None and delivery.left > 0:
                delivery.done.wait(self.send_timeout)
            late = [link.name for link, item in queued if link.withdraw(item)]
            if late:
                refused.append(
                    f"{len(late)} of {len(links)} other workers did not take it within "
                    f"{self.send_timeout:g} s (alive but not reading: {', '.join(late)})"
                )
        if refused:
            raise HubError(
                "local hub: the broadcast did not reach every worker: "
                + "; ".join(refused)
                + ". Members in this process and in the other workers have it."
            )

    def _remote_members(self, room: str) -> List[str]:
        self._relist_if_stale()
        links = [link for link in self._peers.values() if not link.closed]
        if not links:
            return []
        if self.backend.in_event_loop():
            raise HubError("local hub: members() cannot wait for other workers in the event loop")
        self._next_query = (self._next_query + 1) % 2**32
        query_id = self._next_query
        query = _Query(self.backend.event(), set(links))
        self._queries[query_id] = query
        packet = _QUERY + _REQUEST_ID.pack(query_id) + room.encode()
        try:
            for link in links:
                with contextlib.suppress(HubError):  # counted below: it does not answer
                    link.send(packet)
            if query.waiting:
                query.done.wait(self.presence_timeout)
        finally:
            self._queries.pop(query_id, None)
        silent = [link.name for link in query.waiting if not link.closed]
        if silent:
            raise HubError(
                f"local hub: no presence answer within {self.presence_timeout:g} s from "
                + ", ".join(sorted(silent))
            )
        return query.answers

    # -- peers -----------------------------------------------------------------

    def _listen(self) -> None:
        sock = _socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.bind(self.address.encode())  # bytes: see _Link.connect
            sock.listen(socket.SOMAXCONN)
        except OSError as exc:
            sock.close()
            raise ConfigurationError(
                f"cannot bind the local hub socket {self.address[1:]!r} ({exc})"
            ) from exc
        sock.setblocking(False)
        self._listener = sock
        self._accepter = self.backend.watch_readable(sock.fileno(), self._on_acceptable)
        self._accepter.start()

    def _list(self) -> List[str]:
        """The listening addresses of the other processes of the group, from the kernel."""
        self._listed_at = time.monotonic()
        found = set(group_addresses(self.group))
        found.discard(self.address)
        return sorted(found - self._foreign)

    def _relist_if_stale(self) -> None:
        if time.monotonic() - self._listed_at > _RELIST_INTERVAL:
            try:
                addresses = self._list()
            except ConfigurationError as exc:  # /proc unreadable for a moment: keep the peers
                self.log.warning("list", "local hub: cannot list the other workers (%s)", exc)
                return
            for address in addresses:
                self._peer(address)

    def _peer(self, address: str) -> Optional[_Link]:
        """The outbound link to ``address``, made (and introduced with a hello) if new."""
        link = self._peers.get(address)
        if link is not None or address in self._foreign:
            return link
        try:
            sock = _socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError as exc:  # out of file descriptors: try again at the next listing
            self.log.warning("socket", "local hub: cannot open a socket (%s)", exc)
            return None
        sock.setblocking(False)
        with contextlib.suppress(OSError):  # as much as the host allows
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 2**20)
        link = self._peers[address] = _Link(self, sock, address)
        own = self.address.encode() if self.listening else b""
        link.send(_HELLO + own)
        link.connect()
        return link if not link.closed else None

    def _wait_welcomed(self) -> None:
        """Wait (briefly) until every peer answered our hello: it knows us now."""
        if self.backend.in_event_loop():
            return
        deadline = time.monotonic() + self.presence_timeout
        while True:
            waiting = [link for link in self._peers.values() if not link.welcomed]
            remaining = deadline - time.monotonic()
            if not waiting or remaining <= 0:
                return
            self.backend.sleep(min(remaining, 0.005))

    def _same_user(self, sock: _socket.socket, what: str) -> bool:
        """True if the process at the other end of ``sock`` runs as our user (or root)."""
        try:
            pid, uid, _ = _CREDENTIALS.unpack(
                sock.getsockopt(socket.SOL_SOCKET, _SO_PEERCRED, _CREDENTIALS.size)
            )
        except OSError as exc:
            self.log.warning("credentials", "local hub: no credentials for %s (%s)", what, exc)
            return False
        if uid == self._uid or uid == 0:  # root may do anything anyway
            return True
        self.log.warning(
            "foreign",
            "local hub: refused %s: process %d runs as uid %d, this app as uid %d",
            what,
            pid,
            uid,
            self._uid,
        )
        return False

    def _on_acceptable(self) -> None:
        listener = self._listener
        for _ in range(_BATCH):
            if listener is None:
                return
            try:
                fd, _ = listener._accept()  # type: ignore[attr-defined]  # _socket's: an fd
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE...: the peer retries, we log
                self.log.warning("accept", "local hub: accept failed (%s)", exc)
                return
            sock = _socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, 0, fd)
            if not self._same_user(sock, "a connection"):
                sock.close()
                continue
            sock.setblocking(False)
            link = _Link(self, sock)
            self._inbound.add(link)
            link.reader.start()

    def _lost(self, link: _Link, refused: bool = False) -> None:
        """Forget ``link``: its process is gone (or is not ours to talk to)."""
        if link.closed:
            return
        link.close()
        if link.address:
            if self._peers.get(link.address) is link:
                del self._peers[link.address]
            if refused:
                self._foreign.add(link.address)
        else:
            self._inbound.discard(link)
        for item in link.queue:  # nothing more will be written: do not keep anyone waiting
            if item.delivery is not None:
                item.delivery.settle()
        link.queue.clear()
        link.queued_bytes = 0
        for query in self._queries.values():
            query.gone(link)
        link.welcomed = True

    def _make_history_store(self) -> HistoryStore:
        """The deployment's SQLite database, in its user's private directory."""
        from ..sqlite_history import SqliteStore, private_directory

        name = self.group[len(_PREFIX) : -1]
        return SqliteStore(private_directory() / f"{name}.sqlite3")

    def _warn_if_alone(self) -> None:
        if self.listening or self._warned_alone:
            return
        self._warned_alone = True
        logger.warning(
            "local hub: no worker of this app listens on this host (group %r), so this "
            "broadcast reached nobody. Workers and this process find each other when they "
            "run the same app from the same directory with the same SECRET_KEY as the same "
            "user, or when both set the same WEBSOCKET_HUB_OPTIONS['name'].",
            self.group[len(_PREFIX) : -1],
        )

    # -- receiving ---------------------------------------------------------------

    def _handle(self, link: _Link, data: bytes) -> None:
        kind, body = data[:1], data[1:]
        try:
            if kind == _ENVELOPE:
                self.receive(body)
            elif kind == _QUERY:
                self._answer(link, body)
            elif kind == _ANSWER:
                (query_id,) = _REQUEST_ID.unpack_from(body)
                query = self._queries.get(query_id)
                if query is not None:  # else too late: the asker stopped waiting
                    text = body[_REQUEST_ID.size :].decode()
                    query.answered(link, text.split("\n") if text else [])
            elif kind == _HELLO:
                self._hello(link, body.decode())
            elif kind == _WELCOME:
                link.welcomed = True
            else:
                raise ValueError(f"unknown packet type {kind!r}")
        except (ValueError, struct.error) as exc:  # UnicodeDecodeError is a ValueError
            self.log.warning("malformed", "local hub: dropped a malformed packet (%s)", exc)

    def _answer(self, link: _Link, body: bytes) -> None:
        """Answer a presence query with this process's members of the room."""
        (query_id,) = _REQUEST_ID.unpack_from(body)
        room = body[_REQUEST_ID.size :].decode()
        members = "\n".join(self.registry.local_members(room)).encode()
        with contextlib.suppress(HubError):  # the asker is not reading: it gets no answer
            link.send(_ANSWER + _REQUEST_ID.pack(query_id) + members)

    def _hello(self, link: _Link, address: str) -> None:
        """A process introduces itself: talk to it from now on (if it listens)."""
        if address:
            if not address.startswith("\0" + self.group) or "\n" in address:
                raise ValueError(f"a hello from outside the group ({address[1:]!r})")
            if address != self.address:
                self._peer(address)
        with contextlib.suppress(HubError):
            link.send(_WELCOME)


def _positive(options: Mapping[str, Any], name: str, default: float) -> float:
    value = options.get(name, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise option_error("local", name, value, "a number above 0")
    return float(value)


def group_addresses(group: str) -> List[str]:
    """The abstract unix names of listening sockets on this host that start with ``group``.

    Read from ``/proc/net/unix``, where abstract names show as ``@name``;
    only listening sockets (flag ``__SO_ACCEPTCON``) count.
    """
    names = []
    marker = "@" + group
    try:
        with open("/proc/net/unix") as table:
            next(table, None)
            for line in table:
                parts = line.split()
                if (
                    len(parts) >= 8
                    and parts[7].startswith(marker)
                    and int(parts[3], 16) & 0x10000  # listening
                ):
                    names.append("\0" + parts[7][1:])
    except OSError as exc:  # pragma: no cover - not Linux
        raise ConfigurationError(
            f"the local hub needs Linux's /proc/net/unix ({exc}); use "
            "WEBSOCKET_HUB_URL = 'redis://...' elsewhere"
        ) from exc
    return names
