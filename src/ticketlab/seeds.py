"""Every derived random stream of ticketlab, in one place: ``derive_seed(seed, purpose, index)``.

The purposes that existed before this module keep the offsets they were chosen with by hand, so every finished
run, study and transfer reproduces bit for bit (and no content-addressed folder changes); a new purpose gets a
stream from a hash of (purpose, seed, index), independent of all others. Note that ``redraw_init`` and
``augment`` share ``seed + 1`` (two different generators — model weights and augmentation — fed the same seed).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

_LEGACY: dict[str, Callable[[int, int], int]] = {
    "imp_prune": lambda seed, k: seed * 7919 + k,  # IMP round k's pruning (random methods, ties)
    "random_prune": lambda seed, k: seed * 7919 + 1000 + k,  # the random-pruning baseline at round k
    "shuffle_theta_p": lambda seed, k: seed * 7919 + 2000 + k,  # the shuffled-θp baseline at round k
    "redraw_init": lambda seed, _: seed + 1,  # the random re-init baseline's fresh weights
    "augment": lambda seed, _: seed + 1,  # batched augmentation of a training
    "pretraining_init": lambda seed, i: seed + 1000 * i,  # the i-th pre-training of a study (independent θ0)
    "position_control": lambda seed, _: seed + 7,  # which other image's ticket a position-only student sees
    "random_test_patches": lambda seed, _: seed + 11,  # the random patches an RC student is scored on
}


def derive_seed(seed: int, purpose: str, index: int = 0) -> int:
    """The seed of stream ``purpose`` (its ``index``-th member) of a run seeded ``seed``."""
    legacy = _LEGACY.get(purpose)
    if legacy is not None:
        return legacy(seed, index)
    digest = hashlib.sha256(f"{purpose}:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF
