"""Objectives for patch students: train on each image's ticket patches, or on random patches (RC)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ticketlab.data.base import Task
from ticketlab.errors import ConfigError
from ticketlab.masks import Mask
from ticketlab.metrics import accuracy
from ticketlab.models.hf import ViTBackbone
from ticketlab.models.swin import SwinBackbone
from ticketlab.objectives.base import OBJECTIVES, Objective
from ticketlab.patches.swin import PatchSwin, patch_swin
from ticketlab.patches.vit import patch_vit


def patch_student(backbone: nn.Module) -> nn.Module:
    """A student's patch adapter: ViT students drop unseen patches (``patches.vit``), Swin students mask them
    (``patches.swin``)."""
    if isinstance(backbone, SwinBackbone):
        return patch_swin(backbone)
    if not isinstance(backbone, ViTBackbone):
        raise ConfigError(f"patch-ticket students are 'vit' or 'swin' models, got a {type(backbone).__name__} backbone")
    return patch_vit(backbone)


def student_patches(backbone: nn.Module, grid: int) -> int:
    """Adapt a student to patch indices on the selector's ``grid``; the number of patches that grid has."""
    student = patch_student(backbone)
    if isinstance(student, PatchSwin):
        return student.use_ticket_grid(grid)
    config = student.model.config
    return (config.image_size // config.patch_size) ** 2  # a ViT student reads its own grid (checked on loading)


def check_student_tickets(backbone: nn.Module, tickets: dict[str, torch.Tensor], keep_rate: float) -> None:
    """Refuse, before any training, tickets a student cannot take (an attention window of a Swin left empty)."""
    if isinstance(backbone, PatchSwin):
        backbone.check_tickets(tickets, keep_rate)


def check_random_draws(backbone: nn.Module, count: int, num_patches: int, keep_rate: float, draws: int = 512) -> None:
    """The RC student's draws, checked like tickets before training: a sample of ``draws`` random subsets of
    ``count`` patches (a Swin that refuses empty windows would otherwise fail at some step hours in)."""
    if isinstance(backbone, PatchSwin):
        scores = torch.rand(draws, num_patches, generator=torch.Generator().manual_seed(0))
        backbone.check_tickets({"random draws": scores.topk(count, dim=1).indices.sort(dim=1).values}, keep_rate)


class PatchObjective(Objective):
    """Students see patch subsets: they get their patch adapter, and checkpoints are chosen on all patches."""

    fixed_patch_positions = True  # augmentation must keep pixels in place (``deit_recipe.check_fixed_positions``)
    soft_targets = True  # the loss is cross-entropy on the head: Mixup / CutMix / smoothing targets apply

    def setup(self, model: nn.Module, mask: Mask | None) -> None:
        patch_student(model.backbone)

    def evaluate(self, model: nn.Module, task: Task, split: str) -> float:
        """Dense evaluation: all patches (the student is scored like the ticket student)."""
        return dense_accuracy(model, task, split)


@OBJECTIVES.register("random_patches")
class RandomPatches(PatchObjective):
    """RC baseline: each step, every image shows ``count`` patches drawn afresh (seeded) from its grid."""

    name = "random_patches"

    def __init__(self, count: int, num_patches: int) -> None:
        super().__init__()
        if not 0 < count <= num_patches:
            raise ValueError(f"random patch count {count} must be in 1..{num_patches}")
        self.count, self.num_patches = count, num_patches

    def loss(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
             generator: torch.Generator) -> torch.Tensor:
        scores = torch.rand(len(inputs), self.num_patches, generator=generator)
        patches = scores.topk(self.count, dim=1).indices.sort(dim=1).values
        return F.cross_entropy(model((inputs, patches)), labels)


def dense_accuracy(model: nn.Module, task: Task, split: str) -> float:
    from dataclasses import replace

    return accuracy(model, replace(getattr(task, split), patches=None))


@OBJECTIVES.register("ticket_patches")
class TicketPatches(PatchObjective):
    """Train on the ticket patches the task's splits carry; select checkpoints on dense accuracy."""

    name = "ticket_patches"
