"""The runner's view of one IMP run: generic, lazily loaded accessors to its weights, masks and schedule.

Baselines and rewind points receive it typed as :class:`ticketlab.branching.BranchView` — the narrow part a
branch may read — so no plug-in depends on the runner.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ticketlab.config import ExperimentConfig
from ticketlab.data.base import Task
from ticketlab.errors import TicketlabError
from ticketlab.masks import Mask
from ticketlab.models.base import TicketModel, base_model_options, build_model
from ticketlab.paths import IMP, RunPaths
from ticketlab.pretrain import heads_for_run
from ticketlab.prunable import prunable_names
from ticketlab.runfolders import load_theta_p
from ticketlab.schedules import round_sparsities
from ticketlab.tensorfiles import load_tensors


class RunContext:
    """Generic accessors to what a round or a baseline branch needs, loaded lazily from the run folder.

    Special start states (a baseline's, a rewind point's) are computed by their plug-in from these;
    :meth:`memo` lets them cache what they compute for the rest of the run.
    """

    def __init__(self, config: ExperimentConfig, run_dir: Path, task: Task) -> None:
        self.config = config
        self.paths = RunPaths(run_dir)
        self.dir = self.paths.root
        self.task = task
        self.sparsities = [0.0, *round_sparsities(config.prune.schedule, config.prune.rounds, config.prune.rate,
                                                  config.prune.sparsities)]
        self._memo: dict[str, Any] = {}

    # what the run is (branches read these, not the config) ---------------------------------------
    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def prune_method(self) -> str:
        return self.config.prune.method

    @property
    def prune_structure(self) -> str:
        return self.config.prune.structure

    @property
    def channel_multiple(self) -> int:
        return self.config.prune.channel_multiple

    @property
    def rewind_point(self) -> str:
        return self.config.prune.rewind

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per run context (states are large; rounds reuse them)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    # models and weights -----------------------------------------------------------------------
    def fresh_model(self, random_init: bool = False, init_seed: int | None = None,
                    before_pretraining: bool = False) -> TicketModel:
        """The architecture with the run's seeded head; ``random_init`` draws its weights from ``init_seed``;
        ``before_pretraining`` loads the weights the model's checkpoint started from (UNITER: its BERT)."""
        seed = self.config.seed if init_seed is None else init_seed
        options = self.config.model.options
        if before_pretraining:
            options = base_model_options(self.config.model.name, options)
        return build_model(self.config.model.name, self.task.num_classes, options, seed=seed,
                           head=self.task.head, head_seed=self.config.seed, random_init=random_init,
                           normalize=self.config.model.normalize)

    def pretrained_state(self) -> dict[str, torch.Tensor]:
        return self.memo("theta_p", lambda: load_theta_p(self.dir))

    def imp_weights(self, k: int) -> dict[str, torch.Tensor]:
        """The trained weights of IMP round ``k`` (round 0: the dense task-trained weights)."""
        if not self.paths.weights(k).is_file() and self.paths.is_done(IMP, k):
            raise TicketlabError(f"the weights of round {k} of {self.dir.name} were not kept (keep: needed keeps θp, "
                                 "round 0 and the last round); set keep: all in a new run to keep every round's")
        return load_tensors(self.paths.weights(k))[0]

    def early_weights(self) -> dict[str, torch.Tensor]:
        """The dense weights after ``prune.rewind_steps`` steps (rewind point ``early``)."""
        return self.memo("early", lambda: load_tensors(self.paths.early())[0])

    def structure(self) -> TicketModel:
        """The architecture, built once per run, for pruning methods that need its structure (heads, blocks)."""
        return self.memo("structure", self.fresh_model)

    def pretrained_heads(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """IMP on the pre-training task itself (same objective, options and task): the pre-training's head and
        objective parts, which belong to θp and are rewound with it (as the MoCo code rewinds its key encoder and
        queue); None otherwise or for pre-trainings written before heads were kept."""
        return self.memo("pretrained_heads", lambda: heads_for_run(self.config, self.dir.parent))

    def pruning_weights(self, k: int) -> dict[str, torch.Tensor]:
        """The weights round ``k + 1`` prunes from: round ``k``'s end-of-training weights (``prune.weights: final``,
        as LTH and the papers' code do) or its best-validation ones. Rounds written before final weights were kept
        fall back to the best-validation weights they were pruned from then."""
        final = self.paths.final_weights(k)
        if self.config.prune.weights == "final" and final.is_file():
            return load_tensors(final)[0]
        return self.imp_weights(k)

    # masks -------------------------------------------------------------------------------------
    def prunable(self) -> list[str]:
        return self.memo("prunable", lambda: prunable_names(self.fresh_model(), self.config.prune.prunable))

    def dense_mask(self) -> Mask:
        """All ones over the prunable set (shapes from θp, so no model is built)."""
        theta_p = self.pretrained_state()
        return Mask({n: torch.ones_like(theta_p[n], dtype=torch.bool) for n in self.prunable()})

    def sparsity(self, k: int) -> float:
        return self.sparsities[k]

    def imp_mask(self, k: int) -> Mask:
        return Mask.load(self.paths.mask(IMP, k))
