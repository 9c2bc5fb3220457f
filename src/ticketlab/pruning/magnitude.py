"""Magnitude pruning (Han et al.; Frankle & Carbin): remove the smallest |w|."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ticketlab.pruning.base import PRUNING_METHODS, PruningMethod


def magnitude_scores(weights: Mapping[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {n: w.detach().abs() for n, w in weights.items()}


PRUNING_METHODS.register("global_magnitude")(PruningMethod(magnitude_scores, "global"))
PRUNING_METHODS.register("layerwise_magnitude")(PruningMethod(magnitude_scores, "layerwise"))
