"""Deterministic experiment assignment: the same customer lands in the same bucket on every
machine, process and restart, because the bucket is a hash of stable ids, never random.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from decimal import Decimal

from triggers.campaigns import Experiment, Variant

BUCKETS = 10_000


def bucket(campaign_id: str, customer_id: str, salt: str) -> int:
    """A number in [0, 10000) spread uniformly by SHA-256 of the ids."""
    digest = hashlib.sha256(f"{salt}\x1f{campaign_id}\x1f{customer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


@dataclass(frozen=True, slots=True)
class Assignment:
    held_out: bool
    variant: Variant


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
