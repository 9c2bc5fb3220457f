"""ResNets in two layouts, since torchvision does not import here.

``stem: cifar`` (default): 3x3 stride-1 stem, no max-pool — the CIFAR adaptation Chen et al. used (the
stem is not pruned by default). ``stem: imagenet``: torchvision's 7x7 stride-2 stem + 3x3 max-pool, so
torchvision's ImageNet ResNet-18/50 and the MoCo v2 / SimCLR ResNet-50 checkpoints load one to one. An
ImageNet checkpoint can also initialise the CIFAR layout: everything but the stem's 7x7 kernel fits, and
``model.allow_missing: ['^conv1\\.']`` says that kernel is to be learnt anew (as in the study's code).

Their weights are always freshly drawn (``random_init`` is accepted for the common factory contract);
θp comes from ``model.checkpoint`` or a pre-training stage.

Module names follow torchvision (``conv1``, ``bn1``, ``layerN.i.conv1``, ``downsample.0``) so that
torchvision/timm/MoCo/SimCLR checkpoints map onto them by stripping prefixes (see ``checkpoints``).
"""

from __future__ import annotations

import torch
from torch import nn

from ticketlab.errors import ConfigError
from ticketlab.models.base import MODELS, Backbone
from ticketlab.registry import bounds

STEMS = {"cifar": (3, 1, 1), "imagenet": (7, 2, 3)}  # conv1 kernel, stride, padding


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(inplanes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(inplanes, planes * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (self.downsample(x) if self.downsample is not None else x))


def _shortcut(inplanes: int, planes: int, stride: int) -> nn.Module | None:
    if stride == 1 and inplanes == planes:
        return None
    return nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))


class CifarResNet(nn.Module):
    """ResNet backbone returning pooled features (no classifier: the head lives in TicketModel)."""

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int], widths: list[int],
                 in_channels: int = 3, stem: str = "cifar") -> None:
        super().__init__()
        if stem not in STEMS:
            raise ConfigError(f"model.options.stem must be one of {', '.join(STEMS)}, got {stem!r}")
        kernel, stride, padding = STEMS[stem]
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel, stride, padding, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if stem == "imagenet" else nn.Identity()
        inplanes = widths[0]
        for i, (count, width) in enumerate(zip(layers, widths, strict=True)):
            blocks = []
            for j in range(count):
                blocks.append(block(inplanes, width, 2 if (j == 0 and i > 0) else 1))
                inplanes = width * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(layers)
        self.out_dim = inplanes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


def _resnet(block: type[BasicBlock | Bottleneck], layers: list[int], base: int, stages: int,
            in_channels: int, stem: str = "cifar") -> Backbone:
    net = CifarResNet(block, layers, [base * 2**i for i in range(stages)], in_channels, stem)
    return Backbone(net, net.out_dim, "cnn")


@MODELS.register("resnet20")
@bounds(width=(1, 4096), in_channels=(1, 64))
def resnet20(width: int = 16, in_channels: int = 3, random_init: bool = False) -> Backbone:
    """He et al.'s CIFAR ResNet-20 (3 stages of 3 basic blocks; 1x1-conv shortcuts)."""
    return _resnet(BasicBlock, [3, 3, 3], width, 3, in_channels)


@MODELS.register("resnet18")
@bounds(width=(1, 4096), in_channels=(1, 64))
def resnet18(width: int = 64, in_channels: int = 3, stem: str = "cifar", random_init: bool = False) -> Backbone:
    """ResNet-18; ``stem: imagenet`` is torchvision's layout."""
    return _resnet(BasicBlock, [2, 2, 2, 2], width, 4, in_channels, stem)


@MODELS.register("resnet50")
@bounds(width=(1, 4096), in_channels=(1, 64))
def resnet50(width: int = 64, in_channels: int = 3, stem: str = "cifar", random_init: bool = False) -> Backbone:
    """ResNet-50: the CIFAR layout of Chen et al. (CVPR 2021), or ``stem: imagenet`` (torchvision, MoCo, SimCLR)."""
    return _resnet(Bottleneck, [3, 4, 6, 3], width, 4, in_channels, stem)


@MODELS.register("resnet101")
@bounds(width=(1, 4096), in_channels=(1, 64))
def resnet101(width: int = 64, in_channels: int = 3, stem: str = "cifar", random_init: bool = False) -> Backbone:
    """ResNet-101 (bottlenecks 3-4-23-3): torchvision / MoCo / SimCLR checkpoints load with ``stem: imagenet``."""
    return _resnet(Bottleneck, [3, 4, 23, 3], width, 4, in_channels, stem)


@MODELS.register("resnet152")
@bounds(width=(1, 4096), in_channels=(1, 64))
def resnet152(width: int = 64, in_channels: int = 3, stem: str = "cifar", random_init: bool = False) -> Backbone:
    """ResNet-152 (bottlenecks 3-8-36-3): Chen et al.'s "larger pre-trained models give better SimCLR tickets"."""
    return _resnet(Bottleneck, [3, 8, 36, 3], width, 4, in_channels, stem)
