"""The ``fws.v1`` subprotocol: what clients that resume speak.

A client that offers the WebSocket subprotocol ``fws.v1`` (the JavaScript
client the extension serves, ``flask_websocket.client`` for Python) gets
every message from the server as a small JSON text message, so that it
learns the stream position of each message of a room with history, and can
come back after a drop from where it was:

- ``{"d": "<text>"}`` or ``{"b": "<base64>"}``: a message (``ws.send``,
  ``send_to``, a broadcast to a room without history);
- ``{"r": room, "e": epoch, "o": offset, "d"|"b": ...}``: a message of a
  room's stream, at its position;
- ``{"j": room, "e": epoch, "o": offset, "recovered": true|false}``: the
  answer to a join: the room's position, and whether nothing was missed;
- ``{"h": seconds}``: a heartbeat, with each keepalive ping (browsers
  cannot see pings), every ``seconds``: a client that hears nothing for
  about two of them takes the connection for dead and reconnects.

A join's answer comes before the messages it replays: then, in order, every
message after the position the client gave (when ``recovered`` is true,
exactly what it missed), then live messages. Messages from the client are
the app's own, unchanged. On reconnecting, the client gives its positions
in the query string: ``fws_since=<room>:<epoch>:<offset>``, once per room
(URL-encoded); a handler's ``ws.join(room)`` picks the room's up. A client
whose join was answered with an empty epoch (the room had no stream yet:
the redis hub before a room's first message) gives ``<room>::0``: every
message of the stream that started since is what it missed.

Clients that do not offer ``fws.v1`` get the app's messages unchanged and
no positions.
"""

from __future__ import annotations

import base64
import json
from typing import Dict, Iterable, Optional, Union

from .history import Position

__all__ = [
    "SINCE_PARAMETER",
    "SUBPROTOCOL",
    "heartbeat_message",
    "joined_message",
    "parse_since",
    "plain_message",
    "stream_message",
]

#: The subprotocol name clients offer.
SUBPROTOCOL = "fws.v1"
#: The query string parameter a reconnecting client gives its positions in.
SINCE_PARAMETER = "fws_since"

_OP_TEXT = 0x1
_COMPACT = {"separators": (",", ":"), "ensure_ascii": False}


def _body(opcode: int, payload: bytes) -> Dict[str, Union[str, int, bool]]:
    if opcode == _OP_TEXT:
        return {"d": payload.decode()}
    return {"b": base64.b64encode(payload).decode()}


def plain_message(opcode: int, payload: bytes) -> str:
    """A message outside any stream (text or binary ``payload``), as ``fws.v1`` sends it."""
    return json.dumps(_body(opcode, payload), **_COMPACT)  # type: ignore[arg-type]


def stream_message(room: str, position: Position, opcode: int, payload: bytes) -> str:
    """A message of ``room``'s stream, with its position."""
    body: Dict[str, Union[str, int, bool]] = {"r": room, "e": position.epoch}
    body["o"] = position.offset
    body.update(_body(opcode, payload))
    return json.dumps(body, **_COMPACT)  # type: ignore[arg-type]


def joined_message(room: str, position: Position, recovered: bool) -> str:
    """The answer to a join: where the room's stream is, and whether nothing was missed."""
    body = {"j": room, "e": position.epoch, "o": position.offset, "recovered": recovered}
    return json.dumps(body, **_COMPACT)  # type: ignore[arg-type]


def heartbeat_message(interval: Optional[float]) -> bytes:
    """The heartbeat ``fws.v1`` clients get with each keepalive ping."""
    return json.dumps({"h": interval or 0}).encode()


def parse_since(values: Iterable[str]) -> Dict[str, Position]:
    """The positions a reconnecting client gave (``room:epoch:offset``), malformed ones left out.

    The room comes first and may itself contain ``:``; the epoch and the
    offset are the last two fields. An empty epoch is kept with offset 0
    only: the room had no stream when the client joined it.
    """
    positions: Dict[str, Position] = {}
    for value in values:
        room, _, rest = value.rpartition(":")
        room, _, epoch = room.rpartition(":")
        offset = _offset(rest)
        if room and offset is not None and (epoch or offset == 0) and len(positions) < 100:
            positions[room] = Position(epoch, offset)
    return positions


def _offset(text: str) -> Optional[int]:
    if not text.isdigit() or len(text) > 18:
        return None
    return int(text)
