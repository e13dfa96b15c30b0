"""The guide's table of skip reasons (docs/campaigns.md) matches ``SkipReason`` exactly."""

from __future__ import annotations

import re
from pathlib import Path

from triggers.outcomes import SkipReason


def test_every_skip_reason_is_in_the_one_table_of_the_guide_and_nothing_else() -> None:
    guide = (Path(__file__).resolve().parents[1] / "docs" / "campaigns.md").read_text("utf-8")
    rows = re.findall(r"^\| `([a-z_]+)` \|", guide, flags=re.MULTILINE)
    assert sorted(rows) == sorted(reason.value for reason in SkipReason)
    assert len(rows) == len(set(rows))
