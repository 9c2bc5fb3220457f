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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ticketlab.config import (
    ConfigError,
    ExperimentConfig,
    ModelConfig,
    PretrainConfig,
    PruneConfig,
    TaskConfig,
    TrainConfig,
    check_rounds,
    validate,
)
from ticketlab.experiment import run_dir_for, run_experiment
from ticketlab.fileio import write_json
from ticketlab.jobs import Job
from ticketlab.progress import progress_bar
from ticketlab.results import derived
from ticketlab.run_jobs import experiment_jobs, merge_jobs
from ticketlab.runfolders import load_run
from ticketlab.seeds import derive_seed
from ticketlab.studies.base import STUDIES, Study
from ticketlab.studies.common import (
    open_study_dir,
    replicate_of,
    replicate_problems,
    study_tasks,
    task_key,
    unique_task_keys,
    units,
)
from ticketlab.studies.vl_report import write_vl_report
from ticketlab.transfer import TransferSpec, transfer_job_for, transfer_ticket


@dataclass(frozen=True)
class VLStudyConfig:
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="uniter"))
    pretrain: PretrainConfig = field(default_factory=lambda: PretrainConfig(
        objective="vl_pretrain", task=TaskConfig(name="vl_pretrain")))
    pretrain_imp_train: TrainConfig = field(default_factory=TrainConfig)  # each IMP round on the pre-training tasks
    tasks: list[TaskConfig] = field(default_factory=list)
    downstream_train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=lambda: PruneConfig(schedule="original", rate=0.1, rounds=9))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # every mask is found, and fine-tuned, per seed
    baselines: list[str] = field(default_factory=lambda: ["random_prune", "base_checkpoint", "shuffled_pretrained"])
    baseline_rounds: list[int] = field(default_factory=lambda: [7])
    transfer_rounds: list[int] = field(default_factory=lambda: [5, 6, 7, 8])  # pre-training mask -> every task
    adversarial_tasks: list[str] = field(default_factory=list)  # empty = every task
    adversarial_rounds: list[int] = field(default_factory=lambda: [6, 7])  # 0 adds the dense model
    adversarial_options: dict[str, Any] = field(default_factory=dict)  # villa options (steps, step_size, ...)
    relaxed: float = 0.99
    seed: int = 0  # θp's seed
    # θp is the model's own checkpoint (a released UNITER): no V+L pre-training run; ``pretrain`` then only names
    # the task and objectives of the task-agnostic IMP rounds
    theta_p_from_checkpoint: bool = field(default=False, repr=False)
    # independent V+L pre-trainings (own θ0 and data order); every seed's masks are found once per replicate
    replicates: int = field(default=1, repr=False)


def check_study(study: VLStudyConfig) -> None:
    """Everything a long run would otherwise trip over later, checked before any work starts."""
    if not study.tasks or not study.seeds:
        raise ConfigError("a V+L study needs at least one entry in 'tasks' and one in 'seeds'")
    names = unique_task_keys(study.tasks, "tasks")
    for name in study.adversarial_tasks:
        if name not in names:
            raise ConfigError(f"adversarial_tasks names {name!r}; the study's tasks are {', '.join(names)}")
    if problems := replicate_problems(study, ["θp"] if study.theta_p_from_checkpoint else []):
        raise ConfigError.many(problems)
    check_rounds("transfer_rounds", study.transfer_rounds, study.prune)
    check_rounds("adversarial_rounds", study.adversarial_rounds, study.prune, low=0)
    if not 0 < study.relaxed <= 1:
        raise ConfigError(f"relaxed must be in (0, 1], got {study.relaxed}")
    for cfg in [*pretraining_configs(study).values(), *task_configs(study).values()]:
        validate(cfg)


def shared_pretraining(study: VLStudyConfig, unit: int = 0) -> PretrainConfig | None:
    """The V+L pre-training (θp replicate of ``unit``) its IMP runs start from (None: the model's checkpoint)."""
    if study.theta_p_from_checkpoint:
        return None
    r = replicate_of(unit)
    return PretrainConfig(study.pretrain.objective, study.pretrain.objective_options, study.pretrain.task,
                          study.pretrain.train, seed=study.seed if r == 0 else derive_seed(study.seed, "replicate", r))


def pretraining_configs(study: VLStudyConfig) -> dict[int, ExperimentConfig]:
    """Task-agnostic IMP per unit (θp replicate x seed): every round trains on the pre-training objectives."""
    return {s: ExperimentConfig(model=study.model, task=study.pretrain.task, train=study.pretrain_imp_train,
                                prune=study.prune, pretrain=shared_pretraining(study, s),
                                objective=study.pretrain.objective, objective_options=study.pretrain.objective_options,
                                baselines=[], seed=s)
            for s in units(study)}


def task_configs(study: VLStudyConfig) -> dict[tuple[str, int], ExperimentConfig]:
    """Task-specific IMP per (task, unit), with the baselines at ``baseline_rounds`` for every unit (paired)."""
    return {(task_key(t), s): ExperimentConfig(model=study.model, task=t, train=study.downstream_train,
                                               prune=study.prune, pretrain=shared_pretraining(study, s),
                                               baselines=study.baselines, baseline_rounds=study.baseline_rounds, seed=s)
            for t in study.tasks for s in units(study)}


def transfer_specs(study: VLStudyConfig) -> list[tuple[int, TaskConfig, int, str, TransferSpec]]:
    """(seed, target, round, kind, spec) of every transfer: seed i's pre-training mask, fine-tuned with seed i."""
    adversarial = {"objective": "villa", "objective_options": study.adversarial_options}
    adv_tasks = study.adversarial_tasks or [task_key(t) for t in study.tasks]
    jobs = [(t, k, "standard") for t in study.tasks for k in [0, *study.transfer_rounds]]
    jobs += [(t, k, "adversarial") for t in study.tasks if task_key(t) in adv_tasks for k in study.adversarial_rounds]
    return [(seed, t, k, kind, TransferSpec(t, study.downstream_train, seed,
                                            **(adversarial if kind == "adversarial" else {})))
            for seed in units(study) for t, k, kind in jobs]


def vl_study_jobs(study: VLStudyConfig, runs_dir: Path) -> list[Job]:
    """Every training of the study as a graph: the shared pre-training → IMP runs → transfers."""
    configs = {**{("pretraining", s): c for s, c in pretraining_configs(study).items()}, **task_configs(study)}
    groups = [experiment_jobs(cfg, runs_dir, str(key)) for key, cfg in configs.items()]
    sources = {s: run_dir_for(c, runs_dir).name for s, c in pretraining_configs(study).items()}
    groups.append([transfer_job_for(sources[seed], k, spec) for seed, _, k, _, spec in transfer_specs(study)])
    return merge_jobs(groups)


def run_vl_study(study: VLStudyConfig, runs_dir: Path, progress: bool = True) -> Path:
    runs_dir, out = open_study_dir(runs_dir, "vl-study", study)
    pretraining_runs = {s: run_experiment(cfg, runs_dir, progress) for s, cfg in pretraining_configs(study).items()}
    task_runs = {key: run_experiment(cfg, runs_dir, progress) for key, cfg in task_configs(study).items()}

    tasks = study_tasks(study.model, study.tasks)
    transfers = []
    for seed, target, k, kind, spec in progress_bar(transfer_specs(study), desc="transfer", disable=not progress,
                                                    unit="fine-tune"):
        metrics = transfer_ticket(pretraining_runs[seed], k, spec, tasks[task_key(target)], progress=progress).metrics
        transfers.append(derived(metrics, target=task_key(target), round=k, kind=kind, seed=seed,
                                 sparsity=metrics["sparsity"], chance_test=metrics.get("chance_test"),
                                 n_test=metrics.get("n_test"), converged=metrics.get("converged", True)))
    write_json(out / "transfer_rows.json", transfers)

    runs = {key: load_run(path) for key, path in task_runs.items()}
    write_vl_report(out, study, {s: load_run(path) for s, path in pretraining_runs.items()}, runs, transfers)
    return out


STUDIES.register("vl_tickets")(Study(VLStudyConfig, check_study, run_vl_study,
                                     "V+L tickets: pre-training and task-specific IMP, universal tickets, VILLA",
                                     jobs=vl_study_jobs))
