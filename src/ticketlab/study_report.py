"""Figures and ``report.md`` of a CV pre-training study."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ticketlab.experiment import load_run
from ticketlab.masks import Mask
from ticketlab.report import BRANCH_LABELS, ticket_summary


def _plt():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _pct(value: float | None) -> str:
    return "none" if value is None else f"{100 * value:.2f} %"


def plot_curves(downstream: dict[tuple[str, str], dict[str, Any]], path: Path) -> None:
    plt = _plt()
    tasks = list(dict.fromkeys(t for _, t in downstream))
    sources = list(dict.fromkeys(s for s, _ in downstream))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 4.2), dpi=130, squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for i, source in enumerate(sources):
            run = downstream.get((source, task))
            if run is None:
                continue
            rows = [r for r in run["rounds"] if r["round"] > 0]
            color = f"C{i}"
            ax.plot([100 * r["sparsity"] for r in rows], [100 * r["metrics"]["test_acc"] for r in rows], marker="o",
                    color=color, linewidth=2, label=f"IMP from {source} θp")
            ax.axhline(100 * run["rounds"][0]["metrics"]["test_acc"], color=color, linestyle="--", linewidth=1)
            for j, (branch, brows) in enumerate(run["baselines"].items()):  # baselines exist for one θp
                ax.plot([100 * r["sparsity"] for r in brows], [100 * r["metrics"]["test_acc"] for r in brows],
                        marker="x", linestyle=":", color=f"C{len(sources) + j}",
                        label=f"{BRANCH_LABELS.get(branch, branch)} ({source})")
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("sparsity (%)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)  (dashed: dense)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=min(len(labels), 6))
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def plot_heatmap(matrix: np.ndarray, rows: list[str], cols: list[str], labels: list[list[str]], title: str,
                 path: Path, cmap: str = "viridis", vmin: float = 0, vmax: float = 100) -> None:
    plt = _plt()
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


def plot_layer_sparsity(masks: dict[str, Mask], path: Path) -> None:
    plt = _plt()
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


def write_study_report(out: Path, study: Any, pretraining_runs: dict[str, Path],
                       downstream_runs: dict[tuple[str, str], Path], rows: list[dict[str, Any]],
                       summary: dict[str, Any], tickets: dict[str, Mask], overlaps: dict[tuple[str, str], Any],
                       sensitivity: list[dict[str, Any]]) -> Path:
    from ticketlab.study import sensitivity_table

    k = study.analysis_round
    sources = list(pretraining_runs)
    targets = [t.name for t in study.downstream]
    downstream = {key: load_run(run) for key, run in downstream_runs.items()}
    lines = [f"# CV pre-training ticket study ({out.name})", "",
             f"Model `{study.model.name}` {study.model.options}; pruning {study.prune.method}, "
             f"{study.prune.rounds} rounds ({study.prune.schedule}, rate {study.prune.rate}), rewind to θp; "
             f"transfer seeds {study.transfer_seeds}. {summary['criterion']}.", ""]

    lines += ["## 1. Tickets on the pre-training tasks", "",
              "| pre-training | score at θp (round 0) | " + " | ".join(
                  f"round {i}" for i in range(1, study.prune.rounds + 1)) + " |",
              "|---|---|" + "---|" * study.prune.rounds]
    for label, run_dir in pretraining_runs.items():
        run = load_run(run_dir)
        cells = [f"{100 * r['metrics']['test_acc']:.1f} ({100 * r['sparsity']:.1f} %)" for r in run["rounds"][1:]]
        lines.append(f"| {label} | {100 * run['rounds'][0]['metrics']['test_acc']:.1f} | " + " | ".join(cells) + " |")
    lines += ["", "Scores: accuracy (supervised) or k-NN accuracy of the backbone features (SimCLR, MoCo).", ""]

    lines += ["## 2. Tickets found on each downstream task (IMP from θp)", "",
              "| θp | task | dense | highest matching / relaxed |", "|---|---|---|---|"]
    for (label, task), run in downstream.items():
        dense = run["rounds"][0]["metrics"]["test_acc"]
        lines.append(f"| {label} | {task} | {100 * dense:.2f} | {ticket_summary(run['rounds'], dense)} |")
    plot_curves(downstream, out / "curves.png")
    lines += ["", "![sparsity-accuracy curves](curves.png)", ""]

    lines += ["## 3. Transfer of pre-training tickets", "",
              "Mean ± std over seeds of the test accuracy after fine-tuning θp ⊙ mask with a new head.", ""]
    sparsities = sorted({c["sparsity"] for (s, t, kk), c in summary["cells"].items() if kk > 0})
    lines += ["| source | target | dense | " + " | ".join(f"{100 * s:.1f} %" for s in sparsities)
              + " | matching | relaxed |", "|---|---|---|" + "---|" * (len(sparsities) + 2)]
    for (source, target), pair in summary["pairs"].items():
        cells = []
        for kk in range(1, study.prune.rounds + 1):
            c = summary["cells"].get((source, target, kk))
            cells.append(f"{100 * c['mean']:.1f} ± {100 * c['std']:.1f}" if c else "—")
        dense = pair["dense"]
        lines.append(f"| {source} | {target} | {100 * dense['mean']:.1f} ± {100 * dense['std']:.1f} | "
                     + " | ".join(cells) + f" | {_pct(pair['matching'])} | {_pct(pair['relaxed'])} |")
    lines += ["", "Universal pre-training tickets (matching / relaxed on every target):", ""]
    lines += [f"- {s}: matching {_pct(u['matching'])}, relaxed {_pct(u['relaxed'])}"
              for s, u in summary["universal"].items()]
    relaxed = np.array([[100 * (summary["pairs"][(s, t)]["relaxed"] or 0) for t in targets] for s in sources])
    labels = [[f"R {_pct(summary['pairs'][(s, t)]['relaxed'])}\nM {_pct(summary['pairs'][(s, t)]['matching'])}"
               for t in targets] for s in sources]
    plot_heatmap(relaxed, sources, targets, labels, "highest relaxed (R) / matching (M) sparsity of the "
                 "pre-training ticket on each target", out / "transfer_heatmap.png")
    lines += ["", "![transfer heatmap](transfer_heatmap.png)", ""]

    names = list(tickets)
    iou = np.array([[100 * overlaps[(a, b)]["iou"] for b in names] for a in names])
    plot_heatmap(iou, names, names, [[f"{v:.1f}" for v in row] for row in iou],
                 f"IoU of kept weights (%) at round {k}", out / "overlap.png", cmap="magma")
    lines += [f"## 4. Mask overlap at round {k}", "", "IoU of the kept weights (%); 'shared' = fraction of the row "
              "ticket's kept weights the column ticket keeps.", "",
              "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for a in names:
        lines.append(f"| {a} | " + " | ".join(f"{100 * overlaps[(a, b)]['iou']:.1f} / "
                                              f"{100 * overlaps[(a, b)]['shared']:.1f}" for b in names) + " |")
    lines += ["", "![overlap](overlap.png)", ""]

    table = sensitivity_table(sensitivity)
    variants = ["ticket", "complement", "random", "delta10"]
    lines += [f"## 5. Perturbation sensitivity on {study.downstream[0].name} (round {k})", "",
              "| pre-training ticket | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
    for source, row in table.items():
        lines.append(f"| {source} | " + " | ".join(f"{100 * row[v][0]:.1f} ± {100 * row[v][1]:.1f}" for v in variants)
                     + " |")
    plot_layer_sparsity({n: tickets[n] for n in names if n.endswith("(pre-training)")}, out / "layer_sparsity.png")
    lines += ["", "## 6. Per-layer sparsity of the pre-training tickets", "", "![layer sparsity](layer_sparsity.png)",
              ""]
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md"
