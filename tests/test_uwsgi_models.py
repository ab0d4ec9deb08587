"""The same handlers under each uWSGI concurrency model, on real uWSGI.

For each model, started with its own flags: echo of text and binary, close
codes both ways, concurrent connections where the model allows them, a
broadcast inside one worker, ``recv_nb`` polling, and a hostile frame that
closes only its own connection.

The "continulets" model runs the same app on PyPy: uWSGI's PyPy plugin
(``.pypy/``, from scripts/install-pypy-uwsgi.sh) with its continulet engine;
"pypy-threads" and "pypy-processes" run the threads and processes models there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import urllib.request
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import pytest
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as sync_connect

from flask_websocket.transport import PYPY_CONTINULETS_EVAL
from tests.test_uwsgi_hostile import OP_TEXT, build_frame, raw_connect
from tests.uwsgi_server import PypyBuild, UwsgiServer

pytestmark = pytest.mark.uwsgi

APP = "tests.apps.models:app"


@dataclass(frozen=True)
class Model:
    """A concurrency model: its uWSGI flags and what it allows."""

    name: str
    flags: Sequence[str]
    processes: int = 1
    gevent: int = 0
    #: Connections one worker holds at once.
    per_worker: int = 1
    extra_env: Dict[str, str] = field(default_factory=dict)
    #: Runs on uWSGI's PyPy plugin (the ``pypy_build`` fixture).
    pypy: bool = False
    #: The backend Flask-WebSocket picks (the model's name unless given).
    backend: str = ""


MODELS = [
    Model("gevent", (), gevent=100, per_worker=100),
    Model("threads", ("--threads", "64"), per_worker=64),
    Model("processes", (), processes=2, per_worker=1),
    Model("asyncio", ("--asyncio", "64", "--greenlet"), per_worker=64),
    Model("greenlet", ("--async", "64", "--greenlet"), per_worker=64),
    # Needs the uWSGI scripts/install-uwsgi.sh builds with
    # scripts/patches/uwsgi-2.0.31-ugreen-python.patch (stock 2.0.31 deadlocks).
    Model("ugreen", ("--async", "64", "--ugreen"), per_worker=64),
    # uWSGI 2.0.31's documented uwsgi_pypy_setup_continulets() fails on Python
    # 3: --pypy-eval makes its two assignments instead (docs/pypy.rst).
    Model(
        "continulets",
        ("--async", "64", "--pypy-eval", PYPY_CONTINULETS_EVAL),
        per_worker=64,
        pypy=True,
    ),
    # The thread-based models need nothing PyPy-specific.
    Model("pypy-threads", ("--threads", "64"), per_worker=64, pypy=True, backend="threads"),
    Model("pypy-processes", (), processes=2, per_worker=1, pypy=True, backend="processes"),
]


@pytest.fixture(scope="module", params=MODELS, ids=lambda model: model.name)
def model_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Tuple[Model, UwsgiServer]]:
    model: Model = request.param
    pypy: Optional[PypyBuild] = request.getfixturevalue("pypy_build") if model.pypy else None
    server = UwsgiServer(
        APP,
        gevent=model.gevent or None,
        processes=model.processes,
        extra=list(model.flags),
        log_dir=tmp_path_factory.mktemp(f"uwsgi-{model.name}"),
        pypy=pypy,
    )
    server.start()
    yield model, server
    server.stop()
    assert server.crash_lines() == [], server.log()


def connect(server: UwsgiServer, path: str) -> ClientConnection:
    return sync_connect(
        server.url(path), open_timeout=10, close_timeout=10, ping_interval=None, proxy=None
    )


def test_echo_text_and_binary(model_server: Tuple[Model, UwsgiServer]) -> None:
    _, server = model_server
    with connect(server, "/echo") as ws:
        messages: List[Union[str, bytes]] = ["hello", "", "é" * 1000, b"\x00\xff", b""]
        for message in [*messages, os.urandom(70000)]:
            ws.send(message)
            answer = ws.recv(timeout=10)
            assert answer == message and type(answer) is type(message)


@pytest.mark.parametrize("code", [1000, 1001, 4000, 4999])
def test_server_close_code_reaches_the_client(
    model_server: Tuple[Model, UwsgiServer], code: int
) -> None:
    _, server = model_server
    with connect(server, f"/close/{code}") as ws:
        ws.send("close now")
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        assert ws.close_code == code
        assert ws.close_reason == f"closing with {code}"


def test_client_close_code_is_answered(model_server: Tuple[Model, UwsgiServer]) -> None:
    _, server = model_server
    with connect(server, "/echo") as ws:
        ws.send("x")
        assert ws.recv(timeout=10) == "x"
        ws.close(4321, "bye")
        assert ws.close_code == 4321  # the server echoed our code in its close frame


def test_recv_nb_polling(model_server: Tuple[Model, UwsgiServer]) -> None:
    _, server = model_server
    with connect(server, "/poll") as ws:
        assert ws.recv(timeout=10) == "first=None"
        for message in ["a", "b", "stop"]:
            ws.send(message)
            assert ws.recv(timeout=10) == f"got={message!r}"


async def _concurrent_echoes(url: str, count: int) -> List[bool]:
    async def one(index: int) -> bool:
        async with async_connect(url, open_timeout=20, ping_interval=None, proxy=None) as ws:
            await ws.send(f"n{index}")
            text_ok = await asyncio.wait_for(ws.recv(), 20) == f"n{index}"
            await ws.send(index.to_bytes(4, "big"))
            return text_ok and await asyncio.wait_for(ws.recv(), 20) == index.to_bytes(4, "big")

    results = await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)
    return [result is True for result in results]


def test_concurrent_connections(model_server: Tuple[Model, UwsgiServer]) -> None:
    """50 at once where one worker holds that many; else as many as the workers hold."""
    model, server = model_server
    count = min(50, model.per_worker * model.processes)
    results = asyncio.run(_concurrent_echoes(server.url("/echo"), count))
    assert all(results), f"{results.count(False)} of {count} failed"


def _joined(ws: ClientConnection) -> Tuple[str, str]:
    greeting = ws.recv(timeout=10)
    assert isinstance(greeting, str)
    match = re.fullmatch(r"joined \S+ pid=(\d+) id=(\S+)", greeting)
    assert match, greeting
    return match.group(1), match.group(2)


def test_broadcast_inside_one_worker(model_server: Tuple[Model, UwsgiServer]) -> None:
    """Connections of one worker (other threads or cores) receive each other's broadcast."""
    model, server = model_server
    members = min(3, model.per_worker)
    room = f"room-{os.urandom(4).hex()}"
    with contextlib.ExitStack() as stack:
        sockets = []
        pids = set()
        ids = []
        for _ in range(members):
            ws = stack.enter_context(connect(server, f"/room/{room}"))
            sockets.append(ws)
            pid, connection_id = _joined(ws)
            pids.add(pid)
            ids.append(connection_id)
        if model.processes > 1:
            assert len(pids) >= 1
        else:
            assert len(pids) == 1  # one worker
        sockets[0].send("hello room")
        for ws in sockets:
            assert ws.recv(timeout=10) == f"{ids[0]}: hello room"
        # And from a plain HTTP view of the same worker (one worker models).
        if model.processes == 1:
            with urllib.request.urlopen(
                server.http_url(f"/broadcast/{room}/from-view"), timeout=10
            ) as r:
                assert r.read().decode().endswith(f"members={members}")
            for ws in sockets:
                assert ws.recv(timeout=10) == "from-view"


def test_hostile_frame_closes_only_its_connection(
    model_server: Tuple[Model, UwsgiServer],
) -> None:
    model, server = model_server
    pids = server.worker_pids()
    with contextlib.ExitStack() as stack:
        bystander = None
        if model.per_worker * model.processes > 1:  # room for one more connection
            bystander = stack.enter_context(connect(server, "/echo"))
            bystander.send("before")
            assert bystander.recv(timeout=10) == "before"
        attacker = raw_connect(server.port, "/echo")
        attacker.send(build_frame(OP_TEXT, b"\xff\xfe not utf-8"))
        code, _, _ = attacker.read_close()
        assert code == 1007
        attacker.sock.close()
        if bystander is not None:
            bystander.send("still here")
            assert bystander.recv(timeout=10) == "still here"
        # A new connection on the same workers still works.
        with connect(server, "/echo") as ws:
            ws.send("after")
            assert ws.recv(timeout=10) == "after"
        assert server.worker_pids() == pids


def test_peer_closing_ends_the_handler_cleanly(model_server: Tuple[Model, UwsgiServer]) -> None:
    """Closing from the client ends the handler's loop with no error in the log."""
    _, server = model_server
    for _ in range(5):
        with connect(server, "/echo") as ws:
            ws.send("x")
            assert ws.recv(timeout=10) == "x"
    with connect(server, "/echo") as ws:
        ws.send("y")
        assert ws.recv(timeout=10) == "y"
        ws.close()
        with pytest.raises(ConnectionClosedOK):
            ws.recv(timeout=1)
    assert "Traceback" not in server.log(), server.log()


def test_receive_timeout(model_server: Tuple[Model, UwsgiServer]) -> None:
    """The model's timers work: receive(timeout=0.2) gives None, then a message still arrives."""
    _, server = model_server
    with connect(server, "/timeout") as ws:
        assert ws.recv(timeout=10) == "waited=None"
        ws.send("late")
        assert ws.recv(timeout=10) == "then='late'"


def test_broadcast_storm_inside_one_worker(model_server: Tuple[Model, UwsgiServer]) -> None:
    """Members that send and receive at once: every broadcast reaches every member, in order."""
    model, server = model_server
    members = min(8, model.per_worker)
    per_member = 25
    room = f"storm-{os.urandom(4).hex()}"

    async def run() -> List[List[str]]:
        sockets = [
            await async_connect(server.url(f"/room/{room}"), open_timeout=20, ping_interval=None)
            for _ in range(members)
        ]
        try:
            ids = []
            for ws in sockets:
                greeting = await asyncio.wait_for(ws.recv(), 20)
                ids.append(str(greeting).rsplit("id=", 1)[1])

            async def member(index: int) -> List[str]:
                ws = sockets[index]

                async def send_all() -> None:
                    for n in range(per_member):
                        await ws.send(f"m{index}.{n}")

                sender = asyncio.create_task(send_all())
                got = [
                    str(await asyncio.wait_for(ws.recv(), 30)) for _ in range(members * per_member)
                ]
                await sender
                return got

            return list(await asyncio.gather(*(member(i) for i in range(members))))
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)

    received = asyncio.run(run())
    for got in received:
        assert len(got) == members * per_member
        by_sender: Dict[str, List[int]] = {}
        for line in got:
            sender_id, text = line.split(": ", 1)
            by_sender.setdefault(sender_id, []).append(int(text.rsplit(".", 1)[1]))
        assert len(by_sender) == members
        assert all(sequence == list(range(per_member)) for sequence in by_sender.values())


def test_model_detected_and_default_hub(model_server: Tuple[Model, UwsgiServer]) -> None:
    """The backend matches the flags; the local hub wherever a loop runs without waiting tasks."""
    model, server = model_server
    with urllib.request.urlopen(server.http_url("/hub"), timeout=10) as response:
        scheme, backend = response.read().decode().split()
    assert backend == (model.backend or model.name)
    listens = backend in ("gevent", "threads", "processes", "asyncio")
    assert scheme == ("local" if listens else "memory")
