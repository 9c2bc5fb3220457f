"""N:M (semi-structured) tickets: in every group of M consecutive weights along a layer's input dimension at
most M − N are pruned, so the final mask keeps exactly N of every M (2:4 runs on sparse tensor cores).

IMP-compatible: each round prunes the lowest-scoring weights *globally* among those still allowed (the M − N
lowest of their group, already-pruned weights counted first), so rounds nest, every sparsity is exact, and a
round at sparsity 1 − N/M yields the exact pattern. Higher sparsities are rejected.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ticketlab.errors import ConfigError
from ticketlab.masks import Mask
from ticketlab.pruning.base import PRUNING_METHODS, PruningMethod, check_sparsity, target_pruned_count
from ticketlab.pruning.magnitude import magnitude_scores
from ticketlab.pruning.random import random_scores


def groups(tensor: torch.Tensor, m: int, name: str) -> torch.Tensor:
    """The tensor as rows of M consecutive input weights ([out, in, ...] flattened per output unit)."""
    per_output = tensor.reshape(tensor.shape[0], -1) if tensor.dim() > 1 else tensor.reshape(1, -1)
    if per_output.shape[1] % m:
        raise ConfigError(f"the {m}-weight groups of an N:M pattern do not divide {name!r} (input width "
                          f"{per_output.shape[1]}); exclude it with prune.prunable.exclude or use another method")
    return per_output.reshape(-1, m)


def nm_select(n: int, m: int):  # noqa: ANN201
    def select(scores: Mapping[str, torch.Tensor], current: Mask, sparsity: float) -> Mask:
        check_sparsity(sparsity)
        if sparsity > 1 - n / m + 1e-12:
            raise ConfigError(f"an {n}:{m} ticket keeps {n} of every {m} weights, so its sparsity is at most "
                              f"{1 - n / m:.0%}; lower the schedule's last sparsity")
        if current.sparsity() > sparsity + 1e-12:
            raise ConfigError(f"target sparsity {sparsity:.4f} is below the current mask's {current.sparsity():.4f}")
        eligible, flat_scores, keeps = [], [], []
        for name in current.names():
            keep = groups(current.tensors[name], m, name)
            score = groups(scores[name].detach().cpu().double(), m, name).masked_fill(~keep, -torch.inf)
            rank = score.argsort(dim=1, stable=True).argsort(dim=1, stable=True)  # 0 = lowest in its group
            eligible.append((rank < m - n).flatten())
            flat_scores.append(score.flatten())
            keeps.append(keep.flatten())
        allowed, score, keep = torch.cat(eligible), torch.cat(flat_scores), torch.cat(keeps)
        to_prune = target_pruned_count(sparsity, len(keep)) - int((~keep).sum())
        candidates = torch.where(allowed & keep, score, torch.inf)
        order = torch.argsort(candidates, stable=True)[: max(to_prune, 0)]
        new = keep.clone()
        new[order] = False
        out, offset = {}, 0
        for name in current.names():
            size = current.tensors[name].numel()
            out[name] = new[offset : offset + size].view_as(current.tensors[name])
            offset += size
        return Mask(out)

    return select


for _n, _m in ((2, 4), (1, 4), (4, 8)):
    PRUNING_METHODS.register(f"nm_{_n}_{_m}_magnitude")(PruningMethod(magnitude_scores, f"nm_{_n}_{_m}",
                                                                    nm_select(_n, _m)))
    PRUNING_METHODS.register(f"nm_{_n}_{_m}_random")(PruningMethod(random_scores, f"nm_{_n}_{_m}", nm_select(_n, _m)))
