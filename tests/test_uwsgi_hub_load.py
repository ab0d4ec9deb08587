"""The local hub as users load it: several workers, many senders at the same moment.

Every test here runs real uWSGI with 4 workers and checks deliveries one by
one: each message reaches each member exactly once, in the order its sender
sent it, and no connection is closed by the server. Sending one message at
a time hides what these find (see issue 9: the multi-worker chat lost three
quarters of its messages while every test that sent one at a time passed).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Dict, Iterator, List, Tuple

import psutil
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed

from tests.private_hub import private_hub
from tests.uwsgi_server import UwsgiServer

pytestmark = pytest.mark.uwsgi

#: uWSGI flags of the models whose workers listen for each other (local hub).
MODELS: Dict[str, Dict[str, object]] = {
    "gevent": {"gevent": 300, "extra": ["--gevent-early-monkey-patch"]},
    "threads": {"gevent": None, "extra": ["--threads", "64"]},
    "processes": {"gevent": None, "extra": []},
    "asyncio": {"gevent": None, "extra": ["--asyncio", "64", "--greenlet"]},
}
WORKERS = 4


def start(start_uwsgi, module: str, model: str = "gevent", **kwargs: object) -> UwsgiServer:
    options = dict(MODELS[model])
    options.update(kwargs)
    return start_uwsgi(module, processes=WORKERS, **options)  # type: ignore[no-any-return]


async def open_one(url: str) -> Tuple[ClientConnection, str]:
    ws = await async_connect(url, open_timeout=20, ping_interval=None, max_queue=None)
    return ws, str(await asyncio.wait_for(ws.recv(), 20))


async def one_per_worker(server: UwsgiServer, path: str) -> List[Tuple[ClientConnection, str]]:
    """A connection on each worker (the greeting says ``pid=<worker>``), bounded attempts.

    Which worker accepts is the kernel's choice: connections that land on a
    worker that has one already are closed again.
    """
    held: Dict[str, Tuple[ClientConnection, str]] = {}
    extra = []
    deadline = time.monotonic() + 60
    for _ in range(400):
        if len(held) == WORKERS or time.monotonic() > deadline:
            break
        ws, greeting = await open_one(server.url(path))
        pid = greeting.split("pid=")[1].split()[0]
        if pid in held:
            extra.append(ws)
            if len(extra) > 20:  # a busy worker keeps accepting: make room, try again
                await asyncio.gather(*(old.close() for old in extra))
                extra.clear()
            continue
        held[pid] = (ws, greeting)
    await asyncio.gather(*(old.close() for old in extra))
    assert len(held) == WORKERS, f"connections reached only workers {sorted(held)}"
    return list(held.values())


@pytest.mark.parametrize("model", sorted(MODELS))
def test_concurrent_broadcasts_from_one_worker_reach_every_worker(start_uwsgi, model: str) -> None:
    """50 tasks call broadcast() at once, 5 times over: all succeed, all delivered once."""
    server = start(start_uwsgi, "tests.apps.models:app", model)
    tasks, rounds = 50, 5

    async def scenario() -> Tuple[List[str], List[List[str]]]:
        members = await one_per_worker(server, "/storm/r")
        publisher = members[0][0]
        replies: List[str] = []
        try:
            for round_ in range(rounds):
                await publisher.send(f"storm:{tasks}:{round_}")
            received: List[List[str]] = []
            for ws, _ in members:
                got: List[str] = []
                while len(got) < tasks * rounds:
                    text = str(await asyncio.wait_for(ws.recv(), 30))
                    if text.startswith("stormed "):
                        replies.append(text)
                    else:
                        got.append(text)
                received.append(got)
            while len(replies) < rounds:
                replies.append(str(await asyncio.wait_for(publisher.recv(), 30)))
            return replies, received
        finally:
            await asyncio.gather(*(ws.close() for ws, _ in members))

    replies, received = asyncio.run(scenario())
    assert sorted(replies) == [f"stormed {r} ok={tasks} errors=[]" for r in range(rounds)]
    expected = sorted(f"{r}.{t}" for r in range(rounds) for t in range(tasks))
    for got in received:
        assert sorted(got) == expected  # every broadcast, exactly once
    assert server.crash_lines() == []
    assert "Traceback" not in server.log(), server.log()


def chat_burst(server: UwsgiServer, clients: int, per_client: int) -> Dict[str, object]:
    """``clients`` chat members send ``per_client`` messages each, all at the same moment."""

    async def scenario() -> Dict[str, object]:
        # At most half of the clients on one worker, so that most messages cross
        # workers (which worker accepts is uWSGI's choice: retry, bounded).
        members: List[Tuple[ClientConnection, str]] = []
        per_node: Dict[str, int] = {}
        for _ in range(clients * 20):
            if len(members) == clients:
                break
            ws = await async_connect(
                server.url(f"/ws/lobby?nick=c{len(members):02d}"),
                open_timeout=20,
                ping_interval=None,
                max_queue=None,
            )
            connection_id = json.loads(await asyncio.wait_for(ws.recv(), 20))["id"]
            node = connection_id.split(".")[0]
            if per_node.get(node, 0) >= clients // 2:
                await ws.close()
                continue
            per_node[node] = per_node.get(node, 0) + 1
            members.append((ws, connection_id))
        assert len(members) == clients, f"clients did not spread over workers: {per_node}"
        # Every member has joined (and announced itself) before anyone talks.
        got: List[List[Tuple[str, str]]] = [[] for _ in members]
        closed: Dict[int, object] = {}
        errors: List[str] = []
        expected = clients * per_client

        async def read(index: int, ws: ClientConnection) -> None:
            try:
                while len(got[index]) < expected:
                    data = json.loads(await ws.recv())
                    if data["type"] == "message":
                        got[index].append((data["from"], data["text"]))
                    elif data["type"] == "error":
                        errors.append(data["text"])
            except ConnectionClosed as exc:
                closed[index] = exc.rcvd.code if exc.rcvd else None

        async def talk(index: int, ws: ClientConnection) -> None:
            for n in range(per_client):
                await ws.send(json.dumps({"type": "message", "text": str(n)}))

        readers = [asyncio.create_task(read(i, ws)) for i, (ws, _) in enumerate(members)]
        await asyncio.gather(*(talk(i, ws) for i, (ws, _) in enumerate(members)))
        await asyncio.wait_for(asyncio.gather(*readers), 60)
        # Nothing more arrives afterwards (no duplicates late).
        await asyncio.sleep(0.3)
        extra = 0
        for ws, _ in members:
            while True:
                try:
                    data = json.loads(await asyncio.wait_for(ws.recv(), 0.05))
                except (asyncio.TimeoutError, ConnectionClosed):
                    break
                extra += data["type"] == "message"
        await asyncio.gather(*(ws.close() for ws, _ in members))
        return {"got": got, "closed": closed, "errors": errors, "extra": extra}

    return asyncio.run(scenario())


@pytest.mark.parametrize("model", ["gevent", "threads"])
def test_chat_twenty_clients_talking_at_once_across_four_workers(start_uwsgi, model: str) -> None:
    """The README's multi-worker chat: 20 clients send 5 messages each at the same moment."""
    clients, per_client = 20, 5
    with private_hub("load-chat") as env:  # the chat's rooms keep history: a fresh one
        server = start(start_uwsgi, "examples.chat:app", model, mode="http", env=env)
        result = chat_burst(server, clients, per_client)
        server.stop()
    assert result["closed"] == {}, "the server closed connections"
    assert result["errors"] == []
    assert result["extra"] == 0
    for got in result["got"]:  # type: ignore[attr-defined]
        by_sender: Dict[str, List[int]] = {}
        for sender, text in got:
            by_sender.setdefault(sender, []).append(int(text))
        # Exactly once each, and in the order each sender sent them.
        assert by_sender == {f"c{i:02d}": list(range(per_client)) for i in range(clients)}
    assert server.crash_lines() == []


def test_a_worker_killed_while_others_publish_is_forgotten_quietly(start_uwsgi) -> None:
    """kill -9 one worker of four while others broadcast: no error, nothing lost for the rest."""
    server = start(start_uwsgi, "tests.apps.models:app")
    per_publisher = 300

    async def scenario() -> Tuple[List[List[str]], Dict[int, object]]:
        members = await one_per_worker(server, "/room/k")
        victim_pid = int(members[-1][1].split("pid=")[1].split()[0])
        publishers = members[:-1]
        ids = [greeting.rsplit("id=", 1)[1] for _, greeting in publishers]
        closed: Dict[int, object] = {}

        async def publish(index: int, ws: ClientConnection) -> None:
            for n in range(per_publisher):
                await ws.send(f"{n}")
                if n == per_publisher // 3 and index == 0:
                    os.kill(victim_pid, signal.SIGKILL)
                await asyncio.sleep(0.002)

        async def read(index: int, ws: ClientConnection) -> List[str]:
            got: List[str] = []
            try:
                while len(got) < per_publisher * len(publishers):
                    got.append(str(await asyncio.wait_for(ws.recv(), 30)))
            except ConnectionClosed as exc:
                closed[index] = exc.rcvd.code if exc.rcvd else None
            return got

        readers = [asyncio.create_task(read(i, ws)) for i, (ws, _) in enumerate(publishers)]
        await asyncio.gather(*(publish(i, ws) for i, (ws, _) in enumerate(publishers)))
        received = await asyncio.gather(*readers)
        await asyncio.gather(*(ws.close() for ws, _ in members), return_exceptions=True)
        return [[*map(str, ids)], *received], closed

    (ids, *received), closed = asyncio.run(scenario())
    assert closed == {}, "a publisher's connection was closed"
    expected = {connection_id: [str(n) for n in range(per_publisher)] for connection_id in ids}
    for got in received:
        by_sender: Dict[str, List[str]] = {}
        for line in got:
            sender, text = line.split(": ", 1)
            by_sender.setdefault(sender, []).append(text)
        assert by_sender == expected
    log = server.log()
    assert "HubError" not in log and "Traceback" not in log, log


def worker_of(server: UwsgiServer, ws: ClientConnection) -> int:
    """The pid of the worker that holds ``ws`` (under --http-socket, its TCP connection)."""
    port = ws.local_address[1]
    for pid in server.worker_pids():
        for connection in psutil.Process(pid).net_connections("tcp"):
            if connection.raddr and connection.raddr.port == port:
                return pid
    raise AssertionError(f"no worker holds the connection from port {port}")


@pytest.fixture
def stuck_chat_hub() -> Iterator[Dict[str, str]]:
    """The chat's hub: a 0.3 s send timeout, and a history of its own (the chat keeps one)."""
    with private_hub("stuck-chat", send_timeout=0.3) as env:
        yield env


def test_chat_tells_the_sender_when_a_worker_is_stuck_and_keeps_it(
    stuck_chat_hub: Dict[str, str], start_uwsgi
) -> None:
    """A worker stopped (SIGSTOP) past send_timeout: the sender gets an error, stays connected."""
    server = start_uwsgi(
        "examples.chat:app",
        processes=2,
        gevent=100,
        extra=["--gevent-early-monkey-patch"],
        env=stuck_chat_hub,
    )
    text = "x" * 1900

    async def scenario() -> Tuple[str, List[str]]:
        members: Dict[int, ClientConnection] = {}
        spare = []
        for i in range(100):  # bounded: until both workers hold a member
            if len(members) == 2:
                break
            ws = await async_connect(
                server.url(f"/ws/lobby?nick=m{i}"), ping_interval=None, max_queue=None
            )
            await asyncio.wait_for(ws.recv(), 10)  # welcome
            pid = worker_of(server, ws)
            if pid in members:
                spare.append(ws)
            else:
                members[pid] = ws
        assert len(members) == 2, "both members landed on one worker"
        (_, sender), (stuck_pid, member) = members.items()
        os.kill(stuck_pid, signal.SIGSTOP)
        try:
            error = ""
            for _ in range(20000):  # bounded: the stopped worker's socket fills long before
                await sender.send(json.dumps({"type": "message", "text": text}))
                try:
                    while True:
                        data = json.loads(await asyncio.wait_for(sender.recv(), 0.001))
                        if data["type"] == "error":
                            error = data["text"]
                            break
                except asyncio.TimeoutError:
                    pass
                if error:
                    break
        finally:
            os.kill(stuck_pid, signal.SIGCONT)
        # Still connected: the sender's next message reaches the other member.
        await sender.send(json.dumps({"type": "message", "text": "after"}))
        seen: List[str] = []
        while "after" not in seen:
            data = json.loads(await asyncio.wait_for(member.recv(), 30))
            if data["type"] == "message" and data["text"] != text:
                seen.append(data["text"])
        for ws in [sender, member, *spare]:
            await ws.close()
        return error, seen

    error, seen = asyncio.run(scenario())
    assert "may not have reached everyone" in error
    assert seen == ["after"]
    assert "did not reach every worker" in server.log()
    assert server.crash_lines() == []
