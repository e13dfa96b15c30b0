"""Sequences in the database: enroll at ingest, exit at ingest, plan due steps as sends.

The rules are ``triggers.sequences``; this module applies them to ``enrollments`` rows:

* ``observe`` (ingest, *before* the event is decided): every active enrollment of the
  customer learns of the event (``purchased_since_entry`` …) and ends when an exit rule
  holds or the customer may no longer be emailed; its planned step is skipped
  (``sequence_exited``). The rows are locked, so the step planner cannot plan a step of an
  enrollment being exited meanwhile.
* ``Entries`` (ingest, for its ``enrolled`` decisions; ``enroll`` for one): one row per
  entry, a batch's inserted together with ``ON CONFLICT DO NOTHING`` on the entry slot, so
  two racing entries leave one.
* ``plan_due`` (the dispatcher's loop, before it claims due sends): each due step becomes
  a ``sends`` row — planned (then claimed, rechecked and delivered like any email), or
  held out, or skipped with its reason — and enrollments whose step send has ended move
  on to their next step or complete. A pass's steps are planned together, on inputs
  read for all of them at once.
* ``step_check`` (delivery's ``prepare``): just before a step goes out, the enrollment
  must still be active, the step still in the campaign and its ``only_if`` still true.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, inspect, select, update
from sqlalchemy.orm import Session

from triggers.campaigns import Step
from triggers.decide import (
    MARKETING_HISTORY,
    Later,
    PastSend,
    Policy,
    email_spans,
    gap_clash,
    min_gap,
    recheck,
    standing_block,
)
from triggers.events import AnyEvent, validate_event
from triggers.outcomes import Decision, SkipReason
from triggers.rule_set import CompiledCampaign, RuleSet
from triggers.sequences import (
    CompiledSequence,
    ExitReason,
    PastEntry,
    enrollment_facts,
    entry_slot,
    exit_reason,
    happening_of,
    may_enter,
    next_step,
)
from worker.core.commit_counts import count_on_commit
from worker.core.dialect_insert import among, insert_for, insert_rows
from worker.core.metrics import SENDS
from worker.core.models import Customer, Enrollment, Event, Send
from worker.core.settings import get_settings
from worker.decide.attribution import AttributionConfig, resolve_offered, store_offers
from worker.decide.decision_inputs import (
    BatchInputs,
    DecisionInputs,
    SendFields,
    decision_inputs_many,
    histories_of,
)
from worker.offers.offer_resolution import CatalogMemo

# A step's send in one of these is over: the enrollment moves on.
ENDED = frozenset({"sent", "skipped", "failed", "held_out"})


def observe(
    session: Session,
    rules: RuleSet,
    customer: Customer,
    event: AnyEvent,
    inputs: DecisionInputs,
    now: datetime,
) -> dict[int, ExitReason]:
    """Apply a stored event to the customer's active enrollments; returns those it ended.

    Called by ingest before ``decide``: a purchase that exits a sequence does so before
    any further step of it can be planned."""
    if not rules.has_steps:
        return {}
    query = (
        select(Enrollment)
        .where(Enrollment.customer_id == customer.id, Enrollment.status == "active")
        .order_by(Enrollment.id)
        .with_for_update()
    )
    enrollments = list(session.scalars(query))
    if not enrollments:
        return {}
    happening = happening_of(event)
    sequences = rules.sequences()
    ended: dict[int, ExitReason] = {}
    for enrollment in enrollments:
        if enrollment.entry_event_id == event.id:
            continue
        # An event from before the entry (delivered late) can still carry an opt-out, but
        # it is no purchase "since entry" and meets no exit rule.
        before_entry = event.occurred_at < enrollment.entered_at
        if happening.type == "purchase" and not before_entry:
            enrollment.purchased_since_entry = True
            enrollment.categories_since_entry = sorted(
                set(enrollment.categories_since_entry or ()) | happening.categories
            )
        compiled = rules.by_id(enrollment.campaign_id)
        sequence = sequences.get(enrollment.campaign_id)
        reason: ExitReason | None = None
        if compiled is not None and sequence is not None:
            # An unsubscribe comes first: it ends every sequence, whatever else happened.
            reason = (
                ExitReason.UNSUBSCRIBED
                if _standing(compiled, inputs) is not None
                else None
                if before_entry
                else exit_reason(sequence, happening, enrollment.offered_skus or ())
            )
        if reason is not None:
            end(session, enrollment, reason, now, event.id)
            ended[enrollment.id] = reason
        enrollment.updated_at = now
    return ended


def _standing(compiled: CompiledCampaign, inputs: DecisionInputs) -> SkipReason | None:
    return standing_block(compiled.campaign, inputs.subject)


def end(
    session: Session,
    enrollment: Enrollment,
    reason: ExitReason,
    now: datetime,
    event_id: str | None = None,
) -> None:
    """End an enrollment: release its entry slot (unless ``reenter: never`` holds it),
    record why, and skip its step still waiting in the outbox (one already claimed by a
    worker is stopped by ``step_check``)."""
    enrollment.status = "completed" if reason is ExitReason.COMPLETED else "exited"
    enrollment.exit_reason = reason
    enrollment.exit_event_id = event_id
    enrollment.exited_at = now
    enrollment.next_due_at = None
    if enrollment.entry_slot != "once":
        enrollment.entry_slot = f"ended:{enrollment.id}"
    enrollment.updated_at = now
    if reason is ExitReason.COMPLETED:
        return
    skipped = session.execute(
        update(Send)
        .where(Send.enrollment_id == enrollment.id, Send.status == "planned")
        .values(status="skipped", reason=SkipReason.SEQUENCE_EXITED, updated_at=now)
    )
    count = int(getattr(skipped, "rowcount", 0) or 0)
    if count:
        count_on_commit(session, SENDS, "skipped", SkipReason.SEQUENCE_EXITED, amount=count)


def enroll(
    session: Session,
    compiled: CompiledCampaign,
    decision: Decision,
    customer_id: str,
    event: AnyEvent,
    now: datetime,
) -> int | None:
    """Enroll the customer for an ``enrolled`` decision; the new enrollment's id, or None
    when the ``reenter`` rule or a concurrent entry keeps them out. The customer entered
    when the event happened (never later than ``now``): steps are timed from then.

    An :class:`Entries` of one: the insert is ``ON CONFLICT DO NOTHING`` on the unique
    entry slot and entry event, so whichever of two simultaneous entries commits first
    wins, the other inserts nothing."""
    entries = Entries(session, [customer_id])
    queued = entries.enroll(compiled, decision, customer_id, event, now, {})
    entries.write()
    return queued.enrollment_id if queued is not None else None


@dataclass(slots=True)
class QueuedEntry:
    """An entry :meth:`Entries.enroll` let in, to be inserted by :meth:`Entries.write`;
    ``enrollment_id`` is the new row's id once written (None: a concurrent entry won)."""

    values: dict[str, object]
    outcome: dict[str, object]
    enrollment_id: int | None = None


class Entries:
    """The sequence entries of one ingest batch, written together: the past entries of
    the batch's customers are read with one statement (on the first entry), the new ones
    inserted with one (:meth:`write`), where entering one by one took two per entry.

    Each entry is judged as :func:`enroll` judges it alone, on the customer's entries as
    this transaction has them: ingest locks the batch's customers first, so no other
    ingest enrolls them meanwhile; an entry queued earlier in the batch counts once
    written (ingest writes a customer's queued entries before their next event), and an
    exit of this batch once reported (:meth:`ended`)."""

    def __init__(self, session: Session, customer_ids: Sequence[str]) -> None:
        self._session = session
        self._customer_ids = frozenset(customer_ids)
        # (campaign id, customer id) -> enrollment id -> entry; None until first needed.
        self._past: dict[tuple[str, str], dict[int, PastEntry]] | None = None
        self._ended: set[int] = set()
        self._queued: list[QueuedEntry] = []
        self.pending_customers: set[str] = set()
        # The earliest first-step due time of the entries written so far (None: none).
        self.first_due_at: datetime | None = None

    def _entries(self) -> dict[tuple[str, str], dict[int, PastEntry]]:
        if self._past is None:
            self._past = {}
            if self._customer_ids:
                rows = self._session.execute(
                    select(
                        Enrollment.id,
                        Enrollment.campaign_id,
                        Enrollment.customer_id,
                        Enrollment.entered_at,
                        Enrollment.status,
                    ).where(
                        among(self._session, Enrollment.customer_id, sorted(self._customer_ids))
                    )
                )
                for row in rows:
                    self._add(row.id, row.campaign_id, row.customer_id, row.entered_at, row.status)
        return self._past

    def _add(
        self, enrollment_id: int, campaign_id: str, customer_id: str, at: datetime, status: str
    ) -> None:
        assert self._past is not None
        self._past.setdefault((campaign_id, customer_id), {})[enrollment_id] = PastEntry(
            at, status == "active"
        )

    def enroll(
        self,
        compiled: CompiledCampaign,
        decision: Decision,
        customer_id: str,
        event: AnyEvent,
        now: datetime,
        outcome: dict[str, object],
    ) -> QueuedEntry | None:
        """Queue the customer's entry for an ``enrolled`` decision (see :func:`enroll`);
        None when the ``reenter`` rule keeps them out. The result goes into ``outcome``
        under the campaign id: ``already_enrolled`` at once when refused, else
        ``enrolled:<id>`` or ``already_enrolled`` (a concurrent entry won) when
        :meth:`write` has inserted it. ValueError for a customer not given at creation."""
        campaign = compiled.campaign
        sequence = compiled.sequence
        assert sequence is not None and decision.variant is not None
        if customer_id not in self._customer_ids:
            raise ValueError(f"customer {customer_id} is not one of this batch's")
        previous = [
            PastEntry(past.entered_at, past.active and enrollment_id not in self._ended)
            for enrollment_id, past in self._entries().get((campaign.id, customer_id), {}).items()
        ]
        entered_at = min(event.occurred_at, now)
        if not may_enter(campaign, previous, entered_at):
            outcome[campaign.id] = SkipReason.ALREADY_ENROLLED
            return None
        first = next_step(sequence, (), entered_at, None)
        assert first is not None  # a sequence has at least one step
        values: dict[str, object] = dict(
            campaign_id=campaign.id,
            customer_id=customer_id,
            entry_event_id=event.id,
            entry_slot=entry_slot(campaign),
            entered_at=entered_at,
            variant=decision.variant,
            held_out=decision.reason == SkipReason.HOLDOUT,
            status="active",
            done=[],
            steps_sent=0,
            next_step_id=first.step.id,
            next_due_at=first.due_at,
            offered_skus=[],
            purchased_since_entry=False,
            categories_since_entry=[],
            created_at=now,
            updated_at=now,
        )
        queued = QueuedEntry(values, outcome)
        self._queued.append(queued)
        self.pending_customers.add(customer_id)
        return queued

    def ended(self, ended: Mapping[int, ExitReason]) -> None:
        """Enrollments an exit of this batch ended (``observe``'s answer): no longer
        active for the ``reenter`` rule, whether the past entries were read before the
        exit or after it (ingest does not flush in between)."""
        self._ended.update(ended)

    def write(self) -> set[str]:
        """Insert the queued entries; the customers who entered.

        The rows go as one parameter list: SQLAlchemy's "insertmanyvalues" writes them as
        multi-row ``INSERT … RETURNING`` statements of at most 1,000 rows each, where one
        ``VALUES`` list of every entry failed past 3,855 entries on PostgreSQL (17 values
        an entry, 65,535 bound parameters at most per statement).

        The session is flushed first: an exit earlier in the batch must have released its
        entry slot in the database before the insert meets the unique key."""
        if not self._queued:
            return set()
        session = self._session
        session.flush()
        statement = (
            insert_for(session, Enrollment)
            .on_conflict_do_nothing()
            .returning(Enrollment.id, Enrollment.campaign_id, Enrollment.customer_id)
        )
        rows = session.execute(statement, [entry.values for entry in self._queued])
        inserted = {(row.campaign_id, row.customer_id): row.id for row in rows}
        entered: set[str] = set()
        for entry in self._queued:
            campaign_id = str(entry.values["campaign_id"])
            customer_id = str(entry.values["customer_id"])
            enrollment_id = inserted.get((campaign_id, customer_id))
            entry.enrollment_id = enrollment_id
            if enrollment_id is None:
                entry.outcome[campaign_id] = SkipReason.ALREADY_ENROLLED
                continue
            entry.outcome[campaign_id] = f"enrolled:{enrollment_id}"
            entered_at, due_at = entry.values["entered_at"], entry.values["next_due_at"]
            assert isinstance(entered_at, datetime) and isinstance(due_at, datetime)
            if self.first_due_at is None or due_at < self.first_due_at:
                self.first_due_at = due_at
            self._entries()
            self._add(enrollment_id, campaign_id, customer_id, entered_at, "active")
            entered.add(customer_id)
        self._queued.clear()
        self.pending_customers.clear()
        return entered


@dataclass(frozen=True, slots=True)
class PlanReport:
    planned: int = 0
    held_out: int = 0
    skipped: int = 0
    advanced: int = 0
    completed: int = 0
    exited: int = 0
    full: bool = False
    """The pass took ``limit`` enrollments (due, or with a finished step): more may wait,
    and the dispatcher plans again at once instead of at its next poll."""


_timed_for: dict[str, RuleSet] = {}


def plan_due(
    session: Session, rules: RuleSet, policy: Policy, now: datetime, limit: int
) -> PlanReport:
    """Move sequences on, in the caller's transaction: enrollments whose step send ended
    advance (or complete); due steps of active campaigns become sends.

    After a reload (a new ``RuleSet``), the waiting enrollments are re-timed first: a
    changed delay applies to every step not yet planned.

    The due steps of a pass are planned together (:func:`_plan_steps`): what they read is
    loaded with a fixed number of statements whatever their number, and each step's plan
    is the one it would get planned alone, in the pass's order."""
    if not rules.has_steps:
        return PlanReport()
    url = str(session.get_bind().engine.url)
    if _timed_for.get(url) is not rules:
        _retime(session, rules, now)
        _timed_for[url] = rules
    advanced, completed, finished_full = _advance_finished(session, rules, now, limit)
    sequences = rules.sequences()
    live = [cid for cid in sequences if (c := rules.by_id(cid)) and c.campaign.status == "active"]
    if not live:
        return PlanReport(advanced=advanced, completed=completed, full=finished_full)
    query = (
        select(Enrollment)
        .where(
            Enrollment.status == "active",
            Enrollment.next_due_at <= now,
            Enrollment.campaign_id.in_(live),
        )
        .order_by(Enrollment.next_due_at, Enrollment.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    counts = {"planned": 0, "held_out": 0, "skipped": 0, "exited": 0, "waiting": 0}
    due: list[DueEnrollment] = []
    enrollments = list(session.scalars(query))
    # Nothing the pass reads depends on its enrollments' new state: their changes are
    # written at the end, together (not row by row by each query's autoflush).
    with session.no_autoflush:
        for enrollment in enrollments:
            compiled = rules.by_id(enrollment.campaign_id)
            assert compiled is not None and compiled.sequence is not None
            step = _step_to_plan(session, enrollment, compiled.sequence, now)
            if step is None:
                counts["waiting"] += 1
            else:
                due.append(DueEnrollment(enrollment, compiled, compiled.sequence, step))
        for outcome in _plan_steps(session, rules, policy, due, now):
            counts[outcome] += 1
        _write_enrollments(session, enrollments)
    return PlanReport(
        counts["planned"],
        counts["held_out"],
        counts["skipped"],
        advanced,
        completed,
        counts["exited"],
        finished_full or len(enrollments) >= limit,
    )


def _retime(session: Session, rules: RuleSet, now: datetime) -> None:
    """Recompute the next step and its due time of every enrollment not waiting on a send
    (after a reload: steps matched by id, a removed step is passed over)."""
    sequences = rules.sequences()
    query = select(Enrollment).where(
        Enrollment.status == "active", Enrollment.next_due_at.is_not(None)
    )
    if session.get_bind().dialect.name == "postgresql":
        # A row another dispatcher is planning or advancing keeps its timing.
        query = query.with_for_update(skip_locked=True)
    for enrollment in session.scalars(query):
        sequence = sequences.get(enrollment.campaign_id)
        if sequence is None:
            continue
        _schedule_next(session, enrollment, sequence, now)


def _schedule_next(
    session: Session, enrollment: Enrollment, sequence: CompiledSequence, now: datetime
) -> bool:
    """Point the enrollment at its next step; False (and completed) when there is none."""
    due = next_step(sequence, enrollment.done or (), enrollment.entered_at, enrollment.last_step_at)
    if due is None:
        end(session, enrollment, ExitReason.COMPLETED, now)
        return False
    enrollment.next_step_id, enrollment.next_due_at = due.step.id, due.due_at
    return True


def _advance_finished(
    session: Session, rules: RuleSet, now: datetime, limit: int
) -> tuple[int, int, bool]:
    """Enrollments whose step send reached an end state move on to their next step:
    how many advanced, how many of them completed, and whether ``limit`` rows were taken
    (more may wait)."""
    query = (
        select(Enrollment, Send.status, Send.sent_at, Send.updated_at)
        .join(
            Send,
            and_(Send.enrollment_id == Enrollment.id, Send.step_id == Enrollment.next_step_id),
        )
        .where(
            Enrollment.status == "active",
            Enrollment.next_due_at.is_(None),
            # Not indexable on purpose: each waiting enrollment has a few sends, found by
            # ``ix_sends_enrollment_id``. Matched on ``ix_sends_status_send_at`` as well
            # (PostgreSQL's choice while ``sends`` has no statistics), every probe read the
            # index entries of every ended send: 645 ms a pass at 110,000 sent, 1.2 ms
            # this way (docs/performance.md, "Plans made for small tables").
            Send.status.concat("").in_(ENDED),
        )
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(of=Enrollment, skip_locked=True)
    sequences = rules.sequences()
    advanced = completed = 0
    rows = session.execute(query).all()
    for enrollment, status, sent_at, updated_at in rows:
        _finish_step(enrollment, status, sent_at or updated_at, now)
        sequence = sequences.get(enrollment.campaign_id)
        if sequence is None:
            continue
        advanced += 1
        if not _schedule_next(session, enrollment, sequence, now):
            completed += 1
    return advanced, completed, len(rows) >= limit


def _finish_step(enrollment: Enrollment, status: str, at: datetime, now: datetime) -> None:
    assert enrollment.next_step_id is not None
    enrollment.done = [*(enrollment.done or ()), enrollment.next_step_id]
    enrollment.last_step_at = at
    if status == "sent":
        enrollment.steps_sent += 1
    enrollment.updated_at = now


def _step_to_plan(
    session: Session, enrollment: Enrollment, sequence: CompiledSequence, now: datetime
) -> Step | None:
    """The due enrollment's step to plan now; None when it has completed (no step left)
    or an edit re-timed its step past ``now``."""
    if not _schedule_next(session, enrollment, sequence, now):
        return None
    step = sequence.step(enrollment.next_step_id or "")
    assert step is not None and enrollment.next_due_at is not None
    return None if enrollment.next_due_at > now else step


@dataclass(frozen=True, slots=True)
class DueEnrollment:
    """An enrollment whose ``step`` is due, with its campaign as the rules have it now."""

    enrollment: Enrollment
    compiled: CompiledCampaign
    sequence: CompiledSequence
    step: Step


@dataclass(slots=True)
class StepInputs:
    """What the due steps of one pass read, loaded for all of them at once
    (:func:`load_step_inputs`), then kept as the database has it while the pass plans:
    a send planned or held out joins its customer's history before that customer's next
    step is planned, and a customer whose sends an exit changed is read again.

    ``events`` maps entry event id to the validated event, ``customers`` customer id to
    the row (absent: unknown to the database), ``inputs`` holds the customers' histories
    and the suppressions of their addresses."""

    events: dict[str, AnyEvent]
    customers: dict[str, Customer]
    inputs: BatchInputs
    unsaved: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    stale: set[str] = field(default_factory=set)
    pending: list[dict[str, Any]] = field(default_factory=list)
    send_ids: dict[str, int] = field(default_factory=dict)

    def for_step(
        self, session: Session, enrollment: Enrollment, now: datetime
    ) -> tuple[DecisionInputs, dict[str, object]]:
        """The decision inputs of the enrollment's entry event as of ``now``, and the
        facts ``only_if`` sees; the same as read for this enrollment alone. ValueError
        when its customer is not in the database (``BatchInputs.for_event``)."""
        customer_id = enrollment.customer_id
        if customer_id in self.stale:
            self.insert_sends(session)
            self.inputs.histories[customer_id] = histories_of(session, [customer_id]).get(
                customer_id, []
            )
            self.unsaved.pop(customer_id, None)
            self.stale.discard(customer_id)
        elif self.unsaved.get(customer_id):
            history = self.inputs.histories.setdefault(customer_id, [])
            for row in self.unsaved.pop(customer_id):
                # As histories_of reads it back (the time it is due), but without its id:
                # not inserted yet, and neither the recheck nor the gap reads it (only
                # ingest's displacement does, triggers.decide._yields).
                history.append(
                    PastSend(
                        row["campaign_id"], row["status"], row["send_at"], None, row["expires_at"]
                    )
                )
        event = self.events[enrollment.entry_event_id]
        inputs = self.inputs.for_event(session, event, now, self.customers.get(customer_id))
        facts = step_facts(inputs, enrollment, now)
        return inputs, facts

    def planned(self, row: dict[str, Any]) -> None:
        """A send this pass made (a ``sends`` row's values), inserted with the others
        (:meth:`insert_sends`); it counts in its customer's history from now on."""
        self.pending.append(row)
        if row["status"] in MARKETING_HISTORY:
            self.unsaved.setdefault(row["customer_id"], []).append(row)

    def insert_sends(self, session: Session) -> None:
        """Insert the sends made since the last call, one statement; their ids are then
        in ``send_ids`` by dedupe key. IntegrityError if a dedupe key is taken (the
        step's send exists: the pass checked it has none)."""
        if not self.pending:
            return
        inserted = insert_rows(session, Send, self.pending, returning=("id", "dedupe_key"))
        self.send_ids.update((row.dedupe_key, row.id) for row in inserted)
        self.pending.clear()

    def exited(self, customer_id: str) -> None:
        """An enrollment of the customer ended, its planned sends skipped: read their
        history again before their next step."""
        self.stale.add(customer_id)


def load_step_inputs(session: Session, enrollments: Sequence[Enrollment]) -> StepInputs:
    """The entry events, customers, histories and suppressions of ``enrollments``, four
    statements for any number of them. KeyError (on use) for an entry event the
    database does not hold."""
    event_ids = sorted({enrollment.entry_event_id for enrollment in enrollments})
    events = {
        row.event_id: validate_event(row.payload)
        for row in session.execute(
            select(Event.event_id, Event.payload).where(among(session, Event.event_id, event_ids))
        )
    }
    customer_ids = sorted({enrollment.customer_id for enrollment in enrollments})
    customers = {
        customer.id: customer
        for customer in session.scalars(
            select(Customer).where(among(session, Customer.id, customer_ids))
        )
    }
    inputs = decision_inputs_many(
        session, customer_ids, (customer.email for customer in customers.values()), lock=False
    )
    return StepInputs(events, customers, inputs)


def _plan_steps(
    session: Session,
    rules: RuleSet,
    policy: Policy,
    due: Sequence[DueEnrollment],
    now: datetime,
) -> list[str]:
    """Plan the due steps, in order; what became of each (``_plan_step``).

    A step that already has its send (timing written over by a concurrent re-time) waits
    for it to end. The others read their inputs from one load, and the new sends and
    their offers are written with one insert each."""
    if not due:
        return []
    existing = {
        (row.enrollment_id, row.step_id)
        for row in session.execute(
            select(Send.enrollment_id, Send.step_id).where(
                among(session, Send.enrollment_id, [item.enrollment.id for item in due])
            )
        )
    }
    todo: list[DueEnrollment] = []
    outcomes: list[str] = []
    for item in due:
        if (item.enrollment.id, item.step.id) in existing:
            item.enrollment.next_due_at = None
            outcomes.append("waiting")
        else:
            todo.append(item)
    if not todo:
        return outcomes
    loaded = load_step_inputs(session, [item.enrollment for item in todo])
    offered: list[tuple[str, DueEnrollment, DecisionInputs]] = []
    for item in todo:
        outcome, row, inputs = _plan_step(session, rules, policy, item, loaded, now)
        outcomes.append(outcome)
        if row is not None and row["status"] in ("planned", "held_out"):
            offered.append((row["dedupe_key"], item, inputs))
    loaded.insert_sends(session)
    if offered:
        # What each step offers (or would have, held out), recorded as ingest records it
        # for one-email campaigns: a purchase after the step is then credited to the step
        # as direct or influenced (worker.decide.attribution).
        config = AttributionConfig.from_settings(get_settings())
        memo = CatalogMemo()
        offers = {}
        for key, item, inputs in offered:
            send_id = loaded.send_ids[key]
            offers[send_id] = resolve_offered(
                session,
                item.compiled,
                item.step.id,
                inputs.profile,
                loaded.events[item.enrollment.entry_event_id],
                config,
                send_id=send_id,
                memo=memo,
            )
        store_offers(session, offers, now)
    return outcomes


def _write_enrollments(session: Session, enrollments: Sequence[Enrollment]) -> None:
    """Write the pass's changes to its enrollments: one ``UPDATE`` (executemany) per set
    of changed columns, where the unit of work's flush wrote one per row whenever two rows
    in id order differed in what changed. The same columns and values as that flush;
    the objects are then expired (their changes are in the database, a later read
    reloads them). Called with autoflush off, so that no query flushed them before."""
    by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    written: list[Enrollment] = []
    for enrollment in enrollments:
        state = inspect(enrollment)
        if state.deleted or state.detached:
            continue
        changed = tuple(sorted(attr.key for attr in state.attrs if attr.history.has_changes()))
        if not changed or "id" in changed:
            continue  # unchanged; or (never done here) a new id, left to the unit of work
        values = {f"new_{key}": getattr(enrollment, key) for key in changed}
        by_columns.setdefault(changed, []).append({"row_id": enrollment.id, **values})
        written.append(enrollment)
    table = cast(Table, Enrollment.__table__)
    for columns, rows in by_columns.items():
        session.execute(
            update(table)
            .where(table.c.id == bindparam("row_id"))
            .values({name: bindparam(f"new_{name}", type_=table.c[name].type) for name in columns}),
            rows,
        )
    for enrollment in written:
        session.expire(enrollment)


def _plan_step(
    session: Session,
    rules: RuleSet,
    policy: Policy,
    due: DueEnrollment,
    loaded: StepInputs,
    now: datetime,
) -> tuple[str, dict[str, Any] | None, DecisionInputs]:
    """Turn the enrollment's due step into a send row (queued in ``loaded``); what became
    of it, the row's values (None when the enrollment exited instead) and the inputs it
    was planned on."""
    enrollment, compiled, sequence, step = due.enrollment, due.compiled, due.sequence, due.step
    assert enrollment.next_due_at is not None
    due_at = enrollment.next_due_at
    campaign = compiled.campaign
    inputs, facts = loaded.for_step(session, enrollment, now)
    if _standing(compiled, inputs) is not None:
        end(session, enrollment, ExitReason.UNSUBSCRIBED, now)
        loaded.exited(enrollment.customer_id)
        return "exited", None, inputs
    expires_at = due_at + campaign.schedule.expire_after
    variant = next(
        (v for v in campaign.experiment.variants if v.id == enrollment.variant),
        campaign.experiment.variants[0],
    )
    status, reason, send_at = "planned", None, now
    only_if = sequence.only_if.get(step.id)
    if enrollment.held_out:
        status, reason = "held_out", SkipReason.HOLDOUT
    elif only_if is not None and not only_if(facts):
        status, reason = "skipped", SkipReason.STEP_CONDITION
    else:
        verdict = recheck(
            rules=rules,
            campaign_id=campaign.id,
            facts=facts,
            subject=inputs.subject,
            history=inputs.history,
            policy=policy,
            now=now,
            expires_at=expires_at,
            step=step,
        )
        if isinstance(verdict, Later):
            send_at, reason = verdict.send_at, verdict.reason
        elif verdict is not None:
            status, reason = "skipped", verdict
        if status == "planned":
            # The recheck counts only emails that went; one still planned for this
            # customer keeps its distance too, as at ingest (drop: skipped; defer: after it).
            clash = gap_clash(
                send_at, email_spans(inputs.history, rules), min_gap(campaign, policy)
            )
            if clash is not None and policy.over_cap == "drop":
                status, reason = "skipped", SkipReason.MIN_GAP
            elif clash is not None:
                send_at, reason = clash, SkipReason.DEFERRED_BY_GAP
        if status == "planned" and send_at > expires_at:
            status, reason = (
                "skipped",
                (
                    SkipReason.MIN_GAP
                    if reason is SkipReason.DEFERRED_BY_GAP
                    else SkipReason.EXPIRED
                ),
            )
    row: dict[str, Any] = dict(
        campaign_id=campaign.id,
        kind=campaign.kind,
        variant=variant.id,
        template=step.template or variant.template,
        customer_id=enrollment.customer_id,
        event_id=enrollment.entry_event_id,
        status=status,
        reason=reason,
        dedupe_key=f"{campaign.id}|{enrollment.customer_id}|n{enrollment.id}|{step.id}",
        send_at=send_at,
        expires_at=expires_at,
        attempts=0,
        created_at=now,
        updated_at=now,
        enrollment_id=enrollment.id,
        step_id=step.id,
    )
    loaded.planned(row)
    count_on_commit(session, SENDS, status, reason or "")
    enrollment.next_due_at = None  # waiting on the send
    enrollment.updated_at = now
    if status != "planned":
        # Held out or skipped now: the step is over, the next one is timed from here.
        _finish_step(enrollment, status, now, now)
        _schedule_next(session, enrollment, sequence, now)
    return status, row, inputs


@dataclass(frozen=True, slots=True)
class StepVerdict:
    """``step_check``'s answer: a skip reason, or the step to send (with its facts)."""

    reason: SkipReason | None
    enrollment: Enrollment | None = None
    facts: Mapping[str, object] | None = None


def step_facts(inputs: DecisionInputs, enrollment: Enrollment, now: datetime) -> dict[str, object]:
    """The facts a step's ``only_if`` sees: the decision inputs' and the enrollment's own
    (``enrollment.*``: time since entry, steps sent, what was bought since)."""
    return dict(inputs.facts) | enrollment_facts(
        enrollment.entered_at,
        now,
        enrollment.steps_sent,
        enrollment.categories_since_entry or (),
        enrollment.purchased_since_entry,
    )


def lock_step_enrollments(session: Session, enrollment_ids: Iterable[int]) -> dict[int, Enrollment]:
    """The enrollments of a batch's sequence steps, by id, in one statement: locked (on
    PostgreSQL) in id order until the transaction ends, so an exit waits for the steps
    or wins, and two transactions locking overlapping sets take the locks in one order.
    One statement per batch instead of one per step (``step_check``)."""
    wanted = sorted(set(enrollment_ids))
    if not wanted:
        return {}
    postgres = session.get_bind().dialect.name == "postgresql"
    query = STEP_ENROLLMENTS_LOCKED if postgres else STEP_ENROLLMENTS
    return {enrollment.id: enrollment for enrollment in session.scalars(query, {"b_ids": wanted})}


# Built once (the ids bound at execution): SQLAlchemy memoizes a built statement's cache key.
STEP_ENROLLMENTS = (
    select(Enrollment)
    .where(Enrollment.id.in_(bindparam("b_ids", expanding=True)))
    .order_by(Enrollment.id)
)
STEP_ENROLLMENTS_LOCKED = STEP_ENROLLMENTS.with_for_update()


def step_check(
    session: Session,
    rules: RuleSet,
    send: SendFields,
    inputs: DecisionInputs,
    now: datetime,
    locked: Mapping[int, Enrollment] | None = None,
) -> StepVerdict:
    """Just before a step goes out: its enrollment still active (locked until the send is
    handed over, so an exit waits for it or wins), the step still in the campaign, its
    ``only_if`` still true on fresh facts; and an unsubscribe ends the enrollment.

    ``locked`` holds the batch's enrollments already locked in this transaction
    (:func:`lock_step_enrollments`); without it the send's own is read and locked here."""
    assert send.enrollment_id is not None
    if locked is None:
        locked = lock_step_enrollments(session, [send.enrollment_id])
    enrollment = locked[send.enrollment_id]
    if enrollment.status != "active":
        return StepVerdict(SkipReason.SEQUENCE_EXITED, enrollment)
    compiled = rules.by_id(send.campaign_id)
    sequence = compiled.sequence if compiled is not None else None
    if compiled is None or sequence is None or sequence.step(send.step_id or "") is None:
        return StepVerdict(SkipReason.STEP_REMOVED, enrollment)
    blocked = _standing(compiled, inputs)
    if blocked is not None:
        end(session, enrollment, ExitReason.UNSUBSCRIBED, now)
        return StepVerdict(blocked, enrollment)
    facts = step_facts(inputs, enrollment, now)
    only_if = sequence.only_if.get(send.step_id or "")
    if only_if is not None and not only_if(facts):
        return StepVerdict(SkipReason.STEP_CONDITION, enrollment)
    return StepVerdict(None, enrollment, facts)


def record_offered(enrollment: Enrollment, skus: list[str], now: datetime) -> None:
    """Remember what a step offered, for ``exit_when: purchase: offered``."""
    offered = offered_after(enrollment, skus)
    if offered is not None:
        enrollment.offered_skus = offered
        enrollment.updated_at = now


def offered_after(enrollment: Enrollment, skus: list[str]) -> list[str] | None:
    """The enrollment's offered SKUs once a step offering ``skus`` went out, or None when
    nothing new is offered; delivery writes it with the step's hand-over."""
    known = set(enrollment.offered_skus or ())
    return None if set(skus) <= known else sorted(known | set(skus))


def enrollment_path(
    session: Session, rules: RuleSet, campaign_id: str, customer_id: str, event_id: str
) -> list[str] | None:
    """``explain``'s account of one enrollment: for each step of the campaign, whether
    it went (when), was skipped (why), is planned (for when) or waits (until when), and
    how the enrollment ended. The enrollment is the one this event started, else the
    customer's latest in the campaign; None when there is none."""
    rows = session.scalars(
        select(Enrollment)
        .where(Enrollment.campaign_id == campaign_id, Enrollment.customer_id == customer_id)
        .order_by(Enrollment.id)
    ).all()
    if not rows:
        return None
    enrollment = next((row for row in rows if row.entry_event_id == event_id), rows[-1])
    sends = {
        send.step_id: send
        for send in session.scalars(select(Send).where(Send.enrollment_id == enrollment.id))
    }
    lines = [
        f"enrollment {enrollment.id}: entered {enrollment.entered_at.isoformat()} by event "
        f"{enrollment.entry_event_id}, variant {enrollment.variant}"
        + (", held out" if enrollment.held_out else "")
        + f"; {enrollment.status}"
        + (
            f" ({enrollment.exit_reason} at {enrollment.exited_at.isoformat()}"
            + (f", event {enrollment.exit_event_id}" if enrollment.exit_event_id else "")
            + ")"
            if enrollment.exit_reason and enrollment.exited_at
            else ""
        )
    ]
    compiled = rules.by_id(campaign_id)
    sequence = compiled.sequence if compiled is not None else None
    step_ids = [step.id for step in sequence.steps] if sequence is not None else []
    for step_id in dict.fromkeys([*(enrollment.done or ()), *sends, *step_ids]):
        if step_id is None:
            continue
        send = sends.get(step_id)
        if send is not None:
            when = send.sent_at or send.send_at
            what = {
                "sent": f"sent {when.isoformat() if when else ''}",
                "planned": f"planned for {when.isoformat() if when else ''}",
                "queued": "on its way",
                "sending": "on its way",
                "held_out": "held out (not sent)",
            }.get(send.status, f"{send.status}, reason {send.reason}")
            if send.status == "planned" and send.reason:
                what += f" ({send.reason})"
            lines.append(f"  step {step_id}: {what}")
        elif enrollment.status != "active":
            lines.append(f"  step {step_id}: not reached ({enrollment.exit_reason})")
        elif step_id == enrollment.next_step_id and enrollment.next_due_at is not None:
            lines.append(f"  step {step_id}: waits until {enrollment.next_due_at.isoformat()}")
        else:
            lines.append(f"  step {step_id}: later")
        if step_id not in step_ids:
            lines[-1] += " (no longer in the campaign)"
    return lines


def planned_path(rules: RuleSet, campaign_id: str, entered_at: datetime) -> list[str]:
    """Each step's earliest due time for an entry at ``entered_at`` (no database)."""
    compiled = rules.by_id(campaign_id)
    sequence = compiled.sequence if compiled is not None else None
    if sequence is None:
        return []
    lines = []
    done: list[str] = []
    last: datetime | None = None
    while (due := next_step(sequence, done, entered_at, last)) is not None:
        lines.append(f"  step {due.step.id}: due {due.due_at.isoformat()} at the earliest")
        done.append(due.step.id)
        last = due.due_at
    return lines
