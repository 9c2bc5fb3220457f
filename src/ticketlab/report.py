"""Results table (terminal/markdown) and the sparsity-accuracy plot of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ticketlab.experiment import load_run

BRANCH_LABELS = {"imp": "IMP (ticket)", "omp": "one-shot magnitude", "random_prune": "random pruning",
                 "random_reinit": "random re-init", "reversed": "reversed mask",
                 "base_checkpoint": "mask on base checkpoint", "shuffled_pretrained": "mask on shuffled θp"}


def results_table(run: dict[str, Any]) -> str:
    """Markdown table: one row per round, test accuracy (%) of IMP and each baseline."""
    branches = list(run["baselines"])
    by_branch = {b: {r["round"]: r for r in rows} for b, rows in run["baselines"].items()}
    head = ["round", "sparsity (prunable)", "sparsity (model)", "IMP", *[BRANCH_LABELS.get(b, b) for b in branches]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in run["rounds"]:
        k, m = row["round"], row["metrics"]
        cells = [str(k), f"{m['sparsity']:.2%}", f"{m['model_sparsity']:.2%}", f"{m['test_acc']:.2%}"]
        for b in branches:
            other = by_branch[b].get(k)
            cells.append(f"{other['metrics']['test_acc']:.2%}" if other else ("(dense)" if k == 0 else "—"))
        lines.append("| " + " | ".join(cells) + " |")
    dense = run["rounds"][0]["metrics"]["test_acc"] if run["rounds"] else None
    if dense is not None:
        lines.append("")
        lines.append(f"dense test accuracy {dense:.2%}; " + ticket_summary(run["rounds"], dense))
    return "\n".join(lines)


def ticket_summary(rounds: list[dict[str, Any]], dense: float, relaxed: float = 0.99) -> str:
    """Highest sparsity whose IMP ticket is matching (>= dense) and relaxed (>= 99 % of dense)."""
    def best(threshold: float) -> str:
        ok = [r["sparsity"] for r in rounds[1:] if r["metrics"]["test_acc"] >= threshold]
        return f"{max(ok):.2%}" if ok else "none"

    return f"highest matching sparsity {best(dense)}; highest relaxed ({relaxed:.0%}) sparsity {best(relaxed * dense)}"


def plot_sparsity_accuracy(run: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=150)
    series = {"imp": run["rounds"], **run["baselines"]}
    markers = {"imp": "o", "omp": "s", "random_prune": "v", "random_reinit": "x", "reversed": "d"}
    for branch, rows in series.items():
        rows = [r for r in rows if r["round"] > 0]
        if rows:
            ax.plot([100 * r["sparsity"] for r in rows], [100 * r["metrics"]["test_acc"] for r in rows],
                    marker=markers.get(branch, "."), label=BRANCH_LABELS.get(branch, branch),
                    linewidth=2 if branch == "imp" else 1.2)
    if run["rounds"]:
        dense = 100 * run["rounds"][0]["metrics"]["test_acc"]
        ax.axhline(dense, color="black", linestyle="--", linewidth=1, label=f"dense ({dense:.1f} %)")
        ax.axhspan(0.99 * dense, dense, color="grey", alpha=0.15, label="relaxed (≥ 99 % of dense)")
    cfg = run["config"]
    ax.set_xlabel("sparsity of the prunable weights (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{cfg['model']['name']} on {cfg['task']['name']} — {cfg['prune']['method']}, "
                 f"rewind to {cfg['prune']['rewind']}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(run_dir: Path) -> dict[str, Any]:
    run = load_run(run_dir)
    table = results_table(run)
    (Path(run_dir) / "results.md").write_text(f"# {run['run']}\n\n{table}\n\n![](sparsity_accuracy.png)\n")
    plot_sparsity_accuracy(run, Path(run_dir) / "sparsity_accuracy.png")
    return run
