"""Token reduction as pure tensor functions (EViT-style top-k by [CLS] attention)."""

from __future__ import annotations

import math

import torch


def keep_count(num_tokens: int, keep_rate: float) -> int:
    """Tokens kept out of ``num_tokens`` at keep rate k: ⌈k·N⌉ (at least one)."""
    if not 0.0 < keep_rate <= 1.0:
        raise ValueError(f"keep rate {keep_rate!r} is out of range; use a fraction in (0, 1], e.g. 0.7")
    return max(1, math.ceil(keep_rate * num_tokens - 1e-9))


def token_schedule(num_patches: int, keep_rate: float, reductions: int) -> list[int]:
    """Patch counts after each reduction: 196 at k = 0.9 over 3 reductions -> [177, 160, 144]."""
    counts, n = [], num_patches
    for _ in range(reductions):
        n = keep_count(n, keep_rate)
        counts.append(n)
    return counts


def default_reduction_layers(depth: int) -> tuple[int, ...]:
    """The study's blocks 4, 7, 10 of 12 (1-based), scaled to ``depth`` blocks; 0-based indices."""
    return tuple(sorted({min(depth - 1, max(0, round(b * depth / 12) - 1)) for b in (4, 7, 10)}))


def cls_attention(attention: torch.Tensor) -> torch.Tensor:
    """Head-averaged attention from [CLS] to every patch token: ``[B, H, T, T] -> [B, T-1]``."""
    return attention[:, :, 0, 1:].mean(dim=1)


def top_tokens(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Positions (within the current sequence of patches) of the ``keep`` highest scores, in ascending order."""
    return scores.topk(keep, dim=1).indices.sort(dim=1).values
