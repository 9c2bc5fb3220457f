"""Physical removal of a structured ticket's pruned groups: a smaller model that computes the same function.

CNN channel tickets (``channel_*``): each inner convolution's dead output channels, the matching BatchNorm
entries and the next convolution's input channels are sliced away (the block's own dependency: conv → BN →
ReLU → next conv). Transformer head/FFN tickets (``head_ffn_*``): the dead heads' rows of Q, K, V and columns
of the output projection, the dead neurons' rows of the first FFN linear and columns of the second. The
attention implementations of ``transformers`` infer the head count from the sliced widths (``view(..., -1,
head_dim)``), so nothing else changes. FLOPs and parameters really drop on any hardware.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ticketlab.errors import ConfigError
from ticketlab.masks import Mask
from ticketlab.pruning.heads import transformer_blocks
from ticketlab.pruning.structured import inner_convs, next_conv


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


@torch.no_grad()
def slim(model: nn.Module, mask: Mask) -> nn.Module:
    """A copy of ``model`` (mask applied) with every pruned channel, head or FFN neuron removed."""
    out = copy.deepcopy(model)
    mask.apply_(out)
    names = mask.names()
    if getattr(model, "family", "cnn") == "transformer":
        _slim_transformer(out, mask)
        return out.eval()
    for name in inner_convs(names):
        alive = torch.nonzero(mask.tensors[name].flatten(1).any(1)).flatten()
        conv_path = name.removesuffix(".weight")
        next_path = next_conv(name, set(names)).removesuffix(".weight")
        bn_path = conv_path.replace(".conv", ".bn")
        conv, bn, following = _module(out, conv_path), _module(out, bn_path), _module(out, next_path)
        if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d) or not isinstance(following, nn.Conv2d):
            raise ConfigError(f"cannot trace {conv_path} → {bn_path} → {next_path} (conv → BatchNorm → conv) for "
                              "channel removal; structured export supports ticketlab's CIFAR/ImageNet ResNets")
        small = nn.Conv2d(conv.in_channels, len(alive), conv.kernel_size, conv.stride, conv.padding,
                          bias=conv.bias is not None)
        small.weight.copy_(conv.weight[alive])
        if conv.bias is not None:
            small.bias.copy_(conv.bias[alive])
        small_bn = nn.BatchNorm2d(len(alive), eps=bn.eps, momentum=bn.momentum)
        for key in ("weight", "bias", "running_mean", "running_var"):
            getattr(small_bn, key).copy_(getattr(bn, key)[alive])
        reader = nn.Conv2d(len(alive), following.out_channels, following.kernel_size, following.stride,
                           following.padding, bias=following.bias is not None)
        reader.weight.copy_(following.weight[:, alive])
        if following.bias is not None:
            reader.bias.copy_(following.bias)
        _set(out, conv_path, small)
        _set(out, bn_path, small_bn)
        _set(out, next_path, reader)
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
