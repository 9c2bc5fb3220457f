"""The one analysis layer (pure functions over masks and scores): highest matching / relaxed sparsity,
overlap between tickets, mask perturbations, transfer summaries. Used by the CLI, the run report and
every study; the perturbation *training* lives in :func:`ticketlab.transfer.perturbation_sensitivity`."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ticketlab.errors import MaskMismatchError
from ticketlab.results import score
from ticketlab.stats import Interval, matching_sparsity, mean_ci, paired_ci

if TYPE_CHECKING:  # torch only where masks are perturbed: reports and `ticketlab show` import this module
    import torch

    from ticketlab.masks import Mask


def _overlap_counts(a: Mask, b: Mask) -> dict[str, tuple[int, int, int, int, int]]:
    """Per layer: (kept by both, kept by either, kept by ``a``, kept by ``b``, weights)."""
    if a.fingerprint() != b.fingerprint():
        raise MaskMismatchError("masks cover different parameters; compare tickets of the same architecture")
    return {name: (int((x & y).sum()), int((x | y).sum()), int(x.sum()), int(y.sum()), x.numel())
            for name in a.names() for x, y in [(a.tensors[name], b.tensors[name])]}


def _overlap_from(counts: dict[str, tuple[int, int, int, int, int]], swap: bool = False) -> dict[str, Any]:
    """Measured IoU / shared fraction, and what two independent random masks with the same per-layer keep counts
    give in expectation (``chance_*``): in a layer of n weights keeping k_a and k_b, E|a ∩ b| = k_a k_b / n, so
    E|a ∪ b| = k_a + k_b − k_a k_b / n; the chance IoU is the ratio of the summed expectations (exact for the
    shared fraction, whose denominator is fixed; within 0.5 pt of simulated pairs for layers of hundreds of
    weights)."""
    def ratio(num: float, den: float) -> float:
        return num / den if den else 1.0

    per_layer, totals, chance = {}, [0, 0, 0], [0.0, 0.0]
    for name, (inter, union, kept_a, kept_b, n) in counts.items():
        kept = kept_b if swap else kept_a
        both = kept_a * kept_b / n if n else 0.0
        per_layer[name] = {"iou": ratio(inter, union), "shared": ratio(inter, kept),
                           "chance_iou": ratio(both, kept_a + kept_b - both)}
        totals = [totals[0] + inter, totals[1] + union, totals[2] + kept]
        chance = [chance[0] + both, chance[1] + kept_a + kept_b - both]
    return {"iou": ratio(totals[0], totals[1]), "shared": ratio(totals[0], totals[2]), "per_layer": per_layer,
            "chance_iou": ratio(chance[0], chance[1]), "chance_shared": ratio(chance[0], totals[2])}


def overlap(a: Mask, b: Mask) -> dict[str, Any]:
    """IoU of the kept weights and the fraction of ``a``'s kept weights that ``b`` also keeps; overall and per layer."""
    return _overlap_from(_overlap_counts(a, b))


def _choose(positions: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    import torch

    return positions[torch.randperm(len(positions), generator=gen)[: round(fraction * len(positions))]]


def perturb(mask: Mask, kind: str, seed: int = 0) -> Mask:
    """``complement``; ``random`` (a random mask of equal sparsity, global); ``delta10`` (flip 10 % of ones and zeros)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    if kind == "complement":
        return mask.complement()
    flat = mask.flat()
    if kind == "random":
        new = torch.zeros_like(flat)
        new[torch.randperm(len(flat), generator=gen)[: int(flat.sum())]] = True
    elif kind == "delta10":
        new = flat.clone()
        new[_choose(torch.nonzero(flat).flatten(), 0.1, gen)] = False
        new[_choose(torch.nonzero(~flat).flatten(), 0.1, gen)] = True
    else:
        raise ValueError(f"unknown perturbation {kind!r}; known: complement, random, delta10")
    return mask.with_flat(new)


PERTURBATIONS = ("complement", "random", "delta10")


def highest_sparsity(curve: Iterable[tuple[float, float]], threshold: float) -> float | None:
    """The highest sparsity s whose score and every lower sparsity's reach ``threshold`` (``stats.matching_sparsity``:
    one contiguous rule everywhere); ``None`` when none does. ``curve``: (sparsity, score) of the sparse models."""
    return matching_sparsity(list(curve), threshold)


def at_chance(score: float, chance: float | None, n: int | None) -> bool:
    """The written rule for "at chance": the score is within two binomial standard errors of the majority-class
    rate of the same test set (``chance``), i.e. not clearly above it."""
    if chance is None or not n:
        return False
    return score <= chance + 2 * math.sqrt(chance * (1 - chance) / n)


def overlap_matrix(masks: dict[str, Mask]) -> dict[tuple[str, str], dict[str, Any]]:
    """:func:`overlap` for every ordered pair of labelled masks (each unordered pair counted once)."""
    names = list(masks)
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for i, a in enumerate(names):
        for b in names[i:]:
            counts = _overlap_counts(masks[a], masks[b])
            out[(a, b)] = _overlap_from(counts)
            out[(b, a)] = _overlap_from(counts, swap=True)
    return out


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    values = list(values)
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _seed_of(row: dict[str, Any], index: int) -> int:
    return int(row.get("seed", row.get("spec", {}).get("seed", index)))


def summarize_transfer(rows: list[dict[str, Any]], relaxed: float = 0.99, within_std: bool = False) -> dict[str, Any]:
    """Per (source, target, round): test mean ± std and 95 % interval over seeds, validation mean, per-seed scores;
    per (source, target) the highest matching / relaxed sparsity; per source the universal-ticket sparsity.

    Matching: every sparsity up to s has mean *validation* score ≥ dense mean (≥ dense mean − dense std with
    ``within_std``, as Chen et al. did); relaxed: ≥ ``relaxed`` × dense mean. Dense is round 0 of the same
    (source, target). Rows without a validation score are judged on test. Test scores are reported there.
    """
    grouped: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[(row["source"], row["target"], row["round"])].append(row)
    cells = {}
    for key, group in grouped.items():
        mean, std = mean_std(score(r) for r in group)
        val = {_seed_of(r, i): score(r, "val") for i, r in enumerate(group)}
        cells[key] = {"mean": mean, "std": std, "n": len(group), "sparsity": group[0]["sparsity"],
                      "chance_test": group[0].get("chance_test"), "n_test": group[0].get("n_test"),
                      "converged": all(r.get("converged", True) for r in group),
                      "ci": mean_ci([score(r) for r in group]), "val_mean": statistics.fmean(val.values()),
                      "val_std": mean_std(val.values())[1], "val": val,
                      "test": {_seed_of(r, i): score(r) for i, r in enumerate(group)}}
    pairs: dict[tuple[str, str], dict[str, Any]] = {}
    for (source, target, k), dense in cells.items():
        if k != 0:
            continue
        threshold = dense["val_mean"] - (dense["val_std"] if within_std else 0.0)
        sparse = [(c["sparsity"], c["val_mean"]) for (s, t, kk), c in cells.items() if (s, t) == (source, target)
                  and kk > 0]
        pairs[(source, target)] = {"dense": dense, "matching": highest_sparsity(sparse, threshold),
                                   "relaxed": highest_sparsity(sparse, relaxed * dense["val_mean"])}
    universal: dict[str, dict[str, float | None]] = {}
    for source in sorted({s for s, _ in pairs}):
        mine = [(t, p) for (s, t), p in pairs.items() if s == source]
        out: dict[str, float | None] = {}
        for kind in ("matching", "relaxed"):  # the contiguous rule on the worst target at each sparsity
            bests = [p[kind] for _, p in mine]
            out[kind] = None if not bests or any(b is None for b in bests) else min(bests)
        universal[source] = out
    criterion = ("matching = mean validation ≥ dense mean − 1 std (Chen et al.)" if within_std
                 else "matching = mean validation ≥ dense mean")
    return {"cells": cells, "pairs": pairs, "universal": universal,
            "criterion": f"{criterion} at every sparsity up to it; relaxed = ≥ {relaxed:.0%} of dense; test "
                         "scores reported there"}


def paired_gaps(cells: dict[tuple[str, str, int], dict[str, Any]], source: str, target: str,
                factor: float = 1.0) -> list[tuple[float, Interval]]:
    """Per sparse round of (source, target): the paired interval over seeds of (sparse − factor × dense)
    validation scores, the input of ``stats.sparsity_claim``."""
    dense = cells[(source, target, 0)]["val"]
    out = []
    for (s, t, k), cell in sorted(cells.items()):
        if (s, t) != (source, target) or k == 0:
            continue
        seeds = sorted(set(cell["val"]) & set(dense))
        if seeds:
            out.append((cell["sparsity"], paired_ci([cell["val"][i] for i in seeds],
                                                    [factor * dense[i] for i in seeds])))
    return out


def sensitivity_table(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per source and variant: mean, std and sparsity of the rows of :func:`perturbation_sensitivity`."""
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        grouped[row["source"]][row["variant"]].append(row)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for source, variants in grouped.items():
        out[source] = {}
        for variant, group in variants.items():
            mean, std = mean_std(score(r) for r in group)
            out[source][variant] = {"mean": mean, "std": std, "sparsity": group[0]["sparsity"]}
    return out
