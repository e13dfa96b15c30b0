"""``crosssell report``: what each campaign variant did against its holdout.

The unit is the *touch* (see :mod:`triggers.attribution`): an email handed to the
provider (the variant's group) or a holdout decision (the campaign's control group,
shared by its variants). A touch belongs to the report when it happened in
``[since, until)``; its conversions count whenever the purchase came, within the window,
so a report on last week is complete once the window has passed (``open`` says how many
touches still have an open window).

Counts per group, all over touches of the range:

=============  ======================================================================
eligible       sends the campaign planned for the group (held out, or planned for the
               variant and not dropped at planning), whatever happened to them later
sent           emails handed to the provider (the variant's touches); for the holdout:
               its touches (held-out decisions). The table's column says "touched" for
               both; CSV and JSON name the holdout's ``held_out``
delivered      handed over and not reported bounced
bounced        handed over, then a hard bounce or a policy refusal (``failed``)
complained     customers with a complaint in their consent history inside the window
unsubscribed   customers with any other opt-out (all email, or this campaign's kind) in
               their consent history inside the window
conversions    purchases attributed to the group's touches: direct (containing an
               offered product) and influenced
rate           touches with at least one conversion / touches
=============  ======================================================================

The offer sections count emails, never purchases or order lines: ``shown`` is the emails
that offered the type (or, per trigger category -> product pair, the product), ``direct``
those of them with at least one direct conversion (for a pair: one whose order contains
that product), so their rate is a share of the same emails and never exceeds 100 %.

The statistics are in :mod:`triggers.lift`; revenue is reported per currency and never
added across currencies.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from triggers.attribution import window_for
from triggers.conditions import did_you_mean
from triggers.lift import (
    Interval,
    RevenueInterval,
    Verdict,
    incremental_revenue,
    rate_difference,
    relative_lift,
    verdict,
)
from triggers.rule_set import RuleSet
from worker.core.models import ConsentRecord, Conversion, Event, OrderLine, Send, SendOffer
from worker.decide.attribution import TREATED_STATUSES, AttributionConfig

HOLDOUT = "holdout"
BOUNCE_REASONS = ("hard_bounce", "policy_rejected")
COMPLAINT = "complaint"
FORMATS = ("table", "csv", "json", "html")


def parse_time(text: str) -> datetime:
    """An ISO 8601 date or date-time; a time without offset is UTC. Raises ValueError."""
    value = datetime.fromisoformat(text.strip())
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass
class GroupStats:
    """One group (a variant's emails, or the campaign's holdout) over the range."""

    label: str
    eligible: int = 0
    sent: int = 0
    delivered: int = 0
    bounced: int = 0
    complained: int = 0
    unsubscribed: int = 0
    converted: int = 0
    direct: int = 0
    influenced: int = 0
    open: int = 0
    revenue: dict[str, Decimal] = field(default_factory=dict)

    @property
    def rate(self) -> float | None:
        return self.converted / self.sent if self.sent else None


@dataclass
class Comparison:
    """A variant against its campaign's holdout."""

    campaign_id: str
    window: timedelta
    variant: GroupStats
    holdout: GroupStats
    absolute_lift: Interval | None
    relative_lift: Interval | None
    incremental_revenue: list[RevenueInterval]
    verdict: Verdict


@dataclass
class OfferRow:
    """Per offer type, or per (trigger category -> offered product) pair: ``shown`` emails
    offered it, ``direct`` of those emails led to at least one direct conversion (for a
    pair, an order containing the product). Both count emails, so ``direct <= shown``."""

    key: str
    shown: int
    direct: int

    @property
    def rate(self) -> float | None:
        return self.direct / self.shown if self.shown else None


@dataclass
class DayRow:
    day: date
    campaign_id: str
    sent: int
    conversions: int


@dataclass
class StepRow:
    """One step of a sequence: its emails and held-out touches, and the conversions
    credited to it (a purchase goes to the campaign's latest touch before it, so to the
    step whose email came last; the sequence's total is the campaign's comparison)."""

    campaign_id: str
    step_id: str
    sent: int = 0
    held_out: int = 0
    direct: int = 0
    influenced: int = 0

    @property
    def key(self) -> str:
        return f"{self.campaign_id} / {self.step_id}"


@dataclass
class Report:
    since: datetime | None
    until: datetime | None
    generated_at: datetime
    comparisons: list[Comparison]
    offer_types: list[OfferRow]
    pairs: list[OfferRow]
    days: list[DayRow]
    credited_revenue: dict[str, Decimal]
    steps: list[StepRow] = field(default_factory=list)


@dataclass
class _Touch:
    send: Send
    at: datetime
    window: timedelta
    treated: bool


def _touches(
    session: Session,
    campaign_id: str | None,
    since: datetime | None,
    until: datetime | None,
) -> list[Send]:
    """The sends of the range that belong to a group: held-out decisions by the time the
    email would have gone out, emails by hand-over, the rest planned for a variant (not
    dropped at planning) by their planning time."""

    def within(column: Any) -> Any:
        bounds = [column.is_not(None)]
        if since is not None:
            bounds.append(column >= since)
        if until is not None:
            bounds.append(column < until)
        return and_(*bounds)

    held_out = and_(Send.status == "held_out", within(Send.send_at))
    emailed = and_(Send.status != "held_out", within(Send.sent_at))
    planned = and_(
        Send.status != "held_out",
        Send.sent_at.is_(None),
        or_(Send.status != "skipped", Send.queued_at.is_not(None)),
        within(Send.created_at),
    )
    query = select(Send).where(or_(held_out, emailed, planned))
    if campaign_id is not None:
        query = query.where(Send.campaign_id == campaign_id)
    return list(session.scalars(query.order_by(Send.id)))


def _opt_outs(session: Session, customer_ids: Iterable[str]) -> dict[str, list[ConsentRecord]]:
    ids = sorted(set(customer_ids))
    found: dict[str, list[ConsentRecord]] = defaultdict(list)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        for record in session.scalars(
            select(ConsentRecord).where(
                ConsentRecord.customer_id.in_(chunk), ConsentRecord.granted.is_(False)
            )
        ):
            found[record.customer_id].append(record)
    return found


def build_report(
    session: Session,
    rules: RuleSet,
    config: AttributionConfig,
    now: datetime,
    since: datetime | None = None,
    until: datetime | None = None,
    campaign_id: str | None = None,
    detectable: float = 0.01,
) -> Report:
    """Read the touches of the range and their conversions; compute every figure."""
    sends = _touches(session, campaign_id, since, until)
    send_ids = [send.id for send in sends]
    conversions: dict[int, list[Conversion]] = defaultdict(list)
    offers: dict[int, frozenset[str]] = {}
    for start in range(0, len(send_ids), 500):
        chunk = send_ids[start : start + 500]
        for row in session.scalars(select(Conversion).where(Conversion.send_id.in_(chunk))):
            conversions[row.send_id].append(row)
        for offer in session.scalars(select(SendOffer).where(SendOffer.send_id.in_(chunk))):
            offers[offer.send_id] = frozenset(offer.skus)
    opt_outs = _opt_outs(session, (send.customer_id for send in sends))
    kinds = {c.id: c.campaign.kind for c in rules.campaigns}

    groups: dict[tuple[str, str], GroupStats] = {}
    revenue_lists: dict[tuple[str, str], dict[str, list[Decimal]]] = defaultdict(
        lambda: defaultdict(list)
    )
    windows: dict[str, timedelta] = {}
    days: Counter[tuple[date, str, str]] = Counter()
    for send in sends:
        compiled = rules.by_id(send.campaign_id)
        window = window_for(
            compiled.campaign.attribution_window if compiled else None, config.default_window
        )
        windows[send.campaign_id] = window
        held_out = send.status == "held_out"
        label = HOLDOUT if held_out else (send.variant or "-")
        stats = groups.setdefault((send.campaign_id, label), GroupStats(label))
        touched = send.send_at if held_out else send.sent_at
        stats.eligible += 1
        if touched is None:
            continue  # planned for the variant, not (yet) handed over: eligible only
        stats.sent += 1
        if not held_out:
            if send.status == "failed" and send.reason in BOUNCE_REASONS:
                stats.bounced += 1
            else:
                stats.delivered += 1
            days[(touched.date(), send.campaign_id, "sent")] += 1
        if touched + window > now:
            stats.open += 1
        end = touched + window
        records = [
            r
            for r in opt_outs.get(send.customer_id, ())
            if touched < r.decided_at <= end
            and r.scope in ("email_marketing", kinds.get(send.campaign_id, ""))
        ]
        if any(r.detail == COMPLAINT for r in records):
            stats.complained += 1
        if any(r.detail != COMPLAINT for r in records):
            stats.unsubscribed += 1
        rows = conversions.get(send.id, [])
        if rows:
            stats.converted += 1
            per_currency: dict[str, Decimal] = defaultdict(Decimal)
            for row in rows:
                per_currency[row.currency] += row.revenue
                if row.kind == "direct":
                    stats.direct += 1
                else:
                    stats.influenced += 1
                if not held_out:
                    days[(row.ordered_at.date(), send.campaign_id, "conversions")] += 1
            for currency, amount in per_currency.items():
                revenue_lists[(send.campaign_id, label)][currency].append(amount)
                stats.revenue[currency] = stats.revenue.get(currency, Decimal(0)) + amount

    comparisons: list[Comparison] = []
    for (campaign, label), stats in sorted(groups.items()):
        if label == HOLDOUT:
            continue
        control = groups.get((campaign, HOLDOUT), GroupStats(HOLDOUT))
        treated_revenue = revenue_lists[(campaign, label)]
        control_revenue = revenue_lists[(campaign, HOLDOUT)]
        revenue = [
            interval
            for currency in sorted(set(treated_revenue) | set(control_revenue))
            if (
                interval := incremental_revenue(
                    currency,
                    treated_revenue.get(currency, []),
                    stats.sent,
                    control_revenue.get(currency, []),
                    control.sent,
                )
            )
            is not None
        ]
        comparisons.append(
            Comparison(
                campaign_id=campaign,
                window=windows[campaign],
                variant=stats,
                holdout=control,
                absolute_lift=rate_difference(
                    stats.converted, stats.sent, control.converted, control.sent
                ),
                relative_lift=relative_lift(
                    stats.converted, stats.sent, control.converted, control.sent
                ),
                incremental_revenue=revenue,
                verdict=verdict(
                    stats.converted, stats.sent, control.converted, control.sent, detectable
                ),
            )
        )

    offer_types, pairs = _offer_rows(session, sends, offers, conversions, rules)
    steps: dict[tuple[str, str], StepRow] = {}
    for send in sends:
        if send.step_id is None or (send.sent_at is None and send.status != "held_out"):
            continue
        step = steps.setdefault(
            (send.campaign_id, send.step_id), StepRow(send.campaign_id, send.step_id)
        )
        if send.status == "held_out":
            step.held_out += 1
        else:
            step.sent += 1
        for conversion in conversions.get(send.id, ()):
            if conversion.kind == "direct":
                step.direct += 1
            else:
                step.influenced += 1
    credited: dict[str, Decimal] = defaultdict(Decimal)
    for rows in conversions.values():
        for row in rows:
            if row.credited:
                credited[row.currency] += row.revenue
    return Report(
        since=since,
        until=until,
        generated_at=now,
        comparisons=comparisons,
        offer_types=offer_types,
        pairs=pairs,
        days=[
            DayRow(
                day, campaign, days[(day, campaign, "sent")], days[(day, campaign, "conversions")]
            )
            for day, campaign in sorted({(d, c) for d, c, _ in days})
        ],
        credited_revenue=dict(sorted(credited.items())),
        steps=[steps[key] for key in sorted(steps)],
    )


def _trigger_categories(session: Session, event_ids: Sequence[str]) -> dict[str, list[str]]:
    """Per event id, what triggered it: the purchased categories, or the event type."""
    found: dict[str, list[str]] = {}
    for start in range(0, len(event_ids), 500):
        chunk = event_ids[start : start + 500]
        for event_id, kind, payload in session.execute(
            select(Event.event_id, Event.type, Event.payload).where(Event.event_id.in_(chunk))
        ):
            items = (payload.get("data") or {}).get("items") if kind == "purchase" else None
            categories = sorted({str(item.get("category")) for item in items or ()})
            found[event_id] = categories or [kind]
    return found


def _offer_rows(
    session: Session,
    sends: Sequence[Send],
    offers: dict[int, frozenset[str]],
    conversions: dict[int, list[Conversion]],
    rules: RuleSet,
) -> tuple[list[OfferRow], list[OfferRow]]:
    """Offers shown and direct conversions, per offer type and per trigger → product."""
    shown = [s for s in sends if s.status in TREATED_STATUSES and s.sent_at and offers.get(s.id)]
    triggers = _trigger_categories(session, sorted({s.event_id for s in shown}))
    order_ids = sorted(
        {row.order_id for s in shown for row in conversions.get(s.id, []) if row.kind == "direct"}
    )
    bought: dict[str, set[str]] = defaultdict(set)
    for start in range(0, len(order_ids), 500):
        chunk = order_ids[start : start + 500]
        for order_id, sku in session.execute(
            select(OrderLine.order_id, OrderLine.sku).where(OrderLine.order_id.in_(chunk))
        ):
            bought[order_id].add(sku)
    by_type: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    by_pair: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for send in shown:
        compiled = rules.by_id(send.campaign_id)
        offer_type = compiled.campaign.offer.type if compiled else "unknown"
        direct_rows = [row for row in conversions.get(send.id, []) if row.kind == "direct"]
        # One email counts once, however many of its purchases (or their lines) followed.
        by_type[offer_type][0] += 1
        by_type[offer_type][1] += 1 if direct_rows else 0
        for category in triggers.get(send.event_id, ["unknown"]):
            for sku in sorted(offers[send.id]):
                pair = by_pair[f"{category} -> {sku}"]
                pair[0] += 1
                pair[1] += 1 if any(sku in bought[row.order_id] for row in direct_rows) else 0

    def rows(counts: dict[str, list[int]]) -> list[OfferRow]:
        return sorted(
            (OfferRow(key, shown_count, direct) for key, (shown_count, direct) in counts.items()),
            key=lambda row: (-row.direct, -row.shown, row.key),
        )

    return rows(by_type), rows(by_pair)


# --- output -------------------------------------------------------------------------


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f} %"


def interval_text(value: Interval | None, scale: float = 100, unit: str = " pts") -> str:
    if value is None:
        return "-"
    return (
        f"{value.estimate * scale:+.2f}{unit} "
        f"[{value.lower * scale:+.2f}, {value.upper * scale:+.2f}]"
    )


def revenue_text(values: Sequence[RevenueInterval]) -> str:
    return (
        "; ".join(f"{r.currency} {r.estimate:+} [{r.lower:+}, {r.upper:+}]" for r in values) or "-"
    )


COLUMNS = (
    "campaign",
    "variant",
    "window",
    "eligible",
    "sent",
    "delivered",
    "bounced",
    "complained",
    "unsubscribed",
    "direct",
    "influenced",
    "rate",
    "holdout_eligible",
    "held_out",
    "holdout_complained",
    "holdout_unsubscribed",
    "holdout_direct",
    "holdout_influenced",
    "holdout_rate",
    "open_windows",
    "absolute_lift",
    "absolute_lift_low",
    "absolute_lift_high",
    "absolute_lift_method",
    "relative_lift",
    "relative_lift_low",
    "relative_lift_high",
    "relative_lift_method",
    "incremental_revenue",
    "verdict",
)


def comparison_record(comparison: Comparison) -> dict[str, Any]:
    """One flat record per comparison (CSV and JSON); rates and lifts as fractions."""
    v, h = comparison.variant, comparison.holdout
    absolute, relative = comparison.absolute_lift, comparison.relative_lift
    return {
        "campaign": comparison.campaign_id,
        "variant": v.label,
        "window": duration_text(comparison.window),
        "eligible": v.eligible,
        "sent": v.sent,
        "delivered": v.delivered,
        "bounced": v.bounced,
        "complained": v.complained,
        "unsubscribed": v.unsubscribed,
        "direct": v.direct,
        "influenced": v.influenced,
        "rate": v.rate,
        "holdout_eligible": h.eligible,
        "held_out": h.sent,
        "holdout_complained": h.complained,
        "holdout_unsubscribed": h.unsubscribed,
        "holdout_direct": h.direct,
        "holdout_influenced": h.influenced,
        "holdout_rate": h.rate,
        "open_windows": v.open + h.open,
        "absolute_lift": absolute.estimate if absolute else None,
        "absolute_lift_low": absolute.lower if absolute else None,
        "absolute_lift_high": absolute.upper if absolute else None,
        "absolute_lift_method": absolute.method if absolute else None,
        "relative_lift": relative.estimate if relative else None,
        "relative_lift_low": relative.lower if relative else None,
        "relative_lift_high": relative.upper if relative else None,
        "relative_lift_method": relative.method if relative else None,
        "incremental_revenue": [
            {
                "currency": r.currency,
                "estimate": str(r.estimate),
                "low": str(r.lower),
                "high": str(r.upper),
                "method": r.method,
            }
            for r in comparison.incremental_revenue
        ],
        "verdict": comparison.verdict.text,
    }


def duration_text(value: timedelta) -> str:
    days, seconds = value.days, value.seconds
    if seconds == 0:
        return f"{days}d"
    return f"{days}d{seconds // 3600}h" if seconds % 3600 == 0 else f"{value.total_seconds():g}s"


def render_table(report: Report) -> str:
    """Plain text for a terminal: one block per variant, then offers and pairs."""
    lines = [heading(report)]
    if not report.comparisons:
        lines.append("no emails or holdout decisions in this range")
    for c in report.comparisons:
        v, h = c.variant, c.holdout
        lines += [
            "",
            f"{c.campaign_id} / variant {v.label} vs holdout "
            f"(attribution window {duration_text(c.window)})",
            f"  {'':14}{'eligible':>9}{'touched':>8}{'deliv.':>7}{'bounced':>8}{'compl.':>7}"
            f"{'unsub.':>7}{'direct':>7}{'influ.':>7}{'rate':>10}",
        ]
        # "touched": emails sent for the variant, customers held out for the holdout (the
        # group each rate is measured on).
        for name, g in ((f"variant {v.label}", v), ("holdout", h)):
            delivered = "-" if g is h else str(g.delivered)
            bounced = "-" if g is h else str(g.bounced)
            lines.append(
                f"  {name:14}{g.eligible:>9}{g.sent:>8}{delivered:>7}{bounced:>8}"
                f"{g.complained:>7}{g.unsubscribed:>7}{g.direct:>7}{g.influenced:>7}"
                f"{percent(g.rate):>10}"
            )
        method = c.absolute_lift.method if c.absolute_lift else "Newcombe hybrid score"
        lines.append(f"  absolute lift: {interval_text(c.absolute_lift)}  (95 % CI, {method})")
        relative_method = c.relative_lift.method if c.relative_lift else ""
        lines.append(
            f"  relative lift: {interval_text(c.relative_lift, unit=' %')}  "
            f"(95 % CI, {relative_method or 'undefined without conversions'})"
        )
        revenue_method = c.incremental_revenue[0].method if c.incremental_revenue else ""
        lines.append(
            f"  incremental revenue: {revenue_text(c.incremental_revenue)}"
            + (f"  (95 % CI, {revenue_method})" if revenue_method else "")
        )
        if v.open + h.open:
            lines.append(f"  still measuring: {v.open + h.open} touches with an open window")
        lines.append(f"  verdict: {c.verdict.text}")
    offer_head = f"{'shown':>7}{'direct':>7}{'rate':>10}"
    if report.offer_types:
        lines += ["", "offers shown by offer type (emails; direct: emails with a direct purchase):"]
        lines += [f"  {'offer type':40}{offer_head}"]
        lines += [
            f"  {r.key:40}{r.shown:>7}{r.direct:>7}{percent(r.rate):>10}"
            for r in report.offer_types
        ]
    if report.pairs:
        lines += ["", "trigger category -> offered product (top 20):"]
        lines += [f"  {'trigger category -> product':40}{offer_head}"]
        lines += [
            f"  {r.key:40}{r.shown:>7}{r.direct:>7}{percent(r.rate):>10}" for r in report.pairs[:20]
        ]
    if report.steps:
        lines += ["", f"  {'sequence / step':40}{'sent':>7}{'held':>7}{'direct':>7}{'influ.':>7}"]
        lines += [
            f"  {r.key:40}{r.sent:>7}{r.held_out:>7}{r.direct:>7}{r.influenced:>7}"
            for r in report.steps
        ]
    if report.credited_revenue:
        total = ", ".join(f"{k} {v}" for k, v in report.credited_revenue.items())
        lines += ["", f"revenue after emails, last touch, all campaigns: {total}"]
    return "\n".join(lines) + "\n"


def heading(report: Report) -> str:
    def moment(value: datetime) -> str:
        return f"{value:%Y-%m-%d %H:%M} UTC"

    since = moment(report.since) if report.since else "the start"
    until = moment(report.until or report.generated_at)
    return f"crosssell report: emails and holdout decisions from {since} to {until}"


def render_csv(report: Report) -> str:
    """The comparisons, one row per campaign variant; revenue as ``CUR estimate [low, high]``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for comparison in report.comparisons:
        record = comparison_record(comparison)
        record["incremental_revenue"] = revenue_text(comparison.incremental_revenue)
        writer.writerow(record)
    return buffer.getvalue()


def render_json(report: Report) -> str:
    document = {
        "since": report.since.isoformat() if report.since else None,
        "until": report.until.isoformat() if report.until else None,
        "generated_at": report.generated_at.isoformat(),
        "comparisons": [comparison_record(c) for c in report.comparisons],
        "offer_types": [
            {"offer_type": r.key, "shown": r.shown, "direct": r.direct, "rate": r.rate}
            for r in report.offer_types
        ],
        "pairs": [
            {"pair": r.key, "shown": r.shown, "direct": r.direct, "rate": r.rate}
            for r in report.pairs
        ],
        "days": [{**asdict(d), "day": d.day.isoformat()} for d in report.days],
        "credited_revenue": {k: str(v) for k, v in report.credited_revenue.items()},
        "steps": [{**asdict(r), "step": r.key} for r in report.steps],
    }
    return json.dumps(document, ensure_ascii=False, indent=2) + "\n"


def render(report: Report, output: str) -> str:
    if output == "table":
        return render_table(report)
    if output == "csv":
        return render_csv(report)
    if output == "json":
        return render_json(report)
    if output == "html":
        from worker.commands.report_html import render_html

        return render_html(report)
    raise ValueError(f"unknown format {output!r}; one of {', '.join(FORMATS)}")


def check_campaign(session: Session, configured: Iterable[str], campaign_id: str) -> None:
    """Raise ValueError naming the known campaigns unless ``campaign_id`` is one: a
    campaign of the current files (``configured``: their ids), or one that has sends (a
    campaign since removed from the files still has its history to report)."""
    known = set(configured)
    if campaign_id in known:
        return
    known |= set(session.scalars(select(Send.campaign_id).distinct()))
    if campaign_id in known:
        return
    hint = did_you_mean(campaign_id, sorted(known))
    listing = ", ".join(sorted(known)) or "none"
    raise ValueError(f"unknown campaign {campaign_id!r}{hint}; known campaigns: {listing}")


def run_report(
    since_text: str | None,
    until_text: str | None,
    campaign_id: str | None,
    output: str,
    reconcile_first: bool = True,
) -> str:
    """The ``crosssell report`` command: reconcile late purchases of the range (one
    transaction), then read and render. Raises ValueError for bad times and for a
    campaign that is neither in the campaign files nor in the sends."""
    from worker.core.db import transaction
    from worker.decide.attribution import reconcile
    from worker.process.runtime import get_runtime

    since = parse_time(since_text) if since_text else None
    until = parse_time(until_text) if until_text else None
    if since and until and until <= since:
        raise ValueError("--until must be after --since")
    runtime = get_runtime()
    rules = runtime.rules.current()
    config = AttributionConfig.from_settings(runtime.settings)
    now = runtime.clock.now()
    if since and until is None and since >= now:
        # The range ends now: it would be printed backwards ("from 2030 … to 2026").
        raise ValueError("--since is in the future: nothing has happened yet after it")
    url = runtime.settings.resolved_database_url
    if campaign_id is not None:
        with transaction(url) as session:
            check_campaign(session, (c.id for c in rules.campaigns), campaign_id)
    if reconcile_first:
        with transaction(url) as session:
            # Purchases up to one window after the range can belong to its touches.
            longest = max(
                [config.default_window]
                + [
                    window_for(c.campaign.attribution_window, config.default_window)
                    for c in rules.campaigns
                ]
            )
            reconcile(session, rules, config, now, since, until + longest if until else None)
    with transaction(url) as session:
        built = build_report(session, rules, config, now, since, until, campaign_id)
    return render(built, output)
