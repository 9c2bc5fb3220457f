"""The patch-ticket study's report: students (dense / sparse, with intervals and chance), the selector's own
accuracy, the controls, the weight-level comparison, and the verdict table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ticketlab.analysis import mean_std
from ticketlab.figures import chance, markdown_table, pm, pyplot
from ticketlab.paths import REPORT, load_run
from ticketlab.stats import Interval, clearly_above, mean_ci, paired_ci


def summarize_students(rows: list[dict[str, Any]]) -> dict[tuple[float, str], dict[str, Any]]:
    """Per (keep rate, variant): (mean, std) of dense and sparse test accuracy, and the patch counts."""
    groups: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["keep_rate"], row["variant"]), []).append(row)
    return {key: {"dense": mean_std(r["dense_test_acc"] for r in group),
                  "sparse": mean_std(r["sparse_test_acc"] for r in group),
                  "dense_ci": mean_ci([r["dense_test_acc"] for r in group]),
                  "sparse_ci": mean_ci([r["sparse_test_acc"] for r in group]),
                  "patches": f"{group[0]['patches']}/{group[0]['num_patches']}",
                  "chance_test": group[0].get("chance_test"), "selector": group[0].get("selector_test_acc")}
            for key, group in groups.items()}


def paired_gap(rows: list[dict[str, Any]], k: float, a: str, b: str, mode: str) -> Interval | None:
    """Interval of (variant a − variant b) over the seeds both ran at keep rate k."""
    by = {(r["variant"], r["seed"]): r[f"{mode}_test_acc"] for r in rows if r["keep_rate"] == k and "seed" in r}
    seeds = sorted(s for v, s in by if v == a and (b, s) in by)
    return paired_ci([by[a, s] for s in seeds], [by[b, s] for s in seeds]) if seeds else None


def gap_verdict(gap: Interval | None, usable: bool) -> str:
    """The written rule: reproduced when the paired 95 % interval of (ticket − RC) lies above 0, contradicted
    when it lies below 0, inconclusive when it straddles 0, has fewer than 2 seeds, or a model is at chance."""
    if gap is None or gap.low is None or gap.high is None or not usable:
        return "inconclusive"
    return "reproduced" if gap.low > 0 else "contradicted" if gap.high < 0 else "inconclusive"


def verdict_table(rows: list[dict[str, Any]], summary: dict[tuple[float, str], dict[str, Any]]) -> list[str]:
    """Claim 2 of MISSION.md §3 per keep rate and evaluation, with the position-only control beside it."""
    table = []
    for k in sorted({r["keep_rate"] for r in rows}):
        for mode in ("dense", "sparse"):
            gap = paired_gap(rows, k, "ticket", "rc", mode)
            control = paired_gap(rows, k, "ticket", "position", mode)
            chance_level = summary[(k, "ticket")].get("chance_test")
            usable = chance_level is None or all(
                clearly_above(summary[(k, v)][f"{mode}_ci"], chance_level) for v in ("ticket", "rc") if (k, v) in summary)
            table.append([k, mode, "ticket students beat random-patch (RC) students",
                          "–" if gap is None else f"{100 * gap.mean:+.2f} pts [{_pts(gap)}]",
                          "–" if control is None else f"{100 * control.mean:+.2f} pts [{_pts(control)}]",
                          gap_verdict(gap, usable)])
    return ["## Verdicts", "", "Rule: the paired 95 % t-interval over seeds of (ticket − RC) test accuracy: above 0 → "
            "reproduced, below 0 → contradicted, straddling 0, fewer than 2 seeds, or a student not clearly above "
            "chance (interval's lower end ≤ chance) → inconclusive. The position-only control (tickets of other "
            "images) shows how much of the gap positions alone explain.", "",
            markdown_table(["keep rate", "evaluation", "claim (Shen et al., §3 claim 2)", "ticket − RC",
                            "ticket − position control", "verdict"], table), ""]


def _pts(interval: Interval) -> str:
    if interval.low is None or interval.high is None:
        return "n = 1"
    return f"{100 * interval.low:+.2f}, {100 * interval.high:+.2f}"


def write_patch_report(out: Path, cfg: Any, rows: list[dict[str, Any]], weight_runs: dict[str, Path],
                       ticket_files: dict[float, Path]) -> Path:
    plt = pyplot()
    summary = summarize_students(rows)
    lines = ["# Data-level tickets: ticket vs random-patch students", "", *verdict_table(rows, summary),
             f"Selector `{cfg.selector.model.name}` on `{cfg.selector.task.name}`"
             f" ({'fine-tuned with token reduction' if cfg.selector.finetune else 'used as is'}); "
             f"students `{cfg.student.name}` trained from scratch, scored at their final epoch; seeds {cfg.seeds}. Test "
             "accuracy, mean ± std; dense = all patches at test time, sparse = the student's own test patches (RC: "
             "random ones, as in the original protocol).", "",
             markdown_table(["keep rate", "patches", "variant", "selector test acc", "chance", "dense", "sparse"],
                            [[k, s["patches"], variant, "–" if s["selector"] is None else f"{s['selector']:.2%}",
                              chance(s), pm(*s["dense"]), pm(*s["sparse"])]
                             for (k, variant), s in sorted(summary.items())])]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=130)
    for ax, mode in zip(axes, ("dense", "sparse"), strict=True):
        for variant, marker in (("ticket", "o"), ("rc", "s"), ("rc_budget", "^"), ("position", "d")):
            points = sorted((k, s[mode]) for (k, v), s in summary.items() if v == variant)
            if points:
                ax.errorbar([k for k, _ in points], [100 * m for _, (m, _) in points],
                            yerr=[100 * sd for _, (_, sd) in points], marker=marker, capsize=3, label=variant)
        ax.set_title(f"{mode} evaluation", fontsize=10)
        ax.set_xlabel("keep rate k")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "students.png")
    plt.close(fig)
    lines += ["", "![students](students.png)", ""]
    for k, path in ticket_files.items():
        lines.append(f"Tickets at k = {k}: `{path.parent / 'tickets.png'}`")
    if weight_runs:
        fig, axes = plt.subplots(1, len(weight_runs), figsize=(4.5 * len(weight_runs), 3.6), dpi=130, squeeze=False)
        lines += ["", "## Weight-level IMP vs random re-initialisation (the study's first claim)", "",
                  "| architecture | sparsity | IMP | random re-init |", "|---|---|---|---|"]
        for ax, (label, run_dir) in zip(axes[0], weight_runs.items(), strict=True):
            run = load_run(run_dir)
            imp = [r for r in run["rounds"] if r["round"] > 0]
            reinit = {r["round"]: r for r in run["baselines"].get("random_reinit", [])}
            ax.plot([100 * r["sparsity"] for r in imp], [100 * r["metrics"]["test_acc"] for r in imp], "o-",
                    label="IMP ticket")
            ax.plot([100 * reinit[r["round"]]["sparsity"] for r in imp if r["round"] in reinit],
                    [100 * reinit[r["round"]]["metrics"]["test_acc"] for r in imp if r["round"] in reinit], "x--",
                    label="random re-init")
            ax.axhline(100 * run["rounds"][0]["metrics"]["test_acc"], color="black", linestyle=":", label="dense")
            ax.set_title(label, fontsize=10)
            ax.set_xlabel("sparsity (%)")
            ax.grid(alpha=0.3)
            for r in imp:
                other = reinit.get(r["round"])
                other_acc = f"{100 * other['metrics']['test_acc']:.1f}" if other else "—"
                lines.append(f"| {label} | {100 * r['sparsity']:.1f} % | {100 * r['metrics']['test_acc']:.1f} | "
                             f"{other_acc} |")
        axes[0][0].set_ylabel("test accuracy (%)")
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "weight_level.png")
        plt.close(fig)
        lines += ["", "![weight level](weight_level.png)", ""]
    (out / REPORT).write_text("\n".join(lines) + "\n")
    return out / REPORT


