"""The built-in baselines (MISSION.md): OMP, random pruning, random re-init, reversed mask, and the V+L
study's mask on the base checkpoint and on shuffled θp."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ticketlab.baselines.base import baseline
from ticketlab.masks import Mask
from ticketlab.pruning.base import PRUNING_METHODS, prune
from ticketlab.rewind import rewound_state
from ticketlab.seeds import derive_seed

if TYPE_CHECKING:
    from ticketlab.branching import BranchView

Start = tuple[Mask, dict[str, torch.Tensor]]


@baseline("omp", "one-shot magnitude")
def one_shot_magnitude(run: BranchView, k: int) -> Start:
    """OMP: prune the dense task-trained weights straight to round k's sparsity, then rewind."""
    mask = prune(run.prune_method, run.pruning_weights(0), run.dense_mask(), run.sparsity(k), None,
                 run.structure(), run.prune_structure, run.channel_multiple)
    return mask, rewound_state(run)


@baseline("random_prune", "random pruning")
def random_pruning(run: BranchView, k: int) -> Start:
    """RP: a random mask at round k's sparsity (same scope as the IMP method), on the rewind weights."""
    scope = PRUNING_METHODS.get(run.prune_method).scope
    generator = torch.Generator().manual_seed(derive_seed(run.seed, "random_prune", k))
    mask = prune(f"{scope}_random", run.pretrained_state(), run.dense_mask(), run.sparsity(k), generator,
                 run.structure(), run.prune_structure, run.channel_multiple)
    return mask, rewound_state(run)


@baseline("random_reinit", "random re-init")
def random_reinitialisation(run: BranchView, k: int) -> Start:
    """The ticket's mask on a freshly drawn random initialisation: does the ticket need its weights?

    Drawn from seed + 1, so it differs from θ0 even when the run starts from θ0 (no pre-training); every
    model family draws fresh weights for its architecture, whether or not its options name a checkpoint.
    """
    init_seed = derive_seed(run.seed, "redraw_init")
    state = run.memo("redrawn_init", lambda: run.fresh_model(random_init=True, init_seed=init_seed).state_dict())
    return run.imp_mask(k), state


@baseline("reversed", "reversed mask")
def reversed_mask(run: BranchView, k: int) -> Start:
    """The complement of the ticket's mask (keeps exactly what IMP pruned), on the rewind weights."""
    return run.imp_mask(k).complement(), rewound_state(run)


@baseline("base_checkpoint", "mask on base checkpoint")
def mask_on_base_checkpoint(run: BranchView, k: int) -> Start:
    """The ticket's mask on the weights the model had *before* pre-training (``model.options.path``).

    For a V+L model initialised from a text checkpoint this is the study's "mask on BERT weights":
    does the ticket need the V+L pre-training, or only the text pre-training?
    """
    return run.imp_mask(k), run.memo("base_checkpoint", lambda: run.fresh_model(before_pretraining=True).state_dict())


@baseline("shuffled_pretrained", "mask on shuffled θp")
def mask_on_shuffled_pretrained(run: BranchView, k: int) -> Start:
    """The ticket's mask on θp whose prunable layers are each randomly permuted: every layer keeps its
    weight distribution but loses its learned arrangement."""
    generator = torch.Generator().manual_seed(derive_seed(run.seed, "shuffle_theta_p", k))
    state = dict(run.pretrained_state())
    for name in run.prunable():
        flat = state[name].flatten()
        state[name] = flat[torch.randperm(len(flat), generator=generator)].view_as(state[name])
    return run.imp_mask(k), state
