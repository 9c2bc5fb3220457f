"""Structured tickets for transformers: whole attention heads and whole FFN neurons, by group magnitude.

A head is the rows of Q, K and V that produce it plus the columns of the output projection that read it; an FFN
neuron is one row of the first FFN linear plus one column of the second. Groups are ranked globally by the mean
|w| of their weights (heads and neurons together); each round removes the lowest until the prunable set reaches
the round's sparsity (overshooting by less than one group), keeping at least one head and one neuron per layer.
Layers are found by their module names — BERT/RoBERTa/MiniLM (``query``/``key``/``value`` + ``output.dense``;
``intermediate.dense`` + ``output.dense``), ViT/DeiT (``q_proj``…``o_proj``; ``mlp.fc1``/``fc2``), DistilBERT
(``q_lin``…``out_lin``; ``ffn.lin1``/``lin2``); any other prunable weight stays dense. ``ticketlab.surgery``
slices the pruned groups away, so the exported model is smaller and faster on any hardware.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ticketlab.errors import ConfigError
from ticketlab.masks import Mask
from ticketlab.pruning.base import PRUNING_METHODS, PruningMethod, check_sparsity, target_pruned_count
from ticketlab.pruning.magnitude import magnitude_scores
from ticketlab.pruning.random import random_scores

ATTENTION = (("q_proj", "k_proj", "v_proj", "o_proj"), ("q_lin", "k_lin", "v_lin", "out_lin"))
FFN = (("fc1", "fc2"), ("lin1", "lin2"))


@dataclass(frozen=True)
class Block:
    """One attention (``kind='head'``) or FFN (``kind='neuron'``): its producer weights (sliced along rows) and
    consumer weight (sliced along columns), and the size of one group."""

    kind: str
    producers: tuple[str, ...]
    consumer: str
    size: int  # rows per group: the head dimension, or 1 for a neuron

    def alive(self, keep: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Which of the block's groups still keep a weight (read on its first producer)."""
        return _group_view(keep[self.producers[0]], 0, self.size).any(1)


def _linear(root: nn.Module, path: str) -> nn.Linear | None:
    try:
        module = root.get_submodule(path)
    except AttributeError:
        return None
    return module if isinstance(module, nn.Linear) else None


def _heads(model: nn.Module) -> int | None:
    for module in model.modules():
        config = getattr(module, "config", None)
        for key in ("num_attention_heads", "n_heads"):
            if isinstance(getattr(config, key, None), int):
                return getattr(config, key)
    return None


def transformer_blocks(model: nn.Module) -> list[Block]:
    """Every attention and FFN of ``model`` whose heads / neurons can be removed as a unit."""
    heads = _heads(model)
    blocks: list[Block] = []
    for path, module in model.named_modules():
        names = dict(module.named_children())
        prefix = f"{path}." if path else ""
        for q, k, v, o in ATTENTION:
            if all(isinstance(names.get(n), nn.Linear) for n in (q, k, v, o)) and heads:
                size = names[q].out_features // heads
                blocks.append(Block("head", tuple(f"{prefix}{n}.weight" for n in (q, k, v)), f"{prefix}{o}.weight", size))
        if all(isinstance(names.get(n), nn.Linear) for n in ("query", "key", "value")) and heads:
            out = f"{path.rsplit('.', 1)[0]}.output.dense"
            if _linear(model, out) is not None:
                size = names["query"].out_features // heads
                blocks.append(Block("head", tuple(f"{prefix}{n}.weight" for n in ("query", "key", "value")),
                                    f"{out}.weight", size))
        for first, second in FFN:
            if isinstance(names.get(first), nn.Linear) and isinstance(names.get(second), nn.Linear):
                blocks.append(Block("neuron", (f"{prefix}{first}.weight",), f"{prefix}{second}.weight", 1))
        if _linear(model, f"{prefix}intermediate.dense") is not None and _linear(model, f"{prefix}output.dense"):
            blocks.append(Block("neuron", (f"{prefix}intermediate.dense.weight",), f"{prefix}output.dense.weight", 1))
    return blocks


def _group_view(tensor: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """``tensor`` as [groups, -1]: rows (dim 0) or columns (dim 1) cut into groups of ``size``."""
    t = tensor if dim == 0 else tensor.t()
    return t.reshape(t.shape[0] // size, -1)


def head_select(scores: Mapping[str, torch.Tensor], current: Mask, sparsity: float, blocks: list[Block]) -> Mask:
    check_sparsity(sparsity)
    names = set(current.names())
    usable = [b for b in blocks if all(n in names for n in (*b.producers, b.consumer))]
    if not usable:
        raise ConfigError("head/FFN tickets need attention or FFN layers among the prunable weights (BERT, ViT or "
                          f"DistilBERT module names); none found (first prunable: {sorted(names)[0]}); use an "
                          "unstructured method")
    keep = {n: t.clone() for n, t in current.tensors.items()}
    candidates = []
    for index, block in enumerate(usable):
        parts = [(n, 0) for n in block.producers] + [(block.consumer, 1)]
        magnitude = sum(_group_view(scores[n].detach().abs().double(), d, block.size).sum(1) for n, d in parts)
        alive = block.alive(keep)
        per_group = sum(_group_view(keep[n], d, block.size).shape[1] for n, d in parts)
        candidates += [(float(magnitude[g]) / per_group, index, g) for g in torch.nonzero(alive).flatten().tolist()]
    need = target_pruned_count(sparsity, current.num_total()) - current.num_pruned()
    live = {i: int(b.alive(keep).sum()) for i, b in enumerate(usable)}
    for _, index, g in sorted(candidates):
        if need <= 0:
            break
        if live[index] <= 1:
            continue  # every attention keeps a head, every FFN a neuron
        block = usable[index]
        for name, dim in [(n, 0) for n in block.producers] + [(block.consumer, 1)]:
            view = keep[name] if dim == 0 else keep[name].t()
            need -= int(view[g * block.size : (g + 1) * block.size].sum())
            view[g * block.size : (g + 1) * block.size] = False
        live[index] -= 1
    if need > 0:
        raise ConfigError(f"head/FFN tickets cannot reach {sparsity:.1%} of these prunable weights (one head and one "
                          "neuron per layer stay, other weights stay dense); lower the schedule's last sparsity")
    return Mask(keep)


PRUNING_METHODS.register("head_ffn_magnitude")(PruningMethod(magnitude_scores, "head_ffn", head_select,
                                                              structure=transformer_blocks))
PRUNING_METHODS.register("head_ffn_random")(PruningMethod(random_scores, "head_ffn", head_select,
                                                           structure=transformer_blocks))
