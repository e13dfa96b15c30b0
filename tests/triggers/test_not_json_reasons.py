"""A body that is not JSON is dead-lettered with the decoder's reason and its position,
worded once ("… at line 1 column 9"), whatever the decoder's own message ends with."""

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
    assert re.search(r"\S at line \d+ column \d+$", refused.value.reason), refused.value.reason
    assert " at at " not in refused.value.reason
