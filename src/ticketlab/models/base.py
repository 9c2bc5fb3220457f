"""Models: a backbone (pre-trained, prunable) plus a task head (re-initialised per task, never pruned).

``MODELS`` maps a name to a factory with one contract, ``factory(*, random_init=False, **options) ->
Backbone``: ``random_init=True`` gives the family's architecture with freshly drawn weights (θ0 of the
random re-initialisation baseline) whether or not the options name a checkpoint. Every model exposes
``forward_features`` (the backbone's feature vector) and ``forward_head``. This module is a leaf: the
families register themselves and ``ticketlab.plugins`` imports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ticketlab.errors import ConfigError
from ticketlab.registry import Registry


@dataclass
class Backbone:
    """What a model factory returns: the feature extractor, its feature size and its family."""

    module: nn.Module
    feature_dim: int
    family: str  # "cnn" | "transformer": picks the default prunable set
    normalization: tuple[list[float], list[float]] | None = None  # (mean, std) the checkpoint expects, if known


IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


MODELS: Registry[Any] = Registry("model")


HEADS: Registry[Any] = Registry("head")


def pretrained_by_default(factory: Any) -> Any:
    """Mark a factory that loads pre-trained weights when its options name no ``path`` (e.g. the shipped MiniLM)."""
    factory.pretrained_default = True
    return factory


def model_input_defaults(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Task options a model implies when the task does not set them: ``image_size`` (fixed position embeddings,
    from the model's config) and ``tokenizer`` (the checkpoint's own folder)."""
    hook = getattr(MODELS.get(name), "input_defaults", None)
    return hook(options) if hook is not None else {}


def base_model_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Options of the same architecture with the weights it had before its (V+L) pre-training: a family whose
    checkpoint records another starting point (UNITER: the BERT it was initialised from) says how, via a
    ``base_options`` hook; otherwise ``options`` themselves (``path`` already names the starting checkpoint)."""
    hook = getattr(MODELS.get(name), "base_options", None)
    return hook(options) if hook is not None else options


def has_pretrained_weights(name: str, options: dict[str, Any]) -> bool:
    """Whether ``MODELS[name](**options)`` starts from pre-trained weights (a path or checkpoint option, or the
    factory's default)."""
    if options.get("random_init"):
        return False
    if options.get("path") or options.get("checkpoint"):
        return True
    return bool(getattr(MODELS.get(name), "pretrained_default", False)) and not options.get("config")


@HEADS.register("linear")
def linear_head(feature_dim: int, num_classes: int, generator: torch.Generator) -> nn.Module:
    """A linear classifier on the backbone's features, seeded (uniform ±1/√dim, zero bias)."""
    head = nn.Linear(feature_dim, num_classes)
    bound = 1.0 / feature_dim**0.5
    with torch.no_grad():
        head.weight.copy_(torch.empty_like(head.weight).uniform_(-bound, bound, generator=generator))
        head.bias.zero_()
    return head


class TicketModel(nn.Module):
    """Backbone + task head. Parameter names are ``backbone.*`` and ``head.*`` (heads are never pruned)."""

    def __init__(self, backbone: Backbone, num_classes: int, head: str = "linear") -> None:
        super().__init__()
        self.backbone = backbone.module
        self.feature_dim = backbone.feature_dim
        self.family = backbone.family
        HEADS.get(head)  # an unknown kind fails here, naming the known ones
        self.head_kind = head
        self.head = nn.Linear(backbone.feature_dim, max(num_classes, 1))
        self.declared_normalization = backbone.normalization
        self.register_buffer("input_scale", None, persistent=False)
        self.register_buffer("input_shift", None, persistent=False)

    def set_input_normalization(self, normalize: str | list[list[float]] = "auto") -> None:
        """Images arrive in [-1, 1] (every task's convention); re-normalise them to the (mean, std) the weights
        expect: ``auto`` = what the checkpoint declares (a Hugging Face image processor), else none;
        ``imagenet``; ``none``; or ``[[mean x3], [std x3]]``. Not part of the state dict."""
        if normalize == "auto":
            stats = self.declared_normalization
        elif normalize == "imagenet":
            stats = IMAGENET
        elif normalize == "none":
            stats = None
        elif isinstance(normalize, list) and len(normalize) == 2 and all(len(v) == 3 for v in normalize):
            stats = (normalize[0], normalize[1])
        else:
            raise ConfigError("model.normalize must be auto, imagenet, none or [[m, m, m], [s, s, s]], "
                              f"got {normalize!r}")
        if stats is None:
            self.input_scale = self.input_shift = None
            return
        mean, std = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1) for v in stats)
        self.register_buffer("input_scale", 0.5 / std, persistent=False)
        self.register_buffer("input_shift", (0.5 - mean) / std, persistent=False)

    def _normalized(self, x: Any) -> Any:
        if self.input_scale is None:
            return x
        if isinstance(x, tuple):  # (images, patch indices) of a patch student
            return (x[0] * self.input_scale + self.input_shift, *x[1:])
        return x * self.input_scale + self.input_shift if isinstance(x, torch.Tensor) and x.dim() == 4 else x

    def forward_features(self, x: Any) -> Any:
        return self.backbone(self._normalized(x))

    def forward_head(self, features: Any) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: Any) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_head(self, num_classes: int, seed: int) -> None:
        """A fresh head of the model's kind for a task, initialised from ``seed`` so runs are reproducible."""
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # heads with several layers use their default initialisers
            head = HEADS.get(self.head_kind)(self.feature_dim, num_classes, generator)
        self.head = head.to(next(self.backbone.parameters()).device)
        if hasattr(head, "attach"):  # a dense head taps the backbone's stages (models/dense_heads.py)
            head.attach(self.backbone, self.family)


def build_model(name: str, num_classes: int, options: dict[str, Any] | None = None, seed: int = 0,
                head: str = "linear", *, head_seed: int | None = None, random_init: bool = False,
                normalize: str | list[list[float]] = "auto") -> TicketModel:
    """Build a model: the backbone's random initialisation (θ0) is a function of ``seed`` alone, the head's
    of ``head_seed`` (default ``seed``), so a caller never re-seeds the head after building."""
    options = dict(options or {})
    if random_init:
        options["random_init"] = True
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = MODELS.build(name, **options)
        model = TicketModel(backbone, num_classes, head)
    model.reset_head(num_classes, seed if head_seed is None else head_seed)
    model.set_input_normalization(normalize)
    return model
