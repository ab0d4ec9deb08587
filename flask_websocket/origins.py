"""Which web pages may open the app's WebSockets: the ``Origin`` check.

Browsers send cookies with a WebSocket handshake whatever page opens it, and
the same-origin policy does not apply to WebSockets: without a check, any
site a user visits can open the app's socket as that user (cross-site
WebSocket hijacking). So by default a handshake whose ``Origin`` header is
not the app's own origin is refused with 403 and logged.

The app's own origin is the scheme and host the request was made to, as
Werkzeug sees them: behind a proxy, trust its ``X-Forwarded-Proto`` and
``X-Forwarded-Host`` with :class:`werkzeug.middleware.proxy_fix.ProxyFix`,
or the public ``https://`` page's origin will not match the proxied
``http://`` request. Requests without an ``Origin`` (not from a browser:
scripts, services, the test client) pass; browsers always send one.

``WEBSOCKET_ALLOWED_ORIGINS`` allows more origins: a list of exact origins
(``"https://app.example.com"``) and compiled regular expressions
(``re.compile(r"https://[a-z0-9-]+\\.example\\.com")``, which must match the
whole origin). ``["*"]`` allows every origin, and says so in a warning at
start: only for apps that authenticate each connection by a token rather
than by cookies.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, List, Mapping, Optional, Pattern, Tuple
from urllib.parse import urlsplit

from .logs import RateLimitedLog

__all__ = ["OriginPolicy", "request_origin"]

logger = logging.getLogger("flask_websocket")

_DEFAULT_PORTS = {"http": "80", "https": "443"}


def _normalize(origin: str) -> str:
    """``scheme://host[:port]`` in lower case, without the scheme's default port."""
    text = origin.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:  # not a URL ("null" from a sandboxed page, or garbage)
        return text.lower()
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    if port is not None and str(port) != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    return f"{scheme}://{host}"


def request_origin(environ: Mapping[str, Any]) -> str:
    """The origin of the app as this request reached it: ``http(s)://host[:port]``."""
    scheme = str(environ.get("wsgi.url_scheme", "http")).lower()
    scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
    host = environ.get("HTTP_HOST")
    if not host:
        host = str(environ.get("SERVER_NAME", ""))
        port = str(environ.get("SERVER_PORT", ""))
        if port and port != _DEFAULT_PORTS.get(scheme):
            host = f"{host}:{port}"
    return _normalize(f"{scheme}://{host}")


class OriginPolicy:
    """The ``Origin`` check of one app, built from ``WEBSOCKET_ALLOWED_ORIGINS``."""

    def __init__(self, allowed: Optional[Iterable[Any]]) -> None:
        exact: List[str] = []
        patterns: List[Pattern[str]] = []
        self.any_origin = False
        for item in allowed or ():
            if item is None:  # the old way to allow requests without an Origin: always allowed
                continue
            if item == "*":
                self.any_origin = True
            elif isinstance(item, str):
                exact.append(_normalize(item))
            else:  # a compiled pattern (config.check_config made sure)
                patterns.append(item)
        self.exact = frozenset(exact)
        self.patterns: Tuple[Pattern[str], ...] = tuple(patterns)
        self._log = RateLimitedLog(logger, interval=1.0)

    def refusal(self, environ: Mapping[str, Any]) -> Optional[str]:
        """Why this handshake's ``Origin`` is refused, or ``None`` if it may go on."""
        origin = environ.get("HTTP_ORIGIN")
        if origin is None or self.any_origin:
            return None
        own = request_origin(environ)
        normalized = _normalize(str(origin))
        if normalized == own or normalized in self.exact:
            return None
        if any(pattern.fullmatch(str(origin)) for pattern in self.patterns):
            return None
        reason = f"not this app's origin ({own}) and not in WEBSOCKET_ALLOWED_ORIGINS"
        if normalized.partition("://")[2] == own.partition("://")[2]:
            reason += (
                "; the host matches but the scheme does not: behind a proxy that terminates "
                "TLS, trust its X-Forwarded-Proto with werkzeug's ProxyFix"
            )
        return reason

    def log_refusal(self, environ: Mapping[str, Any], reason: str) -> None:
        """One warning line per refusal (at most a few per second: refusals are cheap to cause)."""
        self._log.warning(
            "origin",
            "refused a WebSocket handshake to %s from origin %r (client %s): %s",
            environ.get("PATH_INFO", "/"),
            environ.get("HTTP_ORIGIN"),
            environ.get("REMOTE_ADDR", "?"),
            reason,
        )
