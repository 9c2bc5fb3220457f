"""Pre-training a backbone with an objective; the checkpoint is θp for every other command.

A pre-training run is content-addressed like an IMP run (``pretrain-<hash>``), so IMP runs sharing
the same pre-training reuse it, and re-running after a kill redoes only what did not finish.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ticketlab.config import (
    EngineConfig,
    ExperimentConfig,
    ModelConfig,
    PretrainConfig,
    config_hash,
    from_dict,
    to_dict,
)
from ticketlab.data.base import build_task
from ticketlab.fileio import ensure_writable_dir, write_json
from ticketlab.jobs import JOB_KINDS, Job, job_resources
from ticketlab.models.base import build_model, model_input_defaults
from ticketlab.objectives.base import OBJECTIVES
from ticketlab.paths import CONFIG, PRETRAINED_BACKBONE, PRETRAINED_HEADS, pretrain_dir
from ticketlab.runfolders import write_history
from ticketlab.tensorfiles import load_tensors, save_tensors
from ticketlab.train import TrainResult, train_model
from ticketlab.units import run_unit


@dataclass(frozen=True)
class PretrainRun:
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    seed: int = 0
    engine: EngineConfig = field(default_factory=EngineConfig)


def pretrain_run_for(cfg: ExperimentConfig) -> PretrainRun:
    """The pre-training an experiment's θp comes from (its own seed unless ``pretrain.seed`` fixes one)."""
    assert cfg.pretrain is not None
    seed = cfg.seed if cfg.pretrain.seed is None else cfg.pretrain.seed
    return PretrainRun(cfg.model, replace(cfg.pretrain, seed=None), seed, cfg.engine)  # one folder per computation


def run_pretraining(run: PretrainRun, runs_dir: Path, deterministic: bool = False,
                    progress: bool = True) -> Path:
    """Pre-train (or find the finished pre-training) and return the backbone checkpoint path."""
    folder = pretrain_dir(ensure_writable_dir(runs_dir), config_hash(run))
    checkpoint = folder / PRETRAINED_BACKBONE
    if checkpoint.is_file():
        return checkpoint
    task = build_task(run.pretrain.task.name, run.pretrain.task.options,
                      model_input_defaults(run.model.name, run.model.options))
    model = build_model(run.model.name, task.num_classes, run.model.options, seed=run.seed, head=task.head,
                        normalize=run.model.normalize)
    objective = OBJECTIVES.build(run.pretrain.objective, **run.pretrain.objective_options)

    def train(checkpoint_path: Path) -> TrainResult:
        return train_model(model, task, run.pretrain.train, seed=run.seed, objective=objective,
                           deterministic=deterministic, config_key="pretrain.train",
                           progress=f"pre-train {run.pretrain.objective} on {task.name}" if progress else None,
                           engine=run.engine, checkpoint=checkpoint_path)

    def write(tmp: Path, result: TrainResult) -> None:
        backbone = {k.removeprefix("backbone."): v for k, v in result.state.items() if k.startswith("backbone.")}
        write_json(tmp / CONFIG, to_dict(run))
        save_tensors(tmp / PRETRAINED_BACKBONE, backbone, {
            "kind": "ticketlab-pretrained-backbone", "objective": run.pretrain.objective,
            "task": run.pretrain.task.name, "model": to_dict(run.model), "metrics": result.metrics,
        })
        heads, extra = pretrained_heads(result)
        save_tensors(tmp / PRETRAINED_HEADS, heads, {"kind": "ticketlab-pretrained-heads", "extra_state": extra})
        write_history(tmp, result.history)

    run_unit(folder, PRETRAINED_BACKBONE, train, write, f"pre-training {folder.name}")
    return checkpoint


@JOB_KINDS.register("pretrain")
def pretrain_job(payload: dict[str, Any], runs_dir: Path, progress: bool, index: bool = True) -> str:
    """One pre-training (θp), shared by every IMP run that starts from it."""
    run = from_dict(PretrainRun, payload["run"])
    return str(run_pretraining(run, runs_dir, bool(payload.get("deterministic")), progress).parent)


def pretrain_job_for(cfg: ExperimentConfig, runs_dir: Path) -> Job:
    """The job of the pre-training ``cfg``'s θp comes from (its id: the pre-training's folder name)."""
    run = pretrain_run_for(cfg)
    return Job(pretrain_dir(runs_dir, config_hash(run)).name, "pretrain",
               {"run": to_dict(run), "deterministic": cfg.deterministic},
               resources=job_resources(cfg.engine.resources),
               label=f"pre-train {run.pretrain.objective}")


def pretrained_heads(result: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The pre-training's task head (``head.*``) and objective parts (``objective.*``: projectors, MoCo's key encoder
    and queue) as tensors, plus the objective's non-tensor state (MoCo's queue pointer) for the sidecar."""
    tensors = {k: v for k, v in result.state.items() if k.startswith("head.")}
    extra = {}
    for key, value in (result.objective_state or {}).items():
        if isinstance(value, torch.Tensor):
            tensors[f"objective.{key}"] = value.contiguous()
        else:
            extra[key] = value
    return tensors, extra


def load_pretrained_heads(backbone_checkpoint: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """(head state, objective state) saved beside a pre-trained backbone; None for pre-trainings written before
    heads were kept."""
    path = Path(backbone_checkpoint).parent / PRETRAINED_HEADS
    if not path.is_file():
        return None
    tensors, meta = load_tensors(path)
    head = {k.removeprefix("head."): v for k, v in tensors.items() if k.startswith("head.")}
    objective: dict[str, Any] = {k.removeprefix("objective."): v for k, v in tensors.items()
                                 if k.startswith("objective.")}
    objective.update(meta.get("extra_state", {}))
    return head, objective


def heads_for_run(cfg: ExperimentConfig, runs_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The pre-trained heads an IMP run on the pre-training task itself (same objective, options and task) rewinds
    with θp; None for any other run."""
    if cfg.pretrain is None or (cfg.objective, cfg.objective_options, cfg.task) != \
            (cfg.pretrain.objective, cfg.pretrain.objective_options, cfg.pretrain.task):
        return None
    return load_pretrained_heads(pretrain_dir(runs_dir, config_hash(pretrain_run_for(cfg))) / PRETRAINED_BACKBONE)
