"""transport's model detection and start-up checks, against stand-ins for the
``uwsgi`` module (the real one exists only inside uWSGI; tests/test_uwsgi_*.py
start real servers for every model)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Dict, Optional

import pytest

from flask_websocket import ConfigurationError, transport


def fake_uwsgi(options: Dict[str, Any], loop: Optional[bytes] = None, **extra: Any) -> Any:
    return SimpleNamespace(opt=options, loop=loop, has_threads=1, **extra)


@pytest.mark.parametrize(
    ("options", "loop", "model"),
    [
        ({"gevent": b"100"}, b"gevent", "gevent"),
        ({"asyncio": b"10", "greenlet": True}, b"asyncio", "asyncio"),
        ({"async": b"10", "greenlet": True}, None, "greenlet"),
        ({"async": b"10", "ugreen": True}, None, "ugreen"),
        ({"async": b"10"}, None, "async"),
        ({"threads": b"8"}, None, "threads"),
        ({"processes": b"4"}, None, "processes"),
        ({}, b"tornado", "loop:tornado"),
    ],
)
def test_concurrency_model_from_options(
    monkeypatch: pytest.MonkeyPatch, options: Dict[str, Any], loop: Optional[bytes], model: str
) -> None:
    monkeypatch.setattr(transport, "_uwsgi", fake_uwsgi(options, loop))
    assert transport.concurrency_model() == model


def test_ugreen_is_refused_on_a_stock_uwsgi(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "_uwsgi", fake_uwsgi({"async": b"10", "ugreen": True}))
    with pytest.raises(ConfigurationError, match=r"scripts/patches/.*--async N --greenlet"):
        transport.check_server()


def test_ugreen_is_accepted_on_the_patched_uwsgi(monkeypatch: pytest.MonkeyPatch) -> None:
    uwsgi = fake_uwsgi({"async": b"10", "ugreen": True}, ugreen_suspends_python=1)
    monkeypatch.setattr(transport, "_uwsgi", uwsgi)
    transport.check_server()  # no error
    assert transport.ugreen_patched()


def test_threads_off_is_refused_on_an_old_uwsgi(monkeypatch: pytest.MonkeyPatch) -> None:
    uwsgi = fake_uwsgi({"processes": b"2"})
    uwsgi.has_threads = 0  # before 2.0.27 threads were off unless asked for
    monkeypatch.setattr(transport, "_uwsgi", uwsgi)
    with pytest.raises(ConfigurationError, match="--enable-threads"):
        transport.check_server()
