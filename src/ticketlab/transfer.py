"""Transfer a ticket: apply a run's mask to its θp, add a fresh head for the target task, fine-tune.

Results live under the source run (``transfer/<target>-<key>/round_<k>/metrics.json``, see
:mod:`ticketlab.paths`), written atomically and never recomputed, like IMP rounds; the key covers the
spec (task, recipe, seed, variant, objective) and, when a mask other than the round's ticket is given,
that mask's digest. Round 0 (the all-ones mask) is the dense reference: θp fine-tuned on the target.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ticketlab.analysis import PERTURBATIONS, perturb
from ticketlab.config import ModelConfig, TaskConfig, TrainConfig, config_hash, from_dict, parse_config, to_dict
from ticketlab.data.base import Task, build_task
from ticketlab.errors import TicketlabError
from ticketlab.fileio import is_writable, read_json, write_json
from ticketlab.jobs import JOB_KINDS, Job, job_resources
from ticketlab.masks import Mask
from ticketlab.models.base import build_model, model_input_defaults
from ticketlab.objectives.base import OBJECTIVES
from ticketlab.paths import IMP, METRICS, RunPaths
from ticketlab.results import derived
from ticketlab.runfolders import load_theta_p, write_history
from ticketlab.train import train_model
from ticketlab.units import run_unit


@dataclass(frozen=True)
class TransferSpec:
    """What a transfer result depends on besides the source run (hashed into its folder name)."""

    target: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    variant: str = "ticket"  # or a mask perturbation: complement, random, delta10
    objective: str = "supervised"  # the fine-tuning loss, e.g. villa (adversarial)
    objective_options: dict[str, Any] = field(default_factory=dict)
    # the target's model when it differs from the source run's (e.g. the CIFAR stem for an ImageNet-stem ticket,
    # as Chen et al. adapt ResNet-50): θp loads where shapes match; weights it cannot fill must be covered by this
    # model's allow_missing (learnt anew; never pruned, so the ticket's mask still fits)
    model: ModelConfig | None = None


@dataclass
class TransferResult:
    metrics: dict[str, Any]
    state: dict[str, torch.Tensor] | None = None  # only when trained in this call


def theta_p_backbone(run_dir: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_theta_p(run_dir).items() if k.startswith("backbone.")}


def transfer_ticket(run_dir: Path, k: int, spec: TransferSpec, task: Task | None = None,
                    mask: Mask | None = None, progress: bool = False) -> TransferResult:
    """Fine-tune round ``k``'s ticket (or the given ``mask``) from the run's θp on ``spec.target``."""
    paths = RunPaths(run_dir)
    run_dir = paths.root
    finished = paths.finished_rounds()
    if k not in finished:
        raise TicketlabError(f"{run_dir.name} has no finished round {k}; finished: {finished}")
    key = config_hash(spec) if mask is None else f"{config_hash(spec)}-{mask.digest()}"
    folder = paths.transfer(spec.target.name, key, k)
    if (folder / METRICS).is_file():
        return TransferResult(read_json(folder / METRICS))
    ticket = Mask.load(paths.mask(IMP, k))  # only when training: a cached result needs no mask
    mask = ticket if mask is None else mask
    if not is_writable(paths.root / "transfer"):
        raise TicketlabError(f"run folder {run_dir} is read-only, so the transfer result could not be saved; copy the "
                             "run into a writable runs folder and pass --runs-dir there")
    source = parse_config(read_json(paths.config))
    task = task or target_task(run_dir, spec)
    target = spec.model or source.model
    model = build_model(target.name, task.num_classes, target.options, seed=spec.seed,
                        head=task.head, normalize=target.normalize)
    model.load_state_dict(fitting_theta_p(theta_p_backbone(run_dir), model, target), strict=False)
    objective = OBJECTIVES.build(spec.objective, **spec.objective_options)

    def train(checkpoint: Path) -> tuple[dict[str, Any], Any]:
        result = train_model(model, task, spec.train, seed=spec.seed, mask=mask, objective=objective,
                             progress=f"transfer {run_dir.name}:{k} -> {task.name}" if progress else None,
                             engine=source.engine, checkpoint=checkpoint)
        metrics = {"format": 2, "source": run_dir.name, "round": k, "target": spec.target.name,
                   "variant": spec.variant, "sparsity": mask.sparsity(), "source_sparsity": ticket.sparsity(),
                   "num_classes": task.num_classes, "spec": to_dict(spec), **result.metrics}
        return metrics, result

    def write(tmp: Path, payload: tuple[dict[str, Any], Any]) -> None:
        write_json(tmp / METRICS, payload[0])
        write_history(tmp, payload[1].history)

    payload = run_unit(folder, METRICS, train, write, f"transfer {run_dir.name}:{k} -> {spec.target.name}")
    if payload is None:
        return TransferResult(read_json(folder / METRICS))
    return TransferResult(payload[0], payload[1].state)


def fitting_theta_p(theta_p: dict[str, torch.Tensor], model: torch.nn.Module,
                    target: ModelConfig) -> dict[str, torch.Tensor]:
    """θp's backbone tensors that fit ``model``; a backbone weight left unfilled must match ``allow_missing``."""
    wanted = {k: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    fits = {k: v for k, v in theta_p.items() if k in wanted and wanted[k].shape == v.shape}
    unfilled = [k for k in wanted if k not in fits and not k.endswith("num_batches_tracked")
                and not any(re.search(p, k.removeprefix("backbone.")) for p in target.allow_missing)]
    if unfilled:
        raise TicketlabError(f"the target model cannot take θp's {', '.join(unfilled[:3])}"
                             f"{' ...' if len(unfilled) > 3 else ''} (another shape or missing); use the source's "
                             "model or list those weights in the target model's allow_missing")
    return fits


@JOB_KINDS.register("transfer")
def transfer_job(payload: dict[str, Any], runs_dir: Path, progress: bool, index: bool = True) -> str:
    """Fine-tune one round's ticket (or its perturbation named by ``spec.variant``) from θp on a target task."""
    run, k = Path(runs_dir) / payload["source"], int(payload["round"])
    spec = from_dict(TransferSpec, payload["spec"])
    transfer_ticket(run, k, spec, mask=variant_mask(Mask.load(RunPaths(run).mask(IMP, k)), spec), progress=progress)
    return str(run)


def variant_mask(ticket: Mask, spec: TransferSpec) -> Mask | None:
    """The mask a transfer of variant ``spec.variant`` fine-tunes: None for the ticket itself, else the ticket's
    perturbation drawn from ``spec.seed`` (the same mask wherever it is computed: a job, or the study's loop)."""
    return None if spec.variant == "ticket" else perturb(ticket, spec.variant, spec.seed)


def perturbation_specs(spec: TransferSpec, seeds: list[int]) -> list[TransferSpec]:
    """The ticket and each perturbation of it, once per seed (seed i perturbs and fine-tunes)."""
    return [replace(spec, seed=seed, variant=variant) for seed in seeds for variant in ("ticket", *PERTURBATIONS)]


def transfer_job_for(source: str, k: int, spec: TransferSpec, resources: dict[str, float] | None = None,
                     finished: bool = False) -> Job:
    """The job of one transfer of run ``source``'s round ``k`` (a run id in the runs folder, or a folder path); it
    waits for the run's own job unless the run is ``finished`` already."""
    return Job(f"{Path(source).name}:{k}:{spec.target.name}-{config_hash(spec)}", "transfer",
               {"source": source, "round": k, "spec": to_dict(spec)}, after=() if finished else (source,),
               resources=job_resources(resources),
               label=f"transfer {source}:{k} -> {spec.target.name} ({spec.variant}, seed {spec.seed})")


def target_task(run_dir: Path, spec: TransferSpec) -> Task:
    """The transfer's target task, with what the source run's model implies (image size, tokenizer) as defaults."""
    model = spec.model or parse_config(read_json(RunPaths(Path(run_dir)).config)).model  # the model it trains
    return build_task(spec.target.name, spec.target.options, model_input_defaults(model.name, model.options))


def perturbation_sensitivity(run_dir: Path, k: int, spec: TransferSpec, task: Task | None = None,
                             seeds: list[int] | None = None, source: str | None = None,
                             progress: bool = False) -> list[dict[str, Any]]:
    """Fine-tune round ``k``'s ticket and each perturbation of it (complement, random, Δm10 %) on
    ``spec.target``, once per seed: one row per (seed, variant) with its score and mask sparsity."""
    run_dir = Path(run_dir)
    ticket = Mask.load(RunPaths(run_dir).mask(IMP, k))
    task = task or target_task(run_dir, spec)
    rows = []
    for run_spec in perturbation_specs(spec, seeds if seeds is not None else [spec.seed]):
        metrics = transfer_ticket(run_dir, k, run_spec, task, mask=variant_mask(ticket, run_spec),
                                  progress=progress).metrics
        rows.append(derived(metrics, source=source or run_dir.name, seed=run_spec.seed, variant=run_spec.variant,
                            sparsity=metrics["sparsity"], converged=metrics.get("converged", True)))
    return rows
