"""The engine's fast-built outcomes are the same values the dataclass constructor makes."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from triggers.outcomes import Decision, skipped

texts = st.text(min_size=1, max_size=30)


@given(campaign_id=texts, reason=texts, dedupe_key=texts)
def test_skipped_equals_the_constructor(campaign_id: str, reason: str, dedupe_key: str) -> None:
    fast = skipped(campaign_id, reason, dedupe_key)
    slow = Decision(campaign_id, "skipped", reason, dedupe_key=dedupe_key)
    assert fast == slow
    assert hash(fast) == hash(slow)
    assert repr(fast) == repr(slow)
    assert dataclasses.astuple(fast) == dataclasses.astuple(slow)
    assert dataclasses.replace(fast, reason="x") == dataclasses.replace(slow, reason="x")


def test_a_fast_built_decision_is_still_frozen() -> None:
    decision = skipped("camp", "lower_priority", "camp|C-1|skip|evt-1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.reason = "other"  # type: ignore[misc]
