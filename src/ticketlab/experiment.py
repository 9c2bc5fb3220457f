"""The IMP runner: resumable, content-addressed experiments.

The run folder's layout is defined in :mod:`ticketlab.paths`. Every folder is written to a temporary
name and renamed when complete, so a folder that exists is finished and is never recomputed; a killed
run resumes at the first missing folder and, because each round is a pure function of stored files
and seeds, ends with the same masks and metrics.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ticketlab.baselines.base import BASELINES, branch_label
from ticketlab.checkpoints import load_backbone
from ticketlab.config import ConfigError, ExperimentConfig, check_theta_p_source, config_hash, to_dict
from ticketlab.data.base import build_task
from ticketlab.engine import Engine, is_main_process, same_on_every_rank, wait_for_everyone
from ticketlab.errors import TicketlabError
from ticketlab.fileio import (
    TMP_MARK,
    ensure_writable_dir,
    read_json,
    release_files,
    remove_stale_temps,
    storage_error,
    write_json,
)
from ticketlab.locks import run_lock
from ticketlab.mask_search import check_search, plot_search, reported, round_search, search_kind, searches, with_compute
from ticketlab.masks import Mask
from ticketlab.models.base import model_input_defaults
from ticketlab.objectives.base import OBJECTIVES
from ticketlab.paths import EARLY, FINAL_WEIGHTS, IMP, MASK, METRICS, NEXT_MASK, WEIGHTS, RunPaths
from ticketlab.paths import run_dir as run_dir_of
from ticketlab.pretrain import pretrain_run_for, run_pretraining
from ticketlab.progress import log_line, progress_bar
from ticketlab.pruning.base import prune, target_pruned_count
from ticketlab.report import write_report
from ticketlab.results import score
from ticketlab.rewind import rewound_state
from ticketlab.run_context import RunContext
from ticketlab.runfolders import check_round, write_history
from ticketlab.schedules import round_sparsities
from ticketlab.seeds import derive_seed
from ticketlab.store import NoIndex, ResultStore, set_status
from ticketlab.tensorfiles import check_finite, save_tensors, sidecar_path
from ticketlab.train import SnapshotAtStep, TrainResult, train_model
from ticketlab.units import run_unit


def run_dir_for(config: ExperimentConfig, runs_dir: Path) -> Path:
    return run_dir_of(runs_dir, config_hash(config))


def prepare_theta_p(run: RunContext, runs_dir: Path, progress: bool) -> None:
    """Write θp once: pre-train (or load a checkpoint) into the seeded model and save its state.

    With a pre-training stage only the run's head is stored; the backbone is referenced, not copied.
    """
    target = run.paths.theta_p
    if target.is_file():
        return
    cfg = run.config
    model = run.fresh_model()
    source, meta = "random-init", {}
    if cfg.pretrain is not None:
        checkpoint = run_pretraining(pretrain_run_for(cfg), runs_dir, cfg.deterministic, progress)
        load_backbone(model.backbone, checkpoint)
        heads = run.pretrained_heads()
        if heads is not None:  # IMP on the pre-training task: θp includes the pre-trained task head
            model.head.load_state_dict(heads[0])
        source = str(checkpoint.relative_to(runs_dir))
        meta = {"backbone_from": os.path.relpath(checkpoint, run.dir),
                "backbone_sha256": read_json(sidecar_path(checkpoint))["sha256"]}
    elif cfg.model.checkpoint:
        report = load_backbone(model.backbone, cfg.model.checkpoint, cfg.model.allow_missing)
        log_line(f"θp from {cfg.model.checkpoint}: {report.summary()}")
        source = cfg.model.checkpoint
    elif cfg.model.options.get("path") or cfg.model.options.get("checkpoint"):
        source = str(cfg.model.options.get("checkpoint") or cfg.model.options["path"])
    state = model.state_dict()
    check_finite(state, f"θp (from {source})")
    if meta:
        state = {k: v for k, v in state.items() if not k.startswith("backbone.")}
    if is_main_process():
        target.parent.mkdir(parents=True, exist_ok=True)
        save_tensors(target, state, {"source": source, **meta})
    wait_for_everyone()


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
    heads = run.pretrained_heads()
    last = len(run.sparsities) - 1
    search = round_search(run, k, mask) if branch == IMP and searches(run.config.prune, k, last) else None

    def fit(net: torch.nn.Module, checkpoint: Path, callbacks: list[Any], what: str) -> TrainResult:
        return train_model(net, run.task, run.config.train, seed=run.config.seed, mask=mask,
                           objective=OBJECTIVES.build(run.config.objective, **run.config.objective_options),
                           callbacks=callbacks, deterministic=run.config.deterministic,
                           progress=f"{branch} round {k} ({mask.sparsity():.1%}){what}" if progress else None,
                           engine=run.config.engine, checkpoint=checkpoint,
                           objective_state=heads[1] if heads is not None and heads[1] else None)

    def train(checkpoint: Path) -> tuple[TrainResult, dict[str, Any]]:
        result = fit(model, checkpoint, [c for c in (snapshot, search) if c], ", mask search" if search else "")
        parts, extra = [result.metrics], {}
        if search is not None:
            full = reported(run.config.prune, k, last)
            extra = {"search": {**search.summary(search_kind(run.config.prune)), "steps": result.metrics["steps"]},
                     "fully_trained": full or not result.metrics["stopped_early"]}
            if full and result.metrics["stopped_early"]:  # the reported score: a full training of this mask
                fresh = run.fresh_model()
                fresh.load_state_dict(start)
                second = checkpoint.with_name(checkpoint.name.replace(".checkpoint", ".full.checkpoint"))
                result = fit(fresh, second, [], ", full training")
                second.unlink(missing_ok=True)
                parts.append(result.metrics)
        metrics = {"format": 2, "round": k, "branch": branch, "target_sparsity": run.sparsity(k),
                   "sparsity": mask.sparsity(), "model_sparsity": mask.model_sparsity(model), **result.metrics,
                   **extra}
        with_compute(metrics, *parts)
        if branch != IMP:
            metrics["label"] = branch_label(branch)  # reports show it without loading the plug-ins
        if not same_on_every_rank(mask.digest()):
            raise TicketlabError(f"the ranks hold different masks for {branch} round {k}; their run folders differ "
                                 "(every rank must see the same runs folder: a shared file system)")
        metrics["ranks_agree_on_mask"] = True
        return result, metrics

    def write(tmp: Path, payload: tuple[TrainResult, dict[str, Any]]) -> None:
        result, metrics = payload
        mask.save(tmp / MASK, {"branch": branch, "round": k, "method": run.config.prune.method,
                               "run": run.dir.name, "model": run.config.model.name})
        if branch == IMP:
            save_tensors(tmp / WEIGHTS, result.state, {"round": k})
            if run.config.prune.weights == "final" and result.final_state is not None:
                save_tensors(tmp / FINAL_WEIGHTS, result.final_state, {"round": k, "of": "the last epoch"})
        if snapshot is not None:
            save_tensors(tmp / EARLY, snapshot.state, {"step": run.config.prune.rewind_steps})
        if search is not None and search.mask is not None:
            search.mask.save(tmp / NEXT_MASK, {"branch": branch, "round": k + 1, "found_at_step": search.stopped_at,
                                               "method": run.config.prune.method, "run": run.dir.name})
            plot_search(search.curve, run.config.prune, tmp / "mask_search.png")
        write_json(tmp / METRICS, metrics)
        write_history(tmp, result.history)

    folder = run.paths.branch(branch, k)
    payload = run_unit(folder, METRICS, train, write, f"{branch} round {k} of {run.dir.name}")
    return payload[1] if payload is not None else check_round(folder)


def check_schedule(run: RunContext) -> None:
    """Every round must prune more weights than the one before and keep at least one: checked before round 0."""
    params = dict(run.fresh_model().named_parameters())
    total = sum(params[n].numel() for n in run.prunable())
    counts = [target_pruned_count(s, total) for s in run.sparsities]
    for k in range(1, len(counts)):
        if counts[k] <= counts[k - 1] or counts[k] >= total:
            raise ConfigError(f"prune.rounds={len(counts) - 1} cannot be reached: round {k} (target sparsity "
                              f"{run.sparsities[k]:.6f}) prunes no more of the {total:,} prunable weights than round "
                              f"{k - 1}; use at most {k - 1} rounds or a lower prune.rate")


def open_run(config: ExperimentConfig, runs_dir: Path) -> RunContext:
    """The run of ``config`` with everything checked that can be checked before anything is written: options,
    data, the model, the schedule, and whether the device, precision and ranks fit."""
    paths = RunPaths(run_dir_for(config, runs_dir))
    if not paths.config.is_file():
        check_theta_p_source(config)
    task = build_task(config.task.name, config.task.options, model_input_defaults(config.model.name,
                                                                                  config.model.options))
    run = RunContext(config, paths.root, task)
    check_schedule(run)
    check_search(config.prune, math.ceil(len(task.train) / config.train.batch_size) * config.train.epochs,
                 len(run.sparsities) - 1)
    Engine(config.engine).check_batch(config.train.batch_size)
    return run


def run_experiment(config: ExperimentConfig, runs_dir: str | Path = "runs", progress: bool = True,
                   index: bool = True) -> Path:
    """Run (or resume) IMP and its baselines; return the run folder.

    Everything that can be checked is checked before anything is written (:func:`open_run`). One process at a
    time works on a run (its lock); its status is kept in the folder and, unless ``index`` is False (a worker
    of an executor, whose driver indexes), in the index.
    """
    runs_dir = ensure_writable_dir(Path(runs_dir))
    run = open_run(config, runs_dir)
    paths = run.paths
    main = is_main_process()  # under several processes only rank 0 writes files, the index and the console
    if main:
        try:
            paths.root.mkdir(exist_ok=True)
        except OSError as exc:
            raise storage_error(exc, paths.root) from exc
    with run_lock(paths.root, f"run {paths.root.name}") if main else contextlib.nullcontext():
        store = None
        if main:
            remove_stale_temps(paths.root)
            for stale in paths.root.rglob(".round_*"):  # temp folders of versions before temp names carried a pid
                if stale.is_dir() and TMP_MARK not in stale.name:
                    shutil.rmtree(stale, ignore_errors=True)
            store = ResultStore(runs_dir) if index else NoIndex()
            if not paths.config.is_file():
                write_json(paths.config, to_dict(config))
            set_status(store, paths, to_dict(config), "running")
        try:
            run_units(run, store, runs_dir, progress and main)
        except KeyboardInterrupt:
            set_status(store, paths, to_dict(config), "interrupted")
            raise
        except BaseException as exc:
            set_status(store, paths, to_dict(config), "failed", f"{type(exc).__name__}: {exc}"[:2000])
            raise
        if main:
            write_report(paths.root)
            set_status(store, paths, to_dict(config), "done")
    wait_for_everyone()
    return paths.root


def run_units(run: RunContext, store: ResultStore | NoIndex | None, runs_dir: Path, progress: bool) -> None:
    """Every IMP round, then every baseline branch, skipping what is finished."""
    prepare_theta_p(run, runs_dir, progress)
    rounds = len(run.sparsities) - 1
    bar = progress_bar(run_unit_keys(run.config), desc="ticketlab", disable=not progress, unit="round")
    for branch, k in bar:
        wait_for_everyone()  # every rank sees the same finished folders
        bar.set_description(f"{branch} round {k}/{rounds} target {run.sparsity(k):.2%}")
        metrics = run_round(run, branch, k, runs_dir, progress)
        if store is not None:
            store.record(run.dir.name, branch, metrics)
        bar.set_postfix(test=f"{score(metrics):.3f}")
    bar.close()


def run_unit_keys(config: ExperimentConfig) -> list[tuple[str, int]]:
    """(branch, round) of every unit of a run, in the serial order: IMP rounds, then each baseline's rounds."""
    prune_cfg = config.prune
    rounds = len(round_sparsities(prune_cfg.schedule, prune_cfg.rounds, prune_cfg.rate, prune_cfg.sparsities))
    baseline_rounds = config.baseline_rounds or range(1, rounds + 1)
    return [(IMP, k) for k in range(rounds + 1)] + [(b, k) for b in config.baselines for k in baseline_rounds]


def run_round(run: RunContext, branch: str, k: int, runs_dir: Path, progress: bool) -> dict[str, Any]:
    """One unit of the run (its metrics; finished units are read, not recomputed). IMP round k reads round k-1;
    a baseline branch at round k reads only IMP round k (and round 0), so baselines may run beside later rounds."""
    if run.paths.is_done(branch, k):
        return check_round(run.paths.branch(branch, k))
    config = run.config
    if branch != IMP:
        mask, start = BASELINES.get(branch)(run, k)
        return train_branch(run, branch, k, mask, start, progress)
    if k == 0:
        prepare_theta_p(run, runs_dir, progress)
        mask, start = run.dense_mask(), run.pretrained_state()
    else:
        found = run.paths.branch(IMP, k - 1) / NEXT_MASK  # the mask a cheaper round found while training
        if found.is_file():
            mask = Mask.load(found)
        else:
            previous, weights = run.imp_mask(k - 1), run.pruning_weights(k - 1)
            generator = torch.Generator().manual_seed(derive_seed(config.seed, "imp_prune", k))
            mask = prune(config.prune.method, weights, previous, run.sparsity(k), generator, run.structure(),
                         config.prune.structure, config.prune.channel_multiple)
        # learning-rate rewinding (Renda et al.) keeps the trained weights and restarts only the schedule
        start = run.pruning_weights(k - 1) if config.prune.rewind == "lr" else rewound_state(run)
    metrics = train_branch(run, IMP, k, mask, start, progress)
    if k >= 2 and config.keep == "needed" and is_main_process():  # round k-1's weights are no longer needed
        files = (run.paths.weights(k - 1), run.paths.final_weights(k - 1))
        release_files(run.paths.branch(IMP, k - 1), [n for f in files for n in (f.name, sidecar_path(f).name)])
    return metrics
