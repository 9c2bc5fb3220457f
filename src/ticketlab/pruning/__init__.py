"""Pruning methods: pure functions ``prune(weights, current_mask, sparsity) -> Mask``.

A method turns weights into scores (magnitude, random, ...) and a scope (global or per layer);
:func:`select_to_sparsity` then keeps the highest scores so that the prunable set has exactly
``target_pruned_count(s, N)`` zeros. Already-pruned weights stay pruned; ties break by position.
"""

from __future__ import annotations

from ticketlab.pruning import magnitude, random  # noqa: E402,F401  (registration)
from ticketlab.pruning.core import (
    PRUNING_METHODS,
    PruningMethod,
    prune,
    select_to_sparsity,
    target_pruned_count,
)

__all__ = ["PRUNING_METHODS", "PruningMethod", "prune", "select_to_sparsity", "target_pruned_count"]
