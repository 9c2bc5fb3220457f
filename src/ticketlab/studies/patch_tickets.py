"""The patch-ticket study (MISSION.md section 3): selector runs, ticket vs random-patch (RC) students, the
weight-level comparison, and their report.

Selection: ``runs/select-<hash>/`` (fine-tuned selector, ``tickets.safetensors``, ``tickets.png``).
Students: ``runs/patchstudy-<hash>/k_<k>/seed_<s>/<variant>/metrics.json``, written atomically and
never recomputed. Variants: ``ticket`` (the selector's patches), ``rc`` (random patches of the same
count, a fresh draw every step), ``rc_budget`` (RC with epochs scaled by 1/k³, Shen et al.'s
equal-budget variant) and ``position`` (the position-only control: every image gets the ticket of another
image of its split, so the patch positions keep the selector's distribution but say nothing about the image).
Students are scored at their final epoch (no checkpoint is chosen on a metric that is not reported), dense (all
patches) and sparse: ticket and position students on their own test patches, RC on random test patches of the
same count as in the original protocol (score ``test_selector_patches``: RC on the selector's patches).
The selector is cross-fitted by default: two selectors, each fine-tuned on one half of the training images,
pick the tickets of the other half, so no training ticket comes from a selector that saw that image's label.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ticketlab.config import (
    EngineConfig,
    ExperimentConfig,
    ModelConfig,
    TrainConfig,
    config_hash,
    from_dict,
    to_dict,
    validate,
)
from ticketlab.data.base import build_task
from ticketlab.deit_recipe import check_patch_students
from ticketlab.errors import ConfigError
from ticketlab.experiment import run_experiment
from ticketlab.fileio import ensure_writable_dir, read_json, write_json
from ticketlab.jobs import JOB_KINDS, Job, job_resources
from ticketlab.metrics import accuracy
from ticketlab.models.base import build_model, model_input_defaults
from ticketlab.objectives.patches import (
    RandomPatches,
    TicketPatches,
    check_random_draws,
    check_student_tickets,
    student_patches,
)
from ticketlab.patches.tickets import load_tickets, ticket_grid, with_tickets
from ticketlab.paths import CONFIG, METRICS, TICKETS, select_dir, student_dir, study_dir
from ticketlab.progress import progress_bar
from ticketlab.results import Result, has_score, read_result, score
from ticketlab.run_jobs import experiment_jobs, merge_jobs
from ticketlab.runfolders import write_history
from ticketlab.seeds import derive_seed
from ticketlab.studies.base import STUDIES, Study
from ticketlab.studies.common import REPLICATE_STRIDE, replicate_of, replicate_problems, units
from ticketlab.studies.patch_report import write_patch_report
from ticketlab.studies.patch_selection import SelectorConfig, run_selection
from ticketlab.train import train_model
from ticketlab.units import run_unit


@dataclass(frozen=True)
class WeightLevelRun:
    label: str = "vit"
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)


@dataclass(frozen=True)
class PatchStudyConfig:
    selector: SelectorConfig = field(default_factory=SelectorConfig)
    student: ModelConfig = field(default_factory=lambda: ModelConfig(name="vit"))
    train: TrainConfig = field(default_factory=TrainConfig)
    keep_rates: list[float] = field(default_factory=lambda: [0.9, 0.7, 0.5])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    equal_budget_rates: list[float] = field(default_factory=list)  # run rc_budget at these keep rates
    position_control: bool = True  # train the position-only control (tickets shuffled across images)
    weight_level: list[WeightLevelRun] = field(default_factory=list)
    weight_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # each weight-level run once per seed
    engine: EngineConfig = field(default_factory=EngineConfig)
    # independent selectors per keep rate (own seed: θ0 of the fine-tuned head, data order, cross-fit halves);
    # students are keyed by unit = seed + 1000 · replicate and intervals are taken over replicates
    replicates: int = field(default=1, repr=False)


def check_patch_study(cfg: PatchStudyConfig) -> None:
    check_patch_students(cfg.train)
    if problems := replicate_problems(cfg, ["the selector (no finetune: one model as is)"]
                                      if cfg.selector.finetune is None else []):
        raise ConfigError.many(problems)
    for run in cfg.weight_level:
        validate(run.experiment)


def selector_for(cfg: PatchStudyConfig, keep_rate: float, unit: int = 0) -> SelectorConfig:
    """The selector whose tickets ``unit``'s students see: its replicate's (replicate 0 keeps the configured
    seed, so a study without replicates keeps its selectors' hashes)."""
    r = replicate_of(unit)
    seed = cfg.selector.seed if r == 0 else derive_seed(cfg.selector.seed, "replicate", r)
    return dataclasses.replace(cfg.selector, keep_rate=keep_rate, seed=seed)


def train_student(cfg: PatchStudyConfig, keep_rate: float, seed: int, variant: str, tickets_path: Path,
                  folder: Path, progress: bool) -> dict[str, Any]:
    if (folder / METRICS).is_file():
        return read_json(folder / METRICS)
    selector = cfg.selector
    task = build_task(selector.task.name, selector.task.options,
                      model_input_defaults(selector.model.name, selector.model.options))
    model = build_model(cfg.student.name, task.num_classes, cfg.student.options, seed=seed,
                        normalize=cfg.student.normalize)
    num_patches = student_patches(model.backbone, ticket_grid(tickets_path))  # a Swin maps them onto its grid
    tickets, meta = load_tickets(tickets_path, task, num_patches)
    check_student_tickets(model.backbone, tickets, keep_rate)
    ticketed = with_tickets(task, tickets)
    recipe = cfg.train
    if variant in ("ticket", "position"):
        if variant == "position":  # each image gets another image's ticket: positions without content
            generator = torch.Generator().manual_seed(derive_seed(seed, "position_control"))
            tickets = {s: t[torch.randperm(len(t), generator=generator)] for s, t in tickets.items()}
            ticketed = with_tickets(task, tickets)
        objective, train_task = TicketPatches(), ticketed
    else:
        objective, train_task = RandomPatches(meta["kept"], num_patches), task
        check_random_draws(model.backbone, meta["kept"], num_patches, keep_rate)
        if variant == "rc_budget":
            recipe = dataclasses.replace(recipe, epochs=max(1, round(recipe.epochs / keep_rate**3)))

    def train(checkpoint: Path) -> tuple[dict[str, Any], Any]:
        result = train_model(model, train_task, recipe, seed=seed, objective=objective,
                             progress=f"{variant} k={keep_rate} seed {seed}" if progress else None,
                             engine=cfg.engine, checkpoint=checkpoint)
        model.load_state_dict(result.final_state)  # scored at the final epoch: nothing chosen on an unreported metric
        generator = torch.Generator().manual_seed(derive_seed(seed, "random_test_patches"))
        draw = torch.rand(len(task.test), num_patches, generator=generator)
        random_test = dataclasses.replace(task.test, patches=draw.topk(meta["kept"], dim=1).indices.sort(dim=1).values)
        sparse = accuracy(model, ticketed.test) if variant in ("ticket", "position") else accuracy(model, random_test)
        trained = read_result(result.metrics)
        scores = {**trained.scores, "test_kept_patches": sparse,  # the report's scores, at the final epoch
                  "test_all_patches": accuracy(model, dataclasses.replace(task.test, patches=None)),
                  "test_selector_patches": accuracy(model, ticketed.test)}
        selector = meta["selector"]["metrics"]
        metrics = Result(trained.metric, scores, {
            **trained.extras, "variant": variant, "keep_rate": keep_rate, "patches": meta["kept"],
            "num_patches": num_patches, "scored": "final epoch",
            "selector_test_score": score(selector) if has_score(selector, "test") else None}).record()
        return metrics, result.history

    def write(tmp: Path, payload: tuple[dict[str, Any], Any]) -> None:
        write_json(tmp / METRICS, payload[0])
        write_history(tmp, payload[1])

    payload = run_unit(folder, METRICS, train, write, f"student {folder.name}")
    return read_json(folder / METRICS) if payload is None else payload[0]


def student_variants(cfg: PatchStudyConfig, keep_rate: float) -> list[str]:
    return ["ticket", "rc"] + (["rc_budget"] if keep_rate in cfg.equal_budget_rates else []) + \
        (["position"] if cfg.position_control else [])


@JOB_KINDS.register("select")
def select_job(payload: dict[str, Any], runs_dir: Path, progress: bool, index: bool = True) -> str:
    """A patch-ticket selector: (fine-tune and) run it over its dataset, writing every image's ticket."""
    return str(run_selection(from_dict(SelectorConfig, payload["selector"]), runs_dir, progress).parent)


@JOB_KINDS.register("patch_student")
def student_job(payload: dict[str, Any], runs_dir: Path, progress: bool, index: bool = True) -> str:
    """One ViT or Swin student of the patch study: trained on ticket, random (RC) or position-only patches."""
    cfg, k = from_dict(PatchStudyConfig, payload["study"]), float(payload["keep_rate"])
    selector = selector_for(cfg, k, payload["seed"])
    folder = student_dir(study_dir(runs_dir, "patchstudy", config_hash(cfg)), k, payload["seed"], payload["variant"])
    train_student(cfg, k, payload["seed"], payload["variant"], select_dir(runs_dir, config_hash(selector)) / TICKETS,
                  folder, progress)
    return str(folder)


def patch_study_jobs(cfg: PatchStudyConfig, runs_dir: Path) -> list[Job]:
    """Every training of the study as a graph: selectors → students; the weight-level IMP runs beside them."""
    resources = job_resources(cfg.engine.resources)
    groups, study = [], study_dir(runs_dir, "patchstudy", config_hash(cfg)).name
    for k in cfg.keep_rates:
        for r in range(cfg.replicates):
            selector = selector_for(cfg, k, REPLICATE_STRIDE * r)
            selector_id = select_dir(runs_dir, config_hash(selector)).name
            groups.append([Job(selector_id, "select", {"selector": to_dict(selector)}, resources=resources,
                               label=f"selector k={k}" + (f" replicate {r}" if r else ""))])
            groups.append([Job(f"{study}/k{k}/{unit}/{variant}", "patch_student",
                               {"study": to_dict(cfg), "keep_rate": k, "seed": unit, "variant": variant},
                               after=(selector_id,), resources=resources, label=f"{variant} k={k} seed {unit}")
                           for unit in units(cfg) if replicate_of(unit) == r for variant in student_variants(cfg, k)])
    groups += [experiment_jobs(dataclasses.replace(w.experiment, seed=s), runs_dir, f"{w.label} seed {s}")
               for w in cfg.weight_level for s in cfg.weight_seeds]
    return merge_jobs(groups)


def run_patch_study(cfg: PatchStudyConfig, runs_dir: Path, progress: bool = True) -> Path:
    runs_dir = ensure_writable_dir(Path(runs_dir))
    out = study_dir(runs_dir, "patchstudy", config_hash(cfg))
    out.mkdir(exist_ok=True)
    write_json(out / CONFIG, to_dict(cfg))
    rows, ticket_files = [], {}
    for k in cfg.keep_rates:
        tickets = {r: run_selection(selector_for(cfg, k, REPLICATE_STRIDE * r), runs_dir, progress)
                   for r in range(cfg.replicates)}
        ticket_files[k] = tickets[0]  # the figure shows replicate 0's tickets
        jobs = [(unit, v) for unit in units(cfg) for v in student_variants(cfg, k)]
        for unit, variant in progress_bar(jobs, desc=f"students k={k}", disable=not progress):
            folder = student_dir(out, k, unit, variant)
            rows.append(train_student(cfg, k, unit, variant, tickets[replicate_of(unit)], folder, progress))
    weight_runs = {w.label: {s: run_experiment(dataclasses.replace(w.experiment, seed=s), runs_dir, progress)
                             for s in cfg.weight_seeds} for w in cfg.weight_level}
    write_json(out / "students.json", rows)
    write_patch_report(out, cfg, rows, weight_runs, ticket_files)
    return out


STUDIES.register("patch_tickets")(Study(PatchStudyConfig, check_patch_study, run_patch_study,
                                        "data-level tickets: ticket vs random-patch ViT students",
                                        jobs=patch_study_jobs))
