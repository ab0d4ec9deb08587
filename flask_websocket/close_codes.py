"""WebSocket close codes (RFC 6455, section 7.4)."""

from __future__ import annotations

import enum

__all__ = ["OK_CLOSE_CODES", "CloseCode"]


class CloseCode(enum.IntEnum):
    """Close codes defined by RFC 6455 and the IANA registry."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RCVD = 1005
    ABNORMAL_CLOSURE = 1006
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014


#: Close codes that mean "closed normally": ConnectionClosedOK, not ...Error.
OK_CLOSE_CODES = frozenset(
    {CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY, CloseCode.NO_STATUS_RCVD}
)
