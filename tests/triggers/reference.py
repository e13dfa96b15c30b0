"""Plain reference definitions the property tests compare the engine's fast paths against.

Each says what the answer is in the most direct way, with nothing worked out beforehand;
the engine's versions (``triggers.experiments.Assigner``, ``Prefilter.positions``,
``triggers.schedule.plan_in_windows`` with windows combined once per campaign) must give
the same answer for every input. Only tests use these.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from hashlib import sha256
from zoneinfo import ZoneInfo

from triggers.campaigns import Experiment, Schedule
from triggers.experiments import BUCKETS, Assignment
from triggers.prefilter import Prefilter
from triggers.schedule import (
    DailyWindow,
    SendTime,
    campaign_window,
    plan_in_windows,
    send_windows,
)


def bucket(campaign_id: str, customer_id: str, salt: str) -> int:
    """A number in [0, 10000): the first 8 bytes of SHA-256 of ``salt␟campaign␟customer``,
    big-endian, modulo ``BUCKETS``."""
    digest = sha256(f"{salt}\x1f{campaign_id}\x1f{customer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def assign(experiment: Experiment, campaign_id: str, customer_id: str) -> Assignment:
    """Holdout first (its own hash), then a weighted variant (an independent hash)."""
    holdout_buckets = int(experiment.holdout_percent * BUCKETS / Decimal(100))
    held_out = bucket(campaign_id, customer_id, "holdout") < holdout_buckets
    total = sum(variant.weight for variant in experiment.variants)
    point = bucket(campaign_id, customer_id, "variant") * total // BUCKETS
    for variant in experiment.variants:
        if point < variant.weight:
            return Assignment(held_out, variant)
        point -= variant.weight
    return Assignment(held_out, experiment.variants[-1])


def prefilter_candidates(prefilter: Prefilter, facts: Mapping[str, object]) -> set[int]:
    """Every unfiled position, and every position filed under a (field, value) the facts
    hold: a text value itself, or any member of a set of texts."""
    found = set(prefilter.unfiled)
    for (name, value), positions in prefilter.filed.items():
        actual = facts.get(name)
        if (type(actual) is str and actual == value) or (
            type(actual) is frozenset and value in actual
        ):
            found |= positions
    return found


def plan_send_time(
    schedule: Schedule,
    triggered_at: datetime,
    now: datetime,
    zone: ZoneInfo,
    quiet: DailyWindow | None,
) -> SendTime:
    """Delay from the trigger, then the first instant in the window and outside quiet hours."""
    windows = send_windows(campaign_window(schedule), quiet)
    return plan_in_windows(schedule, windows, triggered_at, now, zone)
