"""Sequences in the database: enroll at ingest, exit at ingest, plan due steps as sends.

The rules are ``triggers.sequences``; this module applies them to ``enrollments`` rows:

* ``observe`` (ingest, *before* the event is decided): every active enrollment of the
  customer learns of the event (``purchased_since_entry`` …) and ends when an exit rule
  holds or the customer may no longer be emailed; its planned step is skipped
  (``sequence_exited``). The rows are locked, so the step planner cannot plan a step of an
  enrollment being exited meanwhile.
* ``enroll`` (ingest, for an ``enrolled`` decision): one row per entry, inserted with
  ``ON CONFLICT DO NOTHING`` on the entry slot, so two racing entries leave one.
* ``plan_due`` (the dispatcher's loop, before it claims due sends): each due step becomes
  a ``sends`` row — planned (then claimed, rechecked and delivered like any email), or
  held out, or skipped with its reason — and enrollments whose step send has ended move
  on to their next step or complete.
* ``step_check`` (delivery's ``prepare``): just before a step goes out, the enrollment
  must still be active, the step still in the campaign and its ``only_if`` still true.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from triggers.decide import (
    Later,
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
from worker.core.metrics import SENDS
from worker.core.models import Customer, Enrollment, Event, Send
from worker.decide.decision_inputs import DecisionInputs, decision_inputs

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
        SENDS.labels("skipped", SkipReason.SEQUENCE_EXITED).inc(count)


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

    The insert is ``ON CONFLICT DO NOTHING`` on the unique entry slot and entry event:
    whichever of two simultaneous entries commits first wins, the other inserts nothing.
    """
    campaign = compiled.campaign
    sequence = compiled.sequence
    assert sequence is not None and decision.variant is not None
    previous = [
        PastEntry(row.entered_at, row.status == "active")
        for row in session.execute(
            select(Enrollment.entered_at, Enrollment.status).where(
                Enrollment.campaign_id == campaign.id, Enrollment.customer_id == customer_id
            )
        )
    ]
    entered_at = min(event.occurred_at, now)
    if not may_enter(campaign, previous, entered_at):
        return None
    first = next_step(sequence, (), entered_at, None)
    assert first is not None  # a sequence has at least one step
    values = dict(
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
    dialect = session.get_bind().dialect.name
    statement: postgresql.Insert | sqlite.Insert
    if dialect == "postgresql":
        statement = postgresql.insert(Enrollment).values(values).on_conflict_do_nothing()
    elif dialect == "sqlite":
        statement = sqlite.insert(Enrollment).values(values).on_conflict_do_nothing()
    else:
        raise RuntimeError(f"enrollments need PostgreSQL or SQLite, not {dialect}")
    inserted: int | None = session.execute(statement.returning(Enrollment.id)).scalar_one_or_none()
    return inserted


@dataclass(frozen=True, slots=True)
class PlanReport:
    planned: int = 0
    held_out: int = 0
    skipped: int = 0
    advanced: int = 0
    completed: int = 0
    exited: int = 0


_timed_for: dict[str, RuleSet] = {}


def plan_due(
    session: Session, rules: RuleSet, policy: Policy, now: datetime, limit: int
) -> PlanReport:
    """Move sequences on, in the caller's transaction: enrollments whose step send ended
    advance (or complete); due steps of active campaigns become sends.

    After a reload (a new ``RuleSet``), the waiting enrollments are re-timed first: a
    changed delay applies to every step not yet planned."""
    if not rules.has_steps:
        return PlanReport()
    url = str(session.get_bind().engine.url)
    if _timed_for.get(url) is not rules:
        _retime(session, rules, now)
        _timed_for[url] = rules
    advanced, completed = _advance_finished(session, rules, now, limit)
    sequences = rules.sequences()
    live = [cid for cid in sequences if (c := rules.by_id(cid)) and c.campaign.status == "active"]
    if not live:
        return PlanReport(advanced=advanced, completed=completed)
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
    for enrollment in session.scalars(query):
        compiled = rules.by_id(enrollment.campaign_id)
        assert compiled is not None and compiled.sequence is not None
        outcome = _plan_step(session, rules, compiled, compiled.sequence, enrollment, policy, now)
        counts[outcome] += 1
    return PlanReport(
        counts["planned"],
        counts["held_out"],
        counts["skipped"],
        advanced,
        completed,
        counts["exited"],
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
) -> tuple[int, int]:
    """Enrollments whose step send reached an end state move on to their next step."""
    query = (
        select(Enrollment, Send.status, Send.sent_at, Send.updated_at)
        .join(
            Send,
            and_(Send.enrollment_id == Enrollment.id, Send.step_id == Enrollment.next_step_id),
        )
        .where(
            Enrollment.status == "active",
            Enrollment.next_due_at.is_(None),
            Send.status.in_(ENDED),
        )
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(of=Enrollment, skip_locked=True)
    sequences = rules.sequences()
    advanced = completed = 0
    for enrollment, status, sent_at, updated_at in session.execute(query).all():
        _finish_step(enrollment, status, sent_at or updated_at, now)
        sequence = sequences.get(enrollment.campaign_id)
        if sequence is None:
            continue
        advanced += 1
        if not _schedule_next(session, enrollment, sequence, now):
            completed += 1
    return advanced, completed


def _finish_step(enrollment: Enrollment, status: str, at: datetime, now: datetime) -> None:
    assert enrollment.next_step_id is not None
    enrollment.done = [*(enrollment.done or ()), enrollment.next_step_id]
    enrollment.last_step_at = at
    if status == "sent":
        enrollment.steps_sent += 1
    enrollment.updated_at = now


def step_inputs(
    session: Session, enrollment: Enrollment, now: datetime, exclude_send: int | None = None
) -> tuple[AnyEvent, DecisionInputs, dict[str, object]]:
    """The entry event, the decision inputs as of ``now`` and the facts ``only_if`` sees."""
    stored = session.scalars(select(Event).where(Event.event_id == enrollment.entry_event_id)).one()
    event = validate_event(stored.payload)
    customer = session.get(Customer, enrollment.customer_id)
    inputs = decision_inputs(session, event, now, customer=customer, exclude_send=exclude_send)
    facts = dict(inputs.facts) | enrollment_facts(
        enrollment.entered_at,
        now,
        enrollment.steps_sent,
        enrollment.categories_since_entry or (),
        enrollment.purchased_since_entry,
    )
    return event, inputs, facts


def _plan_step(
    session: Session,
    rules: RuleSet,
    compiled: CompiledCampaign,
    sequence: CompiledSequence,
    enrollment: Enrollment,
    policy: Policy,
    now: datetime,
) -> str:
    """Turn the enrollment's due step into a send row; returns what became of it."""
    if not _schedule_next(session, enrollment, sequence, now):
        return "waiting"  # completed: nothing left to plan
    step = sequence.step(enrollment.next_step_id or "")
    assert step is not None and enrollment.next_due_at is not None
    due_at = enrollment.next_due_at
    if due_at > now:
        return "waiting"  # re-timed by an edit: not due yet
    planned = session.scalar(
        select(Send.id).where(Send.enrollment_id == enrollment.id, Send.step_id == step.id)
    )
    if planned is not None:
        # Already a send (timing written over by a concurrent re-time): wait for it to end.
        enrollment.next_due_at = None
        return "waiting"
    campaign = compiled.campaign
    _, inputs, facts = step_inputs(session, enrollment, now)
    if _standing(compiled, inputs) is not None:
        end(session, enrollment, ExitReason.UNSUBSCRIBED, now)
        return "exited"
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
    send = Send(
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
    session.add(send)
    if status in ("planned", "held_out"):
        # What this step offers (or would have, held out), recorded as ingest records it
        # for one-email campaigns: a purchase after the step is then credited to the
        # step as direct or influenced (worker.decide.attribution).
        from worker.core.settings import get_settings
        from worker.decide.attribution import AttributionConfig, offered_skus

        session.flush()
        offered_skus(session, send, rules, AttributionConfig.from_settings(get_settings()), now)
    SENDS.labels(status, reason or "").inc()
    enrollment.next_due_at = None  # waiting on the send
    enrollment.updated_at = now
    if status != "planned":
        # Held out or skipped now: the step is over, the next one is timed from here.
        _finish_step(enrollment, status, now, now)
        _schedule_next(session, enrollment, sequence, now)
    return "planned" if status == "planned" else status


@dataclass(frozen=True, slots=True)
class StepVerdict:
    """``step_check``'s answer: a skip reason, or the step to send (with its facts)."""

    reason: SkipReason | None
    enrollment: Enrollment | None = None
    facts: Mapping[str, object] | None = None


def step_check(
    session: Session, rules: RuleSet, send: Send, inputs: DecisionInputs, now: datetime
) -> StepVerdict:
    """Just before a step goes out: its enrollment still active (locked until the send is
    handed over, so an exit waits for it or wins), the step still in the campaign, its
    ``only_if`` still true on fresh facts; and an unsubscribe ends the enrollment."""
    assert send.enrollment_id is not None
    query = select(Enrollment).where(Enrollment.id == send.enrollment_id)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    enrollment = session.scalars(query).one()
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
    facts = dict(inputs.facts) | enrollment_facts(
        enrollment.entered_at,
        now,
        enrollment.steps_sent,
        enrollment.categories_since_entry or (),
        enrollment.purchased_since_entry,
    )
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
