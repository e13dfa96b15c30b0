"""Deterministic experiment assignment: the same customer lands in the same bucket on every
machine, process and restart, because the bucket is a hash of stable ids, never random.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from hashlib import sha256

from triggers.campaigns import Experiment, Variant

BUCKETS = 10_000


def _bucket_of(text: bytes) -> int:
    """The bucket of ``salt␟campaign␟customer`` (as bytes): the first 8 bytes of its
    SHA-256, big-endian, modulo ``BUCKETS``, so spread uniformly over [0, 10000). Pinned
    by the tests against the reference ``bucket`` (tests/triggers/reference.py)."""
    return int.from_bytes(sha256(text).digest()[:8], "big") % BUCKETS


@dataclass(frozen=True, slots=True)
class Assignment:
    held_out: bool
    variant: Variant


def _prefix(salt: str, campaign_id: str) -> bytes:
    """``salt␟campaign␟`` as bytes: with the customer id appended, what ``_bucket_of`` hashes."""
    return f"{salt}\x1f{campaign_id}\x1f".encode()


@dataclass(frozen=True, slots=True)
class Assigner:
    """The customer's holdout and variant for one campaign, with everything that does not
    depend on the customer worked out once: the holdout threshold, the cumulative weights,
    the hashes' common prefix, and which hash the answer cannot depend on (no holdout, a
    single variant)."""

    experiment: Experiment
    campaign_id: str
    _holdout_buckets: int = field(init=False, repr=False, compare=False)
    _holdout: bytes | None = field(init=False, repr=False, compare=False)
    _variant: bytes | None = field(init=False, repr=False, compare=False)
    _ends: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _total: int = field(init=False, repr=False, compare=False)
    _fixed: int = field(init=False, repr=False, compare=False)
    _outcomes: tuple[tuple[Assignment, ...], tuple[Assignment, ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        variants = self.experiment.variants
        weights = [variant.weight for variant in variants]
        ends, running = [], 0
        for weight in weights:
            running += weight
            ends.append(running)
        weighted = [index for index, weight in enumerate(weights) if weight > 0]
        # With no weight at all the reference assign() falls through to the last variant;
        # with one weighted variant every point lands in it.
        fixed = len(variants) - 1 if not weighted else weighted[0]
        holdout = int(self.experiment.holdout_percent * BUCKETS / Decimal(100))
        values: dict[str, object] = {
            "_holdout_buckets": holdout,
            "_holdout": _prefix("holdout", self.campaign_id) if 0 < holdout < BUCKETS else None,
            "_variant": _prefix("variant", self.campaign_id) if len(weighted) > 1 else None,
            "_ends": tuple(ends),
            "_total": running,
            "_fixed": fixed,
            "_outcomes": (
                tuple(Assignment(False, variant) for variant in variants),
                tuple(Assignment(True, variant) for variant in variants),
            ),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __call__(self, customer_id: str) -> Assignment:
        """Holdout first (its own hash), then a weighted variant (an independent hash);
        equal to the reference ``assign`` (tests/triggers/reference.py)."""
        key = customer_id.encode()
        held_out = (
            self._holdout_buckets >= BUCKETS  # 0 % or 100 %: no hash can change it
            if self._holdout is None
            else _bucket_of(self._holdout + key) < self._holdout_buckets
        )
        outcomes = self._outcomes[held_out]
        if self._variant is None:
            return outcomes[self._fixed]
        point = _bucket_of(self._variant + key) * self._total // BUCKETS
        for index, end in enumerate(self._ends):
            if point < end:
                return outcomes[index]
        return outcomes[-1]
