"""Experiment assignment: stable hash buckets, holdout share and variant weights."""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.triggers.reference import assign, bucket
from triggers.campaigns import Experiment
from triggers.experiments import BUCKETS, Assigner

CUSTOMERS = [f"C-{n:06d}" for n in range(20_000)]


def experiment(holdout: str | int, weights: dict[str, int]) -> Experiment:
    return Experiment.model_validate(
        {
            "holdout_percent": Decimal(str(holdout)),
            "variants": [
                {"id": vid, "weight": weight, "template": "accessories"}
                for vid, weight in weights.items()
            ],
        }
    )


def tolerance(share: float, n: int) -> float:
    """Five standard deviations of a binomial proportion: a false alarm is ~1 in 3.5 million."""
    return 5 * math.sqrt(share * (1 - share) / n)


ids = st.text(alphabet="abcxyzABC019-_ .@șțăîâ", min_size=1, max_size=40)


@settings(max_examples=100, deadline=None, database=None)
@given(campaign_id=ids, customer_id=ids, salt=st.sampled_from(["holdout", "variant", "x"]))
def test_bucket_is_deterministic_and_in_range(
    campaign_id: str, customer_id: str, salt: str
) -> None:
    first = bucket(campaign_id, customer_id, salt)
    assert first == bucket(campaign_id, customer_id, salt)
    assert 0 <= first < BUCKETS


def test_bucket_scheme_is_stable_across_releases() -> None:
    # Changing the hash would silently reshuffle every running experiment.
    for campaign_id, customer_id in [("laptop-accessories", "C-1001"), ("x", "ș-ț")]:
        text = f"holdout\x1f{campaign_id}\x1f{customer_id}".encode()
        expected = int.from_bytes(hashlib.sha256(text).digest()[:8], "big") % BUCKETS
        assert bucket(campaign_id, customer_id, "holdout") == expected


def test_buckets_do_not_collide_on_concatenation() -> None:
    # Without a separator both pairs would hash the same text.
    one = (bucket("ab", "c", "holdout"), bucket("ab", "c", "variant"))
    other = (bucket("a", "bc", "holdout"), bucket("a", "bc", "variant"))
    assert one != other


def test_buckets_spread_uniformly() -> None:
    counts = Counter(bucket("laptop-accessories", c, "holdout") * 10 // BUCKETS for c in CUSTOMERS)
    assert set(counts) == set(range(10))
    for decile in range(10):
        assert abs(counts[decile] / len(CUSTOMERS) - 0.1) < tolerance(0.1, len(CUSTOMERS))


@settings(max_examples=50, deadline=None, database=None)
@given(campaign_id=ids, customer_id=ids)
def test_assignment_is_deterministic(campaign_id: str, customer_id: str) -> None:
    setup = experiment("12.5", {"A": 3, "B": 1, "C": 0})
    first = assign(setup, campaign_id, customer_id)
    assert first == assign(setup, campaign_id, customer_id)
    assert first.variant.id in {"A", "B"}


@pytest.mark.parametrize("holdout", ["0", "10", "12.5", "50", "100"])
def test_holdout_share_matches_the_configured_percent(holdout: str) -> None:
    setup = experiment(holdout, {"A": 1})
    held = sum(assign(setup, "laptop-accessories", c).held_out for c in CUSTOMERS)
    share = float(Decimal(holdout) / 100)
    if share in (0.0, 1.0):
        assert held == share * len(CUSTOMERS)
    else:
        assert abs(held / len(CUSTOMERS) - share) < tolerance(share, len(CUSTOMERS))


def test_variant_shares_match_the_weights() -> None:
    weights = {"A": 50, "B": 30, "C": 20, "D": 0}
    setup = experiment(10, weights)
    counts = Counter(assign(setup, "laptop-accessories", c).variant.id for c in CUSTOMERS)
    total = sum(weights.values())
    assert "D" not in counts, "a variant with weight 0 is never chosen"
    for vid, weight in weights.items():
        if weight:
            share = weight / total
            assert abs(counts[vid] / len(CUSTOMERS) - share) < tolerance(share, len(CUSTOMERS))


def test_holdout_does_not_depend_on_the_variant() -> None:
    # Holdout and variant use independent hashes: the held-out group has the same mix.
    setup = experiment(20, {"A": 1, "B": 1})
    held_out = [
        a.variant.id for c in CUSTOMERS if (a := assign(setup, "laptop-accessories", c)).held_out
    ]
    share_a = held_out.count("A") / len(held_out)
    assert abs(share_a - 0.5) < tolerance(0.5, len(held_out))


def test_holdout_groups_differ_between_campaigns() -> None:
    setup = experiment(50, {"A": 1, "B": 1})
    first = [assign(setup, "campaign-one", c) for c in CUSTOMERS[:2000]]
    second = [assign(setup, "campaign-two", c) for c in CUSTOMERS[:2000]]
    assert first == [assign(setup, "campaign-one", c) for c in CUSTOMERS[:2000]]
    # Per-campaign hashing: the two campaigns' holdout groups are not the same people.
    agree = sum(a.held_out == b.held_out for a, b in zip(first, second, strict=True))
    assert abs(agree / 2000 - 0.5) < tolerance(0.5, 2000)


def test_experiment_model_rules() -> None:
    # Duplicate variant ids and all-zero weights are lint errors with a position; see
    # tests/corpus/broken/duplicate-variant-ids.yaml and variant-weights-all-zero.yaml.
    with pytest.raises(ValidationError):
        experiment(101, {"A": 1})
    with pytest.raises(ValidationError):
        experiment(-1, {"A": 1})
    with pytest.raises(ValidationError):
        Experiment.model_validate({"variants": []})


@settings(max_examples=300, deadline=None, database=None)
@given(
    campaign_id=ids,
    customers=st.lists(ids, min_size=1, max_size=20),
    holdout=st.sampled_from(["0", "0.01", "5", "12.5", "50", "99.99", "100"]),
    weights=st.lists(st.sampled_from([0, 0, 1, 3, 50, 10_000]), min_size=1, max_size=4),
)
def test_the_prepared_assigner_agrees_with_assign(
    campaign_id: str, customers: list[str], holdout: str, weights: list[int]
) -> None:
    # The engine assigns through Assigner (hash prefix and thresholds worked out once,
    # hashes skipped when they cannot change the answer); it must never disagree.
    setup = experiment(holdout, {f"V{index}": weight for index, weight in enumerate(weights)})
    prepared = Assigner(setup, campaign_id)
    for customer_id in customers:
        assert prepared(customer_id) == assign(setup, campaign_id, customer_id)
