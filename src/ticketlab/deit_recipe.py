"""The DeiT training recipe (Touvron et al. 2021; facebookresearch/deit ``main.py`` defaults, built on timm) as
training options of any image classification task, applied per batch on the training device.

``train.augment: deit`` means DeiT's crop + flip (``augment.imagenet_crop_flip``), RandAugment
``rand-m9-mstd0.5-inc1``, random erasing (p 0.25, per-pixel noise), then Mixup (α 0.8) or CutMix (α 1.0) on the whole
batch — switched with p 0.5, applied with p 1.0 (timm's ``Mixup``, mode "batch", CutMix λ corrected to the pasted
area) — with label smoothing 0.1 folded into the mixed soft targets; the loss is cross-entropy with probabilities.
Each option (``train.randaugment``, ``mixup_alpha``, ``cutmix_alpha``, ``mix_prob``, ``mix_switch_prob``,
``label_smoothing``, ``random_erasing``) overrides it; left unset it is DeiT's value under ``augment: deit``, else off,
so existing runs are unchanged. Every draw comes from the run's augment generator: a seed gives the same batches and
a resumed run continues identically. Not included: DeiT's repeated augmentation (a sampler) and its
distillation token; the crop interpolates bilinearly (DeiT: bicubic). Mixup/CutMix pair each sample with the batch
reversed (timm): in an odd batch the middle sample is paired with itself.

Plain tensor ops, not kornia: kornia is no ticketlab dependency, draws from the global RNG rather than a generator,
and differs from the recipe (MixUp's λ is uniform, not Beta; erasing fills a constant; another RandAugment policy).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ticketlab.augment import RandAugment, _draw_seed, random_erasing
from ticketlab.data.base import Task
from ticketlab.data.dense_labels import DENSE_HEADS
from ticketlab.data.loader import LazyImages
from ticketlab.errors import ConfigError
from ticketlab.objectives.base import Objective

TrainRecipe = Any  # a ``config.TrainConfig`` (not imported: config imports this module for its range checks)

DEIT = {"randaugment": "rand-m9-mstd0.5-inc1", "mixup_alpha": 0.8, "cutmix_alpha": 1.0, "mix_prob": 1.0,
        "mix_switch_prob": 0.5, "label_smoothing": 0.1, "random_erasing": 0.25}
OFF = {"randaugment": "none", "mixup_alpha": 0.0, "cutmix_alpha": 0.0, "mix_prob": 1.0, "mix_switch_prob": 0.5,
       "label_smoothing": 0.0, "random_erasing": 0.0}
SOFT_TARGETS = ("mixup_alpha", "cutmix_alpha", "label_smoothing")  # options that turn labels into probabilities
ACTIVE = ("randaugment", "random_erasing", *SOFT_TARGETS)  # any of them on = the recipe runs


def resolved(recipe: TrainRecipe) -> dict[str, Any]:
    """Each DeiT option's value in effect: the one set, else DeiT's under ``augment: deit``, else off."""
    base = DEIT if recipe.augment == "deit" else OFF
    return {k: base[k] if getattr(recipe, k) is None else getattr(recipe, k) for k in base}


def parse_randaugment(spec: str, key: str = "train.randaugment") -> RandAugment | None:
    """timm's RandAugment string (``rand-m9-n2-mstd0.5-mmax10-inc1``; ``none`` = off) as a :class:`RandAugment`."""
    if spec == "none":
        return None
    parts = spec.split("-")
    fields: dict[str, Any] = {"increasing": False}  # timm's default op set is the non-increasing one
    names = {"m": "magnitude", "n": "num_ops", "mstd": "magnitude_std", "mmax": "magnitude_max", "inc": "increasing"}
    for part in parts[1:]:
        match = re.fullmatch(r"([a-z]+)(\d+(?:\.\d+)?)", part)
        if parts[0] != "rand" or match is None or match[1] not in names:
            raise ConfigError(f"{key} {spec!r} is not a timm RandAugment string; write e.g. rand-m9-mstd0.5-inc1 "
                              "(parts m, n, mstd, mmax, inc) or none")
        value = float(match[2])
        fields[names[match[1]]] = bool(value) if match[1] == "inc" else int(value) if match[1] == "n" else value
    if parts[0] != "rand" or fields.get("num_ops", 2) < 1:
        raise ConfigError(f"{key} {spec!r} is not a timm RandAugment string with >= 1 op; write e.g. "
                          "rand-m9-mstd0.5-inc1 or none")
    if fields.get("magnitude_std", 0.0) > 100:
        fields["magnitude_std"] = math.inf  # timm: uniform magnitudes in [0, m]
    return RandAugment(**{"magnitude": 10.0, "magnitude_std": 0.0, **fields})


def option_problems(recipe: TrainRecipe, key: str = "train") -> list[str]:
    """Every DeiT option outside its range (``TrainConfig``'s check)."""
    problems = [f"{key}.{name} must be >= 0, got {getattr(recipe, name)!r}" for name in ("mixup_alpha", "cutmix_alpha")
                if getattr(recipe, name) is not None and getattr(recipe, name) < 0]
    problems += [f"{key}.{name} must lie in [0, 1], got {getattr(recipe, name)!r}"
                 for name in ("mix_prob", "mix_switch_prob", "random_erasing")
                 if getattr(recipe, name) is not None and not 0 <= getattr(recipe, name) <= 1]
    if recipe.label_smoothing is not None and not 0 <= recipe.label_smoothing < 1:
        problems.append(f"{key}.label_smoothing must lie in [0, 1), got {recipe.label_smoothing!r}")
    if recipe.randaugment is not None:
        try:
            parse_randaugment(recipe.randaugment, f"{key}.randaugment")
        except ConfigError as exc:
            problems += exc.problems
    return problems


def soft_targets(labels: torch.Tensor, num_classes: int, lam: float = 1.0, smoothing: float = 0.0) -> torch.Tensor:
    """timm's ``mixup_target``: smoothed one-hots (off = smoothing / C, on = 1 - smoothing + off) of the labels and of
    the batch reversed, mixed ``lam : 1 - lam``; every row sums to 1."""
    off = smoothing / num_classes
    one_hot = F.one_hot(labels.long(), num_classes).float() * (1 - smoothing) + off
    return one_hot * lam + one_hot.flip(0) * (1 - lam)


def cutmix_box(shape: torch.Size, lam: float, gen: torch.Generator) -> tuple[int, int, int, int]:
    """timm's ``rand_bbox``: a box of side √(1-λ) of the image's, centred uniformly, clipped at the borders."""
    h, w = shape[-2:]
    cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
    cy, cx = (int(torch.randint(0, n, (1,), generator=gen)) for n in (h, w))
    return max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h), max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)


def mix_batch(x: torch.Tensor, gen: torch.Generator, mixup_alpha: float, cutmix_alpha: float, mix_prob: float = 1.0,
              switch_prob: float = 0.5) -> tuple[torch.Tensor, float]:
    """timm's ``Mixup`` in "batch" mode: with ``mix_prob``, one λ for the batch — CutMix (λ ~ Beta(α_c, α_c), then λ
    = 1 - the pasted area's true fraction) with ``switch_prob`` when both are on, else Mixup (λ ~ Beta(α_m, α_m)) —
    pairing each image with the batch reversed. Returns (images, λ); λ = 1 when nothing was mixed. The Beta draw is
    numpy's (torch's takes no generator), seeded from ``gen``."""
    if not (mixup_alpha > 0 or cutmix_alpha > 0) or float(torch.rand(1, generator=gen)) >= mix_prob:
        return x, 1.0
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or float(torch.rand(1, generator=gen)) < switch_prob)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = float(np.random.default_rng(_draw_seed(gen)).beta(alpha, alpha))
    if not use_cutmix:
        return x * lam + x.flip(0) * (1 - lam), lam
    top, bottom, left, right = cutmix_box(x.shape, lam, gen)
    out = x.clone()
    out[..., top:bottom, left:right] = x.flip(0)[..., top:bottom, left:right]
    return out, 1 - (bottom - top) * (right - left) / (x.shape[-2] * x.shape[-1])


@dataclass
class DeitBatch:
    """The per-batch part of the recipe: RandAugment, random erasing, then mixing; returns (images, targets) —
    soft targets ``[B, C]`` when mixing or smoothing is on, else the labels unchanged. ``mean``/``std`` ([1, 3, 1, 1],
    in the [-1, 1] image space) undo the network's input normalisation: the erasing noise is N(0, 1) and the
    geometric fill is 0 as the network sees them, as in timm (which works on normalised tensors)."""

    num_classes: int
    randaugment: RandAugment | None = None
    erasing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5
    smoothing: float = 0.0
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, labels: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, Any]:
        if self.randaugment is not None:
            x = self.randaugment(x, gen, self.mean)
        if self.erasing > 0:
            mean, std = (0.0, 1.0) if self.mean is None else (self.mean.to(x.device), self.std.to(x.device))
            x = random_erasing(x, gen, self.erasing, mean=mean, std=std)
        x, lam = mix_batch(x, gen, self.mixup_alpha, self.cutmix_alpha, self.mix_prob, self.switch_prob)
        if self.mixup_alpha > 0 or self.cutmix_alpha > 0 or self.smoothing > 0:
            return x, soft_targets(labels, self.num_classes, lam, self.smoothing).to(x.device)
        return x, labels


def check_patch_students(recipe: TrainRecipe, key: str = "train") -> None:
    """Patch students read fixed patch positions of each image (the selector's tickets, or RC draws on the same
    grid), so only position-keeping parts of the recipe apply — erasing, Mixup, CutMix, label smoothing — to ticket
    and RC students alike; crops, flips and RandAugment's geometric ops would move content off its ticket. (The
    official code re-selects tickets on every augmented view with the selector in the loop; ticketlab selects once.)"""
    if moves_pixels(recipe):
        raise ConfigError(f"{key}.augment / {key}.randaugment move image content, but patch students read fixed "
                          f"ticket positions; set {key}.augment: none and {key}.randaugment: none (erasing, Mixup, "
                          "CutMix and label smoothing still apply to ticket and RC students alike)")


def moves_pixels(recipe: TrainRecipe) -> bool:
    """Whether the augmentation in effect moves image content (crops, flips, RandAugment's geometric ops)."""
    return recipe.augment != "none" or resolved(recipe)["randaugment"] != "none"


def check_fixed_positions(recipe: TrainRecipe, objective: Objective, task: Task | None, key: str = "train") -> None:
    """Trainings that read pixels at fixed positions take no pixel-moving augmentation, before anything is built:
    patch students (``check_patch_students``) and detection / segmentation, whose boxes and label maps would not
    follow a crop, flip or rotation."""
    if getattr(objective, "fixed_patch_positions", False):
        check_patch_students(recipe, key)
    if task is not None and task.head in DENSE_HEADS and moves_pixels(recipe):
        raise ConfigError(f"{key}.augment {recipe.augment!r} / {key}.randaugment move image content but not the "
                          f"boxes / label maps of task {task.name!r}; set {key}.augment: none and {key}.randaugment: "
                          "none (dense tasks)")


def check_task(recipe: TrainRecipe, task: Task, objective: Objective, key: str = "train") -> None:
    """One-line ConfigError when the options in effect cannot apply: image ops need images, soft targets need a
    single-label classification task trained with the supervised cross-entropy."""
    options = resolved(recipe)
    active = [n for n in ACTIVE if options[n] != OFF[n]]
    soft = [n for n in SOFT_TARGETS if options[n] != OFF[n]]

    def named(names: list[str]) -> str:
        return ", ".join(f"{key}.{n}" for n in names)

    def fix(names: list[str], augment: str = "imagenet") -> str:
        off = f"{named(names)} to {'0 / none' if 'randaugment' in names else '0'}"
        return f"{off}, or {key}.augment to {augment}" if recipe.augment == "deit" else off

    x = task.train.x
    is_image = isinstance(x, LazyImages) or isinstance(x, torch.Tensor) and x.dim() == 4
    if active and (task.train.patches is not None or getattr(objective, "fixed_patch_positions", False)):
        check_patch_students(recipe, key)
    if active and not is_image:
        raise ConfigError(f"{named(active)} are image-training options, but task {task.name!r} has non-image "
                          f"inputs; set {fix(active, 'none')}")
    if soft and (task.head != "linear" or task.train.y.dim() != 1):
        raise ConfigError(f"{named(soft)} need single-label classification, but task {task.name!r} is not (head "
                          f"{task.head!r}, labels {tuple(task.train.y.shape)}); set {fix(soft)}")
    if soft and type(objective).loss is not Objective.loss and not getattr(objective, "soft_targets", False):
        raise ConfigError(f"{named(soft)} need the supervised cross-entropy loss, but objective "
                          f"{getattr(objective, 'name', '?')!r} has its own; set {fix(soft)}")


def batch_recipe(recipe: TrainRecipe, model: nn.Module, objective: Objective, task: Task | None = None,
                 key: str = "train") -> DeitBatch | None:
    """The :class:`DeitBatch` a training applies (checked against ``task``), or None when every option is off."""
    options = resolved(recipe)
    if all(options[n] == OFF[n] for n in ACTIVE):
        return None
    if task is not None:
        check_task(recipe, task, objective, key)
    scale, shift = getattr(model, "input_scale", None), getattr(model, "input_shift", None)
    mean, std = (None, None) if scale is None else ((-shift / scale).detach().cpu(), (1 / scale).detach().cpu())
    num_classes = task.num_classes if task is not None else model.head.out_features
    return DeitBatch(num_classes, parse_randaugment(options["randaugment"], f"{key}.randaugment"),
                     options["random_erasing"], options["mixup_alpha"], options["cutmix_alpha"], options["mix_prob"],
                     options["mix_switch_prob"], options["label_smoothing"], mean, std)
