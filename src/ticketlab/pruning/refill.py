"""Structured IMP (Chen et al., ICML 2022, "Coarsening the Granularity"): each round's unstructured mask is
turned into one a dense kernel can run, then rewound and retrained as usual (``prune.structure``).

``channel_refill`` (IMP-Refill): channels are ranked by how many of their weights the unstructured round kept
(the paper's "remain" criterion); the best channels are re-filled whole, the rest dropped. Chen et al. refill
each layer's output channels on their own; here the channels are the coupled groups of Torch-Pruning's graph
(``pruning.coupled``), so a refilled ticket can be slimmed physically — residual streams included. Each group
keeps channels in proportion to the share of its weights the unstructured round kept (IMP's own layer-wise
allocation), scaled so that the mask reaches the round's sparsity (overshooting by less than one channel).
Weights outside exact groups keep the previous round's mask.

``regroup`` (IMP-Regroup): every prunable weight, viewed as [rows, columns], is cut into blocks of
``REGROUP_ROWS`` consecutive rows; each block keeps the columns where the unstructured round kept the most of its
weights, as many as make up the block's kept count — a dense [rows × columns] block on gathered inputs. Chen et
al. find the row groups by hypergraph partitioning; fixed consecutive row blocks are a simplification that keeps
masks nested across rounds. ticketlab ships no group-wise kernel, so a regrouped ticket runs densely here (its
masks and sparsity are real; its speed needs such a kernel).
"""

from __future__ import annotations

from typing import Any

import torch

from ticketlab.errors import ConfigError
from ticketlab.masks import Mask
from ticketlab.pruning.base import STRUCTURES, target_pruned_count
from ticketlab.pruning.coupled import ChannelGroup, groups_of
from ticketlab.pruning.coupled_channel import Chunk, group_chunks, remove_channels, usable_groups

REGROUP_ROWS = 8


def refill_order(usable: list[ChannelGroup], unstructured: Mask, current: Mask, multiple: int = 1) -> list[Chunk]:
    """Runs of channels in the order they go: a group with density d keeps λ·d of its channels as λ falls."""
    queue: list[Chunk] = []
    for index, group in enumerate(usable):
        kept, total = group.per_channel(unstructured.tensors)  # weights the unstructured round kept, of all
        density = max(float(kept.sum() / total.sum().clamp(min=1)), 1e-12)
        queue += group_chunks(index, group, group.alive(current.tensors), lambda c, k=kept: (float(k[c]), c),
                              lambda left, d=density, n=group.channels: -left / (d * n), multiple)
    return sorted(queue, key=lambda chunk: (chunk[0], chunk[1]))


def channel_refill(unstructured: Mask, current: Mask, sparsity: float, model: Any, multiple: int = 1) -> Mask:
    """IMP-Refill: the channels where the unstructured round kept most weights are refilled whole, the rest go."""
    usable = usable_groups(groups_of(model), current)
    keep = {n: t.clone() for n, t in current.tensors.items()}
    need = target_pruned_count(sparsity, current.num_total()) - current.num_pruned()
    if remove_channels(usable, keep, refill_order(usable, unstructured, current, multiple), need) > 0:
        raise ConfigError(f"refilled channel tickets can prune at most {Mask(keep).sparsity():.1%} of these prunable "
                          "weights (one channel per group stays); lower the schedule's last sparsity")
    return Mask(keep)


def _regroup_tensor(kept: torch.Tensor, current: torch.Tensor, rows: int) -> torch.Tensor:
    matrix, now = kept.flatten(1), current.flatten(1)
    out = torch.zeros_like(now)
    for start in range(0, matrix.shape[0], rows):
        block = matrix[start:start + rows]
        columns = int(round(float(block.sum()) / block.shape[0]))
        if columns:
            counts = block.sum(0).double() + now[start:start + rows].all(0).double() * 1e-3  # ties: still-dense
            chosen = torch.argsort(counts, descending=True, stable=True)[:columns]
            out[start:start + rows, chosen] = True
    return (out & now).view_as(current)  # never regrow what an earlier round removed


def regroup(unstructured: Mask, current: Mask, sparsity: float, model: Any, multiple: int = 1) -> Mask:
    """IMP-Regroup: blocks of 8 rows keep the columns where the round kept most weights (dense blocks)."""
    return Mask({n: _regroup_tensor(unstructured.tensors[n], current.tensors[n], REGROUP_ROWS)
                 for n in current.names()})


STRUCTURES.register("channel_refill")(channel_refill)
STRUCTURES.register("regroup")(regroup)
