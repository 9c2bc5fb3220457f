"""Channel groups coupled through the model's graph, found by Torch-Pruning's dependency graph.

A *coupled group* is every slice that must go when one channel goes: the output rows of all convolutions that
write a channel (for a residual stream: the stem or shortcut and every block's last convolution), the matching
BatchNorm entries, and the input columns of every layer that reads it (the next blocks' first convolutions, the
next stage's shortcut, the task head). Torch-Pruning traces the graph (additions, concatenations, reshapes) and
lists the groups; ticketlab keeps those it can mask *exactly*:

- every convolution / linear in the group is among the prunable weights (rows or columns masked), except the
  model's task head, whose columns read a globally pooled channel: a dead channel there is a constant, folded
  into the head's bias when the ticket is slimmed;
- no member normalises across channels (LayerNorm, GroupNorm) — a masked channel would still shift its
  neighbours' statistics, so the masked model and the slim one would differ. BatchNorm is per channel: a dead
  channel's BatchNorm shift reaches only readers whose columns are masked.

So the masked model (what IMP trains and evaluates) computes exactly what the slimmed one does.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ticketlab.errors import ConfigError

PER_CHANNEL = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.ReLU, nn.Identity, nn.Dropout)
WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class Slice:
    """Positions along one dimension of a weight (0: output rows, 1: input columns) and the group channel of each."""

    name: str
    dim: int
    index: torch.Tensor
    channel: torch.Tensor

    def rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` (a view) with the slice's dimension first, so ``rows(t)[index]`` are the slice's positions."""
        return tensor if self.dim == 0 else tensor.transpose(0, 1)


@dataclass(frozen=True)
class ChannelGroup:
    """One coupled group: its root layer (where Torch-Pruning starts), channel count and slices."""

    root: str
    channels: int
    slices: tuple[Slice, ...]
    folded: tuple[Slice, ...]  # head columns reading the group: folded into the head's bias, never masked
    exact: bool  # False when a member normalises across channels (LayerNorm, GroupNorm, custom modules)

    def maskable(self, names: set[str]) -> bool:
        return self.exact and all(s.name in names for s in self.slices) and any(s.dim == 0 for s in self.slices)

    def _touched(self, keep: dict[str, torch.Tensor], slices: list[Slice] | tuple[Slice, ...]) -> torch.Tensor:
        """Channels with a kept weight in any of ``slices``."""
        out = torch.zeros(self.channels, dtype=torch.bool)
        for s in slices:
            out[s.channel[s.rows(keep[s.name])[s.index].flatten(1).any(1)]] = True
        return out

    def alive(self, keep: dict[str, torch.Tensor]) -> torch.Tensor:
        """Which channels still write anything (read on the group's output rows)."""
        return self._touched(keep, [s for s in self.slices if s.dim == 0])

    def removable(self, keep: dict[str, torch.Tensor]) -> torch.Tensor:
        """Channels with no kept weight in any slice: removing them changes nothing the masked model computes."""
        return ~self._touched(keep, self.slices)

    def per_channel(self, tensors: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per channel, over all of the group's slices: the sum of |values| of its weights (float64; a mask's kept
        count) and how many weights it has."""
        total = torch.zeros(self.channels, dtype=torch.float64)
        count = torch.zeros(self.channels, dtype=torch.float64)
        for s in self.slices:
            values = s.rows(tensors[s.name].detach())[s.index].flatten(1).double().abs()
            total.index_add_(0, s.channel, values.sum(1))
            count.index_add_(0, s.channel, torch.full((len(s.index),), float(values.shape[1]), dtype=torch.float64))
        return total, count

    def kill(self, keep: dict[str, torch.Tensor], channels: torch.Tensor) -> int:
        """Mask every slice position of ``channels`` in ``keep`` (in place); returns how many weights that masked."""
        dead = torch.zeros(self.channels, dtype=torch.bool)
        dead[channels] = True
        masked = 0
        for s in self.slices:
            positions = s.index[dead[s.channel]]
            view = s.rows(keep[s.name])
            masked += int(view[positions].sum())
            view[positions] = False
        return masked


def example_input(model: nn.Module) -> torch.Tensor:
    """A seeded image batch at the model's input size (Hugging Face config ``image_size``, else 32 px)."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise ConfigError("coupled channel groups need a convolutional model; for transformers use head_ffn_* methods")
    size = 32
    for module in model.modules():
        config = getattr(module, "config", None)
        if isinstance(getattr(config, "image_size", None), int):
            size = config.image_size
            break
    return torch.randn(2, first.in_channels, size, size, generator=torch.Generator().manual_seed(0))


def dependency_graph(model: nn.Module):  # noqa: ANN201 - torch_pruning's DependencyGraph
    """Torch-Pruning's dependency graph of ``model``, traced on a seeded example batch."""
    import torch_pruning as tp

    example = example_input(model)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    except Exception as exc:  # noqa: BLE001 - any tracing failure becomes one line naming the model
        raise ConfigError(f"Torch-Pruning cannot trace {type(model).__name__} for coupled channel groups "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else exc!r}); use an "
                          "unstructured method or channel_* (inner convolutions only)") from None
    finally:
        model.train(was_training)


def coupled_groups(model: nn.Module, graph: Any = None) -> list[ChannelGroup]:
    """Every channel group of ``model`` with its slices; ``maskable(names)`` says which ones a mask may prune.
    Transformers are refused: their heads need the head count (``head_ffn_*`` groups them by module names)."""
    if getattr(model, "family", "cnn") == "transformer":
        raise ConfigError("coupled channel groups are for convolutional models; for transformers use head_ffn_magnitude "
                          "or head_ffn_random (whole attention heads and FFN neurons)")
    graph = graph or dependency_graph(model)
    names = {module: path for path, module in model.named_modules()}
    head = getattr(model, "head", None)
    head_modules = set(head.modules()) if isinstance(head, nn.Module) else set()
    groups = []
    for group in graph.get_all_groups(root_module_types=WEIGHTED):
        root = group[0].dep.target.module
        slices, folded, exact = [], [], True
        for item in group:
            module, handler = item.dep.target.module, item.dep.handler
            if not isinstance(module, nn.Module) or module not in names:
                exact = exact and not isinstance(module, nn.Parameter)
                continue  # traced functional ops (add, relu, reshape) carry no weights
            is_out = graph.is_out_channel_pruning_fn(handler)
            if isinstance(module, WEIGHTED):
                piece = Slice(f"{names[module]}.weight", 0 if is_out else 1, torch.tensor(item.idxs, dtype=torch.long),
                              torch.tensor(item.root_idxs, dtype=torch.long))
                reads_pooled = not is_out and isinstance(module, nn.Linear) and module in head_modules
                (folded if reads_pooled else slices).append(piece)
            elif not isinstance(module, PER_CHANNEL) and any(True for _ in module.parameters(recurse=False)):
                exact = False
        groups.append(ChannelGroup(names[root], int(graph.get_out_channels(root)), tuple(slices), tuple(folded),
                                   exact))
    return groups


_GROUPS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[Any, ...], list[ChannelGroup]]] = weakref.WeakKeyDictionary()


def groups_of(model: nn.Module) -> list[ChannelGroup]:
    """``coupled_groups(model)``, traced once per architecture: IMP prunes every round, and an early-bird round
    draws a mask every few steps, from the same model structure (re-traced if its parameter shapes change)."""
    shapes = tuple((name, tuple(p.shape)) for name, p in model.named_parameters())
    cached = _GROUPS.get(model)
    if cached is None or cached[0] != shapes:
        cached = (shapes, coupled_groups(model))
        _GROUPS[model] = cached
    return cached[1]
