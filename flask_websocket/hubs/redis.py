"""The redis hub: many hosts, over Redis pub/sub (``redis://``, ``rediss://``, ``unix://``).

Every process subscribes, on one Redis connection of its own, to three kinds
of channel (names under the hub's ``prefix``, ``flask-websocket:<app>:`` by
default)::

    <prefix>all               broadcasts to every connection
    <prefix>room:<room>       broadcasts to one room: subscribed while the
                              process has a member in it
    <prefix>node:<node id>    send_to(): a connection id is "<node id>.<n>"

A broadcast is published once, as a binary :class:`~.base.Envelope`, to the
narrowest channel that reaches its recipients. A listener thread reads the
subscription and hands the envelopes to the event loop, which delivers them
to the local registry.

Delivery is at most once. While Redis is unreachable, ``publish`` raises
:class:`~.base.HubError` after the local members got the message, and
messages for this process published meanwhile are lost: the listener
reconnects with capped exponential backoff (0.1 s doubling to 5 s, with
jitter) and subscribes again to every channel it needs. One WARNING is logged
when the connection is lost and one when Redis is back (with the outage's
length and the rooms without history that may have lost messages), per
outage. Rooms with history lose nothing silently: once every channel is
confirmed again, the hub reads their streams from the last message
delivered here (:meth:`~.base.Hub._check_streams`); members whose messages
Redis no longer has are closed with 1012, to resume and be told.

Presence lives in Redis too::

    <prefix>members:<room>       hash: connection id -> node id
    <prefix>node:<node>:alive    "1", expires after ``presence_ttl``; refreshed
                                 every ``presence_ttl / 3`` by a heartbeat
    <prefix>node:<node>:entries  set of "<connection id>\\n<room>" of the node,
                                 to clean up after a node that died
    <prefix>nodes                set of node ids, for that clean-up

``members(room)`` keeps the hash entries whose node is alive and deletes the
others, so the entries of a killed worker disappear ``presence_ttl`` after it
died. Each heartbeat also removes every entry of at most a few dead nodes,
so rooms nobody asks about do not keep them forever. A node that finds its
own ``alive`` key gone (a Redis restart, a pause longer than the TTL) writes
all its entries again.

redis-py does blocking socket I/O, so the hub runs it in threads of its own
(:mod:`flask_websocket.concurrency.blocking`) and works under every model
whose loop runs on its own (gevent, threads, processes, asyncio). Under
gevent with the standard library patched (``--gevent-early-monkey-patch``,
which ``flask websocket run`` passes) those threads are greenlets and a
handler's Redis calls run in its own greenlet; without the patch they are
system threads.

The channel and key names are module functions, shared with
:class:`flask_websocket.emitter.RedisEmitter`, which needs no event loop.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional, Set, Tuple
from urllib.parse import urlsplit, urlunsplit

from ..concurrency import blocking
from ..config import option_error
from ..exceptions import ConfigurationError
from ..history import Entry, HistoryStore, Limits, Position, new_epoch
from .base import KIND_DIRECT, KIND_ROOM, Envelope, Hub, HubError, RateLimitedLog

if TYPE_CHECKING:  # pragma: no cover
    import redis

    from ..concurrency.base import Backend
    from ..rooms import RoomRegistry

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "RedisHub",
    "alive_key",
    "channel_all",
    "channel_for",
    "channel_node",
    "channel_room",
    "default_prefix",
    "entries_key",
    "live_members",
    "members_key",
    "nodes_key",
    "redis_client",
    "safe_url",
]

logger = logging.getLogger("flask_websocket.hubs")

#: Largest broadcast payload, in bytes, unless the ``max_payload`` option says otherwise.
DEFAULT_MAX_PAYLOAD = 2**20
#: Reconnection backoff of the listener: first and longest wait, in seconds.
BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0
#: Longest wait in ``start`` and ``join`` for Redis to confirm a subscription.
SUBSCRIBE_WAIT = 2.0
#: Dead nodes whose entries one heartbeat removes, at most.
GC_NODES_PER_BEAT = 10
#: Messages the listener hands to the event loop in one call, at most.
_BATCH = 256

# -- names shared with the emitter -------------------------------------------


def default_prefix(name: str) -> str:
    """The channel and key prefix of the app called ``name`` (its import name)."""
    return f"flask-websocket:{name}:"


def channel_all(prefix: str) -> str:
    """The channel of broadcasts to every connection."""
    return f"{prefix}all"


def channel_room(prefix: str, room: str) -> str:
    """The channel of broadcasts to ``room``."""
    return f"{prefix}room:{room}"


def channel_node(prefix: str, node_id: str) -> str:
    """The channel of messages for connections of the process ``node_id``."""
    return f"{prefix}node:{node_id}"


def channel_for(prefix: str, envelope: Envelope) -> str:
    """The channel that reaches the recipients of ``envelope``."""
    if envelope.kind == KIND_ROOM:
        return channel_room(prefix, envelope.target)
    if envelope.kind == KIND_DIRECT:
        return channel_node(prefix, envelope.target.split(".")[0])
    return channel_all(prefix)


def stream_keys(prefix: str, room: str) -> List[str]:
    """The keys of ``room``'s history: the stream, its last offset, its epoch.

    One hash tag (``{room}``) for the three, so that they live on one shard
    of a Redis Cluster, and each room's on its own.
    """
    tag = "{" + room + "}"
    return [f"{prefix}stream:{tag}", f"{prefix}offset:{tag}", f"{prefix}epoch:{tag}"]


#: Append one message to a room's stream and return its position: the
#: stream's epoch (a new one, and an empty stream, if Redis lost it) and the
#: next offset. Trimmed to the newest ARGV[1] entries; idle rooms expire.
_APPEND = """
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[2]
  redis.call('SET', KEYS[3], epoch)
  redis.call('DEL', KEYS[1], KEYS[2])
end
local offset = redis.call('INCR', KEYS[2])
local added = redis.pcall('XADD', KEYS[1], 'MAXLEN', ARGV[1], '0-' .. offset,
                          'c', ARGV[3], 'p', ARGV[4], 't', ARGV[5])
if type(added) == 'table' and added.err then
  -- The counter and the stream disagree (one of them was evicted): a new stream.
  epoch = ARGV[2]
  redis.call('SET', KEYS[3], epoch)
  redis.call('DEL', KEYS[1])
  offset = 1
  redis.call('SET', KEYS[2], offset)
  redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '0-1', 'c', ARGV[3], 'p', ARGV[4], 't', ARGV[5])
end
local keep = tonumber(ARGV[6])
if keep > 0 then
  for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], keep) end
end
return {epoch, offset}
"""


class RedisStore(HistoryStore):
    """Rooms' streams in Redis: one stream per room, offsets without gaps, an epoch.

    An offset counter per room gives each message the next offset (the
    stream's entry id is ``0-<offset>``), inside one Lua script with the
    append, so two hosts that publish into a room at once get consecutive
    offsets. The epoch is chosen when the room's stream is (re)created: when
    Redis lost it (a restart without persistence, a flush), clients are told
    that recovery was not complete. A room whose history has a ``ttl``
    expires, keys and all, after that long without a message.
    """

    def __init__(self, hub: RedisHub) -> None:
        self._hub = hub
        self._append: Any = None

    def _client(self) -> redis.Redis:
        client = self._hub._client
        if client is None:
            raise HubError("redis hub: not started")
        return client

    def append(self, room: str, opcode: int, payload: bytes, limits: Limits) -> Position:
        client = self._client()
        if self._append is None:
            self._append = client.register_script(_APPEND)
        keep_ms = int(limits.ttl * 1000) if limits.ttl else 0
        keys = stream_keys(self._hub.prefix, room)
        args = [limits.size, new_epoch(), opcode, payload, int(time.time() * 1000), keep_ms]
        try:
            epoch, offset = self._append(keys=keys, args=args)
        except Exception as exc:
            if not _is_redis_error(exc):
                raise
            raise HubError(
                f"redis hub: could not add to the history of {room!r} on "
                f"{safe_url(self._hub.url)} ({exc}); nobody got the message"
            ) from exc
        return Position(_text(epoch), int(offset))

    def read(self, room: str, after: int, limits: Limits) -> Tuple[str, int, List[Entry]]:
        stream, offset_key, epoch_key = stream_keys(self._hub.prefix, room)
        pipe = self._client().pipeline(transaction=True)  # one snapshot
        pipe.get(epoch_key)
        pipe.get(offset_key)
        pipe.xrange(stream, min=f"0-{after + 1}", max="+")
        try:
            epoch, last, rows = pipe.execute()
        except Exception as exc:
            if not _is_redis_error(exc):
                raise
            raise HubError(
                f"redis hub: could not read the history of {room!r} on "
                f"{safe_url(self._hub.url)} ({exc})"
            ) from exc
        oldest = (time.time() - limits.ttl) * 1000 if limits.ttl else 0
        entries = []
        for entry_id, fields in rows:
            fields = {_text(k): v for k, v in fields.items()}
            when = int(fields["t"])
            if when >= oldest:
                offset = int(_text(entry_id).split("-")[1])
                entries.append(Entry(offset, int(fields["c"]), bytes(fields["p"]), when / 1000))
        return (_text(epoch) if epoch else ""), int(last or 0), entries


def members_key(prefix: str, room: str) -> str:
    """The hash of ``room``'s members: connection id -> node id."""
    return f"{prefix}members:{room}"


def alive_key(prefix: str, node_id: str) -> str:
    """The key that exists while the process ``node_id`` is alive."""
    return f"{prefix}node:{node_id}:alive"


def entries_key(prefix: str, node_id: str) -> str:
    """The set of ``"<connection id>\\n<room>"`` entries the process ``node_id`` wrote."""
    return f"{prefix}node:{node_id}:entries"


def nodes_key(prefix: str) -> str:
    """The set of node ids that wrote presence entries."""
    return f"{prefix}nodes"


def safe_url(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def redis_client(
    url: str, options: Optional[Mapping[str, Any]] = None, *, retries: int = 1
) -> redis.Redis:
    """A redis-py client for ``url`` with the hub's defaults.

    RESP2 (any Redis server), 5 s connect and socket timeouts, TCP
    keepalive, and at most ``retries`` immediate retries (redis-py's own
    default retries for seconds: too long for a broadcast). ``options``
    (``redis_options``) are passed to :meth:`redis.Redis.from_url` last.
    """
    try:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError as exc:
        raise ConfigurationError(
            "the redis hub needs redis-py: pip install 'Flask-WebSocket[redis]'"
        ) from exc
    kwargs: Dict[str, Any] = {
        "protocol": 2,
        "socket_timeout": 5.0,
        "socket_connect_timeout": 5.0,
        "retry": Retry(NoBackoff(), retries),
    }
    if urlsplit(url).scheme in ("redis", "rediss"):
        kwargs["socket_keepalive"] = True
    kwargs.update(options or {})
    return redis.Redis.from_url(url, **kwargs)


def live_members(
    client: redis.Redis, prefix: str, room: str, exclude_node: Optional[str] = None
) -> List[str]:
    """Ids of ``room``'s members whose process is alive, sorted.

    Entries of dead processes are deleted on the way. ``exclude_node``
    leaves out one process's members (the caller's, who knows its own).
    """
    key = members_key(prefix, room)
    entries = {
        _text(connection_id): _text(node) for connection_id, node in client.hgetall(key).items()
    }
    nodes = sorted(set(entries.values()) - {exclude_node})
    if not nodes:
        return []
    pipe = client.pipeline(transaction=False)
    for node in nodes:
        pipe.exists(alive_key(prefix, node))
    dead = {node for node, alive in zip(nodes, pipe.execute()) if not alive}
    if dead:
        client.hdel(key, *[cid for cid, node in entries.items() if node in dead])
    return sorted(cid for cid, node in entries.items() if node not in dead and node != exclude_node)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entry(connection_id: str, room: str) -> str:
    return f"{connection_id}\n{room}"


# -- the hub -----------------------------------------------------------------


class RedisHub(Hub):
    """Rooms, broadcast and presence across hosts, over Redis (``redis://``).

    Options (``WEBSOCKET_HUB_OPTIONS``):

    ``url``
        the Redis URL (``WEBSOCKET_HUB_URL``): ``redis://[:password@]host:port/db``,
        ``rediss://`` (TLS) or ``unix:///path/redis.sock?db=0``.
    ``name``
        the app's name (default: its import name); apps with the same name
        on the same Redis share broadcasts.
    ``prefix``
        prefix of every channel and key (default ``flask-websocket:<name>:``).
    ``max_payload``
        largest broadcast, in bytes (default 1 MiB).
    ``health_check_interval``
        seconds of silence after which the listener PINGs Redis; no answer
        within as long again and it reconnects (default 10).
    ``presence_ttl``
        seconds after which the members of a process that stopped its
        heartbeat (it died) no longer count (default 30).
    ``redis_options``
        more keyword arguments for :meth:`redis.Redis.from_url`.

    redis-py blocks on its sockets, so the hub's Redis work runs in threads
    of its own (:mod:`flask_websocket.concurrency.blocking`): a listener
    reads the subscription and hands what arrives to the event loop, a
    maintainer keeps presence and subscriptions up to date, and a handler's
    ``broadcast()`` or ``join()`` waits for its Redis call with
    :meth:`~flask_websocket.concurrency.base.Backend.run_blocking`. Those
    threads never touch the registry: the hub keeps its own copy of who is
    in which room here, updated by the registry's hooks.
    """

    scheme = "redis"

    def __init__(
        self,
        registry: RoomRegistry,
        options: Optional[Mapping[str, Any]] = None,
        backend: Optional[Backend] = None,
    ) -> None:
        super().__init__(registry, options, backend)
        url = self.options.get("url")
        if not url or not isinstance(url, str):
            raise option_error("redis", "url", url, "a URL such as 'redis://host:6379/0'")
        self.url = url
        name = str(self.options.get("name") or "app")
        self.prefix = str(self.options.get("prefix") or default_prefix(name))
        defaults = {"max_payload": DEFAULT_MAX_PAYLOAD, "health_check_interval": 10.0}
        defaults["presence_ttl"] = 30.0
        for option, default in defaults.items():
            value = self.options.get(option, default)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise option_error("redis", option, value, "a number above 0")
        self.max_payload = int(self.options.get("max_payload", DEFAULT_MAX_PAYLOAD))
        self.health_check_interval = float(self.options.get("health_check_interval", 10.0))
        self.presence_ttl = float(self.options.get("presence_ttl", 30.0))
        self.redis_options: Dict[str, Any] = dict(self.options.get("redis_options") or {})
        self.node_id = registry.node_id
        self._client: Optional[redis.Redis] = None  # publish and presence
        self._pubsub_client: Optional[redis.Redis] = None
        self._pubsub: Any = None  # the listener's redis.client.PubSub, while it has one
        self._threads: List[Any] = []
        self._running = False
        #: Guards the state below, shared by the loop and the hub's threads.
        #: Held briefly, never across Redis I/O nor anything that may switch.
        #: The operating system's lock even where gevent patched threading:
        #: a leave torn down in the event loop takes it, and a gevent lock
        #: with waiters queued (joins woken in _wait_confirmed) would make
        #: the loop wait: BlockingSwitchOutError, seen when a Redis restart
        #: closed many members while others joined.
        self._lock: Any = blocking.system_lock()
        self._changed = blocking.thread_condition(self._lock)  # confirmations, outages
        self._subscribing: Any = blocking.thread_lock()  # one subscription change at a time
        self._presence_lock: Any = blocking.thread_lock()  # one presence flush at a time
        self._wake: Any = blocking.thread_event()  # the maintainer has work
        self._stopping: Any = blocking.thread_event()  # ends the listener's backoff sleep
        #: This process's rooms with members, and members per room (the
        #: registry's, as its hooks reported them).
        self._rooms: Set[str] = set()
        self._members: Dict[str, Set[str]] = {}
        #: Channels sent in SUBSCRIBE on the current connection / confirmed by Redis.
        self._subscribed: Set[str] = set()
        self._confirmed: Set[str] = set()
        self._connected = False
        #: Read the rooms' streams again once every channel is confirmed (a
        #: new connection, or a join whose subscription came late).
        self._check_wanted = False
        self._ever_connected = False
        self._outage_since: Optional[float] = None
        self._backoff = BACKOFF_MIN
        #: (room, connection id) pairs whose presence entry must be written or deleted.
        self._dirty: Dict[Tuple[str, str], None] = {}
        self._resync = True
        #: Rooms whose subscription may have to change.
        self._room_changes: Set[str] = set()
        self._presence_failing = False
        self._presence_warned = False
        self._errors = RateLimitedLog(logger)

    @property
    def connected(self) -> bool:
        """True while the listener is subscribed (Redis confirmed it)."""
        return self._connected

    # -- hooks -----------------------------------------------------------------

    def _start(self) -> None:
        self._client = redis_client(self.url, self.redis_options, retries=1)
        self._pubsub_client = redis_client(self.url, self.redis_options, retries=0)
        self._running = True
        self._stopping.clear()
        self._resync = True
        self._backoff = BACKOFF_MIN
        self._threads = [
            blocking.start_thread(self._listen, name="flask-websocket-redis-listener"),
            blocking.start_thread(self._maintain, name="flask-websocket-redis-maintainer"),
        ]
        if not self.backend.in_event_loop():
            # Receive broadcasts from the moment start() returns (Redis allowing).
            channels = [channel_all(self.prefix), channel_node(self.prefix, self.node_id)]
            self.backend.run_blocking(self._wait_confirmed, channels, SUBSCRIBE_WAIT)

    def _stop(self) -> None:
        self._running = False
        self._stopping.set()
        self._wake.set()
        with self._lock:
            pubsub, self._pubsub = self._pubsub, None
            self._connected = False
            self._changed.notify_all()
        if pubsub is not None:  # the listener's read fails at once
            _close_quietly(pubsub)
        threads, self._threads = self._threads, []
        if not self.backend.in_event_loop():
            self.backend.run_blocking(self._finish_stopping, threads)
        for client in (self._client, self._pubsub_client):
            if client is not None:
                _close_quietly(client)
        self._client = self._pubsub_client = None
        with self._lock:
            self._subscribed.clear()
            self._confirmed.clear()
        self._resync = True

    def _finish_stopping(self, threads: List[Any]) -> None:
        for thread in threads:
            thread.join(2.0)
        if self._client is not None:
            try:
                self._remove_own_presence()
            except Exception as exc:  # best effort: the entries expire anyway
                logger.debug("redis hub: could not remove presence entries (%s)", exc)

    def _make_history_store(self) -> HistoryStore:
        return RedisStore(self)

    def _publish(self, envelope: Envelope) -> None:
        if envelope.kind == KIND_DIRECT and envelope.target.split(".")[0] == self.node_id:
            return  # a connection of this process: delivered already
        channel = channel_for(self.prefix, envelope)
        data = envelope.encode()
        if self.backend.in_event_loop():  # cannot wait: publish from a thread, log failures
            blocking.executor().submit(self._publish_logged, channel, data)
            return
        self.backend.run_blocking(self._publish_now, channel, data)

    def _publish_now(self, channel: str, data: bytes) -> None:
        client = self._client
        assert client is not None  # publish() started the hub
        try:
            client.publish(channel, data)
        except Exception as exc:
            if not _is_redis_error(exc):
                raise
            raise HubError(
                f"redis hub: could not publish to {channel!r} on {safe_url(self.url)} ({exc}); "
                "members in this process got the message, members in other processes did not"
            ) from exc

    def _publish_logged(self, channel: str, data: bytes) -> None:
        try:
            self._publish_now(channel, data)
        except Exception as exc:
            self._errors.warning("publish", "%s", exc)

    def _remote_members(self, room: str) -> List[str]:
        if self.backend.in_event_loop():
            raise HubError("redis hub: members() cannot wait for Redis in the event loop")
        result: List[str] = self.backend.run_blocking(self._read_members, room)
        return result

    def _read_members(self, room: str) -> List[str]:
        client = self._client
        assert client is not None  # members() started the hub
        try:
            return live_members(client, self.prefix, room, exclude_node=self.node_id)
        except Exception as exc:
            if not _is_redis_error(exc):
                raise
            raise HubError(
                f"redis hub: could not read the members of {room!r} on {safe_url(self.url)} ({exc})"
            ) from exc

    def _room_joined(self, room: str) -> None:
        with self._lock:
            self._rooms.add(room)
            if not self._running:
                return  # start() subscribes to every room with members
            self._room_changes.add(room)
        if self.backend.in_event_loop():
            self._wake.set()  # the maintainer subscribes
            return
        if not self.backend.run_blocking(self._subscribe_and_wait, room) and self._running:
            # Not confirmed in time (Redis away or slow): messages published
            # until it is may not reach this process; read them from the
            # store then. (A join's own catch-up reads the store anyway.)
            self.registry.streams.mark_unsure(room)
            self._want_stream_check()

    def _subscribe_and_wait(self, room: str) -> bool:
        self._sync_subscriptions([room])
        return self._wait_confirmed([channel_room(self.prefix, room)], SUBSCRIBE_WAIT)

    def _want_stream_check(self) -> None:
        """Read the unsure streams again once every channel is confirmed (now, if it is)."""
        with self._lock:
            check = self._connected and self._confirmed.issuperset(self._subscribed)
            self._check_wanted = not check
        if check:
            self.backend.call_soon_threadsafe(self._check_streams)

    def _room_left(self, room: str) -> None:
        with self._lock:
            self._rooms.discard(room)
            if not self._running:
                return
            self._room_changes.add(room)
        self._wake.set()  # the maintainer unsubscribes: this may run in the event loop

    def _member_joined(self, room: str, connection_id: str) -> None:
        with self._lock:
            self._members.setdefault(room, set()).add(connection_id)
            if not self._running:
                return  # start() writes every member
            self._dirty[(room, connection_id)] = None
            flush_now = self._connected and not self._presence_failing
        if flush_now and not self.backend.in_event_loop():
            try:
                # Visible to every process when join() returns.
                self.backend.run_blocking(self._flush_presence)
                return
            except Exception as exc:
                if not _is_redis_error(exc):
                    raise
                self._presence_failed(exc)
        self._wake_maintainer()

    def _member_left(self, room: str, connection_id: str) -> None:
        with self._lock:
            members = self._members.get(room)
            if members is not None:
                members.discard(connection_id)
                if not members:
                    del self._members[room]
            if not self._running:
                return  # start() removes what is left of it
            self._dirty[(room, connection_id)] = None
        self._wake_maintainer()  # never waits here: this may run in the event loop

    def _wake_maintainer(self) -> None:
        # While Redis fails, the maintainer retries on its own schedule (and
        # the listener wakes it when Redis is back): joins must not hurry it.
        if self._connected and not self._presence_failing:
            self._wake.set()

    # -- subscription (the hub's threads) ------------------------------------------

    def _wanted_channels(self) -> Set[str]:
        channels = {channel_all(self.prefix), channel_node(self.prefix, self.node_id)}
        with self._lock:
            channels.update(channel_room(self.prefix, room) for room in self._rooms)
        return channels

    def _sync_subscriptions(self, rooms: Iterable[str]) -> None:
        """Subscribe to those of ``rooms`` that have members here, unsubscribe from the others."""
        with self._subscribing:
            pubsub = self._pubsub
            if pubsub is None:
                return  # the listener subscribes to everything when it connects
            add, remove = set(), set()
            with self._lock:
                for room in rooms:
                    channel = channel_room(self.prefix, room)
                    if room in self._rooms:
                        if channel not in self._subscribed:
                            add.add(channel)
                    elif channel in self._subscribed:
                        remove.add(channel)
                self._confirmed.difference_update(add)
            try:
                if add:
                    pubsub.subscribe(*sorted(add))
                    with self._lock:
                        self._subscribed.update(add)
                if remove:
                    pubsub.unsubscribe(*sorted(remove))
                    with self._lock:
                        self._subscribed.difference_update(remove)
            except Exception as exc:
                if not _is_redis_error(exc):
                    raise
                # The listener sees the broken connection too, and resubscribes.
                logger.debug("redis hub: subscription change failed (%s)", exc)

    def _wait_confirmed(self, channels: List[str], timeout: float) -> bool:
        """Wait until Redis confirmed ``channels``, the connection failed, or ``timeout``.

        Whether Redis confirmed them.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            while (
                self._running
                and not self._confirmed.issuperset(channels)
                and self._outage_since is None
            ):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            return self._confirmed.issuperset(channels)

    # -- the listener (a thread of the hub) --------------------------------------------

    def _listen(self) -> None:
        client = self._pubsub_client
        assert client is not None
        while self._running:
            pubsub = client.pubsub()  # type: ignore[no-untyped-call]
            try:
                with self._subscribing:
                    wanted = self._wanted_channels()
                    with self._lock:
                        if not self._running:
                            break
                        self._pubsub = pubsub
                        self._subscribed, self._confirmed = set(wanted), set()
                        self._check_wanted = True
                    pubsub.subscribe(*sorted(wanted))
                self._read(pubsub)
            except Exception as exc:
                if self._running:
                    if _is_redis_error(exc):
                        self._connection_failed(exc)
                    else:
                        logger.exception("redis hub: listener error; reconnecting")
            finally:
                with self._lock:
                    if self._pubsub is pubsub:
                        self._pubsub = None
                    self._connected = False
                    self._subscribed, self._confirmed = set(), set()
                    self._changed.notify_all()
                _close_quietly(pubsub)
                if self._running:  # what is published from now on may never reach us
                    self.backend.call_soon_threadsafe(self.registry.streams.subscription_lost)
            delay = random.uniform(self._backoff / 2, self._backoff)
            self._backoff = min(self._backoff * 2, BACKOFF_MAX)
            self._stopping.wait(delay)

    def _read(self, pubsub: Any) -> None:
        """Hand every message to the event loop until the connection breaks or the hub stops."""
        interval = self.health_check_interval
        heard_at = time.monotonic()
        pinged_at: Optional[float] = None
        while self._running:
            message = pubsub.get_message(timeout=interval)
            now = time.monotonic()
            if message is None:
                if pinged_at is not None and now - pinged_at >= interval:
                    from redis.exceptions import ConnectionError as RedisConnectionError

                    raise RedisConnectionError(
                        f"no answer from Redis for {now - heard_at:.1f} s (health check)"
                    )
                if pinged_at is None and now - heard_at >= interval:
                    pubsub.ping()
                    pinged_at = now
                continue
            heard_at, pinged_at = now, None
            batch: List[bytes] = []
            while message is not None:  # what is there already, in one call into the loop
                self._note(message, batch)
                if len(batch) >= _BATCH:
                    break
                message = pubsub.get_message(timeout=0.0)
            if batch:
                self.backend.call_soon_threadsafe(functools.partial(self._deliver, batch))

    def _note(self, message: Dict[str, Any], batch: List[bytes]) -> None:
        """One message of the subscription: a broadcast for the batch, or a confirmation."""
        kind = message["type"]
        if kind == "message":
            batch.append(message["data"])
        elif kind == "subscribe":
            with self._lock:
                self._confirmed.add(_text(message["channel"]))
                first = not self._connected
                self._connected = True
                check = self._check_wanted and self._confirmed.issuperset(self._subscribed)
                if check:
                    self._check_wanted = False
                self._changed.notify_all()
            if first:
                self._connection_made()
            if check:  # everything published from now on reaches us: read what came before
                self.backend.call_soon_threadsafe(self._check_streams)
        elif kind == "unsubscribe":
            with self._lock:
                self._confirmed.discard(_text(message["channel"]))

    def _deliver(self, batch: List[bytes]) -> None:
        """In the event loop: deliver what the listener received."""
        for data in batch:
            try:
                self.receive(data)
            except Exception:  # one bad message must not stop the others
                self._errors.exception("deliver", "redis hub: error delivering a message")

    def _connection_made(self) -> None:
        with self._lock:
            self._ever_connected = True
            outage_since, self._outage_since = self._outage_since, None
        self._backoff = BACKOFF_MIN
        self._resync = True  # Redis may have restarted empty: write presence again
        self._wake.set()  # and apply room changes made while disconnected
        if outage_since is not None:
            with self._lock:
                rooms = sorted(self._rooms)
            plain = [room for room in rooms if self.history.limits_for(room) is None]
            logger.warning(
                "redis hub: Redis at %s is back after %.1f s; listening again. What other "
                "processes broadcast meanwhile to everyone, to connections here, and to the "
                "%d room(s) without history that have members here is lost; the %d room(s) "
                "with history are read from their streams",
                safe_url(self.url),
                time.monotonic() - outage_since,
                len(plain),
                len(rooms) - len(plain),
            )

    def _connection_failed(self, exc: BaseException) -> None:
        with self._lock:
            first = self._outage_since is None
            if first:
                self._outage_since = time.monotonic()
            self._changed.notify_all()
        if first:
            logger.warning(
                "redis hub: %s Redis at %s (%s); broadcasts from other processes are lost "
                "until it is back; reconnecting",
                "lost the connection to" if self._ever_connected else "cannot connect to",
                safe_url(self.url),
                exc,
            )
        else:
            logger.debug("redis hub: reconnection failed (%s)", exc)

    # -- presence (the hub's threads) ----------------------------------------------

    def _maintain(self) -> None:
        """Heartbeat, presence writes and subscription changes."""
        interval = self.presence_ttl / 3
        next_beat = 0.0
        failures = 0
        while self._running:
            self._wake.clear()
            with self._lock:
                rooms, self._room_changes = self._room_changes, set()
            if rooms:  # first: it does not depend on presence writes working
                self._sync_subscriptions(rooms)
            try:
                if time.monotonic() >= next_beat:
                    self._heartbeat()
                    next_beat = time.monotonic() + interval
                if self._resync:
                    self._resync = False
                    try:
                        self._resync_presence()
                    except BaseException:
                        self._resync = True
                        raise
                self._flush_presence()
            except Exception as exc:
                if not self._running:
                    return  # stopped while writing: the clients are closed
                if not _is_redis_error(exc):
                    logger.exception("redis hub: presence error")
                else:
                    self._presence_failed(exc)
                failures += 1
                backoff = min(BACKOFF_MIN * 2**failures, BACKOFF_MAX, interval)
                self._wake.wait(random.uniform(backoff / 2, backoff))
                continue
            failures = 0
            if self._presence_failing:
                self._presence_failing = False
                if self._presence_warned:
                    self._presence_warned = False
                    logger.info("redis hub: presence entries written again")
            self._wake.wait(max(0.0, next_beat - time.monotonic()))

    def _presence_failed(self, exc: BaseException) -> None:
        if self._presence_failing:
            return
        self._presence_failing = True
        if _is_connection_error(exc):  # an outage: the listener sees it too, and reports it
            logger.debug("redis hub: could not write presence entries (%s)", exc)
            return
        self._presence_warned = True
        logger.warning("redis hub: could not write presence entries (%s); retrying", exc)

    def _ttl_ms(self) -> int:
        return max(1, int(self.presence_ttl * 1000))

    def _heartbeat(self) -> None:
        """Say this process is alive; write everything again if Redis forgot; clean up the dead."""
        assert self._client is not None
        pipe = self._client.pipeline(transaction=False)
        pipe.exists(alive_key(self.prefix, self.node_id))
        pipe.set(alive_key(self.prefix, self.node_id), 1, px=self._ttl_ms())
        pipe.sadd(nodes_key(self.prefix), self.node_id)
        pipe.smembers(nodes_key(self.prefix))
        existed, _, _, nodes = pipe.execute()
        if not existed:
            self._resync = True
        others = sorted({_text(node) for node in nodes} - {self.node_id})
        self._collect_dead_nodes(others)

    def _collect_dead_nodes(self, nodes: List[str]) -> None:
        """Delete every presence entry of (a few of) the nodes whose alive key expired."""
        if not nodes:
            return
        assert self._client is not None
        pipe = self._client.pipeline(transaction=False)
        for node in nodes:
            pipe.exists(alive_key(self.prefix, node))
        dead = [node for node, alive in zip(nodes, pipe.execute()) if not alive]
        for node in dead[:GC_NODES_PER_BEAT]:
            entries = self._client.smembers(entries_key(self.prefix, node))
            pipe = self._client.pipeline(transaction=False)
            for entry in entries:
                connection_id, _, room = _text(entry).partition("\n")
                pipe.hdel(members_key(self.prefix, room), connection_id)
            pipe.delete(entries_key(self.prefix, node))
            pipe.srem(nodes_key(self.prefix), node)
            pipe.execute()
            logger.debug("redis hub: removed %d entries of dead node %s", len(entries), node)

    def _local_rooms(self) -> Dict[str, Set[str]]:
        with self._lock:
            return {room: set(members) for room, members in self._members.items() if members}

    def _resync_presence(self) -> None:
        """Make Redis hold exactly this process's members: after a restart, or at start."""
        with self._presence_lock:
            self._write_all_presence()

    def _write_all_presence(self) -> None:
        assert self._client is not None
        local = self._local_rooms()
        wanted = {_entry(cid, room) for room, members in local.items() for cid in members}
        own = entries_key(self.prefix, self.node_id)
        stale = {_text(entry) for entry in self._client.smembers(own)} - wanted
        pipe = self._client.pipeline(transaction=False)
        pipe.set(alive_key(self.prefix, self.node_id), 1, px=self._ttl_ms())
        pipe.sadd(nodes_key(self.prefix), self.node_id)
        for room, members in local.items():
            pipe.hset(
                members_key(self.prefix, room),
                mapping=dict.fromkeys(sorted(members), self.node_id),
            )
        if wanted:
            pipe.sadd(own, *sorted(wanted))
        for entry in sorted(stale):
            connection_id, _, room = entry.partition("\n")
            pipe.hdel(members_key(self.prefix, room), connection_id)
            pipe.srem(own, entry)
        pipe.execute()

    def _flush_presence(self) -> None:
        """Write the joins and leaves noted since the last flush, as the members are now.

        One flush at a time, each taking what was noted before it started:
        a leave and the join that follows it reach Redis in that order.
        """
        if not self._dirty:
            return
        with self._presence_lock:
            self._write_dirty_presence()

    def _write_dirty_presence(self) -> None:
        assert self._client is not None
        with self._lock:
            if not self._dirty:
                return
            batch, self._dirty = self._dirty, {}
            present = {(room, cid) for room, cid in batch if cid in self._members.get(room, ())}
        own = entries_key(self.prefix, self.node_id)
        pipe = self._client.pipeline(transaction=False)
        # Alive before the entries: others must not take them for a dead node's.
        pipe.set(alive_key(self.prefix, self.node_id), 1, px=self._ttl_ms())
        pipe.sadd(nodes_key(self.prefix), self.node_id)
        for room, connection_id in batch:
            key = members_key(self.prefix, room)
            if (room, connection_id) in present:
                pipe.hset(key, connection_id, self.node_id)
                pipe.sadd(own, _entry(connection_id, room))
            else:
                pipe.hdel(key, connection_id)
                pipe.srem(own, _entry(connection_id, room))
        try:
            pipe.execute()
        except BaseException:
            with self._lock:
                for item in batch:  # written again, as the members will be then
                    self._dirty.setdefault(item)
            raise

    def _remove_own_presence(self) -> None:
        """Delete this process's entries and alive key (when it stops)."""
        assert self._client is not None
        own = entries_key(self.prefix, self.node_id)
        entries = self._client.smembers(own)
        pipe = self._client.pipeline(transaction=False)
        for entry in entries:
            connection_id, _, room = _text(entry).partition("\n")
            pipe.hdel(members_key(self.prefix, room), connection_id)
        pipe.delete(own, alive_key(self.prefix, self.node_id))
        pipe.srem(nodes_key(self.prefix), self.node_id)
        pipe.execute()


def _is_connection_error(exc: BaseException) -> bool:
    from redis.exceptions import ConnectionError, TimeoutError

    return isinstance(exc, (ConnectionError, TimeoutError, OSError))


def _is_redis_error(exc: BaseException) -> bool:
    from redis.exceptions import RedisError

    return isinstance(exc, (RedisError, OSError))


def _close_quietly(thing: Any) -> None:
    try:
        thing.close()
    except Exception as exc:  # closing a broken connection may fail: it is gone anyway
        logger.debug("redis hub: error while closing (%s)", exc)
