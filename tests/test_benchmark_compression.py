"""benchmarks/compression.py runs end to end (tiny counts): the harness keeps working."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.uwsgi_server import REPO_ROOT

pytestmark = pytest.mark.uwsgi


def test_the_compression_benchmark_runs_and_checks_every_message() -> None:
    tiny = "--rounds 1 --echo-connections 2 --echo-messages 20 --idle 20 --subscribers 20"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "compression.py"), *tiny.split()],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    written = result.stdout.strip().splitlines()[-1]
    path = REPO_ROOT / written[written.index("benchmarks/results/") :].rstrip(")")
    data = json.loads(Path(path).read_text())
    path.unlink()
    summary = data["summary"]
    assert set(summary) == {"off", "on", "takeover"}
    assert summary["off"]["extensions"] == ""
    assert "server_no_context_takeover" in summary["on"]["extensions"]
    assert "server_no_context_takeover" not in summary["takeover"]["extensions"]
    assert summary["on"]["payload_bytes_on_wire"] < summary["off"]["payload_bytes_on_wire"]
    assert data["args"]["broadcasts"] == 100 and data["args"]["subscribers"] == 20
    phases = ("echo", "memory", "fanout")
    assert all(run[phase]["wrong"] == 0 for run in data["runs"] for phase in phases)
