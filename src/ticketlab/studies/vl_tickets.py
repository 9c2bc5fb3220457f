"""The V+L ticket study (MISSION.md section 2) as one resumable pipeline, and its report.

1. V+L pre-training (MLM + ITM + MRM) from the text checkpoint -> θp;
2. task-agnostic IMP on the pre-training objectives (each round a short pre-training run);
3. task-specific IMP on every downstream task from θp, for several seeds, with baselines (random
   pruning, the mask on the text checkpoint, the mask on layer-wise shuffled θp) at chosen rounds;
4. transfer of the pre-training masks to every task (round 0 = dense θp) -> the universal-ticket table;
5. standard vs adversarial (VILLA) fine-tuning of the universal tickets at chosen sparsities;
6. ``report.md`` with tables and figures in ``<runs-dir>/vl-study-<hash>/``.
Every step is content-addressed (IMP runs, transfers), so re-running the command resumes it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ticketlab.analysis import highest_sparsity, mean_std
from ticketlab.baselines.base import branch_label
from ticketlab.config import (
    ConfigError,
    ExperimentConfig,
    ModelConfig,
    PretrainConfig,
    PruneConfig,
    TaskConfig,
    TrainConfig,
    check_rounds,
    config_hash,
    to_dict,
    validate,
)
from ticketlab.data.base import build_task
from ticketlab.experiment import run_experiment
from ticketlab.figures import chance, markdown_table, pct, pm, pyplot
from ticketlab.fileio import ensure_writable_dir, write_json
from ticketlab.models.base import model_input_defaults
from ticketlab.paths import REPORT, load_run, study_dir
from ticketlab.studies.base import STUDIES, Study
from ticketlab.transfer import TransferSpec, transfer_ticket


@dataclass(frozen=True)
class VLStudyConfig:
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="uniter"))
    pretrain: PretrainConfig = field(default_factory=lambda: PretrainConfig(
        objective="vl_pretrain", task=TaskConfig(name="vl_pretrain")))
    pretrain_imp_train: TrainConfig = field(default_factory=TrainConfig)  # each IMP round on the pre-training tasks
    tasks: list[TaskConfig] = field(default_factory=list)
    downstream_train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=lambda: PruneConfig(schedule="original", rate=0.1, rounds=9))
    seeds: list[int] = field(default_factory=lambda: [0, 1])  # task-specific IMP seeds (θp is shared)
    baselines: list[str] = field(default_factory=lambda: ["random_prune", "base_checkpoint", "shuffled_pretrained"])
    baseline_rounds: list[int] = field(default_factory=lambda: [7])
    transfer_rounds: list[int] = field(default_factory=lambda: [5, 6, 7, 8])  # pre-training mask -> every task
    adversarial_tasks: list[str] = field(default_factory=list)  # empty = every task
    adversarial_rounds: list[int] = field(default_factory=lambda: [6, 7])  # 0 adds the dense model
    adversarial_options: dict[str, Any] = field(default_factory=dict)  # villa options (steps, step_size, ...)
    relaxed: float = 0.99
    seed: int = 0  # θp's seed


def check_study(study: VLStudyConfig) -> None:
    """Everything a long run would otherwise trip over later, checked before any work starts."""
    if not study.tasks or not study.seeds:
        raise ConfigError("a V+L study needs at least one entry in 'tasks' and one in 'seeds'")
    names = [t.name for t in study.tasks]
    for name in study.adversarial_tasks:
        if name not in names:
            raise ConfigError(f"adversarial_tasks names {name!r}; the study's tasks are {', '.join(names)}")
    check_rounds("transfer_rounds", study.transfer_rounds, study.prune)
    check_rounds("adversarial_rounds", study.adversarial_rounds, study.prune, low=0)
    if not 0 < study.relaxed <= 1:
        raise ConfigError(f"relaxed must be in (0, 1], got {study.relaxed}")
    for cfg in [pretraining_config(study), *task_configs(study).values()]:
        validate(cfg)


def shared_pretraining(study: VLStudyConfig) -> PretrainConfig:
    return PretrainConfig(study.pretrain.objective, study.pretrain.objective_options, study.pretrain.task,
                          study.pretrain.train, seed=study.seed)


def pretraining_config(study: VLStudyConfig) -> ExperimentConfig:
    """Task-agnostic IMP: every round trains on the pre-training objectives from θp."""
    return ExperimentConfig(model=study.model, task=study.pretrain.task, train=study.pretrain_imp_train,
                            prune=study.prune, pretrain=shared_pretraining(study), objective=study.pretrain.objective,
                            objective_options=study.pretrain.objective_options, baselines=[], seed=study.seed)


def task_configs(study: VLStudyConfig) -> dict[tuple[str, int], ExperimentConfig]:
    """Task-specific IMP per (task, seed); baselines only with the first seed, to bound the cost."""
    return {(t.name, s): ExperimentConfig(model=study.model, task=t, train=study.downstream_train, prune=study.prune,
                                          pretrain=shared_pretraining(study),
                                          baselines=study.baselines if i == 0 else [],
                                          baseline_rounds=study.baseline_rounds, seed=s)
            for t in study.tasks for i, s in enumerate(study.seeds)}


def run_vl_study(study: VLStudyConfig, runs_dir: Path, progress: bool = True) -> Path:
    runs_dir = ensure_writable_dir(Path(runs_dir))
    out = study_dir(runs_dir, "vl-study", config_hash(study))
    out.mkdir(exist_ok=True)
    write_json(out / "study.json", to_dict(study))
    pretraining_run = run_experiment(pretraining_config(study), runs_dir, progress)
    task_runs = {key: run_experiment(cfg, runs_dir, progress) for key, cfg in task_configs(study).items()}

    implied = model_input_defaults(study.model.name, study.model.options)
    tasks = {t.name: build_task(t.name, t.options, implied) for t in study.tasks}
    adversarial = {"objective": "villa", "objective_options": study.adversarial_options}
    adv_tasks = study.adversarial_tasks or list(tasks)
    jobs = [(t, k, "standard") for t in study.tasks for k in [0, *study.transfer_rounds]]
    jobs += [(t, k, "adversarial") for t in study.tasks if t.name in adv_tasks for k in study.adversarial_rounds]
    transfers = []
    for target, k, kind in tqdm(jobs, desc="transfer", disable=not progress, unit="fine-tune"):
        spec = TransferSpec(target, study.downstream_train, study.seed,
                            **(adversarial if kind == "adversarial" else {}))
        metrics = transfer_ticket(pretraining_run, k, spec, tasks[target.name], progress=progress).metrics
        transfers.append({"target": target.name, "round": k, "kind": kind, "sparsity": metrics["sparsity"],
                          "test_acc": metrics["test_acc"], "val_acc": metrics["val_acc"]})
    write_json(out / "transfer_rows.json", transfers)

    runs = {key: load_run(path) for key, path in task_runs.items()}
    write_vl_report(out, study, load_run(pretraining_run), runs, transfers)
    return out


# -- report ------------------------------------------------------------------------------------------
# Gan et al. (AAAI 2022), relaxed (99 %) UNITER-B ticket sparsity per task (MISSION.md section 2), for comparison
PAPER_RELAXED = {"vl_vqa": 0.7, "vl_gqa": 0.7, "vl_vcr": 0.5, "vl_nlvr2": 0.6, "vl_snli_ve": 0.6, "vl_refcoco": 0.7,
                 "vl_retrieval": 0.6}


def _curve(run: dict[str, Any]) -> list[tuple[float, float]]:
    return [(r["sparsity"], r["metrics"]["test_acc"]) for r in run["rounds"] if r["round"] > 0]


def task_summary(runs: dict[tuple[str, int], dict[str, Any]], relaxed: float) -> dict[str, dict[str, Any]]:
    """Per task: per-round mean ± std over seeds; matching and relaxed sparsity of each seed (None: none)."""
    out: dict[str, dict[str, Any]] = {}
    for task in dict.fromkeys(t for t, _ in runs):
        seeds = [run for (t, _), run in runs.items() if t == task]
        by_round = defaultdict(list)
        for run in seeds:
            for r in run["rounds"]:
                by_round[r["round"]].append((r["sparsity"], r["metrics"]["test_acc"]))
        curve = [(vals[0][0], *mean_std(v for _, v in vals)) for _, vals in sorted(by_round.items())]
        dense = [run["rounds"][0]["metrics"]["test_acc"] for run in seeds]
        matching = [highest_sparsity(_curve(run), d) for run, d in zip(seeds, dense, strict=True)]
        relaxed_s = [highest_sparsity(_curve(run), relaxed * d) for run, d in zip(seeds, dense, strict=True)]
        baselines = {name: rows for run in seeds for name, rows in run["baselines"].items() if rows}
        out[task] = {"curve": curve, "matching": matching, "relaxed": relaxed_s,
                     "dense_metrics": seeds[0]["rounds"][0]["metrics"],
                     "seeds": len(seeds), "baselines": baselines}
    return out


def universal_table(transfers: list[dict[str, Any]], kind: str = "standard") -> tuple[list[str], list[dict]]:
    """Table 2 layout: per sparsity, each task's score and the average drop from dense (points and relative)."""
    rows = [r for r in transfers if r["kind"] == kind]
    tasks = list(dict.fromkeys(r["target"] for r in rows))
    score = {(r["target"], r["round"]): r for r in rows}
    dense = {t: score[(t, 0)]["test_acc"] for t in tasks}
    table = []
    for k in sorted({r["round"] for r in rows}):
        cells = {t: score[(t, k)]["test_acc"] for t in tasks if (t, k) in score}
        drops = [dense[t] - v for t, v in cells.items()]
        table.append({"round": k, "sparsity": next(score[(t, k)]["sparsity"] for t in cells), "scores": cells,
                      "drop": sum(drops) / len(drops), "relative_drop": sum(d / dense[t] for t, d in
                                                                            zip(cells, drops, strict=True)) / len(drops)})
    return tasks, table


def plot_task_curves(summary: dict[str, dict[str, Any]], transfers: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    tasks = list(summary)
    cols = min(len(tasks), 4)
    fig, axes = plt.subplots((len(tasks) + cols - 1) // cols, cols, figsize=(4 * cols, 3.6 * ((len(tasks) + cols - 1)
                                                                                          // cols)), dpi=130,
                             squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        s, mean, std = zip(*summary[task]["curve"], strict=True)
        x = [100 * v for v in s]
        ax.plot(x, [100 * m for m in mean], marker="o", color="C0", label="task-specific IMP")
        ax.fill_between(x, [100 * (m - d) for m, d in zip(mean, std, strict=True)],
                        [100 * (m + d) for m, d in zip(mean, std, strict=True)], color="C0", alpha=0.2)
        ax.axhline(100 * mean[0], color="C0", linestyle="--", linewidth=1)
        pre = sorted((r["sparsity"], r["test_acc"]) for r in transfers if r["target"] == task
                     and r["kind"] == "standard")
        ax.plot([100 * a for a, _ in pre], [100 * b for _, b in pre], marker="s", color="C1",
                label="pre-training (universal) ticket")
        for j, (name, rows) in enumerate(summary[task]["baselines"].items()):
            ax.scatter([100 * r["sparsity"] for r in rows], [100 * r["metrics"]["test_acc"] for r in rows],
                       marker="x", s=50, color=f"C{2 + j}", label=branch_label(name), zorder=3)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("sparsity (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    axes[0][0].set_ylabel("test score (%)  (dashed: dense)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=len(labels))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def plot_adversarial(transfers: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    adv = {(r["target"], r["round"]): r for r in transfers if r["kind"] == "adversarial"}
    std = {(r["target"], r["round"]): r for r in transfers if r["kind"] == "standard"}
    keys = [k for k in adv if k in std]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(keys)), 3.8), dpi=130)
    x = range(len(keys))
    ax.bar([i - 0.2 for i in x], [100 * std[k]["test_acc"] for k in keys], width=0.4, label="standard fine-tuning")
    ax.bar([i + 0.2 for i in x], [100 * adv[k]["test_acc"] for k in keys], width=0.4, label="adversarial (VILLA)")
    ax.set_xticks(list(x), [f"{t}\n{100 * adv[(t, k)]['sparsity']:.0f} %" for t, k in keys], fontsize=7)
    ax.set_ylabel("test score (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _per_seed(values: list[float | None]) -> str:
    return ", ".join(pct(v, 0) for v in values)


def write_vl_report(out: Path, study: Any, pretraining: dict[str, Any], runs: dict[tuple[str, int], dict[str, Any]],
                    transfers: list[dict[str, Any]]) -> Path:
    summary = task_summary(runs, study.relaxed)
    lines = [f"# V+L ticket study ({out.name})", "",
             f"Model `{study.model.name}` {study.model.options}; IMP {study.prune.method}, schedule "
             f"{study.prune.schedule} (rate {study.prune.rate}, {study.prune.rounds} rounds), rewind to θp; "
             f"task-specific IMP seeds {study.seeds}; relaxed = ≥ {study.relaxed:.0%} of dense, matching = ≥ dense "
             "(per seed, against that seed's dense score). Scores are test accuracy, or mean R@1 (both directions) "
             "for retrieval.", ""]

    lines += ["## 1. Pre-training tickets (task-agnostic IMP on MLM + ITM + MRM)", "",
              "| round | sparsity | score | MLM acc | ITM acc | MRC acc |", "|---|---|---|---|---|---|"]
    for r in pretraining["rounds"]:
        m = r["metrics"]
        lines.append(f"| {r['round']} | {100 * r['sparsity']:.1f} % | {100 * m['test_acc']:.1f} | "
                     + " | ".join(f"{100 * m[k]:.1f}" if k in m else "—" for k in
                                  ("test_mlm_acc", "test_itm_acc", "test_mrm_acc")) + " |")
    lines += ["", "Round 0 is θp itself (the pre-trained model, briefly trained on the objectives once more).", ""]

    sparsities = [c[0] for c in next(iter(summary.values()))["curve"]]
    lines += ["## 2. Task-specific tickets", "", "Mean ± std over seeds of the test score at each sparsity.", "",
              markdown_table(["task", "chance", *("dense" if s == 0 else f"{100 * s:.0f} %" for s in sparsities)],
                             [[task, chance(info["dense_metrics"]), *(pm(m, d) for _, m, d in info["curve"])]
                              for task, info in summary.items()])]
    lines += ["", markdown_table(["task", "relaxed sparsity (per seed)", "matching sparsity (per seed)",
                                  "paper's relaxed (UNITER-B)"],
                                 [[task, _per_seed(info["relaxed"]), _per_seed(info["matching"]),
                                   pct(PAPER_RELAXED.get(task), 0) if task in PAPER_RELAXED else "—"]
                                  for task, info in summary.items()])]
    lines += ["", "Baselines (seed " + str(study.seeds[0]) + ") against the IMP ticket at the same sparsity:", "",
              "| task | sparsity | IMP ticket | " + " | ".join(branch_label(b) for b in study.baselines)
              + " |", "|---|---|---|" + "---|" * len(study.baselines)]
    for (task, seed), run in runs.items():
        if seed != study.seeds[0]:
            continue
        imp = {r["round"]: r for r in run["rounds"]}
        for k in sorted({r["round"] for rows in run["baselines"].values() for r in rows}):
            cells = []
            for b in study.baselines:
                row = next((r for r in run["baselines"].get(b, []) if r["round"] == k), None)
                cells.append("—" if row is None else f"{100 * row['metrics']['test_acc']:.1f}")
            lines.append(f"| {task} | {100 * imp[k]['sparsity']:.0f} % | {100 * imp[k]['metrics']['test_acc']:.1f} | "
                         + " | ".join(cells) + " |")
    plot_task_curves(summary, transfers, out / "task_curves.png")
    lines += ["", "![task curves](task_curves.png)", ""]

    tasks, table = universal_table(transfers)
    lines += ["## 3. Universal pre-training tickets (the study's Table 2 layout)", "",
              "The pre-training mask of each round, fine-tuned on every task from θp (seed "
              f"{study.seed}); drop = mean over tasks of dense − sparse.", "",
              "| sparsity | " + " | ".join(tasks) + " | avg drop (points) | avg relative drop |",
              "|---|" + "---|" * (len(tasks) + 2)]
    for row in table:
        label = "dense" if row["round"] == 0 else f"{100 * row['sparsity']:.0f} %"
        lines.append(f"| {label} | " + " | ".join(f"{100 * row['scores'][t]:.1f}" if t in row["scores"] else "—"
                                                    for t in tasks)
                     + f" | {100 * row['drop']:.2f} | {100 * row['relative_drop']:.1f} % |")

    adv = {(r["target"], r["round"]): r for r in transfers if r["kind"] == "adversarial"}
    std = {(r["target"], r["round"]): r for r in transfers if r["kind"] == "standard"}
    lines += ["", "## 4. Standard vs adversarial (VILLA) fine-tuning of the universal tickets", "",
              f"VILLA options: {study.adversarial_options or 'defaults (3 steps, step 1e-3, KL weight 1.5)'}.", "",
              "| task | sparsity | standard | adversarial | Δ |", "|---|---|---|---|---|"]
    for (task, k), row in sorted(adv.items()):
        if (task, k) in std:
            s, a = std[(task, k)]["test_acc"], row["test_acc"]
            label = "dense" if k == 0 else f"{100 * row['sparsity']:.0f} %"
            lines.append(f"| {task} | {label} | {100 * s:.1f} | {100 * a:.1f} | {100 * (a - s):+.1f} |")
    plot_adversarial(transfers, out / "adversarial.png")
    lines += ["", "![adversarial](adversarial.png)", ""]
    (out / REPORT).write_text("\n".join(lines))
    return out / REPORT


STUDIES.register("vl_tickets")(Study(VLStudyConfig, check_study, run_vl_study,
                                     "V+L tickets: pre-training and task-specific IMP, universal tickets, VILLA"))
