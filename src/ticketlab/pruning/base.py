"""Exact top-k selection shared by every pruning method."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ticketlab.errors import ConfigError
from ticketlab.masks import Mask
from ticketlab.registry import Registry

Scorer = Callable[[Mapping[str, torch.Tensor], torch.Generator], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class PruningMethod:
    """How to score weights, and whether the sparsity is reached globally or in every layer."""

    scorer: Scorer
    scope: str  # "global" | "layerwise" | a pattern's name (then ``select`` reaches the sparsity)
    select: Callable[..., Mask] | None = None  # (scores, current, sparsity[, structure]) -> Mask
    structure: Callable[[Any], Any] | None = None  # model -> what ``select`` needs to know of it (heads, blocks)


PRUNING_METHODS: Registry[PruningMethod] = Registry("pruning method")
# prune.structure: (unstructured mask of the round, current mask, sparsity, model) -> a structured mask
Refinement = Callable[[Mask, Mask, float, Any], Mask]
STRUCTURES: Registry[Refinement] = Registry("prune structure")


def check_sparsity(sparsity: float) -> float:
    if not (isinstance(sparsity, int | float) and 0.0 <= float(sparsity) < 1.0) or math.isnan(sparsity):
        raise ConfigError(f"sparsity {sparsity!r} is out of range; use a fraction in [0, 1), e.g. 0.8 for 80 %")
    return float(sparsity)


def target_pruned_count(sparsity: float, total: int) -> int:
    """Number of zeros a set of ``total`` weights has at ``sparsity`` (round half up)."""
    return int(math.floor(check_sparsity(sparsity) * total + 0.5))


def _layer_allocation(sizes: list[int], sparsity: float) -> list[int]:
    """Per-layer zero counts, each floor or ceil of s*n_l, summing exactly to the global target (largest remainder)."""
    exact = [sparsity * n for n in sizes]
    counts = [math.floor(e) for e in exact]
    missing = target_pruned_count(sparsity, sum(sizes)) - sum(counts)
    order = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: max(missing, 0)]:
        counts[i] += 1
    return counts


def _keep_top(scores: torch.Tensor, keep: torch.Tensor, num_keep: int) -> torch.Tensor:
    """Boolean keep-mask of the ``num_keep`` highest scores among currently kept entries (stable ties)."""
    flat = torch.where(keep.flatten(), scores.flatten().double(), torch.tensor(-math.inf, dtype=torch.float64))
    order = torch.argsort(flat, descending=True, stable=True)
    result = torch.zeros(flat.numel(), dtype=torch.bool)
    result[order[:num_keep]] = True
    return result.view_as(keep)


def select_to_sparsity(
    scores: Mapping[str, torch.Tensor], current: Mask, sparsity: float, scope: str = "global"
) -> Mask:
    """Prune the lowest-scoring kept weights until the prunable set has exactly the target zero count."""
    check_sparsity(sparsity)
    names = current.names()
    missing = [n for n in names if n not in scores]
    if missing:
        raise ConfigError(f"no weights given for masked parameter {missing[0]!r}")
    if current.sparsity() > sparsity + 1e-12:
        raise ConfigError(
            f"target sparsity {sparsity:.4f} is below the current mask's {current.sparsity():.4f}; "
            "pruning never regrows weights, so use an increasing schedule"
        )
    if scope == "global":
        keep_flat = current.flat()
        score_flat = torch.cat([scores[n].detach().cpu().flatten().double() for n in names])
        num_keep = keep_flat.numel() - target_pruned_count(sparsity, keep_flat.numel())
        return current.with_flat(_keep_top(score_flat, keep_flat, num_keep))
    if scope == "layerwise":
        sizes = [current.tensors[n].numel() for n in names]
        out = {}
        for n, size, zeros in zip(names, sizes, _layer_allocation(sizes, sparsity), strict=True):
            already = int((~current.tensors[n]).sum())
            out[n] = _keep_top(scores[n].detach().cpu(), current.tensors[n], size - max(zeros, already))
        return Mask(out)
    raise ConfigError(f"unknown pruning scope {scope!r}; allowed: global, layerwise")


def check_structure(method: str, structure: str) -> None:
    """A structure refines the mask of an unstructured method; structured and N:M methods have their own."""
    STRUCTURES.get(structure)
    if PRUNING_METHODS.get(method).scope not in ("global", "layerwise"):
        raise ConfigError(f"prune.structure {structure!r} refines an unstructured method's mask, but {method!r} is "
                          "already structured (channels, heads or N:M); use global_magnitude or layerwise_magnitude")


def check_multiple(method: str, structure: str, multiple: int) -> None:
    if not isinstance(multiple, int) or multiple < 1:
        raise ConfigError(f"prune.channel_multiple must be a whole number >= 1, got {multiple!r}")
    if multiple != 1 and PRUNING_METHODS.get(method).scope != "coupled_channel" and structure != "channel_refill":
        raise ConfigError(f"prune.channel_multiple applies to coupled_channel_* methods and prune.structure "
                          f"channel_refill; {method!r} with structure {structure!r} has no channel counts to round")


def prune(
    method: str,
    weights: Mapping[str, torch.Tensor],
    current: Mask,
    sparsity: float,
    generator: torch.Generator | None = None,
    model: Any = None,
    structure: str = "none",
    multiple: int = 1,
) -> Mask:
    """Pure pruning step: (trained weights, current mask, target sparsity) -> new mask. ``structure`` (e.g.
    ``channel_refill``) turns the unstructured mask of the round into a structured one (``pruning.refill``);
    ``multiple`` keeps channel counts multiples of it (coupled channel and refilled tickets)."""
    spec = PRUNING_METHODS.get(method)
    check_multiple(method, structure, multiple)
    if structure != "none":
        check_structure(method, structure)
    generator = generator or torch.Generator().manual_seed(0)
    scores = spec.scorer({n: weights[n] for n in current.names()}, generator)
    if structure != "none":
        if model is None:
            raise ConfigError(f"prune.structure {structure!r} needs the model's structure; pass model=")
        unstructured = select_to_sparsity(scores, current, sparsity, spec.scope)
        return STRUCTURES.get(structure)(unstructured, current, sparsity, model, multiple)
    if spec.select is not None and spec.structure is not None:
        if model is None:
            raise ConfigError(f"pruning method {method!r} needs the model's structure; pass model=")
        extra = {"multiple": multiple} if multiple != 1 else {}
        return spec.select(scores, current, sparsity, spec.structure(model), **extra)
    if spec.select is not None:
        return spec.select(scores, current, sparsity)
    return select_to_sparsity(scores, current, sparsity, spec.scope)
