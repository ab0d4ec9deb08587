"""websockets peer: the library's asyncio server, its ``broadcast()`` for fan-out.

Production configuration: ``websockets.asyncio.server.serve`` with its
defaults, one process per core as websockets' "Deploy" docs advise (one
process here), on the listening socket peers.py passes down
(``serve(..., sock=...)``). Fan-out is what websockets' "Broadcasting" docs
show: the app keeps a set of connections and calls
``websockets.asyncio.server.broadcast(connections, message)``. That set is
per process, so the two-worker fan-out is a "cannot" (the docs leave
cross-process delivery to the app, e.g. its own Redis pub/sub).

Routes and texts as ``apps/flask_websocket_broadcast.py``; any other path
echoes. Started as ``python -m benchmarks.apps.websockets_app``.
"""

from __future__ import annotations

import asyncio
import signal

from websockets.asyncio.server import broadcast, serve

from benchmarks.apps import _peer

SUBSCRIBERS: set = set()


async def handler(ws) -> None:
    path = ws.request.path
    if path == "/sub":
        SUBSCRIBERS.add(ws)
        try:
            await ws.send(_peer.joined())
            await ws.wait_closed()
        finally:
            SUBSCRIBERS.discard(ws)
    elif path == "/pub":
        await ws.send(_peer.ready())
        async for message in ws:
            broadcast(SUBSCRIBERS, message)
            await ws.send(_peer.done(message))
    else:
        async for message in ws:
            await ws.send(message)


async def main() -> None:
    async with serve(handler, sock=_peer.listener()) as server:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, server.close)
        _peer.say_ready()
        await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(main())
