"""A TCP relay the tests control: a network between a browser and uWSGI that can fail.

Chromium keeps an open WebSocket through ``context.set_offline(True)``, so a
test that needs the network to fail puts this relay between the page and
uWSGI (the page is loaded through it too: the server checks ``Origin``
against the host it sees) and fails it:

- :meth:`TcpRelay.cut` resets every connection it carries (an RST to both
  ends, ``SO_LINGER`` 0) and, for ``refuse_for`` seconds, resets each new
  one as soon as it is accepted: the network is down;
- :meth:`TcpRelay.refuse` does the latter only (open connections go on);
- :meth:`TcpRelay.blackhole` stops forwarding on the connections it carries
  without closing them (a path that died silently: only a heartbeat can
  tell); new connections go through.

It listens on 127.0.0.1 and forwards to 127.0.0.1 only, from an asyncio
loop in a thread of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import List, Optional, Set

import psutil

__all__ = ["Link", "TcpRelay", "worker_holding"]

_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends an RST
_CHUNK = 65536


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with an RST rather than a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    sock.close()


@dataclass(eq=False)
class Link:
    """One connection through the relay: the client's socket and ours to the target."""

    client: socket.socket
    upstream: socket.socket
    #: Our port towards the target: the peer port the target sees.
    upstream_port: int
    #: The first line the client sent (``GET /path HTTP/1.1``).
    request_line: str = ""
    #: The target answered ``101 Switching Protocols``: a WebSocket.
    upgraded: bool = False
    #: Forwarding stopped (:meth:`TcpRelay.blackhole`).
    dead: bool = False
    #: Cut: both ends get an RST.
    reset: bool = False
    tasks: List[asyncio.Task[None]] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)


class TcpRelay:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target_port``; see the module."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.port = 0
        self.accepted = 0
        self._links: Set[Link] = set()
        self._refuse_until = 0.0
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._listener: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self._acceptor: Optional[asyncio.Task[None]] = None
        self._openers: Set[asyncio.Task[None]] = set()
        self._ready = threading.Event()

    # -- from the test ---------------------------------------------------------

    def start(self) -> TcpRelay:
        """Listen on a free port (:attr:`port`) and forward until :meth:`stop`."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        listener.setblocking(False)
        self._listener = listener
        self.port = int(listener.getsockname()[1])
        self._thread = threading.Thread(target=self._run, name="tcp-relay", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the relay's loop did not start")
        return self

    def stop(self) -> None:
        """Reset every connection and stop listening."""
        if self._loop is None or self._thread is None:
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None

    def http_url(self, path: str = "/") -> str:
        """``http://`` URL of ``path`` through the relay."""
        return f"http://127.0.0.1:{self.port}{path}"

    def cut(self, refuse_for: float = 0.0) -> int:
        """Reset every open connection; reset new ones for ``refuse_for`` s. How many were cut."""
        count: int = self._call(self._cut(refuse_for))
        return count

    def refuse(self, seconds: float) -> None:
        """Reset each new connection for ``seconds``; open ones go on."""
        self._refuse_until = time.monotonic() + seconds

    def refusing(self) -> bool:
        """Whether new connections are refused now."""
        return time.monotonic() < self._refuse_until

    def blackhole(self) -> int:
        """Stop forwarding on every open connection, closing none. How many."""
        count: int = self._call(self._blackhole())
        return count

    def websockets(self) -> List[Link]:
        """The open connections that carry a WebSocket, oldest first."""
        links: List[Link] = self._call(self._websockets())
        return links

    def __enter__(self) -> TcpRelay:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- in the relay's loop -------------------------------------------------------

    def _call(self, coroutine: object) -> object:
        assert self._loop is not None, "the relay is not running"
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)  # type: ignore[arg-type]
        return future.result(10)

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        self._acceptor = loop.create_task(self._accept())
        loop.call_soon(self._ready.set)
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _shutdown(self) -> None:
        if self._acceptor is not None:
            self._acceptor.cancel()
            await asyncio.gather(self._acceptor, return_exceptions=True)
        await self._cut(0.0)
        for opener in list(self._openers):  # still connecting to the target
            opener.cancel()
        await asyncio.gather(*self._openers, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        while True:
            client, _ = await loop.sock_accept(self._listener)
            self.accepted += 1
            if self.refusing():
                _reset(client)
                continue
            opener = loop.create_task(self._open(client))
            self._openers.add(opener)
            opener.add_done_callback(self._openers.discard)

    async def _open(self, client: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        client.setblocking(False)
        upstream = socket.socket()
        upstream.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(upstream, self.target), 10)
        except (OSError, asyncio.TimeoutError):
            _reset(client)
            _reset(upstream)
            return
        except asyncio.CancelledError:
            _reset(client)
            _reset(upstream)
            raise
        link = Link(client, upstream, int(upstream.getsockname()[1]))
        self._links.add(link)
        link.tasks = [
            loop.create_task(self._pump(link, client, upstream, outbound=True)),
            loop.create_task(self._pump(link, upstream, client, outbound=False)),
        ]
        try:
            await asyncio.wait(link.tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            # Sockets are closed only once no task waits on them: a closed
            # descriptor's number may be reused at once by the next accept.
            for task in link.tasks:
                task.cancel()
            await asyncio.gather(*link.tasks, return_exceptions=True)
            failed = link.reset or any(
                not task.cancelled() and task.exception() is not None for task in link.tasks
            )
            self._links.discard(link)
            for sock in (client, upstream):
                if failed:
                    _reset(sock)
                else:
                    sock.close()
            link.closed.set()

    async def _pump(
        self, link: Link, source: socket.socket, sink: socket.socket, outbound: bool
    ) -> None:
        """Forward ``source`` to ``sink``; raises OSError when an end was reset."""
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(source, _CHUNK)
            if link.dead:
                if not data:
                    return
                continue  # swallowed: nothing goes through a dead path, not even an end
            if not data:
                sink.shutdown(socket.SHUT_WR)  # pass the end on; the other way goes on
                return
            if outbound and not link.request_line:
                link.request_line = data.split(b"\r\n", 1)[0].decode("latin-1")
            if not outbound and not link.upgraded and data.startswith(b"HTTP/1.1 101"):
                link.upgraded = True
            await loop.sock_sendall(sink, data)

    async def _cut(self, refuse_for: float) -> int:
        if refuse_for > 0:
            self.refuse(refuse_for)
        links = list(self._links)
        for link in links:
            link.reset = True
            for task in link.tasks:
                task.cancel()
        for link in links:
            await link.closed.wait()  # set by _open right after the cancelled tasks end
        return len(links)

    async def _blackhole(self) -> int:
        for link in self._links:
            link.dead = True
        return len(self._links)

    async def _websockets(self) -> List[Link]:
        return [link for link in self._links if link.upgraded]


def worker_holding(worker_pids: List[int], server_port: int, peer_port: int) -> Optional[int]:
    """The pid among ``worker_pids`` whose socket on ``server_port`` talks to ``peer_port``.

    Under ``--http-socket`` the worker itself holds each client's TCP
    connection (the relay's :attr:`Link.upstream_port` for a page behind it).
    """
    for pid in worker_pids:
        try:
            process = psutil.Process(pid)
            connections = getattr(process, "net_connections", process.connections)("tcp")
        except psutil.Error:
            continue
        for connection in connections:
            if (
                connection.laddr
                and connection.raddr
                and connection.laddr.port == server_port
                and connection.raddr.port == peer_port
            ):
                return pid
    return None
