"""The commands of the CLI that train, load models or export: each resolves its arguments, calls the library
and prints (``cli.py`` parses arguments and turns failures into one-line errors; ``commands_read`` holds the
commands that only read files, which never import torch)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from ticketlab.analysis import overlap_matrix, sensitivity_table, summarize_transfer
from ticketlab.commands_read import runs_dir_of as _runs_dir
from ticketlab.comparison import compare_structures
from ticketlab.config import ConfigError, ExperimentConfig, TaskConfig, from_dict, load_config, parse_config, read_yaml
from ticketlab.data import TASKS
from ticketlab.engine import is_main_process, launcher_note
from ticketlab.errors import TicketlabError
from ticketlab.experiment import run_dir_for, run_experiment
from ticketlab.figures import pct, plot_layer_sparsity, plot_overlap
from ticketlab.fileio import read_json
from ticketlab.jobs import Job
from ticketlab.masks import Mask
from ticketlab.models import build_model
from ticketlab.objectives import OBJECTIVES
from ticketlab.paths import IMP, RunPaths, is_run_dir, parse_ref
from ticketlab.pretrain import pretrain_job_for, pretrain_run_for, run_pretraining
from ticketlab.prunable import prunable_names
from ticketlab.report import results_table
from ticketlab.runfolders import load_run
from ticketlab.smoke import smoke_config
from ticketlab.studies import STUDIES, run_study, study_config
from ticketlab.studies.patch_tickets import SelectorConfig, run_selection
from ticketlab.transfer import (
    TransferSpec,
    perturbation_sensitivity,
    perturbation_specs,
    target_task,
    transfer_job_for,
    transfer_ticket,
)


def _config_data(args: argparse.Namespace, path: str) -> dict:
    """The YAML of ``path``; with ``--smoke``, with tiny stand-ins for its data and checkpoints."""
    data = read_yaml(path)
    return smoke_config(data, _runs_dir(args) / "smoke-inputs") if getattr(args, "smoke", False) else data


def _dry_run(args: argparse.Namespace, data: dict, jobs: Callable[[], list[Job]]) -> None:
    """``--dry-run``: check the inputs, then print the units of work and an estimate; nothing trains."""
    from ticketlab.dry_run import dry_run

    dry_run(data, jobs, tiny=getattr(args, "smoke", False))


def cmd_find(args: argparse.Namespace) -> None:
    if (note := launcher_note()) is not None:
        print(note, file=sys.stderr)
    source = Path(args.config)
    if getattr(args, "dry_run", False):
        from ticketlab.run_jobs import experiment_jobs

        data = read_json(RunPaths(source).config) if is_run_dir(source) else _config_data(args, args.config)
        return _dry_run(args, data, lambda: experiment_jobs(parse_config(data), _runs_dir(args)))
    if is_run_dir(source):  # an existing run folder: resume it where it lives
        config, runs_dir = parse_config(read_json(RunPaths(source).config)), source.parent
    else:
        config, runs_dir = parse_config(_config_data(args, args.config)), _runs_dir(args)
    executor = getattr(args, "executor", "local")
    if executor != "local":  # the run's units as a graph: baselines train beside later IMP rounds
        from ticketlab.executors import run_graph
        from ticketlab.run_jobs import experiment_jobs

        run_graph(experiment_jobs(config, runs_dir), runs_dir, executor, progress=not args.quiet,
                  address=args.address).raise_if_unfinished("units of the run")
    run_dir = run_experiment(config, runs_dir, progress=not args.quiet)  # after a graph: reads finished units
    if not is_main_process():
        return  # under several processes only rank 0 reports
    if not args.quiet:
        print(results_table(load_run(run_dir)))
        print(f"plot: {run_dir / 'sparsity_accuracy.png'}")
    print(run_dir)


def cmd_pretrain(args: argparse.Namespace) -> None:
    data = _config_data(args, args.config)

    def with_pretraining() -> ExperimentConfig:
        cfg = parse_config(data)
        if cfg.pretrain is None:
            raise ConfigError(f"{args.config} has no 'pretrain' section (objective, task, train)")
        return cfg

    if getattr(args, "dry_run", False):
        return _dry_run(args, data, lambda: [pretrain_job_for(with_pretraining(), _runs_dir(args))])
    cfg = with_pretraining()
    print(run_pretraining(pretrain_run_for(cfg), _runs_dir(args), cfg.deterministic, progress=not args.quiet))


def cmd_prunable(args: argparse.Namespace) -> None:
    cfg = load_config(args.config)
    TASKS.get(cfg.task.name)
    model = build_model(cfg.model.name, 2, cfg.model.options, seed=cfg.seed, normalize=cfg.model.normalize)
    params = dict(model.named_parameters())
    names = prunable_names(model, cfg.prune.prunable)
    for name in names:
        print(f"{name}  {tuple(params[name].shape)}  {params[name].numel():,}")
    prunable = sum(params[n].numel() for n in names)
    total = sum(p.numel() for p in params.values())
    print(f"{len(names)} tensors, {prunable:,} of {total:,} parameters prunable ({prunable / total:.1%})")


def _mask_of(ref: str, runs_dir: Path) -> tuple[str, Path, int, Mask]:
    """``RUN[:K]`` -> (label, run folder, round, mask); the last finished round if no round is given."""
    run, k = parse_ref(ref, runs_dir)
    finished = RunPaths(run).finished_rounds()
    if not finished:
        raise TicketlabError(f"run {run.name} has no finished round yet; run 'ticketlab find {run}' first")
    k = finished[-1] if k is None else k
    if k not in finished:
        raise TicketlabError(f"run {run.name} has no finished round {k}; finished: {finished}")
    return f"{run.name}:{k}", run, k, Mask.load(RunPaths(run).mask(IMP, k))


def _transfer_spec(args: argparse.Namespace, run: Path, seed: int, variant: str = "ticket") -> TransferSpec:
    recipe = parse_config(read_json(RunPaths(run).config)).train
    overrides = {k: v for k, v in (("epochs", args.epochs), ("lr", args.lr)) if v is not None}
    if not args.task:
        raise ConfigError(f"{args.command} needs --task NAME (the task to fine-tune on; see 'ticketlab list tasks')")
    options = _json_option(args.task_options, "--task-options")
    TASKS.check(args.task, options, "--task-options")
    objective = getattr(args, "objective", "supervised")
    objective_options = _json_option(getattr(args, "objective_options", None), "--objective-options")
    OBJECTIVES.check(objective, objective_options, "--objective-options")
    return TransferSpec(TaskConfig(args.task, options), dataclasses.replace(recipe, **overrides), seed, variant,
                        objective, objective_options)


def cmd_transfer(args: argparse.Namespace) -> None:
    run, k = parse_ref(args.mask, _runs_dir(args))
    rounds = RunPaths(run).finished_rounds() if k is None else [k]
    seeds = _seeds(args)
    spec0 = _transfer_spec(args, run, seeds[0])
    task = target_task(run, spec0)
    if args.executor != "local":  # every fine-tune as a job first; the rows below then read finished results
        from ticketlab.executors import run_graph

        jobs = [transfer_job_for(str(run.resolve()), r, _transfer_spec(args, run, s), finished=True)
                for r in rounds for s in seeds]
        run_graph(jobs, _runs_dir(args), args.executor, progress=not args.quiet,
                  address=args.address).raise_if_unfinished("fine-tunes")
    rows = [{**transfer_ticket(run, r, _transfer_spec(args, run, s), task, progress=not args.quiet).metrics,
             "source": run.name} for r in rounds for s in seeds]
    if not is_main_process():
        return  # under several processes only rank 0 reports
    summary = summarize_transfer(rows, within_std=args.within_std)
    print(f"transfer of {run.name} to {task.name} (fresh head, θp ⊙ mask, seeds {seeds})")
    for r in rounds:
        cell = summary["cells"][(run.name, spec0.target.name, r)]
        print(f"round {r:>2}  sparsity {cell['sparsity']:7.2%}  test {cell['mean']:.2%} ± {cell['std']:.2%}")
    if 0 in rounds and len(rounds) > 1:
        pair = summary["pairs"][(run.name, spec0.target.name)]
        print(f"highest matching sparsity {pct(pair['matching'])}; highest relaxed {pct(pair['relaxed'])} "
              f"({summary['criterion']})")


def cmd_analyze(args: argparse.Namespace) -> None:
    refs = [_mask_of(ref, _runs_dir(args)) for ref in args.masks]
    masks = {label: mask for label, _, _, mask in refs}
    if args.analysis == "overlap":
        names = list(masks)
        pairs = overlap_matrix(masks)
        print("IoU of kept weights / shared = fraction of the row's kept weights kept by the column (chance: two "
              "random masks with the same per-layer keep counts)")
        for a in names:
            print(f"{a:<28} " + "  ".join(f"{pairs[a, b]['iou']:.3f}/{pairs[a, b]['shared']:.3f} "
                                          f"(chance {pairs[a, b]['chance_iou']:.3f}/{pairs[a, b]['chance_shared']:.3f})"
                                          for b in names))
        if args.plot:
            plot_overlap(pairs, names, "IoU of kept weights (%)", Path(args.plot))
    elif args.analysis == "layers":
        for label, mask in masks.items():
            print(f"{label}: {mask.sparsity():.2%} of the prunable weights")
            for name, value in mask.layer_sparsity().items():
                print(f"  {name:<48} {value:7.2%}")
        if args.plot:
            plot_layer_sparsity(masks, Path(args.plot))
    else:
        label, run, k, ticket = refs[0]
        seeds = _seeds(args)
        spec = _transfer_spec(args, run, seeds[0])
        task = target_task(run, spec)
        print(f"perturbation sensitivity of {label} ({ticket.sparsity():.2%}) on {task.name}, seeds {seeds}")
        if args.executor != "local":  # every variant × seed fine-tune as a job; the rows then read finished results
            from ticketlab.executors import run_graph

            jobs = [transfer_job_for(str(run.resolve()), k, s, finished=True) for s in perturbation_specs(spec, seeds)]
            run_graph(jobs, _runs_dir(args), args.executor, progress=not args.quiet,
                      address=args.address).raise_if_unfinished("perturbation fine-tunes")
        rows = perturbation_sensitivity(run, k, spec, task, seeds, source=label, progress=not args.quiet)
        for variant, cell in sensitivity_table(rows)[label].items():
            print(f"{variant:<11} sparsity {cell['sparsity']:7.2%}  test {cell['mean']:.2%} ± {cell['std']:.2%}")
        return
    if args.plot:
        print(f"plot: {args.plot}")


def cmd_study(args: argparse.Namespace) -> None:
    if len(args.study) == 1:  # the old form `ticketlab study CONFIG`: the CV pre-training study
        name, config = "cv_pretraining", args.study[0]
    elif len(args.study) == 2:
        name, config = args.study
    else:
        raise TicketlabError(f"usage: ticketlab study NAME CONFIG.yaml (studies: {', '.join(STUDIES.names())})")
    data = _config_data(args, config)
    if getattr(args, "dry_run", False):
        def study_jobs() -> list[Job]:
            cfg, study = study_config(name, data), STUDIES.get(name)
            return study.jobs(cfg, _runs_dir(args)) if study.jobs is not None else []

        return _dry_run(args, data, study_jobs)
    out = run_study(name, study_config(name, data), _runs_dir(args), progress=not args.quiet,
                    executor=getattr(args, "executor", "local"), address=getattr(args, "address", None))
    if is_main_process():
        print(out / "report.md")


def cmd_study_alias(args: argparse.Namespace) -> None:
    """``vl-study CONFIG`` and ``patch-study CONFIG``: the old commands, kept as aliases of ``study NAME CONFIG``."""
    args.study = [{"vl-study": "vl_tickets", "patch-study": "patch_tickets"}[args.command], args.config]
    cmd_study(args)


def cmd_select(args: argparse.Namespace) -> None:
    data = _config_data(args, args.config)
    if getattr(args, "dry_run", False):  # one selector job, as a patch study would run it
        return _dry_run(args, data, lambda: [Job("select", "select", {
            "selector": dataclasses.asdict(from_dict(SelectorConfig, data))})])
    path = run_selection(from_dict(SelectorConfig, data), _runs_dir(args),
                         progress=not args.quiet)
    print(f"tickets: {path}\npicture: {path.parent / 'tickets.png'}")


def cmd_sweep(args: argparse.Namespace) -> None:
    """The product of ``--set`` values (× ``--seeds``) as runs on an executor, then the summary table."""
    from ticketlab.executors import run_graph
    from ticketlab.sweep import parse_seeds, parse_sets, sweep_id, sweep_jobs, sweep_points, write_summary, write_sweep

    base, sets, seeds = _config_data(args, args.config), parse_sets(args.set or []), parse_seeds(args.seeds)
    if getattr(args, "dry_run", False):
        return _dry_run(args, base, lambda: sweep_jobs(sweep_points(base, sets, seeds), _runs_dir(args)))
    points = sweep_points(base, sets, seeds)
    runs_dir = _runs_dir(args)
    jobs = sweep_jobs(points, runs_dir)
    folder = write_sweep(runs_dir, sweep_id(base, sets, seeds), base, sets, seeds, points)
    print(f"{folder.name}: {len(points)} run(s) on the {args.executor} executor ({len(jobs)} jobs)")
    summary = run_graph(jobs, runs_dir, args.executor, progress=not args.quiet, address=args.address)
    markdown, table = write_summary(folder)
    print(markdown.read_text(encoding="utf-8"))
    print("\n".join(summary.lines()))
    print(f"summary: {markdown} and {table}")
    summary.raise_if_unfinished("runs")


def _seeds(args: argparse.Namespace) -> list[int]:
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers like 0,1,2, got {args.seeds!r}") from None
    return seeds


def _json_option(value: str | None, flag: str) -> dict:
    if not value:
        return {}
    try:
        data = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{flag} is not valid JSON ({exc.msg}); write it like '{{\"n_train\": 300}}'") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{flag} must be a JSON object of options, got {value!r}")
    return data


def cmd_demo(args: argparse.Namespace) -> None:
    """The demo run, then its tickets of three kinds at 50 % (unstructured, structured, 2:4) side by side."""
    args.config = str(resources.files("ticketlab") / "configs" / "demo.yaml")
    cmd_find(args)
    if not is_main_process():
        return
    config = load_config(args.config)
    _, table = compare_structures(config, _runs_dir(args), progress=not args.quiet)
    run_dir = run_dir_for(config, _runs_dir(args))
    results = RunPaths(run_dir).results
    results.write_text(results.read_text(encoding="utf-8") + "\n## Unstructured vs structured vs 2:4 tickets at 50 %"
                       "\n\n" + table, encoding="utf-8")
    print(f"\nunstructured vs structured vs 2:4 tickets at matched sparsity:\n{table}"
          f"report: {results}")
