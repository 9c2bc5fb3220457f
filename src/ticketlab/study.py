"""The CV pre-training study (MISSION.md section 1) as one resumable pipeline.

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

from tqdm.auto import tqdm

from ticketlab.analysis import PERTURBATIONS, mean_std, overlap, perturb, summarize_transfer
from ticketlab.config import (
    ConfigError,
    ExperimentConfig,
    ModelConfig,
    PretrainConfig,
    PruneConfig,
    TaskConfig,
    TrainConfig,
    config_hash,
    from_dict,
    read_yaml,
    to_dict,
    validate,
)
from ticketlab.data import build_task
from ticketlab.experiment import round_name, run_experiment
from ticketlab.fileio import ensure_writable_dir, write_json
from ticketlab.masks import Mask
from ticketlab.schedules import round_sparsities
from ticketlab.transfer import TransferSpec, transfer_ticket


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


def load_study(path: str | Path) -> StudyConfig:
    study: StudyConfig = from_dict(StudyConfig, read_yaml(path))
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
    return study


def _pretrain(study: StudyConfig, p: StudyPretraining) -> PretrainConfig:
    return PretrainConfig(p.objective, p.objective_options, p.task, p.train)


def pretraining_configs(study: StudyConfig) -> dict[str, ExperimentConfig]:
    """IMP on each pre-training objective, from the θp that objective produced."""
    return {p.label: ExperimentConfig(model=study.model, task=p.task, train=p.imp_train, prune=study.prune,
                                      pretrain=_pretrain(study, p), objective=p.objective,
                                      objective_options=p.objective_options, baselines=[], seed=study.seed)
            for p in study.pretrainings}


def downstream_configs(study: StudyConfig) -> dict[tuple[str, str], ExperimentConfig]:
    """IMP on each downstream task from each chosen θp; baselines only from the first θp, to bound the cost."""
    sources = [p for p in study.pretrainings if not study.downstream_imp_from or p.label in study.downstream_imp_from]
    return {(p.label, t.name): ExperimentConfig(model=study.model, task=t, train=study.downstream_train,
                                                prune=study.prune, pretrain=_pretrain(study, p),
                                                baselines=study.baselines if i == 0 else [], seed=study.seed)
            for i, p in enumerate(sources) for t in study.downstream}


def run_study(study: StudyConfig, runs_dir: Path, progress: bool = True) -> Path:
    runs_dir = ensure_writable_dir(Path(runs_dir))
    out = runs_dir / f"study-{config_hash(study)}"
    out.mkdir(exist_ok=True)
    write_json(out / "study.json", to_dict(study))
    pretraining_runs = {label: run_experiment(cfg, runs_dir, progress)
                        for label, cfg in pretraining_configs(study).items()}
    downstream_runs = {key: run_experiment(cfg, runs_dir, progress) for key, cfg in downstream_configs(study).items()}

    tasks = {t.name: build_task(t.name, t.options) for t in study.downstream}
    rows = []
    rounds = len(round_sparsities(study.prune.schedule, study.prune.rounds, study.prune.rate, study.prune.sparsities))
    jobs = [(label, run, t, seed, k) for label, run in pretraining_runs.items() for t in study.downstream
            for seed in study.transfer_seeds for k in range(rounds + 1)]
    for label, run, target, seed, k in tqdm(jobs, desc="transfer", disable=not progress, unit="fine-tune"):
        spec = TransferSpec(target, study.downstream_train, seed)
        rows.append({**transfer_ticket(run, k, spec, tasks[target.name]).metrics, "source": label})
    summary = summarize_transfer(rows, within_std=study.matching_within_std)

    k = study.analysis_round
    tickets = {f"{label} (pre-training)": Mask.load(run / "rounds" / round_name(k) / "mask.safetensors")
               for label, run in pretraining_runs.items()}
    tickets.update({f"{label} → {task}": Mask.load(run / "rounds" / round_name(k) / "mask.safetensors")
                    for (label, task), run in downstream_runs.items()})
    overlaps = {(a, b): overlap(tickets[a], tickets[b]) for a in tickets for b in tickets}

    first = study.downstream[0]
    sensitivity = []
    for label, run in tqdm(pretraining_runs.items(), desc="perturbations", disable=not progress):
        ticket = Mask.load(run / "rounds" / round_name(k) / "mask.safetensors")
        for seed in study.transfer_seeds:
            base = {"source": label, "seed": seed}
            spec = TransferSpec(first, study.downstream_train, seed)
            sensitivity.append({**base, "variant": "ticket",
                                "test_acc": transfer_ticket(run, k, spec, tasks[first.name]).metrics["test_acc"]})
            for kind in PERTURBATIONS:
                variant = TransferSpec(first, study.downstream_train, seed, kind)
                metrics = transfer_ticket(run, k, variant, tasks[first.name], mask=perturb(ticket, kind, seed)).metrics
                sensitivity.append({**base, "variant": kind, "test_acc": metrics["test_acc"],
                                    "sparsity": metrics["sparsity"]})

    from ticketlab.study_report import write_study_report

    write_study_report(out, study, pretraining_runs, downstream_runs, rows, summary, tickets, overlaps, sensitivity)
    write_json(out / "transfer_rows.json", rows)
    (out / "summary.json").write_text(json.dumps(
        {"pairs": {f"{s} -> {t}": {kk: v for kk, v in p.items() if not kk.endswith("_set")}
                   for (s, t), p in summary["pairs"].items()},
         "universal": summary["universal"], "criterion": summary["criterion"],
         "sensitivity": sensitivity}, indent=2, default=str))
    return out


def sensitivity_table(sensitivity: list[dict[str, Any]]) -> dict[str, dict[str, tuple[float, float]]]:
    out: dict[str, dict[str, list[float]]] = {}
    for row in sensitivity:
        out.setdefault(row["source"], {}).setdefault(row["variant"], []).append(row["test_acc"])
    return {s: {v: mean_std(vals) for v, vals in d.items()} for s, d in out.items()}
