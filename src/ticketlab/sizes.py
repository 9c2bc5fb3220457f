"""What a ticket's file size is made of: the pruned (prunable) layers vs the parts never pruned (embeddings,
normalisation, biases, the task head), the sparsity of the prunable set and of the whole model, and the ideal size
at that sparsity — so "1.57× smaller" says why it is not 5× (e.g. MiniLM's embeddings are half of the model and
are never pruned).

The ideal: the kept values of the pruned layers at their dtype, one bit per prunable weight (where they are), and
every never-pruned tensor dense — what a perfect sparse format of this ticket would hold.
"""

from __future__ import annotations

from typing import Any

import torch

from ticketlab.masks import Mask

PARTS = ("pruned layers", "embeddings", "normalisation", "biases", "head", "other layers")


def part_of(name: str) -> str:
    """The never-pruned part a state-dict entry belongs to (by its name)."""
    lowered = name.lower()
    if name.startswith("head."):
        return "head"
    if "embed" in lowered or "position" in lowered or "cls_token" in lowered:
        return "embeddings"
    if any(key in lowered for key in ("norm", ".bn", "bn1", "bn2", "bn3", "layernorm", "running_", "batches_tracked")):
        return "normalisation"
    if name.endswith(".bias"):
        return "biases"
    return "other layers"  # e.g. a CNN stem, patch projections: layers the pruning scope leaves out


def size_breakdown(state: dict[str, torch.Tensor], mask: Mask) -> dict[str, Any]:
    """Bytes and parameter counts per part, the two sparsities, and the ideal size (see the module's docstring)."""
    parts = {p: {"params": 0, "bytes": 0, "zeros": 0} for p in PARTS}
    kept_bytes = bitmask_bytes = 0.0
    for name, tensor in state.items():
        part = "pruned layers" if name in mask.tensors else part_of(name)
        cell = parts[part]
        cell["params"] += tensor.numel()
        cell["bytes"] += tensor.numel() * tensor.element_size()
        if part == "pruned layers":
            keep = mask.tensors[name]
            cell["zeros"] += int((~keep).sum())
            kept_bytes += int(keep.sum()) * tensor.element_size()
            bitmask_bytes += tensor.numel() / 8
    prunable, total = parts["pruned layers"], sum(c["params"] for c in parts.values())
    never = sum(c["bytes"] for p, c in parts.items() if p != "pruned layers")
    return {"parts": parts, "total_params": total, "total_bytes": sum(c["bytes"] for c in parts.values()),
            "prunable_sparsity": prunable["zeros"] / max(prunable["params"], 1),
            "model_sparsity": prunable["zeros"] / max(total, 1),
            "ideal_bytes": int(kept_bytes + bitmask_bytes + never)}


def breakdown_lines(breakdown: dict[str, Any]) -> list[str]:
    """The breakdown as a small text table (``export`` and ``bench`` print it)."""
    total = breakdown["total_bytes"]
    lines = [f"{'part':<15} {'params':>12} {'bytes (dense)':>15} {'share':>6}  pruned"]
    for part, cell in breakdown["parts"].items():
        if cell["params"]:
            pruned = f"{cell['zeros'] / cell['params']:.1%}" if part == "pruned layers" else "never"
            lines.append(f"{part:<15} {cell['params']:>12,} {cell['bytes']:>15,} {cell['bytes'] / total:>6.1%}  {pruned}")
    lines.append(f"sparsity: {breakdown['prunable_sparsity']:.1%} of the prunable weights, "
                 f"{breakdown['model_sparsity']:.1%} of the whole model; ideal size at this sparsity "
                 f"{breakdown['ideal_bytes']:,} bytes (kept values + 1 bit per prunable weight + the never-pruned "
                 "parts dense)")
    return lines
