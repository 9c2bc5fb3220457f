"""Baselines as branches of a finished IMP run: each is (run, round k) -> (mask, starting weights).

The branch is then trained exactly like an IMP round and stored under ``baselines/<name>/``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from ticketlab.masks import Mask
from ticketlab.pruning import PRUNING_METHODS, prune
from ticketlab.registry import Registry
from ticketlab.rewind import REWIND_POINTS

if TYPE_CHECKING:
    from ticketlab.experiment import RunContext

Branch = Callable[["RunContext", int], tuple[Mask, dict[str, torch.Tensor]]]
BASELINES: Registry[Branch] = Registry("baseline")


def _rewound(run: RunContext) -> dict[str, torch.Tensor]:
    return REWIND_POINTS.get(run.config.prune.rewind)(run)


@BASELINES.register("omp")
def one_shot_magnitude(run: RunContext, k: int) -> tuple[Mask, dict[str, torch.Tensor]]:
    """OMP: prune the dense task-trained weights straight to round k's sparsity, then rewind."""
    mask = prune(run.config.prune.method, run.dense_trained_state(), run.dense_mask(), run.sparsity(k))
    return mask, _rewound(run)


@BASELINES.register("random_prune")
def random_pruning(run: RunContext, k: int) -> tuple[Mask, dict[str, torch.Tensor]]:
    """RP: a random mask at round k's sparsity (same scope as the IMP method), on the rewind weights."""
    scope = PRUNING_METHODS.get(run.config.prune.method).scope
    generator = torch.Generator().manual_seed(run.config.seed * 7919 + 1000 + k)
    mask = prune(f"{scope}_random", run.pretrained_state(), run.dense_mask(), run.sparsity(k), generator)
    return mask, _rewound(run)


@BASELINES.register("random_reinit")
def random_reinitialisation(run: RunContext, k: int) -> tuple[Mask, dict[str, torch.Tensor]]:
    """The ticket's mask on a freshly drawn random initialisation: does the ticket need its weights?

    Drawn from seed + 1, so it differs from θ0 even when the run starts from θ0 (no pre-training).
    """
    return run.imp_mask(k), run.redrawn_init_state()


@BASELINES.register("reversed")
def reversed_mask(run: RunContext, k: int) -> tuple[Mask, dict[str, torch.Tensor]]:
    """The complement of the ticket's mask (keeps exactly what IMP pruned), on the rewind weights."""
    return run.imp_mask(k).complement(), _rewound(run)


@BASELINES.register("base_checkpoint")
def mask_on_base_checkpoint(run: RunContext, k: int) -> tuple[Mask, dict[str, torch.Tensor]]:
    """The ticket's mask on the weights the model had *before* pre-training (``model.options.path``).

    For a V+L model initialised from a text checkpoint this is the study's "mask on BERT weights":
    does the ticket need the V+L pre-training, or only the text pre-training?
    """
    return run.imp_mask(k), run.base_checkpoint_state()


@BASELINES.register("shuffled_pretrained")
def mask_on_shuffled_pretrained(run: RunContext, k: int) -> tuple[Mask, dict[str, torch.Tensor]]:
    """The ticket's mask on θp whose prunable layers are each randomly permuted: every layer keeps its
    weight distribution but loses its learned arrangement."""
    generator = torch.Generator().manual_seed(run.config.seed * 7919 + 2000 + k)
    state = dict(run.pretrained_state())
    for name in run.prunable():
        flat = state[name].flatten()
        state[name] = flat[torch.randperm(len(flat), generator=generator)].view_as(state[name])
    return run.imp_mask(k), state
