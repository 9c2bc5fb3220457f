"""The CV pre-training study (MISSION.md section 1) as one resumable pipeline, and its report.

1. pre-train the backbone once per objective (supervised, SimCLR, MoCo) -> θp each;
2. IMP on each pre-training objective from its θp (the pre-training tickets);
3. IMP on each downstream task from each θp (downstream tickets, with baselines);
4. transfer every pre-training ticket (all rounds; round 0 = dense reference) to every downstream
   task, for several seeds -> transfer matrix, matching / relaxed / universal sparsities;
5. mask overlap between tickets, perturbation sensitivity, per-layer sparsity;
6. ``report.md`` with tables and figures in ``<runs-dir>/study-<hash>/``.
Every step is content-addressed and resumable, so re-running the command only does what is missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ticketlab.analysis import overlap_matrix, sensitivity_table, summarize_transfer
from ticketlab.baselines.base import branch_label
from ticketlab.config import (
    ConfigError,
    ExperimentConfig,
    ModelConfig,
    PretrainConfig,
    PruneConfig,
    TaskConfig,
    TrainConfig,
    config_hash,
    to_dict,
    validate,
)
from ticketlab.data.base import build_task
from ticketlab.data.scenes import stream_seeds
from ticketlab.experiment import run_experiment
from ticketlab.figures import chance, markdown_table, pct, plot_heatmap, plot_layer_sparsity, plot_overlap, pm, pyplot
from ticketlab.fileio import ensure_writable_dir, write_json
from ticketlab.masks import Mask
from ticketlab.models.base import model_input_defaults
from ticketlab.paths import IMP, REPORT, RunPaths, load_run, study_dir
from ticketlab.report import ticket_summary
from ticketlab.schedules import round_sparsities
from ticketlab.studies.base import STUDIES, Study
from ticketlab.transfer import TransferSpec, perturbation_sensitivity, transfer_ticket


@dataclass(frozen=True)
class StudyPretraining:
    label: str = "supervised"
    objective: str = "supervised"
    objective_options: dict[str, Any] = field(default_factory=dict)
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)  # pre-training recipe
    imp_train: TrainConfig = field(default_factory=TrainConfig)  # recipe of each IMP round on this objective


@dataclass(frozen=True)
class StudyConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrainings: list[StudyPretraining] = field(default_factory=list)
    downstream: list[TaskConfig] = field(default_factory=list)
    downstream_train: TrainConfig = field(default_factory=TrainConfig)
    downstream_imp_from: list[str] = field(default_factory=list)  # pre-training labels; empty = all
    prune: PruneConfig = field(default_factory=PruneConfig)
    baselines: list[str] = field(default_factory=lambda: ["omp", "random_prune", "random_reinit"])
    transfer_seeds: list[int] = field(default_factory=lambda: [0])
    matching_within_std: bool = False
    analysis_round: int = 3  # the round whose masks are compared and perturbed
    seed: int = 0
    share_init: bool = False  # every pre-training from one θ0 (then mask overlap partly measures the shared start)


def check_study(study: StudyConfig) -> None:
    """Everything a long run would otherwise trip over later, checked before any work starts."""
    if not study.pretrainings or not study.downstream:
        raise ConfigError("a study needs at least one entry in 'pretrainings' and one in 'downstream'")
    labels = [p.label for p in study.pretrainings]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"pretraining labels must be unique, got {labels}")
    for label in study.downstream_imp_from:
        if label not in labels:
            raise ConfigError(f"downstream_imp_from names {label!r}; known pretraining labels: {', '.join(labels)}")
    if not 1 <= study.analysis_round <= study.prune.rounds:
        raise ConfigError(f"analysis_round must be in 1..prune.rounds ({study.prune.rounds})")
    for cfg in [*pretraining_configs(study).values(), *downstream_configs(study).values()]:
        validate(cfg)
    for p in study.pretrainings:
        seen = stream_seeds(p.task.name, p.task.options)
        for t in study.downstream:
            if seen & stream_seeds(t.name, t.options):
                raise ConfigError(f"downstream task {t.name} draws the scenes pre-training {p.label!r} trains on "
                                  f"({p.task.name}, seed {p.task.options.get('seed', 0)}); give it another "
                                  "options.seed so that transfer is to unseen images")


def _pretrain(study: StudyConfig, p: StudyPretraining) -> PretrainConfig:
    return PretrainConfig(p.objective, p.objective_options, p.task, p.train)


def init_seed(study: StudyConfig, p: StudyPretraining) -> int:
    """The seed of pre-training ``p`` (its θ0 and its runs): independent per pre-training unless ``share_init``."""
    return study.seed if study.share_init else study.seed + 1000 * study.pretrainings.index(p)


def pretraining_configs(study: StudyConfig) -> dict[str, ExperimentConfig]:
    """IMP on each pre-training objective, from the θp that objective produced."""
    return {p.label: ExperimentConfig(model=study.model, task=p.task, train=p.imp_train, prune=study.prune,
                                      pretrain=_pretrain(study, p), objective=p.objective,
                                      objective_options=p.objective_options, baselines=[], seed=init_seed(study, p))
            for p in study.pretrainings}


def downstream_configs(study: StudyConfig) -> dict[tuple[str, str], ExperimentConfig]:
    """IMP on each downstream task from each chosen θp; baselines only from the first θp, to bound the cost."""
    sources = [p for p in study.pretrainings if not study.downstream_imp_from or p.label in study.downstream_imp_from]
    return {(p.label, t.name): ExperimentConfig(model=study.model, task=t, train=study.downstream_train,
                                                prune=study.prune, pretrain=_pretrain(study, p),
                                                baselines=study.baselines if i == 0 else [],
                                                seed=init_seed(study, p))
            for i, p in enumerate(sources) for t in study.downstream}


def ticket_of(run: Path, k: int) -> Mask:
    return Mask.load(RunPaths(run).mask(IMP, k))


def run_cv_study(study: StudyConfig, runs_dir: Path, progress: bool = True) -> Path:
    runs_dir = ensure_writable_dir(Path(runs_dir))
    out = study_dir(runs_dir, "study", config_hash(study))
    out.mkdir(exist_ok=True)
    write_json(out / "study.json", to_dict(study))
    pretraining_runs = {label: run_experiment(cfg, runs_dir, progress)
                        for label, cfg in pretraining_configs(study).items()}
    downstream_runs = {key: run_experiment(cfg, runs_dir, progress) for key, cfg in downstream_configs(study).items()}

    implied = model_input_defaults(study.model.name, study.model.options)
    tasks = {t.name: build_task(t.name, t.options, implied) for t in study.downstream}
    rows = []
    rounds = len(round_sparsities(study.prune.schedule, study.prune.rounds, study.prune.rate, study.prune.sparsities))
    jobs = [(label, run, t, seed, k) for label, run in pretraining_runs.items() for t in study.downstream
            for seed in study.transfer_seeds for k in range(rounds + 1)]
    for label, run, target, seed, k in tqdm(jobs, desc="transfer", disable=not progress, unit="fine-tune"):
        spec = TransferSpec(target, study.downstream_train, seed)
        rows.append({**transfer_ticket(run, k, spec, tasks[target.name]).metrics, "source": label})
    summary = summarize_transfer(rows, within_std=study.matching_within_std)

    k = study.analysis_round
    tickets = {f"{label} (pre-training)": ticket_of(run, k) for label, run in pretraining_runs.items()}
    tickets.update({f"{label} → {task}": ticket_of(run, k) for (label, task), run in downstream_runs.items()})
    overlaps = overlap_matrix(tickets)

    first = study.downstream[0]
    sensitivity = []
    for label, run in tqdm(pretraining_runs.items(), desc="perturbations", disable=not progress):
        sensitivity += perturbation_sensitivity(run, k, TransferSpec(first, study.downstream_train),
                                                tasks[first.name], study.transfer_seeds, source=label)

    write_cv_report(out, study, pretraining_runs, downstream_runs, summary, tickets, overlaps, sensitivity)
    write_json(out / "transfer_rows.json", rows)
    (out / "summary.json").write_text(json.dumps(
        {"pairs": {f"{s} -> {t}": {kk: v for kk, v in p.items() if not kk.endswith("_set")}
                   for (s, t), p in summary["pairs"].items()},
         "universal": summary["universal"], "criterion": summary["criterion"],
         "sensitivity": sensitivity}, indent=2, default=str))
    return out


# -- report ------------------------------------------------------------------------------------------
def plot_curves(downstream: dict[tuple[str, str], dict[str, Any]], path: Path) -> None:
    plt = pyplot()
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
                        label=f"{branch_label(branch)} ({source})")
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("sparsity (%)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)  (dashed: dense)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=min(len(labels), 6))
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def write_cv_report(out: Path, study: StudyConfig, pretraining_runs: dict[str, Path],
                    downstream_runs: dict[tuple[str, str], Path], summary: dict[str, Any], tickets: dict[str, Mask],
                    overlaps: dict[tuple[str, str], Any], sensitivity: list[dict[str, Any]]) -> Path:
    k, n = study.analysis_round, study.prune.rounds
    sources = list(pretraining_runs)
    targets = [t.name for t in study.downstream]
    downstream = {key: load_run(run) for key, run in downstream_runs.items()}
    lines = [f"# CV pre-training ticket study ({out.name})", "",
             f"Model `{study.model.name}` {study.model.options}; pruning {study.prune.method}, "
             f"{n} rounds ({study.prune.schedule}, rate {study.prune.rate}), rewind to θp; "
             f"transfer seeds {study.transfer_seeds}. {summary['criterion']}.", ""]

    table = []
    for label, run_dir in pretraining_runs.items():
        run = load_run(run_dir)
        table.append([label, chance(run["rounds"][0]["metrics"]), f"{100 * run['rounds'][0]['metrics']['test_acc']:.1f}",
                      *[f"{100 * r['metrics']['test_acc']:.1f} ({100 * r['sparsity']:.1f} %)"
                        for r in run["rounds"][1:]]])
    lines += ["## 1. Tickets on the pre-training tasks", "",
              markdown_table(["pre-training", "chance", "score at θp (round 0)",
                              *[f"round {i}" for i in range(1, n + 1)]], table),
              "", "Scores: accuracy (supervised) or k-NN accuracy of the backbone features (SimCLR, MoCo).", ""]

    table = [[label, task, chance(run["rounds"][0]["metrics"]), f"{100 * run['rounds'][0]['metrics']['test_acc']:.2f}",
              ticket_summary(run["rounds"], run["rounds"][0]["metrics"]["test_acc"])]
             for (label, task), run in downstream.items()]
    plot_curves(downstream, out / "curves.png")
    lines += ["## 2. Tickets found on each downstream task (IMP from θp)", "",
              markdown_table(["θp", "task", "chance", "dense", "highest matching / relaxed"], table), "",
              "![sparsity-accuracy curves](curves.png)", ""]

    sparsities = sorted({c["sparsity"] for (s, t, kk), c in summary["cells"].items() if kk > 0})
    table = []
    for (source, target), pair in summary["pairs"].items():
        cells = [summary["cells"].get((source, target, kk)) for kk in range(1, n + 1)]
        table.append([source, target, chance(pair["dense"]), pm(pair["dense"]["mean"], pair["dense"]["std"]),
                      *[pm(c["mean"], c["std"]) if c else "—" for c in cells], pct(pair["matching"]),
                      pct(pair["relaxed"])])
    lines += ["## 3. Transfer of pre-training tickets", "",
              "Mean ± std over seeds of the test accuracy after fine-tuning θp ⊙ mask with a new head.", "",
              markdown_table(["source", "target", "chance", "dense", *[f"{100 * s:.1f} %" for s in sparsities],
                              "matching", "relaxed"], table),
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
    table = [[a, *[f"{100 * overlaps[(a, b)]['iou']:.1f} / {100 * overlaps[(a, b)]['shared']:.1f}" for b in names]]
             for a in names]
    lines += [f"## 4. Mask overlap at round {k}", "", "IoU of the kept weights (%); 'shared' = fraction of the row "
              "ticket's kept weights the column ticket keeps.", "", markdown_table(["", *names], table), "",
              "![overlap](overlap.png)", ""]

    variants = ["ticket", "complement", "random", "delta10"]
    table = [[source, *[f"{pm(row[v]['mean'], row[v]['std'])} ({100 * row[v]['sparsity']:.1f} %)" for v in variants]]
             for source, row in sensitivity_table(sensitivity).items()]
    plot_layer_sparsity({n: tickets[n] for n in names if n.endswith("(pre-training)")}, out / "layer_sparsity.png")
    lines += [f"## 5. Perturbation sensitivity on {study.downstream[0].name} (round {k})", "",
              "Test accuracy, mean ± std over seeds, and (in brackets) each mask's sparsity.", "",
              markdown_table(["pre-training ticket", *variants], table), "",
              "## 6. Per-layer sparsity of the pre-training tickets", "", "![layer sparsity](layer_sparsity.png)", ""]
    (out / REPORT).write_text("\n".join(lines))
    return out / REPORT


STUDIES.register("cv_pretraining")(Study(StudyConfig, check_study, run_cv_study,
                                         "supervised / SimCLR / MoCo pre-training tickets and their transfer"))
