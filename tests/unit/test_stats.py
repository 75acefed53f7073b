"""rollout.stats: known values computed by hand, and seeded simulations of anytime coverage."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from rollout.errors import StatsError
from rollout.latency import LatencyHistogram, bucket_index
from rollout.stats import (
    Interval,
    bernoulli_count_range,
    bernoulli_cs,
    bernoulli_log_e_value,
    difference_cs,
    paired_difference_cs,
    quantile_cs,
    quantile_estimate,
    quantile_ratio_cs,
)

# --- Robbins' mixture: closed forms --------------------------------------------------------


def test_no_data_is_the_whole_unit_interval() -> None:
    assert bernoulli_cs(0, 0, 0.05) == Interval(0.0, 1.0)


def test_all_successes_lower_bound_has_closed_form() -> None:
    # S = n: (n + 1) p^n > alpha  <=>  p > (alpha / (n + 1))^(1/n); n = 10, alpha = 0.05.
    cs = bernoulli_cs(10, 10, 0.05)
    assert cs.upper == 1.0
    assert cs.lower == pytest.approx((0.05 / 11) ** 0.1, abs=1e-9)
    assert cs.lower == pytest.approx(0.583120, abs=1e-6)


def test_no_successes_upper_bound_mirrors_all_successes() -> None:
    cs = bernoulli_cs(0, 10, 0.05)
    assert cs.lower == 0.0
    assert cs.upper == pytest.approx(1 - (0.05 / 11) ** 0.1, abs=1e-9)


def test_one_of_two_solves_a_quadratic() -> None:
    # S = 1, n = 2: 3 * 2 * p (1 - p) > alpha  <=>  p (1 - p) > alpha / 6.
    root = math.sqrt(1 - 4 * 0.05 / 6)
    cs = bernoulli_cs(1, 2, 0.05)
    assert cs.lower == pytest.approx((1 - root) / 2, abs=1e-9)
    assert cs.upper == pytest.approx((1 + root) / 2, abs=1e-9)
    assert cs.lower == pytest.approx(0.008404, abs=1e-6)


def test_bounds_are_rounded_outward() -> None:
    cs = bernoulli_cs(10, 10, 0.05)
    assert cs.lower <= (0.05 / 11) ** 0.1


def test_e_value_is_robbins_statistic() -> None:
    # log M_n(p) = -log((n + 1) C(n, S) p^S (1 - p)^(n - S)), Robbins (1970).
    for successes, trials, p in [(3, 10, 0.2), (7, 7, 0.9), (0, 5, 0.5), (40, 50, 0.97)]:
        robbins = (trials + 1) * math.comb(trials, successes) * p**successes * (1 - p) ** (trials - successes)
        assert bernoulli_log_e_value(successes, trials, p) == pytest.approx(-math.log(robbins))


def test_interval_and_e_value_agree_at_the_bounds() -> None:
    cs = bernoulli_cs(900, 1000, 0.05)
    threshold = math.log(1 / 0.05)
    assert bernoulli_log_e_value(900, 1000, cs.lower) >= threshold - 1e-6
    assert bernoulli_log_e_value(900, 1000, cs.upper) >= threshold - 1e-6
    assert bernoulli_log_e_value(900, 1000, 0.9) < threshold
    assert cs.lower < 0.9 < cs.upper


def test_count_range_matches_brute_force() -> None:
    for trials, p, alpha in [(0, 0.5, 0.05), (1, 0.99, 0.05), (30, 0.3, 0.1), (200, 0.99, 0.025)]:
        accepted = [s for s in range(trials + 1) if bernoulli_log_e_value(s, trials, p) < math.log(1 / alpha)]
        assert bernoulli_count_range(trials, p, alpha) == (min(accepted), max(accepted))


def test_difference_is_a_union_bound_at_half_alpha() -> None:
    a, b = bernoulli_cs(30, 1000, 0.025), bernoulli_cs(10, 2000, 0.025)
    cs = difference_cs(30, 1000, 10, 2000, 0.05)
    assert cs.lower == pytest.approx(a.lower - b.upper)
    assert cs.upper == pytest.approx(a.upper - b.lower)
    assert cs.contains(30 / 1000 - 10 / 2000)


# --- quantiles ------------------------------------------------------------------------------


def _unit_buckets(n: int) -> list[tuple[float, float, int]]:
    """Sample i sits alone in bucket [i, i + 1): order statistics are read off exactly."""
    return [(float(i), float(i + 1), 1) for i in range(n)]


def test_quantile_bounds_are_the_order_statistics_of_the_binomial_band() -> None:
    low, high = bernoulli_count_range(3000, 0.99, 0.05)
    cs = quantile_cs(_unit_buckets(3000), 0.99, 0.05)
    # lower: the low-th order statistic's bucket starts at low - 1; upper: the (high+1)-th ends at high + 1.
    assert cs == Interval(float(low - 1), float(high + 1))
    assert cs.contains(0.99 * 3000)


def test_p99_is_unbounded_above_until_about_a_thousand_samples() -> None:
    assert math.isinf(quantile_cs(_unit_buckets(500), 0.99, 0.05).upper)
    assert math.isfinite(quantile_cs(_unit_buckets(1500), 0.99, 0.05).upper)
    assert quantile_cs([], 0.99, 0.05) == Interval(0.0, math.inf)


def test_quantile_estimate_uses_the_bucket_of_rank_ceil_pn() -> None:
    buckets = [(0.0, 1.0, 50), (1.0, 4.0, 49), (4.0, 9.0, 1)]
    assert quantile_estimate(buckets, 0.99) == pytest.approx(2.0)  # rank 99 -> sqrt(1 * 4)
    assert quantile_estimate(buckets, 0.995) == pytest.approx(6.0)  # rank 100 -> sqrt(4 * 9)
    assert quantile_estimate(buckets, 0.1) == 1.0
    assert quantile_estimate([], 0.99) is None


def test_quantile_ratio_divides_opposite_bounds() -> None:
    slow = [(2.0 * i, 2.0 * i + 2.0, 1) for i in range(3000)]
    a, b = quantile_cs(slow, 0.99, 0.025), quantile_cs(_unit_buckets(3000), 0.99, 0.025)
    cs = quantile_ratio_cs(slow, _unit_buckets(3000), 0.99, 0.05)
    assert cs == Interval(a.lower / b.upper, a.upper / b.lower)
    assert cs.contains(2.0)


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: bernoulli_cs(1, 2, 0.0), "alpha must lie in (0, 1), got 0.0"),
        (lambda: bernoulli_cs(3, 2, 0.05), "successes=3 trials=2"),
        (lambda: bernoulli_log_e_value(1, 2, 1.5), "got 1.5"),
        (lambda: bernoulli_count_range(10, 1.0, 0.05), "p=1.0"),
        (lambda: quantile_cs([(1.0, 2.0, 1), (0.0, 1.0, 1)], 0.99, 0.05), "sorted"),
        (lambda: quantile_cs([], 1.0, 0.05), "got 1.0"),
    ],
)
def test_bad_arguments_raise_stats_error_with_the_numbers(call: Callable[[], object], needle: str) -> None:
    with pytest.raises(StatsError) as raised:
        call()
    assert needle in str(raised.value)


# --- simulations: peeking at every step -----------------------------------------------------


def _crossing_rate_robbins(p: float, streams: int, steps: int, alpha: float, seed: int) -> float:
    rng = np.random.default_rng(seed)
    successes = np.cumsum(rng.random((streams, steps)) < p, axis=1)
    threshold = math.log(1 / alpha)
    crossed = 0
    for row in successes.tolist():
        crossed += any(bernoulli_log_e_value(s, n, p) >= threshold for n, s in enumerate(row, start=1))
    return crossed / streams


def test_robbins_sequence_keeps_coverage_when_checked_at_every_step() -> None:
    # 200 streams x 2000 observations, p inside the interval checked after every observation.
    assert _crossing_rate_robbins(0.97, streams=200, steps=2000, alpha=0.05, seed=7) <= 0.05


def test_robbins_sequence_coverage_at_a_central_mean() -> None:
    # Near p = 1/2 the mixture is at its tightest: the crossing rate is about 0.06 of 0.1.
    assert _crossing_rate_robbins(0.5, streams=200, steps=1000, alpha=0.1, seed=0) <= 0.1


def test_a_fixed_sample_interval_peeked_at_every_step_does_cross_too_often() -> None:
    # The control: the Wald 95 % interval, looked at from n = 30 on, misses far more than 5 %.
    rng = np.random.default_rng(7)
    draws = rng.random((200, 2000)) < 0.5
    n = np.arange(1, 2001)
    means = np.cumsum(draws, axis=1) / n
    half_width = 1.96 * np.sqrt(means * (1 - means) / n)
    missed = (np.abs(means - 0.5) > half_width)[:, 29:].any(axis=1)
    assert missed.mean() > 0.2


def test_quantile_sequence_keeps_coverage_over_many_looks() -> None:
    rng = np.random.default_rng(3)
    mu, sigma = math.log(0.02), 0.5
    true_p99 = math.exp(mu + sigma * 2.3263478740408408)
    crossed = 0
    for _ in range(100):
        samples = rng.lognormal(mu, sigma, 2000).tolist()
        counts: dict[int, int] = {}
        missed = False
        for n, sample in enumerate(samples, start=1):
            index = bucket_index(sample)
            counts[index] = counts.get(index, 0) + 1
            if n % 25 == 0:
                buckets = LatencyHistogram(counts=counts).buckets()
                missed = missed or not quantile_cs(buckets, 0.99, 0.05).contains(true_p99)
        crossed += missed
    assert crossed / 100 <= 0.05


def test_paired_difference_is_linear_in_the_discordance_and_rising_in_the_winner_share() -> None:
    # 30 discordant pairs in 1200, every one won by b: a is worse, and the bound says so.
    cs = paired_difference_cs(only_a=0, only_b=30, pairs=1200, alpha=0.05)
    assert cs.upper < 0 < -cs.lower
    assert paired_difference_cs(0, 0, 0, 0.05) == Interval(-1.0, 1.0)
    even = paired_difference_cs(50, 50, 2000, 0.05)
    assert even.lower < 0 < even.upper and math.isclose(even.lower, -even.upper)


def test_paired_difference_keeps_coverage_over_many_looks() -> None:
    # a right 91 %, b right 90 %, correlated through shared inputs: 4 % discordant, 3 to 1 for a.
    rng = np.random.default_rng(11)
    outcomes = rng.choice(3, size=(200, 3000), p=[0.96, 0.03, 0.01])  # concordant, only a, only b
    truth, crossed = 0.03 - 0.01, 0
    for row in outcomes:
        only_a = np.cumsum(row == 1)
        only_b = np.cumsum(row == 2)
        for n in range(20, 3001, 20):
            cs = paired_difference_cs(int(only_a[n - 1]), int(only_b[n - 1]), n, 0.05)
            if not cs.contains(truth):
                crossed += 1
                break
    assert crossed / 200 <= 0.05


def test_paired_needs_far_fewer_pairs_than_two_unpaired_rates() -> None:
    # A 2.5-point regression where the models otherwise agree: paired sees it in 3000 labels.
    paired = paired_difference_cs(only_a=0, only_b=75, pairs=3000, alpha=0.05)
    unpaired = difference_cs(2625, 3000, 2700, 3000, 0.05)
    assert paired.upper < -0.01 < unpaired.upper
