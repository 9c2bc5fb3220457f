"""The baseline registry (a leaf): a baseline is a branch of a finished IMP run, ``(run, k) -> (mask, start)``.

The branch is then trained exactly like an IMP round and stored under ``baselines/<name>/``. Each
baseline computes its own start weights from the run's generic accessors and carries its display label.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ticketlab.paths import IMP
from ticketlab.registry import Registry

if TYPE_CHECKING:  # reports read labels from here without torch
    import torch

    from ticketlab.branching import BranchView
    from ticketlab.masks import Mask

Branch = Callable[["BranchView", int], "tuple[Mask, dict[str, torch.Tensor]]"]


@dataclass(frozen=True)
class Baseline:
    label: str  # how reports and plots name it
    func: Branch

    def __call__(self, run: BranchView, k: int) -> tuple[Mask, dict[str, torch.Tensor]]:
        return self.func(run, k)


BASELINES: Registry[Baseline] = Registry("baseline")


def baseline(name: str, label: str) -> Callable[[Branch], Branch]:
    """Register ``func`` as baseline ``name``, shown as ``label`` in tables and plots."""
    def decorator(func: Branch) -> Branch:
        BASELINES.register(name)(Baseline(label, func))
        return func

    return decorator


def branch_label(name: str, stored: str | None = None) -> str:
    """The display label of a branch: IMP itself, the label stored with its results, or a registered baseline's
    (its name if unknown)."""
    if stored:
        return stored
    if name == IMP:
        return "IMP (ticket)"
    return BASELINES.get(name).label if name in BASELINES else name
