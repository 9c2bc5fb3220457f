"""Dense-prediction heads on CNN backbones: an FPN neck with FCOS detection or a Panoptic-FPN semantic head.

Why they are built here: torchvision's detection models cannot load in this environment, and Chen et al. (CVPR
2021) transfer CNN tickets (ResNet-50 from supervised / SimCLR / MoCo pre-training) to detection and segmentation.
The neck and heads are the model's ``head.*``: never pruned, never masked, re-initialised per task — a ticket is
applied to ``backbone.*`` exactly as for a linear classifier.

How a head sees feature maps: every backbone returns a pooled vector (the contract all models share), so a dense
head taps the backbone's last three stages (C3-C5: stride 8/16/32 with the ImageNet stem; the CIFAR stem's are
4x finer) with forward hooks, set by :meth:`DenseHead.attach`, which ``TicketModel.reset_head`` calls. The hooks
are bound methods of a :class:`FeatureTap` the head owns, so a deep copy of the model taps its own copy.

Simplifications (said here once): the pyramid is P3-P5 only (no P6/P7: the last level takes all larger objects);
the neck has ``min(256, feature_dim)`` channels (256 for ResNet-50/18; narrower for the tiny test backbones) and
the semantic branch ``min(128, ·)``; the whole head is drawn from the head seed when it is attached.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ticketlab.data.dense_labels import IGNORE_INDEX
from ticketlab.errors import ConfigError, TicketlabError
from ticketlab.models.base import HEADS
from ticketlab.models.fcos import fcos_detect, fcos_loss

TOWER_CONVS = 4  # FCOS's shared towers: 4 x (3x3 conv, GroupNorm 32, ReLU)


class FeatureTap:
    """The tapped stages' outputs of the latest backbone forward, and the input's spatial size."""

    def __init__(self) -> None:
        self.maps: list[torch.Tensor] = []
        self.size: tuple[int, int] | None = None

    def start(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        """Forward pre-hook on the backbone: a new forward starts (features of a previous one are dropped)."""
        x = args[0] if args else None
        x = x[0] if isinstance(x, tuple) else x
        self.maps = []
        self.size = tuple(x.shape[-2:]) if isinstance(x, torch.Tensor) and x.dim() == 4 else None

    def collect(self, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        self.maps.append(output)

    def take(self, count: int) -> tuple[list[torch.Tensor], tuple[int, int]]:
        maps, size = self.maps, self.size
        self.maps = []
        if len(maps) != count or size is None:
            raise TicketlabError("a dense head got no feature maps from the backbone; call the whole model "
                                 "(model(images)) on an image batch [N, 3, H, W]")
        return maps, size


def backbone_stages(backbone: nn.Module, family: str) -> list[nn.Module]:
    """The last three stages of a CNN backbone: ours (``layer1..N``) or a Hugging Face ResNet / ConvNeXt's
    ``encoder.stages``; any other backbone is a one-line ConfigError."""
    stages: list[nn.Module] = []
    if family in ("cnn", "hybrid"):
        stages = [getattr(backbone, f"layer{i + 1}") for i in range(getattr(backbone, "num_stages", 0))]
        inner = getattr(getattr(getattr(backbone, "model", None), "encoder", None), "stages", None)
        stages = stages or (list(inner) if inner is not None else [])
    if len(stages) < 3:
        raise ConfigError(f"object detection and segmentation need a CNN backbone with 3+ stages (resnet18/50/101/"
                          f"152, resnet20, hf_resnet, a ConvNeXt folder), got a {family} model "
                          f"({type(backbone).__name__}); choose a CNN in model.name")
    return stages[-3:]


def stage_channels(stage: nn.Module) -> int:
    """Output channels of a stage: those of its last convolution (ResNet blocks, ConvNeXt's depthwise conv)."""
    convs = [m for m in stage.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(f"backbone stage {type(stage).__name__} has no convolution; use a CNN backbone")
    return convs[-1].out_channels


def _untap(module: nn.Module) -> None:
    """Remove the hooks of an earlier dense head (a head replaced by ``reset_head`` must stop collecting)."""
    for hooks in (module._forward_hooks, module._forward_pre_hooks):
        for key in [k for k, h in hooks.items() if isinstance(getattr(h, "__self__", None), FeatureTap)]:
            del hooks[key]


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


def _tower(channels: int, count: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(count):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), _norm(channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class FPN(nn.Module):
    """Lin et al. 2017: 1x1 laterals, a nearest-neighbour top-down pathway, 3x3 output convs (P3-P5)."""

    def __init__(self, in_channels: list[int], channels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels)
        for conv in [*self.lateral, *self.output]:
            nn.init.kaiming_uniform_(conv.weight, a=1)  # detectron2's / FCOS's c2_xavier_fill
            nn.init.zeros_(conv.bias)

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        merged = [lateral(m) for lateral, m in zip(self.lateral, maps, strict=True)]
        for i in range(len(merged) - 2, -1, -1):
            merged[i] = merged[i] + F.interpolate(merged[i + 1], size=merged[i].shape[-2:], mode="nearest")
        return [out(m) for out, m in zip(self.output, merged, strict=True)]


def level_strides(pyramid: list[torch.Tensor], size: tuple[int, int]) -> list[float]:
    """Each level's stride in input pixels (a power of two: a map of an odd-sized input is rounded up)."""
    return [float(2 ** round(math.log2(size[0] / p.shape[-2]))) for p in pyramid]


class DenseHead(nn.Module):
    """FPN neck + a task head; built when attached to a backbone (its stage widths are only known then)."""

    def __init__(self, feature_dim: int, num_classes: int, generator: torch.Generator) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.channels = min(256, feature_dim)
        self.seed = int(generator.initial_seed())
        self.tap = FeatureTap()
        self.neck: FPN | None = None

    def attach(self, backbone: nn.Module, family: str) -> None:
        """Tap ``backbone``'s last three stages and build the neck and head for their widths, from the head seed."""
        stages = backbone_stages(backbone, family)
        for module in (backbone, *stages):
            _untap(module)
        backbone.register_forward_pre_hook(self.tap.start)
        for stage in stages:
            stage.register_forward_hook(self.tap.collect)
        device = next(backbone.parameters()).device
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.neck = FPN([stage_channels(s) for s in stages], self.channels)
            self.build()
        self.to(device)

    def build(self) -> None:
        raise NotImplementedError

    def predict(self, pyramid: list[torch.Tensor], size: tuple[int, int]) -> Any:
        raise NotImplementedError

    def forward(self, features: torch.Tensor) -> Any:
        """``features`` (the pooled vector) is not used: the tapped stage maps are."""
        if self.neck is None:
            raise TicketlabError("a dense head must be attached to its backbone: build it with build_model / "
                                 "TicketModel.reset_head")
        maps, size = self.tap.take(3)
        return self.predict(self.neck(maps), size)


class DetectionHead(DenseHead):
    """FCOS (Tian et al. 2019): shared classification and box towers over P3-P5, centerness on the box branch,
    ltrb = ReLU(scale_l · conv) · stride_l (the official normalised-regression variant). The model's output is a
    dict of per-level maps; :meth:`loss` and :meth:`detect` read it (``models/fcos.py``)."""

    def build(self) -> None:
        c = self.channels
        self.cls_tower, self.box_tower = _tower(c, TOWER_CONVS), _tower(c, TOWER_CONVS)
        self.cls_logits = nn.Conv2d(c, self.num_classes, 3, padding=1)
        self.box_pred = nn.Conv2d(c, 4, 3, padding=1)
        self.centerness = nn.Conv2d(c, 1, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(3))
        for module in [*self.cls_tower, *self.box_tower, self.cls_logits, self.box_pred, self.centerness]:
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - 0.01) / 0.01))  # prior probability 0.01

    def predict(self, pyramid: list[torch.Tensor], size: tuple[int, int]) -> dict[str, Any]:
        strides = level_strides(pyramid, size)
        out: dict[str, Any] = {"cls": [], "box": [], "ctr": [], "strides": strides, "size": size}
        for level, p in enumerate(pyramid):
            cls, box = self.cls_tower(p), self.box_tower(p)
            out["cls"].append(self.cls_logits(cls))
            out["box"].append(F.relu(self.scales[level] * self.box_pred(box)) * strides[level])
            out["ctr"].append(self.centerness(box))
        return out

    def loss(self, outputs: dict[str, Any], targets: torch.Tensor) -> torch.Tensor:
        """FCOS's loss for targets ``[N, M, 5]`` = (class, x0, y0, x1, y1), class -1 = padding."""
        return fcos_loss(outputs, targets, self.num_classes)

    def detect(self, outputs: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        """Per image: ``boxes`` (x0, y0, x1, y1 pixels), ``scores``, ``labels`` after per-class NMS, top 100."""
        return fcos_detect(outputs)


class SegmentationHead(DenseHead):
    """Panoptic FPN's semantic branch (Kirillov et al. 2019): each level goes through log2(s / s_P3) stages of
    3x3 conv + GroupNorm + ReLU + 2x bilinear upsampling (P3 through one conv) to P3's stride, the levels are
    summed, a 1x1 conv classifies and the logits are bilinearly upsampled to the input size. Output:
    ``[N, C, H, W]`` logits; the loss is cross-entropy with ignore index 255."""

    def build(self) -> None:
        width = min(128, self.channels)
        self.branches = nn.ModuleList()
        for level in range(3):
            layers: list[nn.Module] = []
            for step in range(max(level, 1)):
                layers += [nn.Conv2d(self.channels if step == 0 else width, width, 3, padding=1, bias=False),
                           _norm(width), nn.ReLU(inplace=True)]
                if level > 0:
                    layers.append(nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False))
            self.branches.append(nn.Sequential(*layers))
        self.classifier = nn.Conv2d(width, self.num_classes, 1)

    def predict(self, pyramid: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        target = pyramid[0].shape[-2:]
        outs = [branch(p) for branch, p in zip(self.branches, pyramid, strict=True)]
        summed = sum(o if o.shape[-2:] == target else F.interpolate(o, size=target, mode="bilinear",
                                                                    align_corners=False) for o in outs)
        return F.interpolate(self.classifier(summed), size=size, mode="bilinear", align_corners=False)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-pixel cross-entropy over the labelled pixels (255 = ignore; 0 when a batch has none)."""
        targets = targets.long()
        if not bool((targets != IGNORE_INDEX).any()):
            return outputs.float().sum() * 0.0
        return F.cross_entropy(outputs.float(), targets, ignore_index=IGNORE_INDEX)


@HEADS.register("detection")
def detection_head(feature_dim: int, num_classes: int, generator: torch.Generator) -> nn.Module:
    """FCOS object detection on an FPN (P3-P5) over a CNN backbone's last three stages."""
    return DetectionHead(feature_dim, num_classes, generator)


@HEADS.register("segmentation")
def segmentation_head(feature_dim: int, num_classes: int, generator: torch.Generator) -> nn.Module:
    """Semantic segmentation: Panoptic FPN's semantic branch over a CNN backbone's last three stages."""
    return SegmentationHead(feature_dim, num_classes, generator)
