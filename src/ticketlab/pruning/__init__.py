"""Pruning methods: pure functions ``prune(weights, current_mask, sparsity) -> Mask``.

The registry, ``prune`` and the exact-count selection live in ``pruning.base`` (a leaf); methods are
plug-ins (``magnitude``, ``random``) imported once by ``ticketlab.plugins``.
"""

from ticketlab.pruning.base import (
    PRUNING_METHODS,
    PruningMethod,
    prune,
    select_to_sparsity,
    target_pruned_count,
)

__all__ = ["PRUNING_METHODS", "PruningMethod", "prune", "select_to_sparsity", "target_pruned_count"]
