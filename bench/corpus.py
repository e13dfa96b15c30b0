"""Seeded generators for benchmark inputs: campaign files, definitions, templates, events.

Everything is derived from one ``random.Random(seed)``, so the same seed writes the same
files and builds the same events on every run. Campaigns are written as YAML *text* and
read back through the real loader, so the benchmarks exercise the parser a marketer's
files go through, not hand-built model objects.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from triggers.decide import PastSend, Subject
from triggers.events import AnyEvent, PurchaseEvent, validate_event
from triggers.facts import CustomerProfile, apply_purchase, purchase_of

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SEED = 20240601

EVENT_TYPES = ("purchase", "anniversary", "usage_change")
# Share of campaigns per trigger, and of events per type (purchases dominate real traffic).
CAMPAIGN_MIX = {"purchase": 0.5, "anniversary": 0.2, "usage_change": 0.3}
EVENT_MIX = {"purchase": 0.6, "anniversary": 0.1, "usage_change": 0.3}

CATEGORIES = (
    "laptops",
    "phones",
    "tablets",
    "monitors",
    "laptop-bags",
    "mice",
    "keyboards",
    "docking-stations",
    "headphones",
    "cases",
    "chargers",
    "cameras",
    "memory-cards",
    "printers",
    "ink",
    "smartwatches",
)
# Popularity weights of the categories above, most popular first (skewed like real carts).
CATEGORY_WEIGHTS = (9, 10, 5, 4, 3, 6, 4, 2, 6, 7, 7, 2, 3, 2, 3, 3)
SKUS = tuple(f"SKU-{n:04d}" for n in range(1, 121))
CURRENCIES = ("EUR", "EUR", "EUR", "RON", "USD")
METRICS = ("logins_per_week", "reports_per_month", "storage_gb", "seats_used", "api_calls_day")
TIERS = ("bronze", "silver", "gold", "platinum")
INTERESTS = ("gaming", "photo", "office", "travel", "music", "fitness")
TIMEZONES = ("Europe/Bucharest", "Europe/Rome", "Europe/Berlin", "America/New_York", "UTC")
LOCALES = ("ro-RO", "en-US", "it-IT", "de-DE", "en")
OFFERS_FOR = {
    "purchase": ("complementary", "complementary", "bundle", "upgrade"),
    "anniversary": ("loyalty_bonus", "loyalty_bonus", "complementary"),
    "usage_change": ("bundle", "upgrade", "loyalty_bonus"),
}
KINDS_FOR = {
    "purchase": ("cross_sell", "cross_sell", "upsell"),
    "anniversary": ("loyalty",),
    "usage_change": ("reengagement", "upsell"),
}
OFFER_TYPES = ("complementary", "bundle", "upgrade", "loyalty_bonus")
TEMPLATES_PER_FAMILY = 2
WINDOWS = (
    ("09:00", "19:00"),
    ("08:30", "20:00"),
    ("10:00", "18:00"),
    ("12:00", "14:00"),
    ("18:00", "23:00"),
)
WINDOW_DAYS = (
    ("mon", "tue", "wed", "thu", "fri"),
    ("mon", "tue", "wed", "thu", "fri", "sat"),
    ("mon", "tue", "wed", "thu", "fri", "sat", "sun"),
    ("sat", "sun"),
    ("tue", "thu"),
)

ATTRIBUTES_YAML = """\
# Custom customer attributes (benchmark copy of config/attributes.yaml).
loyalty_tier: string
newsletter_opens_30d: number
interests: string_set
b2b: boolean
"""

SEGMENTS_YAML = """\
# Named conditions campaigns reuse with {segment: <name>} (benchmark set).
repeat-buyers:
  field: customer.orders_count
  op: gte
  value: 2
big-spenders:
  field: customer.lifetime_spend
  op: gte
  value: 1500
loyal-members:
  any:
    - {field: customer.loyalty_tier, op: in, value: [silver, gold, platinum]}
    - {segment: big-spenders}
engaged-readers:
  all:
    - {field: customer.attributes.newsletter_opens_30d, op: gte, value: 3}
    - {field: customer.email_marketing, op: eq, value: true}
europe:
  field: customer.timezone
  op: starts_with
  value: "Europe/"
lapsed:
  all:
    - {field: customer.days_since_last_purchase, op: gte, value: 90}
    - not: {segment: big-spenders}
"""
SEGMENT_NAMES = (
    "repeat-buyers",
    "big-spenders",
    "loyal-members",
    "engaged-readers",
    "europe",
    "lapsed",
)

Node = dict[str, Any]


def _weighted(rng: random.Random, mix: dict[str, float]) -> str:
    return rng.choices(list(mix), weights=list(mix.values()))[0]


def _categories(rng: random.Random, count: int) -> list[str]:
    picked: list[str] = []
    while len(picked) < count:
        category = rng.choices(CATEGORIES, weights=CATEGORY_WEIGHTS)[0]
        if category not in picked:
            picked.append(category)
    return picked


def _leaf(field: str, op: str, value: object) -> Node:
    return {"field": field, "op": op, "value": value}


# ----------------------------------------------------------------------------- conditions


def primary_leaf(rng: random.Random, event: str) -> Node:
    """The selective first test of a trigger: what the event is about."""
    if event == "purchase":
        op = rng.choice(("contains_any", "contains_any", "contains_any", "contains"))
        if op == "contains":
            return _leaf("event.categories", op, _categories(rng, 1)[0])
        return _leaf("event.categories", op, _categories(rng, rng.randint(1, 3)))
    if event == "anniversary":
        kinds = ["signup", "first_purchase", "membership"]
        if rng.random() < 0.5:
            return _leaf("event.kind", "eq", rng.choice(kinds))
        return _leaf("event.kind", "in", rng.sample(kinds, 2))
    if rng.random() < 0.7:
        return _leaf("event.metric", "eq", rng.choice(METRICS))
    return _leaf("event.metric", "in", rng.sample(METRICS, 2))


def event_leaf(rng: random.Random, event: str) -> Node:
    """A further test on the event's own fields."""
    if event == "purchase":
        choices: list[Node] = [
            _leaf("event.total", rng.choice(("gte", "gt")), rng.choice((50, 100, 299.99, 500))),
            _leaf("event.total", rng.choice(("lt", "lte")), rng.choice((200, 1000, 2500))),
            _leaf("event.items_count", "gte", rng.randint(2, 3)),
            _leaf("event.currency", "in", ["EUR", "RON"]),
            _leaf("event.currency", "ne", "USD"),
            _leaf("event.categories", "contains_all", _categories(rng, 2)),
            _leaf("event.skus", "contains_any", rng.sample(SKUS, 4)),
            _leaf("event.order_id", "starts_with", "WEB-"),
        ]
    elif event == "anniversary":
        choices = [
            _leaf("event.years", "gte", rng.randint(1, 3)),
            _leaf("event.years", "in", [1, 5, 10]),
            _leaf("event.years", "lt", rng.randint(5, 10)),
            _leaf("event.kind", "ne", "signup"),
        ]
    else:
        choices = [
            _leaf("event.change_pct", "lte", -rng.choice((20, 30, 50, 60))),
            _leaf("event.change_pct", "gte", rng.choice((20, 50, 100))),
            _leaf("event.change_pct", "exists", True),
            _leaf("event.current", "lt", rng.choice((5, 10, 50))),
            _leaf("event.previous", "gte", rng.choice((3, 10, 20))),
            _leaf("event.window_days", "in", [7, 14, 28]),
            _leaf("event.window_days", "lte", 30),
        ]
    return rng.choice(choices)


def customer_leaf(rng: random.Random) -> Node:
    """A test on the customer: built-in fields, custom attributes or a named segment."""
    choices: list[Node] = [
        _leaf("customer.orders_count", "gte", rng.randint(1, 5)),
        _leaf("customer.orders_count", "lt", rng.randint(3, 10)),
        _leaf("customer.orders_count", "eq", 1),
        _leaf("customer.lifetime_spend", "gte", rng.choice((250, 500, 1000.5, 3000))),
        _leaf("customer.tenure_days", "gte", rng.choice((30, 180, 365))),
        _leaf("customer.days_since_last_purchase", rng.choice(("gte", "lte")), rng.randint(7, 120)),
        _leaf("customer.categories_bought", "contains_any", _categories(rng, rng.randint(1, 3))),
        _leaf("customer.categories_bought", "is_empty", False),
        _leaf("customer.skus_owned", "contains", rng.choice(SKUS)),
        _leaf("customer.loyalty_tier", "in", rng.sample(TIERS, 2)),
        _leaf("customer.locale", "starts_with", rng.choice(("ro", "en", "it"))),
        _leaf("customer.locale", "in", rng.sample(LOCALES, 3)),
        _leaf("customer.timezone", "starts_with", "Europe/"),
        _leaf("customer.email_marketing", "eq", True),
        _leaf("customer.attributes.loyalty_tier", "eq", rng.choice(TIERS)),
        _leaf("customer.attributes.newsletter_opens_30d", "gte", rng.randint(1, 6)),
        _leaf("customer.attributes.interests", "contains_any", rng.sample(INTERESTS, 2)),
        _leaf("customer.attributes.b2b", "eq", rng.random() < 0.3),
        _leaf("customer.attributes.b2b", "exists", True),
    ]
    if rng.random() < 0.25:
        return {"segment": rng.choice(SEGMENT_NAMES)}
    return rng.choice(choices)


def build_tree(rng: random.Random, leaves: Sequence[Node], keep_first_plain: bool) -> Node:
    """Arrange leaves into a tree: an ``all`` (sometimes ``any``) of leaves, ``not``-leaves
    and nested ``any``/``all`` groups of two or three leaves."""
    if len(leaves) == 1:
        if not keep_first_plain and rng.random() < 0.15:
            return {"not": leaves[0]}
        return leaves[0]
    children: list[Node] = []
    index = 0
    while index < len(leaves):
        remaining = len(leaves) - index
        first = index == 0 and keep_first_plain
        if not first and remaining >= 2 and rng.random() < 0.3:
            size = min(remaining, rng.randint(2, 3))
            group = list(leaves[index : index + size])
            inner = "any" if rng.random() < 0.75 else "all"
            node: Node = {inner: group}
            children.append({"not": node} if rng.random() < 0.1 else node)
            index += size
            continue
        leaf = leaves[index]
        children.append({"not": leaf} if not first and rng.random() < 0.15 else leaf)
        index += 1
    if len(children) == 1:
        return children[0]
    top = "any" if rng.random() < 0.15 and not keep_first_plain else "all"
    return {top: children}


def count_leaves(node: Node) -> int:
    for key in ("all", "any"):
        if key in node:
            return sum(count_leaves(child) for child in node[key])
    if "not" in node:
        return count_leaves(node["not"])
    return 1


# ---------------------------------------------------------------------------- YAML writing


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | Decimal):
        return str(value)
    return json.dumps(value)  # strings and lists of strings or numbers: JSON is YAML flow


def _inline(node: Node) -> str | None:
    if "field" in node:
        return f"{{field: {node['field']}, op: {node['op']}, value: {_scalar(node['value'])}}}"
    if "segment" in node:
        return f"{{segment: {node['segment']}}}"
    return None


def condition_lines(key: str, node: Node, indent: int) -> list[str]:
    """``key: <node>`` at ``indent`` spaces, leaves as one-line flow mappings."""
    pad = " " * indent
    flow = _inline(node)
    if flow is not None:
        return [f"{pad}{key}: {flow}"]
    lines = [f"{pad}{key}:"]
    lines += _block(node, indent + 2)
    return lines


def _block(node: Node, indent: int) -> list[str]:
    pad = " " * indent
    if "not" in node:
        return condition_lines("not", node["not"], indent)
    key = "all" if "all" in node else "any"
    lines = [f"{pad}{key}:"]
    for child in node[key]:
        flow = _inline(child)
        if flow is not None:
            lines.append(f"{pad}  - {flow}")
            continue
        inner = _block(child, indent + 4)
        lines.append(f"{pad}  - {inner[0].lstrip()}")
        lines += inner[1:]
    return lines


@dataclass(frozen=True, slots=True)
class GeneratedCampaign:
    id: str
    event: str
    filename: str
    text: str
    leaves: int
    templates: tuple[str, ...]


def template_name(event: str, offer: str, number: int) -> str:
    return f"{event.replace('_', '-')}-{offer.replace('_', '-')}-{number}"


def _offer_lines(rng: random.Random, offer: str) -> list[str]:
    lines = ["offer:", f"  type: {offer}"]
    if offer == "complementary":
        if rng.random() < 0.6:
            lines.append(f"  categories: {json.dumps(_categories(rng, rng.randint(2, 4)))}")
    elif offer == "bundle":
        lines.append(f"  discount_percent: {rng.choice((5, 10, 12.5, 15, 20))}")
        if rng.random() < 0.5:
            lines.append(f"  categories: {json.dumps(_categories(rng, 2))}")
    elif offer == "upgrade":
        lines.append(f"  max_price_ratio: {rng.choice((1.5, 2, 3))}")
    else:
        lines.append(f"  points: {rng.choice((100, 250, 500, 1000))}")
        lines.append(f"  new_categories_only: {_scalar(rng.random() < 0.7)}")
    lines.append(f"  max_items: {rng.randint(1, 4)}")
    if offer != "loyalty_bonus":
        lines.append(f"  exclude_owned: {_scalar(rng.random() < 0.8)}")
    lines.append(f"  unavailable: {rng.choice(('skip_item', 'skip_item', 'cancel_send'))}")
    return lines


def _schedule_lines(rng: random.Random) -> list[str]:
    lines = ["schedule:", f"  delay: {rng.choice(('0m', '30m', '2h', '12h', '1d', '3d'))}"]
    if rng.random() < 0.7:
        start, end = rng.choice(WINDOWS)
        days = ", ".join(rng.choice(WINDOW_DAYS))
        lines.append(f'  window: {{days: [{days}], from: "{start}", to: "{end}"}}')
    zone = rng.choices(("customer", "Europe/Bucharest", "America/New_York"), (7, 2, 1))[0]
    lines.append(f"  timezone: {zone}")
    lines.append(f"  expire_after: {rng.choice(('1d', '3d', '7d', '14d'))}")
    return lines


def _frequency_line(rng: random.Random) -> str | None:
    return rng.choice(
        (
            None,
            "frequency: {once_per_customer: true}",
            "frequency: {cooldown: 14d}",
            "frequency: {once_per_customer: false, cooldown: 30d}",
            "frequency: {cooldown: 30d, max_sends: {count: 2, period: 90d}}",
            "frequency: {max_sends: {count: 1, period: 7d}}",
        )
    )


def _experiment_lines(rng: random.Random, event: str, offer: str) -> tuple[list[str], list[str]]:
    holdout = rng.choice((0, 5, 10, 10, 20))
    lines = ["experiment:", f"  holdout_percent: {holdout}", "  variants:"]
    used: list[str] = []
    for index in range(rng.choices((1, 2, 3), (5, 4, 1))[0]):
        name = template_name(event, offer, rng.randint(1, TEMPLATES_PER_FAMILY))
        used.append(name)
        variant = f"{{id: {'ABC'[index]}, weight: {rng.choice((1, 30, 50, 70))}, template: {name}"
        if rng.random() < 0.3:
            variant += ", subject: \"{{ customer.first_name or 'Hi' }}, picked for you\""
        lines.append(f"    - {variant}}}")
    return lines, used


def campaign_yaml(rng: random.Random, number: int, event: str, status: str) -> GeneratedCampaign:
    """One realistic campaign file: a where tree and an audience tree of 2-8 leaves in all."""
    campaign_id = f"bench-{number:03d}-{event.replace('_', '-')}"
    offer = rng.choice(OFFERS_FOR[event])
    where_count = rng.randint(1, 4)
    audience_count = rng.randint(max(0, 2 - where_count), 4)
    where_leaves = [primary_leaf(rng, event)]
    while len(where_leaves) < where_count:
        leaf = event_leaf(rng, event) if rng.random() < 0.8 else customer_leaf(rng)
        where_leaves.append(leaf)
    where = build_tree(rng, where_leaves, keep_first_plain=True)
    audience_leaves = [customer_leaf(rng) for _ in range(audience_count)]
    audience = build_tree(rng, audience_leaves, keep_first_plain=False) if audience_leaves else None

    lines = [
        "# yaml-language-server: $schema=../../schema/campaign.schema.json",
        f"# generated by bench.corpus, campaign #{number}",
        f"id: {campaign_id}",
        f'name: "Benchmark {number}: {offer.replace("_", " ")} on {event.replace("_", " ")}"',
        f"status: {status}",
        f"kind: {rng.choice(KINDS_FOR[event])}",
        f"priority: {rng.randint(0, 1000)}",
        "trigger:",
        f"  event: {event}",
        *condition_lines("where", where, 2),
    ]
    if audience is not None:
        lines += condition_lines("audience", audience, 0)
    lines += _offer_lines(rng, offer)
    if rng.random() < 0.85:
        lines += _schedule_lines(rng)
    frequency = _frequency_line(rng)
    if frequency is not None:
        lines.append(frequency)
    experiment, templates = _experiment_lines(rng, event, offer)
    lines += experiment
    return GeneratedCampaign(
        id=campaign_id,
        event=event,
        filename=f"{campaign_id}.yaml",
        text="\n".join(lines) + "\n",
        leaves=count_leaves(where) + (count_leaves(audience) if audience is not None else 0),
        templates=tuple(templates),
    )


def generate_campaigns(
    seed: int, count: int, inactive_share: float = 0.0
) -> list[GeneratedCampaign]:
    """``count`` campaigns in the CAMPAIGN_MIX proportions; ``inactive_share`` of them
    paused or draft (still fully validated by lint, never considered by decide)."""
    rng = random.Random(seed)
    quotas = {event: round(share * count) for event, share in CAMPAIGN_MIX.items()}
    quotas["purchase"] += count - sum(quotas.values())
    events = [event for event, quota in quotas.items() for _ in range(quota)]
    rng.shuffle(events)
    campaigns = []
    for number, event in enumerate(events, start=1):
        status = "active"
        if rng.random() < inactive_share:
            status = rng.choice(("paused", "draft"))
        campaigns.append(campaign_yaml(rng, number, event, status))
    return campaigns


# ------------------------------------------------------------------------------ templates

_EVENT_TEXT = {
    "purchase": "Thank you for your order {{ event.data.order_id }}.",
    "anniversary": (
        "It has been {{ event.data.years }} "
        '{{ "year" if event.data.years == 1 else "years" }} since you joined {{ shop.name }}.'
    ),
    "usage_change": "We noticed a change in your {{ event.data.metric | replace('_', ' ') }}.",
}
_OFFER_TEXT = {
    "complementary": "Customers who bought the same often add these:",
    "bundle": (
        "Together for {{ offer.discount_percent }}% less: "
        "{{ offer.bundle_price_text }} instead of {{ offer.regular_price_text }}."
    ),
    "upgrade": "Ready for more? These are a step up from what you have:",
    "loyalty_bonus": "We added {{ number(offer.points) }} loyalty points to your account.",
}
_SUBJECT = {
    "complementary": '{{ customer.first_name or "Hello" }}, these go well with your purchase',
    "bundle": '{{ customer.first_name or "Hello" }}, a bundle for you: '
    "{{ offer.discount_percent }}% off",
    "upgrade": '{{ customer.first_name or "Hello" }}, time for an upgrade?',
    "loyalty_bonus": '{{ customer.first_name or "Hello" }}, {{ offer.points }} points for you',
}


def _body_html(event: str, offer: str, greeting: str) -> str:
    return (
        '{% extends "_base/body.html" %}\n'
        "{% block content %}\n"
        f"<h1>{greeting}{{% if customer.first_name %}}, {{{{ customer.first_name }}}}"
        "{% endif %}</h1>\n"
        f"<p>{_EVENT_TEXT[event]}</p>\n"
        f"<p>{_OFFER_TEXT[offer]}</p>\n"
        '{% include "_base/items.html" %}\n'
        '<p><a class="button" href="{{ shop.url }}?c={{ campaign.id }}&v={{ variant }}">'
        "{{ campaign.name }}</a></p>\n"
        "{% endblock %}\n"
    )


def _body_txt(event: str, offer: str, greeting: str) -> str:
    return (
        '{% extends "_base/body.txt" %}\n'
        "{% block content %}\n"
        f"{greeting}{{% if customer.first_name %}}, {{{{ customer.first_name }}}}{{% endif %}}\n\n"
        f"{_EVENT_TEXT[event]}\n"
        f"{_OFFER_TEXT[offer]}\n"
        '{% include "_base/items.txt" %}\n'
        "{{ shop.url }}?c={{ campaign.id }}&v={{ variant }}\n"
        "{% endblock %}\n"
    )


def write_templates(directory: Path) -> list[str]:
    """Every template family (trigger x offer type), ``TEMPLATES_PER_FAMILY`` each; the
    first of each family also has a Romanian variant, so lint renders it twice. The
    ``_base`` layout is the project's own ``templates/_base``."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copytree(PROJECT_ROOT / "templates" / "_base", directory / "_base")
    names = []
    for event in EVENT_TYPES:
        for offer in OFFER_TYPES:
            for number in range(1, TEMPLATES_PER_FAMILY + 1):
                name = template_name(event, offer, number)
                folder = directory / name
                folder.mkdir()
                (folder / "subject.txt").write_text(_SUBJECT[offer] + "\n", encoding="utf-8")
                (folder / "body.html").write_text(_body_html(event, offer, "Hello"), "utf-8")
                (folder / "body.txt").write_text(_body_txt(event, offer, "Hello"), "utf-8")
                if number == 1:
                    (folder / "body.ro.html").write_text(_body_html(event, offer, "Salut"), "utf-8")
                    (folder / "body.ro.txt").write_text(_body_txt(event, offer, "Salut"), "utf-8")
                names.append(name)
    return names


@dataclass(frozen=True, slots=True)
class Corpus:
    root: Path
    campaigns_dir: Path
    templates_dir: Path
    segments_file: Path
    attributes_file: Path
    var_dir: Path
    campaigns: tuple[GeneratedCampaign, ...]


def write_corpus(
    root: Path, seed: int, count: int, inactive_share: float = 0.0, templates: bool = True
) -> Corpus:
    """Write campaign files, definitions and (optionally) templates under ``root``."""
    campaigns_dir = root / "campaigns"
    campaigns_dir.mkdir(parents=True, exist_ok=True)
    campaigns = generate_campaigns(seed, count, inactive_share)
    for campaign in campaigns:
        (campaigns_dir / campaign.filename).write_text(campaign.text, encoding="utf-8")
    segments_file = root / "segments.yaml"
    segments_file.write_text(SEGMENTS_YAML, encoding="utf-8")
    attributes_file = root / "attributes.yaml"
    attributes_file.write_text(ATTRIBUTES_YAML, encoding="utf-8")
    templates_dir = root / "templates"
    if templates:
        write_templates(templates_dir)
    var_dir = root / "var"
    var_dir.mkdir(exist_ok=True)
    return Corpus(
        root,
        campaigns_dir,
        templates_dir,
        segments_file,
        attributes_file,
        var_dir,
        tuple(campaigns),
    )


# ---------------------------------------------------------------------- events and people

BASE_TIME = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Case:
    """One event to decide: the event, the customer as the worker sees them, and now."""

    event: AnyEvent
    profile: CustomerProfile
    subject: Subject
    history: tuple[PastSend, ...]
    now: datetime


def _profile(rng: random.Random, number: int) -> CustomerProfile:
    orders = min(int(rng.expovariate(1 / 3)), 40)
    first = BASE_TIME - timedelta(days=rng.randint(1, 1500)) if orders else None
    last = None
    if first is not None:
        last = max(first, BASE_TIME - timedelta(days=rng.randint(0, 200)))
    bought = frozenset(_categories(rng, min(orders, rng.randint(0, 6))))
    owned = frozenset(rng.sample(SKUS, min(orders * 2, 12)))
    attributes: dict[str, object] = {}
    if rng.random() < 0.7:
        attributes["loyalty_tier"] = rng.choice(TIERS)
    if rng.random() < 0.6:
        attributes["newsletter_opens_30d"] = rng.randint(0, 12)
    if rng.random() < 0.5:
        attributes["interests"] = rng.sample(INTERESTS, rng.randint(1, 3))
    if rng.random() < 0.4:
        attributes["b2b"] = rng.random() < 0.2
    consent = rng.choices((True, None, False), (85, 5, 10))[0]
    return CustomerProfile(
        id=f"C{number:05d}",
        email=None if rng.random() < 0.03 else f"customer{number}@example.com",
        first_name=rng.choice(("Ana", "Ion", "Maria", "Luca", "Eva", None)),
        last_name="Pop",
        locale=rng.choice((*LOCALES, None)),
        timezone=rng.choice((*TIMEZONES, None)),
        email_marketing=consent,
        orders_count=orders,
        lifetime_spend=Decimal(rng.randint(0, 400) * max(orders, 0)) + Decimal("0.99") * orders,
        first_purchase_at=first,
        last_purchase_at=last,
        categories_bought=bought,
        skus_owned=owned,
        attributes=attributes,
    )


def _event_document(rng: random.Random, number: int, kind: str, customer: str) -> dict[str, Any]:
    occurred = BASE_TIME + timedelta(seconds=rng.randint(0, 30 * 86400))
    document: dict[str, Any] = {
        "id": f"evt-{number:06d}",
        "type": kind,
        "occurred_at": occurred.isoformat(),
        "customer": {"id": customer},
    }
    if kind == "purchase":
        items: list[dict[str, object]] = []
        total = Decimal(0)
        for category in _categories(rng, rng.choices((1, 2, 3, 4), (5, 3, 2, 1))[0]):
            price = Decimal(rng.randint(5, 2000)) + Decimal("0.99")
            quantity = rng.choices((1, 2, 3), (8, 2, 1))[0]
            total += price * quantity
            items.append(
                {
                    "sku": rng.choice(SKUS),
                    "category": category,
                    "quantity": quantity,
                    "unit_price": str(price),
                }
            )
        document["data"] = {
            "order_id": f"{rng.choice(('WEB', 'WEB', 'APP', 'POS'))}-{number}",
            "currency": rng.choice(CURRENCIES),
            "total": str(total),
            "items": items,
        }
    elif kind == "anniversary":
        document["data"] = {
            "kind": rng.choice(("signup", "first_purchase", "membership")),
            "years": rng.choices((1, 2, 3, 5, 10), (5, 3, 2, 1, 1))[0],
        }
    else:
        previous = rng.choice((0, 2, 5, 10, 20, 40))
        current = max(0, previous + rng.randint(-20, 25))
        document["data"] = {
            "metric": rng.choice(METRICS),
            "previous": str(previous),
            "current": str(current),
            "window_days": rng.choice((7, 14, 28, 30)),
        }
    return document


def _history(
    rng: random.Random, campaign_ids: Sequence[str], now: datetime
) -> tuple[PastSend, ...]:
    count = rng.choices((0, 1, 2, 3, 5, 8), (40, 20, 15, 10, 10, 5))[0]
    statuses = ("sent", "sent", "sent", "planned", "held_out", "skipped", "failed")
    return tuple(
        sorted(
            (
                PastSend(
                    rng.choice(campaign_ids),
                    rng.choice(statuses),
                    now - timedelta(hours=rng.randint(1, 90 * 24)),
                )
                for _ in range(count)
            ),
            key=lambda past: past.at,
        )
    )


def generate_cases(
    seed: int, count: int, campaign_ids: Sequence[str], customers: int = 500
) -> list[Case]:
    """``count`` events in the EVENT_MIX proportions over a pool of customers, each with a
    send history drawn from the campaigns (so cooldowns and caps really bite)."""
    rng = random.Random(seed + 1)
    profiles = [_profile(rng, number) for number in range(1, customers + 1)]
    cases = []
    for number in range(1, count + 1):
        profile = rng.choice(profiles)
        kind = _weighted(rng, EVENT_MIX)
        event = validate_event(_event_document(rng, number, kind, profile.id))
        if isinstance(event, PurchaseEvent):  # the worker records the order before deciding
            profile = apply_purchase(profile, *purchase_of(event))
        # The worker's clock is datetime.now(UTC); the event's own time keeps its offset.
        now = (event.occurred_at + timedelta(seconds=rng.randint(0, 120))).astimezone(UTC)
        subject = Subject(
            id=profile.id,
            has_email=profile.email is not None,
            email_marketing=profile.email_marketing,
            suppressed=rng.random() < 0.02,
            timezone=profile.timezone,
        )
        cases.append(Case(event, profile, subject, _history(rng, campaign_ids, now), now))
    return cases
