"""Mask analyses: overlap between tickets, perturbations for sensitivity tests, transfer summaries."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch

from ticketlab.errors import MaskMismatchError
from ticketlab.masks import Mask


def overlap(a: Mask, b: Mask) -> dict[str, Any]:
    """IoU of the kept weights and the fraction of ``a``'s kept weights that ``b`` also keeps; overall and per layer."""
    if a.fingerprint() != b.fingerprint():
        raise MaskMismatchError("masks cover different parameters; compare tickets of the same architecture")

    def stats(x: torch.Tensor, y: torch.Tensor) -> tuple[int, int, int]:
        return int((x & y).sum()), int((x | y).sum()), int(x.sum())

    per_layer = {}
    inter = union = kept = 0
    for name in a.names():
        i, u, k = stats(a.tensors[name], b.tensors[name])
        per_layer[name] = {"iou": i / u if u else 1.0, "shared": i / k if k else 1.0}
        inter, union, kept = inter + i, union + u, kept + k
    return {"iou": inter / union if union else 1.0, "shared": inter / kept if kept else 1.0, "per_layer": per_layer}


def _choose(positions: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    return positions[torch.randperm(len(positions), generator=gen)[: round(fraction * len(positions))]]


def perturb(mask: Mask, kind: str, seed: int = 0) -> Mask:
    """``complement``; ``random`` (a random mask of equal sparsity, global); ``delta10`` (flip 10 % of ones and zeros)."""
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


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    values = list(values)
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize_transfer(rows: list[dict[str, Any]], relaxed: float = 0.99, within_std: bool = False) -> dict[str, Any]:
    """Mean ± std per (source, target, round); per (source, target) the highest matching / relaxed sparsity;
    per source the universal-ticket sparsity (matching / relaxed on every target).

    Matching: mean ≥ dense mean (or ≥ dense mean − dense std with ``within_std``, as Chen et al. did).
    Relaxed: mean ≥ ``relaxed`` × dense mean. Dense is round 0 of the same (source, target).
    """
    grouped: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[(row["source"], row["target"], row["round"])].append(row)
    cells = {}
    for key, group in grouped.items():
        mean, std = mean_std(r["test_acc"] for r in group)
        cells[key] = {"mean": mean, "std": std, "n": len(group), "sparsity": group[0]["sparsity"]}
    pairs: dict[tuple[str, str], dict[str, Any]] = {}
    for (source, target, k), cell in cells.items():
        if k != 0:
            continue
        dense = cell
        threshold = dense["mean"] - (dense["std"] if within_std else 0.0)
        sparse = [(c["sparsity"], c["mean"]) for (s, t, kk), c in cells.items() if (s, t) == (source, target) and kk > 0]
        matching = [s for s, m in sparse if m >= threshold]
        relaxed_ok = [s for s, m in sparse if m >= relaxed * dense["mean"]]
        pairs[(source, target)] = {"dense": dense, "matching": max(matching, default=None),
                                   "relaxed": max(relaxed_ok, default=None),
                                   "matching_set": sorted(matching), "relaxed_set": sorted(relaxed_ok)}
    universal: dict[str, dict[str, float | None]] = {}
    for source in sorted({s for s, _ in pairs}):
        mine = [p for (s, _), p in pairs.items() if s == source]
        out: dict[str, float | None] = {}
        for kind in ("matching", "relaxed"):
            common = set.intersection(*(set(p[f"{kind}_set"]) for p in mine)) if mine else set()
            out[kind] = max(common, default=None)
        universal[source] = out
    criterion = ("matching = mean ≥ dense mean − 1 std (Chen et al.)" if within_std else "matching = mean ≥ dense mean")
    return {"cells": cells, "pairs": pairs, "universal": universal,
            "criterion": f"{criterion}; relaxed = mean ≥ {relaxed:.0%} of dense mean"}
