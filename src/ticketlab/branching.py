"""What a branch of an IMP run may read: the protocol baselines and rewind points are written against.

A leaf: it names types only. The runner's :class:`ticketlab.run_context.RunContext` satisfies it, so plug-ins
never import the runner (no circle ``config → baselines → experiment``, not even through type-only imports).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from ticketlab.masks import Mask
    from ticketlab.models.base import TicketModel



class BranchView(Protocol):
    """The run a baseline or a rewind point branches from: its seed and method, its weights and masks."""

    @property
    def seed(self) -> int: ...

    @property
    def prune_method(self) -> str: ...

    @property
    def prune_structure(self) -> str: ...

    @property
    def channel_multiple(self) -> int: ...

    @property
    def rewind_point(self) -> str: ...

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per run (states are large; rounds reuse them)."""

    def fresh_model(self, random_init: bool = False, init_seed: int | None = None,
                    before_pretraining: bool = False) -> TicketModel: ...

    def pretrained_state(self) -> dict[str, torch.Tensor]: ...

    def imp_weights(self, k: int) -> dict[str, torch.Tensor]: ...

    def early_weights(self) -> dict[str, torch.Tensor]: ...

    def pruning_weights(self, k: int) -> dict[str, torch.Tensor]: ...

    def structure(self) -> TicketModel: ...

    def prunable(self) -> list[str]: ...

    def dense_mask(self) -> Mask: ...

    def sparsity(self, k: int) -> float: ...

    def imp_mask(self, k: int) -> Mask: ...
