"""The cost of a job graph without running it (``--dry-run``, ``ticketlab.dry_run``): its units of work, the training
steps they take (epochs × ⌈n_train / batch⌉, n_train from the task's ``dry_count`` hook or its ``n_train`` option)
and a measured step time: optimiser steps of the training loop's own ``TrainStep`` on the engine's device and
precision, per distinct model × input shape × recipe, at the config's batch size on synthetic inputs of the task's
shape (images, token ids, or V+L tokens + region features).

Simplifications, so the result is an estimate: the supervised loss for every objective (contrastive pre-training
runs two views: about 2× this), whole images for patch students (an upper bound), selectors without token
reduction, a linear head outside V+L (a dense task's FPN head is not timed), full IMP rounds (early-bird /
round_budget not modelled), one process; no data loading, no evaluation, no selector inference passes.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ticketlab.config import EngineConfig, ModelConfig, TaskConfig, TrainConfig, from_dict, parse_config, to_dict
from ticketlab.data.base import TASKS
from ticketlab.errors import TicketlabError, one_line
from ticketlab.jobs import Job
from ticketlab.models.base import TicketModel, build_model, model_input_defaults

NOT_COUNTED = "an estimate: synthetic inputs, no data loading, no evaluation, one process"


# -- units of work, from the job graph ----------------------------------------------------------------------
@dataclass(frozen=True)
class Work:
    """``units`` trainings of one recipe: ``train.epochs`` × ⌈n_train × ``share`` / batch⌉ steps each."""

    kind: str
    units: int
    model: ModelConfig | None = None
    task: TaskConfig | None = None
    train: TrainConfig | None = None  # None: no training (a selector used as it is)
    engine: EngineConfig = dataclasses.field(default_factory=EngineConfig)
    share: float = 1.0  # of the training split per unit (cross-fitted selectors: one half each)


def plan(jobs: list[Job]) -> list[Work]:
    """The trainings of a job graph, by job kind (an unknown kind: one unit of unknown cost)."""
    graph = {job.id: job for job in jobs}
    return [w for job in jobs for w in WORK.get(job.kind, lambda j, g: [Work(f"{j.kind} job", 1)])(job, graph)]


def _run_work(job: Job, graph: dict[str, Job]) -> list[Work]:
    """A ``round`` job is one unit; a ``find`` job trains the units of its run that no ``round`` job covers."""
    from ticketlab.experiment import run_unit_keys
    from ticketlab.paths import IMP
    from ticketlab.run_jobs import round_job_id

    cfg = parse_config(job.payload["config"])
    keys = [(job.payload["branch"], int(job.payload["round"]))] if job.kind == "round" else \
        [k for k in run_unit_keys(cfg) if round_job_id(job.id, *k) not in graph]
    imp = sum(branch == IMP for branch, _ in keys)
    return [Work(kind, n, cfg.model, cfg.task, cfg.train, cfg.engine)
            for kind, n in (("IMP round", imp), ("baseline training", len(keys) - imp)) if n]


def _pretrain_work(job: Job, graph: dict[str, Job]) -> list[Work]:
    from ticketlab.pretrain import PretrainRun

    run = from_dict(PretrainRun, job.payload["run"])
    return [Work("pre-training", 1, run.model, run.pretrain.task, run.pretrain.train, run.engine)]


def _transfer_work(job: Job, graph: dict[str, Job]) -> list[Work]:
    from ticketlab.transfer import TransferSpec

    spec = from_dict(TransferSpec, job.payload["spec"])
    source = graph.get(str(job.payload["source"]))
    cfg = parse_config(source.payload["config"]) if source is not None and "config" in source.payload else None
    model = getattr(spec, "model", None) or (cfg.model if cfg is not None else None)
    return [Work("transfer fine-tune", 1, model, spec.target, spec.train, cfg.engine if cfg else EngineConfig())]


def _select_work(job: Job, graph: dict[str, Job]) -> list[Work]:
    from ticketlab.studies.patch_tickets import SelectorConfig

    cfg = from_dict(SelectorConfig, job.payload["selector"])
    if cfg.finetune is None:
        return [Work("selector pass", 1, cfg.model, cfg.task, None, cfg.engine)]
    halves = 2 if cfg.cross_fit else 1
    return [Work("selector fine-tune", halves, cfg.model, cfg.task, cfg.finetune, cfg.engine, share=1 / halves)]


def _student_work(job: Job, graph: dict[str, Job]) -> list[Work]:
    from ticketlab.studies.patch_tickets import PatchStudyConfig

    cfg, keep = from_dict(PatchStudyConfig, job.payload["study"]), float(job.payload["keep_rate"])
    recipe = cfg.train
    if job.payload["variant"] == "rc_budget":  # as train_student: Shen et al.'s equal budget, epochs / k³
        recipe = dataclasses.replace(recipe, epochs=max(1, round(recipe.epochs / keep**3)))
    return [Work("patch student", 1, cfg.student, cfg.selector.task, recipe, cfg.engine)]


WORK: dict[str, Callable[[Job, dict[str, Job]], list[Work]]] = {
    "find": _run_work, "round": _run_work, "pretrain": _pretrain_work, "transfer": _transfer_work,
    "select": _select_work, "patch_student": _student_work}


def train_samples(task: TaskConfig) -> int | None:
    """The training split's size: the task's ``dry_count`` hook (from its files), else its ``n_train`` option (a
    generated task); None when neither says."""
    factory = TASKS.get(task.name)
    count = getattr(factory, "dry_count", None)
    if count is not None:
        try:
            return count(task.options)
        except TicketlabError:
            return None
    parameter = inspect.signature(factory).parameters.get("n_train")
    return int(task.options.get("n_train", parameter.default)) if parameter is not None else None


# -- measured cost --------------------------------------------------------------------------------------------
def _setting(task: TaskConfig, implied: dict[str, Any], key: str, fallback: Any = None) -> Any:
    """A task option as building the task would resolve it: the config, what the model implies, the default."""
    parameters = inspect.signature(TASKS.get(task.name)).parameters
    if key in task.options:
        return task.options[key]
    if key in parameters and implied.get(key) is not None:
        return implied[key]
    default = parameters[key].default if key in parameters else inspect.Parameter.empty
    return fallback if default is inspect.Parameter.empty or default is None else default


def _head(task: TaskConfig) -> tuple[str, int]:
    """The head kind and class count a task implies (V+L families and dense tasks have their own heads)."""
    dense = getattr(TASKS.get(task.name), "head", None)
    if isinstance(dense, str):  # detection / segmentation: the FPN and its heads cost as much as the backbone
        return dense, int(task.options.get("num_classes", 21 if dense == "segmentation" else 20))
    if not task.name.startswith("vl_"):
        return "linear", 10
    from ticketlab.vl.tasks import FAMILIES

    family = task.options.get("family", "vqa") if task.name == "vl_disk" else task.name.removeprefix("vl_")
    head, _, classes = FAMILIES.get(family, ("answer", "", 2))
    return head, classes or 2


def synthetic_inputs(model: TicketModel, model_cfg: ModelConfig, task: TaskConfig, batch: int) -> tuple[Any, str]:
    """A batch of random inputs of the task's shape for ``model``, and what it is."""
    from ticketlab.vl.features import BOX_DIM
    from ticketlab.vl.model import VLBackbone
    from ticketlab.vl.tasks import MAX_TEXT

    implied, gen, backbone = model_input_defaults(model_cfg.name, model_cfg.options), torch.Generator(), model.backbone
    gen.manual_seed(0)
    size = int(_setting(task, implied, "image_size", 32))
    if isinstance(backbone, VLBackbone):
        groups = {"pair": 2, "choice": 4}.get(model.head_kind, 1)
        regions = int(_setting(task, implied, "max_regions") or (size // int(_setting(task, implied, "patch", 8))) ** 2)
        shape = (batch, groups)
        return {"text_ids": torch.randint(1, backbone.vocab_size, (*shape, MAX_TEXT), generator=gen),
                "image_feats": torch.randn(*shape, regions, backbone.feature_dim, generator=gen),
                "image_boxes": torch.rand(*shape, regions, BOX_DIM, generator=gen),
                "image_mask": torch.ones(*shape, regions, dtype=torch.bool),
                "region_labels": torch.full((*shape, regions), -1)}, \
            f"{groups} x ({MAX_TEXT} tokens + {regions} regions of {backbone.feature_dim} features)"
    if getattr(backbone, "input_name", None) == "input_ids":
        length = int(_setting(task, implied, "max_length", 128))
        ids = torch.randint(1, backbone.model.config.vocab_size, (batch, length), generator=gen)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}, \
            f"{length} tokens"
    return torch.randn(batch, 3, size, size, generator=gen), f"{size}x{size} images"


def synthetic_labels(head: str, classes: int, inputs: Any, batch: int) -> torch.Tensor:
    """Labels of the head's shape: class ids, 4 boxes per image (detection; FCOS assigns them), or a label map."""
    gen = torch.Generator().manual_seed(1)
    if head == "detection":
        size = inputs.shape[-1]
        corner = torch.rand(batch, 4, 2, generator=gen) * size / 2
        extent = corner + torch.rand(batch, 4, 2, generator=gen) * size / 2 + 4
        return torch.cat([torch.randint(0, classes, (batch, 4, 1), generator=gen).float(), corner,
                          extent.clamp(max=size)], 2)
    if head == "segmentation":
        return torch.randint(0, classes, (batch, *inputs.shape[-2:]), generator=gen)
    return torch.zeros(batch, dtype=torch.long)


def seconds_per_step(work: Work, steps: int, warmup: int = 1) -> tuple[float, str, str]:
    """(seconds per optimiser step, the inputs, the device) of ``work``'s model at its batch size: ``warmup`` untimed
    steps, then ``steps`` timed ones of the training loop's ``TrainStep``."""
    from ticketlab.engine import Engine, cpu_safe
    from ticketlab.step import TrainStep

    assert work.model is not None and work.task is not None and work.train is not None
    head, classes = _head(work.task)
    model = build_model(work.model.name, classes, work.model.options, head=head, random_init=True,
                        normalize=work.model.normalize)
    inputs, what = synthetic_inputs(model, work.model, work.task, work.train.batch_size)
    engine = Engine(cpu_safe(work.engine))
    step = TrainStep(model.train(), dataclasses.replace(work.train, divergence_factor=0.0), steps + warmup,
                     engine=engine)
    labels = synthetic_labels(head, classes, inputs, work.train.batch_size)
    cuda = engine.device.type == "cuda"
    device = f"{torch.cuda.get_device_name(engine.device) if cuda else f'CPU, {engine.threads} threads'}, " \
             f"{engine.precision}"
    try:
        for _ in range(warmup):
            step(inputs, labels)
        step.flush()
        torch.cuda.synchronize() if cuda else None
        start = time.perf_counter()
        for _ in range(steps):
            step(inputs, labels)
        step.flush()
        torch.cuda.synchronize() if cuda else None
    except torch.OutOfMemoryError:
        raise TicketlabError(f"dry-run: a training step of {work.model.name} at batch {work.train.batch_size} ran out "
                             f"of memory on {device}; lower the batch size or set engine.grad_accumulation") from None
    return (time.perf_counter() - start) / steps, what, device


def estimate(works: list[Work], steps: int = 3, warmup: int = 1) -> list[str]:
    """Lines: the units of work by kind, each recipe's steps and measured speed, and the estimate in device-hours."""
    if not works:
        return ["dry-run: this command has no job graph, so its units of work are not counted"]
    kinds: dict[str, int] = {}
    groups: dict[str, Work] = {}  # one line per recipe: a study's many transfers of one kind are one line
    for w in works:
        kinds[w.kind] = kinds.get(w.kind, 0) + w.units
        key = json.dumps(to_dict(dataclasses.replace(w, units=0)), default=str)
        groups[key] = dataclasses.replace(w, units=w.units + (groups[key].units if key in groups else 0))
    total = sum(kinds.values())
    lines = [f"dry-run: {total} unit{'s' if total != 1 else ''} of work: "
             + ", ".join(f"{n} x {k}" for k, n in kinds.items())]
    speeds: dict[str, tuple[float, str, str] | str] = {}
    counts: dict[str, int | None] = {}  # a folder's images are counted once, however many recipes train on it
    total_hours, total_steps, unknown = 0.0, 0, []
    for w in groups.values():
        if w.train is None or w.model is None or w.task is None:
            continue
        speed = (w.train.batch_size, w.train.optimizer, w.train.augment)  # what a step's time depends on
        key = json.dumps([to_dict(w.model), to_dict(w.task), speed, to_dict(w.engine)], default=str)
        if key not in speeds:
            try:
                speeds[key] = seconds_per_step(w, steps, warmup)
            except TicketlabError:
                raise
            except Exception as exc:  # noqa: BLE001  a model that cannot take synthetic inputs: cost unknown
                speeds[key] = f"not measured ({type(exc).__name__}: {one_line(exc)[:120]})"
                lines.append(f"  {w.kind}: {w.model.name} on {w.task.name}: {speeds[key]}")
        if isinstance(speeds[key], str):
            continue
        seconds, what, device = speeds[key]  # type: ignore[misc]
        task_key = json.dumps(to_dict(w.task), default=str)
        n = counts[task_key] = counts[task_key] if task_key in counts else train_samples(w.task)
        batch = w.train.batch_size
        if n is None:
            per_k = 1000 / batch * seconds * w.train.epochs * w.units / 3600
            unknown.append(f"{w.units} x {w.kind} ({w.task.name}): unknown n, {per_k:.3g} device-hours per 1k "
                           f"training samples")
            continue
        per_unit = w.train.epochs * math.ceil(n * w.share / batch)
        total_steps += w.units * per_unit
        total_hours += w.units * per_unit * seconds / 3600
        lines.append(f"  {w.units} x {w.kind}: {w.model.name} on {w.task.name}, n_train {round(n * w.share)}, "
                     f"{w.train.epochs} epochs x {math.ceil(n * w.share / batch)} steps of {batch} = {per_unit} "
                     f"steps each; measured {batch / seconds:.1f} samples/s ({seconds:.3g} s/step, {what}) on {device}")
    lines += [f"  {line}" for line in unknown]
    lines.append(f"dry-run: estimate {total_hours:.3g} device-hours for {total_steps} training steps"
                 f"{' + the unknown-n units above' if unknown else ''} ({NOT_COUNTED})")
    return lines
