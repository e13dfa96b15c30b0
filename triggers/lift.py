"""The statistics of a campaign against its holdout: pure functions, no I/O.

* Conversion-rate difference (absolute lift) with Newcombe's hybrid score interval —
  Newcombe, R. G. (1998), "Interval estimation for the difference between independent
  proportions: comparison of eleven methods", Statistics in Medicine 17:873-890,
  method 10: the Wilson score intervals of each rate combined by the square-and-add rule.
  It keeps close to its nominal coverage at the small rates and unequal group sizes of a
  10 % holdout, where the Wald interval does not.
* Relative lift (rate ratio - 1) with the Katz log interval, 0.5 added to every cell when
  a count is zero (Katz et al. 1978).
* Power of the two-sided test of a difference of proportions under the normal
  approximation with unpooled variances (Chow, Shao & Wang, "Sample Size Calculations in
  Clinical Research", §4.2), and the holdout size it needs.
* Incremental revenue: (mean revenue per treated touch - mean per control touch) x treated
  touches, with a percentile bootstrap interval (Efron & Tibshirani 1993, ch. 13) drawn
  from a fixed seed so a report is reproducible.

Rates are fractions in [0, 1]; "points" in texts are percentage points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

NEWCOMBE = "Newcombe hybrid score interval (Wilson-based, method 10)"
KATZ = "Katz log interval of the rate ratio"
BOOTSTRAP = "percentile bootstrap"

FloatArray = npt.NDArray[np.float64]
_STANDARD_NORMAL = NormalDist()


def z_value(confidence: float) -> float:
    """The two-sided standard normal quantile: 1.95996… for 0.95."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), not {confidence}")
    return _STANDARD_NORMAL.inv_cdf(0.5 + confidence / 2)


def wilson_arrays(
    successes: npt.ArrayLike, trials: npt.ArrayLike, z: float
) -> tuple[FloatArray, FloatArray]:
    """Wilson score interval bounds for each (successes, trials); trials must be > 0."""
    x = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    p = x / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def newcombe_arrays(
    x1: npt.ArrayLike, n1: npt.ArrayLike, x2: npt.ArrayLike, n2: npt.ArrayLike, z: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(difference p1 - p2, lower, upper) for arrays of experiments, vectorised."""
    a1, m1 = np.asarray(x1, dtype=np.float64), np.asarray(n1, dtype=np.float64)
    a2, m2 = np.asarray(x2, dtype=np.float64), np.asarray(n2, dtype=np.float64)
    p1, p2 = a1 / m1, a2 / m2
    l1, u1 = wilson_arrays(a1, m1, z)
    l2, u2 = wilson_arrays(a2, m2, z)
    diff = p1 - p2
    lower = np.clip(diff - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), -1.0, 1.0)
    upper = np.clip(diff + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2), -1.0, 1.0)
    return diff, lower, upper


@dataclass(frozen=True, slots=True)
class Interval:
    estimate: float
    lower: float
    upper: float
    method: str

    def excludes_zero(self) -> bool:
        return self.lower > 0 or self.upper < 0


def rate_difference(
    x1: int, n1: int, x2: int, n2: int, confidence: float = 0.95
) -> Interval | None:
    """Absolute lift p1 - p2 (group 1 treated, group 2 control); None if a group is empty."""
    if n1 <= 0 or n2 <= 0:
        return None
    diff, lower, upper = newcombe_arrays(x1, n1, x2, n2, z_value(confidence))
    return Interval(float(diff), float(lower), float(upper), NEWCOMBE)


def relative_lift(x1: int, n1: int, x2: int, n2: int, confidence: float = 0.95) -> Interval | None:
    """p1 / p2 - 1 with the Katz log interval; None if a group is empty or both rates are 0."""
    if n1 <= 0 or n2 <= 0 or (x1 == 0 and x2 == 0):
        return None
    a, b = float(x1), float(x2)
    m1, m2 = float(n1), float(n2)
    if x1 == 0 or x2 == 0 or x1 == n1 or x2 == n2:
        a, b, m1, m2 = a + 0.5, b + 0.5, m1 + 0.5, m2 + 0.5
    log_ratio = math.log((a / m1) / (b / m2))
    se = math.sqrt(1 / a - 1 / m1 + 1 / b - 1 / m2)
    z = z_value(confidence)
    return Interval(
        math.exp(log_ratio) - 1,
        math.exp(log_ratio - z * se) - 1,
        math.exp(log_ratio + z * se) - 1,
        KATZ,
    )


def normal_power(
    p_control: float, lift: float, n_treated: float, n_control: float, confidence: float = 0.95
) -> float:
    """Power of the two-sided test under the normal approximation with unpooled
    variances; good when both groups expect many conversions."""
    p1 = min(max(p_control + lift, 0.0), 1.0)
    p2 = min(max(p_control, 0.0), 1.0)
    variance = p1 * (1 - p1) / n_treated + p2 * (1 - p2) / n_control
    if variance <= 0:
        return 1.0 if lift != 0 else 0.0
    shift = abs(lift) / math.sqrt(variance)
    z = z_value(confidence)
    return _STANDARD_NORMAL.cdf(shift - z) + _STANDARD_NORMAL.cdf(-shift - z)


# Largest (treated outcomes x control outcomes) grid summed exactly (~8 MB of floats per array).
EXACT_GRID_LIMIT = 1_000_000


def _likely_counts(n: int, p: float) -> tuple[npt.NDArray[np.int64], FloatArray]:
    """The binomial(n, p) outcomes holding all but ~1e-12 of the mass, with their pmf."""
    from scipy.stats import binom  # not at import: scipy is slow to load

    low = int(binom.ppf(1e-12, n, p))
    high = int(binom.isf(1e-12, n, p))
    counts = np.arange(max(low - 1, 0), min(high + 1, n) + 1)
    return counts, binom.pmf(counts, n, p)


def power(
    p_control: float, lift: float, n_treated: int, n_control: int, confidence: float = 0.95
) -> float:
    """Probability that the report's interval (Newcombe, two-sided ``confidence``)
    excludes 0 when the treated rate truly is ``p_control + lift``.

    Computed exactly, by summing the Newcombe decision over both groups' binomial
    outcomes, while that grid is small enough; otherwise (large groups, where the
    normal approximation is accurate) by :func:`normal_power`. The normal
    approximation alone overstates the power by several points when the holdout
    expects few conversions."""
    p1 = min(max(p_control + lift, 0.0), 1.0)
    p2 = min(max(p_control, 0.0), 1.0)
    n1, n2 = int(n_treated), int(n_control)
    if n1 <= 0 or n2 <= 0:
        return 0.0
    x1, w1 = _likely_counts(n1, p1)
    x2, w2 = _likely_counts(n2, p2)
    if x1.size * x2.size > EXACT_GRID_LIMIT:
        return normal_power(p_control, lift, n1, n2, confidence)
    _, lower, upper = newcombe_arrays(x1[:, None], n1, x2[None, :], n2, z_value(confidence))
    rejects = (lower > 0) | (upper < 0)
    return float(np.clip((w1[:, None] * w2[None, :] * rejects).sum(), 0.0, 1.0))


def holdout_needed(
    p_control: float,
    lift: float,
    n_treated: int,
    confidence: float = 0.95,
    target_power: float = 0.8,
) -> int | None:
    """The smallest control-group size at which :func:`power` reaches ``target_power``
    given ``n_treated``; None when no control size is enough (the treated group alone
    is too small).

    The normal approximation's answer, from ``p1 q1 / n1 + p2 q2 / n2 = (lift /
    (z_a/2 + z_b))^2``, starts a bisection on the exact power (which moves in small
    steps with n2 as counts are discrete: the answer is the first size found on the
    rising curve)."""
    p1 = min(max(p_control + lift, 0.0), 1.0)
    p2 = min(max(p_control, 0.0), 1.0)
    budget = (abs(lift) / (z_value(confidence) + _STANDARD_NORMAL.inv_cdf(target_power))) ** 2
    room = budget - p1 * (1 - p1) / n_treated
    guess = math.ceil(p2 * (1 - p2) / room) if room > 0 else None
    ceiling = max(4 * (guess or 0), 1000)
    if power(p_control, lift, n_treated, ceiling, confidence) < target_power:
        ceiling = 64 * ceiling
        if power(p_control, lift, n_treated, ceiling, confidence) < target_power:
            return None
    low, high = 1, ceiling  # power(high) >= target; find the smallest such size
    while low < high:
        middle = (low + high) // 2
        if power(p_control, lift, n_treated, middle, confidence) >= target_power:
            high = middle
        else:
            low = middle + 1
    return high


def treated_needed(
    p_control: float,
    lift: float,
    holdout_share: float,
    confidence: float = 0.95,
    target_power: float = 0.8,
) -> int:
    """Total touches (treated + control, control a ``holdout_share`` of them) for
    ``target_power``: what to plan when the treated group is too small as well."""
    p1 = min(max(p_control + lift, 0.0), 1.0)
    p2 = min(max(p_control, 0.0), 1.0)
    budget = (abs(lift) / (z_value(confidence) + _STANDARD_NORMAL.inv_cdf(target_power))) ** 2
    share = min(max(holdout_share, 1e-6), 1 - 1e-6)
    return math.ceil((p1 * (1 - p1) / (1 - share) + p2 * (1 - p2) / share) / budget)


@dataclass(frozen=True, slots=True)
class Verdict:
    text: str
    power: float
    holdout_more: int | None


def verdict(
    x1: int,
    n1: int,
    x2: int,
    n2: int,
    detectable: float = 0.01,
    confidence: float = 0.95,
    target_power: float = 0.8,
) -> Verdict:
    """A plain-language reading of the comparison: a lift found (the interval excludes 0),
    none of ``detectable`` or more (the test had ``target_power`` to find it), or not
    enough data yet with how many more control touches would make it so."""
    points = f"{detectable * 100:g}-point"
    if n1 <= 0 or n2 <= 0:
        return Verdict("not enough data yet: no emails sent or no holdout yet", 0.0, None)
    difference = rate_difference(x1, n1, x2, n2, confidence)
    assert difference is not None
    level = f"{confidence * 100:g} %"
    if difference.excludes_zero():
        direction = "higher" if difference.estimate > 0 else "lower"
        text = (
            f"the emails made a difference: conversion is {direction} by "
            f"{abs(difference.estimate) * 100:.2f} points ({level} CI "
            f"{difference.lower * 100:+.2f} to {difference.upper * 100:+.2f})"
        )
        return Verdict(text, power(x2 / n2, detectable, n1, n2, confidence), None)
    # The base rate from the holdout, never exactly 0 (a rate of 0 has no variance).
    base = max(x2 / n2, 0.5 / n2)
    achieved = power(base, detectable, n1, n2, confidence)
    if achieved >= target_power:
        text = (
            f"no lift found: a {points} lift would have shown with {achieved:.0%} power, "
            f"the {level} CI is {difference.lower * 100:+.2f} to {difference.upper * 100:+.2f}"
        )
        return Verdict(text, achieved, None)
    needed = holdout_needed(base, detectable, n1, confidence, target_power)
    if needed is not None:
        more = max(needed - n2, 1)
        text = (
            f"not enough data yet: about {more:,} more customers in the holdout needed "
            f"to detect a {points} lift (power now {achieved:.0%})"
        )
        return Verdict(text, achieved, more)
    total = treated_needed(base, detectable, n2 / (n1 + n2), confidence, target_power)
    text = (
        f"not enough data yet: about {max(total - n1 - n2, 1):,} more customers in all "
        f"(emailed and holdout, in today's proportion) needed to detect a {points} lift "
        f"(power now {achieved:.0%})"
    )
    return Verdict(text, achieved, None)


@dataclass(frozen=True, slots=True)
class RevenueInterval:
    currency: str
    estimate: Decimal
    lower: Decimal
    upper: Decimal
    method: str


def _bootstrap_means(
    values: FloatArray, size: int, resamples: int, rng: np.random.Generator
) -> FloatArray:
    """Means of ``resamples`` bootstrap samples of ``size`` touches whose non-zero
    revenues are ``values`` (the other touches have 0), vectorised.

    Drawing ``size`` touches with replacement is drawing how many land on a non-zero one
    (binomial) and then which ones (uniform): the same distribution as the plain
    bootstrap, without materialising ``resamples x size`` indices."""
    if size == 0:
        return np.zeros(resamples)
    if values.size == 0:
        return np.zeros(resamples)
    hits = rng.binomial(size, values.size / size, resamples)
    width = int(hits.max()) if hits.size else 0
    if width == 0:
        return np.zeros(resamples)
    picks = rng.integers(0, values.size, (resamples, width))
    mask = np.arange(width)[None, :] < hits[:, None]
    totals: FloatArray = np.where(mask, values[picks], 0.0).sum(axis=1)
    return totals / size


def incremental_revenue(
    currency: str,
    treated_revenues: list[Decimal],
    n_treated: int,
    control_revenues: list[Decimal],
    n_control: int,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 20261129,
) -> RevenueInterval | None:
    """Revenue the emails added in one currency: (mean per treated touch - mean per
    control touch) x treated touches, with a percentile bootstrap interval.

    ``*_revenues`` are the converting touches' revenues (one entry per converting touch);
    the other touches of the group count as 0. None when a group is empty. Amounts are
    rounded to cents for display; the computation runs in floats."""
    if n_treated <= 0 or n_control <= 0:
        return None
    treated = np.array([float(v) for v in treated_revenues], dtype=np.float64)
    control = np.array([float(v) for v in control_revenues], dtype=np.float64)
    estimate = (treated.sum() / n_treated - control.sum() / n_control) * n_treated
    rng = np.random.default_rng(seed)
    draws = (
        _bootstrap_means(treated, n_treated, resamples, rng)
        - _bootstrap_means(control, n_control, resamples, rng)
    ) * n_treated
    tail = (1 - confidence) / 2 * 100
    lower, upper = np.percentile(draws, [tail, 100 - tail])
    cents = Decimal("0.01")
    return RevenueInterval(
        currency,
        Decimal(str(float(estimate))).quantize(cents),
        Decimal(str(float(lower))).quantize(cents),
        Decimal(str(float(upper))).quantize(cents),
        f"{BOOTSTRAP}, {resamples} resamples, seed {seed}",
    )
