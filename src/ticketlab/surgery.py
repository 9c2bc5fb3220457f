"""Physical removal of a structured ticket's pruned groups: a smaller model that computes the same function.

CNN channel tickets (``channel_*``, ``coupled_channel_*``, refilled tickets): every channel group of
Torch-Pruning's dependency graph whose weights are all masked is removed by Torch-Pruning itself — the writers'
rows, the BatchNorm entries and the readers' columns together, residual streams included (a dead channel that
the task head reads after pooling is a constant, folded into the head's bias first). Transformer head/FFN
tickets (``head_ffn_*``): the dead heads' rows of Q, K, V and columns of the output projection, the dead
neurons' rows of the first FFN linear and columns of the second. The attention implementations of
``transformers`` infer the head count from the sliced widths (``view(..., -1, head_dim)``), so nothing else
changes. FLOPs and parameters really drop on any hardware.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ticketlab.errors import ConfigError
from ticketlab.masks import Mask
from ticketlab.pruning.coupled import ChannelGroup, coupled_groups, dependency_graph, example_input
from ticketlab.pruning.heads import transformer_blocks


def _module(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path)


def _set(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _sliced_linear(linear: nn.Linear, rows: torch.Tensor | None, cols: torch.Tensor | None) -> nn.Linear:
    weight = linear.weight if rows is None else linear.weight[rows]
    weight = weight if cols is None else weight[:, cols]
    small = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None)
    small.weight.copy_(weight)
    if linear.bias is not None:
        small.bias.copy_(linear.bias if rows is None else linear.bias[rows])
    return small


def _slim_transformer(out: nn.Module, mask: Mask) -> None:
    names = set(mask.names())
    for block in transformer_blocks(out):
        if not all(n in names for n in (*block.producers, block.consumer)):
            continue
        groups = torch.nonzero(block.alive(mask.tensors)).flatten()
        keep = (groups[:, None] * block.size + torch.arange(block.size)).flatten()
        for producer in block.producers:
            path = producer.removesuffix(".weight")
            _set(out, path, _sliced_linear(_module(out, path), keep, None))
        path = block.consumer.removesuffix(".weight")
        _set(out, path, _sliced_linear(_module(out, path), None, keep))


def _fold_constant_columns(out: nn.Module, groups: list[tuple[ChannelGroup, torch.Tensor]]) -> None:
    """A dead channel read by the head after global pooling is a constant: add its contribution to the head's
    bias, so that removing the head's columns changes nothing."""
    folded = [(s, dead) for group, dead in groups for s in group.folded if bool(dead[s.channel].any())]
    if not folded:
        return
    inputs: dict[str, torch.Tensor] = {}
    hooks = [out.get_submodule(s.name.removesuffix(".weight")).register_forward_pre_hook(
        lambda _m, args, name=s.name: inputs.__setitem__(name, args[0].detach())) for s, _ in folded]
    try:
        out(example_input(out))
    finally:
        for hook in hooks:
            hook.remove()
    for s, dead in folded:
        linear = out.get_submodule(s.name.removesuffix(".weight"))
        positions = s.index[dead[s.channel]]
        seen = inputs[s.name][:, positions]
        if not torch.allclose(seen, seen[:1].expand_as(seen), atol=1e-5) or linear.bias is None:
            raise ConfigError(f"cannot remove channels read by {s.name}: their values are not constant (or the layer "
                              "has no bias to fold them into); prune the group's other readers too")
        linear.bias += linear.weight[:, positions] @ seen[0]


def _slim_cnn(out: nn.Module, mask: Mask) -> None:
    """Remove every channel group whose weights are all masked, through Torch-Pruning's dependency graph (the
    group's writers, BatchNorm entries and readers together)."""
    graph = dependency_graph(out)
    names = set(mask.names())
    dead = [(g, g.removable(mask.tensors)) for g in coupled_groups(out, graph) if g.maskable(names)]
    dead = [(g, d) for g, d in dead if bool(d.any()) and not bool(d.all())]
    _fold_constant_columns(out, dead)
    for group, channels in dead:
        root = out.get_submodule(group.root)
        pruner = graph.get_pruner_of_module(root)
        idxs = torch.nonzero(channels).flatten().tolist()
        graph.get_pruning_group(root, pruner.prune_out_channels, idxs).prune(record_history=False)


@torch.no_grad()
def slim(model: nn.Module, mask: Mask) -> nn.Module:
    """A copy of ``model`` (mask applied) with every pruned channel group, head or FFN neuron removed."""
    out = copy.deepcopy(model).eval()
    mask.apply_(out)
    if getattr(model, "family", "cnn") == "transformer":
        _slim_transformer(out, mask)
    else:
        _slim_cnn(out, mask)
    return out.eval()


@torch.no_grad()
def fit_to_state(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Resize ``model``'s Linear / Conv2d / BatchNorm2d modules, in place, to the shapes of a slimmed state dict,
    so that ``model.load_state_dict(state)`` then works: the loader of the ``slim`` export for any architecture
    built by its own code (``AutoModel.from_config``, our ResNets)."""
    for path, module in list(model.named_modules()):
        weight = state.get(f"{path}.weight")
        if weight is None or not hasattr(module, "weight") or tuple(module.weight.shape) == tuple(weight.shape):
            continue
        if isinstance(module, nn.Linear):
            new: nn.Module = nn.Linear(weight.shape[1], weight.shape[0], bias=module.bias is not None)
        elif isinstance(module, nn.Conv2d):
            new = nn.Conv2d(weight.shape[1] * module.groups, weight.shape[0], module.kernel_size, module.stride,
                            module.padding, module.dilation, module.groups, bias=module.bias is not None)
        elif isinstance(module, nn.BatchNorm2d):
            new = nn.BatchNorm2d(weight.shape[0], eps=module.eps, momentum=module.momentum)
        else:
            raise ConfigError(f"cannot resize module {path} ({type(module).__name__}) to {tuple(weight.shape)}")
        _set(model, path, new.train(module.training))
    return model
