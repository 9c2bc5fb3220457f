"""The CV pre-training study's report: a verdict table first (the paper's claims, what was measured with 95 %
intervals over seeds, and a verdict by the rules written in the report), then the tables and figures behind it."""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from ticketlab.analysis import paired_gaps, sensitivity_table
from ticketlab.baselines.base import branch_label
from ticketlab.figures import markdown_table, pct, plot_heatmap, plot_layer_sparsity, plot_overlap, pm, pyplot
from ticketlab.masks import Mask
from ticketlab.paths import IMP, REPORT
from ticketlab.results import score
from ticketlab.runfolders import load_run
from ticketlab.stats import drop_claim, interval_text, mean_ci, sparsity_claim
from ticketlab.studies.common import REPLICATE_STRIDE
from ticketlab.studies.verdict_file import VerdictRow, apply_holm, write_verdicts
from ticketlab.studies.verdicts import RULES, claim_row, comparison_row, reference_problem, run_cells, usable

PAPER_SHARED = 0.0655  # Chen et al.: tickets of different pre-trainings share < 6.55 % after 5 rounds
OVERLAP_RULE = (
    "**Overlap** (\"tickets of different pre-trainings share < 6.55 %\"): per θp replicate r, the IoU of kept "
    "weights between the tickets of different objectives found from their replicate r (first seed), averaged over "
    "the pairs of objectives; its 95 % t-interval over replicates. Reproduced when the interval's upper end is below "
    "6.55 %, contradicted when its lower end is above it, otherwise (or with one replicate) inconclusive. Beside it: "
    "the IoU two independent random masks with the same per-layer keep counts have (chance), and the IoU of tickets "
    "of one objective from one θp with other seeds (the noise floor of mask finding).")


def overlap_row(overlaps: dict[tuple[str, str], dict[str, Any]], names: dict[tuple[str, int], str],
                seed: int) -> VerdictRow:
    """The overlap claim judged over replicate pairs (``names``: (label, unit) -> ticket name)."""
    labels = list(dict.fromkeys(label for label, _ in names))
    replicates = sorted({unit // REPLICATE_STRIDE for _, unit in names})

    def pair(a: str, b: str) -> dict[str, Any]:
        return overlaps.get((a, b)) or overlaps[(b, a)]

    per_replicate, chance = [], []
    for r in replicates:
        unit = seed + REPLICATE_STRIDE * r
        cross = [pair(names[a, unit], names[b, unit]) for a, b in itertools.combinations(labels, 2)
                 if (a, unit) in names and (b, unit) in names]
        if cross:
            per_replicate.append(statistics.fmean(c["iou"] for c in cross))
            chance += [c["chance_iou"] for c in cross]
    same = [pair(names[label, u], names[label, v])["iou"] for label in labels
            for u, v in itertools.combinations(sorted(u for lb, u in names if lb == label), 2)
            if u // REPLICATE_STRIDE == v // REPLICATE_STRIDE]
    measured = mean_ci(per_replicate) if per_replicate else None
    verdict = drop_claim(measured, PAPER_SHARED) if measured is not None else "inconclusive"
    text = lambda v: f"{100 * statistics.fmean(v):.1f} %" if v else "–"  # noqa: E731
    above = measured is not None and measured.low is not None and chance and measured.low > max(chance)
    below_chance = chance and PAPER_SHARED < min(chance)  # the bound asks for less overlap than random masks have
    return VerdictRow(["tickets of different pre-trainings differ (mask overlap)",
                       f"< {100 * PAPER_SHARED:.2f} % shared (paper: after 5 rounds; here the analysis round)",
                       f"IoU across objectives {interval_text(measured)} over {len(per_replicate)} θp replicate(s)",
                       f"chance (random masks, same per-layer keep counts) {text(chance)}"
                       f"{'; above chance' if above else ''}; same θp, other seed {text(same)}"
                       + ("; the paper's bound lies below random-mask chance, so its overlap measure cannot be this "
                          "IoU of kept weights: read the row against chance" if below_chance else ""), verdict],
                      {"rule": "drop", "drops": per_replicate, "most": PAPER_SHARED})


def plot_curves(downstream: dict[tuple[str, str, int], dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    tasks = list(dict.fromkeys(t for _, t, _ in downstream))
    sources = list(dict.fromkeys(s for s, _, _ in downstream))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 4.2), dpi=130, squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for i, source in enumerate(sources):
            runs = {seed: run for (s, t, seed), run in downstream.items() if (s, t) == (source, task)}
            series = {IMP: [run["rounds"] for run in runs.values()]}
            for branch in next(iter(runs.values()))["baselines"]:
                series[branch] = [run["baselines"][branch] for run in runs.values()]
            for j, (branch, per_seed) in enumerate(series.items()):
                by_round: dict[int, list[float]] = {}
                spars = {}
                for rows in per_seed:
                    for r in rows:
                        if r["round"] > 0:
                            by_round.setdefault(r["round"], []).append(100 * score(r["metrics"]))
                            spars[r["round"]] = 100 * r["sparsity"]
                ks = sorted(by_round)
                color = f"C{i}" if branch == IMP else f"C{len(sources) + j}"
                ax.errorbar([spars[k] for k in ks], [statistics.fmean(by_round[k]) for k in ks],
                            yerr=[statistics.stdev(by_round[k]) if len(by_round[k]) > 1 else 0 for k in ks],
                            marker="o" if branch == IMP else "x", linestyle="-" if branch == IMP else ":",
                            color=color, capsize=2, label=f"{branch_label(branch)} from {source} θp")
            dense = [100 * score(run["rounds"][0]["metrics"]) for run in runs.values()]
            ax.axhline(statistics.fmean(dense), color=f"C{i}", linestyle="--", linewidth=1)
            chance = next(iter(runs.values()))["rounds"][0]["metrics"].get("chance_test")
            if chance is not None:
                ax.axhline(100 * chance, color="grey", linestyle="-.", linewidth=1)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("sparsity (%)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test score (%), mean ± std over seeds\n(dashed: dense, dash-dot: chance)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=min(len(labels), 4))
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def write_cv_report(out: Path, study: Any, pretraining_runs: dict[tuple[str, int], Path],
                    downstream_runs: dict[tuple[str, str, int], Path], summary: dict[str, Any],
                    tickets: dict[str, Mask], overlaps: dict[tuple[str, str], Any],
                    sensitivity: list[dict[str, Any]]) -> Path:
    k, n = study.analysis_round, study.prune.rounds
    sources = list(dict.fromkeys(label for label, _ in pretraining_runs))
    targets = [t.name for t in study.downstream]
    pre = {label: {seed: load_run(run) for (lb, seed), run in pretraining_runs.items() if lb == label}
           for label in sources}
    downstream = {key: load_run(run) for key, run in downstream_runs.items()}
    verdicts, pre_cells = [], {}
    for label in sources:
        pre_cells[label] = run_cells(label, pre[label])
        verdicts.append(claim_row(f"{label} ticket on its own pre-training task", study.claims.get(label),
                                  pre_cells[label], label, ""))
    for source, target in summary["pairs"]:
        verdicts.append(claim_row(f"{source} ticket transferred to {target}", study.claims.get(target),
                                  summary["cells"], source, target))
    first = sources[0]
    for target in targets:
        runs = {seed: run for (s, t, seed), run in downstream.items() if (s, t) == (first, target)}
        one = next(iter(runs.values()))
        chance, n_test = (one["rounds"][0]["metrics"].get(key) for key in ("chance_test", "n_test"))
        imp = {seed: score(run["rounds"][k]["metrics"]) for seed, run in runs.items()}
        for branch in one["baselines"]:
            other = {seed: score(r["metrics"]) for seed, run in runs.items() for r in run["baselines"][branch]
                     if r["round"] == k}
            verdicts.append(comparison_row(f"IMP (A) vs {branch_label(branch)} (B) on {target} from {first} θp, "
                                           f"{pct(one['rounds'][k]['sparsity'])}", imp, other, chance, n_test,
                                           all(run["rounds"][k]["metrics"].get("converged", True)
                                               for run in runs.values())))
    by_source: dict[str, dict[str, dict[int, float]]] = {}
    for row in sensitivity:
        by_source.setdefault(row["source"], {}).setdefault(row["variant"], {})[row["seed"]] = score(row)
    for source, variants in by_source.items():
        for variant in ("random", "complement"):
            verdicts.append(comparison_row(f"{source} ticket (A) vs {variant} mask (B) on {study.downstream[0].name}",
                                           variants["ticket"], variants[variant],
                                           *(summary["cells"][(source, study.downstream[0].name, 0)][key]
                                             for key in ("chance_test", "n_test")),
                                           all(r.get("converged", True) for r in sensitivity
                                               if r["source"] == source and r["variant"] == "ticket")))
    names = {(label, unit): f"{label} (pre-training, seed {unit})" for label, unit in pretraining_runs}
    verdicts.append(overlap_row(overlaps, names, study.seeds[0]))
    write_verdicts(out, apply_holm(verdicts))

    lines = [f"# CV pre-training ticket study ({out.name})", "",
             f"Model `{study.model.name}` {study.model.options}; pruning {study.prune.method}, {n} rounds "
             f"({study.prune.schedule}, rate {study.prune.rate}), rewind to θp (pre-trained heads rewound too); "
             f"{study.replicates} independent θp replicate(s) per pre-training, each from its own θ0 and data order "
             f"(share_init: {study.share_init}); seeds {study.seeds} nested in each replicate (unit = seed + "
             f"{REPLICATE_STRIDE} · replicate): unit i finds every mask and fine-tunes its transfers. Intervals: "
             "Student-t 95 % over units (over replicates for the cross-objective overlap).", "",
             "## Verdicts", "", *[f"- {rule}" for rule in [*RULES, OVERLAP_RULE]], "",
             "Claims are MISSION.md §1's (Chen et al.), mapped to the stand-in tasks in the study config.", "",
             markdown_table(["claim", "paper", "measured (95 % CI)", "gap / context", "verdict"], verdicts), ""]

    table = []
    for label in sources:
        cells = pre_cells[label]
        table.append([label, pct(cells[(label, '', 0)].get("chance_test")),
                      *[f"{interval_text(cells[(label, '', r)]['ci'])} ({pct(cells[(label, '', r)]['sparsity'])})"
                        for r in range(n + 1)]])
    lines += ["## 1. Tickets on the pre-training tasks", "",
              markdown_table(["pre-training", "chance", "θp (round 0)", *[f"round {i}" for i in range(1, n + 1)]],
                             table), "",
              "Test score, mean [95 % CI] over seeds: accuracy (supervised) or k-NN accuracy of the backbone features "
              "(SimCLR, MoCo).", ""]

    plot_curves(downstream, out / "curves.png")
    table = []
    for source in dict.fromkeys(s for s, _, _ in downstream):
        for target in targets:
            runs = {seed: run for (s, t, seed), run in downstream.items() if (s, t) == (source, target)}
            cells = run_cells(source, runs)
            result = sparsity_claim(paired_gaps(cells, source, ""), 1.0, usable(cells[(source, "", 0)]))
            table.append([source, target, pct(cells[(source, "", 0)].get("chance_test")),
                          interval_text(cells[(source, "", 0)]["ci"]),
                          *[interval_text(cells[(source, "", r)]["ci"]) for r in range(1, n + 1)],
                          pct(result.measured) if usable(cells[(source, "", 0)])
                          else f"inconclusive (dense {reference_problem(cells[(source, '', 0)])})"])
    sparsities = [pct(s) for s in sorted({c["sparsity"] for (_, _, kk), c in summary["cells"].items() if kk > 0})]
    lines += ["## 2. Tickets found on each downstream task (IMP from θp)", "",
              "Test score (the task's metric: accuracy; COCO mAP@[.5:.95] for detection, mIoU for segmentation), "
              "mean [95 % CI] over seeds; 'matching' = highest sparsity up to which every round's mean "
              "validation score reaches the dense one.", "",
              markdown_table(["θp", "task", "chance", "dense", *sparsities, "matching (validation)"], table), "",
              "![sparsity-accuracy curves](curves.png)", ""]

    table = []
    for (source, target), pair in summary["pairs"].items():
        cells = [summary["cells"].get((source, target, kk)) for kk in range(1, n + 1)]
        table.append([source, target, pct(pair["dense"]["chance_test"]), interval_text(pair["dense"]["ci"]),
                      *[interval_text(c["ci"]) if c else "—" for c in cells],
                      *([pct(pair["matching"]), pct(pair["relaxed"])] if usable(pair["dense"])
                        else ["inconclusive", "inconclusive"])])
    lines += ["## 3. Transfer of pre-training tickets", "",
              f"Test score after fine-tuning θp ⊙ mask with a new head, mean [95 % CI] over seeds. "
              f"{summary['criterion']}.", "",
              markdown_table(["source", "target", "chance", "dense", *sparsities, "matching", "relaxed"], table),
              "", "Universal pre-training tickets (matching / relaxed on every target):", ""]
    lines += [f"- {s}: matching {pct(u['matching'])}, relaxed {pct(u['relaxed'])}"
              for s, u in summary["universal"].items()]
    relaxed = np.array([[100 * (summary["pairs"][(s, t)]["relaxed"] or 0) for t in targets] for s in sources])
    labels = [[f"R {pct(summary['pairs'][(s, t)]['relaxed'])}\nM {pct(summary['pairs'][(s, t)]['matching'])}"
               for t in targets] for s in sources]
    plot_heatmap(relaxed, sources, targets, labels, "highest relaxed (R) / matching (M) sparsity of the "
                 "pre-training ticket on each target", out / "transfer_heatmap.png")
    lines += ["", "![transfer heatmap](transfer_heatmap.png)", ""]

    names = list(tickets)
    plot_overlap(overlaps, names, f"IoU of kept weights (%) at round {k}", out / "overlap.png")
    table = [[a, *[f"{100 * overlaps[(a, b)]['iou']:.1f} ({100 * overlaps[(a, b)]['chance_iou']:.1f})"
                   for b in names]] for a in names]
    lines += [f"## 4. Mask overlap at round {k}", "",
              "IoU of the kept weights (%), and in brackets the IoU two independent random masks with the same "
              "per-layer keep counts have in expectation (chance).", "", markdown_table(["", *names], table), "",
              "![overlap](overlap.png)", ""]

    variants = ["ticket", "complement", "random", "delta10"]
    chance = pct(summary["cells"][(sources[0], study.downstream[0].name, 0)]["chance_test"])
    table = [[source, chance, *[f"{pm(row[v]['mean'], row[v]['std'])} ({pct(row[v]['sparsity'])})" for v in variants]]
             for source, row in sensitivity_table(sensitivity).items()]
    plot_layer_sparsity({name: tickets[name] for name in names if "(pre-training" in name and
                         name.endswith(f"seed {study.seeds[0]})")}, out / "layer_sparsity.png")
    lines += [f"## 5. Perturbation sensitivity on {study.downstream[0].name} (round {k})", "",
              "Test score, mean ± std over seeds (seed i's ticket, fine-tuned with seed i), and (in brackets) each "
              "mask's sparsity: a complement mask keeps the pruned weights, so its sparsity differs.", "",
              markdown_table(["pre-training ticket", "chance", *variants], table), "",
              "## 6. Per-layer sparsity of the pre-training tickets", "", "![layer sparsity](layer_sparsity.png)", ""]
    (out / REPORT).write_text("\n".join(lines))
    return out / REPORT

