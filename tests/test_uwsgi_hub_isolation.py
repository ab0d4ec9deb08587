"""Who may reach a deployment's local hub: its own processes, and nobody else.

- Two deployments of one app on one host (two directories, or one directory
  with two configurations) share no room; they do when both set the same
  ``WEBSOCKET_HUB_OPTIONS`` name.
- A ``flask`` command run in the deployment's directory reaches its workers
  with no configuration.
- A process of another user, or a malformed packet, changes nothing for the
  clients (and is logged).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
from websockets.sync.client import ClientConnection, connect

from flask_websocket.hubs.base import KIND_ROOM, Envelope
from flask_websocket.hubs.local import group_addresses
from flask_websocket.protocol import OP_TEXT
from flask_websocket.sqlite_history import private_directory
from tests.uwsgi_server import REPO_ROOT, UwsgiServer, poll_until

pytestmark = pytest.mark.uwsgi

FLASK = str(Path(sys.executable).with_name("flask"))
NOBODY = 65534


def chat_copy(directory: Path) -> Path:
    """A copy of the chat example in ``directory`` (another deployment of the same app)."""
    shutil.copytree(
        REPO_ROOT / "examples", directory / "examples", ignore=shutil.ignore_patterns("__pycache__")
    )
    return directory


def start_chat(start_uwsgi, cwd: Path, **env: str) -> UwsgiServer:
    return start_uwsgi(  # type: ignore[no-any-return]
        "examples.chat:app",
        processes=2,
        gevent=100,
        extra=["--gevent-early-monkey-patch"],
        cwd=cwd,
        env=env,
    )


def chat_member(server: UwsgiServer, nick: str) -> ClientConnection:
    ws = connect(server.url(f"/ws/lobby?nick={nick}"), open_timeout=10, proxy=None)
    assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
    return ws


def next_chat_message(ws: ClientConnection) -> Tuple[str, str]:
    """The next chat message this member receives: (sender, text); join notices skipped."""
    while True:
        data = json.loads(ws.recv(timeout=10))
        if data["type"] == "message":
            return data["from"], data["text"]


def say(ws: ClientConnection, text: str) -> None:
    ws.send(json.dumps({"type": "message", "text": text}))


def hub_groups(*servers: UwsgiServer) -> List[str]:
    """The local hub groups the workers of ``servers`` listen in."""
    pids = {str(pid) for server in servers for pid in server.worker_pids()}
    found = group_addresses("flask-websocket/")
    # An address is "\0flask-websocket/<group>/w<worker>-<pid>-<node>".
    return sorted(
        {a[1:].split("/")[1] for a in found if a.rsplit("/", 1)[1].split("-")[1] in pids}
    )


def remove_history(*servers: UwsgiServer) -> None:
    """Stop ``servers`` and remove their hubs' history databases (the chat keeps one,
    and it outlives the deployment: these deployments are gone for good)."""
    groups = hub_groups(*servers)
    for server in servers:
        server.stop()
    directory = private_directory()
    for group in groups:
        for suffix in ("", "-wal", "-shm"):
            (directory / f"{group}.sqlite3{suffix}").unlink(missing_ok=True)


def assert_isolated(first: UwsgiServer, second: UwsgiServer) -> None:
    a, b = chat_member(first, "alice"), chat_member(second, "bob")
    say(a, "only for the first")
    assert next_chat_message(a) == ("alice", "only for the first")
    say(b, "marker")
    # Bob's next message is his own: nothing crossed from the other deployment.
    assert next_chat_message(b) == ("bob", "marker")
    a.close()
    b.close()


def test_two_directories_share_nothing(start_uwsgi, tmp_path: Path) -> None:
    first = start_chat(start_uwsgi, chat_copy(tmp_path / "staging"))
    second = start_chat(start_uwsgi, chat_copy(tmp_path / "production"))
    assert_isolated(first, second)
    groups = hub_groups(first, second)
    assert len(groups) == 2 and all(g.startswith("examples.chat-") for g in groups), groups
    remove_history(first, second)


def test_one_directory_two_secret_keys_share_nothing(start_uwsgi, tmp_path: Path) -> None:
    directory = chat_copy(tmp_path / "app")
    first = start_chat(start_uwsgi, directory, FLASK_SECRET_KEY="staging-key")
    second = start_chat(start_uwsgi, directory, FLASK_SECRET_KEY="production-key")
    assert_isolated(first, second)
    remove_history(first, second)


def test_the_same_explicit_name_shares_rooms(start_uwsgi, tmp_path: Path) -> None:
    name = json.dumps({"name": f"shared-{os.getpid()}-{time.monotonic_ns()}"})
    first = start_chat(start_uwsgi, chat_copy(tmp_path / "one"), FLASK_WEBSOCKET_HUB_OPTIONS=name)
    second = start_chat(start_uwsgi, chat_copy(tmp_path / "two"), FLASK_WEBSOCKET_HUB_OPTIONS=name)
    a, b = chat_member(first, "alice"), chat_member(second, "bob")
    say(a, "hello from the first")
    assert next_chat_message(b) == ("alice", "hello from the first")
    a.close()
    b.close()
    remove_history(first, second)


def rooms_server(start_uwsgi, **env: str) -> UwsgiServer:
    return start_uwsgi(  # type: ignore[no-any-return]
        "tests.apps.rooms:app",
        processes=2,
        gevent=100,
        extra=["--gevent-early-monkey-patch"],
        env={"FWS_SECRET_KEY": f"key-{os.getpid()}-{time.monotonic_ns()}", **env},
    )


def rooms_members(server: UwsgiServer, room: str, count: int = 4) -> List[ClientConnection]:
    """``count`` members of ``room``, at least one on each worker (bounded attempts)."""
    members: List[ClientConnection] = []
    pids = set()
    for _ in range(200):
        if len(members) >= count and pids == set(server.worker_pids()):
            return members
        ws = connect(server.url(f"/ws/{room}"), open_timeout=10, proxy=None)
        greeting = str(ws.recv(timeout=10))
        assert greeting.startswith("id:")
        pids.add(int(greeting.rsplit(":", 1)[1]))
        members.append(ws)
    raise AssertionError(f"members reached only workers {pids}")


def shout(server: UwsgiServer, text: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLASK, "--app", "tests.apps.rooms", "shout", text, "--room", "news"],
        cwd=REPO_ROOT,
        env={**server.env, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_cli_command_of_the_deployment_reaches_its_workers_unconfigured(start_uwsgi) -> None:
    server = rooms_server(start_uwsgi)
    members = rooms_members(server, "news")
    result = shout(server, "from the cli")
    assert result.returncode == 0, result.stderr
    assert "reached nobody" not in result.stderr
    for ws in members:
        assert ws.recv(timeout=10) == "from the cli"
    # Another configuration (another secret key) is another deployment: it
    # reaches nobody, and says so.
    result = shout(server, "from elsewhere", FWS_SECRET_KEY="another key")
    assert result.returncode == 0, result.stderr
    assert "reached nobody" in result.stderr
    assert shout(server, "marker").returncode == 0
    for ws in members:
        assert ws.recv(timeout=10) == "marker"
        ws.close()


def worker_hub_addresses(server: UwsgiServer) -> List[str]:
    """The listening addresses of the server's workers (their names carry their pid)."""
    pids = {str(pid) for pid in server.worker_pids()}
    return [
        address
        for address in group_addresses("flask-websocket/")
        if address.rsplit("/", 1)[1].split("-")[1] in pids
    ]


def send_as(uid: Optional[int], address: str, packets: List[bytes]) -> Dict[str, object]:
    """In a child process (running as ``uid`` if given): connect to ``address``, send
    ``packets``, and report what happened and whether the server closed the connection."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: plain sockets, no gevent, leaves with os._exit
        report: Dict[str, object] = {"sent": 0}
        try:
            if uid is not None:
                os.setgid(uid)
                os.setuid(uid)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            sock.settimeout(5)
            sock.connect(address)
            for packet in packets:
                sock.send(packet)
                report["sent"] = int(report["sent"]) + 1  # type: ignore[call-overload]
            try:
                report["closed_by_server"] = sock.recv(100) == b""
            except (socket.timeout, ConnectionResetError) as exc:
                report["closed_by_server"] = isinstance(exc, ConnectionResetError)
        except OSError as exc:
            report["error"] = f"{type(exc).__name__}: {exc}"
        os.write(write_end, json.dumps(report).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as reader:
        report = json.loads(reader.read() or "{}")
    os.waitpid(pid, 0)
    return report


def injected(room: str, text: str) -> bytes:
    return b"E" + Envelope(KIND_ROOM, OP_TEXT, text.encode(), room, origin="intruder").encode()


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another uid needs root")
def test_a_process_of_another_user_cannot_inject_broadcasts(start_uwsgi) -> None:
    server = rooms_server(start_uwsgi)
    members = rooms_members(server, "news")
    addresses = worker_hub_addresses(server)
    assert len(addresses) == 2
    for address in addresses:
        report = send_as(NOBODY, address, [injected("news", "injected")])
        assert report.get("closed_by_server") is True or "error" in report, report
    assert shout(server, "marker").returncode == 0
    for ws in members:
        assert ws.recv(timeout=10) == "marker"  # nothing injected came before it
        ws.close()
    assert poll_until(lambda: "runs as uid 65534" in server.log(), 5), server.log()
    assert server.crash_lines() == []


def test_malformed_packets_are_dropped_and_logged(start_uwsgi) -> None:
    server = rooms_server(start_uwsgi)
    members = rooms_members(server, "news")
    pids = server.worker_pids()
    garbage = [
        b"E",  # an envelope with no header
        b"E\x09\x01\x01\x04\x00\x00news",  # unknown envelope version
        b"E" + Envelope(KIND_ROOM, OP_TEXT, b"x", "news").encode()[:7],  # truncated
        b"Zsomething",  # unknown type
        b"Q",  # a presence query with no request id
        b"A\x00\x00",  # a short answer
        b"H\xff\xfe",  # a hello that is not UTF-8
        os.urandom(4096),
    ]
    for address in worker_hub_addresses(server):
        report = send_as(None, address, garbage)
        assert report["sent"] == len(garbage), report
    assert shout(server, "still fine").returncode == 0
    for ws in members:
        assert ws.recv(timeout=10) == "still fine"
        ws.close()
    assert server.worker_pids() == pids
    assert poll_until(lambda: "malformed" in server.log(), 5), server.log()
    assert server.crash_lines() == []
