"""The IMP runner: resumable, content-addressed experiments.

The run folder's layout is defined in :mod:`ticketlab.paths`. Every folder is written to a temporary
name and renamed when complete, so a folder that exists is finished and is never recomputed; a killed
run resumes at the first missing folder and, because each round is a pure function of stored files
and seeds, ends with the same masks and metrics.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ticketlab.baselines.base import BASELINES
from ticketlab.checkpoints import load_backbone
from ticketlab.config import ConfigError, ExperimentConfig, config_hash, to_dict
from ticketlab.data.base import Task, build_task
from ticketlab.fileio import atomic_dir, ensure_writable_dir, load_tensors, read_json, save_tensors, write_json
from ticketlab.masks import Mask
from ticketlab.models.base import TicketModel, build_model
from ticketlab.objectives.base import OBJECTIVES
from ticketlab.paths import EARLY, IMP, MASK, METRICS, WEIGHTS, RunPaths, store_path
from ticketlab.paths import run_dir as run_dir_of
from ticketlab.pretrain import pretrain_run_for, run_pretraining
from ticketlab.prunable import prunable_names
from ticketlab.pruning.base import prune
from ticketlab.report import write_report
from ticketlab.rewind import rewound_state
from ticketlab.schedules import round_sparsities
from ticketlab.store import ResultStore
from ticketlab.train import SnapshotAtStep, train_model


def run_dir_for(config: ExperimentConfig, runs_dir: Path) -> Path:
    return run_dir_of(runs_dir, config_hash(config))


class RunContext:
    """Generic accessors to what a round or a baseline branch needs, loaded lazily from the run folder.

    Special start states (a baseline's, a rewind point's) are computed by their plug-in from these;
    :meth:`memo` lets them cache what they compute for the rest of the run.
    """

    def __init__(self, config: ExperimentConfig, run_dir: Path, task: Task) -> None:
        self.config = config
        self.paths = RunPaths(run_dir)
        self.dir = self.paths.root
        self.task = task
        self.sparsities = [0.0, *round_sparsities(config.prune.schedule, config.prune.rounds, config.prune.rate,
                                                  config.prune.sparsities)]
        self._memo: dict[str, Any] = {}

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per run context (states are large; rounds reuse them)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    # models and weights -----------------------------------------------------------------------
    def fresh_model(self, random_init: bool = False, init_seed: int | None = None) -> TicketModel:
        """The architecture with the run's seeded head; ``random_init`` draws its weights from ``init_seed``."""
        seed = self.config.seed if init_seed is None else init_seed
        return build_model(self.config.model.name, self.task.num_classes, self.config.model.options, seed=seed,
                           head=self.task.head, head_seed=self.config.seed, random_init=random_init)

    def pretrained_state(self) -> dict[str, torch.Tensor]:
        return self.memo("theta_p", lambda: load_tensors(self.paths.theta_p)[0])

    def imp_weights(self, k: int) -> dict[str, torch.Tensor]:
        """The trained weights of IMP round ``k`` (round 0: the dense task-trained weights)."""
        return load_tensors(self.paths.weights(k))[0]

    # masks -------------------------------------------------------------------------------------
    def prunable(self) -> list[str]:
        return self.memo("prunable", lambda: prunable_names(self.fresh_model(), self.config.prune.prunable))

    def dense_mask(self) -> Mask:
        """All ones over the prunable set (shapes from θp, so no model is built)."""
        theta_p = self.pretrained_state()
        return Mask({n: torch.ones_like(theta_p[n], dtype=torch.bool) for n in self.prunable()})

    def sparsity(self, k: int) -> float:
        return self.sparsities[k]

    def imp_mask(self, k: int) -> Mask:
        return Mask.load(self.paths.mask(IMP, k))


def prepare_theta_p(run: RunContext, runs_dir: Path, progress: bool) -> None:
    """Write θp once: pre-train (or load a checkpoint) into the seeded model and save its state."""
    target = run.paths.theta_p
    if target.is_file():
        return
    cfg = run.config
    model = run.fresh_model()
    source = "random-init"
    if cfg.pretrain is not None:
        checkpoint = run_pretraining(pretrain_run_for(cfg), runs_dir, cfg.deterministic,
                                     progress)
        load_backbone(model.backbone, checkpoint)
        source = str(checkpoint.relative_to(runs_dir))
    elif cfg.model.checkpoint:
        report = load_backbone(model.backbone, cfg.model.checkpoint)
        tqdm.write(f"θp from {cfg.model.checkpoint}: {report.summary()}")
        source = cfg.model.checkpoint
    elif cfg.model.options.get("path"):
        source = str(cfg.model.options["path"])
    target.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(target, model.state_dict(), {"source": source})


def train_branch(run: RunContext, branch: str, k: int, mask: Mask, start: dict[str, torch.Tensor],
                 progress: bool) -> dict[str, Any]:
    """Train one round of one branch from ``start`` under ``mask`` and write its folder atomically."""
    model = run.fresh_model()
    model.load_state_dict(start)
    snapshot = None
    if branch == IMP and k == 0 and run.config.prune.rewind == "early":
        recipe = run.config.train
        steps = math.ceil(len(run.task.train) / recipe.batch_size) * recipe.epochs
        if run.config.prune.rewind_steps > steps:
            raise ConfigError(f"prune.rewind_steps={run.config.prune.rewind_steps} exceeds the {steps} steps of "
                              "dense training; lower it")
        snapshot = SnapshotAtStep(run.config.prune.rewind_steps)
    objective = OBJECTIVES.build(run.config.objective, **run.config.objective_options)
    result = train_model(model, run.task, run.config.train, seed=run.config.seed, mask=mask, objective=objective,
                         callbacks=[snapshot] if snapshot else [], deterministic=run.config.deterministic,
                         progress=f"{branch} round {k} ({mask.sparsity():.1%})" if progress else None)
    metrics = {"round": k, "branch": branch, "target_sparsity": run.sparsity(k), "sparsity": mask.sparsity(),
               "model_sparsity": mask.model_sparsity(model), **result.metrics}
    with atomic_dir(run.paths.branch(branch, k)) as tmp:
        mask.save(tmp / MASK, {"branch": branch, "round": k, "method": run.config.prune.method,
                                              "run": run.dir.name, "model": run.config.model.name})
        if branch == IMP:
            save_tensors(tmp / WEIGHTS, result.state, {"round": k})
        if snapshot is not None:
            save_tensors(tmp / EARLY, snapshot.state, {"step": run.config.prune.rewind_steps})
        write_json(tmp / METRICS, metrics)
    return metrics


def run_experiment(config: ExperimentConfig, runs_dir: str | Path = "runs", progress: bool = True) -> Path:
    """Run (or resume) IMP and its baselines; return the run folder."""
    runs_dir = ensure_writable_dir(Path(runs_dir))
    paths = RunPaths(run_dir_for(config, runs_dir))
    run_dir = paths.root
    run_dir.mkdir(exist_ok=True)
    for stale in run_dir.rglob(".round_*"):  # left by a kill during a folder write
        shutil.rmtree(stale, ignore_errors=True)
    store = ResultStore(store_path(runs_dir))
    if not paths.config.is_file():
        write_json(paths.config, to_dict(config))
    store.upsert_run(run_dir.name, run_dir, to_dict(config), "running")
    task = build_task(config.task.name, config.task.options)
    run = RunContext(config, run_dir, task)
    prepare_theta_p(run, runs_dir, progress)
    rounds = len(run.sparsities) - 1
    baseline_rounds = config.baseline_rounds or range(1, rounds + 1)
    units = [(IMP, k) for k in range(rounds + 1)] + [(b, k) for b in config.baselines for k in baseline_rounds]
    bar = tqdm(units, desc="ticketlab", disable=not progress, unit="round", dynamic_ncols=True)
    for branch, k in bar:
        bar.set_description(f"{branch} round {k}/{rounds} target {run.sparsity(k):.2%}")
        if run.paths.is_done(branch, k):
            metrics = read_json(run.paths.metrics(branch, k))
        elif branch == IMP:
            if k == 0:
                mask, start = run.dense_mask(), run.pretrained_state()
            else:
                previous, weights = run.imp_mask(k - 1), run.imp_weights(k - 1)
                generator = torch.Generator().manual_seed(config.seed * 7919 + k)
                mask = prune(config.prune.method, weights, previous, run.sparsity(k), generator)
                start = rewound_state(run)
            metrics = train_branch(run, IMP, k, mask, start, progress)
        else:
            mask, start = BASELINES.get(branch)(run, k)
            metrics = train_branch(run, branch, k, mask, start, progress)
        store.record(run_dir.name, branch, metrics)
        bar.set_postfix(test_acc=f"{metrics['test_acc']:.3f}")
    bar.close()
    store.upsert_run(run_dir.name, run_dir, to_dict(config), "done")
    write_report(run_dir)
    return run_dir
