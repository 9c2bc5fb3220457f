"""Objectives for patch students: train on each image's ticket patches, or on random patches (RC)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ticketlab.data.base import Task
from ticketlab.masks import Mask
from ticketlab.metrics import accuracy
from ticketlab.objectives.base import OBJECTIVES, Objective
from ticketlab.patches.vit import patch_vit


class PatchObjective(Objective):
    """Students see patch subsets: their ViT gets the patch adapter, and checkpoints are chosen on all patches."""

    def setup(self, model: nn.Module, mask: Mask | None) -> None:
        patch_vit(model.backbone)

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
