"""Shared figure and Markdown helpers for every report: matplotlib's Agg backend is chosen here, once."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ticketlab.masks import Mask


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (reports are written on headless machines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pct(value: float | None, digits: int = 2) -> str:
    """A fraction as a percentage; ``None`` (nothing qualifies) as 'none'."""
    return "none" if value is None else f"{100 * value:.{digits}f} %"


def pm(mean: float, std: float, scale: float = 100, digits: int = 1) -> str:
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def chance(metrics: dict[str, Any]) -> str:
    """The majority-class (chance) score a result was measured against, or '—' when the metric has none."""
    value = metrics.get("chance_test")
    return "—" if value is None else pct(value, 1)


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; the one way every report writes one."""
    lines = ["| " + " | ".join(map(str, head)) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def plot_heatmap(matrix: np.ndarray, rows: list[str], cols: list[str], labels: list[list[str]], title: str,
                 path: Path, cmap: str = "viridis", vmin: float = 0, vmax: float = 100) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(cols), 1.2 + 0.6 * len(rows)), dpi=130)
    image = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    for i in range(len(rows)):
        for j in range(len(cols)):
            ax.text(j, i, labels[i][j], ha="center", va="center", fontsize=7,
                    color="white" if matrix[i, j] < (vmin + vmax) / 2 else "black")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_overlap(overlaps: dict[tuple[str, str], dict[str, Any]], names: list[str], title: str, path: Path) -> None:
    """Heatmap of the IoU (%) of every pair of tickets."""
    iou = np.array([[100 * overlaps[(a, b)]["iou"] for b in names] for a in names])
    plot_heatmap(iou, names, names, [[f"{v:.1f}" for v in row] for row in iou], title, path, cmap="magma")


def plot_layer_sparsity(masks: dict[str, Mask], path: Path) -> None:
    plt = pyplot()
    names = next(iter(masks.values())).names()
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names)), 3.6), dpi=130)
    width = 0.8 / len(masks)
    for i, (label, mask) in enumerate(masks.items()):
        layer = mask.layer_sparsity()
        ax.bar(np.arange(len(names)) + i * width, [100 * layer[n] for n in names], width, label=label)
    short = [n.removeprefix("backbone.").removesuffix(".weight") for n in names]
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, short, rotation=90, fontsize=6)
    ax.set_ylabel("layer sparsity (%)")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
