"""Training objectives: the loss used to pre-train a backbone or to train an IMP round.

An objective is a module (it may own trainable parts, e.g. a projection head) with
``setup(model, mask)`` before training, ``loss(model, x, y, generator)``, ``after_step(model)``
(e.g. MoCo's momentum update) and ``evaluate(model, task, split)`` — the score used for
best-checkpoint selection and reporting (accuracy, or k-NN accuracy for self-supervised objectives).
Adding one is a new file here plus one ``@OBJECTIVES.register`` and one import line in ``ticketlab.plugins``.
This module is a leaf: it imports no objective.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ticketlab.data.base import Task
from ticketlab.masks import Mask
from ticketlab.metrics import METRICS
from ticketlab.registry import Registry

OBJECTIVES: Registry = Registry("pre-training objective")


class Objective(nn.Module):
    """Base objective: supervised cross-entropy on the model's head, scored by the task's metric."""

    name = "supervised"
    model_only = True  # the loss only calls model(inputs): under several processes the model can be DDP-wrapped

    def __init__(self) -> None:
        super().__init__()
        self.details: dict[str, dict[str, float]] = {}  # split -> every number the last evaluation gave

    def setup(self, model: nn.Module, mask: Mask | None) -> None:
        """Build parts sized to the model (projection heads, key encoders)."""

    def loss(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
             generator: torch.Generator) -> torch.Tensor:
        head = getattr(getattr(model, "module", model), "head", None)  # through a DDP wrapper
        if hasattr(head, "loss"):  # dense heads (detection, segmentation) score their own outputs
            return head.loss(model(inputs), labels)
        return F.cross_entropy(model(inputs), labels)

    def after_step(self, model: nn.Module) -> None:
        """Called after each optimiser step and mask re-application."""

    def evaluate(self, model: nn.Module, task: Task, split: str) -> float:
        self.details[split] = METRICS.get(task.metric)(model, getattr(task, split))
        return self.details[split]["score"]


OBJECTIVES.register("supervised")(Objective)
