"""A body that is not JSON is dead-lettered with the decoder's reason and its position,
worded once ("… at line 1 column 9"), whatever the decoder's own message ends with; a
character found there that cannot be told by eye is named by its code point."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from triggers.events import InvalidEvent, parse_event


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": "x\ty"}',  # a raw control character: the decoder's message ends in "at"
        b'{"a": 1,}',
        b'{"a" 1}',
        b"[1, 2",
        b'{"a": "unterminated',
        b"",
    ],
)
def test_a_not_json_reason_names_the_position_once(body: bytes) -> None:
    with pytest.raises(InvalidEvent) as refused:
        parse_event(body, received_at=datetime(2026, 11, 29, tzinfo=UTC))
    assert refused.value.code == "not_json"
    assert re.search(
        r"\S at line \d+ column \d+(: found U\+[0-9A-F]{4} \([^()]+\))?$", refused.value.reason
    ), refused.value.reason
    assert " at at " not in refused.value.reason


@pytest.mark.parametrize(
    ("text", "position", "named"),
    [
        ("\ufeff{}", "line 1 column 1", "U+FEFF (ZERO WIDTH NO-BREAK SPACE, a byte order mark)"),
        ('{"a": 1}\ufeff', "line 1 column 9", "U+FEFF (ZERO WIDTH NO-BREAK SPACE, a byte order"),
        ('{"a": \u201cx\u201d}', "line 1 column 7", "U+201C (LEFT DOUBLE QUOTATION MARK)"),
        ('{"a":\u00a01}', "line 1 column 6", "U+00A0 (NO-BREAK SPACE)"),
        ('{"a":\u200b1}', "line 1 column 6", "U+200B (ZERO WIDTH SPACE)"),
        ('{"a":\u202e1}', "line 1 column 6", "U+202E (RIGHT-TO-LEFT OVERRIDE)"),
        ('{"a": "x\ty"}', "line 1 column 9", "U+0009 (CHARACTER TABULATION)"),
        ('{"a":\n\x1b1}', "line 2 column 1", "U+001B (ESCAPE)"),
        ("\x01", "line 1 column 1", "U+0001 (a control character)"),
        ("\x7f", "line 1 column 1", "U+007F (DELETE)"),
        ("\u3000{}", "line 1 column 1", "U+3000 (IDEOGRAPHIC SPACE)"),
    ],
)
def test_a_character_that_cannot_be_seen_is_named_where_the_decoder_stopped(
    text: str, position: str, named: str
) -> None:
    """A byte order mark at the start of a line of concatenated files, a typographic
    quote or a no-break space pasted from a spreadsheet, a bidi or control character:
    the reason says which character stopped the decoder, not only where."""
    with pytest.raises(InvalidEvent) as refused:
        parse_event(text.encode("utf-8"), received_at=datetime(2026, 11, 29, tzinfo=UTC))
    assert refused.value.code == "not_json"
    reason = refused.value.reason
    assert f"at {position}: found {named}" in reason, reason
    assert reason.isascii() and reason.isprintable(), "the character itself stays out"


@pytest.mark.parametrize("text", ['{"a": 1,}', '{"a" 1}', "[1, 2", '{"a": "x"} x', ""])
def test_a_visible_character_is_not_named_again(text: str) -> None:
    with pytest.raises(InvalidEvent) as refused:
        parse_event(text.encode("utf-8"), received_at=datetime(2026, 11, 29, tzinfo=UTC))
    assert ": found U+" not in refused.value.reason
