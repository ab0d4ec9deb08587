"""Configuration for the conformance tests (Autobahn|Testsuite)."""

from __future__ import annotations

import pytest

MARKERS = {
    "autobahn": "runs the Autobahn|Testsuite fuzzing client against a real uWSGI "
    "(needs scripts/install-autobahn.sh; cases 1-10 about a minute per uWSGI front end, "
    "the compression cases 12 and 13 about half an hour for both at once)",
    "uwsgi": "starts real uWSGI servers",
    # Normally registered by pytest-timeout; declared here so the marker is
    # known even without that plugin.
    "timeout": "timeout(seconds): fail the test after that many seconds (pytest-timeout)",
}


def pytest_configure(config: pytest.Config) -> None:
    known = {line.split(":")[0].split("(")[0].strip() for line in config.getini("markers")}
    for name, description in MARKERS.items():
        if name not in known:
            config.addinivalue_line("markers", f"{name}: {description}")
