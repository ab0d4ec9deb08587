"""Runs the hub contract (contract.py) once per hub, each in its own process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent


def run_contract(kind: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            str(HERE / "run_patched.py"),
            str(HERE / "contract.py"),
            "-q",
            "-p",
            "no:cacheprovider",
            "-x",
        ],
        cwd=REPO_ROOT,
        env=dict(os.environ, HUB_KIND=kind, PYTHONPATH=str(REPO_ROOT), **env),
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.parametrize("kind", ["memory", "local"])
def test_hub_contract(kind: str) -> None:
    result = run_contract(kind)
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout
