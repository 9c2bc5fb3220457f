"""Coupled channel tickets (``coupled_channel_magnitude`` / ``coupled_channel_random``): whole channel groups of
Torch-Pruning's dependency graph (``pruning.coupled``) — residual streams included — pruned together.

A channel's score is the mean of the method's weight scores (|w| or uniform noise) over every weight of its group
(the writers' rows and the readers' columns). Channels go in order of their rank *within* their group, normalised
by the group's size — every group loses the same fraction of its channels, as Torch-Pruning's local pruning does —
so FLOPs fall about as fast as weights (a global ranking would strip the weight-heavy last stage and keep the
FLOP-heavy first one). Within a group the lowest scores go first; each round removes channels until the prunable
set reaches the round's target (overshooting by less than one channel's weights; the recorded sparsity is the
mask's own). Every group keeps at least one channel. Groups the mask cannot prune exactly (see
``pruning.coupled``) and weights outside any group stay dense.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from ticketlab.errors import ConfigError
from ticketlab.masks import Mask
from ticketlab.pruning.base import PRUNING_METHODS, PruningMethod, check_sparsity, target_pruned_count
from ticketlab.pruning.coupled import ChannelGroup, groups_of
from ticketlab.pruning.magnitude import magnitude_scores
from ticketlab.pruning.random import random_scores


def channel_scores(group: ChannelGroup, scores: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean |score| of each channel's weights over all of the group's slices."""
    total, count = group.per_channel(scores)
    return total / count.clamp(min=1)


def usable_groups(groups: list[ChannelGroup], current: Mask) -> list[ChannelGroup]:
    names = set(current.names())
    usable = [g for g in groups if g.maskable(names) and g.channels > 1]
    if not usable:
        raise ConfigError("coupled channel tickets found no channel group the mask can prune exactly among the "
                          f"prunable weights (first: {current.names()[0] if current.names() else 'none'}); groups "
                          "through LayerNorm/GroupNorm or non-prunable layers stay dense — use an unstructured method")
    return usable


Chunk = tuple[float, int, list[int]]  # (sort key, group index, channels that go together)


def group_chunks(index: int, group: ChannelGroup, alive: torch.Tensor, rank: Callable[[int], Any],
                 key: Callable[[int], float], multiple: int) -> list[Chunk]:
    """A group's live channels in the order they go (``rank``: lowest first), cut into runs after each of which
    the number of live channels is a multiple of ``multiple`` (CPU/GPU kernels are fastest on such widths; groups
    narrower than two multiples use 1). At least that many channels stay. Each run is keyed by ``key(channels
    left after it)``."""
    step = multiple if group.channels >= 2 * multiple else 1
    live = sorted(torch.nonzero(alive).flatten().tolist(), key=rank)
    ranked, out, start = live[: max(len(live) - step, 0)], [], 0
    while start < len(ranked):
        end = min(start + ((len(live) - start) % step or step), len(ranked))
        out.append((key(len(live) - end), index, ranked[start:end]))
        start = end
    return out


def kill_order(usable: list[ChannelGroup], keep: dict[str, torch.Tensor], channel_score: list[torch.Tensor],
               multiple: int = 1) -> list[Chunk]:
    """Runs of channels in the order they go: by the fraction of its group gone after the run, then group."""
    queue: list[Chunk] = []
    for index, (group, score) in enumerate(zip(usable, channel_score, strict=True)):
        queue += group_chunks(index, group, group.alive(keep), lambda c, s=score: (float(s[c]), c),
                              lambda left, n=group.channels: (n - left) / n, multiple)
    return sorted(queue, key=lambda chunk: (chunk[0], chunk[1]))


def remove_channels(usable: list[ChannelGroup], keep: dict[str, torch.Tensor], order: list[Chunk],
                    need: int) -> int:
    """Kill runs of channels in ``order`` until ``need`` more weights are masked; returns what is still needed."""
    for _, index, channels in order:
        if need <= 0:
            break
        need -= usable[index].kill(keep, torch.tensor(channels))
    return need


def coupled_select(scores: Mapping[str, torch.Tensor], current: Mask, sparsity: float,
                   groups: list[ChannelGroup], multiple: int = 1) -> Mask:
    check_sparsity(sparsity)
    usable = usable_groups(groups, current)
    keep = {n: t.clone() for n, t in current.tensors.items()}
    order = kill_order(usable, keep, [channel_scores(g, scores) for g in usable], multiple)
    need = target_pruned_count(sparsity, current.num_total()) - current.num_pruned()
    if remove_channels(usable, keep, order, need) > 0:
        most = Mask(keep).sparsity()
        raise ConfigError(f"coupled channel tickets can prune at most {most:.1%} of these prunable weights (one "
                          "channel per group stays; weights outside exact groups stay dense); lower the schedule's "
                          "last sparsity")
    return Mask(keep)


PRUNING_METHODS.register("coupled_channel_magnitude")(PruningMethod(magnitude_scores, "coupled_channel",
                                                                     coupled_select, structure=groups_of))
PRUNING_METHODS.register("coupled_channel_random")(PruningMethod(random_scores, "coupled_channel", coupled_select,
                                                                  structure=groups_of))
