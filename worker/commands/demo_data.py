"""The demo shop: a catalog with complementary categories, customers from Romania, Italy
and elsewhere (diacritics included), and a realistic, reproducible stream of CRM events.

Everything is generated from a fixed seed, so two runs produce the same event ids and
the second run is absorbed by the inbox's de-duplication.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cache

from worker.core.settings import PROJECT_ROOT
from worker.offers.catalog_import import CatalogRow, parse_catalog

SEED = 2026
CURRENCY = "EUR"

# The demo catalog ships as a file and is loaded like any shop's (crosssell catalog
# import): English default names, Romanian and Italian ones (name.ro, name.it).
DEMO_CATALOG = PROJECT_ROOT / "config" / "demo" / "catalog.csv"


@cache
def catalog_rows() -> tuple[CatalogRow, ...]:
    """The demo catalog's products, in file order (the event generator draws from them,
    so the order is part of the demo's reproducible stream)."""
    return tuple(parse_catalog(DEMO_CATALOG))


MAIN_CATEGORIES = ("laptops", "phones", "tablets", "monitors", "cameras", "headphones")

RO_FIRST = (
    "Ana",
    "Ioana",
    "Ștefan",
    "Mihai",
    "Andreea",
    "Răzvan",
    "Cătălina",
    "Bogdan",
    "Irina",
    "Mădălina",
    "Ionuț",
    "Florin",
    "Iulia",
    "Teodora",
    "Sorin",
    "Gheorghița",
)
RO_LAST = (
    "Pop",
    "Popescu",
    "Ionescu",
    "Dumitrescu",
    "Stănescu",
    "Rădulescu",
    "Țurcanu",
    "Mureșan",
    "Constantinescu",
    "Bălan",
    "Niță",
    "Șerban",
    "Georgescu",
    "Vlădescu",
)
IT_FIRST = (
    "Nicolò",
    "Giulia",
    "Mattia",
    "Chiara",
    "Francesca",
    "Lorenzo",
    "Noè",
    "Sofia",
    "Federico",
    "Elisa",
    "Gioele",
    "Beatrice",
)
IT_LAST = (
    "Rossi",
    "Bianchi",
    "Russo",
    "Ferrari",
    "Esposito",
    "Cantù",
    "Colombo",
    "Ricci",
    "D'Angelo",
    "Mancini",
    "Forlì",
    "Gallo",
)
EN_FIRST = ("Emma", "Oliver", "Amelia", "Jack", "Isla", "Harry", "Mia", "Noah")
EN_LAST = ("Smith", "Jones", "Taylor", "Brown", "Wilson", "Evans", "O'Brien", "Walker")

# (share, locale, time zone, first names, last names, email domain)
MARKETS: tuple[tuple[float, str, str, tuple[str, ...], tuple[str, ...], str], ...] = (
    (0.45, "ro-RO", "Europe/Bucharest", RO_FIRST, RO_LAST, "example.ro"),
    (0.35, "it-IT", "Europe/Rome", IT_FIRST, IT_LAST, "example.it"),
    (0.12, "en-GB", "Europe/London", EN_FIRST, EN_LAST, "example.co.uk"),
    (0.08, "en-US", "America/New_York", EN_FIRST, EN_LAST, "example.com"),
)


@dataclass(frozen=True)
class DemoCustomer:
    id: str
    email: str
    first_name: str
    last_name: str
    locale: str
    timezone: str
    consent: bool | None
    tier: str

    def block(self) -> dict[str, object]:
        block: dict[str, object] = {
            "id": self.id,
            "email": self.email,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "locale": self.locale,
            "timezone": self.timezone,
            "attributes": {"loyalty_tier": self.tier},
        }
        if self.consent is not None:
            block["consent"] = {"email_marketing": self.consent}
        return block


def _ascii(text: str) -> str:
    table = str.maketrans("ășțâîĂȘȚÂÎòàèìùéÒÀÈÌÙÉ'", "astaiASTAIoaeiueOAEIUE-")
    return text.translate(table).lower().replace(" ", "")


def customers(count: int, rng: random.Random) -> list[DemoCustomer]:
    people = []
    for index in range(count):
        market = rng.choices(MARKETS, weights=[m[0] for m in MARKETS])[0]
        _, locale, zone, firsts, lasts, domain = market
        first, last = rng.choice(firsts), rng.choice(lasts)
        roll = rng.random()
        consent = True if roll < 0.92 else False if roll < 0.97 else None
        tier = rng.choices(("bronze", "silver", "gold"), weights=(6, 3, 1))[0]
        people.append(
            DemoCustomer(
                id=f"C-{1000 + index}",
                email=f"{_ascii(first)}.{_ascii(last)}.{index}@{domain}",
                first_name=first,
                last_name=last,
                locale=locale,
                timezone=zone,
                consent=consent,
                tier=tier,
            )
        )
    return people


def _purchase(
    customer: DemoCustomer, at: datetime, order_no: int, rng: random.Random
) -> dict[str, object]:
    main = rng.choice(MAIN_CATEGORIES)
    catalog = catalog_rows()
    items = [p for p in catalog if p.category == main]
    chosen = [rng.choice(items)]
    if rng.random() < 0.3:
        extras = [p for p in catalog if p.category not in MAIN_CATEGORIES]
        chosen.append(rng.choice(extras))
    lines = [
        {
            "sku": p.sku,
            "name": p.name,
            "category": p.category,
            "quantity": 1,
            "unit_price": str(p.price),
        }
        for p in chosen
    ]
    total = sum((p.price for p in chosen), Decimal(0))
    return {
        "id": f"evt-demo-p{order_no:05d}",
        "type": "purchase",
        "occurred_at": at.isoformat(),
        "customer": customer.block(),
        "data": {
            "order_id": f"O-{order_no:05d}",
            "currency": CURRENCY,
            "total": str(total),
            "items": lines,
        },
    }


def events(anchor: datetime, customer_count: int = 220) -> Iterator[dict[str, object] | str]:
    """History first (backfilled purchases), then the last ten days, in time order."""
    rng = random.Random(SEED)
    people = customers(customer_count, rng)
    stream: list[tuple[datetime, dict[str, object] | str]] = []
    order_no = 0
    for person in people:
        for _ in range(rng.randint(1, 3)):
            order_no += 1
            at = anchor - timedelta(days=rng.uniform(15, 700))
            stream.append((at, _purchase(person, at.replace(microsecond=0), order_no, rng)))
    for _ in range(380):
        order_no += 1
        at = anchor - timedelta(hours=rng.uniform(3, 240))
        stream.append((at, _purchase(rng.choice(people), at.replace(microsecond=0), order_no, rng)))
    for number in range(160):
        person = rng.choice(people)
        at = (anchor - timedelta(hours=rng.uniform(1, 200))).replace(microsecond=0)
        stream.append(
            (
                at,
                {
                    "id": f"evt-demo-a{number:05d}",
                    "type": "anniversary",
                    "occurred_at": at.isoformat(),
                    "customer": person.block(),
                    "data": {
                        "kind": rng.choice(("signup", "first_purchase", "membership")),
                        "years": rng.randint(1, 6),
                    },
                },
            )
        )
    for number in range(240):
        person = rng.choice(people)
        at = (anchor - timedelta(hours=rng.uniform(26, 230))).replace(microsecond=0)
        previous = rng.randint(4, 20)
        current = rng.randint(0, previous + 3)
        stream.append(
            (
                at,
                {
                    "id": f"evt-demo-u{number:05d}",
                    "type": "usage_change",
                    "occurred_at": at.isoformat(),
                    "customer": {"id": person.id},
                    "data": {
                        "metric": "logins_per_week",
                        "previous": previous,
                        "current": current,
                        "window_days": 14,
                    },
                },
            )
        )
    stream.sort(key=lambda pair: pair[0])
    for _, item in stream:
        yield item
    # What a buggy CRM sends now and then: each goes to the dead-letter queue with a reason.
    yield "{not json"
    yield json.dumps(
        {
            "id": "evt-demo-bad-1",
            "type": "refund",
            "occurred_at": anchor.isoformat(),
            "customer": {"id": "C-1000"},
            "data": {},
        }
    )
    yield json.dumps(
        {
            "id": "evt-demo-bad-2",
            "type": "purchase",
            "occurred_at": anchor.isoformat(),
            "customer": {"id": "C-1001"},
            "data": {"order_id": "O-x", "items": []},
        }
    )


def as_lines(anchor: datetime) -> list[bytes]:
    return [
        (item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)).encode("utf-8")
        for item in events(anchor)
    ]


def one_item_purchase(
    event_id: str,
    order_id: str,
    customer_id: str,
    at: datetime,
    product: tuple[str, str, str, str],
) -> dict[str, object]:
    """A purchase event of one product, ``(sku, name, category, price)``, in the demo's
    currency: the follow-ups the demo sends after its first run."""
    sku, name, category, price = product
    return {
        "id": event_id,
        "type": "purchase",
        "occurred_at": at.isoformat(),
        "customer": {"id": customer_id},
        "data": {
            "order_id": order_id,
            "currency": CURRENCY,
            "total": price,
            "items": [
                {"sku": sku, "name": name, "category": category, "quantity": 1, "unit_price": price}
            ],
        },
    }


def journey_followups(offered: dict[str, list[str]], at: datetime) -> list[dict[str, object]]:
    """What the post-purchase journey's customers buy a few days after its first email:
    half of those it offered products to buy one of them (which ends their sequence), a
    quarter of the others buy something else (so the day-7 bundle, which asks that nothing
    else was bought, is skipped for them), the rest buy nothing. Reproducible (fixed seed)."""
    rng = random.Random(SEED + 7)
    catalog = catalog_rows()
    by_sku = {p.sku: (p.name, p.category, str(p.price)) for p in catalog}
    others = [p.sku for p in catalog if p.category not in MAIN_CATEGORIES and p.in_stock]
    followups: list[dict[str, object]] = []
    for customer_id in sorted(offered):
        roll = rng.random()
        if roll < 0.5 and offered[customer_id]:
            sku = rng.choice(offered[customer_id])
        elif roll < 0.75:
            sku = rng.choice([s for s in others if s not in offered[customer_id]])
        else:
            continue
        name, category, price = by_sku[sku]
        number = len(followups) + 1
        followups.append(
            one_item_purchase(
                f"evt-demo-j{number:05d}",
                f"O-J{number:05d}",
                customer_id,
                at,
                (sku, name, category, price),
            )
        )
    return followups
