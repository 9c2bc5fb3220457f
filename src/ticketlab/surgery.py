"""Physical removal of a channel ticket's pruned channels: a smaller model that computes the same function.

For each inner convolution pruned by ``channel_*`` methods, its dead output channels, the matching BatchNorm
entries and the next convolution's input channels are sliced away (pure tensor slicing along the block's own
dependency: conv → BN → ReLU → next conv), so FLOPs and parameters really drop on any hardware.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ticketlab.errors import ConfigError
from ticketlab.masks import Mask
from ticketlab.pruning.structured import inner_convs, next_conv


def _module(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path)


def _set(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


@torch.no_grad()
def slim(model: nn.Module, mask: Mask) -> nn.Module:
    """A copy of ``model`` (mask applied) with every dead output channel of an inner convolution removed."""
    out = copy.deepcopy(model)
    mask.apply_(out)
    names = mask.names()
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
