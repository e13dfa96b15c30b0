"""``crosssell preview``: what a campaign's email looks like for one real customer.

Uses the customer's stored profile, their latest event of the campaign's trigger type
(or a sample one), the live catalog for the offer, and every variant's template. Writes
the subject, HTML, text and the complete ``.eml`` per variant, under a directory per
locale (``var/preview/ro-RO/<campaign>-<customer>-<variant>/``), so previews of one
email in several languages sit side by side; changes nothing in the database and sends
nothing. Without a customer it renders the sample customer, event and offer
``crosssell lint`` uses, and needs no database: the way to score a template with
SpamAssassin before any customer exists.

With ``screenshot`` it also writes ``screenshot-800.png`` and ``screenshot-375.png``: the
HTML part as headless Chromium draws it at a desktop mail client's width and a phone's.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from triggers.addresses import parse_address
from triggers.campaigns import Campaign
from triggers.decide import Later, recheck
from triggers.events import validate_event
from triggers.offers import OfferUnavailable, ResolvedOffer
from worker.core.db import transaction
from worker.core.models import Customer, Event
from worker.core.settings import Settings
from worker.decide.decision_inputs import decision_inputs
from worker.email.email_context import (
    Coupon,
    email_context,
    links_for,
    mailto_for,
    sample_context,
    sample_offer,
)
from worker.email.mime import Envelope, build_message, feedback_id_for
from worker.offers.offer_resolution import resolve_for_send
from worker.process.runtime import Runtime

# Viewport (width, height) in CSS pixels: a desktop client's reading pane and an
# iPhone-sized phone (375 px wide); the height is what the picture shows.
SCREENSHOT_SIZES = ((800, 960), (375, 1280))
# Headless and quiet: no sandbox (root in CI), no GPU, no network besides the page's own
# requests, a throw-away profile.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)


def find_chromium() -> str | None:
    """The first Chromium or Chrome on the PATH."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(html: Path, png: Path, width: int, height: int) -> None:
    """Draw ``html`` at ``width`` by ``height`` CSS pixels into ``png`` with headless
    Chromium. Raises ``RuntimeError`` when Chromium is missing or draws nothing."""
    chromium = find_chromium()
    if chromium is None:
        raise RuntimeError("--screenshot needs Chromium: apt-get install -y chromium")
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="crosssell-chromium-") as profile:
        result = subprocess.run(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                f"--screenshot={png}",
                html.resolve().as_uri(),
            ],
            capture_output=True,
            timeout=120,
            check=False,
        )
    if not png.exists():
        detail = result.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"Chromium wrote no screenshot: {' '.join(detail)}")


def locale_directory(locale: str) -> str:
    """A locale as a directory name: ``ro_RO`` -> ``ro-RO``; anything but letters, digits
    and ``-`` becomes ``_`` (a locale is never a path)."""
    return re.sub(r"[^A-Za-z0-9-]", "_", locale.replace("_", "-")) or "default"


def customer_directory(customer_id: str) -> str:
    """A customer id as part of a directory name. The CRM's ids may hold ``/`` and ``..``
    (``../../tmp/x`` is a valid id), which must never steer where a preview is written:
    anything but letters, digits, ``-`` and ``_`` becomes ``_``, and an id that changed
    gets 8 hex digits of its SHA-256, so two ids never share a directory."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", customer_id)[:80]
    if safe == customer_id:
        return safe
    return f"{safe}-{hashlib.sha256(customer_id.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


@dataclass(frozen=True)
class Preview:
    directory: Path
    notes: tuple[str, ...]


def _sample_inputs(
    campaign: Campaign, settings: Settings, locale: str | None
) -> tuple[dict[str, Any], dict[str, Any], ResolvedOffer, str, str]:
    """The sample customer, event and offer of ``crosssell lint``."""
    sample = sample_context(campaign, settings, locale)
    customer = {
        "id": "C-SAMPLE",
        "first_name": sample["customer"]["first_name"],
        "last_name": sample["customer"]["last_name"],
        "email": sample["customer"]["email"],
        "locale": locale,
        "timezone": "Europe/Bucharest",
    }
    name = f"{customer['first_name']} {customer['last_name']}"
    return customer, sample["event"], sample_offer(campaign), customer["email"], name


def preview(
    runtime: Runtime,
    campaign_id: str,
    customer_id: str | None,
    locale: str | None,
    out: Path,
    screenshots: bool = False,
) -> list[Preview]:
    """Render every variant of ``campaign_id`` for ``customer_id`` (``None``: the sample
    customer) into ``out/<campaign>-<customer>-<variant>/``."""
    rules = runtime.rules.current()
    compiled = rules.by_id(campaign_id)
    if compiled is None:
        raise LookupError(f"no campaign {campaign_id!r}")
    campaign = compiled.campaign
    settings = runtime.settings
    notes: list[str] = []
    if customer_id is None:
        customer_view, payload, offer, address, name = _sample_inputs(campaign, settings, locale)
        notes.append("no --customer: the sample customer, event and offer of crosssell lint")
        return _write(
            runtime,
            campaign,
            "sample",
            customer_view,
            payload,
            offer,
            address,
            name,
            notes,
            out,
            screenshots,
        )
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
        now = datetime.now(UTC)
        inputs = decision_inputs(session, event, now, customer=customer)
        profile = inputs.profile
        # The same recheck a real send gets just before it goes: preview still renders,
        # but says when this customer would not get the email now, and why.
        verdict = recheck(
            rules=rules,
            campaign_id=campaign_id,
            facts=inputs.facts,
            subject=inputs.subject,
            history=inputs.history,
            policy=runtime.policy,
            now=now,
            expires_at=None,
        )
        if isinstance(verdict, Later):
            wait = f"{verdict.send_at:%Y-%m-%d %H:%M} UTC ({verdict.reason})"
            notes.append(f"a send now would wait until {wait}")
        elif verdict is not None:
            notes.append(f"a send now would be skipped: {verdict}")
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
            "timezone": customer.timezone,
        }
        address = customer.email or "preview@example.com"
        name = " ".join(filter(None, [customer.first_name, customer.last_name]))
    return _write(
        runtime,
        campaign,
        customer_id,
        customer_view,
        payload,
        offer,
        address,
        name,
        notes,
        out,
        screenshots,
    )


def _write(
    runtime: Runtime,
    campaign: Campaign,
    customer_id: str,
    customer_view: dict[str, Any],
    payload: dict[str, Any],
    offer: ResolvedOffer,
    address: str,
    name: str,
    notes: list[str],
    out: Path,
    screenshots: bool,
) -> list[Preview]:
    settings = runtime.settings
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
        sender_address = (sender and sender.address) or settings.sender_address
        domain = settings.message_id_domain or parse_address(sender_address).ascii_domain
        data = build_message(
            Envelope(
                send_id=0,
                sender_name=(sender and sender.name) or settings.sender_name,
                sender_address=sender_address,
                recipient_name=name,
                recipient_address=address,
                reply_to=(sender and sender.reply_to) or settings.reply_to,
                date=now,
                message_id=f"<preview-{campaign.id}-{variant.id}@{domain}>",
                unsubscribe_url=links.unsubscribe_url,
                unsubscribe_mailto=mailto_for(settings, runtime.unsubscribe_keys, customer_id),
                feedback_id=feedback_id_for(
                    campaign.id, campaign.kind, settings.feedback_sender_id
                ),
            ),
            rendered,
        )
        shown_locale = customer_view["locale"] or settings.default_locale
        directory = (
            out
            / locale_directory(shown_locale)
            / f"{campaign.id}-{customer_directory(customer_id)}-{variant.id}"
        )
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "subject.txt").write_text(rendered.subject + "\n", encoding="utf-8")
        (directory / "body.html").write_text(rendered.html, encoding="utf-8")
        (directory / "body.txt").write_text(rendered.text, encoding="utf-8")
        (directory / "message.eml").write_bytes(data)
        if screenshots:
            for width, height in SCREENSHOT_SIZES:
                screenshot(
                    directory / "body.html", directory / f"screenshot-{width}.png", width, height
                )
        results.append(Preview(directory, tuple(notes)))
    return results
