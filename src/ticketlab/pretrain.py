"""Pre-training a backbone with an objective; the checkpoint is θp for every other command.

A pre-training run is content-addressed like an IMP run (``pretrain-<hash>``), so IMP runs sharing
the same pre-training reuse it, and re-running after a kill redoes only what did not finish.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from ticketlab.config import EngineConfig, ExperimentConfig, ModelConfig, PretrainConfig, config_hash, to_dict
from ticketlab.data.base import build_task
from ticketlab.engine import is_main_process, wait_for_everyone
from ticketlab.fileio import atomic_dir, ensure_writable_dir, save_tensors, write_json
from ticketlab.models.base import build_model, model_input_defaults
from ticketlab.objectives.base import OBJECTIVES
from ticketlab.paths import CONFIG, PRETRAINED_BACKBONE, pretrain_dir, training_checkpoint, write_history
from ticketlab.train import train_model


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
    result = train_model(model, task, run.pretrain.train, seed=run.seed, objective=objective,
                         deterministic=deterministic, config_key="pretrain.train",
                         progress=f"pre-train {run.pretrain.objective} on {task.name}" if progress else None,
                         engine=run.engine, checkpoint=training_checkpoint(folder))
    backbone = {k.removeprefix("backbone."): v for k, v in result.state.items() if k.startswith("backbone.")}
    if not is_main_process():
        wait_for_everyone()
        return checkpoint
    with atomic_dir(folder) as tmp:
        write_json(tmp / CONFIG, to_dict(run))
        save_tensors(tmp / PRETRAINED_BACKBONE, backbone, {
            "kind": "ticketlab-pretrained-backbone", "objective": run.pretrain.objective,
            "task": run.pretrain.task.name, "model": to_dict(run.model), "metrics": result.metrics,
        })
        write_history(tmp, result.history)
    training_checkpoint(folder).unlink(missing_ok=True)
    wait_for_everyone()
    return checkpoint
