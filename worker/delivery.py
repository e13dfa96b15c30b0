"""Deliver one planned send: claim → recheck → render → hand to provider → record.

Each step is its own short transaction, so a provider call never holds a database lock.
The claim (``queued`` → ``sending``) is a conditional UPDATE: however many copies of the
task the broker delivers, one wins. A send found in ``sending`` by the sweeper is the
ambiguous window (the provider may have accepted it); it is reported, never re-sent.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError, InterfaceError
from sqlalchemy.orm import Session

from triggers.addresses import InvalidAddress, lookup_key, parse_address
from triggers.decide import Later, recheck
from triggers.events import validate_event
from triggers.offers import AnyOffer, OfferUnavailable
from triggers.outcomes import SkipReason
from worker.activity import record_send_activity
from worker.coupons import coupon_code
from worker.db import session_factory, surviving_disconnects, transaction
from worker.decision_inputs import decision_inputs
from worker.email_context import Coupon, email_context, links_for
from worker.log_format import fields
from worker.metrics import PROVIDER_SECONDS, SENDS
from worker.mime import Envelope, HeaderInjection, build_email, feedback_id_for, message_id_for
from worker.models import Customer, Event, Send, Suppression
from worker.offer_resolution import resolve_for_send
from worker.providers.base import (
    AmbiguousDeliveryError,
    DeliveryResult,
    OutgoingEmail,
    PermanentDeliveryError,
    TransientDeliveryError,
    UnsupportedAddress,
)
from worker.rate_limit import RateLimiter
from worker.redaction import error_summary
from worker.runtime import Runtime
from worker.sequences import record_offered, step_check
from worker.unsubscribe_mail import mailto_for

log = logging.getLogger(__name__)
MAX_BACKOFF = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Skip:
    reason: str
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Reschedule:
    send_at: datetime
    reason: SkipReason = SkipReason.OUTSIDE_WINDOW


def _set(session: Session, send_id: int, expected: str, **values: Any) -> bool:
    moved = session.execute(
        update(Send)
        .where(Send.id == send_id, Send.status == expected)
        .values(**values)
        .returning(Send.campaign_id)
    ).first()
    status, reason = values.get("status", ""), values.get("reason")
    if moved is not None and status != "sending":
        SENDS.labels(status, reason or "").inc()
        log.info(
            "send %s %s%s",
            send_id,
            status,
            f" ({reason})" if reason else "",
            extra=fields(send_id=send_id, campaign=moved[0], outcome=status, reason=reason),
        )
    return moved is not None


def _coupon(runtime: Runtime, send: Send, offer: AnyOffer, now: datetime) -> Coupon | None:
    """The send's coupon: made and stored on first render, read back on every retry."""
    spec = offer.coupon
    if spec is None:
        return None
    if send.coupon_code is None:
        secret = next(iter(runtime.unsubscribe_keys.values()))
        send.coupon_code = coupon_code(secret, send.id, spec.prefix)
        send.coupon_expires_at = now + spec.expires_after
    assert send.coupon_expires_at is not None
    return Coupon(send.coupon_code, send.coupon_expires_at, spec.discount_percent)


def prepare(
    session: Session, runtime: Runtime, send: Send, now: datetime
) -> OutgoingEmail | Skip | Reschedule:
    """Recheck everything that may have changed since planning, then build the message.

    The recheck is ``triggers.decide.recheck`` on inputs from ``decision_inputs``: the
    engine's own checks in the engine's order, so a send is never judged by other rules
    at sending than at planning.
    """
    settings = runtime.settings
    rules = runtime.rules.current()
    compiled = rules.by_id(send.campaign_id)
    if compiled is None or compiled.campaign.status != "active":
        return Skip(SkipReason.CAMPAIGN_INACTIVE)
    customer = session.get(Customer, send.customer_id)
    stored = session.query(Event).filter(Event.event_id == send.event_id).one()
    assert customer is not None
    event = validate_event(stored.payload)
    inputs = decision_inputs(session, event, now, customer=customer, exclude_send=send.id)
    step, facts, enrollment = None, inputs.facts, None
    if send.enrollment_id is not None:
        # A sequence step: its enrollment still active, the step still there, only_if true.
        checked = step_check(session, rules, send, inputs, now)
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
        offer = resolve_for_send(session, offer_spec, event, profile, runtime.complements)
    except OfferUnavailable as unavailable:
        return Skip(unavailable.reason)
    if step is not None and not offer.items:
        # A sequence step is a nudge toward products: with none to show (a loyalty bonus
        # for a customer who has every category already) it is skipped, the sequence goes on.
        return Skip(SkipReason.NO_OFFER)
    coupon = _coupon(runtime, send, offer_spec, now)

    variant = next(v for v in compiled.campaign.experiment.variants if v.id == send.variant)
    subject = (step.subject if step is not None else None) or variant.subject
    links = links_for(settings, runtime.unsubscribe_keys, customer.id)
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
        event=stored.payload,
        campaign=compiled.campaign,
        variant=variant.id,
        offer=offer,
        links=links,
        coupon=coupon,
    )
    try:
        rendered = runtime.renderer.render(
            send.template or variant.template, context, customer.locale, subject
        )
    except Exception as exc:
        # A template fault (1/0, a type error, a render limit hit, a refused symlink) is
        # this send's problem, not a worker bug: skipped with the reason, never retried;
        # the time limit keeps it from holding the worker thread.
        log.warning(
            "send %s: the template did not render: %s: %s", send.id, type(exc).__name__, exc
        )
        return Skip(SkipReason.RENDER_ERROR, f"{exc.__class__.__name__}: {exc}"[:1000])
    try:
        sender = compiled.campaign.sender
        sender_address = (sender and sender.address) or settings.sender_address
        # Stored with the claim and reused on every retry: one Message-ID per send.
        message_id = send.message_id or message_id_for(
            send.id,
            settings.message_id_domain or parse_address(sender_address).ascii_domain,
            next(iter(runtime.unsubscribe_keys.values())),
        )
        send.message_id = message_id
        envelope = Envelope(
            send_id=send.id,
            sender_name=(sender and sender.name) or settings.sender_name,
            sender_address=sender_address,
            recipient_name=" ".join(filter(None, [customer.first_name, customer.last_name])),
            recipient_address=customer.email or "",
            reply_to=(sender and sender.reply_to) or settings.reply_to,
            date=now,
            message_id=message_id,
            unsubscribe_url=links.unsubscribe_url,
            unsubscribe_mailto=mailto_for(runtime, customer.id),
            feedback_id=feedback_id_for(
                compiled.id, compiled.campaign.kind, settings.feedback_sender_id
            ),
        )
        # The one builder: bytes, the SMTP envelope (A-label domains) and the API fields.
        built = build_email(envelope, rendered)
        if enrollment is not None:
            # Committed with the hand-over: what this step offers, for purchase: offered.
            record_offered(enrollment, [item.sku for item in offer.items], now)
        return built
    except InvalidAddress as exc:
        # An address stored before ingest validated addresses, or one no builder can
        # write as a single mailbox: never sent, never an internal error.
        return Skip(SkipReason.UNSUPPORTED_ADDRESS, f"{exc.__class__.__name__}: {exc}"[:1000])
    except HeaderInjection as exc:
        return Skip(SkipReason.RENDER_ERROR, f"{exc.__class__.__name__}: {exc}"[:1000])


def backoff(attempts: int, base: float, retry_after: float | None) -> timedelta:
    """Exponential backoff with full jitter, never shorter than the server's Retry-After."""
    ceiling = min(base * (2 ** max(attempts - 1, 0)), MAX_BACKOFF.total_seconds())
    wait = random.uniform(ceiling / 2, ceiling)
    return timedelta(seconds=max(wait, retry_after or 0.0))


def deliver_send(runtime: Runtime, send_id: int) -> str:
    """Run one send to its end state; returns the status it reached (for logs and tests).

    Every unit of work here is safe to repeat, so a lost database connection is retried
    rather than leaving the send half-recorded.
    """
    # Built before the claim: a provider with incomplete settings raises here and the
    # send stays ``queued`` for the sweeper, instead of stranding in ``sending``.
    runtime.provider  # noqa: B018
    limiter = runtime.rate_limiter
    if limiter is not None:
        throttled = surviving_disconnects(lambda: _wait_for_slot(runtime, limiter, send_id))
        if throttled is not None:
            return throttled
    return surviving_disconnects(partial(_attempt, runtime, send_id))


def _attempt(runtime: Runtime, send_id: int) -> str:
    """Claim, recheck and build in one transaction that commits only at the hand-over.

    The provider calls ``hand_over`` just before the step it cannot take back (the final
    dot of SMTP DATA, the HTTP request). Until then the claim is uncommitted: a worker
    killed while rendering or talking MAIL/RCPT leaves the send ``queued`` for the broker's
    redelivery, and only the moment from hand-over to the recorded answer is ambiguous.
    """
    session = session_factory(runtime.settings.resolved_database_url)()
    try:
        session.begin()
        try:
            claimed = _claim(session, runtime, send_id)
        except (DBAPIError, InterfaceError):
            raise  # the connection: surviving_disconnects decides
        except Exception as exc:
            # A bug or data no recheck foresaw: the same task would fail the same way
            # every time the sweeper re-enqueued it, so stop here, with the reason.
            session.rollback()
            log.exception("send %s cannot be prepared; marked failed/internal_error", send_id)
            _set(
                session,
                send_id,
                "queued",
                status="failed",
                reason=SkipReason.INTERNAL_ERROR,
                detail=f"{exc.__class__.__name__}: {exc}"[:1000],
                updated_at=runtime.clock.now(),
            )
            session.commit()
            return "failed"
        if isinstance(claimed, str):
            session.commit()
            return claimed
        prepared, attempts = claimed
        handed_over = False

        def hand_over() -> None:
            nonlocal handed_over
            if not handed_over:
                session.commit()
                handed_over = True

        try:
            with PROVIDER_SECONDS.labels(runtime.provider.name).time():
                result = runtime.provider.send(prepared, hand_over)
        except TransientDeliveryError as exc:
            hand_over()
            outcome = partial(_retry_or_fail, runtime, send_id, attempts, exc)
        except PermanentDeliveryError as exc:
            hand_over()
            outcome = partial(_fail, runtime, send_id, prepared.recipient, exc)
        except AmbiguousDeliveryError as exc:
            hand_over()
            outcome = partial(_ambiguous, runtime, send_id, prepared.message_id, exc)
        else:
            if not handed_over:
                raise RuntimeError(f"provider {runtime.provider.name} never handed over")
            outcome = partial(_record_sent, runtime, send_id, prepared, result)
    finally:
        session.close()
    return surviving_disconnects(outcome)


def _claim(session: Session, runtime: Runtime, send_id: int) -> tuple[OutgoingEmail, int] | str:
    """``queued`` → ``sending`` and the message built, or the status reached instead."""
    now = runtime.clock.now()
    if not _set(
        session, send_id, "queued", status="sending", attempts=Send.attempts + 1, updated_at=now
    ):
        return "not_claimed"
    send = session.get(Send, send_id)
    assert send is not None
    session.refresh(send)
    prepared = prepare(session, runtime, send, now)
    if isinstance(prepared, Skip):
        _set(
            session,
            send_id,
            "sending",
            status="skipped",
            reason=prepared.reason,
            detail=prepared.detail,
            updated_at=now,
        )
        return "skipped"
    if isinstance(prepared, Reschedule):
        _set(
            session,
            send_id,
            "sending",
            status="planned",
            send_at=prepared.send_at,
            reason=prepared.reason,
            updated_at=now,
        )
        return "rescheduled"
    return prepared, send.attempts


def _record_sent(
    runtime: Runtime, send_id: int, prepared: OutgoingEmail, result: DeliveryResult
) -> str:
    with transaction(runtime.settings.resolved_database_url) as session:
        done = runtime.clock.now()
        if _set(
            session,
            send_id,
            "sending",
            status="sent",
            sent_at=done,
            updated_at=done,
            provider=result.provider,
            provider_message_id=result.provider_message_id,
            message_id=prepared.message_id,
            reason=None,
            detail=None,
        ):
            record_send_activity(session, "email_sent", send_id, done)
    return "sent"


def _wait_for_slot(runtime: Runtime, limiter: RateLimiter, send_id: int) -> str | None:
    """Take a send slot before the claim, so a worker killed while waiting loses nothing.

    A send that is not ``queued`` any more (a duplicate task) does not spend a slot. A
    slot further away than the limiter's ``max_wait`` is not taken: the send goes back to
    ``planned`` for then, and the task ends instead of sleeping.
    """
    url = runtime.settings.resolved_database_url
    with transaction(url) as session:
        if session.scalar(select(Send.status).where(Send.id == send_id)) != "queued":
            return "not_claimed"
    reservation = limiter.acquire()
    if reservation.granted:
        return None
    now = runtime.clock.now()
    with transaction(url) as session:
        _set(
            session,
            send_id,
            "queued",
            status="planned",
            send_at=now + timedelta(seconds=reservation.wait),
            reason=SkipReason.RATE_LIMITED,
            updated_at=now,
        )
    return "throttled"


def _retry_or_fail(
    runtime: Runtime, send_id: int, attempts: int, exc: TransientDeliveryError
) -> str:
    now = runtime.clock.now()
    settings = runtime.settings
    with transaction(settings.resolved_database_url) as session:
        if attempts >= settings.max_attempts:
            _set(
                session,
                send_id,
                "sending",
                status="failed",
                reason=SkipReason.RETRIES_EXHAUSTED,
                detail=str(exc)[:1000],
                updated_at=now,
            )
            log.error("send %s failed after %s attempts: %s", send_id, attempts, error_summary(exc))
            return "failed"
        wait = backoff(attempts, settings.retry_base_seconds, exc.retry_after)
        _set(
            session,
            send_id,
            "sending",
            status="planned",
            send_at=now + wait,
            reason=SkipReason.RETRY,
            detail=str(exc)[:1000],
            updated_at=now,
        )
    log.info(
        "send %s: transient failure, retry in %.0fs: %s",
        send_id,
        wait.total_seconds(),
        error_summary(exc),
    )
    return "retry"


def _ambiguous(runtime: Runtime, send_id: int, message_id: str, exc: AmbiguousDeliveryError) -> str:
    """The provider may have the message: record that, report it, never send it again."""
    now = runtime.clock.now()
    with transaction(runtime.settings.resolved_database_url) as session:
        _set(
            session,
            send_id,
            "sending",
            status="failed",
            reason=SkipReason.AMBIGUOUS,
            message_id=message_id,
            detail=f"provider gave no answer after the message was handed over: {exc}"[:1000],
            updated_at=now,
        )
    log.error(
        "OPERATOR: send %s (Message-ID %s) is ambiguous: the provider may have accepted "
        "it; not re-sent (see docs/delivery.md): %s",
        send_id,
        message_id,
        error_summary(exc),
    )
    return "ambiguous"


def _fail(runtime: Runtime, send_id: int, email: str, exc: PermanentDeliveryError) -> str:
    now = runtime.clock.now()
    reason = (
        SkipReason.UNSUPPORTED_ADDRESS
        if isinstance(exc, UnsupportedAddress)
        else SkipReason.POLICY_REJECTED
        if exc.policy
        else SkipReason.HARD_BOUNCE
        if exc.hard_bounce
        else SkipReason.REJECTED
    )
    with transaction(runtime.settings.resolved_database_url) as session:
        failed = _set(
            session,
            send_id,
            "sending",
            status="failed",
            reason=reason,
            detail=str(exc)[:1000],
            updated_at=now,
        )
        if failed and exc.hard_bounce:
            record_send_activity(session, "email_bounced", send_id, now)
        key = lookup_key(email)
        if exc.hard_bounce and session.get(Suppression, key) is None:
            session.add(
                Suppression(
                    email=key,
                    reason=SkipReason.HARD_BOUNCE,
                    source=f"send:{send_id}",
                    created_at=now,
                )
            )
    if exc.policy:
        log.error(
            "OPERATOR: provider refused send %s by policy (%s); the customer is not "
            "suppressed — check sender authentication and reputation",
            send_id,
            error_summary(exc),
        )
    return "failed"
