"""Shared fixtures: real uWSGI servers started by the tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator, List

import pytest

from tests.uwsgi_server import PypyBuild, UwsgiServer, find_pypy_build

StartServer = Callable[..., UwsgiServer]


@pytest.fixture
def start_uwsgi(tmp_path: Path) -> Iterator[StartServer]:
    """Start uWSGI servers for one test; stop them (and check for crashes) after."""
    servers: List[UwsgiServer] = []

    def start(module: str, **kwargs: object) -> UwsgiServer:
        expect_ready = bool(kwargs.pop("expect_ready", True))
        server = UwsgiServer(module, log_dir=tmp_path, **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server.start(expect_ready=expect_ready)

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module", params=["http-socket", "http"])
def echo_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[UwsgiServer]:
    """The echo example on uWSGI, once with --http-socket and once behind --http."""
    server = UwsgiServer(
        "examples.echo:app",
        mode=request.param,
        gevent=1100,
        log_dir=tmp_path_factory.mktemp("uwsgi"),
    )
    server.start()
    yield server
    server.stop()
    assert server.crash_lines() == [], server.log()


@pytest.fixture(scope="session")
def pypy_build() -> PypyBuild:
    """uWSGI's PyPy build (scripts/install-pypy-uwsgi.sh, which scripts/test.sh runs).

    Without it the test is skipped, saying why; under CI it fails instead.
    """
    build, reason = find_pypy_build()
    if build is None:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return build
