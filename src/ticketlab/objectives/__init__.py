"""Training objectives: the loss used to pre-train a backbone or to train an IMP round.

An objective is ``loss(model, inputs, labels) -> scalar`` plus a ``score`` used for best-checkpoint
selection (higher is better). Adding SimCLR/MoCo is a new file here plus one registration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ticketlab.registry import Registry


class Objective(Protocol):
    name: str

    def loss(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor: ...


OBJECTIVES: Registry = Registry("pre-training objective")


@OBJECTIVES.register("supervised")
@dataclass
class Supervised:
    """Cross-entropy classification."""

    name: str = "supervised"

    def loss(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(inputs), labels)
