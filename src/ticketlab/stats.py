"""Statistics every report uses: confidence intervals, paired differences, the matching-sparsity rule.

- ``mean_ci``: mean with a Student-t 95 % interval over seeds (t, not bootstrap: with 2–5 seeds a bootstrap
  interval is too narrow); one value has no interval.
- ``paired_ci``: the same for per-seed differences of two methods that share seeds.
- ``matching_sparsity``: the highest sparsity s such that *every* sparsity ≤ s reaches the threshold — a late
  single lucky round does not count. Reports decide it on validation scores and then show test scores there.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float | None  # None: fewer than two values
    high: float | None
    n: int

    def __str__(self) -> str:
        if self.low is None or self.high is None:
            return f"{100 * self.mean:.2f} % (n = {self.n}, no interval)"
        return f"{100 * self.mean:.2f} % [{100 * self.low:.2f}, {100 * self.high:.2f}] (95 % CI, n = {self.n})"


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean and Student-t confidence interval of independent runs (e.g. one per seed)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_ci of no values")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return Interval(mean, None, None, len(values))
    from scipy.stats import t

    half = t.ppf(0.5 + confidence / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return Interval(mean, mean - half, mean + half, len(values))


def paired_ci(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Interval:
    """Interval of the mean difference a − b over pairs that share a seed."""
    if len(a) != len(b):
        raise ValueError(f"paired_ci needs pairs: {len(a)} vs {len(b)} values")
    return mean_ci([x - y for x, y in zip(a, b, strict=True)], confidence)


def matching_sparsity(curve: Sequence[tuple[float, float]], threshold: float) -> float | None:
    """Highest sparsity whose score, and the score of every lower sparsity, reaches ``threshold``; ``None`` when
    the lowest already misses it. ``curve``: (sparsity, score) of the sparse models."""
    best = None
    for sparsity, score in sorted(curve):
        if score < threshold:
            break
        best = sparsity
    return best


def clearly_above(interval: Interval, chance: float) -> bool:
    """The written rule for a usable dense reference: its interval's lower end (its mean, for one run) is above
    chance."""
    low = interval.low if interval.low is not None else interval.mean
    return low > chance


def verdict(measured: Interval, claim: float, chance: float | None = None) -> str:
    """Reproduced when the claimed value lies inside the measured interval or below it (the claim holds at least),
    contradicted when the whole interval is below the claim, inconclusive without an interval or at chance."""
    if chance is not None and not clearly_above(measured, chance):
        return "inconclusive"
    if measured.low is None or measured.high is None:
        return "inconclusive"
    return "contradicted" if measured.high < claim else "reproduced"


def gap_verdict(gap: Interval | None, usable: bool = True) -> str:
    """The written rule for a claim "A beats B": reproduced when the paired 95 % interval of (A − B) lies above 0,
    contradicted when it lies below 0, inconclusive when it straddles 0, has fewer than 2 seeds, or a model it
    compares is not usable (not clearly above chance)."""
    if gap is None or gap.low is None or gap.high is None or not usable:
        return "inconclusive"
    return "reproduced" if gap.low > 0 else "contradicted" if gap.high < 0 else "inconclusive"


def interval_text(interval: Interval | None, signed: bool = False) -> str:
    """'67.20 [65.10, 69.30]' in percent (points when ``signed``); the one way reports print an interval."""
    if interval is None:
        return "–"
    fmt = "{:+.2f}" if signed else "{:.2f}"
    if interval.low is None or interval.high is None:
        return f"{fmt.format(100 * interval.mean)} (n = 1)"
    return f"{fmt.format(100 * interval.mean)} [{fmt.format(100 * interval.low)}, {fmt.format(100 * interval.high)}]"


@dataclass(frozen=True)
class SparsityClaim:
    claimed: float  # the paper's matching (or relaxed) sparsity
    tested: float  # the sparsity the claim is judged at: min(claimed, highest sparsity run)
    measured: float | None  # highest s such that every sparsity ≤ s has a mean validation gap ≥ 0
    verdict: str


def sparsity_claim(gaps: Sequence[tuple[float, Interval]], claimed: float, usable: bool = True,
                   margin: float = 0.0) -> SparsityClaim:
    """The written rule for "a matching (relaxed) ticket exists at sparsity s*", an equivalence (non-inferiority)
    test with margin δ = ``margin``. ``gaps``: per sparsity run, the paired 95 % interval over seeds of (sparse −
    reference) *validation* scores, reference = dense (matching) or p · dense (relaxed). Over every sparsity ≤ s*
    that was run: reproduced when every interval's lower end is ≥ −δ; contradicted when some interval's upper end
    is < −δ; otherwise — or without a usable dense reference — inconclusive. A claim above the highest sparsity
    run is "not tested" (never a verdict)."""
    if margin < 0:
        raise ValueError(f"a claim's margin must be >= 0, got {margin}")
    curve = sorted(gaps, key=lambda item: item[0])  # Intervals do not order: sort by sparsity only
    if not curve:
        return SparsityClaim(claimed, claimed, None, "inconclusive")
    tested = min(claimed, curve[-1][0])
    measured = matching_sparsity([(s, g.mean) for s, g in curve], 0.0)
    if claimed > curve[-1][0] + 1e-9:
        return SparsityClaim(claimed, tested, measured, "not tested")
    judged = [g for s, g in curve if s <= tested + 1e-9]
    if not usable:
        return SparsityClaim(claimed, tested, measured, "inconclusive")
    if any(g.high is not None and g.high < -margin for g in judged):
        verdict_ = "contradicted"
    elif all(g.low is not None and g.low >= -margin for g in judged):
        verdict_ = "reproduced"
    else:
        verdict_ = "inconclusive"
    return SparsityClaim(claimed, tested, measured, verdict_)


def _t(q: float, df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(q, df))


def spread(interval: Interval) -> float | None:
    """The standard deviation over seeds behind a Student-t 95 % interval (None without one)."""
    if interval.low is None or interval.high is None or interval.n < 2:
        return None
    return (interval.high - interval.low) / 2 * math.sqrt(interval.n) / _t(0.975, interval.n - 1)


def minimum_detectable_effect(interval: Interval, power: float = 0.8) -> float | None:
    """The smallest true gap a 95 % interval over this many seeds, at this spread, detects with ``power``."""
    sd = spread(interval)
    if sd is None:
        return None
    n = interval.n
    return (_t(0.975, n - 1) + _t(power, n - 1)) * sd / math.sqrt(n)


def seeds_needed(interval: Interval, margin: float, power: float = 0.8, most: int = 1000) -> int | None:
    """Seeds for the interval to clear −``margin`` (either way) with ``power``, if the true gap is the observed mean
    and the spread the observed one; None without an interval, or when more than ``most`` would be needed."""
    sd, distance = spread(interval), abs(interval.mean + margin)
    if sd is None:
        return None
    for n in range(2, most + 1):
        if (_t(0.975, n - 1) + _t(power, n - 1)) * sd / math.sqrt(n) <= distance:
            return n
    return None


def holm(pvalues: Sequence[float], alpha: float = 0.05) -> list[bool]:
    """Holm's step-down rule: which hypotheses of one family are rejected at family-wise error ``alpha`` (in the
    input order). The smallest p is compared with alpha/m, the next with alpha/(m−1), … until one fails."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    rejected = [False] * len(pvalues)
    for rank, i in enumerate(order):
        if pvalues[i] > alpha / (len(pvalues) - rank):
            break
        rejected[i] = True
    return rejected


def paired_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p-value of the paired t-test of a − b (None with fewer than 2 pairs or no spread)."""
    from scipy.stats import ttest_rel

    if len(a) < 2:
        return None
    p = float(ttest_rel(list(a), list(b)).pvalue)
    return None if math.isnan(p) else p


def drop_claim(drop: Interval, most: float) -> str:
    """The rule for "the average drop is at most d": reproduced when the interval's upper end is ≤ d, contradicted
    when its lower end is > d, otherwise inconclusive."""
    if drop.low is None or drop.high is None:
        return "inconclusive"
    return "reproduced" if drop.high <= most else "contradicted" if drop.low > most else "inconclusive"


def converged(val_curve: Sequence[float], tolerance: float = 0.01) -> bool:
    """Whether a training converged: validation did not improve by more than ``tolerance`` over the last quarter of
    its epochs (best of the last quarter vs best before it; fewer than 4 epochs: judged on the last epoch)."""
    if len(val_curve) < 2:
        return False
    cut = max(1, len(val_curve) - max(1, len(val_curve) // 4))
    return max(val_curve[cut:]) - max(val_curve[:cut]) <= tolerance
