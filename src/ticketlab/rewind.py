"""Rewind points: the weights the survivors of each IMP round are reset to.

Each entry maps a :class:`~ticketlab.branching.BranchView` (the run) to a full model state dict, computed from
the run's generic accessors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from ticketlab.registry import Registry

if TYPE_CHECKING:
    from ticketlab.branching import BranchView

RewindPoint = Callable[["BranchView"], dict[str, torch.Tensor]]
REWIND_POINTS: Registry[RewindPoint] = Registry("rewind point")


@REWIND_POINTS.register("pretrained")
def pretrained(run: BranchView) -> dict[str, torch.Tensor]:
    """θp (the default)."""
    return run.pretrained_state()


@REWIND_POINTS.register("init")
def random_init(run: BranchView) -> dict[str, torch.Tensor]:
    """θ0: the run's own random initialisation of its architecture."""
    return run.memo("random_init", lambda: run.fresh_model(random_init=True).state_dict())


@REWIND_POINTS.register("early")
def early(run: BranchView) -> dict[str, torch.Tensor]:
    """The weights after ``prune.rewind_steps`` steps of dense fine-tuning."""
    return run.early_weights()


@REWIND_POINTS.register("trained")
def trained(run: BranchView) -> dict[str, torch.Tensor]:
    """The task-trained dense weights (round 0)."""
    return run.imp_weights(0)


@REWIND_POINTS.register("lr")
def learning_rate(run: BranchView) -> dict[str, torch.Tensor]:
    """Learning-rate rewinding (Renda et al., ICLR 2020): IMP round k starts from round k-1's trained weights
    with the schedule restarted (the runner passes those); a baseline starts from the dense trained weights."""
    return run.imp_weights(0)


def rewound_state(run: BranchView) -> dict[str, torch.Tensor]:
    """The start weights of the run's configured rewind point."""
    return REWIND_POINTS.get(run.rewind_point)(run)
