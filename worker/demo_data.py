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

SEED = 2026
CURRENCY = "EUR"

# (sku, name, category, price, line, tier)
CATALOG: tuple[tuple[str, str, str, str, str | None, int | None], ...] = (
    ("LAP-14-BASIC", "Laptop 14 Basic", "laptops", "649.00", "laptop-14", 1),
    ("LAP-14-PRO", "Laptop 14 Pro", "laptops", "999.00", "laptop-14", 2),
    ("LAP-16-MAX", "Laptop 16 Max", "laptops", "1499.00", "laptop-16", 3),
    ("PHN-A", "Phone A", "phones", "349.00", "phone", 1),
    ("PHN-A-PLUS", "Phone A Plus", "phones", "549.00", "phone", 2),
    ("PHN-ULTRA", "Phone Ultra", "phones", "899.00", "phone", 3),
    ("TAB-10", "Tablet 10", "tablets", "329.00", "tablet", 1),
    ("TAB-12-PRO", "Tablet 12 Pro", "tablets", "699.00", "tablet", 2),
    ("MON-24", 'Monitor 24" IPS', "monitors", "179.00", "monitor", 1),
    ("MON-27-4K", 'Monitor 27" 4K', "monitors", "379.00", "monitor", 2),
    ("CAM-MIRRORLESS", "Mirrorless Camera M5", "cameras", "899.00", "camera", 1),
    ("CAM-ACTION", "Action Camera Go", "cameras", "299.00", "action-camera", 1),
    ("HP-BUDS", "Wireless Earbuds", "headphones", "79.00", "buds", 1),
    ("HP-NC700", "Noise-Cancelling Headphones 700", "headphones", "249.00", "over-ear", 2),
    ("BAG-SLEEVE-14", 'Laptop Sleeve 14"', "laptop-bags", "29.00", None, None),
    ("BAG-BACKPACK", "Commuter Laptop Backpack", "laptop-bags", "69.00", None, None),
    ("MOU-WIRELESS", "Wireless Mouse", "mice", "25.00", None, None),
    ("MOU-ERGO", "Ergonomic Mouse", "mice", "59.00", None, None),
    ("DOCK-USBC", "USB-C Docking Station", "docking-stations", "129.00", None, None),
    ("DOCK-MINI", "Mini USB-C Hub", "docking-stations", "39.00", None, None),
    ("KEY-MECH", "Mechanical Keyboard", "keyboards", "89.00", None, None),
    ("KEY-SLIM", "Slim Wireless Keyboard", "keyboards", "45.00", None, None),
    ("CASE-CLEAR", "Clear Phone Case", "phone-cases", "15.00", None, None),
    ("CASE-LEATHER", "Leather Phone Case", "phone-cases", "39.00", None, None),
    ("CHG-65W", "65 W USB-C Charger", "chargers", "35.00", None, None),
    ("CHG-WIRELESS", "Wireless Charging Pad", "chargers", "29.00", None, None),
    ("COV-TAB10", "Tablet 10 Smart Cover", "tablet-covers", "35.00", None, None),
    ("COV-TAB12", "Tablet 12 Keyboard Cover", "tablet-covers", "149.00", None, None),
    ("CBAG-SHOULDER", "Camera Shoulder Bag", "camera-bags", "59.00", None, None),
    ("MEM-SD128", "SD Card 128 GB", "memory-cards", "24.00", None, None),
    ("MEM-SD256", "SD Card 256 GB", "memory-cards", "42.00", None, None),
    ("TRI-TRAVEL", "Travel Tripod", "tripods", "79.00", None, None),
    ("TRI-GORILLA", "Flexible Mini Tripod", "tripods", "29.00", None, None),
)
OUT_OF_STOCK = frozenset({"DOCK-USBC", "MEM-SD256"})
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
    items = [p for p in CATALOG if p[2] == main]
    chosen = [rng.choice(items)]
    if rng.random() < 0.3:
        extras = [p for p in CATALOG if p[2] not in MAIN_CATEGORIES]
        chosen.append(rng.choice(extras))
    lines = [
        {"sku": sku, "name": name, "category": category, "quantity": 1, "unit_price": price}
        for sku, name, category, price, _, _ in chosen
    ]
    total = sum((Decimal(p[3]) for p in chosen), Decimal(0))
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


def journey_followups(offered: dict[str, list[str]], at: datetime) -> list[dict[str, object]]:
    """What the post-purchase journey's customers buy a few days after its first email:
    half of those it offered products to buy one of them (which ends their sequence), a
    quarter of the others buy something else (so the day-7 bundle, which asks that nothing
    else was bought, is skipped for them), the rest buy nothing. Reproducible (fixed seed)."""
    rng = random.Random(SEED + 7)
    by_sku = {sku: (name, category, price) for sku, name, category, price, _, _ in CATALOG}
    others = [p[0] for p in CATALOG if p[2] not in MAIN_CATEGORIES and p[0] not in OUT_OF_STOCK]
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
            {
                "id": f"evt-demo-j{number:05d}",
                "type": "purchase",
                "occurred_at": at.isoformat(),
                "customer": {"id": customer_id},
                "data": {
                    "order_id": f"O-J{number:05d}",
                    "currency": CURRENCY,
                    "total": price,
                    "items": [
                        {
                            "sku": sku,
                            "name": name,
                            "category": category,
                            "quantity": 1,
                            "unit_price": price,
                        }
                    ],
                },
            }
        )
    return followups
