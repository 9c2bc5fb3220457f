"""The IMP runner: resumable, content-addressed experiments.

Layout of a run folder ``<runs-dir>/imp-<hash>/``::

    config.json                     the full config
    init/theta_p.safetensors        θp (pre-trained backbone + the run's fresh head)
    rounds/round_000/               dense fine-tune (mask all ones)
    rounds/round_00k/               mask.safetensors (+.json), weights.safetensors, metrics.json
    baselines/<name>/round_00k/     mask + metrics of each baseline branch
    sparsity_accuracy.png, results.md

Every folder is written to a temporary name and renamed when complete, so a folder that exists is
finished and is never recomputed; a killed run resumes at the first missing folder and, because
each round is a pure function of stored files and seeds, ends with the same masks and metrics.
"""

from __future__ import annotations

import math
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ticketlab.baselines import BASELINES
from ticketlab.checkpoints import load_backbone
from ticketlab.config import ConfigError, ExperimentConfig, config_hash, to_dict
from ticketlab.data import Task, build_task
from ticketlab.fileio import (
    atomic_dir,
    ensure_writable_dir,
    load_tensors,
    read_json,
    save_tensors,
    write_json,
)
from ticketlab.masks import Mask
from ticketlab.models import TicketModel, build_model
from ticketlab.objectives import OBJECTIVES
from ticketlab.pretrain import pretrain_run_for, run_pretraining
from ticketlab.prunable import prunable_names
from ticketlab.pruning import prune
from ticketlab.rewind import REWIND_POINTS
from ticketlab.schedules import round_sparsities
from ticketlab.store import ResultStore
from ticketlab.train import SnapshotAtStep, train_model

IMP = "imp"
STORE_NAME = "ticketlab.sqlite"


def run_dir_for(config: ExperimentConfig, runs_dir: Path) -> Path:
    return Path(runs_dir) / f"imp-{config_hash(config)}"


def round_name(k: int) -> str:
    return f"round_{k:03d}"


class RunContext:
    """Everything a round or a baseline branch needs, loaded lazily from the run folder."""

    def __init__(self, config: ExperimentConfig, run_dir: Path, task: Task) -> None:
        self.config = config
        self.dir = run_dir
        self.task = task
        self.sparsities = [0.0, *round_sparsities(config.prune.schedule, config.prune.rounds, config.prune.rate,
                                                  config.prune.sparsities)]
        self.pretrained_state = cache(self._pretrained_state)
        self.random_init_state = cache(self._random_init_state)
        self.base_checkpoint_state = cache(self._base_checkpoint_state)
        self.prunable = cache(self._prunable)

    # models and weights -----------------------------------------------------------------------
    def fresh_model(self, random_init: bool = False, init_seed: int | None = None) -> TicketModel:
        """The architecture with the run's seeded head (and random weights drawn from ``init_seed``)."""
        options = dict(self.config.model.options)
        if random_init and options.get("path"):
            options["random_init"] = True  # a Hugging Face model: its architecture, not its weights
        seed = self.config.seed if init_seed is None else init_seed
        model = build_model(self.config.model.name, self.task.num_classes, options, seed=seed, head=self.task.head)
        model.reset_head(self.task.num_classes, self.config.seed)
        return model

    def _random_init_state(self) -> dict[str, torch.Tensor]:
        """θ0: the run's own random initialisation (what a run without pre-training starts from)."""
        return self.fresh_model(random_init=True).state_dict()

    def redrawn_init_state(self) -> dict[str, torch.Tensor]:
        """A *new* random initialisation (seed + 1), for the random re-initialisation baseline."""
        return self.fresh_model(random_init=True, init_seed=self.config.seed + 1).state_dict()

    def _base_checkpoint_state(self) -> dict[str, torch.Tensor]:
        """The model as built from its options, before any pre-training (a text checkpoint, or θ0)."""
        return self.fresh_model().state_dict()

    def _pretrained_state(self) -> dict[str, torch.Tensor]:
        return load_tensors(self.dir / "init" / "theta_p.safetensors")[0]

    def imp_weights(self, k: int) -> dict[str, torch.Tensor]:
        """The trained weights of IMP round ``k`` (round 0: the dense task-trained weights)."""
        return load_tensors(self.branch_dir(IMP, k) / "weights.safetensors")[0]

    def dense_trained_state(self) -> dict[str, torch.Tensor]:
        return self.imp_weights(0)

    def early_state(self) -> dict[str, torch.Tensor]:
        return load_tensors(self.branch_dir(IMP, 0) / "rewind_early.safetensors")[0]

    # masks -------------------------------------------------------------------------------------
    def _prunable(self) -> list[str]:
        return prunable_names(self.fresh_model(), self.config.prune.prunable)

    def dense_mask(self) -> Mask:
        """All ones over the prunable set (shapes from θp, so no model is built)."""
        theta_p = self.pretrained_state()
        return Mask({n: torch.ones_like(theta_p[n], dtype=torch.bool) for n in self.prunable()})

    def sparsity(self, k: int) -> float:
        return self.sparsities[k]

    def imp_mask(self, k: int) -> Mask:
        return Mask.load(self.branch_dir(IMP, k) / "mask.safetensors")

    # folders -----------------------------------------------------------------------------------
    def branch_dir(self, branch: str, k: int) -> Path:
        base = self.dir / "rounds" if branch == IMP else self.dir / "baselines" / branch
        return base / round_name(k)

    def is_done(self, branch: str, k: int) -> bool:
        return (self.branch_dir(branch, k) / "metrics.json").is_file()


def prepare_theta_p(run: RunContext, runs_dir: Path, progress: bool) -> None:
    """Write θp once: pre-train (or load a checkpoint) into the seeded model and save its state."""
    target = run.dir / "init" / "theta_p.safetensors"
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
    with atomic_dir(run.branch_dir(branch, k)) as tmp:
        mask.save(tmp / "mask.safetensors", {"branch": branch, "round": k, "method": run.config.prune.method,
                                              "run": run.dir.name, "model": run.config.model.name})
        if branch == IMP:
            save_tensors(tmp / "weights.safetensors", result.state, {"round": k})
        if snapshot is not None:
            save_tensors(tmp / "rewind_early.safetensors", snapshot.state, {"step": run.config.prune.rewind_steps})
        write_json(tmp / "metrics.json", metrics)
    return metrics


def run_experiment(config: ExperimentConfig, runs_dir: str | Path = "runs", progress: bool = True) -> Path:
    """Run (or resume) IMP and its baselines; return the run folder."""
    runs_dir = ensure_writable_dir(Path(runs_dir))
    run_dir = run_dir_for(config, runs_dir)
    run_dir.mkdir(exist_ok=True)
    for stale in run_dir.rglob(".round_*"):  # left by a kill during a folder write
        shutil.rmtree(stale, ignore_errors=True)
    store = ResultStore(runs_dir / STORE_NAME)
    if not (run_dir / "config.json").is_file():
        write_json(run_dir / "config.json", to_dict(config))
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
        if run.is_done(branch, k):
            metrics = read_json(run.branch_dir(branch, k) / "metrics.json")
        elif branch == IMP:
            if k == 0:
                mask, start = run.dense_mask(), run.pretrained_state()
            else:
                previous, weights = run.imp_mask(k - 1), run.imp_weights(k - 1)
                generator = torch.Generator().manual_seed(config.seed * 7919 + k)
                mask = prune(config.prune.method, weights, previous, run.sparsity(k), generator)
                start = REWIND_POINTS.get(config.prune.rewind)(run)
            metrics = train_branch(run, IMP, k, mask, start, progress)
        else:
            mask, start = BASELINES.get(branch)(run, k)
            metrics = train_branch(run, branch, k, mask, start, progress)
        store.record(run_dir.name, branch, metrics)
        bar.set_postfix(test_acc=f"{metrics['test_acc']:.3f}")
    bar.close()
    store.upsert_run(run_dir.name, run_dir, to_dict(config), "done")
    from ticketlab.report import write_report

    write_report(run_dir)
    return run_dir


def load_run(run_dir: Path) -> dict[str, Any]:
    """The run's config, rounds and baselines as plain data (mask paths relative to the run folder)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a ticketlab run folder (no config.json)")

    def rows(base: Path) -> list[dict[str, Any]]:
        out = []
        for folder in sorted(base.glob("round_*")) if base.is_dir() else []:
            if (folder / "metrics.json").is_file():
                metrics = read_json(folder / "metrics.json")
                out.append({"round": metrics["round"], "sparsity": metrics["sparsity"],
                            "mask": str((folder / "mask.safetensors").relative_to(run_dir)), "metrics": metrics})
        return out

    baselines_dir = run_dir / "baselines"
    return {
        "run": run_dir.name,
        "path": str(run_dir),
        "config": read_json(run_dir / "config.json"),
        "rounds": rows(run_dir / "rounds"),
        "baselines": {d.name: rows(d) for d in sorted(baselines_dir.iterdir()) if d.is_dir()}
        if baselines_dir.is_dir() else {},
    }
