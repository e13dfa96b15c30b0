"""Sequences, pure: the lint checks, the contradiction finder against brute force, and
the enrollment state machine over arbitrary interleavings of entries, purchases and
clock advances."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from triggers.campaign_text import parse_campaign
from triggers.campaigns import Campaign
from triggers.conditions import AllOf, Leaf, compile_condition
from triggers.sequences import (
    CompiledSequence,
    ExitReason,
    Happening,
    Sequencer,
    compile_sequence,
    contradiction,
    earliest_offsets,
    next_step,
)

START = datetime(2026, 11, 17, 10, 30, tzinfo=UTC)

BASE = """\
id: journey
name: Journey
kind: cross_sell
trigger: {event: purchase}
offer: {type: complementary}
experiment:
  variants:
    - {id: A, template: accessories}
"""


def _issues(extra: str) -> list[tuple[int, str]]:
    _, _, issues = parse_campaign(BASE + extra, "journey.yaml", {})
    return [(issue.line, issue.code) for issue in issues]


def _line_of(text: str, marker: str) -> int:
    """1-based line of the first line containing ``marker`` in BASE + text."""
    lines = (BASE + text).splitlines()
    return next(number for number, line in enumerate(lines, 1) if marker in line)


@pytest.mark.parametrize(
    ("extra", "marker", "code"),
    [
        (
            "steps:\n  - {id: a, after_entry: 0m}\n  - {id: a, after_entry: 1d}  # dup\n",
            "# dup",
            "duplicate-step",
        ),
        (
            "steps:\n  - {id: a, after_entry: 7d}\n  - {id: b, after_entry: 3d}  # early\n",
            "# early",
            "step-order",
        ),
        (
            "steps:\n  - {id: a, after_entry: 2d}\n  - {id: b, after_entry: 2d}  # same\n",
            "# same",
            "step-order",
        ),
        (
            "steps:\n  - {id: a, after_entry: 1d}\n  - {id: b, after_previous: 0m}  # same\n",
            "# same",
            "step-order",
        ),
        (
            "steps:\n  - {id: a, after_entry: 1d}\n"
            "exit_when:\n  - event:\n      type: usage_change\n      where:  # never\n"
            "        all:\n"
            "          - {field: event.change_pct, op: gte, value: 0}\n"
            "          - {field: event.change_pct, op: lt, value: 0}\n",
            "# never",
            "exit-never",
        ),
        (
            "steps:\n  - {id: a, after_entry: 1d}\n"
            "exit_when:\n  - event:\n      type: anniversary\n      where:  # never\n"
            "        all:\n"
            "          - {field: event.kind, op: eq, value: signup}\n"
            "          - {field: event.kind, op: in, value: [membership, first_purchase]}\n",
            "# never",
            "exit-never",
        ),
        (
            "steps:\n  - {id: a, after_entry: 1d}\nfrequency: {cooldown: 3d}  # freq\n",
            "# freq",
            "bad-value",
        ),
        ("exit_when:  # no steps\n  - {purchase: any}\n", "# no steps", "bad-value"),
        (
            "steps:\n  - id: a\n    after_entry: 1d\n"
            "    only_if: {field: enrollment.stepz_sent, op: eq, value: 0}  # f\n",
            "# f",
            "unknown-field",
        ),
    ],
)
def test_lint_points_at_the_line(extra: str, marker: str, code: str) -> None:
    found = _issues(extra)
    assert (_line_of(extra, marker), code) in found, found


def test_a_valid_sequence_has_no_issues() -> None:
    extra = (
        "steps:\n"
        "  - {id: a, after_entry: 0m}\n"
        "  - id: b\n    after_previous: 7d\n"
        "    only_if: {field: enrollment.purchased_since_entry, op: eq, value: false}\n"
        "  - {id: c, after_entry: 30d}\n"
        "exit_when:\n  - {purchase: offered}\n  - {purchase_in: [tripods]}\n"
        "  - event: {type: usage_change, where: {field: event.change_pct, op: lte, value: -50}}\n"
        "reenter: {after: 60d}\n"
    )
    assert _issues(extra) == []


def test_a_step_needs_exactly_one_delay() -> None:
    found = _issues("steps:\n  - {id: a, after_entry: 1d, after_previous: 1d}\n")
    assert [code for _, code in found] == ["bad-value"]


# --- contradiction: sound against brute force ----------------------------------------------

NUMERIC_OPS = ("eq", "ne", "gt", "gte", "lt", "lte")
leaves = st.builds(
    lambda op, value: Leaf(field="event.change_pct", op=op, value=value),
    st.sampled_from(NUMERIC_OPS),
    st.integers(-5, 5),
)
# Every integer in range and every half in between: enough to witness any satisfiable mix
# of these comparisons with integer bounds.
GRID = [Decimal(n) / 2 for n in range(-14, 15)]


@settings(max_examples=400, deadline=None)
@given(st.lists(leaves, min_size=1, max_size=5))
def test_contradiction_is_only_claimed_when_no_value_satisfies(parts: list[Leaf]) -> None:
    node = AllOf(all=parts)
    predicate = compile_condition(node, {})
    satisfiable = any(predicate({"event.change_pct": value}) for value in GRID)
    claimed = contradiction(node)
    if claimed is not None:
        assert not satisfiable, (claimed, parts)
    elif not satisfiable:
        # Completeness for these operators: every unsatisfiable mix is found.
        raise AssertionError(f"missed a contradiction: {parts}")


# --- the state machine ------------------------------------------------------------------------


@st.composite
def campaigns(draw: st.DrawFn) -> Campaign:
    count = draw(st.integers(1, 4))
    steps: list[dict[str, Any]] = []
    offset = -1
    for index in range(count):
        if draw(st.booleans()):
            offset = draw(st.integers(offset + 1, offset + 10))
            steps.append({"id": f"s{index}", "after_entry": f"{offset}d" if offset else "0m"})
        else:
            days = draw(st.integers(1, 8))
            offset = max(offset, 0) + days
            steps.append({"id": f"s{index}", "after_previous": f"{days}d"})
    exits = draw(
        st.lists(
            st.sampled_from(
                [{"purchase": "any"}, {"purchase": "offered"}, {"purchase_in": ["tripods"]}]
            ),
            max_size=2,
        )
    )
    reenter = draw(st.sampled_from(["never", "after_exit", {"after": "20d"}]))
    return Campaign.model_validate(
        {
            "id": "journey",
            "name": "Journey",
            "kind": "cross_sell",
            "trigger": {"event": "purchase"},
            "offer": {"type": "complementary"},
            "experiment": {"variants": [{"id": "A", "template": "accessories"}]},
            "steps": steps,
            "exit_when": exits,
            "reenter": reenter,
        }
    )


CUSTOMERS = ("C-1", "C-2", "C-3")
HELD_OUT = frozenset({"C-3"})
actions = st.lists(
    st.one_of(
        st.tuples(st.just("enter"), st.sampled_from(CUSTOMERS)),
        st.tuples(
            st.just("buy"), st.sampled_from(CUSTOMERS), st.sampled_from(["SKU-S0", "SKU-S1", "TRI"])
        ),
        st.tuples(st.just("wait"), st.integers(1, 12 * 24)),  # hours
    ),
    max_size=40,
)


def _run(
    campaign: Campaign, script: list[tuple[Any, ...]]
) -> tuple[Sequencer, list[tuple[int, int, str]]]:
    """Drive the book like the worker: on every event, exits first; on every clock move,
    each due step resolved (sent offers ``SKU-<step>``). Returns the book and, per exit
    event, (enrollment, how many step outcomes there were then, customer)."""
    sequence = compile_sequence(campaign, {})
    assert sequence is not None
    sequences: dict[str, CompiledSequence] = {campaign.id: sequence}
    book = Sequencer()
    now = START
    exits: list[tuple[int, int, str]] = []
    for number, action in enumerate(script):
        event_id = f"e{number}"
        if action[0] == "wait":
            now += timedelta(hours=action[1])
            _settle(book, sequences, now)
            continue
        customer = action[1]
        sku = action[2] if action[0] == "buy" else "CAM"
        category = "tripods" if sku == "TRI" else "cameras" if sku == "CAM" else "accessories"
        happening = Happening("purchase", {}, frozenset({sku}), frozenset({category}))
        expected = {
            e.id
            for e in book.enrollments
            if e.customer_id == customer and e.active and _should_exit(campaign, e.offered, sku)
        }
        ended = book.observe(sequences, customer, happening, now, event_id)
        assert {e.id for e in ended} == expected, "exits differ from the rules as written"
        exits += [(e.id, len(book.outcomes), customer) for e in ended]
        if action[0] == "enter":
            book.enter(campaign, customer, event_id, now, "A", customer in HELD_OUT)
        _settle(book, sequences, now)
    return book, exits


def _should_exit(campaign: Campaign, offered: set[str], sku: str) -> bool:
    """The exit rules as the docs state them, for a one-item purchase of ``sku``."""
    for rule in campaign.exit_when:
        if rule.purchase == "any":
            return True
        if rule.purchase == "offered" and sku in offered:
            return True
        if rule.purchase_in is not None and sku == "TRI":
            return True
    return False


def _settle(book: Sequencer, sequences: dict[str, CompiledSequence], now: datetime) -> None:
    while True:
        due = book.due(sequences, now)
        if not due:
            return
        for enrollment, step in due:
            outcome = "held_out" if enrollment.held_out else "sent"
            book.resolve(enrollment, step, now, outcome, None)
            if outcome == "sent":
                enrollment.offered.add(f"SKU-{step.step.id.upper()}")


@settings(max_examples=300, deadline=None)
@given(campaigns(), actions)
def test_sequence_invariants_over_interleavings(
    campaign: Campaign, script: list[tuple[Any, ...]]
) -> None:
    book, exits = _run(campaign, script)
    assert campaign.steps is not None
    order = [step.id for step in campaign.steps]
    offsets = dict(zip(order, earliest_offsets(campaign.steps), strict=True))
    by_id = {enrollment.id: enrollment for enrollment in book.enrollments}
    seen: set[tuple[int, str]] = set()
    last: dict[int, tuple[int, datetime]] = {}
    for outcome in book.outcomes:
        enrollment = by_id[outcome.enrollment_id]
        key = (outcome.enrollment_id, outcome.step_id)
        assert key not in seen, "a step twice"
        seen.add(key)
        position = order.index(outcome.step_id)
        previous = last.get(outcome.enrollment_id)
        if previous is not None:
            assert position > previous[0], "steps out of order"
            assert outcome.at >= previous[1]
        last[outcome.enrollment_id] = (position, outcome.at)
        assert outcome.at >= enrollment.entered_at + offsets[outcome.step_id], "early step"
        step = campaign.steps[position]
        if step.after_previous is not None and previous is not None:
            assert outcome.at >= previous[1] + step.after_previous
        if enrollment.customer_id in HELD_OUT:
            assert outcome.outcome == "held_out", "a held-out customer got an email"
    for enrollment_id, outcomes_then, _ in exits:
        later = [o for o in book.outcomes[outcomes_then:] if o.enrollment_id == enrollment_id]
        assert not later, "a step after the exit"
    for enrollment in book.enrollments:
        if enrollment.exit_reason in (ExitReason.PURCHASE, ExitReason.PURCHASE_IN):
            assert enrollment.exited_at is not None


@settings(max_examples=200, deadline=None)
@given(campaigns(), st.lists(st.integers(0, 40 * 24), max_size=5))
def test_next_step_is_never_early_and_never_before_the_previous(
    campaign: Campaign, gaps: list[int]
) -> None:
    sequence = compile_sequence(campaign, {})
    assert sequence is not None and campaign.steps is not None
    done: list[str] = []
    last: datetime | None = None
    offsets = earliest_offsets(campaign.steps)
    for gap in gaps:
        due = next_step(sequence, done, START, last)
        if due is None:
            break
        assert due.due_at >= START + offsets[due.index]
        if last is not None:
            assert due.due_at >= last
        last = due.due_at + timedelta(hours=gap)  # went out late, by ``gap`` hours
        done.append(due.step.id)
