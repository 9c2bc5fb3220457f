"""The patch-ticket study's report: students (dense / sparse, with intervals and chance), the selector's own
accuracy, the controls, the weight-level comparison, and the verdict table."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ticketlab.analysis import at_chance, mean_std
from ticketlab.figures import chance, markdown_table, pm, pyplot
from ticketlab.paths import REPORT
from ticketlab.results import score
from ticketlab.runfolders import load_run
from ticketlab.stats import Interval, gap_verdict, interval_text, mean_ci, paired_ci
from ticketlab.studies.verdict_file import (
    VerdictRow,
    apply_holm,
    comparison_record,
    imp_vs_reinit_record,
    imp_vs_reinit_verdict,
    write_verdicts,
)
from ticketlab.studies.verdict_file import paired_gap as units_gap
from ticketlab.studies.verdicts import reference_problem


def summarize_students(rows: list[dict[str, Any]]) -> dict[tuple[float, str], dict[str, Any]]:
    """Per (keep rate, variant): (mean, std) of dense and sparse test accuracy, and the patch counts."""
    groups: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["keep_rate"], row["variant"]), []).append(row)
    return {key: {"dense": mean_std(score(r, EVALUATIONS["dense"]) for r in group),
                  "sparse": mean_std(score(r, EVALUATIONS["sparse"]) for r in group),
                  "dense_ci": mean_ci([score(r, EVALUATIONS["dense"]) for r in group]),
                  "sparse_ci": mean_ci([score(r, EVALUATIONS["sparse"]) for r in group]),
                  "patches": f"{group[0]['patches']}/{group[0]['num_patches']}",
                  "chance_test": group[0].get("chance_test"), "n_test": group[0].get("n_test"),
                  "selector": _selectors(group)}
            for key, group in groups.items()}


def _selectors(group: list[dict[str, Any]]) -> tuple[float, float] | None:
    """(mean, std) of the test accuracy of the selectors behind ``group`` (one per selector replicate)."""
    scores = [r.get("selector_test_score", r.get("selector_test_acc")) for r in group]
    return mean_std(scores) if scores and None not in scores else None


EVALUATIONS = {"dense": "test_all_patches", "sparse": "test_kept_patches"}  # a student's two test inputs


def per_seed(rows: list[dict[str, Any]], k: float, variant: str, mode: str) -> dict[int, float]:
    """Seed -> test score of ``variant``'s students at keep rate k (the numbers a verdict is recomputed from)."""
    return {r["seed"]: score(r, EVALUATIONS[mode]) for r in rows
            if r["keep_rate"] == k and r["variant"] == variant and "seed" in r}


def paired_gap(rows: list[dict[str, Any]], k: float, a: str, b: str, mode: str) -> Interval | None:
    """Interval of (variant a − variant b) over the units both ran at keep rate k (over selector replicates when
    there are several: ``verdict_file.paired_gap``)."""
    return units_gap(per_seed(rows, k, a, mode), per_seed(rows, k, b, mode))


def above_chance(s: dict[str, Any], mode: str) -> bool:
    """The written rule, everywhere: a student is usable when its mean is not at chance by the binomial rule on
    its test size (``analysis.at_chance``)."""
    return not at_chance(s[mode][0], s.get("chance_test"), s.get("n_test"))


def verdict_rows(rows: list[dict[str, Any]], summary: dict[tuple[float, str], dict[str, Any]]) -> list[VerdictRow]:
    """Claim 2 of MISSION.md §3 per keep rate and evaluation, with the position-only control beside it; each row
    records its per-seed scores, and the table's comparisons are one Holm family."""
    table = []
    for k in sorted({r["keep_rate"] for r in rows}):
        for mode in ("dense", "sparse"):
            gap = paired_gap(rows, k, "ticket", "rc", mode)
            control = paired_gap(rows, k, "ticket", "position", mode)
            some_at_chance = not all(above_chance(summary[(k, v)], mode) for v in ("ticket", "rc") if (k, v) in summary)
            converged = all(r.get("converged", True) for r in rows if r["keep_rate"] == k and r["variant"] == "ticket")
            usable = not some_at_chance and converged  # the A side's convergence, as in every study's comparisons
            record = comparison_record(per_seed(rows, k, "ticket", mode), per_seed(rows, k, "rc", mode), usable)
            problems = ["a student at chance (binomial rule)"] * some_at_chance + ["a ticket student not converged"] * (
                not converged)
            table.append(VerdictRow([f"ticket students beat random-patch (RC) students at k = {k}, {mode} evaluation",
                                     interval_text(gap, signed=True), "; ".join([interval_text(control, signed=True),
                                                                                 *problems]),
                                     gap_verdict(gap, usable)], record))
    return apply_holm(table)


def verdict_table(table: list[VerdictRow]) -> list[str]:
    return ["## Verdicts", "", "Rule: the paired 95 % t-interval over units (over selector replicates when there are "
            "several) of (ticket − RC) test accuracy: above 0 → reproduced, below 0 → contradicted, straddling 0, "
            "fewer than 2 units, a student at chance (its mean "
            "within two binomial standard errors of the majority-class rate of its test set) or a ticket student "
            "not converged (validation rose > 1 pt over its last quarter of epochs) → inconclusive. The "
            "comparisons are one family: a decision stands only if the paired t-test also rejects under Holm at "
            "family-wise 5 %. Per-seed numbers: `verdicts.json` (`ticketlab verdicts <this folder>` recomputes "
            "them). The position-only control (tickets of other images) shows how much of the gap positions alone "
            "explain.", "",
            markdown_table(["claim (Shen et al., §3 claim 2)", "ticket − RC (pts, 95 % CI)",
                            "ticket − position control (pts)", "verdict"], table), ""]


def write_patch_report(out: Path, cfg: Any, rows: list[dict[str, Any]], weight_runs: dict[str, dict[int, Path]],
                       ticket_files: dict[float, Path]) -> Path:
    plt = pyplot()
    summary = summarize_students(rows)
    verdicts = verdict_rows(rows, summary)
    weight_lines, weight_verdicts = weight_level_section(out, weight_runs)
    write_verdicts(out, [*verdicts, *weight_verdicts])
    lines = ["# Data-level tickets: ticket vs random-patch students", "", *verdict_table(verdicts),
             f"Selector `{cfg.selector.model.name}` on `{cfg.selector.task.name}`"
             f" ({'fine-tuned with token reduction' if cfg.selector.finetune else 'used as is'}); "
             f"students `{cfg.student.name}` trained from scratch, scored at their final epoch; "
             f"{getattr(cfg, 'replicates', 1)} selector replicate(s) per keep rate, seeds {cfg.seeds} nested in each "
             "(unit = seed + 1000 · replicate). Test "
             "accuracy, mean ± std; dense = all patches at test time, sparse = the student's own test patches (RC: "
             "random ones, as in the original protocol).", "",
             markdown_table(["keep rate", "patches", "variant", "selector test acc", "chance", "dense", "sparse"],
                            [[k, s["patches"], variant, "–" if s["selector"] is None else pm(*s["selector"]),
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
        picture = path.parent / "tickets.png"
        if picture.is_file():  # copied beside the report, so the folder stands alone
            shutil.copyfile(picture, out / f"tickets_k{k}.png")
            lines += [f"Tickets at k = {k} (selector `{path.parent.name}`, replicate 0; kept patches bright):", "",
                      f"![tickets k={k}](tickets_k{k}.png)", ""]
    lines += weight_lines
    (out / REPORT).write_text("\n".join(lines) + "\n")
    return out / REPORT




def weight_level_rows(runs: dict[int, Path]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per IMP round: IMP and random re-init intervals over seeds and their paired gap; and the dense reference."""
    loaded = {seed: load_run(path) for seed, path in runs.items()}
    first = next(iter(loaded.values()))
    rows = []
    for r in first["rounds"][1:]:
        k = r["round"]
        pairs = [(score(run["rounds"][k]["metrics"]), score(reinit[0]["metrics"]))
                 for run in loaded.values()
                 if (reinit := [b for b in run["baselines"].get("random_reinit", []) if b["round"] == k])]
        rows.append({"round": k, "sparsity": r["sparsity"], "imp": mean_ci([a for a, _ in pairs or [(0, 0)]]),
                     "reinit": mean_ci([b for _, b in pairs]) if pairs else None,
                     "gap": paired_ci([a for a, _ in pairs], [b for _, b in pairs]) if pairs else None,
                     "per_seed_gap": [a - b for a, b in pairs]})
    dense = mean_ci([score(run["rounds"][0]["metrics"]) for run in loaded.values()])
    reference = first["rounds"][0]["metrics"]
    converged = all(run["rounds"][0]["metrics"].get("converged", True) for run in loaded.values())
    return rows, {"dense": dense, "chance": reference.get("chance_test"), "n_test": reference.get("n_test"),
                  "problem": reference_problem({"ci": dense, "chance_test": reference.get("chance_test"),
                                                "n_test": reference.get("n_test"), "converged": converged})}


def weight_level_section(out: Path, weight_runs: dict[str, dict[int, Path]]) -> tuple[list[str], list[VerdictRow]]:
    """Claim 1 of MISSION.md §3: IMP tickets vs random re-initialisation, per architecture, over seeds (its lines,
    and its verdict row with the per-seed gaps it is recomputed from)."""
    if not weight_runs:
        return [], []
    plt = pyplot()
    fig, axes = plt.subplots(1, len(weight_runs), figsize=(4.5 * len(weight_runs), 3.6), dpi=130, squeeze=False)
    table, gaps, dense, seed_gaps = [], {}, {}, {}
    for ax, (label, runs) in zip(axes[0], weight_runs.items(), strict=True):
        rows, dense[label] = weight_level_rows(runs)
        per_seed = list(zip(*[r["per_seed_gap"] for r in rows], strict=True))
        seed_gaps[label] = [sum(g) / len(g) for g in per_seed]
        gaps[label] = mean_ci(seed_gaps[label]) if per_seed else Interval(0.0, None, None, 0)
        x = [100 * r["sparsity"] for r in rows]
        for key, style, name in (("imp", "o-", "IMP ticket"), ("reinit", "x--", "random re-init")):
            ok = [(xx, r[key]) for xx, r in zip(x, rows, strict=True) if r[key] is not None]
            ax.errorbar([xx for xx, _ in ok], [100 * i.mean for _, i in ok],
                        yerr=[100 * ((i.high or i.mean) - i.mean) for _, i in ok], fmt=style, capsize=3, label=name)
        ax.axhline(100 * dense[label]["dense"].mean, color="black", linestyle=":", label="dense")
        if dense[label]["chance"] is not None:
            ax.axhline(100 * dense[label]["chance"], color="grey", linestyle="-.", label="chance")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("sparsity (%)")
        ax.grid(alpha=0.3)
        table += [[label, f"{100 * r['sparsity']:.1f} %", interval_text(dense[label]["dense"]),
                   "–" if dense[label]["chance"] is None else f"{100 * dense[label]['chance']:.1f}",
                   interval_text(r["imp"]), interval_text(r["reinit"]), interval_text(r["gap"], signed=True),
                   gap_verdict(r["gap"], dense[label]["problem"] is None)] for r in rows]
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "weight_level.png")
    plt.close(fig)
    labels = list(weight_runs)
    cnn = next((x for x in labels if "vit" not in x.lower()), labels[-1])
    vit = next((x for x in labels if "vit" in x.lower()), labels[0])
    problems = [f"{x} dense {dense[x]['problem']}" for x in dict.fromkeys((cnn, vit)) if dense[x]["problem"]]
    record = imp_vs_reinit_record(seed_gaps[cnn], seed_gaps[vit], cnn != vit and not problems)
    claim = "IMP − re-init: CNN clearly > 0, ViT ≈ 0"
    row = VerdictRow([claim, *[interval_text(gaps[x], signed=True) for x in labels], "; ".join(problems) or "–",
                      imp_vs_reinit_verdict(gaps[cnn], gaps[vit], record["usable"])], record)
    lines = ["## Weight-level IMP vs random re-initialisation (claim 1)", "",
             "Claim (Shen et al., MISSION.md §3 claim 1): weight-level IMP tickets barely beat random re-initialisation "
             "of the same mask on a ViT, whereas on a CNN they clearly do.", "",
             "Rule: per seed, the gap IMP − re-init averaged over the IMP rounds; its 95 % t-interval over seeds per "
             "architecture. Reproduced when the CNN's interval lies above 0 and the ViT's mean gap is below the CNN "
             "interval's lower end; contradicted when the CNN's interval lies below 0 or the ViT's lies wholly above "
             "the CNN's; otherwise — or with a dense reference not usable (at chance by the binomial rule on its test "
             "size, not converged, or at ceiling ≥ 99 %) — inconclusive. Per-seed gaps: `verdicts.json`.", "",
             markdown_table(["claim", *[f"gap {x} (pts)" for x in labels], "references", "verdict"], [row]), "",
             "Per round (test accuracy %, mean [95 % CI] over seeds; per-round verdict: the paired gap's rule, "
             "inconclusive when the architecture's dense reference is not usable):", "",
             markdown_table(["architecture", "sparsity", "dense", "chance", "IMP", "random re-init",
                             "IMP − re-init (pts)", "IMP beats re-init?"], table),
             "", "![weight level](weight_level.png)", ""]
    return lines, [row]
