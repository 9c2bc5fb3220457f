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


def sparsity_claim(gaps: Sequence[tuple[float, Interval]], claimed: float, usable: bool = True) -> SparsityClaim:
    """The written rule for "a matching (relaxed) ticket exists at sparsity s*". ``gaps``: per sparsity run, the
    paired interval over seeds of (sparse − reference) *validation* scores, reference = dense (matching) or
    p · dense (relaxed). Judged at t = min(s*, highest sparsity run) over the sparsities ≤ t (the lowest one when
    none is): contradicted when any of their intervals lies wholly below 0; reproduced when every mean gap is ≥ 0;
    otherwise — or without a usable dense reference (not clearly above chance) — inconclusive."""
    curve = sorted(gaps, key=lambda item: item[0])  # Intervals do not order: sort by sparsity only
    if not curve:
        return SparsityClaim(claimed, claimed, None, "inconclusive")
    tested = min(claimed, curve[-1][0])
    judged = [g for s, g in curve if s <= tested + 1e-9] or [curve[0][1]]
    measured = matching_sparsity([(s, g.mean) for s, g in curve], 0.0)
    if not usable:
        return SparsityClaim(claimed, tested, measured, "inconclusive")
    if any(g.high is not None and g.high < 0 for g in judged):
        verdict_ = "contradicted"
    elif all(g.mean >= 0 for g in judged) and all(g.low is not None for g in judged):
        verdict_ = "reproduced"
    else:
        verdict_ = "inconclusive"
    return SparsityClaim(claimed, tested, measured, verdict_)
