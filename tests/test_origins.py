"""The Origin check: same origin by default, more only when listed, refusals logged."""

from __future__ import annotations

import logging
import re
from typing import Any, Dict, Optional

import pytest
from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from flask_websocket import HandshakeRejected, WebSocket
from flask_websocket.origins import OriginPolicy, request_origin
from flask_websocket.testing import WebSocketTestClient


def make_app(allowed: Any = None, proxy_fix: bool = False) -> Flask:
    app = Flask(__name__)
    if allowed is not None:
        app.config["WEBSOCKET_ALLOWED_ORIGINS"] = allowed
    if proxy_fix:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_proto=1, x_host=1)  # type: ignore[method-assign]
    websocket = WebSocket(app)

    @websocket.route("/echo")
    def echo(ws: Any) -> None:
        ws.send(ws.receive())

    return app


def opens(app: Flask, origin: Optional[str], headers: Optional[Dict[str, str]] = None) -> bool:
    """True if the handshake is accepted (and the connection echoes), False on 403."""
    try:
        with WebSocketTestClient(app).connect("/echo", origin=origin, headers=headers) as ws:
            ws.send("ping")
            assert ws.receive() == "ping"
            return True
    except HandshakeRejected as exc:
        assert exc.status == 403, exc
        assert b"WEBSOCKET_ALLOWED_ORIGINS" in exc.body
        return False


def test_by_default_only_the_apps_own_origin_and_no_origin_open() -> None:
    app = make_app()
    own = {"Host": "chat.example.com"}
    assert opens(app, "http://chat.example.com", own)
    assert opens(app, "HTTP://Chat.Example.com:80", own)  # the same origin, written otherwise
    assert opens(app, None, own)  # not a browser
    assert not opens(app, "http://evil.example", own)
    assert not opens(app, "https://chat.example.com", own)  # another scheme is another origin
    assert not opens(app, "http://chat.example.com:8080", own)
    assert not opens(app, "null", own)  # a sandboxed page or a file


def test_a_refusal_is_logged_with_the_origin_and_the_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app()
    with caplog.at_level(logging.WARNING, logger="flask_websocket"):
        assert not opens(app, "http://evil.example", {"Host": "chat.example.com"})
    (line,) = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert "'http://evil.example'" in line and "/echo" in line
    assert "not this app's origin (http://chat.example.com)" in line


def test_listed_origins_and_patterns_open_too() -> None:
    app = make_app(["https://app.example.com", re.compile(r"https://[a-z0-9-]+\.example\.org")])
    host = {"Host": "api.example.com"}
    assert opens(app, "http://api.example.com", host)  # its own, still
    assert opens(app, "https://app.example.com", host)
    assert opens(app, "https://team-1.example.org", host)
    assert not opens(app, "https://team-1.example.org.evil.example", host)  # whole match only
    assert not opens(app, "https://example.org", host)


def test_a_star_opens_every_origin_and_warns_at_start(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="flask_websocket"):
        app = make_app(["*"])
    assert "allows any origin" in caplog.text
    assert opens(app, "http://evil.example")


def test_behind_a_tls_proxy_proxyfix_gives_the_public_origin() -> None:
    forwarded = {"Host": "127.0.0.1:8000", "X-Forwarded-Proto": "https"}
    forwarded["X-Forwarded-Host"] = "chat.example.com"
    assert opens(make_app(proxy_fix=True), "https://chat.example.com", forwarded)
    # Without ProxyFix the app sees http://127.0.0.1:8000, and says what to do.
    app = make_app()
    assert not opens(app, "https://chat.example.com", forwarded)
    reason = app.extensions["websocket"].origin_policy(app.config).refusal(
        {"HTTP_ORIGIN": "https://localhost", "HTTP_HOST": "localhost", "wsgi.url_scheme": "http"}
    )
    assert "ProxyFix" in reason


@pytest.mark.parametrize(
    ("environ", "origin"),
    [
        ({"wsgi.url_scheme": "http", "HTTP_HOST": "a.example"}, "http://a.example"),
        ({"wsgi.url_scheme": "https", "HTTP_HOST": "a.example:443"}, "https://a.example"),
        ({"wsgi.url_scheme": "wss", "HTTP_HOST": "A.example:8443"}, "https://a.example:8443"),
        ({"wsgi.url_scheme": "http", "SERVER_NAME": "b", "SERVER_PORT": "80"}, "http://b"),
        ({"wsgi.url_scheme": "http", "HTTP_HOST": "[::1]:8080"}, "http://[::1]:8080"),
    ],
)
def test_request_origin(environ: Dict[str, str], origin: str) -> None:
    assert request_origin(environ) == origin


def test_the_old_none_entry_is_accepted_and_changes_nothing() -> None:
    policy = OriginPolicy(["http://good.example", None])
    environ = {"HTTP_HOST": "h", "wsgi.url_scheme": "http"}
    assert policy.refusal(environ) is None
    assert policy.refusal({**environ, "HTTP_ORIGIN": "http://good.example"}) is None
    assert policy.refusal({**environ, "HTTP_ORIGIN": "http://evil.example"}) is not None
