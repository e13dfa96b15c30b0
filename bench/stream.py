"""The CRM's side of the benchmark: events for the generated shop's customers, published
with pika (a plain AMQP client, not crosssell's publisher) as docs/events.md describes.

The mix follows a shop's traffic: 60 % purchases, 20 % anniversaries, 20 % usage
changes; ``match_share`` of them (60 % by default) match one shipped campaign, the rest
none:

* purchase, matching: a laptop, phone or tablet of 300 EUR or more (laptop-accessories),
  or a camera, monitor or headphones of 150 EUR or more (post-purchase-journey);
* purchase, not matching: a mouse or a keyboard (no campaign is about them);
* anniversary: a membership of 2 years matches anniversary-loyalty, a signup does not;
* usage change: logins per week 12 → 3 matches usage-drop-bundle, 3 → 12 does not.

Each event is for a different customer as long as the shop has enough of them, so that
frequency rules (cooldowns, the minimum gap) never hide an email the mix planned.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pika

from bench.shop import profile

EXCHANGE = "crm.events"  # CROSSSELL_EVENTS_EXCHANGE's default

# (sku, name, category, price) from config/demo/catalog.csv
LAPTOP_LIKE = (
    ("LAP-14-PRO", "Laptop 14 Pro", "laptops", "999.00"),
    ("PHN-A-PLUS", "Phone A Plus", "phones", "549.00"),
    ("TAB-12-PRO", "Tablet 12 Pro", "tablets", "899.00"),
)
JOURNEY_LIKE = (
    ("CAM-MIRRORLESS", "Mirrorless Camera M5", "cameras", "1199.00"),
    ("MON-27-4K", 'Monitor 27" 4K', "monitors", "399.00"),
    ("HP-NC700", "Noise-Cancelling Headphones 700", "headphones", "329.00"),
)
NOTHING_LIKE = (
    ("MOU-WIRELESS", "Wireless Mouse", "mice", "29.00"),
    ("KEY-SLIM", "Slim Wireless Keyboard", "keyboards", "69.00"),
)


@dataclass(frozen=True, slots=True)
class Planned:
    """One event to publish: its id, routing key (= type), body, and whether it should
    match a campaign."""

    event_id: str
    kind: str
    body: bytes
    matching: bool


def _customer(n: int) -> dict[str, Any]:
    person = profile(n)
    return {
        "id": person.id,
        "email": person.email,
        "first_name": person.first_name,
        "last_name": person.last_name,
        "locale": person.locale,
        "timezone": person.timezone,
        "consent": {"email_marketing": True},
    }


def _purchase(order: str, item: tuple[str, str, str, str]) -> dict[str, Any]:
    sku, name, category, price = item
    return {
        "order_id": order,
        "currency": "EUR",
        "total": price,
        "items": [
            {"sku": sku, "name": name, "category": category, "quantity": 1, "unit_price": price}
        ],
    }


def event(event_id: str, kind: str, matching: bool, customer: int, pick: int) -> Planned:
    """One event of ``kind`` for shop customer ``customer``; ``pick`` varies the product."""
    data: dict[str, Any]
    if kind == "purchase":
        pool = (LAPTOP_LIKE if pick % 2 else JOURNEY_LIKE) if matching else NOTHING_LIKE
        data = _purchase(f"O-{event_id}", pool[pick % len(pool)])
    elif kind == "anniversary":
        data = {"kind": "membership", "years": 2} if matching else {"kind": "signup", "years": 1}
    else:
        previous, current = (12, 3) if matching else (3, 12)
        data = {
            "metric": "logins_per_week",
            "previous": previous,
            "current": current,
            "window_days": 14,
        }
    body = {
        "id": event_id,
        "type": kind,
        "occurred_at": datetime.now(UTC).isoformat(),
        "customer": _customer(customer),
        "data": data,
    }
    return Planned(event_id, kind, json.dumps(body, ensure_ascii=False).encode(), matching)


def mix(
    prefix: str,
    count: int,
    first_customer: int,
    customers: int,
    match_share: float = 0.6,
    kinds: tuple[str, ...] | None = None,
    seed: int = 5,
) -> list[Planned]:
    """``count`` events with ids ``<prefix>-<n>``, for customers ``first_customer`` on
    (wrapping at ``customers``). ``kinds`` forces the types; ``match_share`` 0 or 1 makes
    every event miss or match."""
    rng = np.random.default_rng(seed)
    types = kinds or ("purchase", "purchase", "purchase", "anniversary", "usage_change")
    chosen = rng.integers(0, len(types), size=count)
    matches = rng.random(count) < match_share
    return [
        event(
            f"{prefix}-{n}",
            types[int(chosen[n])],
            bool(matches[n]),
            (first_customer + n) % customers,
            n,
        )
        for n in range(count)
    ]


def amqp_parameters(url: str) -> pika.URLParameters:
    """pika reads a URL's path as a percent-encoded vhost: kombu's ``//`` is ``/%2F``.
    Heartbeats are off: a blocking pika connection answers them only while it is used,
    and the harness leaves it idle for minutes while the stack works."""
    if url.endswith("//"):
        url = url[:-2] + "/%2F"
    parameters = pika.URLParameters(url)
    parameters.heartbeat = 0
    return parameters


class Publisher:
    """One pika connection; records when each event was handed to the broker."""

    def __init__(self, url: str, exchange: str = EXCHANGE) -> None:
        self.url = url
        self.exchange = exchange
        self.properties = pika.BasicProperties(content_type="application/json", delivery_mode=2)
        self.published_at: dict[str, float] = {}
        self._connect()

    def _connect(self) -> None:
        self.connection = pika.BlockingConnection(amqp_parameters(self.url))
        self.channel = self.connection.channel()

    def _ensure_open(self) -> None:
        """Reconnect if the broker dropped the connection while it sat idle."""
        try:
            self.connection.process_data_events(0)
            if self.channel.is_open:
                return
        except pika.exceptions.AMQPError:
            pass
        self.close()
        self._connect()

    def publish(self, events: Iterable[Planned], rate: float | None = None) -> float:
        """Publish as fast as possible, or ``rate`` events per second on a fixed schedule;
        returns the seconds it took."""
        self._ensure_open()
        started = time.perf_counter()
        for n, planned in enumerate(events):
            if rate:
                delay = started + n / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            self.published_at[planned.event_id] = time.time()
            self.channel.basic_publish(self.exchange, planned.kind, planned.body, self.properties)
        self.connection.process_data_events(0)
        return time.perf_counter() - started

    def queue_depth(self, queue: str) -> int:
        self._ensure_open()
        declared = self.channel.queue_declare(queue, passive=True)
        return int(declared.method.message_count)

    def close(self) -> None:
        """Close; a connection the broker already dropped (an idle one misses its
        heartbeats: pika answers them only while publishing) is simply gone."""
        if self.connection.is_open:
            with suppress(pika.exceptions.AMQPError):
                self.connection.close()


def chunks(events: list[Planned], size: int) -> Iterator[list[Planned]]:
    for start in range(0, len(events), size):
        yield events[start : start + size]
