"""``crosssell status`` says how many ambiguous sends it did not list, and what the
activity line means when publishing is off."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from worker.commands.status import Ambiguous, OutboxStatus, status_lines

NOW = datetime(2026, 11, 29, 19, 4, tzinfo=UTC)


def _status(total: int, listed: int) -> OutboxStatus:
    return OutboxStatus(
        planned_later=0,
        due=0,
        oldest_due=None,
        queued=0,
        sending=0,
        failed_last_hour={},
        ambiguous_total=total,
        ambiguous=[Ambiguous(n, "c", f"<m{n}@x>", NOW) for n in range(listed)],
        activity_unpublished=7,
    )


@pytest.mark.parametrize(("total", "listed", "more"), [(0, 0, None), (3, 3, None), (12, 10, 2)])
def test_unlisted_ambiguous_sends_are_counted(total: int, listed: int, more: int | None) -> None:
    lines = list(status_lines(_status(total, listed), NOW, 0, "ok"))
    assert sum(line.startswith("  send ") for line in lines) == listed
    tail = [line for line in lines if line.startswith("  … ")]
    if more is None:
        assert tail == []
    else:
        (line,) = tail
        assert line.startswith(f"  … {more} more (--ambiguous N")


@pytest.mark.parametrize(
    ("publishing", "line"),
    [
        (True, "activity not yet published:   7"),
        (
            False,
            "activity outbox:              7 kept, publishing off (CROSSSELL_ACTIVITY_PUBLISH)",
        ),
    ],
)
def test_the_activity_line_says_whether_it_is_a_backlog(publishing: bool, line: str) -> None:
    assert line in list(status_lines(_status(0, 0), NOW, 0, "ok", activity_publishing=publishing))
