"""Autobahn|Testsuite conformance run against ``examples/echo.py`` under uWSGI.

Starts a real uWSGI (gevent loop engine) serving ``examples.echo:app`` on a free
loopback port, points ``wstest -m fuzzingclient`` at it and checks that

* no case FAILED (a case whose closing handshake was wrong counts as FAILED),
* more than 250 cases ran,
* the uWSGI worker survived the whole run: same pid before and after, no
  respawn, and no signal / segmentation fault / ``DAMN ! worker`` in the log,
* uWSGI stops within a bounded time on SIGINT.

It runs once per uWSGI front end, ``--http-socket`` (the worker parses HTTP
itself) and ``--http`` (the HTTP router process proxies to the worker), and
per suite (:data:`SUITES`):

* ``core``: cases 1 to 10 against ``/echo``;
* ``deflate``: all 216 permessage-deflate cases, 12.* and 13.*, against
  ``/echo-compressed`` (compression on). The set takes about half an hour
  per front end, nearly all of it in the cases of 1000 messages of 8 to
  128 KiB, where wstest (Python 2, one core at most) is the bottleneck,
  not the server: so the two front ends' deflate runs go at the same
  time, each with its own uWSGI and its own wstest, one test
  (``test_autobahn_deflate``) checking both. ``AUTOBAHN_DEFLATE_SUBSET=1``
  runs only the two smallest sizes of each group and its largest
  fragmented one (:data:`DEFLATE_SUBSET`: a few minutes), for a quick
  local check.

A one-line summary is printed (see it with ``pytest -s``) and written, with the
details of every case that is not OK, to ``reports/autobahn-<mode>.txt``; the
full wstest HTML/JSON report is copied to ``reports/autobahn-<mode>/``.

wstest is Python 2.7 only and lives in its own virtualenv: run
``scripts/install-autobahn.sh`` first. Without it the test is skipped, except
when ``CI`` is set, where it fails.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
AUTOBAHN_VENV = Path(os.environ.get("AUTOBAHN_VENV") or REPO_ROOT / ".venv-autobahn")
WSTEST = AUTOBAHN_VENV / "bin" / "wstest"
UWSGI = Path(sys.executable).parent / "uwsgi"
REPORTS_DIR = REPO_ROOT / "reports"

HOST = "127.0.0.1"  # loopback only
APP_MODULE = "examples.echo:app"
AGENT = "flask-websocket"


@dataclasses.dataclass(frozen=True)
class Suite:
    """Which cases run against which route, and how many must have run."""

    path: str
    cases: list[str]
    exclude: list[str]
    min_cases: int
    #: wstest's time limit, seconds (AUTOBAHN_TIMEOUT raises every suite's).
    timeout: float


#: Each group of 12.* and 13.* (one compression set-up each) sends 1000
#: messages of 18 sizes: the subset keeps the first two (16 and 64 bytes)
#: and the 17th (128 KiB, fragmented into 4 KiB frames).
DEFLATE_SUBSET = [
    f"{group}.{size}"
    for group in [*(f"12.{n}" for n in range(1, 6)), *(f"13.{n}" for n in range(1, 8))]
    for size in (1, 2, 17)
]
DEFLATE_SUBSET_ONLY = os.environ.get("AUTOBAHN_DEFLATE_SUBSET", "").strip() not in ("", "0")
TIMEOUT_OVERRIDE = float(os.environ.get("AUTOBAHN_TIMEOUT", "0"))

SUITES: dict[str, Suite] = {
    "core": Suite("/echo", ["*"], ["12.*", "13.*"], 250, 600),
    "deflate": Suite("/echo-compressed", ["12.*", "13.*"], [], 215, 3600),
    "deflate-subset": Suite("/echo-compressed", DEFLATE_SUBSET, [], 35, 1200),
}
#: The uWSGI front ends every suite runs under.
FRONT_ENDS = ["http-socket", "http"]
DEFLATE_SUITE = "deflate-subset" if DEFLATE_SUBSET_ONLY else "deflate"

WSTEST_TIMEOUT = max([TIMEOUT_OVERRIDE, *(suite.timeout for suite in SUITES.values())])
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0

#: uWSGI front ends under test: extra command-line options for a given port.
MODES: dict[str, Callable[[int], list[str]]] = {
    "http-socket": lambda port: ["--http-socket", f"{HOST}:{port}"],
    "http": lambda port: [
        "--http",
        f"{HOST}:{port}",
        "--http-websockets",
        "--http-buffer-size",
        "65536",
    ],
}

#: Behaviours, mildest first. A case's result is the worse of its
#: ``behavior`` and ``behaviorClose``.
BEHAVIORS = ("OK", "INFORMATIONAL", "NON-STRICT", "UNIMPLEMENTED", "FAILED")
SUMMARY_ORDER = ("OK", "NON-STRICT", "INFORMATIONAL", "FAILED")

WORKER_SPAWNED = re.compile(r"spawned uWSGI worker (\d+) \(pid: (\d+)")
CRASH_LINE = re.compile(r"signal|segmentation|DAMN ! worker", re.IGNORECASE)
# Printed by every orderly gevent shutdown; not a crash.
BENIGN_LINE = re.compile(r"stopping gevent signals watchers")


# --------------------------------------------------------------------------
# wstest: spec, run, report


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require(path: Path, hint: str) -> None:
    """Skip (or, in CI, fail) when a tool the test needs is missing."""
    if path.exists():
        return
    message = f"{display(path)} not found; {hint}"
    if in_ci():
        pytest.fail(f"{message} (CI is set, so this is an error, not a skip)")
    pytest.skip(message)


def display(path: Path) -> str:
    """``path`` relative to the repository root when it is inside it."""
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def die_with_parent(sig: int) -> Callable[[], None]:
    """A ``preexec_fn``: deliver ``sig`` to the child when pytest dies.

    uWSGI and wstest run in sessions of their own (so a Ctrl-C reaches pytest
    only, which then stops them in order); this makes sure they do not outlive
    a pytest that is killed outright. Linux only; elsewhere a no-op.
    """

    def preexec() -> None:
        with contextlib.suppress(Exception):
            import ctypes

            PR_SET_PDEATHSIG = 1
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)

    return preexec


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def write_spec(directory: Path, url: str, suite: Suite, agent: str = AGENT) -> Path:
    """Write a fuzzingclient spec for ``url``; the report goes to ``directory/report``."""
    spec = {
        "outdir": str(directory / "report"),
        "servers": [{"agent": agent, "url": url}],
        "cases": suite.cases,
        "exclude-cases": suite.exclude,
        "exclude-agent-cases": {},
    }
    path = directory / "fuzzingclient.json"
    path.write_text(json.dumps(spec, indent=2))
    return path


def start_wstest(spec: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start the fuzzing client on ``spec``, its output to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(WSTEST), "-m", "fuzzingclient", "-s", str(spec)],
            cwd=spec.parent,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(signal.SIGKILL),
        )


def wait_wstest(proc: subprocess.Popen[bytes], log: Path, deadline: float) -> None:
    """Wait for the fuzzing client until ``deadline`` (monotonic). Fails the test on error."""
    try:
        returncode = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        kill_group(proc)
        pytest.fail(
            f"wstest did not finish in time (AUTOBAHN_TIMEOUT raises the limit)\n{tail(log, 5)}"
        )
    finally:
        if proc.poll() is None:  # interrupted
            kill_group(proc)
    if returncode != 0:
        pytest.fail(f"wstest exited with {returncode}\n{tail(log)}")


def load_results(outdir: Path) -> dict[str, dict[str, Any]]:
    """Case id -> index entry for the (single) agent in ``outdir/index.json``."""
    index_path = outdir / "index.json"
    if not index_path.exists():
        pytest.fail(f"wstest wrote no {index_path}")
    index = json.loads(index_path.read_text())
    assert len(index) == 1, f"expected one agent in {index_path}, got {list(index)}"
    (cases,) = index.values()
    return dict(sorted(cases.items(), key=lambda item: case_key(item[0])))


def case_key(case_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case_id.split("."))


def case_behavior(entry: dict[str, Any]) -> str:
    """The worse of ``behavior`` and ``behaviorClose``, as one of BEHAVIORS.

    ``behaviorClose`` has values of its own (``WRONG CODE``, ``UNCLEAN``,
    ``FAILED BY CLIENT``...): all of them but OK and INFORMATIONAL are failures.
    Anything unknown counts as FAILED.
    """

    def rank(value: str) -> int:
        return BEHAVIORS.index(value) if value in BEHAVIORS else BEHAVIORS.index("FAILED")

    return BEHAVIORS[max(rank(entry["behavior"]), rank(entry["behaviorClose"]))]


def summarize(cases: dict[str, dict[str, Any]]) -> collections.Counter[str]:
    return collections.Counter(case_behavior(entry) for entry in cases.values())


def summary_line(counts: collections.Counter[str], label: str = "autobahn") -> str:
    total = sum(counts.values())
    parts = [f"{counts[name]} {name}" for name in SUMMARY_ORDER]
    parts += [
        f"{counts[name]} {name}" for name in BEHAVIORS if name not in SUMMARY_ORDER and counts[name]
    ]
    return f"{label}: {total} cases: {', '.join(parts)}"


def case_details(outdir: Path, cases: dict[str, dict[str, Any]]) -> list[str]:
    """One block per case that is not plainly OK, with wstest's explanation."""
    lines = []
    for case_id, entry in cases.items():
        if entry["behavior"] == "OK" and entry["behaviorClose"] == "OK":
            continue
        lines.append(
            f"{case_id}: {case_behavior(entry)}"
            f" (behavior {entry['behavior']}, behaviorClose {entry['behaviorClose']})"
        )
        report = outdir / entry.get("reportfile", "")
        if report.is_file():
            data = json.loads(report.read_text())
            lines.append(f"    description: {one_line(data.get('description'))}")
            lines.append(f"    expectation: {one_line(data.get('expectation'))}")
            lines.append(f"    result: {one_line(data.get('result'))}")
            lines.append(f"    resultClose: {one_line(data.get('resultClose'))}")
            lines.append(
                f"    close codes: local {data.get('localCloseCode')},"
                f" remote {data.get('remoteCloseCode')}, wasClean {data.get('wasClean')},"
                f" droppedByMe {data.get('droppedByMe')}"
            )
    return lines


def slowest_cases(cases: dict[str, dict[str, Any]], count: int = 10) -> str:
    """The ``count`` longest cases, as reported by wstest (``duration``, ms)."""
    ranked = sorted(cases.items(), key=lambda item: -int(item[1].get("duration") or 0))
    return ", ".join(
        f"{case_id} {int(entry.get('duration') or 0) / 1000:.1f} s"
        for case_id, entry in ranked[:count]
    )


def one_line(value: object, limit: int = 400) -> str:
    text = re.sub(r"\s+", " ", str(value)).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def write_report(mode: str, lines: list[str], outdir: Path) -> Path:
    """Write ``reports/autobahn-<mode>.txt`` and copy the wstest report beside it."""
    REPORTS_DIR.mkdir(exist_ok=True)
    path = REPORTS_DIR / f"autobahn-{mode}.txt"
    path.write_text("\n".join(lines) + "\n")
    copy = REPORTS_DIR / f"autobahn-{mode}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(outdir, copy)
    return path


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} unreadable)"
    return "\n".join(text.splitlines()[-lines:])


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group led by ``proc`` (started with a new session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


# --------------------------------------------------------------------------
# uWSGI


class Uwsgi:
    """A uWSGI master serving the echo example, with its log in a file."""

    def __init__(self, mode: str, port: int, log: Path, suite: str = "core") -> None:
        self.mode = mode
        self.suite_name = suite
        self.suite = SUITES[suite]
        self.port = port
        self.log = log
        self.command = [
            str(UWSGI),
            "--master",
            "--need-app",
            "--die-on-term",
            "--gevent",
            "100",
            *MODES[mode](port),
            "--module",
            APP_MODULE,
        ]
        if sys.prefix != sys.base_prefix:
            self.command += ["--virtualenv", sys.prefix]
        self.proc: subprocess.Popen[bytes] | None = None
        self.stop_seconds: float | None = None
        self.stopped_in_time = True

    def start(self) -> None:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.command,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # SIGINT: the master then stops its workers (--die-on-term).
                preexec_fn=die_with_parent(signal.SIGINT),
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"uWSGI exited with {self.proc.returncode} on startup\n{tail(self.log)}"
                )
            if self.worker_pids() and self.answers_http():
                return
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"uWSGI not ready within {STARTUP_TIMEOUT:.0f} s\n{tail(self.log)}")

    def answers_http(self) -> bool:
        connection = http.client.HTTPConnection(HOST, self.port, timeout=5)
        try:
            connection.request("GET", "/")
            connection.getresponse().read()
        except OSError:
            return False
        finally:
            connection.close()
        return True

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        """Pids of every worker spawn so far, in order (a respawn adds one)."""
        return [int(match.group(2)) for match in WORKER_SPAWNED.finditer(self.log_text())]

    def live_worker_pids(self) -> set[int] | None:
        """The master's worker children per psutil (None if psutil is missing)."""
        try:
            import psutil  # type: ignore[import-untyped, unused-ignore]
        except ImportError:
            return None
        assert self.proc is not None
        try:
            children = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return set()
        # In --http mode the HTTP router is a child too; keep the workers only.
        spawned = set(self.worker_pids())
        return {child.pid for child in children if child.pid in spawned}

    def stop(self) -> None:
        """SIGINT the master and wait for it (bounded); SIGKILL as a last resort."""
        if self.proc is None or self.proc.poll() is not None:
            return
        start = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.stopped_in_time = False
            kill_group(self.proc)
        self.stop_seconds = time.monotonic() - start


class Run:
    """One suite under one front end: its uWSGI, its wstest, and the checks after."""

    def __init__(self, mode: str, suite: str, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.uwsgi = Uwsgi(mode, free_port(), directory / "uwsgi.log", suite)
        self.suite = SUITES[suite]
        self.name = mode if suite == "core" else f"{mode}-{suite}"
        self.wstest: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.workers_before: list[int] = []
        self.live_before: set[int] | None = None

    def start(self) -> None:
        """Start uWSGI, then wstest against it."""
        self.uwsgi.start()
        self.workers_before = self.uwsgi.worker_pids()
        self.live_before = self.uwsgi.live_worker_pids()
        url = f"ws://{HOST}:{self.uwsgi.port}{self.suite.path}"
        spec = write_spec(self.directory, url, self.suite)
        self.started = time.monotonic()
        self.wstest = start_wstest(spec, self.directory / "wstest.log")

    def stop(self) -> None:
        """Stop whatever still runs (bounded)."""
        if self.wstest is not None and self.wstest.poll() is None:
            kill_group(self.wstest)
        self.uwsgi.stop()

    def finish(self) -> list[str]:
        """Wait for wstest, stop uWSGI, write the report; the problems found."""
        assert self.wstest is not None
        timeout = max(self.suite.timeout, TIMEOUT_OVERRIDE)
        wait_wstest(self.wstest, self.directory / "wstest.log", self.started + timeout)
        duration = time.monotonic() - self.started
        uwsgi = self.uwsgi
        workers_after = uwsgi.worker_pids()
        live_after = uwsgi.live_worker_pids()
        exited_during_run = uwsgi.proc is not None and uwsgi.proc.poll() is not None
        uwsgi.stop()

        outdir = self.directory / "report"
        cases = load_results(outdir)
        counts = summarize(cases)
        summary = summary_line(counts, f"autobahn[{self.name}]")
        failed = [case_id for case_id, entry in cases.items() if case_behavior(entry) == "FAILED"]
        non_strict = [
            case_id for case_id, entry in cases.items() if case_behavior(entry) == "NON-STRICT"
        ]

        problems = []
        if failed:
            problems.append(f"{len(failed)} FAILED cases: {', '.join(failed)}")
        if len(cases) <= self.suite.min_cases:
            problems.append(
                f"only {len(cases)} cases ran (expected more than {self.suite.min_cases})"
            )
        if exited_during_run:
            problems.append("the uWSGI master exited during the wstest run")
        if workers_after != self.workers_before:
            problems.append(
                f"uWSGI worker respawned: spawned pids {self.workers_before} before the run,"
                f" {workers_after} after"
            )
        if self.live_before is not None and live_after != self.live_before:
            problems.append(
                f"uWSGI worker pids changed: {sorted(self.live_before)} before the run,"
                f" {sorted(live_after or ())} after"
            )
        crash_lines = [
            line
            for line in uwsgi.log_text().splitlines()
            if CRASH_LINE.search(line) and not BENIGN_LINE.search(line)
        ]
        if crash_lines:
            problems.append("uWSGI log shows a crash:\n    " + "\n    ".join(crash_lines[:20]))
        if not uwsgi.stopped_in_time:
            problems.append(f"uWSGI did not exit within {STOP_TIMEOUT:.0f} s of SIGINT (killed)")
        tracebacks = uwsgi.log_text().count("Traceback (most recent call last)")
        assert uwsgi.proc is not None
        stopped = (
            f"{uwsgi.stop_seconds or 0:.1f} s after SIGINT (exit status {uwsgi.proc.returncode})"
        )

        command = " ".join(
            display(Path(arg)) if arg.startswith("/") else arg for arg in uwsgi.command
        )
        report_lines = [
            summary,
            f"mode: {uwsgi.mode}; suite: {uwsgi.suite_name} ({self.suite.path});"
            f" wstest took {duration:.1f} s; uWSGI stopped in {stopped}",
            f"uwsgi: {command}",
            f"worker pids: {self.workers_before} before, {workers_after} after;"
            f" Python tracebacks in uWSGI log: {tracebacks}",
            f"FAILED: {', '.join(failed) or '-'}",
            f"NON-STRICT: {', '.join(non_strict) or '-'}",
            f"slowest cases: {slowest_cases(cases)}",
            *(f"PROBLEM: {problem}" for problem in problems),
            "",
            *case_details(outdir, cases),
        ]
        report = write_report(self.name, report_lines, outdir)
        shutil.copy(uwsgi.log, REPORTS_DIR / f"autobahn-{self.name}" / "uwsgi.log")
        print(f"\n{summary}\n(details in {display(report)})")
        return [f"{summary}: {problem} (details in {display(report)})" for problem in problems]


def require_tools() -> None:
    # Checked in the tests rather than in a fixture so that, in CI, a missing
    # tool makes the test FAIL (not error, not skip).
    require(
        WSTEST,
        "run scripts/install-autobahn.sh to install Autobahn|Testsuite (needs Python 2.7)",
    )
    require(UWSGI, f"uWSGI must be installed next to {display(Path(sys.executable))}")


def run_together(runs: list[Run]) -> list[str]:
    """Start every run, then finish each; the problems of all of them."""
    try:
        for run in runs:
            run.start()
        problems: list[str] = []
        for run in runs:
            problems += run.finish()
        return problems
    finally:
        for run in runs:
            run.stop()


# --------------------------------------------------------------------------
# the tests


@pytest.mark.autobahn
@pytest.mark.uwsgi
@pytest.mark.timeout(STARTUP_TIMEOUT + WSTEST_TIMEOUT + 2 * STOP_TIMEOUT + 60)
@pytest.mark.parametrize("mode", FRONT_ENDS)
def test_autobahn_fuzzingclient(mode: str, tmp_path: Path) -> None:
    """Cases 1 to 10 against ``/echo``."""
    require_tools()
    problems = run_together([Run(mode, "core", tmp_path)])
    assert not problems, "\n".join(problems)


@pytest.mark.autobahn
@pytest.mark.uwsgi
@pytest.mark.timeout(2 * STARTUP_TIMEOUT + WSTEST_TIMEOUT + 4 * STOP_TIMEOUT + 60)
def test_autobahn_deflate(tmp_path: Path) -> None:
    """Cases 12.* and 13.* against ``/echo-compressed``, every front end at once."""
    require_tools()
    runs = [Run(mode, DEFLATE_SUITE, tmp_path / mode) for mode in FRONT_ENDS]
    problems = run_together(runs)
    assert not problems, "\n".join(problems)
