"""Training objectives: the loss used to pre-train a backbone or to train an IMP round.

An objective is a module (it may own trainable parts, e.g. a projection head) with
``setup(model, mask)`` before training, ``loss(model, x, y, generator)``, ``after_step(model)``
(e.g. MoCo's momentum update) and ``evaluate(model, task, split)`` — the score used for
best-checkpoint selection and reporting (accuracy, or k-NN accuracy for self-supervised objectives).
Adding one is a new file here plus one ``@OBJECTIVES.register``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ticketlab.data import Split, Task
from ticketlab.masks import Mask
from ticketlab.registry import Registry

OBJECTIVES: Registry = Registry("pre-training objective")


@torch.no_grad()
def accuracy(model: nn.Module, split: Split, batch_size: int = 512) -> float:
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(split), batch_size):
        logits = model(split.inputs(slice(start, start + batch_size)))
        correct += int((logits.argmax(-1) == split.y[start : start + batch_size]).sum())
    model.train(was_training)
    return correct / len(split)


class Objective(nn.Module):
    """Base objective: supervised cross-entropy on the model's head."""

    name = "supervised"

    def setup(self, model: nn.Module, mask: Mask | None) -> None:
        """Build parts sized to the model (projection heads, key encoders)."""

    def loss(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
             generator: torch.Generator) -> torch.Tensor:
        return F.cross_entropy(model(inputs), labels)

    def after_step(self, model: nn.Module) -> None:
        """Called after each optimiser step and mask re-application."""

    def evaluate(self, model: nn.Module, task: Task, split: str) -> float:
        return accuracy(model, getattr(task, split))


OBJECTIVES.register("supervised")(Objective)

from ticketlab.objectives import contrastive, patches  # noqa: E402,F401  (registration)
