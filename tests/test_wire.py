"""The positions ``fws.v1`` clients give back, and what a join makes of them (no server)."""

from __future__ import annotations

from flask_websocket.history import Entry, Position, recovery
from flask_websocket.wire import parse_since


def entries(*offsets: int) -> list:
    return [Entry(offset, 1, f"m{offset}".encode(), 0.0) for offset in offsets]


def test_positions_from_the_query_string() -> None:
    given = ["lobby:ab12:7", "chat:kitchen:cd34:0", "bad", "x:y:-1", "x:y:", ":e:1", "r::3"]
    assert parse_since(given) == {
        "lobby": Position("ab12", 7),
        "chat:kitchen": Position("cd34", 0),  # a room name may contain ':'
    }


def test_an_empty_epoch_is_kept_at_offset_0_only() -> None:
    """A client joined before the room had a stream (redis): it gives ``room::0``."""
    assert parse_since(["lobby::0"]) == {"lobby": Position("", 0)}
    assert parse_since(["lobby::5"]) == {}


def test_from_before_the_stream_existed_everything_kept_is_what_was_missed() -> None:
    complete = recovery("ep", 3, entries(1, 2, 3), Position("", 0))
    assert complete.recovered is True
    assert [e.offset for e in complete.entries] == [1, 2, 3]
    trimmed = recovery("ep", 5, entries(4, 5), Position("", 0))
    assert trimmed.recovered is False  # messages 1 to 3 are gone
    assert [e.offset for e in trimmed.entries] == [4, 5]
    still_none = recovery("", 0, [], Position("", 0))
    assert still_none.recovered is True and still_none.entries == ()


def test_another_epoch_is_not_recovered_and_a_position_of_the_same_is() -> None:
    other = recovery("new", 2, entries(1, 2), Position("old", 9))
    assert other.recovered is False and [e.offset for e in other.entries] == [1, 2]
    same = recovery("ep", 9, entries(8, 9), Position("ep", 7))
    assert same.recovered is True and [e.offset for e in same.entries] == [8, 9]
