"""Random pruning (the RP baseline): uniform random scores, seeded."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ticketlab.pruning.base import PRUNING_METHODS, PruningMethod


def random_scores(weights: Mapping[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {n: torch.rand(w.shape, generator=generator) for n, w in weights.items()}


PRUNING_METHODS.register("global_random")(PruningMethod(random_scores, "global"))
PRUNING_METHODS.register("layerwise_random")(PruningMethod(random_scores, "layerwise"))
