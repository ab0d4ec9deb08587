"""Send to WebSocket connections from processes that serve none.

A cron job, a Celery worker or a management script has no uWSGI and no
gevent, yet may have something to tell the connected clients. With the redis
hub (``WEBSOCKET_HUB_URL = "redis://..."``) it can publish on the same
channels, in the same envelope format, as the app's workers do::

    from flask_websocket.emitter import RedisEmitter

    emitter = RedisEmitter("redis://localhost:6379/0", name="chat")
    emitter.broadcast("the build is green", room="ci")
    emitter.send_to(connection_id, "your report is ready")
    emitter.members("ci")  # ids of the connections in the room, every worker

``name`` is the app's import name (``app.import_name``: the module that
called ``Flask(__name__)``), or the ``name`` in ``WEBSOCKET_HUB_OPTIONS`` if
the app sets one; with an app at hand, :meth:`RedisEmitter.from_app` reads
the app's configuration instead.

Plain redis-py: calls block, no monkey-patching needed, and nothing here
imports gevent. Delivery is at most once, as for the hub: workers that are
not connected to Redis at that moment miss the message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, Mapping, Optional, Union

from .exceptions import ConfigurationError
from .hubs.base import (
    KIND_ALL,
    KIND_DIRECT,
    KIND_ROOM,
    KIND_USER,
    OP_CLOSE,
    BroadcastTooLarge,
    Envelope,
    HubError,
    check_close_code,
    check_room,
    check_user_id,
    close_payload,
)
from .hubs.redis import (
    DEFAULT_MAX_PAYLOAD,
    channel_for,
    default_prefix,
    live_members,
    redis_client,
    safe_url,
)
from .protocol import OP_BINARY, OP_TEXT

if TYPE_CHECKING:  # pragma: no cover
    from flask import Flask

__all__ = ["RedisEmitter"]


class RedisEmitter:
    """Publishes broadcasts for the connections of one app, over its Redis.

    Args:
        url: the app's ``WEBSOCKET_HUB_URL`` (``redis://``, ``rediss://``
            or ``unix://``).
        name: the app's name: its import name, or the ``name`` of its
            ``WEBSOCKET_HUB_OPTIONS`` (default ``"app"``).
        prefix: the ``prefix`` of its ``WEBSOCKET_HUB_OPTIONS``, if it sets
            one (then ``name`` is not used).
        max_payload: largest message, in bytes (the hub's ``max_payload``).
        redis_options: more keyword arguments for :meth:`redis.Redis.from_url`.
    """

    def __init__(
        self,
        url: str,
        name: Optional[str] = None,
        prefix: Optional[str] = None,
        *,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        redis_options: Optional[Mapping[str, Any]] = None,
    ) -> None:
        self.url = url
        self.prefix = prefix or default_prefix(name or "app")
        self.max_payload = max_payload
        self._client = redis_client(url, redis_options, retries=1)

    @classmethod
    def from_app(cls, app: Flask) -> RedisEmitter:
        """An emitter for ``app``, from its ``WEBSOCKET_HUB_URL`` and ``WEBSOCKET_HUB_OPTIONS``.

        Raises:
            ConfigurationError: the app does not use the redis hub.
        """
        url = app.config.get("WEBSOCKET_HUB_URL")
        if not url or url.split(":", 1)[0] not in ("redis", "rediss", "unix"):
            raise ConfigurationError(
                f"the app's WEBSOCKET_HUB_URL is {url!r}: the emitter needs the redis hub "
                "(redis://host:6379/0) in the app and here"
            )
        options = dict(app.config.get("WEBSOCKET_HUB_OPTIONS") or {})
        return cls(
            url,
            name=options.get("name") or app.import_name,
            prefix=options.get("prefix"),
            max_payload=int(options.get("max_payload", DEFAULT_MAX_PAYLOAD)),
            redis_options=options.get("redis_options"),
        )

    def broadcast(
        self, message: Union[str, bytes], room: Optional[str] = None, skip: Optional[str] = None
    ) -> int:
        """Send ``message`` to every connection of the app, or to the members of ``room``.

        Args:
            message: ``str`` (text) or ``bytes`` (binary).
            room: a room name, or ``None`` for every connection.
            skip: the id of a connection not to send to.

        Returns:
            How many worker processes received it (subscribers of the channel).

        Raises:
            BroadcastTooLarge: ``message`` is over ``max_payload``.
            HubError: Redis could not be reached.
        """
        if room is None:
            return self._publish(KIND_ALL, message, "", skip)
        return self._publish(KIND_ROOM, message, check_room(room), skip)

    def send_to(self, connection_id: str, message: Union[str, bytes]) -> int:
        """Send ``message`` to the connection with this id, in whatever worker it is.

        Returns:
            1 if its worker process is subscribed, 0 if no process has it.
        """
        if not isinstance(connection_id, str) or not connection_id:
            raise ValueError(f"not a connection id: {connection_id!r}")
        return self._publish(KIND_DIRECT, message, connection_id, None)

    def send_to_user(self, user_id: Union[str, int], message: Union[str, bytes]) -> int:
        """Send ``message`` to every connection of ``user_id`` (see ``user_id_loader``).

        Returns:
            How many worker processes received it.
        """
        return self._publish(KIND_USER, message, check_user_id(user_id), None)

    def close_user(self, user_id: Union[str, int], code: int = 1008, reason: str = "") -> int:
        """Close every connection of ``user_id``, in every worker (logout, bans).

        Returns:
            How many worker processes received it.
        """
        payload = close_payload(check_close_code(code), reason)
        return self._send(Envelope(KIND_USER, OP_CLOSE, payload, check_user_id(user_id)))

    def members(self, room: str) -> List[str]:
        """Ids of the connections in ``room``, across every worker, sorted.

        Raises:
            HubError: Redis could not be reached.
        """
        check_room(room)
        try:
            return live_members(self._client, self.prefix, room)
        except Exception as exc:
            if not _is_redis_error(exc):
                raise
            raise HubError(
                f"could not read the members of {room!r} on {safe_url(self.url)} ({exc})"
            ) from exc

    def close(self) -> None:
        """Close the connections to Redis."""
        self._client.close()

    def __enter__(self) -> RedisEmitter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _publish(
        self, kind: int, message: Union[str, bytes], target: str, skip: Optional[str]
    ) -> int:
        if isinstance(message, str):
            opcode, payload = OP_TEXT, message.encode()
        elif isinstance(message, (bytes, bytearray, memoryview)):
            opcode, payload = OP_BINARY, bytes(message)
        else:
            raise TypeError(f"a message is str or bytes, not {type(message).__name__}")
        if len(payload) > self.max_payload:
            raise BroadcastTooLarge(
                f"a {len(payload)}-byte broadcast is over the limit of {self.max_payload} bytes"
            )
        return self._send(Envelope(kind, opcode, payload, target, skip or "", origin=""))

    def _send(self, envelope: Envelope) -> int:
        channel = channel_for(self.prefix, envelope)
        try:
            return int(self._client.publish(channel, envelope.encode()))
        except Exception as exc:
            if not _is_redis_error(exc):
                raise
            raise HubError(
                f"could not publish to {channel!r} on {safe_url(self.url)} ({exc})"
            ) from exc


def _is_redis_error(exc: BaseException) -> bool:
    from redis.exceptions import RedisError

    return isinstance(exc, (RedisError, OSError))
