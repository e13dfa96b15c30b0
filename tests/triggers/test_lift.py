"""The lift statistics: published values, a brute-force reference, and calibration.

Calibration runs thousands of simulated experiments with a fixed seed (vectorised with
numpy): the 95 % interval must cover the true difference in 93-97 % of them, with a
planted lift of +2 points on a 5 % base and with none, and the planted lift must be
detected about as often as the power the report predicts.
"""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize, stats

from triggers.lift import (
    _bootstrap_means,
    holdout_needed,
    incremental_revenue,
    newcombe_arrays,
    normal_power,
    power,
    rate_difference,
    relative_lift,
    verdict,
    z_value,
)

Z95 = float(stats.norm.ppf(0.975))
EXPERIMENTS = 4000
SEED = 20261129

# Newcombe (1998), Table II, method 10 (hybrid score): the paper's eight examples.
NEWCOMBE_TABLE_II = [
    ((56, 70, 48, 80), (0.0524, 0.3339)),
    ((9, 10, 3, 10), (0.1705, 0.8090)),
    ((6, 7, 2, 7), (0.0582, 0.8062)),
    ((5, 56, 0, 29), (-0.0381, 0.1926)),
    ((0, 10, 0, 20), (-0.1611, 0.2775)),
    ((0, 10, 0, 10), (-0.2775, 0.2775)),
    ((10, 10, 0, 20), (0.6791, 1.0000)),
    ((10, 10, 0, 10), (0.6075, 1.0000)),
]


@pytest.mark.parametrize(("counts", "expected"), NEWCOMBE_TABLE_II)
def test_newcombe_matches_the_published_examples(
    counts: tuple[int, int, int, int], expected: tuple[float, float]
) -> None:
    interval = rate_difference(*counts)
    assert interval is not None
    assert (round(interval.lower, 4), round(interval.upper, 4)) == expected
    assert "Newcombe" in interval.method


def _wilson_by_root_finding(x: int, n: int) -> tuple[float, float]:
    """The Wilson bounds from their definition: the p where the score statistic
    |x/n - p| / sqrt(p(1-p)/n) equals z, found numerically (no closed form)."""
    p_hat = x / n

    def score(p: float) -> float:
        return (p_hat - p) ** 2 - Z95**2 * p * (1 - p) / n

    # Bracket each bound strictly away from p_hat, a trivial root when p_hat is 0 or 1.
    lower = 0.0 if x == 0 else optimize.brentq(score, 1e-300, p_hat - 1e-13, xtol=1e-15)
    upper = 1.0 if x == n else optimize.brentq(score, p_hat + 1e-13, 1.0, xtol=1e-15)
    return lower, upper


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))),
    st.integers(1, 5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))),
)
def test_newcombe_equals_the_square_and_add_of_root_found_wilson_bounds(
    first: tuple[int, int], second: tuple[int, int]
) -> None:
    (x1, n1), (x2, n2) = first, second
    l1, u1 = _wilson_by_root_finding(x1, n1)
    l2, u2 = _wilson_by_root_finding(x2, n2)
    p1, p2 = x1 / n1, x2 / n2
    expected_lower = p1 - p2 - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    expected_upper = p1 - p2 + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    interval = rate_difference(x1, n1, x2, n2)
    assert interval is not None
    assert interval.lower == pytest.approx(expected_lower, abs=1e-9)
    assert interval.upper == pytest.approx(expected_upper, abs=1e-9)
    assert -1 <= interval.lower <= interval.estimate <= interval.upper <= 1


def test_empty_groups_have_no_interval() -> None:
    assert rate_difference(0, 0, 1, 10) is None
    assert relative_lift(3, 10, 0, 0) is None
    assert relative_lift(0, 10, 0, 10) is None


def test_z_value_is_the_normal_quantile() -> None:
    for confidence in (0.8, 0.9, 0.95, 0.99):
        assert z_value(confidence) == pytest.approx(stats.norm.ppf(0.5 + confidence / 2))
    with pytest.raises(ValueError):
        z_value(1.0)


def _simulate(
    p_treated: float, p_control: float, n_treated: int, n_control: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.binomial(n_treated, p_treated, EXPERIMENTS),
        rng.binomial(n_control, p_control, EXPERIMENTS),
    )


@pytest.mark.parametrize(
    ("p_control", "lift", "n_treated", "n_control"),
    [
        (0.05, 0.02, 3000, 1500),  # planted: +2 points on a 5 % base
        (0.05, 0.0, 3000, 1500),  # null campaign
        (0.05, 0.02, 9000, 1000),  # a 10 % holdout
        (0.05, 0.0, 9000, 1000),
    ],
)
def test_the_interval_covers_the_true_lift_at_its_nominal_rate(
    p_control: float, lift: float, n_treated: int, n_control: int
) -> None:
    treated, control = _simulate(p_control + lift, p_control, n_treated, n_control, SEED)
    _, lower, upper = newcombe_arrays(treated, n_treated, control, n_control, z_value(0.95))
    coverage = float(np.mean((lower <= lift) & (lift <= upper)))
    assert 0.93 <= coverage <= 0.97, coverage


@pytest.mark.parametrize(
    ("n_treated", "n_control"), [(3000, 1500), (9000, 1000), (2000, 2000), (6000, 600)]
)
def test_the_planted_lift_is_detected_at_the_predicted_power(
    n_treated: int, n_control: int
) -> None:
    p_control, lift = 0.05, 0.02
    treated, control = _simulate(p_control + lift, p_control, n_treated, n_control, SEED + 1)
    _, lower, _ = newcombe_arrays(treated, n_treated, control, n_control, z_value(0.95))
    detected = float(np.mean(lower > 0))
    predicted = power(p_control, lift, n_treated, n_control)
    assert abs(detected - predicted) <= 0.10, (detected, predicted)


def test_the_null_campaign_is_rarely_called_a_winner() -> None:
    treated, control = _simulate(0.05, 0.05, 3000, 1500, SEED + 2)
    _, lower, upper = newcombe_arrays(treated, 3000, control, 1500, z_value(0.95))
    assert 0.93 <= float(np.mean((lower <= 0) & (upper >= 0))) <= 0.97
    # The test is two-sided: a false "winner" is about half the error rate.
    assert float(np.mean(lower > 0)) <= 0.04


def test_relative_lift_interval_covers_the_true_ratio() -> None:
    n_treated, n_control, p_control, lift = 3000, 1500, 0.05, 0.02
    treated, control = _simulate(p_control + lift, p_control, n_treated, n_control, SEED + 3)
    truth = (p_control + lift) / p_control - 1
    covered = 0
    for x1, x2 in zip(treated[:1000], control[:1000], strict=True):
        interval = relative_lift(int(x1), n_treated, int(x2), n_control)
        assert interval is not None
        covered += interval.lower <= truth <= interval.upper
    assert 0.93 <= covered / 1000 <= 0.97


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    st.floats(0.01, 0.3),
    st.sampled_from([0.01, 0.02, 0.05]),
    st.integers(500, 50_000),
)
def test_holdout_needed_is_a_size_reaching_80_percent_power(
    base: float, lift: float, n_treated: int
) -> None:
    needed = holdout_needed(base, lift, n_treated)
    if needed is None:
        # Even a huge holdout leaves the treated group's variance too large.
        assert power(base, lift, n_treated, 10**7) < 0.8
        return
    assert power(base, lift, n_treated, needed) >= 0.8
    # Nearly the smallest: power moves in small discrete steps, never by this much.
    assert power(base, lift, n_treated, int(needed * 0.9)) < 0.8


def test_exact_power_is_the_normal_approximation_for_large_groups() -> None:
    assert power(0.05, 0.01, 20000, 20000) == pytest.approx(
        normal_power(0.05, 0.01, 20000, 20000), abs=0.02
    )


def test_verdict_asks_for_more_holdout_customers_with_the_count() -> None:
    result = verdict(450, 9000, 48, 1000)  # 5 % vs 4.8 %: far too few held out
    assert result.text.startswith("not enough data yet: about ")
    assert "more customers in the holdout needed to detect a 1-point lift" in result.text
    assert result.holdout_more is not None
    base = 48 / 1000
    assert power(base, 0.01, 9000, 1000 + result.holdout_more) >= 0.8
    assert power(base, 0.01, 9000, int((1000 + result.holdout_more) * 0.9)) < 0.8


def test_verdict_names_a_detected_lift_and_an_enough_data_null() -> None:
    found = verdict(700, 10000, 250, 5000)  # 7 % vs 5 %
    assert found.text.startswith("the emails made a difference: conversion is higher")
    none = verdict(2500, 50000, 2500, 50000)
    assert none.text.startswith("no lift found")
    assert verdict(0, 0, 3, 10).text.startswith("not enough data yet")


def test_sparse_bootstrap_is_the_plain_bootstrap() -> None:
    """Drawing the number of non-zero touches then which ones equals resampling all."""
    rng_values = np.random.default_rng(1)
    values = rng_values.gamma(2.0, 40.0, 30)
    size, resamples = 400, 20000
    full = np.concatenate([values, np.zeros(size - values.size)])
    plain_rng = np.random.default_rng(2)
    plain = full[plain_rng.integers(0, size, (resamples, size))].mean(axis=1)
    sparse = _bootstrap_means(values, size, resamples, np.random.default_rng(3))
    assert sparse.mean() == pytest.approx(plain.mean(), rel=0.02)
    assert sparse.std() == pytest.approx(plain.std(), rel=0.05)
    assert stats.ks_2samp(sparse, plain).pvalue > 0.001


def test_incremental_revenue_interval_covers_the_truth_and_is_reproducible() -> None:
    rng = np.random.default_rng(SEED + 4)
    n_treated, n_control = 2000, 1000
    p_treated, p_control, mean_order = 0.08, 0.05, 50.0
    truth = (p_treated - p_control) * mean_order * n_treated
    covered = 0
    trials = 300
    for _ in range(trials):
        treated = rng.exponential(mean_order, rng.binomial(n_treated, p_treated))
        control = rng.exponential(mean_order, rng.binomial(n_control, p_control))
        interval = incremental_revenue(
            "EUR",
            [Decimal(f"{v:.2f}") for v in treated],
            n_treated,
            [Decimal(f"{v:.2f}") for v in control],
            n_control,
            resamples=1000,
        )
        assert interval is not None
        covered += interval.lower <= Decimal(f"{truth:.2f}") <= interval.upper
    assert 0.90 <= covered / trials <= 0.98
    again = [Decimal("10.00"), Decimal("25.50")]
    first = incremental_revenue("RON", again, 100, [Decimal("5")], 50)
    assert first == incremental_revenue("RON", again, 100, [Decimal("5")], 50)
    assert first is not None and first.currency == "RON"
    assert first.estimate == Decimal("35.50") - Decimal("5") / 50 * 100
