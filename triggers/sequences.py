"""Behaviour-triggered sequences: the enrollment state machine, pure (time passed in).

A campaign with ``steps`` is a sequence. A matching event *enrolls* the customer (one
enrollment per campaign, customer and entry, variant and holdout fixed then); each step
falls due at its delay, becomes a planned send through the outbox and is rechecked like
any email; an exit rule (or an unsubscribe) ends the enrollment before the next step is
planned, and the last step completes it. A campaign without steps is a one-step sequence
that the engine plans directly (``triggers.decide``).

The functions here are what ingest, the step planner, delivery, ``explain`` and
``simulate`` share: who may enter (``may_enter``), which step is next and when
(``next_step``), whether an event exits (``exit_reason``), the facts ``only_if`` sees
(``enrollment_facts``); plus the checks ``crosssell lint`` runs on steps and exits
(``sequence_problems``) and an in-memory enrollment book (``Sequencer``) that replays an
event stream the way the worker does, for ``simulate`` and the property tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from triggers.campaigns import WEEKDAYS, Campaign, ExitRule, ReenterAfter, Step, Window
from triggers.conditions import (
    AllOf,
    Condition,
    Leaf,
    Path,
    Predicate,
    Problem,
    check_condition,
    compile_condition,
)
from triggers.events import AnyEvent, PurchaseEvent
from triggers.facts import event_facts
from triggers.fields import FieldSpec, FieldType, fields_for
from triggers.schedule import DailyWindow


class ExitReason(StrEnum):
    """Why an enrollment ended, as stored in ``enrollments.exit_reason``."""

    PURCHASE = "purchase"  # exit_when: purchase: any
    PURCHASED_OFFERED = "purchased_offered"  # exit_when: purchase: offered
    PURCHASE_IN = "purchase_in"  # exit_when: purchase_in
    EVENT = "event"  # exit_when: event
    UNSUBSCRIBED = "unsubscribed"  # no consent, suppressed or opted out: always
    COMPLETED = "completed"  # every step was sent or skipped


ENROLLMENT_FIELDS: dict[str, FieldSpec] = {
    spec.name: spec
    for spec in (
        FieldSpec(
            "enrollment.purchased_since_entry",
            FieldType.BOOLEAN,
            "the customer ordered anything after entering the sequence",
        ),
        FieldSpec(
            "enrollment.categories_bought_since_entry",
            FieldType.STRING_SET,
            "categories of the orders since entry",
        ),
        FieldSpec("enrollment.steps_sent", FieldType.NUMBER, "emails of this sequence sent so far"),
        FieldSpec("enrollment.days_since_entry", FieldType.NUMBER, "whole days since entry"),
    )
}


def step_fields(
    event_type: str, attributes: Mapping[str, FieldType] | None = None
) -> dict[str, FieldSpec]:
    """What a step's ``only_if`` may test: the trigger's fields plus ``enrollment.*``."""
    return fields_for(event_type, attributes) | ENROLLMENT_FIELDS


def earliest_offsets(steps: Sequence[Step]) -> list[timedelta]:
    """Each step's earliest due time after entry: ``after_entry`` is its own offset,
    ``after_previous`` adds to the previous step's (a later send only pushes it on)."""
    offsets: list[timedelta] = []
    for step in steps:
        if step.after_entry is not None:
            offsets.append(step.after_entry)
        else:
            offsets.append((offsets[-1] if offsets else timedelta(0)) + step.delay)
    return offsets


def step_window(window: Window) -> DailyWindow:
    """A step's own ``window`` as the scheduler's ``DailyWindow`` (replaces the campaign's)."""
    weekdays = frozenset(WEEKDAYS.index(day) for day in window.days)
    return DailyWindow(window.from_, window.to, weekdays)


# --- lint -------------------------------------------------------------------------------


def sequence_problems(
    campaign: Campaign,
    segments: Sequence[str],
    attributes: Mapping[str, FieldType] | None = None,
) -> list[Problem]:
    """Everything wrong with a campaign's ``steps``, ``exit_when`` and frequency as a
    sequence, located by document path (``crosssell lint`` turns it into file:line:col)."""
    problems: list[Problem] = []
    if campaign.steps is None:
        if campaign.exit_when:
            problems.append(
                Problem(("exit_when",), "bad-value", "exit_when applies to a sequence: add steps")
            )
        if isinstance(campaign.reenter, ReenterAfter) or campaign.reenter != "after_exit":
            problems.append(
                Problem(("reenter",), "bad-value", "reenter applies to a sequence: add steps")
            )
        return problems
    own = campaign.frequency
    for name, value in (
        ("once_per_customer", own.once_per_customer or None),
        ("cooldown", own.cooldown),
        ("max_sends", own.max_sends),
    ):
        if value is not None:
            problems.append(
                Problem(
                    ("frequency", name),
                    "bad-value",
                    f"a sequence is limited by reenter, not by {name} (min_gap stays allowed)",
                )
            )
    fields = step_fields(campaign.trigger.event, attributes)
    seen: dict[str, int] = {}
    offsets = earliest_offsets(campaign.steps)
    for index, step in enumerate(campaign.steps):
        where: Path = ("steps", index)
        if step.id in seen:
            problems.append(
                Problem(
                    (*where, "id"),
                    "duplicate-step",
                    f"step id {step.id!r} is also step {seen[step.id] + 1}",
                )
            )
        seen.setdefault(step.id, index)
        if index and offsets[index] <= offsets[index - 1]:
            key = "after_entry" if step.after_entry is not None else "after_previous"
            problems.append(
                Problem(
                    (*where, key),
                    "step-order",
                    f"step {step.id!r} would be due {_span(offsets[index])} after entry, "
                    f"not after step {campaign.steps[index - 1].id!r} "
                    f"({_span(offsets[index - 1])}): each step must come later than the one "
                    "before",
                )
            )
        if step.only_if is not None:
            problems += check_condition(step.only_if, fields, segments, (*where, "only_if"))
    for index, rule in enumerate(campaign.exit_when):
        problems += _exit_problems(rule, ("exit_when", index), segments, attributes)
    return problems


def _span(delta: timedelta) -> str:
    days, seconds = delta.days, delta.seconds
    parts = [f"{days}d"] if days else []
    if seconds // 3600:
        parts.append(f"{seconds // 3600}h")
    if seconds % 3600 // 60:
        parts.append(f"{seconds % 3600 // 60}m")
    return "".join(parts) or "0m"


def _exit_problems(
    rule: ExitRule,
    where: Path,
    segments: Sequence[str],
    attributes: Mapping[str, FieldType] | None,
) -> list[Problem]:
    if rule.event is None or rule.event.where is None:
        return []
    path: Path = (*where, "event", "where")
    found = list(
        check_condition(rule.event.where, fields_for(rule.event.type, attributes), segments, path)
    )
    if found:
        return found
    empty = contradiction(rule.event.where)
    if empty is not None:
        return [
            Problem(
                path,
                "exit-never",
                f"this exit can never be true: {empty}",
            )
        ]
    return []


_BOUNDS = {"gt": (1, False), "gte": (1, True), "lt": (-1, False), "lte": (-1, True)}


def contradiction(node: Condition) -> str | None:
    """Why an ``all:`` of leaves cannot hold for any value, or None when it may.

    Sound, not complete: it finds what a marketer writes by mistake — two different
    ``eq`` values for one field, an ``eq`` outside the bounds, bounds that leave no number
    (``gt: 10`` and ``lt: 5``), an ``eq`` also excluded by ``ne``/``not_in``.
    """
    leaves = [node] if isinstance(node, Leaf) else _all_leaves(node)
    by_field: dict[str, list[Leaf]] = {}
    for leaf in leaves:
        by_field.setdefault(leaf.field, []).append(leaf)
    for name, group in by_field.items():
        reason = _field_contradiction(name, group)
        if reason is not None:
            return reason
    return None


def _all_leaves(node: Condition) -> list[Leaf]:
    if isinstance(node, Leaf):
        return [node]
    if isinstance(node, AllOf):
        return [leaf for part in node.all for leaf in _all_leaves(part)]
    return []


def _field_contradiction(name: str, leaves: Iterable[Leaf]) -> str | None:
    equal: set[object] | None = None
    excluded: set[object] = set()
    low: tuple[Decimal, bool] | None = None
    high: tuple[Decimal, bool] | None = None
    for leaf in leaves:
        value = leaf.value
        if leaf.op == "eq" or (leaf.op == "in" and isinstance(value, list)):
            values = {_key(v) for v in (value if isinstance(value, list) else [value])}
            equal = values if equal is None else equal & values
        elif leaf.op == "ne":
            excluded.add(_key(value))
        elif leaf.op == "not_in" and isinstance(value, list):
            excluded |= {_key(v) for v in value}
        elif (
            leaf.op in _BOUNDS and isinstance(value, int | Decimal) and not isinstance(value, bool)
        ):
            direction, inclusive = _BOUNDS[leaf.op]
            bound = (Decimal(value), inclusive)
            if direction > 0 and (low is None or _tighter_low(bound, low)):
                low = bound
            if direction < 0 and (high is None or _tighter_high(bound, high)):
                high = bound
    if (
        low is not None
        and high is not None
        and (low[0] > high[0] or (low[0] == high[0] and not (low[1] and high[1])))
    ):
        return f"{name} cannot be both above {low[0]} and below {high[0]}"
    if low is not None and high is not None and low[0] == high[0]:
        point: set[object] = {low[0]}  # gte x and lte x: only x
        equal = point if equal is None else equal & point
    if equal is None:
        return None
    allowed = {v for v in equal - excluded if not isinstance(v, Decimal) or _within(v, low, high)}
    if not allowed:
        return f"no value of {name} satisfies every comparison"
    return None


def _key(value: object) -> object:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Decimal(str(value))
    return value


def _tighter_low(new: tuple[Decimal, bool], old: tuple[Decimal, bool]) -> bool:
    return new[0] > old[0] or (new[0] == old[0] and not new[1])


def _tighter_high(new: tuple[Decimal, bool], old: tuple[Decimal, bool]) -> bool:
    return new[0] < old[0] or (new[0] == old[0] and not new[1])


def _within(
    value: Decimal, low: tuple[Decimal, bool] | None, high: tuple[Decimal, bool] | None
) -> bool:
    if low is not None and (value < low[0] or (value == low[0] and not low[1])):
        return False
    return not (high is not None and (value > high[0] or (value == high[0] and not high[1])))


# --- compiled form ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompiledExit:
    rule: ExitRule
    where: Predicate | None


@dataclass(frozen=True, slots=True)
class CompiledSequence:
    """A campaign's steps and exits, conditions compiled once at load."""

    steps: tuple[Step, ...]
    exits: tuple[CompiledExit, ...]
    only_if: Mapping[str, Predicate]

    def step(self, step_id: str) -> Step | None:
        return next((step for step in self.steps if step.id == step_id), None)


def compile_sequence(
    campaign: Campaign, segments: Mapping[str, Condition]
) -> CompiledSequence | None:
    if campaign.steps is None:
        return None
    exits = tuple(
        CompiledExit(
            rule,
            compile_condition(rule.event.where, segments)
            if rule.event is not None and rule.event.where is not None
            else None,
        )
        for rule in campaign.exit_when
    )
    only_if = {
        step.id: compile_condition(step.only_if, segments)
        for step in campaign.steps
        if step.only_if is not None
    }
    return CompiledSequence(tuple(campaign.steps), exits, only_if)


# --- the state machine ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PastEntry:
    """An earlier enrollment of the same customer in the same campaign."""

    entered_at: datetime
    active: bool


def may_enter(campaign: Campaign, previous: Sequence[PastEntry], now: datetime) -> bool:
    """The ``reenter`` rule: ``never`` — one enrollment per customer, ever; ``after_exit``
    — not while one is active; ``{after: d}`` — not while one is active, nor within ``d``
    of the latest entry. The database enforces the "one active" and "once" parts with a
    unique key (``entry_slot``), this decides the rest."""
    if not previous:
        return True
    if campaign.reenter == "never" or any(entry.active for entry in previous):
        return False
    if isinstance(campaign.reenter, ReenterAfter):
        latest = max(entry.entered_at for entry in previous)
        return now - latest >= campaign.reenter.after
    return True


def entry_slot(campaign: Campaign, enrollment_id: int | None = None) -> str:
    """The value unique per (campaign, customer) while an enrollment holds it: ``once``
    for ``reenter: never`` (kept for ever), ``active`` otherwise (released on exit as
    ``ended:<id>``). Two entries racing for one slot: the database keeps one."""
    if campaign.reenter == "never":
        return "once"
    return "active" if enrollment_id is None else f"ended:{enrollment_id}"


@dataclass(frozen=True, slots=True)
class DueStep:
    index: int
    step: Step
    due_at: datetime


def next_step(
    sequence: CompiledSequence,
    done: Sequence[str],
    entered_at: datetime,
    last_step_at: datetime | None,
) -> DueStep | None:
    """The first step of the campaign as it is now after the furthest one in ``done``
    (steps matched by id), and when it is due: ``after_entry`` from entry,
    ``after_previous`` from the previous step's time (``last_step_at``: when it was sent
    or skipped); never before ``last_step_at``, so steps stay in order. None: the
    sequence is complete.

    Steps are matched by id, so an edit that removes, adds or re-times a step applies to
    every enrollment at its next step (hot reload)."""
    finished = set(done)
    # Only steps after the furthest one done: a step added above it is not sent late.
    passed = max(
        (index for index, step in enumerate(sequence.steps) if step.id in finished), default=-1
    )
    for index, step in enumerate(sequence.steps):
        if index <= passed:
            continue
        anchor = last_step_at or entered_at
        if step.after_entry is not None:
            due = max(entered_at + step.after_entry, anchor)
        else:
            due = anchor + step.delay
        return DueStep(index, step, due)
    return None


def enrollment_facts(
    entered_at: datetime,
    now: datetime,
    steps_sent: int,
    categories_since_entry: Iterable[str],
    purchased_since_entry: bool,
) -> dict[str, object]:
    """The ``enrollment.*`` facts a step's ``only_if`` reads, as of ``now``."""
    return {
        "enrollment.purchased_since_entry": purchased_since_entry,
        "enrollment.categories_bought_since_entry": frozenset(categories_since_entry),
        "enrollment.steps_sent": steps_sent,
        "enrollment.days_since_entry": max((now - entered_at).days, 0),
    }


@dataclass(frozen=True, slots=True)
class Happening:
    """An event as the exit rules see it: its type, facts, and for a purchase its SKUs
    and categories (empty otherwise)."""

    type: str
    facts: Mapping[str, object]
    skus: frozenset[str] = frozenset()
    categories: frozenset[str] = frozenset()


def happening_of(event: AnyEvent) -> Happening:
    """The ``Happening`` of a CRM event (its facts; a purchase's SKUs and categories)."""
    if isinstance(event, PurchaseEvent):
        items = event.data.items
        return Happening(
            event.type,
            event_facts(event),
            frozenset(item.sku for item in items),
            frozenset(item.category for item in items),
        )
    return Happening(event.type, event_facts(event))


def exit_reason(
    sequence: CompiledSequence, happening: Happening, offered: Iterable[str]
) -> ExitReason | None:
    """The first of the campaign's exit rules this event meets, in file order, or None.

    ``offered`` is every SKU the enrollment's emails offered so far."""
    purchase = happening.type == "purchase"
    for compiled in sequence.exits:
        rule = compiled.rule
        if rule.purchase == "any" and purchase:
            return ExitReason.PURCHASE
        if rule.purchase == "offered" and purchase and happening.skus & frozenset(offered):
            return ExitReason.PURCHASED_OFFERED
        if (
            rule.purchase_in is not None
            and purchase
            and happening.categories & set(rule.purchase_in)
        ):
            return ExitReason.PURCHASE_IN
        if (
            rule.event is not None
            and happening.type == rule.event.type
            and (compiled.where is None or compiled.where(happening.facts))
        ):
            return ExitReason.EVENT
    return None


# --- an in-memory enrollment book (simulate, property tests) -----------------------------


@dataclass
class Enrollment:
    """One enrollment as the worker keeps it in ``enrollments``."""

    id: int
    campaign_id: str
    customer_id: str
    entry_event_id: str
    entered_at: datetime
    variant: str
    held_out: bool
    done: list[str] = field(default_factory=list)
    last_step_at: datetime | None = None
    steps_sent: int = 0
    offered: set[str] = field(default_factory=set)
    categories_since_entry: set[str] = field(default_factory=set)
    purchased_since_entry: bool = False
    exited_at: datetime | None = None
    exit_reason: ExitReason | None = None

    @property
    def active(self) -> bool:
        return self.exited_at is None


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """What became of one due step: ``sent``, ``held_out`` or ``skipped`` (``reason``)."""

    enrollment_id: int
    campaign_id: str
    customer_id: str
    step_id: str
    due_at: datetime
    at: datetime
    outcome: str
    reason: str | None = None


@dataclass
class Sequencer:
    """Enrollments kept in memory and moved by the same rules as the worker's.

    ``enter`` on a matching trigger, ``observe`` on every event (exits, and what
    ``only_if`` knows), ``advance`` to a time (each due step is resolved by ``send``, a
    callback that answers ``sent`` / ``held_out`` / a skip reason — the caller's
    decision path)."""

    enrollments: list[Enrollment] = field(default_factory=list)
    outcomes: list[StepOutcome] = field(default_factory=list)

    def of(self, campaign_id: str, customer_id: str) -> list[Enrollment]:
        return [
            e
            for e in self.enrollments
            if e.campaign_id == campaign_id and e.customer_id == customer_id
        ]

    def enter(
        self,
        campaign: Campaign,
        customer_id: str,
        event_id: str,
        at: datetime,
        variant: str,
        held_out: bool,
    ) -> Enrollment | None:
        previous = self.of(campaign.id, customer_id)
        if any(e.entry_event_id == event_id for e in previous):
            return None
        entries = [PastEntry(e.entered_at, e.active) for e in previous]
        if not may_enter(campaign, entries, at):
            return None
        enrollment = Enrollment(
            len(self.enrollments) + 1, campaign.id, customer_id, event_id, at, variant, held_out
        )
        self.enrollments.append(enrollment)
        return enrollment

    def observe(
        self,
        sequences: Mapping[str, CompiledSequence],
        customer_id: str,
        happening: Happening,
        at: datetime,
        event_id: str,
    ) -> list[Enrollment]:
        """Apply an event to the customer's active enrollments; returns those it exits."""
        exited = []
        for enrollment in self.enrollments:
            if enrollment.customer_id != customer_id or not enrollment.active:
                continue
            if enrollment.entry_event_id == event_id:
                continue
            if happening.type == "purchase":
                enrollment.purchased_since_entry = True
                enrollment.categories_since_entry |= happening.categories
            sequence = sequences.get(enrollment.campaign_id)
            if sequence is None:
                continue
            reason = exit_reason(sequence, happening, enrollment.offered)
            if reason is not None:
                self.end(enrollment, at, reason)
                exited.append(enrollment)
        return exited

    def end(self, enrollment: Enrollment, at: datetime, reason: ExitReason) -> None:
        enrollment.exited_at, enrollment.exit_reason = at, reason

    def due(
        self, sequences: Mapping[str, CompiledSequence], now: datetime
    ) -> list[tuple[Enrollment, DueStep]]:
        """Active enrollments whose next step is due at ``now``, earliest first."""
        found = []
        for enrollment in self.enrollments:
            sequence = sequences.get(enrollment.campaign_id)
            if sequence is None or not enrollment.active:
                continue
            step = next_step(
                sequence, enrollment.done, enrollment.entered_at, enrollment.last_step_at
            )
            if step is None:
                self.end(enrollment, enrollment.last_step_at or now, ExitReason.COMPLETED)
            elif step.due_at <= now:
                found.append((enrollment, step))
        return sorted(found, key=lambda pair: (pair[1].due_at, pair[0].id))

    def resolve(
        self, enrollment: Enrollment, step: DueStep, at: datetime, outcome: str, reason: str | None
    ) -> StepOutcome:
        """Record a due step's fate and move the enrollment on (completing it after the
        last step)."""
        enrollment.done.append(step.step.id)
        enrollment.last_step_at = at
        if outcome == "sent":
            enrollment.steps_sent += 1
        result = StepOutcome(
            enrollment.id,
            enrollment.campaign_id,
            enrollment.customer_id,
            step.step.id,
            step.due_at,
            at,
            outcome,
            reason,
        )
        self.outcomes.append(result)
        return result
