"""The patch-ticket study (MISSION.md section 3): selector runs, ticket vs random-patch (RC) students, the
weight-level comparison, and their report.

Selection: ``runs/select-<hash>/`` (fine-tuned selector, ``tickets.safetensors``, ``tickets.png``).
Students: ``runs/patchstudy-<hash>/k_<k>/seed_<s>/<variant>/metrics.json``, written atomically and
never recomputed. Variants: ``ticket`` (the selector's patches), ``rc`` (random patches of the same
count, a fresh draw every step) and ``rc_budget`` (RC with epochs scaled by 1/k³, Shen et al.'s
equal-budget variant). Each is scored dense (all patches) and sparse (the selector's test patches).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ticketlab.analysis import mean_std
from ticketlab.config import (
    EngineConfig,
    ExperimentConfig,
    ModelConfig,
    TaskConfig,
    TrainConfig,
    config_hash,
    to_dict,
    validate,
)
from ticketlab.data.base import build_task
from ticketlab.experiment import run_experiment
from ticketlab.figures import chance, markdown_table, pm, pyplot
from ticketlab.fileio import atomic_dir, ensure_writable_dir, read_json, save_tensors, write_json
from ticketlab.metrics import accuracy
from ticketlab.models.base import build_model, model_input_defaults
from ticketlab.objectives.patches import RandomPatches, TicketPatches
from ticketlab.patches.tickets import find_tickets, load_tickets, save_tickets, ticket_grid_png, with_tickets
from ticketlab.patches.vit import patch_vit
from ticketlab.paths import (
    CONFIG,
    METRICS,
    REPORT,
    TICKETS,
    load_run,
    select_dir,
    student_dir,
    study_dir,
    training_checkpoint,
    write_history,
)
from ticketlab.studies.base import STUDIES, Study
from ticketlab.train import train_model


@dataclass(frozen=True)
class SelectorConfig:
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="vit"))
    task: TaskConfig = field(default_factory=TaskConfig)
    keep_rate: float = 0.7
    reduction_layers: list[int] = field(default_factory=list)  # 0-based; empty = blocks 4, 7, 10 of 12, scaled
    finetune: TrainConfig | None = None  # fine-tune with token reduction first; None = use the model as is
    seed: int = 0
    engine: EngineConfig = field(default_factory=EngineConfig)


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
    weight_level: list[WeightLevelRun] = field(default_factory=list)
    engine: EngineConfig = field(default_factory=EngineConfig)


def check_patch_study(cfg: PatchStudyConfig) -> None:
    for run in cfg.weight_level:
        validate(run.experiment)


def selector_model(cfg: SelectorConfig, num_classes: int) -> Any:
    model = build_model(cfg.model.name, num_classes, cfg.model.options, seed=cfg.seed, normalize=cfg.model.normalize)
    patch_vit(model.backbone).set_token_reduction(cfg.keep_rate, tuple(cfg.reduction_layers) or None)
    return model


def run_selection(cfg: SelectorConfig, runs_dir: Path, progress: bool = True) -> Path:
    """Fine-tune the selector with token reduction (if asked), then write every image's patch ticket."""
    folder = select_dir(ensure_writable_dir(Path(runs_dir)), config_hash(cfg))
    if (folder / TICKETS).is_file():
        return folder / TICKETS
    task = build_task(cfg.task.name, cfg.task.options, model_input_defaults(cfg.model.name, cfg.model.options))
    model = selector_model(cfg, task.num_classes)
    metrics: dict[str, Any] = {}
    if cfg.finetune is not None:
        result = train_model(model, task, cfg.finetune, seed=cfg.seed,
                             progress=f"selector k={cfg.keep_rate}" if progress else None, engine=cfg.engine,
                             checkpoint=training_checkpoint(folder))
        metrics = result.metrics
    tickets = find_tickets(model, task)
    vit = model.backbone.model
    grid = vit.config.image_size // vit.config.patch_size
    with atomic_dir(folder) as tmp:
        write_json(tmp / CONFIG, to_dict(cfg))
        save_tensors(tmp / "selector.safetensors", model.state_dict(), {"metrics": metrics})
        save_tickets(tmp / TICKETS, tickets, task, cfg.keep_rate, grid * grid, grid,
                     {"model": to_dict(cfg.model), "config_hash": config_hash(cfg), "metrics": metrics,
                      "reduction_layers": list(model.backbone.reduction_layers)})
        ticket_grid_png(task.test.x[:16], tickets["test"][:16], grid, tmp / "tickets.png")
    return folder / TICKETS


def train_student(cfg: PatchStudyConfig, keep_rate: float, seed: int, variant: str, tickets_path: Path,
                  folder: Path, progress: bool) -> dict[str, Any]:
    if (folder / METRICS).is_file():
        return read_json(folder / METRICS)
    selector = cfg.selector
    task = build_task(selector.task.name, selector.task.options,
                      model_input_defaults(selector.model.name, selector.model.options))
    model = build_model(cfg.student.name, task.num_classes, cfg.student.options, seed=seed,
                        normalize=cfg.student.normalize)
    vit = model.backbone.model
    num_patches = (vit.config.image_size // vit.config.patch_size) ** 2
    tickets, meta = load_tickets(tickets_path, task, num_patches)
    ticketed = with_tickets(task, tickets)
    recipe = cfg.train
    if variant == "ticket":
        objective, train_task = TicketPatches(), ticketed
    else:
        objective, train_task = RandomPatches(meta["kept"], num_patches), task
        if variant == "rc_budget":
            recipe = dataclasses.replace(recipe, epochs=max(1, round(recipe.epochs / keep_rate**3)))
    result = train_model(model, train_task, recipe, seed=seed, objective=objective,
                         progress=f"{variant} k={keep_rate} seed {seed}" if progress else None, engine=cfg.engine,
                         checkpoint=training_checkpoint(folder))
    metrics = {**result.metrics, "variant": variant, "keep_rate": keep_rate, "patches": meta["kept"],
               "num_patches": num_patches, "dense_test_acc": result.metrics["test_acc"],
               "sparse_test_acc": accuracy(model, ticketed.test)}
    with atomic_dir(folder) as tmp:
        write_json(tmp / METRICS, metrics)
        write_history(tmp, result.history)
    training_checkpoint(folder).unlink(missing_ok=True)
    return metrics


def run_patch_study(cfg: PatchStudyConfig, runs_dir: Path, progress: bool = True) -> Path:
    runs_dir = ensure_writable_dir(Path(runs_dir))
    out = study_dir(runs_dir, "patchstudy", config_hash(cfg))
    out.mkdir(exist_ok=True)
    write_json(out / CONFIG, to_dict(cfg))
    rows, ticket_files = [], {}
    for k in cfg.keep_rates:
        tickets_path = ticket_files[k] = run_selection(dataclasses.replace(cfg.selector, keep_rate=k), runs_dir,
                                                       progress)
        variants = ["ticket", "rc"] + (["rc_budget"] if k in cfg.equal_budget_rates else [])
        jobs = [(seed, v) for seed in cfg.seeds for v in variants]
        for seed, variant in tqdm(jobs, desc=f"students k={k}", disable=not progress):
            folder = student_dir(out, k, seed, variant)
            rows.append(train_student(cfg, k, seed, variant, tickets_path, folder, progress))
    weight_runs = {w.label: run_experiment(w.experiment, runs_dir, progress) for w in cfg.weight_level}
    write_json(out / "students.json", rows)
    write_patch_report(out, cfg, rows, weight_runs, ticket_files)
    return out


def summarize_students(rows: list[dict[str, Any]]) -> dict[tuple[float, str], dict[str, Any]]:
    """Per (keep rate, variant): (mean, std) of dense and sparse test accuracy, and the patch counts."""
    groups: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["keep_rate"], row["variant"]), []).append(row)
    return {key: {"dense": mean_std(r["dense_test_acc"] for r in group),
                  "sparse": mean_std(r["sparse_test_acc"] for r in group),
                  "patches": f"{group[0]['patches']}/{group[0]['num_patches']}",
                  "chance_test": group[0].get("chance_test")}
            for key, group in groups.items()}


def write_patch_report(out: Path, cfg: PatchStudyConfig, rows: list[dict[str, Any]], weight_runs: dict[str, Path],
                       ticket_files: dict[float, Path]) -> Path:
    plt = pyplot()
    summary = summarize_students(rows)
    lines = ["# Data-level tickets: ticket vs random-patch students", "",
             f"Selector `{cfg.selector.model.name}` on `{cfg.selector.task.name}`"
             f" ({'fine-tuned with token reduction' if cfg.selector.finetune else 'used as is'}); "
             f"students `{cfg.student.name}` trained from scratch; seeds {cfg.seeds}. Test accuracy, mean ± std; "
             "dense = all patches at test time, sparse = the selector's patches.", "",
             markdown_table(["keep rate", "patches", "variant", "chance", "dense", "sparse"],
                            [[k, s["patches"], variant, chance(s), pm(*s["dense"]), pm(*s["sparse"])]
                             for (k, variant), s in sorted(summary.items())])]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=130)
    for ax, mode in zip(axes, ("dense", "sparse"), strict=True):
        for variant, marker in (("ticket", "o"), ("rc", "s"), ("rc_budget", "^")):
            points = sorted((k, s[mode]) for (k, v), s in summary.items() if v == variant)
            if points:
                ax.errorbar([k for k, _ in points], [100 * m for _, (m, _) in points],
                            yerr=[100 * sd for _, (_, sd) in points], marker=marker, capsize=3, label=variant)
        ax.set_title(f"{mode} evaluation", fontsize=10)
        ax.set_xlabel("keep rate k")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "students.png")
    plt.close(fig)
    lines += ["", "![students](students.png)", ""]
    for k, path in ticket_files.items():
        lines.append(f"Tickets at k = {k}: `{path.parent / 'tickets.png'}`")
    if weight_runs:
        fig, axes = plt.subplots(1, len(weight_runs), figsize=(4.5 * len(weight_runs), 3.6), dpi=130, squeeze=False)
        lines += ["", "## Weight-level IMP vs random re-initialisation (the study's first claim)", "",
                  "| architecture | sparsity | IMP | random re-init |", "|---|---|---|---|"]
        for ax, (label, run_dir) in zip(axes[0], weight_runs.items(), strict=True):
            run = load_run(run_dir)
            imp = [r for r in run["rounds"] if r["round"] > 0]
            reinit = {r["round"]: r for r in run["baselines"].get("random_reinit", [])}
            ax.plot([100 * r["sparsity"] for r in imp], [100 * r["metrics"]["test_acc"] for r in imp], "o-",
                    label="IMP ticket")
            ax.plot([100 * reinit[r["round"]]["sparsity"] for r in imp if r["round"] in reinit],
                    [100 * reinit[r["round"]]["metrics"]["test_acc"] for r in imp if r["round"] in reinit], "x--",
                    label="random re-init")
            ax.axhline(100 * run["rounds"][0]["metrics"]["test_acc"], color="black", linestyle=":", label="dense")
            ax.set_title(label, fontsize=10)
            ax.set_xlabel("sparsity (%)")
            ax.grid(alpha=0.3)
            for r in imp:
                other = reinit.get(r["round"])
                other_acc = f"{100 * other['metrics']['test_acc']:.1f}" if other else "—"
                lines.append(f"| {label} | {100 * r['sparsity']:.1f} % | {100 * r['metrics']['test_acc']:.1f} | "
                             f"{other_acc} |")
        axes[0][0].set_ylabel("test accuracy (%)")
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "weight_level.png")
        plt.close(fig)
        lines += ["", "![weight level](weight_level.png)", ""]
    (out / REPORT).write_text("\n".join(lines) + "\n")
    return out / REPORT


STUDIES.register("patch_tickets")(Study(PatchStudyConfig, check_patch_study, run_patch_study,
                                        "data-level tickets: ticket vs random-patch ViT students"))
