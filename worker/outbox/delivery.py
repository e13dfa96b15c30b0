"""Deliver a batch of queued sends: claim → recheck → render → hand to provider → record.

One deliver task takes a batch of send ids. It claims them in one statement under a
random token and a lease it renews while it works (``worker.outbox.claims``), loads what the
rechecks need in a few queries, prepares each message with the engine's own recheck,
records skips and reschedules in one commit, and hands the messages to the provider's
``send_many``. Each message's hand-over is a committed, token-conditional UPDATE just
before its irreversible step: a message whose hand-over fails never leaves, and a worker
that dies before it leaves its sends to the sweeper, which gives expired claims back to
the queue. When messages leave one at a time, the answer of each is written in the
commit of the next one's hand-over (the last one's at the end of the batch): one commit
per email, and still at most one message whose answer is not committed. Only a send
handed over without a recorded answer is ambiguous; it is reported, never re-sent. See
docs/delivery.md.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import ReturningUpdate

from triggers.addresses import InvalidAddress, lookup_key, parse_address
from triggers.decide import Later, recheck
from triggers.durations import parse_duration
from triggers.offers import AnyOffer, OfferUnavailable
from triggers.outcomes import SkipReason
from triggers.rule_set import CompiledCampaign
from worker.core.db import engine_for, plan_for_this_batch, surviving_disconnects
from worker.core.log_format import fields
from worker.core.metrics import PROVIDER_SECONDS, SENDS
from worker.core.models import Enrollment, Suppression
from worker.core.redaction import error_summary
from worker.core.settings import Settings
from worker.decide.decision_inputs import RecheckInputs, SendFields, recheck_inputs_many
from worker.decide.rules import Snapshot
from worker.decide.sequences import lock_step_enrollments, offered_after, step_check
from worker.email.email_context import (
    Coupon,
    email_context,
    links_with,
    mailto_uri_body,
    unsubscribe_token,
)
from worker.email.mime import (
    Envelope,
    HeaderInjection,
    build_email,
    feedback_id_for,
    message_id_for,
)
from worker.offers.offer_resolution import CatalogMemo, choose_offer, localize_offer
from worker.outbox.answer_and_hand_over import answer_and_hand_over, sent_update
from worker.outbox.claims import (
    SENDS_TABLE,
    HandOver,
    Lease,
    LostClaim,
    SequenceEnded,
    claim,
    hand_over,
    new_token,
    release,
)
from worker.outbox.coupons import coupon_code
from worker.process.runtime import Runtime
from worker.providers.base import (
    AmbiguousDeliveryError,
    ConfigurationError,
    DeliveryError,
    DeliveryResult,
    OutgoingEmail,
    PermanentDeliveryError,
    TransientDeliveryError,
    UnsupportedAddress,
)
from worker.records.activity import SendFacts, add_send_activity

log = logging.getLogger(__name__)
MAX_BACKOFF = timedelta(hours=1)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Skip:
    reason: str
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Reschedule:
    send_at: datetime
    reason: SkipReason = SkipReason.OUTSIDE_WINDOW


@dataclass(frozen=True, slots=True)
class Prepared:
    """A send that passed its recheck: how to build its message, and what its hand-over
    records with it (the coupon made on first render and, for a sequence step, the
    enrollment's offered SKUs).

    ``build`` renders and builds the message (pure: no database), or says why it cannot
    (a template fault, an address no builder can write): the deliver task calls it right
    before the message's hand-over, so a batch's first message leaves without waiting
    for the whole batch to be rendered."""

    build: Callable[[], OutgoingEmail | Skip]
    coupon_code: str | None = None
    coupon_expires_at: datetime | None = None
    enrollment_id: int | None = None
    offered_skus: list[str] | None = None


def _coupon(
    runtime: Runtime, send: SendFields, offer: AnyOffer, now: datetime
) -> tuple[Coupon | None, str | None, datetime | None]:
    """The send's coupon: made on first render (stored with the hand-over), read back on
    every retry; with the code and expiry to store."""
    spec = offer.coupon
    if spec is None:
        return None, None, None
    code, expires_at = send.coupon_code, send.coupon_expires_at
    if code is None or expires_at is None:
        secret = next(iter(runtime.unsubscribe_keys.values()))
        code = coupon_code(secret, send.id, spec.prefix)
        expires_at = now + spec.expires_after
    return Coupon(code, expires_at, spec.discount_percent), code, expires_at


@dataclass(frozen=True, slots=True)
class _From:
    """A campaign's sender fields and Feedback-ID: the same for each of its sends."""

    name: str
    address: str
    reply_to: str | None
    feedback_id: str


class Senders:
    """Each campaign's sender fields and Feedback-ID, and each sender's Message-ID
    domain, worked out once per batch instead of once per send (a SHA-256 and an
    address parse each)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._fields: dict[str, _From] = {}
        self._domains: dict[str, str] = {}

    def of(self, compiled: CompiledCampaign) -> _From:
        found = self._fields.get(compiled.id)
        if found is None:
            settings, sender = self.settings, compiled.campaign.sender
            found = self._fields[compiled.id] = _From(
                (sender and sender.name) or settings.sender_name,
                (sender and sender.address) or settings.sender_address,
                (sender and sender.reply_to) or settings.reply_to,
                feedback_id_for(compiled.id, compiled.campaign.kind, settings.feedback_sender_id),
            )
        return found

    def message_id_domain(self, sender_address: str) -> str:
        """``CROSSSELL_MESSAGE_ID_DOMAIN``, else the sender's domain in A-label form;
        InvalidAddress (not remembered) for a sender address that does not parse."""
        if self.settings.message_id_domain:
            return self.settings.message_id_domain
        domain = self._domains.get(sender_address)
        if domain is None:
            domain = self._domains[sender_address] = parse_address(sender_address).ascii_domain
        return domain


def prepare(
    session: Session,
    runtime: Runtime,
    send: SendFields,
    now: datetime,
    loaded: RecheckInputs | None = None,
    reads: CatalogMemo | None = None,
    snapshot: Snapshot | None = None,
    senders: Senders | None = None,
    locked: Mapping[int, Enrollment] | None = None,
) -> Prepared | Skip | Reschedule:
    """Recheck everything that may have changed since planning; what passes comes back
    with the build of its message (``Prepared.build``), not built yet.

    The recheck is ``triggers.decide.recheck`` on inputs from ``recheck_inputs_many``
    (``loaded`` is this send's from its batch, else it is read as a batch of one;
    ``reads`` the batch's shared catalog reads; ``snapshot`` the rules and renderer the
    batch took once, else the ones in force; ``senders`` the batch's sender fields;
    ``locked`` the batch's sequence enrollments, locked at once): the engine's own checks
    in the engine's order, so a send is never judged by other rules at sending than at
    planning. Nothing is written to the send here; a sequence step may end its
    enrollment (an unsubscribe) in ``session``.
    """
    settings = runtime.settings
    if snapshot is None:
        snapshot = runtime.rules.snapshot()
    rules = snapshot.rules
    compiled = rules.by_id(send.campaign_id)
    if compiled is None or compiled.campaign.status != "active":
        return Skip(SkipReason.CAMPAIGN_INACTIVE)
    if loaded is None:
        loaded = recheck_inputs_many(session, [send], now)[send.id]
    customer, inputs = loaded.customer, loaded.inputs
    step, facts, enrollment = None, inputs.facts, None
    if send.enrollment_id is not None:
        # A sequence step: its enrollment still active, the step still there, only_if true.
        checked = step_check(session, rules, send, inputs, now, locked)
        if checked.reason is not None:
            return Skip(checked.reason)
        assert compiled.sequence is not None and checked.facts is not None
        step, facts = compiled.sequence.step(send.step_id or ""), checked.facts
        enrollment = checked.enrollment
    verdict = recheck(
        rules=rules,
        campaign_id=send.campaign_id,
        facts=facts,
        subject=inputs.subject,
        history=inputs.history,
        policy=runtime.policy,
        now=now,
        expires_at=send.expires_at,
        step=step,
    )
    if isinstance(verdict, Later):
        return Reschedule(verdict.send_at, verdict.reason)
    if verdict is not None:
        return Skip(verdict)
    profile = inputs.profile

    offer_spec = (step.offer if step is not None else None) or compiled.campaign.offer
    try:
        chosen = choose_offer(
            session, offer_spec, loaded.event, profile, runtime.complements, reads
        )
    except OfferUnavailable as unavailable:
        return Skip(unavailable.reason)
    offer = localize_offer(session, chosen, profile.locale)
    if step is not None and not offer.items:
        # A sequence step is a nudge toward products: with none to show (a loyalty bonus
        # for a customer who has every category already) it is skipped, the sequence goes on.
        return Skip(SkipReason.NO_OFFER)
    coupon, code, code_expires_at = _coupon(runtime, send, offer_spec, now)

    variant = next(v for v in compiled.campaign.experiment.variants if v.id == send.variant)
    subject = (step.subject if step is not None else None) or variant.subject
    # One HMAC for the unsubscribe and preferences links and the List-Unsubscribe mailto.
    token = unsubscribe_token(runtime.unsubscribe_keys, customer.id)
    links = links_with(settings, token)
    context = email_context(
        settings=settings,
        customer={
            "id": customer.id,
            "first_name": customer.first_name,
            "last_name": customer.last_name,
            "email": customer.email,
            "locale": customer.locale,
            "timezone": customer.timezone,
        },
        event=loaded.payload,
        campaign=compiled.campaign,
        variant=variant.id,
        offer=offer,
        links=links,
        coupon=coupon,
    )
    renderer = snapshot.renderer
    template = send.template or variant.template
    chosen_senders = senders if senders is not None else Senders(settings)

    def build() -> OutgoingEmail | Skip:
        try:
            rendered = renderer.render(template, context, customer.locale, subject)
        except Exception as exc:
            # A template fault (1/0, a type error, a render limit hit, a refused symlink)
            # is this send's problem, not a worker bug: skipped with the reason, never
            # retried; the time limit keeps it from holding the worker thread.
            log.warning(
                "send %s: the template did not render: %s: %s", send.id, type(exc).__name__, exc
            )
            return Skip(SkipReason.RENDER_ERROR, f"{exc.__class__.__name__}: {exc}"[:1000])
        try:
            sender = chosen_senders.of(compiled)
            # Stored with the hand-over and reused on every retry: one Message-ID per send.
            message_id = send.message_id or message_id_for(
                send.id,
                chosen_senders.message_id_domain(sender.address),
                next(iter(runtime.unsubscribe_keys.values())),
            )
            envelope = Envelope(
                send_id=send.id,
                sender_name=sender.name,
                sender_address=sender.address,
                recipient_name=" ".join(filter(None, [customer.first_name, customer.last_name])),
                recipient_address=customer.email or "",
                reply_to=sender.reply_to,
                date=now,
                message_id=message_id,
                unsubscribe_url=links.unsubscribe_url,
                unsubscribe_mailto=mailto_uri_body(settings.unsubscribe_mailto, token),
                feedback_id=sender.feedback_id,
            )
            # The one builder: bytes, the SMTP envelope (A-label domains) and the API fields.
            return build_email(envelope, rendered)
        except InvalidAddress as exc:
            # An address stored before ingest validated addresses, or one no builder can
            # write as a single mailbox: never sent, never an internal error.
            return Skip(SkipReason.UNSUPPORTED_ADDRESS, f"{exc.__class__.__name__}: {exc}"[:1000])
        except HeaderInjection as exc:
            return Skip(SkipReason.RENDER_ERROR, f"{exc.__class__.__name__}: {exc}"[:1000])

    return Prepared(
        build,
        code,
        code_expires_at,
        # Committed with the hand-over: what this step offers, for purchase: offered.
        enrollment.id if enrollment is not None else None,
        offered_after(enrollment, [item.sku for item in offer.items])
        if enrollment is not None
        else None,
    )


def backoff(attempts: int, base: float, retry_after: float | None) -> timedelta:
    """Exponential backoff with full jitter, never shorter than the server's Retry-After."""
    ceiling = min(base * (2 ** max(attempts - 1, 0)), MAX_BACKOFF.total_seconds())
    wait = random.uniform(ceiling / 2, ceiling)
    return timedelta(seconds=max(wait, retry_after or 0.0))


def deliver_send(runtime: Runtime, send_id: int) -> str:
    """Deliver one send (a batch of one); returns the status it reached (logs, tests)."""
    return deliver_batch(runtime, [send_id])[send_id]


def deliver_batch(runtime: Runtime, send_ids: Sequence[int]) -> dict[int, str]:
    """Run a batch of sends to their end states; returns each one's status for logs and
    tests: ``sent``, ``skipped``, ``rescheduled``, ``retry``, ``failed``, ``ambiguous``,
    ``throttled`` (back to the outbox for its rate slot), ``released`` (the hand-over
    could not be committed; due again) or ``not_claimed`` (not ``queued`` any more).

    Sends of one customer go one per round, in the given order, so each is rechecked
    against the ones before it as decided (spacing, caps), as one-at-a-time delivery did.
    """
    # Built before the claim: a provider with incomplete settings raises here and the
    # sends stay ``queued`` for the sweeper, instead of stranding in ``sending``.
    runtime.provider  # noqa: B018
    settings = runtime.settings
    engine = engine_for(settings.resolved_database_url)
    lease = parse_duration(settings.delivery_lease)
    token = new_token()
    outcomes: dict[int, str] = {}
    pending = list(dict.fromkeys(send_ids))
    link = _Link(engine)
    try:
        with Lease(engine, token, runtime.clock, lease):
            while pending:
                picked = surviving_disconnects(partial(_pick_round, link, pending))
                outcomes |= picked.done
                pending = picked.later
                if picked.now:
                    batch = _Batch(runtime, link, token, lease, picked.now)
                    outcomes |= batch.run()
    finally:
        link.drop()
    return outcomes


class _Link:
    """The one pooled connection of a deliver task: its rounds' picks, prepare sessions,
    hand-overs and answers run on it, so the task checks a connection out of the pool
    (and pre-pings it) once, not once per step; dropped after any error, which may be
    the connection's, and opened again by the next step."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.connection: Connection | None = None

    def get(self) -> Connection:
        connection = self.connection
        if connection is None or connection.closed or connection.invalidated:
            connection = self.connection = self.engine.connect()
        return connection

    def drop(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception:  # already broken: nothing to give back to the pool
                log.debug("closing the task's connection failed", exc_info=True)


@dataclass(frozen=True, slots=True)
class _Round:
    now: list[int]
    later: list[int]
    done: dict[int, str]


ROUND = select(SENDS_TABLE.c.id, SENDS_TABLE.c.customer_id, SENDS_TABLE.c.status).where(
    SENDS_TABLE.c.id.in_(bindparam("b_ids", expanding=True))
)


@dataclass(frozen=True, slots=True)
class ClaimedSend:
    """The columns of a claimed send that its recheck and message read
    (:class:`~worker.decide.decision_inputs.SendFields`), as a plain row: no ORM
    ``Send`` objects (identity map, all 30 columns, instrumentation) kept for the batch."""

    id: int
    campaign_id: str
    kind: str
    variant: str | None
    template: str | None
    customer_id: str
    event_id: str
    expires_at: datetime | None
    message_id: str | None
    coupon_code: str | None
    coupon_expires_at: datetime | None
    enrollment_id: int | None
    step_id: str | None


CLAIMED = select(*(SENDS_TABLE.c[name] for name in ClaimedSend.__dataclass_fields__)).where(
    SENDS_TABLE.c.id.in_(bindparam("b_ids", expanding=True)),
    SENDS_TABLE.c.claim_token == bindparam("b_token"),
)


def _pick_round(link: _Link, ids: list[int]) -> _Round:
    """The ``queued`` sends to claim now (the first of each customer); the rest wait for
    a later round, and the others are not this task's to deliver."""
    try:
        with link.get().begin() as transaction:
            rows = {row.id: row for row in transaction.connection.execute(ROUND, {"b_ids": ids})}
    except BaseException:
        link.drop()
        raise
    done: dict[int, str] = {}
    now_ids: list[int] = []
    later: list[int] = []
    customers: set[str] = set()
    for send_id in ids:
        row = rows.get(send_id)
        if row is None or row.status != "queued":
            done[send_id] = "not_claimed"  # finished, or another task's
        elif row.customer_id in customers:
            later.append(send_id)
        else:
            customers.add(row.customer_id)
            now_ids.append(send_id)
    return _Round(now_ids, later, done)


def _counted(send_id: int, campaign: str, status: str, reason: str | None) -> None:
    SENDS.labels(status, reason or "").inc()
    log.info(
        "send %s %s%s",
        send_id,
        status,
        f" ({reason})" if reason else "",
        extra=fields(send_id=send_id, campaign=campaign, outcome=status, reason=reason),
    )


def _owned_statement(answer_may_replace_ambiguous: bool) -> ReturningUpdate[str]:
    """``_owned``'s UPDATE, built once: its SET clause is made from the parameters' keys."""
    sends = SENDS_TABLE.c
    expected = sends.status == "sending"
    if answer_may_replace_ambiguous:
        expected = expected | (
            (sends.status == "failed") & (sends.reason == SkipReason.AMBIGUOUS.value)
        )
    return (
        update(SENDS_TABLE)
        .where(sends.id == bindparam("b_id"), sends.claim_token == bindparam("b_token"), expected)
        .returning(sends.campaign_id)
    )


OWNED = _owned_statement(False)
OWNED_OR_AMBIGUOUS = _owned_statement(True)
# The most frequent answer, ``sent``, with its SET clause fixed and no RETURNING (the
# campaign is the prepared send's): 52 against 66 µs of CPU per execution on PostgreSQL
# (a script timing 1,000 executions of each on claimed rows of a bench database).
SENT = sent_update("b_")


def _owned(executor: Session | Connection, send_id: int, token: str, **values: Any) -> str | None:
    """Move this token's ``sending`` row; returns its campaign, or None if it is not ours.

    ``sent`` may also replace a ``failed``/``ambiguous`` the sweeper wrote while the
    answer was on its way: the token proves it is this attempt's answer. The claim ends
    here, so its count for the crash-loop cap (``claims``) starts again.
    """
    statement = OWNED_OR_AMBIGUOUS if values.get("status") == "sent" else OWNED
    parameters = {"b_id": send_id, "b_token": token, "lease_expires_at": None, "claims": 0}
    moved = executor.execute(statement, parameters | values).first()
    return None if moved is None else str(moved[0])


def _suppress(connection: Connection, key: str, source: str, now: datetime) -> None:
    """Add a hard-bounced address to the suppression list unless it is there already."""
    dialect = connection.dialect.name
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(Suppression)
    connection.execute(
        insert.values(
            email=key, reason=SkipReason.HARD_BOUNCE.value, source=source, created_at=now
        ).on_conflict_do_nothing(index_elements=["email"])
    )


Record = Callable[[Connection], str]


class _Batch:
    """One round of a deliver task: the claimed sends, their messages and outcomes."""

    def __init__(
        self,
        runtime: Runtime,
        link: _Link,
        token: str,
        lease: timedelta,
        ids: list[int],
    ) -> None:
        self.runtime, self.link, self.token, self.lease = runtime, link, token, lease
        self.engine = link.engine
        self.ids = ids
        self.attempts: dict[int, int] = {}
        self.outcomes: dict[int, str] = {}
        self.logged: list[tuple[int, str, str, str | None]] = []
        # What the activity rows say about each prepared send, kept from the batch's load.
        self.facts: dict[int, SendFacts] = {}
        # Answers not committed yet: written with the next hand-over, or at the end.
        self.pending: list[tuple[int, Record]] = []

    def run(self) -> dict[int, str]:
        now = self.runtime.clock.now()
        claimed = surviving_disconnects(
            lambda: claim(self.engine, self.ids, self.token, now, self.lease)
        )
        self.attempts = {row.send_id: row.attempts for row in claimed}
        self.outcomes = {send_id: "not_claimed" for send_id in self.ids}
        if not claimed:
            return self.outcomes
        prepared = self._prepare_all([row.send_id for row in claimed])
        if prepared:
            self._send(prepared)
        return self.outcomes

    def _unit(self, work: Callable[[Connection], T]) -> T:
        """One transaction on the task's connection: commit on success, roll back on
        any error (and drop the connection, which may be the cause)."""
        self.logged = []
        connection = self.link.get()
        try:
            with connection.begin():
                return work(connection)
        except BaseException:
            self.link.drop()
            raise

    def _log_moves(self) -> None:
        for moved_id, campaign, status, reason in self.logged:
            _counted(moved_id, campaign, status, reason)
        self.logged = []

    # -- recheck and build ---------------------------------------------------------------

    def _prepare_all(self, ids: list[int]) -> dict[int, Prepared]:
        """Prepare every claimed send; skips and reschedules are committed together.

        An unexpected error in one send (a bug, data no recheck foresaw) marks that one
        ``failed``/``internal_error`` and the others are prepared again from scratch
        (rare, and it keeps one transaction per round)."""
        remaining = list(ids)
        while True:
            try:
                return surviving_disconnects(partial(self._prepare_round, remaining))
            except _Unpreparable as broken:
                self._internal_error(broken.send_id, broken.error)
                remaining.remove(broken.send_id)

    def _prepare_round(self, ids: list[int]) -> dict[int, Prepared]:
        runtime, now = self.runtime, self.runtime.clock.now()
        ready: dict[int, Prepared] = {}
        moved: list[tuple[int, str, str, str | None]] = []
        # On the task's connection: its pool checkout and pre-ping serve the whole task.
        session = Session(bind=self.link.get(), expire_on_commit=False)
        try:
            with session.begin():
                plan_for_this_batch(session)
                sends = [
                    ClaimedSend(*row)
                    for row in session.execute(CLAIMED, {"b_ids": ids, "b_token": self.token})
                ]
                order = {send_id: position for position, send_id in enumerate(ids)}
                sends.sort(key=lambda send: order[send.id])
                # A sequence step's enrollment stays locked until this round commits.
                locked = lock_step_enrollments(
                    session,
                    (send.enrollment_id for send in sends if send.enrollment_id is not None),
                )
                loaded = recheck_inputs_many(session, sends, now)
                reads = CatalogMemo()
                snapshot = runtime.rules.snapshot()
                senders = Senders(runtime.settings)
                for send in sends:
                    try:
                        result = prepare(
                            session,
                            runtime,
                            send,
                            now,
                            loaded[send.id],
                            reads,
                            snapshot,
                            senders,
                            locked,
                        )
                    except (DBAPIError, InterfaceError):
                        raise  # the connection: surviving_disconnects decides
                    except Exception as exc:
                        raise _Unpreparable(send.id, exc) from exc
                    if isinstance(result, Prepared):
                        ready[send.id] = result
                        self.facts[send.id] = SendFacts(
                            send.id,
                            send.customer_id,
                            send.campaign_id,
                            send.kind,
                            send.variant,
                            send.event_id,
                        )
                        continue
                    if isinstance(result, Skip):
                        values: dict[str, Any] = {
                            "status": "skipped",
                            "reason": result.reason,
                            "detail": result.detail,
                        }
                    else:
                        values = {
                            "status": "planned",
                            "send_at": result.send_at,
                            "reason": result.reason,
                        }
                    campaign = _owned(session, send.id, self.token, updated_at=now, **values)
                    if campaign is not None:
                        moved.append((send.id, campaign, values["status"], values["reason"]))
        except _Unpreparable:
            raise  # rolled back; the connection is fine
        except BaseException:
            session.close()
            self.link.drop()  # the error may be the connection's
            raise
        finally:
            session.close()
        for send_id, campaign, status, reason in moved:
            _counted(send_id, campaign, status, reason)
            self.outcomes[send_id] = "skipped" if status == "skipped" else "rescheduled"
        return ready

    def _internal_error(self, send_id: int, exc: Exception) -> None:
        log.error(
            "send %s cannot be prepared; marked failed/internal_error",
            send_id,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        detail = f"{exc.__class__.__name__}: {exc}"[:1000]
        self._record(
            send_id,
            lambda session: self._move(
                session,
                send_id,
                "failed",
                status="failed",
                reason=SkipReason.INTERNAL_ERROR,
                detail=detail,
            ),
        )

    # -- hand over and record ------------------------------------------------------------

    def _built(self, send_id: int, item: Prepared) -> OutgoingEmail | None:
        """``item``'s message, rendered and built now; None if it cannot be (recorded:
        ``skipped`` with the reason, or ``failed``/``internal_error`` for a bug)."""
        try:
            built = item.build()
        except Exception as exc:
            self._internal_error(send_id, exc)
            return None
        if isinstance(built, Skip):
            self._record(
                send_id,
                partial(
                    self._move,
                    send_id=send_id,
                    outcome="skipped",
                    status="skipped",
                    reason=built.reason,
                    detail=built.detail,
                ),
            )
            return None
        return built

    def _send(self, prepared: dict[int, Prepared]) -> None:
        runtime = self.runtime
        ids = list(prepared)
        emails: list[OutgoingEmail | None] = [None] * len(ids)
        handed = [False] * len(ids)
        refused: list[Exception | None] = [None] * len(ids)

        def on_hand_over(index: int) -> None:
            send_id, email = ids[index], emails[index]
            assert email is not None  # only built messages are handed to the provider
            item = prepared[send_id]
            try:
                self._hand_over(
                    HandOver(
                        send_id,
                        self.attempts[send_id] + 1,
                        email.message_id,
                        item.coupon_code,
                        item.coupon_expires_at,
                        item.enrollment_id,
                        item.offered_skus,
                    )
                )
            except Exception as exc:
                refused[index] = exc
                raise
            handed[index] = True

        provider = runtime.provider
        limiter = runtime.rate_limiter
        if limiter is None and provider.answers_together:
            # A batch endpoint: the messages go in one request and their answers come
            # back together, so they are all built first and recorded together after it.
            for index, send_id in enumerate(ids):
                emails[index] = self._built(send_id, prepared[send_id])
            built = [index for index, email in enumerate(emails) if email is not None]
            if not built:
                return
            ids, emails = [ids[index] for index in built], [emails[index] for index in built]
            handed, refused = [False] * len(ids), [None] * len(ids)
            ready = [email for email in emails if email is not None]
            started = time.perf_counter()
            results = provider.send_many(ready, on_hand_over)
            share = (time.perf_counter() - started) / len(ids)
            for _ in ids:
                PROVIDER_SECONDS.labels(provider.name).observe(share)
            self._answered(ids, ready, results, handed, refused)
            return
        # One message at a time, built right before its hand-over (the first one leaves
        # without waiting for the rest of the batch to be rendered), its answer written
        # in the commit of the next message's hand-over (the last one's after the loop):
        # one commit per email, and a worker killed mid-batch still leaves at most one
        # message of the batch ambiguous — the one whose answer waits for the next
        # commit — not every message sent so far. With a rate limit each message first
        # takes its own slot, never inside an SMTP transaction, and its answer is
        # committed before the next slot is waited for (a wait must not stretch the
        # ambiguous window); the batch's slots are not taken up front, where a task
        # lagging behind its block of slots would waste them.
        try:
            for index, send_id in enumerate(ids):
                email = emails[index] = self._built(send_id, prepared[send_id])
                if email is None:
                    continue
                if limiter is not None:
                    reservation = limiter.acquire()
                    if not reservation.granted:
                        self._throttle(ids[index:], reservation.wait)
                        return
                with PROVIDER_SECONDS.labels(provider.name).time():
                    results = provider.send_many([email], partial(_nth, on_hand_over, index))
                self._answered(
                    [send_id],
                    [email],
                    results,
                    [handed[index]],
                    [refused[index]],
                    # A refused hand-over committed nothing: record the answers now.
                    defer=limiter is None and refused[index] is None,
                )
        finally:
            if self.pending:
                self._record_all([])

    def _hand_over(self, item: HandOver) -> None:
        """Commit ``item``'s hand-over together with the answers waiting for a commit;
        raises (and commits nothing, the answers still waiting) if the hand-over is
        refused or the commit fails.

        The task's connection is checked (pre-pinged) once per task, so it may have
        died since the last message (PostgreSQL restarted): a connection lost *before*
        the COMMIT was sent committed nothing, and the unit is tried once more on a
        fresh connection. A COMMIT whose answer was lost is never repeated."""
        now = self.runtime.clock.now()
        committing: list[bool] = []

        def unit(connection: Connection) -> dict[int, str]:
            committing.clear()
            answer = self._sent_answer_to_combine(connection, item)
            if answer is not None:
                recorded = self._answer_and_hand_over(connection, item, answer, now)
            else:
                hand_over(connection, self.token, item, now, self.lease)
                recorded = {send_id: record(connection) for send_id, record in self.pending}
            committing.append(True)  # the COMMIT follows when this returns
            return recorded

        try:
            outcomes = self._unit(unit)
        except (OperationalError, InterfaceError) as exc:
            if committing:
                raise
            log.warning(
                "send %s: the database connection was lost before the hand-over (%s); "
                "trying once more on a new one",
                item.send_id,
                exc.__class__.__name__,
            )
            outcomes = self._unit(unit)
        self.outcomes |= outcomes
        self.pending = []
        self._log_moves()

    def _sent_answer_to_combine(self, connection: Connection, item: HandOver) -> _SentAnswer | None:
        """The waiting answer that ``item``'s hand-over (a sequence step's with its
        enrollment check) can write in its own statement: on PostgreSQL, when the only
        answer waiting is a ``sent`` one (the steady state of a batch)."""
        if len(self.pending) != 1:
            return None
        answer = self.pending[0][1]
        if not isinstance(answer, _SentAnswer) or connection.dialect.name != "postgresql":
            return None
        return answer

    def _answer_and_hand_over(
        self, connection: Connection, item: HandOver, answer: _SentAnswer, now: datetime
    ) -> dict[int, str]:
        facts = self.facts[answer.send_id]
        written = answer_and_hand_over(
            connection,
            token=self.token,
            item=item,
            answer=(
                facts,
                self.attempts[answer.send_id] + 1,
                answer.email.message_id,
                answer.result,
            ),
            now=now,
            lease=self.lease,
        )
        # Raised as claims.hand_over raises them: the caller rolls the statement back.
        if not written.handed:
            raise LostClaim(f"send {item.send_id} is no longer claimed by this worker")
        if not written.step_active:
            raise SequenceEnded(f"enrollment {item.enrollment_id} ended")
        if not written.sent:
            return {answer.send_id: "not_claimed"}
        self.logged.append((answer.send_id, facts.campaign_id, "sent", None))
        return {answer.send_id: "sent"}

    def _answered(
        self,
        ids: list[int],
        emails: list[OutgoingEmail],
        results: list[DeliveryResult | Exception],
        handed: list[bool],
        refused: list[Exception | None],
        defer: bool = False,
    ) -> None:
        """Record the answers — in one commit now, or with ``defer`` in the next
        hand-over's commit — and release the sends that never left."""
        released: list[int] = []
        records: list[tuple[int, Record]] = []
        for index, result in enumerate(results):
            send_id = ids[index]
            record = self._outcome(send_id, emails[index], result, handed[index], refused[index])
            if record is None:
                released.append(send_id)
            else:
                records.append((send_id, record))
        if defer:
            self.pending.extend(records)
        else:
            self._record_all(records)
        if released:
            self._release(released)

    def _throttle(self, ids: list[int], wait: float) -> None:
        """Claimed sends with no rate slot within ``max_wait``: back to ``planned`` for
        when the slot comes (reason ``rate_limited``), their attempt not counted."""
        now = self.runtime.clock.now()
        send_at = now + timedelta(seconds=wait)
        moved = surviving_disconnects(
            lambda: release(
                self.engine,
                self.token,
                ids,
                now,
                "no rate slot within CROSSSELL_RATE_LIMIT_MAX_WAIT",
                reason=SkipReason.RATE_LIMITED,
                send_at=send_at,
            )
        )
        for send_id in ids:
            self.outcomes[send_id] = "throttled" if send_id in moved else "not_claimed"

    def _outcome(
        self,
        send_id: int,
        email: OutgoingEmail,
        result: DeliveryResult | Exception,
        handed: bool,
        refused: Exception | None,
    ) -> Record | None:
        """How to record one message's answer; None: it did not leave, release it."""
        attempts = self.attempts[send_id] + 1
        if refused is not None:
            if isinstance(refused, LostClaim):
                log.warning("send %s: claim lost before the hand-over; not sent", send_id)
                return lambda _session: "not_claimed"
            if isinstance(refused, SequenceEnded):
                return partial(
                    self._move,
                    send_id=send_id,
                    outcome="skipped",
                    status="skipped",
                    reason=SkipReason.SEQUENCE_EXITED,
                )
            # The database failed under the hand-over: the message did not leave, even
            # if the commit landed; it goes back to the outbox once the database is back.
            log.warning(
                "send %s: the hand-over could not be committed (%s); not sent, released",
                send_id,
                refused.__class__.__name__,
            )
            return None
        if isinstance(result, DeliveryResult):
            if not handed:
                log.error("provider %s never handed over send %s", result.provider, send_id)
            return _SentAnswer(self._sent, send_id, email, result)
        if isinstance(result, TransientDeliveryError):
            return partial(self._retry_or_fail, send_id=send_id, attempts=attempts, exc=result)
        if isinstance(result, PermanentDeliveryError):
            return partial(self._fail, send_id=send_id, email=email, exc=result, attempts=attempts)
        if handed:
            # Ambiguous, or a bug met after the message may have left: never re-sent.
            return partial(self._ambiguous, send_id=send_id, email=email, exc=result)
        if isinstance(result, AmbiguousDeliveryError | ConfigurationError):
            # Nothing was handed over, so nothing left: the send goes back to the outbox.
            return None
        log.error(
            "send %s: provider %s failed before the hand-over",
            send_id,
            self.runtime.provider.name,
            exc_info=(type(result), result, result.__traceback__),
        )
        detail = f"{result.__class__.__name__}: {result}"[:1000]
        return partial(
            self._move,
            send_id=send_id,
            outcome="failed",
            status="failed",
            reason=SkipReason.INTERNAL_ERROR,
            detail=detail,
        )

    def _record_all(self, records: list[tuple[int, Record]]) -> None:
        """The waiting answers and ``records`` in one commit; should one of them fail for
        another reason than the connection (a bug), each is recorded on its own instead."""
        records = self.pending + records
        self.pending = []

        def unit(connection: Connection) -> dict[int, str]:
            return {send_id: record(connection) for send_id, record in records}

        try:
            self.outcomes |= surviving_disconnects(partial(self._unit, unit))
        except (DBAPIError, InterfaceError):
            raise
        except Exception:
            log.exception("recording a batch's answers failed; recording them one by one")
            for send_id, record in records:
                self._record(send_id, record)
            return
        self._log_moves()

    def _record(self, send_id: int, record: Record) -> None:
        self.outcomes[send_id] = surviving_disconnects(partial(self._unit, record))
        self._log_moves()

    def _release(self, ids: list[int]) -> None:
        now = self.runtime.clock.now()
        done = surviving_disconnects(
            lambda: release(
                self.engine,
                self.token,
                ids,
                now,
                "the hand-over could not be committed; nothing was sent; due again",
            )
        )
        for send_id in ids:
            self.outcomes[send_id] = "released" if send_id in done else "not_claimed"

    def _move(self, connection: Connection, send_id: int, outcome: str, **values: Any) -> str:
        campaign = _owned(
            connection, send_id, self.token, updated_at=self.runtime.clock.now(), **values
        )
        if campaign is None:
            return "not_claimed"
        self.logged.append((send_id, campaign, values["status"], values.get("reason")))
        return outcome

    def _sent(
        self, connection: Connection, send_id: int, email: OutgoingEmail, result: DeliveryResult
    ) -> str:
        done = self.runtime.clock.now()
        facts = self.facts[send_id]
        moved = connection.execute(
            SENT,
            {
                "b_id": send_id,
                "b_token": self.token,
                "b_done": done,
                "b_provider": result.provider,
                "b_provider_message_id": result.provider_message_id,
                "b_message_id": email.message_id,
                "b_attempts": self.attempts[send_id] + 1,
            },
        ).rowcount
        if moved != 1:
            return "not_claimed"
        self.logged.append((send_id, facts.campaign_id, "sent", None))
        add_send_activity(connection, "email_sent", facts, result.provider, email.message_id, done)
        return "sent"

    def _retry_or_fail(
        self, connection: Connection, send_id: int, attempts: int, exc: TransientDeliveryError
    ) -> str:
        settings = self.runtime.settings
        if attempts >= settings.max_attempts:
            outcome = self._move(
                connection,
                send_id,
                "failed",
                status="failed",
                reason=SkipReason.RETRIES_EXHAUSTED,
                detail=str(exc)[:1000],
                attempts=attempts,
            )
            log.error("send %s failed after %s attempts: %s", send_id, attempts, error_summary(exc))
            return outcome
        wait = backoff(attempts, settings.retry_base_seconds, exc.retry_after)
        outcome = self._move(
            connection,
            send_id,
            "retry",
            status="planned",
            send_at=self.runtime.clock.now() + wait,
            reason=SkipReason.RETRY,
            detail=str(exc)[:1000],
            attempts=attempts,
            handed_over_at=None,
        )
        log.info(
            "send %s: transient failure, retry in %.0fs: %s",
            send_id,
            wait.total_seconds(),
            error_summary(exc),
        )
        return outcome

    def _ambiguous(
        self, connection: Connection, send_id: int, email: OutgoingEmail, exc: Exception
    ) -> str:
        """The provider may have the message: record that, report it, never send it again."""
        if not isinstance(exc, DeliveryError):
            log.error(
                "send %s: provider %s failed after the hand-over",
                send_id,
                self.runtime.provider.name,
                exc_info=(type(exc), exc, exc.__traceback__),
            )
        outcome = self._move(
            connection,
            send_id,
            "ambiguous",
            status="failed",
            reason=SkipReason.AMBIGUOUS,
            message_id=email.message_id,
            detail=f"provider gave no answer after the message was handed over: {exc}"[:1000],
        )
        log.error(
            "OPERATOR: send %s (Message-ID %s) is ambiguous: the provider may have accepted "
            "it; not re-sent (see docs/delivery.md): %s",
            send_id,
            email.message_id,
            error_summary(exc),
        )
        return outcome

    def _fail(
        self,
        connection: Connection,
        send_id: int,
        email: OutgoingEmail,
        exc: PermanentDeliveryError,
        attempts: int,
    ) -> str:
        now = self.runtime.clock.now()
        reason = (
            SkipReason.UNSUPPORTED_ADDRESS
            if isinstance(exc, UnsupportedAddress)
            else SkipReason.POLICY_REJECTED
            if exc.policy
            else SkipReason.HARD_BOUNCE
            if exc.hard_bounce
            else SkipReason.REJECTED
        )
        outcome = self._move(
            connection,
            send_id,
            "failed",
            status="failed",
            reason=reason,
            detail=str(exc)[:1000],
            attempts=attempts,
        )
        if outcome == "failed" and exc.hard_bounce:
            # The row's provider is set only when a send is sent, so a bounce's is None.
            add_send_activity(
                connection,
                "email_bounced",
                self.facts[send_id],
                None,
                email.message_id,
                now,
                reason=reason,
            )
        if exc.hard_bounce:
            _suppress(connection, lookup_key(email.recipient), f"send:{send_id}", now)
        if exc.policy:
            log.error(
                "OPERATOR: provider refused send %s by policy (%s); the customer is not "
                "suppressed — check sender authentication and reputation",
                send_id,
                error_summary(exc),
            )
        return outcome


@dataclass(frozen=True, slots=True)
class _SentAnswer:
    """A ``sent`` answer waiting for the next commit, kept as data so that the next
    hand-over can write it in the same statement (``worker.outbox.answer_and_hand_over``);
    called, it is written on its own (``record``: the deliver task's ``_sent``)."""

    record: Callable[[Connection, int, OutgoingEmail, DeliveryResult], str]
    send_id: int
    email: OutgoingEmail
    result: DeliveryResult

    def __call__(self, connection: Connection) -> str:
        return self.record(connection, self.send_id, self.email, self.result)


def _nth(hand_over: Callable[[int], None], index: int, _first: int) -> None:
    """``send_many``'s hand-over for a one-message call: message ``index`` of the batch."""
    hand_over(index)


class _Unpreparable(Exception):
    def __init__(self, send_id: int, error: Exception) -> None:
        super().__init__(f"send {send_id}: {error}")
        self.send_id, self.error = send_id, error
