"""Anytime-valid statistics for the rollout gates (pure: counts in, intervals out).

The controller looks at the evidence on every tick, thousands of times per rollout. A
fixed-sample interval peeked at that often crosses its true value far more often than alpha
(tests/unit/test_stats.py measures it), so every bound here is a *confidence sequence*: with
probability >= 1 - alpha it holds at every sample size simultaneously, however often it is read.

Methods, and exactly what is anytime-valid:

1. `bernoulli_cs` — Robbins' uniform-mixture confidence sequence for a Bernoulli mean
   (H. Robbins 1970, "Statistical methods related to the law of the iterated logarithm",
   Ann. Math. Statist. 41(5):1397-1409; the beta-binomial mixture of Howard, Ramdas,
   McAuliffe & Sekhon 2021, "Time-uniform, nonparametric, nonasymptotic confidence
   sequences", Ann. Statist. 49(2):1055-1080, with a Beta(1, 1) prior). With S successes in
   n trials, the mixture likelihood ratio against p is

       M_n(p) = B(S + 1, n - S + 1) / (p^S (1 - p)^(n - S))
              = 1 / ((n + 1) C(n, S) p^S (1 - p)^(n - S)),

   a nonnegative martingale with M_0 = 1 when the trials are i.i.d. Bernoulli(p). Ville's
   inequality gives P(exists n: M_n(p) >= 1/alpha) <= alpha, so {p : M_n(p) < 1/alpha} is a
   (1 - alpha) confidence sequence. It depends on (S, n) only, so pooled counts suffice.
   Anytime-valid: exactly, for i.i.d. trials (constant success probability). If the true
   rate drifts (traffic mix changes), the guarantee is about no fixed p and is heuristic.
2. `difference_cs` — p1 - p2 for two independent streams: a union bound over two Robbins
   sequences at alpha/2 each, [L1 - U2, U1 - L2]. Anytime-valid, jointly over both sample
   sizes (any interleaving of the streams), under the same i.i.d. assumption; conservative.
3. `quantile_cs` — the fixed-quantile confidence sequence of Howard & Ramdas (2022,
   "Sequential estimation of quantiles with applications to A/B-testing and best-arm
   identification", Bernoulli 28(3):1704-1728): for i.i.d. X and q = inf{x: F(x) >= p},
   the indicators 1{X_i < q} and 1{X_i <= q} are Bernoulli with means <= p and >= p, so a
   time-uniform band [c_lo(n), c_hi(n)] for a Binomial(n, p) count (here: the counts that
   Robbins' sequence above accepts at p) turns into order statistics that bracket q. We read
   the order statistics off a bucketed histogram and round outward to bucket edges, which
   only widens the interval. Anytime-valid: yes, for i.i.d. latencies; not under load drift,
   which is why latency evidence is kept per stage (see evidence.py).
4. `quantile_ratio_cs` — q_a / q_b by a union bound over two quantile sequences at alpha/2.
5. `paired_difference_cs` — the accuracy difference of two models judged on the same inputs:
   with d = P(they disagree on correctness) and q = P(the first is the right one | they
   disagree), the difference is d (2q - 1). A Robbins sequence for d over all pairs and one for
   q over the discordant pairs only (the discordant pairs of an i.i.d. stream are themselves an
   i.i.d. Bernoulli(q) stream, whenever one looks), alpha/2 each, bound it. Concordant pairs
   only tighten d, so when the models mostly agree this needs far fewer labels than two
   unpaired rates (McNemar's idea, made anytime-valid).

Not here, and not anytime-valid: the cost gate's plain ratio of means after a minimum sample
count (gates.py says so), and the fast-rollback trip wire, a circuit breaker, not a test.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rollout.errors import StatsError

Bucket = tuple[float, float, int]
"""(lower edge, upper edge, count): `count` samples x with lower <= x < upper."""

_BISECTION_STEPS = 200
_TOLERANCE = 1e-12


@dataclass(frozen=True)
class Interval:
    """A closed interval; `upper` is `math.inf` when the data do not bound it yet."""

    lower: float
    upper: float

    def contains(self, value: float) -> bool:
        return self.lower <= value <= self.upper


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise StatsError(f"alpha must lie in (0, 1), got {alpha}")


def _check_counts(successes: int, trials: int) -> None:
    if trials < 0 or not 0 <= successes <= trials:
        raise StatsError(f"need 0 <= successes <= trials, got successes={successes} trials={trials}")


def _log_mixture(successes: int, trials: int) -> float:
    """log B(S + 1, n - S + 1) = -log((n + 1) C(n, S)): the uniform-prior marginal likelihood."""
    failures = trials - successes
    return math.lgamma(successes + 1) + math.lgamma(failures + 1) - math.lgamma(trials + 2)


def _log_likelihood(successes: int, trials: int, p: float) -> float:
    """log(p^S (1 - p)^(n - S)), with 0 log 0 = 0 so that p = 0 and p = 1 are allowed."""
    failures = trials - successes
    total = 0.0
    if successes:
        total += successes * math.log(p) if p > 0.0 else -math.inf
    if failures:
        total += failures * math.log1p(-p) if p < 1.0 else -math.inf
    return total


def bernoulli_log_e_value(successes: int, trials: int, p: float) -> float:
    """log M_n(p), Robbins' mixture martingale (module docstring, method 1).

    An e-process for H0: mean = p. p lies outside the (1 - alpha) sequence exactly when this
    is >= log(1/alpha).
    """
    _check_counts(successes, trials)
    if not 0.0 <= p <= 1.0:
        raise StatsError(f"p must lie in [0, 1], got {p}")
    return _log_mixture(successes, trials) - _log_likelihood(successes, trials, p)


def _bisect(inside: Callable[[float], bool], good: float, bad: float) -> float:
    """The boundary between `good` (inside) and `bad` (outside); returns the outer, safe end."""
    for _ in range(_BISECTION_STEPS):
        if abs(good - bad) <= _TOLERANCE:
            break
        middle = (good + bad) / 2.0
        if inside(middle):
            good = middle
        else:
            bad = middle
    return bad


def bernoulli_cs(successes: int, trials: int, alpha: float) -> Interval:
    """Robbins' (1970) uniform-mixture confidence sequence for a Bernoulli mean at level 1 - alpha.

    {p : (n + 1) C(n, S) p^S (1 - p)^(n - S) > alpha}; an interval around S/n because the
    log-likelihood is concave in p. No data (n = 0) gives [0, 1].
    """
    _check_alpha(alpha)
    _check_counts(successes, trials)
    if trials == 0:
        return Interval(0.0, 1.0)
    level = _log_mixture(successes, trials) + math.log(alpha)

    def inside(p: float) -> bool:
        return _log_likelihood(successes, trials, p) > level

    estimate = successes / trials
    lower = 0.0 if successes == 0 else _bisect(inside, estimate, 0.0)
    upper = 1.0 if successes == trials else _bisect(inside, estimate, 1.0)
    return Interval(lower, upper)


def bernoulli_count_range(trials: int, p: float, alpha: float) -> tuple[int, int]:
    """The success counts S in [0, n] whose Robbins sequence at level 1 - alpha still contains p.

    This is the time-uniform binomial band that `quantile_cs` turns into order statistics.
    The accepted set is an integer interval (log-concave in S) around the binomial mode,
    where (n + 1) * pmf >= 1 > alpha, so the interval is never empty.
    """
    _check_alpha(alpha)
    if trials < 0 or not 0.0 < p < 1.0:
        raise StatsError(f"need trials >= 0 and p in (0, 1), got trials={trials} p={p}")
    log_alpha = math.log(alpha)

    def inside(count: int) -> bool:
        return _log_likelihood(count, trials, p) - _log_mixture(count, trials) > log_alpha

    mode = min(trials, math.floor((trials + 1) * p))
    return _farthest_inside(inside, mode, 0), _farthest_inside(inside, mode, trials)


def _farthest_inside(inside: Callable[[int], bool], good: int, end: int) -> int:
    """The accepted count farthest from `good` towards `end` (integer bisection)."""
    if inside(end):
        return end
    bad = end
    while abs(bad - good) > 1:
        middle = (good + bad) // 2
        if inside(middle):
            good = middle
        else:
            bad = middle
    return good


def difference_cs(successes_a: int, trials_a: int, successes_b: int, trials_b: int, alpha: float) -> Interval:
    """Confidence sequence for p_a - p_b (module docstring, method 2: union bound, alpha/2 each)."""
    _check_alpha(alpha)
    a = bernoulli_cs(successes_a, trials_a, alpha / 2.0)
    b = bernoulli_cs(successes_b, trials_b, alpha / 2.0)
    return Interval(a.lower - b.upper, a.upper - b.lower)


def paired_difference_cs(only_a: int, only_b: int, pairs: int, alpha: float) -> Interval:
    """Confidence sequence for P(a right) - P(b right) from paired outcomes (method 5):
    `only_a` pairs where only a was right, `only_b` where only b was, out of `pairs`."""
    _check_alpha(alpha)
    discordant = only_a + only_b
    _check_counts(discordant, pairs)
    d = bernoulli_cs(discordant, pairs, alpha / 2.0)
    q = bernoulli_cs(only_a, discordant, alpha / 2.0)
    low, high = 2.0 * q.lower - 1.0, 2.0 * q.upper - 1.0  # d (2q - 1) is linear in d, rising in q
    return Interval(min(d.lower * low, d.upper * low), max(d.lower * high, d.upper * high))


def _total(buckets: Sequence[Bucket]) -> int:
    previous_upper = -math.inf
    total = 0
    for lower, upper, count in buckets:
        if lower < previous_upper or upper < lower or count < 0:
            raise StatsError(f"buckets must be sorted, disjoint and non-negative; got {buckets!r}")
        previous_upper = upper
        total += count
    return total


def quantile_cs(buckets: Sequence[Bucket], p: float, alpha: float) -> Interval:
    """Howard & Ramdas (2022) fixed-quantile confidence sequence for the p-quantile.

    With [c_lo, c_hi] = `bernoulli_count_range(n, p, alpha)`: the lower bound is the lower
    edge of the first bucket whose cumulative count reaches c_lo (0 when c_lo = 0), the upper
    bound the upper edge of the first bucket whose cumulative count exceeds c_hi (inf when
    none does: for p = 0.99 and alpha = 0.05 that takes about a thousand samples).
    """
    if not 0.0 < p < 1.0:
        raise StatsError(f"quantile level p must lie in (0, 1), got {p}")
    total = _total(buckets)
    low_count, high_count = bernoulli_count_range(total, p, alpha)
    lower, upper = 0.0, math.inf
    cumulative = 0
    for bucket_lower, bucket_upper, count in buckets:
        before, cumulative = cumulative, cumulative + count
        if low_count >= 1 and before < low_count <= cumulative:
            lower = bucket_lower
        if before <= high_count < cumulative:
            upper = bucket_upper
            break
    return Interval(lower, upper)


def quantile_estimate(buckets: Sequence[Bucket], p: float) -> float | None:
    """Point estimate of the p-quantile: geometric middle of the bucket holding rank ceil(p n)."""
    total = _total(buckets)
    if total == 0:
        return None
    rank = max(1, math.ceil(p * total))
    cumulative = 0
    for lower, upper, count in buckets:
        cumulative += count
        if cumulative >= rank:
            if lower <= 0.0:
                return upper
            return lower if math.isinf(upper) else math.sqrt(lower * upper)
    raise AssertionError("unreachable: rank <= total")


def _ratio(numerator: float, denominator: float) -> float:
    if denominator > 0.0:
        return numerator / denominator
    return math.inf if numerator > 0.0 else 0.0


def quantile_ratio_cs(buckets_a: Sequence[Bucket], buckets_b: Sequence[Bucket], p: float, alpha: float) -> Interval:
    """Confidence sequence for q_a / q_b (module docstring, method 4: union bound, alpha/2 each)."""
    _check_alpha(alpha)
    a = quantile_cs(buckets_a, p, alpha / 2.0)
    b = quantile_cs(buckets_b, p, alpha / 2.0)
    return Interval(_ratio(a.lower, b.upper), _ratio(a.upper, b.lower))
