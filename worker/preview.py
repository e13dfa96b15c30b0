"""``crosssell preview``: what a campaign's email looks like for one real customer.

Uses the customer's stored profile, their latest event of the campaign's trigger type
(or a sample one), the live catalog for the offer, and every variant's template. Writes
the subject, HTML, text and the complete ``.eml`` per variant, under a directory per
locale (``var/preview/ro-RO/<campaign>-<customer>-<variant>/``), so previews of one
email in several languages sit side by side; changes nothing in the database and sends
nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from triggers.events import validate_event
from triggers.offers import OfferUnavailable
from worker.customers import profile_of
from worker.db import transaction
from worker.email_context import (
    Coupon,
    email_context,
    links_for,
    sample_context,
    sample_offer,
)
from worker.mime import Envelope, build_message
from worker.models import Customer, Event
from worker.offer_resolution import resolve_for_send
from worker.runtime import Runtime
from worker.unsubscribe_mail import mailto_for


def locale_directory(locale: str) -> str:
    """A locale as a directory name: ``ro_RO`` -> ``ro-RO``; anything but letters, digits
    and ``-`` becomes ``_`` (a locale is never a path)."""
    return re.sub(r"[^A-Za-z0-9-]", "_", locale.replace("_", "-")) or "default"


@dataclass(frozen=True)
class Preview:
    directory: Path
    notes: tuple[str, ...]


def preview(
    runtime: Runtime, campaign_id: str, customer_id: str, locale: str | None, out: Path
) -> list[Preview]:
    rules = runtime.rules.current()
    compiled = rules.by_id(campaign_id)
    if compiled is None:
        raise LookupError(f"no campaign {campaign_id!r}")
    campaign = compiled.campaign
    settings = runtime.settings
    notes: list[str] = []
    with transaction(settings.resolved_database_url) as session:
        customer = session.get(Customer, customer_id)
        if customer is None:
            raise LookupError(f"no customer {customer_id!r} in the database")
        stored = session.scalars(
            select(Event)
            .where(Event.customer_id == customer_id, Event.type == campaign.trigger.event)
            .order_by(Event.occurred_at.desc())
            .limit(1)
        ).first()
        sample = sample_context(campaign, settings, locale)
        payload = stored.payload if stored else sample["event"]
        if stored is None:
            notes.append(
                f"no {campaign.trigger.event} event stored for {customer_id}: using a sample event"
            )
        event = validate_event({**payload, "customer": {"id": customer_id}})
        profile = profile_of(customer)
        try:
            offer = resolve_for_send(
                session, campaign.offer, event, profile, runtime.complements, locale=locale
            )
        except OfferUnavailable as unavailable:
            notes.append(f"the offer is unavailable now ({unavailable.reason}): sample products")
            offer = sample_offer(campaign)
        customer_view = {
            "id": customer.id,
            "first_name": customer.first_name,
            "last_name": customer.last_name,
            "email": customer.email,
            "locale": locale or customer.locale,
        }
        address = customer.email or "preview@example.invalid"
        name = " ".join(filter(None, [customer.first_name, customer.last_name]))
    now = datetime.now(UTC)
    links = links_for(settings, runtime.unsubscribe_keys, customer_id)
    coupon = None
    if campaign.offer.coupon is not None:
        coupon = Coupon(
            "PREVIEW-CODE",
            now + campaign.offer.coupon.expires_after,
            campaign.offer.coupon.discount_percent,
        )
    results = []
    for variant in campaign.experiment.variants:
        context = email_context(
            settings=settings,
            customer=customer_view,
            event=payload,
            campaign=campaign,
            variant=variant.id,
            offer=offer,
            links=links,
            coupon=coupon,
        )
        rendered = runtime.renderer.render(
            variant.template, context, customer_view["locale"], variant.subject
        )
        sender = campaign.sender
        data = build_message(
            Envelope(
                send_id=0,
                sender_name=(sender and sender.name) or settings.sender_name,
                sender_address=(sender and sender.address) or settings.sender_address,
                recipient_name=name,
                recipient_address=address,
                reply_to=(sender and sender.reply_to) or settings.reply_to,
                date=now,
                message_id=f"<preview-{campaign.id}-{variant.id}@{settings.message_id_domain}>",
                unsubscribe_url=links.unsubscribe_url,
                unsubscribe_mailto=mailto_for(runtime, customer_id),
                campaign_id=campaign.id,
            ),
            rendered,
        )
        shown_locale = customer_view["locale"] or settings.default_locale
        directory = (
            out / locale_directory(shown_locale) / f"{campaign.id}-{customer_id}-{variant.id}"
        )
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "subject.txt").write_text(rendered.subject + "\n", encoding="utf-8")
        (directory / "body.html").write_text(rendered.html, encoding="utf-8")
        (directory / "body.txt").write_text(rendered.text, encoding="utf-8")
        (directory / "message.eml").write_bytes(data)
        results.append(Preview(directory, tuple(notes)))
    return results
