"""Structured (channel) tickets for residual CNNs: whole output channels of a block's *inner* convolutions
(``layerN.i.conv1`` of a basic block; ``conv1`` and ``conv2`` of a bottleneck) are pruned by the mean |w| of
their filter, so that ``ticketlab.surgery.slim`` can remove them physically (the next convolution loses the
matching input channels) and the exported model has fewer FLOPs on any hardware.

A pruned channel's filter and the next convolution's weights that read it are both masked, so the mask counts
every weight the surgery removes and the masked model equals the slimmed one exactly (the channel's BatchNorm
shift reaches no one). Inside IMP, each round prunes the globally lowest-scoring live channels (at least one
channel stays per layer) until the prunable set reaches the round's target; whole channels overshoot the target
by less than one channel's weights, so the recorded sparsity is the mask's own. Convolutions whose outputs join
the residual stream (the block's last conv, shortcuts) keep every output channel: that keeps the surgery exact
without a dependency graph, and caps the reachable sparsity (an error names it).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ticketlab.errors import ConfigError
from ticketlab.masks import Mask
from ticketlab.pruning.base import PRUNING_METHODS, PruningMethod, check_sparsity, target_pruned_count
from ticketlab.pruning.magnitude import magnitude_scores
from ticketlab.pruning.random import random_scores


def next_conv(name: str, names: list[str] | set[str]) -> str | None:
    """The convolution that reads ``name``'s output channels inside the same block, if ``name`` is inner."""
    prefix, _, conv = name.removesuffix(".weight").rpartition(".")
    following = {"conv1": "conv2", "conv2": "conv3"}.get(conv)
    if following is None or f"{prefix}.{following}.weight" not in names:
        return None
    return f"{prefix}.{following}.weight"


def inner_convs(names: list[str]) -> list[str]:
    return [n for n in names if ".layer" in f".{n}" and next_conv(n, set(names)) is not None]


def channel_select(scores: Mapping[str, torch.Tensor], current: Mask, sparsity: float) -> Mask:
    check_sparsity(sparsity)
    names = current.names()
    inner = inner_convs(names)
    if not inner:
        raise ConfigError(f"channel pruning needs residual blocks with inner convolutions (layerN.i.conv1); none among "
                          f"the prunable weights (first: {names[0] if names else 'none'}); use an unstructured method")
    keep = {n: t.clone() for n, t in current.tensors.items()}
    candidates = []
    for name in inner:
        alive = keep[name].flatten(1).any(1)
        score = scores[name].detach().abs().flatten(1).mean(1)
        candidates += [(float(score[c]), name, c) for c in torch.nonzero(alive).flatten().tolist()]
    need = target_pruned_count(sparsity, current.num_total()) - current.num_pruned()
    live = {n: int(keep[n].flatten(1).any(1).sum()) for n in inner}
    for _, name, c in sorted(candidates, key=lambda t: (t[0], t[1], t[2])):
        if need <= 0:
            break
        if live[name] <= 1:
            continue  # a layer keeps at least one channel
        reader = next_conv(name, set(names))
        need -= int(keep[name][c].sum()) + int(keep[reader][:, c].sum())
        keep[name][c] = False
        keep[reader][:, c] = False  # the reading conv ignores the channel: exact even with a BatchNorm shift
        live[name] -= 1
    if need > 0:
        reachable = sum((current.tensors[n][0].numel() + current.tensors[next_conv(n, set(names))][:, 0].numel())
                        * (current.tensors[n].shape[0] - 1) for n in inner)
        raise ConfigError(f"channel tickets can prune at most {reachable / current.num_total():.1%} of these prunable "
                          f"weights (only inner block convolutions are pruned); lower the schedule's last sparsity")
    return Mask(keep)


PRUNING_METHODS.register("channel_magnitude")(PruningMethod(magnitude_scores, "channel", channel_select))
PRUNING_METHODS.register("channel_random")(PruningMethod(random_scores, "channel", channel_select))
