"""The ``WEBSOCKET_*`` configuration keys: their defaults, and the check of their values.

Every key is read from ``app.config``; :data:`CONFIG_DEFAULTS` lists them all
with their defaults (``init_app`` sets what the app did not). A value that
cannot work raises :class:`~flask_websocket.exceptions.ConfigurationError`,
whose message and ``key`` attribute name the key: at ``init_app``, and again
when the first connection reads the configuration (an app may change it in
between, as tests do).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any, Callable, Dict, Optional
from urllib.parse import urlsplit

from .compression import COMPRESSION_METHODS, deflate_options_problem
from .exceptions import ConfigurationError
from .sendqueue import OVERFLOW_POLICIES

__all__ = [
    "CONFIG_DEFAULTS",
    "HUB_SCHEMES",
    "OVERFLOW_POLICIES",
    "check_config",
    "compression_problem",
    "option_error",
    "rate_limit_problem",
]

#: Every configuration key, with its default.
CONFIG_DEFAULTS: Dict[str, Any] = {
    "WEBSOCKET_MAX_MESSAGE_SIZE": 2**20,
    "WEBSOCKET_PING_INTERVAL": 25.0,
    "WEBSOCKET_PING_TIMEOUT": 20.0,
    "WEBSOCKET_CLOSE_TIMEOUT": 5.0,
    "WEBSOCKET_ALLOWED_ORIGINS": None,
    "WEBSOCKET_RECEIVE_QUEUE_SIZE": 64,
    "WEBSOCKET_SEND_QUEUE_SIZE": 2**20,
    "WEBSOCKET_SEND_QUEUE_OVERFLOW": "disconnect",
    "WEBSOCKET_HUB_URL": None,
    "WEBSOCKET_HUB_OPTIONS": {},
    "WEBSOCKET_MAX_CONNECTIONS": None,
    "WEBSOCKET_MAX_CONNECTIONS_PER_IP": None,
    "WEBSOCKET_HISTORY": {},
    "WEBSOCKET_RATE_LIMIT": None,
    "WEBSOCKET_COMPRESSION": None,
    "WEBSOCKET_COMPRESSION_OPTIONS": {},
    "WEBSOCKET_COMPRESSION_THRESHOLD": 128,
}

#: URL schemes of ``WEBSOCKET_HUB_URL``.
HUB_SCHEMES = ("memory", "local", "redis", "rediss", "unix")


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _positive_number(value: Any) -> Optional[str]:
    if not _is_number(value) or value <= 0:
        return "a number of seconds above 0"
    return None


def _optional_positive_number(value: Any) -> Optional[str]:
    return None if value is None else _positive_number(value)


def _optional_interval(value: Any) -> Optional[str]:
    if value is None or (_is_number(value) and value >= 0):
        return None
    return "a number of seconds, or None (or 0) for none"


def _positive_int(value: Any) -> Optional[str]:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        return "a whole number above 0"
    return None


def _optional_positive_int(value: Any) -> Optional[str]:
    if value is None:
        return None
    problem = _positive_int(value)
    return f"{problem}, or None" if problem else None


def _origins(value: Any) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return "a list of origins such as ['https://example.com'] (or None: this app's only)"
    if not all(
        origin is None or isinstance(origin, str) or hasattr(origin, "fullmatch")
        for origin in value
    ):
        return "a list of str origins and compiled regular expressions (re.compile(...))"
    return None


def rate_limit_problem(value: Any) -> Optional[str]:
    """What is wrong with a ``WEBSOCKET_RATE_LIMIT`` (or a route's ``rate_limit``), if anything."""
    if value is None:
        return None
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not _is_number(value[0])
        or not value[0] > 0
        or _positive_int(value[1]) is not None
    ):
        return (
            "(messages per second, burst): a number above 0 and a whole number above 0, "
            "such as (10, 20), or None for no limit"
        )
    return None


def compression_problem(value: Any) -> Optional[str]:
    """What is wrong with ``WEBSOCKET_COMPRESSION`` (or a route's ``compression``), if anything."""
    if value not in COMPRESSION_METHODS:
        return '"permessage-deflate", or None for no compression'
    return None


def _non_negative_int(value: Any) -> Optional[str]:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return "a whole number of bytes, 0 or more"
    return None


def _overflow(value: Any) -> Optional[str]:
    if value not in OVERFLOW_POLICIES:
        return "one of " + ", ".join(repr(policy) for policy in OVERFLOW_POLICIES)
    return None


def _hub_url(value: Any) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str) or urlsplit(value).scheme not in HUB_SCHEMES:
        return "memory://, local://, redis://host:port/db (or rediss://, unix://), or None"
    return None


def _hub_options(value: Any) -> Optional[str]:
    if value is not None and not isinstance(value, Mapping):
        return "a dict of the hub's options"
    return None


def _history(value: Any) -> Optional[str]:
    expected = (
        'a dict of room patterns to limits, such as {"chat:*": {"size": 100, "ttl": 300}} '
        "(size: messages kept, at least 1; ttl: seconds, optional)"
    )
    if not isinstance(value, Mapping):
        return expected
    for pattern, limits in value.items():
        if not isinstance(pattern, str) or not isinstance(limits, Mapping):
            return expected
        if set(limits) - {"size", "ttl"} or _positive_int(limits.get("size")):
            return expected
        if limits.get("ttl") is not None and _positive_number(limits["ttl"]):
            return expected
    return None


_CHECKS: Dict[str, Callable[[Any], Optional[str]]] = {
    "WEBSOCKET_MAX_MESSAGE_SIZE": _optional_positive_int,
    "WEBSOCKET_PING_INTERVAL": _optional_interval,
    "WEBSOCKET_PING_TIMEOUT": _optional_positive_number,
    "WEBSOCKET_CLOSE_TIMEOUT": _positive_number,
    "WEBSOCKET_ALLOWED_ORIGINS": _origins,
    "WEBSOCKET_RECEIVE_QUEUE_SIZE": _positive_int,
    "WEBSOCKET_SEND_QUEUE_SIZE": _positive_int,
    "WEBSOCKET_SEND_QUEUE_OVERFLOW": _overflow,
    "WEBSOCKET_HUB_URL": _hub_url,
    "WEBSOCKET_HUB_OPTIONS": _hub_options,
    "WEBSOCKET_MAX_CONNECTIONS": _optional_positive_int,
    "WEBSOCKET_MAX_CONNECTIONS_PER_IP": _optional_positive_int,
    "WEBSOCKET_HISTORY": _history,
    "WEBSOCKET_RATE_LIMIT": rate_limit_problem,
    "WEBSOCKET_COMPRESSION": compression_problem,
    "WEBSOCKET_COMPRESSION_OPTIONS": deflate_options_problem,
    "WEBSOCKET_COMPRESSION_THRESHOLD": _non_negative_int,
}


def check_config(config: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigurationError` for the first ``WEBSOCKET_*`` value that cannot work."""
    for key, check in _CHECKS.items():
        value = config.get(key, CONFIG_DEFAULTS[key])
        problem = check(value)
        if problem is not None:
            raise ConfigurationError(f"{key} is {value!r}: use {problem}", key=key)
    # With context takeover each compressed message depends on the ones before
    # it: one compressed and then not sent would corrupt every later one.
    options = config.get("WEBSOCKET_COMPRESSION_OPTIONS") or {}
    overflow = config.get("WEBSOCKET_SEND_QUEUE_OVERFLOW", CONFIG_DEFAULTS[_OVERFLOW])
    if options.get("server_no_context_takeover", True) is False and overflow != "disconnect":
        raise ConfigurationError(
            f"WEBSOCKET_COMPRESSION_OPTIONS has server_no_context_takeover False, and "
            f"WEBSOCKET_SEND_QUEUE_OVERFLOW is {overflow!r}: with context takeover a message "
            f"dropped from the send queue would corrupt every later one; use the "
            f"'disconnect' policy, or keep server_no_context_takeover True",
            key="WEBSOCKET_COMPRESSION_OPTIONS",
        )


_OVERFLOW = "WEBSOCKET_SEND_QUEUE_OVERFLOW"


def option_error(hub: str, option: str, value: Any, expected: str) -> ConfigurationError:
    """The error for a bad hub option (a key of ``WEBSOCKET_HUB_OPTIONS``)."""
    key = f"WEBSOCKET_HUB_OPTIONS[{option!r}]"
    return ConfigurationError(f"{key} is {value!r}: the {hub} hub needs {expected}", key=key)
