"""Exceptions raised by Flask-WebSocket.

Every exception the library raises derives from :class:`WebSocketError`, and
every one a user can meet is importable from :mod:`flask_websocket`::

    WebSocketError
    ├── ConnectionClosed            the connection is closed; .code, .reason
    │   ├── ConnectionClosedOK      closed normally (1000 or 1001, both ways)
    │   └── ConnectionClosedError   closed by an error, or lost (1006)
    ├── SendQueueFull               a non-waiting send found the send queue full
    ├── ConfigurationError          the server or app is set up so it cannot work; .key
    ├── HubError                    (hubs) other processes could not be reached
    ├── BroadcastTooLarge           (hubs) a broadcast over the hub's size limit
    ├── HandshakeRejected           (clients) the server refused the upgrade
    └── NotConnected                (ResumingClient) no open connection to send on

A handler learns that the peer has gone from :class:`ConnectionClosed`, never
from ``None`` or an empty string: empty messages are valid messages.
"""

from __future__ import annotations

from typing import Optional

from .close_codes import CloseCode

__all__ = [
    "ConfigurationError",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "HandshakeRejected",
    "NotConnected",
    "SendQueueFull",
    "WebSocketError",
]


class WebSocketError(Exception):
    """Root of every exception raised by Flask-WebSocket."""


class ConnectionClosed(WebSocketError):
    """The WebSocket connection is closed.

    Raised by ``receive``, ``send`` and the other I/O methods once the
    connection is closed, or closing. Catch it to run code when a client
    leaves; a handler that lets it propagate ends quietly.

    Attributes:
        code: the close code the peer sent (or 1005 if its close frame had
            none, 1006 if the connection was lost without a close frame).
        reason: the close reason the peer sent, possibly empty.
        sent_code: the close code this side sent, or ``None``.
    """

    def __init__(self, code: int, reason: str = "", sent_code: Optional[int] = None) -> None:
        self.code = code
        self.reason = reason
        self.sent_code = sent_code
        super().__init__(code, reason)

    def __str__(self) -> str:
        try:
            name = CloseCode(self.code).name
        except ValueError:
            name = "application"
        text = f"connection closed: code {self.code} ({name})"
        if self.reason:
            text += f", reason {self.reason!r}"
        return text


class ConnectionClosedOK(ConnectionClosed):
    """The connection was closed normally: code 1000 or 1001 (or 1005, no code)."""


class ConnectionClosedError(ConnectionClosed):
    """The connection was closed by an error, or lost without a close frame (1006)."""


class SendQueueFull(WebSocketError):
    """The connection's send queue is full and the overflow policy is ``raise``.

    Raised by :meth:`~flask_websocket.WebSocketConnection.send_nowait`. The
    peer is reading more slowly than messages are sent to it.
    """


class ConfigurationError(WebSocketError, RuntimeError):
    """Flask-WebSocket cannot work the way the server or app is set up.

    The message says which configuration key, uWSGI flag or command fixes
    it; ``key`` is the configuration key at fault (``WEBSOCKET_...``), or
    ``None`` when it is the server's flags.
    """

    def __init__(self, message: str, key: Optional[str] = None) -> None:
        super().__init__(message)
        self.key = key


class HandshakeRejected(WebSocketError):
    """The server answered the upgrade with an HTTP error instead of 101.

    Raised by :mod:`flask_websocket.testing`, and by
    :class:`flask_websocket.client.ResumingClient` for a refusal that
    retrying cannot change (4xx but 408, 425, 429). ``status`` is the HTTP
    status code, ``body`` the response body.
    """

    def __init__(self, status: int, body: bytes = b"") -> None:
        self.status = status
        self.body = body
        super().__init__(f"WebSocket handshake rejected with HTTP {status}: {body[:200]!r}")


class NotConnected(WebSocketError):
    """:class:`flask_websocket.client.ResumingClient` had no open connection to send on.

    Raised by its ``send`` when no connection opened in time, or when the
    connection dropped while sending: the message may be lost (messages
    from a client are not resumed), send it again if the app allows.
    """
