"""The V+L ticket study's report: a verdict table first (Gan et al.'s claims from MISSION.md §2, what was measured
with 95 % intervals over seeds, a verdict by the written rules), then the tables and figures behind it."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from ticketlab.analysis import at_chance, paired_gaps
from ticketlab.baselines.base import branch_label
from ticketlab.figures import markdown_table, pct, pyplot
from ticketlab.paths import REPORT
from ticketlab.results import score as test_score
from ticketlab.stats import drop_claim, interval_text, mean_ci, sparsity_claim
from ticketlab.studies.verdict_file import VerdictRow, apply_holm, pool_by_replicate, write_verdicts
from ticketlab.studies.verdicts import RULES, claim_row, comparison_row, reference_problem, run_cells, usable

# Gan et al. (AAAI 2022), UNITER-B: relaxed (99 %) ticket sparsity per task, and the universal pre-training ticket's
# average drop over the tasks (points) per sparsity (MISSION.md section 2)
PAPER_RELAXED = {"vl_vqa": 0.7, "vl_gqa": 0.7, "vl_vcr": 0.5, "vl_nlvr2": 0.6, "vl_snli_ve": 0.6, "vl_refcoco": 0.7,
                 "vl_retrieval": 0.6}
PAPER_UNIVERSAL_DROP = {0.5: 1.00, 0.6: 1.88, 0.7: 3.90, 0.8: 6.80}
DROP_RULE = ("**Universal ticket** (\"the pre-training mask loses at most d points on average over the tasks at "
             "sparsity s\"): per seed, the mean over the tasks whose dense model is usable of (dense − sparse) test "
             "score; its 95 % t-interval over seeds. Reproduced when the interval's upper end is ≤ d; contradicted "
             "when its lower end is > d; otherwise inconclusive. The masks come from θp's pre-training objectives, so "
             "the claim is inconclusive too when θp (round 0, mean over replicates) is at chance on one of them (MLM, "
             "ITM, MRC: the binomial rule on its test targets, chance = the most frequent target).")
PRETRAINING_OBJECTIVES = {"mlm": "MLM", "itm": "ITM", "mrm": "MRC"}


def theta_p_objectives(pretraining: dict[int, dict[str, Any]]) -> dict[str, tuple[float, float | None, int | None]]:
    """Per pre-training objective of θp (round 0 of task-agnostic IMP): (mean test accuracy over units, chance,
    number of test targets); chance is None for runs written before it was recorded."""
    out = {}
    metrics = [run["rounds"][0]["metrics"] for run in pretraining.values() if run["rounds"]]
    for key, label in PRETRAINING_OBJECTIVES.items():
        accs = [m[f"test_{key}_acc"] for m in metrics if f"test_{key}_acc" in m]
        chances = [m[f"test_{key}_chance"] for m in metrics if f"test_{key}_chance" in m]
        sizes = [m[f"test_{key}_n"] for m in metrics if f"test_{key}_n" in m]
        if accs:
            out[label] = (statistics.fmean(accs), statistics.fmean(chances) if chances else None,
                          min(sizes) if sizes else None)
    return out


def theta_p_problem(pretraining: dict[int, dict[str, Any]]) -> str | None:
    """Why θp cannot carry a universal-ticket claim: an objective at chance (None: it can)."""
    low = [f"{label} {100 * acc:.1f} % vs chance {100 * chance:.1f} %"
           for label, (acc, chance, n) in theta_p_objectives(pretraining).items()
           if chance is not None and at_chance(acc, chance, n)]
    return f"θp at chance on {', '.join(low)}" if low else None


def task_summary(runs: dict[tuple[str, int], dict[str, Any]], relaxed: float) -> dict[str, dict[str, Any]]:
    """Per task: cells over seeds (``verdicts.run_cells``), the mean ± std curve, and the highest matching and
    relaxed sparsity decided on the mean validation score (contiguous rule; ``None``: none)."""
    out: dict[str, dict[str, Any]] = {}
    for task in dict.fromkeys(t for t, _ in runs):
        cells = run_cells(task, {seed: run for (t, seed), run in runs.items() if t == task})
        curve = [(c["sparsity"], statistics.fmean(c["test"].values()),
                  statistics.stdev(c["test"].values()) if len(c["test"]) > 1 else 0.0)
                 for _, c in sorted(cells.items(), key=lambda item: item[0][2])]
        result = {kind: sparsity_claim(paired_gaps(cells, task, "", factor), 1.0).measured
                  for kind, factor in (("matching", 1.0), ("relaxed", relaxed))}
        baselines = defaultdict(list)
        for (t, _), run in runs.items():
            for name, rows in run["baselines"].items():
                if t == task:
                    baselines[name] += rows
        out[task] = {"cells": cells, "curve": curve, **result, "usable": usable(cells[(task, "", 0)]),
                     "seeds": len(cells[(task, "", 0)]["test"]), "baselines": dict(baselines)}
    return out


def universal_table(transfers: list[dict[str, Any]], kind: str = "standard",
                    skip: frozenset[str] = frozenset()) -> tuple[list[str], list[dict[str, Any]]]:
    """Per sparsity: each task's mean score over seeds, and the average drop from dense over the tasks (minus
    ``skip``) as an interval over seeds (points, and relative)."""
    rows = [r for r in transfers if r["kind"] == kind]
    tasks = list(dict.fromkeys(r["target"] for r in rows))
    score = {(r["target"], r["round"], r.get("seed", 0)): r for r in rows}
    table = []
    for k in sorted({r["round"] for r in rows}):
        unit_drops, unit_relative = {}, {}
        for seed in sorted({s for (_, kk, s) in score if kk == k}):
            pairs = [(test_score(score[(t, 0, seed)]), test_score(score[(t, k, seed)])) for t in tasks
                     if t not in skip and (t, k, seed) in score and (t, 0, seed) in score]
            if pairs:
                unit_drops[seed] = statistics.fmean(d - s for d, s in pairs)
                unit_relative[seed] = statistics.fmean((d - s) / d for d, s in pairs if d)
        drops, relative = pool_by_replicate(unit_drops), pool_by_replicate(unit_relative)  # one per θp replicate
        cells = {t: statistics.fmean(test_score(r) for (tt, kk, _), r in score.items() if (tt, kk) == (t, k))
                 for t in tasks if any((tt, kk) == (t, k) for (tt, kk, _) in score)}
        table.append({"round": k, "sparsity": next(r["sparsity"] for (_, kk, _), r in score.items() if kk == k),
                      "scores": cells, "drop": statistics.fmean(drops) if drops else float("nan"),
                      "drop_ci": mean_ci(drops) if drops else None, "drops": drops,
                      "relative_drop": statistics.fmean(relative) if relative else float("nan")})
    return tasks, table


def drop_row(sparsity: float, claimed: float, drops: list[float], problem: str | None = None,
             skipped: dict[str, str] | None = None) -> list[str]:
    """The universal-ticket row; ``skipped``: tasks left out of the average (task → why its dense is unusable)."""
    drop = mean_ci(drops) if drops else None
    left_out = "; ".join(f"{task} left out (dense {why})" for task, why in (skipped or {}).items())
    if not drops and not problem:
        problem = "no task with a usable dense reference"
    verdict = "inconclusive" if drop is None or problem else drop_claim(drop, claimed / 100)
    context = f"{problem}: inconclusive" if problem else "θp above chance on MLM, ITM and MRC"
    return VerdictRow([f"universal pre-training ticket at {pct(sparsity)}", f"average drop ≤ {claimed:.2f} pts",
                       f"{interval_text(drop)} pts (n = {len(drops)})",
                       "; ".join(part for part in (context, left_out) if part), verdict],
                      {"rule": "drop", "drops": list(drops), "most": claimed / 100, "usable": problem is None})


def _seeded(rows: list[dict[str, Any]], **match: Any) -> dict[int, float]:
    return {r.get("seed", 0): test_score(r) for r in rows if all(r.get(k) == v for k, v in match.items())}


def verdict_rows(study: Any, summary: dict[str, dict[str, Any]], transfers: list[dict[str, Any]],
                 runs: dict[tuple[str, int], dict[str, Any]], pretraining: dict[int, dict[str, Any]]
                 ) -> list[list[str]]:
    rows = [claim_row(f"task-specific ticket on {task}", PAPER_RELAXED.get(task), info["cells"], task, "",
                      relaxed=study.relaxed) for task, info in summary.items()]
    for task, info in summary.items():
        chance, n_test = (info["cells"][(task, "", 0)][key] for key in ("chance_test", "n_test"))
        for k in study.baseline_rounds:
            imp = {seed: test_score(run["rounds"][k]["metrics"]) for (t, seed), run in runs.items() if t == task}
            for name in study.baselines:
                other = {seed: test_score(r["metrics"]) for (t, seed), run in runs.items() if t == task
                         for r in run["baselines"].get(name, []) if r["round"] == k}
                sparsity = info["cells"][(task, "", k)]["sparsity"]
                rows.append(comparison_row(f"IMP (A) vs {branch_label(name)} (B) on {task} at {pct(sparsity)}", imp,
                                           other, chance, n_test, info["cells"][(task, "", k)]["converged"]))
    skip = frozenset(t for t, info in summary.items() if not info["usable"])
    _, table = universal_table(transfers, skip=skip)
    problem = theta_p_problem(pretraining)
    left_out = {t: reference_problem(summary[t]["cells"][(t, "", 0)]) for t in sorted(skip)}
    for row in table:
        claimed = PAPER_UNIVERSAL_DROP.get(round(row["sparsity"], 2))
        if claimed is not None:
            rows.append(drop_row(row["sparsity"], claimed, row["drops"], problem, left_out))
    for task in dict.fromkeys(r["target"] for r in transfers if r["kind"] == "adversarial"):
        for k in sorted({r["round"] for r in transfers if r["kind"] == "adversarial" and r["target"] == task}):
            adv = _seeded(transfers, kind="adversarial", target=task, round=k)
            std = _seeded(transfers, kind="standard", target=task, round=k)
            sparsity = next(r["sparsity"] for r in transfers if r["target"] == task and r["round"] == k)
            reference = summary[task]["cells"][(task, "", 0)]
            rows.append(comparison_row(f"VILLA (A) vs standard fine-tuning (B), universal ticket on {task} at "
                                       f"{pct(sparsity)}", adv, std, reference["chance_test"], reference["n_test"],
                                       all(r.get("converged", True) for r in transfers if r["kind"] == "adversarial"
                                           and r["target"] == task and r["round"] == k)))
    return rows


def plot_task_curves(summary: dict[str, dict[str, Any]], transfers: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    tasks = list(summary)
    cols = min(len(tasks), 4)
    nrows = (len(tasks) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3.6 * nrows), dpi=130, squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        s, mean, std = zip(*summary[task]["curve"], strict=True)
        x = [100 * v for v in s]
        ax.plot(x, [100 * m for m in mean], marker="o", color="C0", label="task-specific IMP (mean ± std)")
        ax.fill_between(x, [100 * (m - d) for m, d in zip(mean, std, strict=True)],
                        [100 * (m + d) for m, d in zip(mean, std, strict=True)], color="C0", alpha=0.2)
        ax.axhline(100 * mean[0], color="C0", linestyle="--", linewidth=1)
        chance = summary[task]["cells"][(task, "", 0)]["chance_test"]
        if chance is not None:
            ax.axhline(100 * chance, color="grey", linestyle="-.", linewidth=1)
        pre: dict[float, list[float]] = defaultdict(list)
        for r in transfers:
            if r["target"] == task and r["kind"] == "standard":
                pre[r["sparsity"]].append(test_score(r))
        ax.plot([100 * a for a in sorted(pre)], [100 * statistics.fmean(pre[a]) for a in sorted(pre)], marker="s",
                color="C1", label="pre-training (universal) ticket")
        for j, (name, rows) in enumerate(summary[task]["baselines"].items()):
            ax.scatter([100 * r["sparsity"] for r in rows], [100 * test_score(r["metrics"]) for r in rows],
                       marker="x", s=50, color=f"C{2 + j}", label=branch_label(name), zorder=3)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("sparsity (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    axes[0][0].set_ylabel("test score (%)  (dashed: dense, dash-dot: chance)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=len(labels))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def plot_adversarial(transfers: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    keys = sorted({(r["target"], r["round"]) for r in transfers if r["kind"] == "adversarial"})
    mean = {kind: [100 * statistics.fmean(_seeded(transfers, kind=kind, target=t, round=k).values()) for t, k in keys]
            for kind in ("standard", "adversarial")}
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(keys)), 3.8), dpi=130)
    x = range(len(keys))
    ax.bar([i - 0.2 for i in x], mean["standard"], width=0.4, label="standard fine-tuning")
    ax.bar([i + 0.2 for i in x], mean["adversarial"], width=0.4, label="adversarial (VILLA)")
    sparsity = {(r["target"], r["round"]): r["sparsity"] for r in transfers}
    ax.set_xticks(list(x), [f"{t}\n{100 * sparsity[(t, k)]:.0f} %" for t, k in keys], fontsize=7)
    ax.set_ylabel("test score (%), mean over seeds")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_vl_report(out: Path, study: Any, pretraining: dict[int, dict[str, Any]],
                    runs: dict[tuple[str, int], dict[str, Any]], transfers: list[dict[str, Any]]) -> Path:
    summary = task_summary(runs, study.relaxed)
    verdicts = apply_holm(verdict_rows(study, summary, transfers, runs, pretraining))
    write_verdicts(out, verdicts)
    lines = [f"# V+L ticket study ({out.name})", "",
             f"Model `{study.model.name}` {study.model.options}; IMP {study.prune.method}, schedule "
             f"{study.prune.schedule} (rate {study.prune.rate}, {study.prune.rounds} rounds), rewind to θp; "
             f"{getattr(study, 'replicates', 1)} θp replicate(s) (own θ0 and data order), seeds {study.seeds} nested in "
             "each (unit = seed + 1000 · replicate): unit i finds the pre-training and task-specific masks and "
             "fine-tunes the transfers. "
             f"Relaxed = ≥ {study.relaxed:.0%} of dense. Scores are each task's metric on test: the VQA score "
             "(annotators' answers), VCR Q->A accuracy, RefCOCO+ box accuracy (IoU > 0.5) when boxes are given, mean "
             "R@1 (both directions) for retrieval (chance 1 / gallery size), accuracy otherwise. "
             "Intervals: Student-t 95 % over seeds.", "",
             "## Verdicts", "", *[f"- {rule}" for rule in [*RULES, DROP_RULE]], "",
             markdown_table(["claim", "paper", "measured (95 % CI)", "gap / context", "verdict"], verdicts), ""]

    pre = run_cells("pretraining", pretraining)
    lines += ["## 1. Pre-training tickets (task-agnostic IMP on MLM + ITM + MRM)", "",
              markdown_table(["round", "sparsity", "score", *[f"{k} acc" for k in ("MLM", "ITM", "MRC")]],
                             [[r, pct(c["sparsity"]), interval_text(c["ci"]),
                               *[interval_text(mean_ci(vals)) if (vals := [run["rounds"][r]["metrics"][key]
                                                                           for run in pretraining.values()
                                                                           if key in run["rounds"][r]["metrics"]])
                                 else "—" for key in ("test_mlm_acc", "test_itm_acc", "test_mrm_acc")]]
                              for (_, _, r), c in sorted(pre.items(), key=lambda item: item[0][2])]),
              "", "Round 0 is θp itself (the pre-trained model, briefly trained on the objectives once more). "
              "Chance (the most frequent test target) at round 0: " + (", ".join(
                  f"{label} {pct(chance)} of {n} targets" for label, (_, chance, n) in theta_p_objectives(
                      pretraining).items() if chance is not None) or "not recorded (runs from before it was)")
              + f"; {theta_p_problem(pretraining) or 'θp is above chance on every objective'}.", ""]

    first = next(iter(summary.values()))
    sparsities = [c["sparsity"] for _, c in sorted(first["cells"].items(), key=lambda item: item[0][2])]
    lines += ["## 2. Task-specific tickets", "", "Test score, mean [95 % CI] over seeds; matching / relaxed decided on "
              "mean validation scores (every lower sparsity too).", "",
              markdown_table(["task", "chance", *("dense" if s == 0 else pct(s, 0) for s in sparsities), "matching",
                              "relaxed", "paper's relaxed (UNITER-B)"],
                             [[task, pct(info["cells"][(task, "", 0)]["chance_test"]),
                               *(interval_text(c["ci"]) for _, c in sorted(info["cells"].items(),
                                                                            key=lambda item: item[0][2])),
                               pct(info["matching"]) if info["usable"]
                               else f"inconclusive (dense {reference_problem(info['cells'][(task, '', 0)])})",
                               pct(info["relaxed"]) if info["usable"] else "inconclusive",
                               pct(PAPER_RELAXED.get(task), 0)] for task, info in summary.items()])]
    plot_task_curves(summary, transfers, out / "task_curves.png")
    lines += ["", "![task curves](task_curves.png)", ""]

    tasks, table = universal_table(transfers)
    lines += ["## 3. Universal pre-training tickets (the study's Table 2 layout)", "",
              "Seed i's pre-training mask of each round, fine-tuned on every task from θp with seed i; scores are means "
              "over seeds; drop = mean over tasks of dense − sparse, 95 % CI over seeds.", "",
              markdown_table(["sparsity", *tasks, "avg drop (points)", "avg relative drop"],
                             [["dense" if row["round"] == 0 else pct(row["sparsity"], 0),
                               *[f"{100 * row['scores'][t]:.1f}" if t in row["scores"] else "—" for t in tasks],
                               interval_text(row["drop_ci"]), f"{100 * row['relative_drop']:.1f} %"] for row in table]
                             + [["chance", *[pct(summary[t]["cells"][(t, "", 0)]["chance_test"]) if t in summary else "—"
                                             for t in tasks], "–", "–"]])]
    plot_adversarial(transfers, out / "adversarial.png")
    lines += ["", "## 4. Standard vs adversarial (VILLA) fine-tuning of the universal tickets", "",
              f"VILLA options: {study.adversarial_options or 'defaults (3 steps, step 1e-3, KL weight 1.5)'}; "
              "the verdict table above holds the paired differences.", "", "![adversarial](adversarial.png)", ""]
    (out / REPORT).write_text("\n".join(lines))
    return out / REPORT
