"""Rewind points: the weights the survivors of each IMP round are reset to.

Each entry maps a :class:`~ticketlab.experiment.RunContext` to a full model state dict.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from ticketlab.registry import Registry

if TYPE_CHECKING:
    from ticketlab.experiment import RunContext

RewindPoint = Callable[["RunContext"], dict[str, torch.Tensor]]
REWIND_POINTS: Registry[RewindPoint] = Registry("rewind point")

REWIND_POINTS.register("pretrained")(lambda run: run.pretrained_state())  # θp (default)
REWIND_POINTS.register("init")(lambda run: run.random_init_state())  # θ0: a random initialisation
REWIND_POINTS.register("early")(lambda run: run.early_state())  # after k steps of dense fine-tuning
REWIND_POINTS.register("trained")(lambda run: run.dense_trained_state())  # the task-trained dense weights
