"""benchmarks/peers.py's servers and clients work: no timing, just correctness.

Every server of the comparison (flask-websocket, raw uWSGI and each peer) is
started the way peers.py starts it and answers a short echo through the
benchmark's own client; Flask-SocketIO, whose client framing (Engine.IO 4 /
Socket.IO 5) is the harness's own code, also echoes binary attachments and
delivers a few broadcasts to two subscribers. The peers' packages come from
benchmarks/requirements.txt (scripts/bootstrap.sh): without them the tests
are skipped, saying which are missing, except under CI, where they fail.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import benchlib  # noqa: E402
import peerlib  # noqa: E402

pytestmark = [pytest.mark.uwsgi, pytest.mark.timeout(60)]

_MISSING = peerlib.missing_packages()


@pytest.fixture(autouse=True)
def _peer_packages() -> None:
    if _MISSING:
        reason = f"benchmark packages missing: {', '.join(_MISSING)} (scripts/bootstrap.sh)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def _echo(server: benchlib.Server, binary: bool = False) -> dict:
    import echo

    ns = SimpleNamespace(
        connections=2, size=1000 if binary else 32, binary=binary, warmup=0.0, duration=0.3
    )
    return benchlib.run_uvloop(lambda: echo.run_client(server, ns))


@pytest.mark.parametrize("name", list(peerlib.PEERS))
def test_server_answers_echo(name: str, tmp_path: Path) -> None:
    peer = peerlib.PEERS[name]
    with peer.server("echo", str(tmp_path / "server.log"), conns=4) as server:
        res = _echo(server)
        server.check_alive()
    assert res["messages"] > 0, server.log_tail()
    assert res["mismatches"] == 0, res["mismatch_examples"]
    assert res["unexpected_frames"] == 0
    assert res["unexpected_disconnects"] == 0


def test_socketio_binary_echo_and_fanout(tmp_path: Path) -> None:
    import broadcast

    peer = peerlib.PEERS["flask-socketio"]
    with peer.server("large", str(tmp_path / "echo.log"), conns=4) as server:
        res = _echo(server, binary=True)
    assert res["messages"] > 0 and res["mismatches"] == 0, res["mismatch_examples"]

    ns = SimpleNamespace(
        subscribers=2, size=64, phases=["latency"], broadcasts=3, rate=20.0,
        warmup_broadcasts=1, drain_timeout=5.0, balance_attempts=0, batch=2,
        open_timeout=20.0, close_timeout=5.0,
    )  # fmt: skip
    with peer.server("fanout", str(tmp_path / "fanout.log"), conns=4) as server:
        res = benchlib.run_uvloop(lambda: broadcast.run_client(server, ns, 1, None))
        server.check_alive()
    assert res["expected_deliveries"] == 2 * 4
    assert res["received_unique"] == 2 * 4
    assert (res["lost"], res["duplicates"], res["out_of_order"], res["garbled"]) == (0, 0, 0, 0)
    assert res["unexpected_frames"] == 0


def test_baseline_runs_the_code_of_a_commit(tmp_path: Path) -> None:
    """--baseline REF: flask-websocket once more, importing that commit's package."""
    import peers

    code_root = tmp_path / "code"
    code_root.mkdir()
    commit = benchlib.export_code("HEAD", str(code_root))
    name = peers.add_baseline_peer(commit, str(code_root))
    try:
        peer = peerlib.PEERS[name]
        assert name == f"{peers.OURS}@{commit}" and commit in peer.label
        with peer.server("echo", str(tmp_path / "server.log"), conns=4) as server:
            res = _echo(server)
            (worker,) = server.workers
            assert os.readlink(f"/proc/{worker.pid}/cwd") == str(code_root)
            environ = Path(f"/proc/{worker.pid}/environ").read_bytes().split(b"\0")
            assert any(e.startswith(f"PYTHONPATH={code_root}".encode()) for e in environ)
            server.check_alive()
        assert res["messages"] > 0 and res["mismatches"] == 0, server.log_tail()
    finally:
        del peerlib.PEERS[name]


def test_baseline_is_not_published() -> None:
    import peers

    with pytest.raises(SystemExit):
        peers.parse_args(["--baseline", "HEAD", "--publish"])
    assert peers.parse_args(["--baseline", "HEAD"]).baseline == "HEAD"
