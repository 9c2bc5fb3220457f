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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ticketlab.analysis import overlap_matrix, summarize_transfer
from ticketlab.config import (
    ConfigError,
    ExperimentConfig,
    ModelConfig,
    PretrainConfig,
    PruneConfig,
    TaskConfig,
    TrainConfig,
    validate,
)
from ticketlab.data.scenes import stream_seeds
from ticketlab.experiment import run_dir_for, run_experiment
from ticketlab.fileio import write_json
from ticketlab.jobs import Job
from ticketlab.masks import Mask
from ticketlab.paths import IMP, RunPaths
from ticketlab.progress import progress_bar
from ticketlab.run_jobs import experiment_jobs, merge_jobs
from ticketlab.schedules import round_sparsities
from ticketlab.seeds import derive_seed
from ticketlab.studies.base import STUDIES, Study
from ticketlab.studies.common import (
    open_study_dir,
    replicate_of,
    replicate_problems,
    study_tasks,
    unique_task_keys,
    units,
)
from ticketlab.studies.cv_report import write_cv_report
from ticketlab.transfer import (
    TransferSpec,
    perturbation_sensitivity,
    perturbation_specs,
    transfer_job_for,
    transfer_ticket,
)


@dataclass(frozen=True)
class StudyPretraining:
    label: str = "supervised"
    objective: str = "supervised"
    objective_options: dict[str, Any] = field(default_factory=dict)
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)  # pre-training recipe
    imp_train: TrainConfig = field(default_factory=TrainConfig)  # recipe of each IMP round on this objective
    # θp from a released checkpoint (torchvision / MoCo / SimCLR file) instead of a pre-training run; ``task`` and
    # ``objective`` then only say what this pre-training's own IMP rounds train on (ImageNet, its SSL loss)
    checkpoint: str | None = field(default=None, repr=False)
    # the model of this pre-training's own IMP (e.g. the ImageNet stem) when it differs from the study's
    # downstream model (the CIFAR stem); the two must share every prunable weight's name and shape
    model: ModelConfig | None = field(default=None, repr=False)


@dataclass(frozen=True)
class StudyConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrainings: list[StudyPretraining] = field(default_factory=list)
    downstream: list[TaskConfig] = field(default_factory=list)
    downstream_train: TrainConfig = field(default_factory=TrainConfig)
    downstream_imp_from: list[str] = field(default_factory=list)  # pre-training labels; empty = all
    prune: PruneConfig = field(default_factory=PruneConfig)
    baselines: list[str] = field(default_factory=lambda: ["omp", "random_prune", "random_reinit"])
    baseline_rounds: list[int] = field(default_factory=list)  # rounds the baselines run at; empty = every round
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # seed i finds every mask and fine-tunes its transfers
    matching_within_std: bool = False
    claims: dict[str, float] = field(default_factory=dict)  # the paper's matching sparsity per pre-training / target
    analysis_round: int = 3  # the round whose masks are compared and perturbed
    seed: int = 0
    share_init: bool = False  # every pre-training from one θ0 (then mask overlap partly measures the shared start)
    # independent pre-trainings per objective (own θ0 and data order); every seed's masks are found once per
    # replicate, and cross-objective claims pair replicate r of one objective with replicate r of another
    replicates: int = field(default=1, repr=False)


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
    if len(set(study.seeds)) < 1 or len(set(study.seeds)) != len(study.seeds):
        raise ConfigError(f"seeds must be distinct and at least one, got {study.seeds}")
    if problems := replicate_problems(study, [p.label for p in study.pretrainings if p.checkpoint]):
        raise ConfigError.many(problems)
    unique_task_keys(study.downstream, "downstream")
    for p in study.pretrainings:
        if p.model is not None and not p.checkpoint:
            raise ConfigError(f"pretrainings {p.label!r} sets model without checkpoint: a pre-training run's θp "
                              "lives in the study's model; drop model, or take θp from a released checkpoint")
    if study.baseline_rounds and study.analysis_round not in study.baseline_rounds:
        raise ConfigError(f"baseline_rounds {study.baseline_rounds} must include analysis_round "
                          f"({study.analysis_round}): the report compares IMP with the baselines there")
    unknown = sorted(set(study.claims) - set(labels) - {t.name for t in study.downstream})
    if unknown:
        raise ConfigError(f"claims names {', '.join(unknown)}: not a pretraining label or downstream task (known: "
                          f"{', '.join([*labels, *(t.name for t in study.downstream)])})")
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


def _pretrain(study: StudyConfig, p: StudyPretraining, unit: int) -> PretrainConfig | None:
    """The θp replicate of ``unit``, shared by the seeds that find masks from it (None: θp is its checkpoint)."""
    if p.checkpoint:
        return None
    return PretrainConfig(p.objective, p.objective_options, p.task, p.train, seed=replicate_seed(study, p, unit))


def replicate_seed(study: StudyConfig, p: StudyPretraining, unit: int) -> int:
    """The seed of ``unit``'s pre-training of ``p`` (its θ0 and data order): replicate 0 keeps ``init_seed``."""
    r = replicate_of(unit)
    return init_seed(study, p) if r == 0 else derive_seed(init_seed(study, p), "replicate", r)


def _model(study: StudyConfig, p: StudyPretraining, own: bool) -> ModelConfig:
    """The model of ``p``'s own IMP (``own``) or of its downstream runs, with ``p``'s checkpoint as θp if any."""
    model = (p.model or study.model) if own else study.model
    return replace(model, checkpoint=p.checkpoint) if p.checkpoint else model


def init_seed(study: StudyConfig, p: StudyPretraining) -> int:
    """The seed of pre-training ``p`` (its θ0 and its runs): independent per pre-training unless ``share_init``."""
    return study.seed if study.share_init else derive_seed(study.seed, "pretraining_init", study.pretrainings.index(p))


def pretraining_configs(study: StudyConfig) -> dict[tuple[str, int], ExperimentConfig]:
    """IMP on each pre-training objective from the θp (replicate) that objective produced, once per unit."""
    return {(p.label, unit): ExperimentConfig(model=_model(study, p, own=True), task=p.task, train=p.imp_train,
                                              prune=study.prune,
                                              pretrain=_pretrain(study, p, unit), objective=p.objective,
                                              objective_options=p.objective_options, baselines=[],
                                              seed=init_seed(study, p) + unit)
            for p in study.pretrainings for unit in units(study)}


def downstream_configs(study: StudyConfig) -> dict[tuple[str, str, int], ExperimentConfig]:
    """IMP on each downstream task from each chosen θp, once per seed; baselines only from the first θp, to bound
    the cost."""
    sources = [p for p in study.pretrainings if not study.downstream_imp_from or p.label in study.downstream_imp_from]
    return {(p.label, t.name, unit): ExperimentConfig(model=_model(study, p, own=False), task=t,
                                                      train=study.downstream_train,
                                                      prune=study.prune, pretrain=_pretrain(study, p, unit),
                                                      baselines=study.baselines if i == 0 else [],
                                                      baseline_rounds=study.baseline_rounds,
                                                      seed=init_seed(study, p) + unit)
            for i, p in enumerate(sources) for t in study.downstream for unit in units(study)}


def ticket_of(run: Path, k: int) -> Mask:
    return Mask.load(RunPaths(run).mask(IMP, k))


def run_cv_study(study: StudyConfig, runs_dir: Path, progress: bool = True) -> Path:
    runs_dir, out = open_study_dir(runs_dir, "study", study)
    pretraining_runs = {key: run_experiment(cfg, runs_dir, progress) for key, cfg in pretraining_configs(study).items()}
    downstream_runs = {key: run_experiment(cfg, runs_dir, progress) for key, cfg in downstream_configs(study).items()}

    tasks = study_tasks(study.model, study.downstream)
    rows = []
    for (label, seed), k, spec in progress_bar(transfer_specs(study), desc="transfer", disable=not progress,
                                               unit="fine-tune"):
        run = pretraining_runs[label, seed]
        rows.append({**transfer_ticket(run, k, spec, tasks[spec.target.name]).metrics, "source": label, "seed": seed})
    summary = summarize_transfer(rows, within_std=study.matching_within_std)

    k = study.analysis_round
    tickets = {f"{label} (pre-training, seed {seed})": ticket_of(run, k)
               for (label, seed), run in pretraining_runs.items()}
    tickets.update({f"{label} → {task} (seed {seed})": ticket_of(run, k)
                    for (label, task, seed), run in downstream_runs.items()
                    if seed == units(study)[0] and label == study.pretrainings[0].label})
    overlaps = overlap_matrix(tickets)

    first = study.downstream[0]
    sensitivity = []
    for (label, seed), run in progress_bar(pretraining_runs.items(), desc="perturbations", disable=not progress):
        sensitivity += perturbation_sensitivity(run, k, TransferSpec(first, study.downstream_train,
                                                             model=target_model(study, label)),
                                                tasks[first.name], [seed], source=label)

    write_cv_report(out, study, pretraining_runs, downstream_runs, summary, tickets, overlaps, sensitivity)
    write_json(out / "transfer_rows.json", rows)
    (out / "summary.json").write_text(json.dumps(
        {"pairs": {f"{s} -> {t}": p for (s, t), p in summary["pairs"].items()},
         "universal": summary["universal"], "criterion": summary["criterion"],
         "sensitivity": sensitivity}, indent=2, default=str))
    return out


def transfer_specs(study: StudyConfig) -> list[tuple[tuple[str, int], int, TransferSpec]]:
    """((pre-training, seed), round, spec) of every transfer of a pre-training ticket to a downstream task, every
    round: seed i's mask, fine-tuned with seed i."""
    rounds = len(round_sparsities(study.prune.schedule, study.prune.rounds, study.prune.rate, study.prune.sparsities))
    return [(key, k, TransferSpec(t, study.downstream_train, key[1], model=target_model(study, key[0])))
            for key in pretraining_configs(study) for t in study.downstream for k in range(rounds + 1)]


def target_model(study: StudyConfig, label: str) -> ModelConfig | None:
    """The downstream model a pre-training ticket is transferred into, when its own IMP used another one."""
    p = next(p for p in study.pretrainings if p.label == label)
    return _model(study, p, own=False) if p.model is not None else None


def cv_study_jobs(study: StudyConfig, runs_dir: Path) -> list[Job]:
    """Every training of the study as a graph: pre-trainings → IMP runs → transfers and perturbations."""
    configs = {**pretraining_configs(study), **downstream_configs(study)}
    groups = [experiment_jobs(cfg, runs_dir, str(key)) for key, cfg in configs.items()]
    sources = {key: run_dir_for(cfg, runs_dir).name for key, cfg in pretraining_configs(study).items()}
    groups.append([transfer_job_for(sources[key], k, spec) for key, k, spec in transfer_specs(study)])
    groups.append([transfer_job_for(sources[key], study.analysis_round, spec) for key in sources  # the report's
                   for spec in perturbation_specs(TransferSpec(study.downstream[0], study.downstream_train,  # loop
                                                               model=target_model(study, key[0])), [key[1]])])
    return merge_jobs(groups)


STUDIES.register("cv_pretraining")(Study(StudyConfig, check_study, run_cv_study,
                                         "supervised / SimCLR / MoCo pre-training tickets and their transfer",
                                         jobs=cv_study_jobs))
