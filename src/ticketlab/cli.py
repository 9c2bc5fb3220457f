"""The thin command-line layer over the library. Errors print one line and exit with status 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib import resources
from pathlib import Path

from ticketlab.errors import TicketlabError

DEFAULT_RUNS_DIR = os.environ.get("TICKETLAB_RUNS_DIR", "runs")


def _runs_dir(args: argparse.Namespace) -> Path:
    return Path(args.runs_dir)


def cmd_find(args: argparse.Namespace) -> None:
    from ticketlab.config import load_config, parse_config
    from ticketlab.experiment import load_run, run_experiment
    from ticketlab.fileio import read_json
    from ticketlab.report import results_table

    source = Path(args.config)
    if (source / "config.json").is_file():  # an existing run folder: resume it where it lives
        config, runs_dir = parse_config(read_json(source / "config.json")), source.parent
    else:
        config, runs_dir = load_config(source), _runs_dir(args)
    run_dir = run_experiment(config, runs_dir, progress=not args.quiet)
    if not args.quiet:
        print(results_table(load_run(run_dir)))
        print(f"plot: {run_dir / 'sparsity_accuracy.png'}")
    print(run_dir)


def cmd_pretrain(args: argparse.Namespace) -> None:
    from ticketlab.config import ConfigError, load_config
    from ticketlab.pretrain import pretrain_run_for, run_pretraining

    cfg = load_config(args.config)
    if cfg.pretrain is None:
        raise ConfigError(f"{args.config} has no 'pretrain' section (objective, task, train)")
    print(run_pretraining(pretrain_run_for(cfg), _runs_dir(args), cfg.deterministic, progress=not args.quiet))


def cmd_ls(args: argparse.Namespace) -> None:
    from ticketlab.experiment import STORE_NAME
    from ticketlab.store import ResultStore

    path = _runs_dir(args) / STORE_NAME
    if not path.is_file():
        print(f"no runs yet in {_runs_dir(args)}")
        return
    for row in ResultStore(path).runs():
        dense = f"{row['dense']:.2%}" if row["dense"] is not None else "—"
        top = f"{row['max_sparsity']:.2%}" if row["max_sparsity"] is not None else "—"
        print(f"{row['run_id']}  {row['status']:<7}  {row['model']:<10} {row['task']:<22} {row['method']:<20} "
              f"rounds={row['rounds']}  dense={dense}  max_sparsity={top}")


def _resolve_run(args: argparse.Namespace) -> Path:
    path = Path(args.run)
    if not path.is_dir():
        path = _runs_dir(args) / args.run
    if not (path / "config.json").is_file():
        raise TicketlabError(f"no run {args.run!r}: give a run folder or a run id listed by 'ticketlab ls'")
    return path


def cmd_show(args: argparse.Namespace) -> None:
    from ticketlab.experiment import load_run
    from ticketlab.report import results_table

    run = load_run(_resolve_run(args))
    print(json.dumps(run, indent=2) if args.json else results_table(run))


def cmd_prunable(args: argparse.Namespace) -> None:
    from ticketlab.config import load_config
    from ticketlab.data import TASKS
    from ticketlab.models import build_model
    from ticketlab.prunable import prunable_names

    cfg = load_config(args.config)
    TASKS.get(cfg.task.name)
    model = build_model(cfg.model.name, 2, cfg.model.options, seed=cfg.seed)
    params = dict(model.named_parameters())
    names = prunable_names(model, cfg.prune.prunable)
    for name in names:
        print(f"{name}  {tuple(params[name].shape)}  {params[name].numel():,}")
    prunable = sum(params[n].numel() for n in names)
    total = sum(p.numel() for p in params.values())
    print(f"{len(names)} tensors, {prunable:,} of {total:,} parameters prunable ({prunable / total:.1%})")


def _mask_of(ref: str) -> tuple[str, object]:
    from ticketlab.experiment import round_name
    from ticketlab.masks import Mask
    from ticketlab.transfer import available_rounds, parse_mask_ref

    run, k = parse_mask_ref(ref)
    k = available_rounds(run)[-1] if k is None else k
    return f"{run.name}:{k}", Mask.load(run / "rounds" / round_name(k) / "mask.safetensors")


def _transfer_spec(args: argparse.Namespace, run: Path, seed: int, variant: str = "ticket"):  # noqa: ANN202
    import dataclasses

    from ticketlab.config import TaskConfig, parse_config
    from ticketlab.fileio import read_json
    from ticketlab.transfer import TransferSpec

    recipe = parse_config(read_json(run / "config.json")).train
    overrides = {k: v for k, v in (("epochs", args.epochs), ("lr", args.lr)) if v is not None}
    options = json.loads(args.task_options) if args.task_options else {}
    objective = getattr(args, "objective", "supervised")
    objective_options = json.loads(args.objective_options) if getattr(args, "objective_options", None) else {}
    return TransferSpec(TaskConfig(args.task, options), dataclasses.replace(recipe, **overrides), seed, variant,
                        objective, objective_options)


def cmd_transfer(args: argparse.Namespace) -> None:
    from ticketlab.analysis import mean_std, summarize_transfer
    from ticketlab.data import build_task
    from ticketlab.transfer import available_rounds, parse_mask_ref, transfer_ticket

    run, k = parse_mask_ref(args.mask)
    rounds = available_rounds(run) if k is None else [k]
    seeds = [int(s) for s in args.seeds.split(",")]
    spec0 = _transfer_spec(args, run, seeds[0])
    task = build_task(spec0.target.name, spec0.target.options)
    rows = [{**transfer_ticket(run, r, _transfer_spec(args, run, s), task, progress=not args.quiet).metrics,
             "source": run.name} for r in rounds for s in seeds]
    print(f"transfer of {run.name} to {task.name} (fresh head, θp ⊙ mask, seeds {seeds})")
    for r in rounds:
        accs = [row["test_acc"] for row in rows if row["round"] == r]
        mean, std = mean_std(accs)
        sparsity = next(row["sparsity"] for row in rows if row["round"] == r)
        print(f"round {r:>2}  sparsity {sparsity:7.2%}  test_acc {mean:.2%} ± {std:.2%}")
    if 0 in rounds and len(rounds) > 1:
        summary = summarize_transfer(rows, within_std=args.within_std)
        pair = summary["pairs"][(run.name, task.name)]
        best = {key: "none" if pair[key] is None else f"{pair[key]:.2%}" for key in ("matching", "relaxed")}
        print(f"highest matching sparsity {best['matching']}; highest relaxed {best['relaxed']} "
              f"({summary['criterion']})")


def cmd_analyze(args: argparse.Namespace) -> None:
    from ticketlab.analysis import PERTURBATIONS, mean_std, overlap, perturb
    from ticketlab.data import build_task
    from ticketlab.transfer import parse_mask_ref, transfer_ticket

    if args.analysis in ("overlap", "layers"):
        masks = dict(_mask_of(ref) for ref in args.masks)
        if args.analysis == "overlap":
            names = list(masks)
            pairs = {(a, b): overlap(masks[a], masks[b]) for a in names for b in names}
            print("IoU of kept weights (row / column), shared = fraction of the row's kept weights kept by the column")
            for a in names:
                print(f"{a:<28} " + "  ".join(f"{pairs[a, b]['iou']:.3f}/{pairs[a, b]['shared']:.3f}" for b in names))
            if args.plot:
                import numpy as np

                from ticketlab.study_report import plot_heatmap

                iou = np.array([[100 * pairs[a, b]["iou"] for b in names] for a in names])
                plot_heatmap(iou, names, names, [[f"{v:.1f}" for v in row] for row in iou], "IoU of kept weights (%)",
                             Path(args.plot), cmap="magma")
        else:
            for label, mask in masks.items():
                print(f"{label}: {mask.sparsity():.2%} of the prunable weights")
                for name, value in mask.layer_sparsity().items():
                    print(f"  {name:<48} {value:7.2%}")
            if args.plot:
                from ticketlab.study_report import plot_layer_sparsity

                plot_layer_sparsity(masks, Path(args.plot))
        if args.plot:
            print(f"plot: {args.plot}")
        return
    if not args.task:
        raise TicketlabError("analyze perturb needs --task NAME (the task to fine-tune on)")
    label, ticket = _mask_of(args.masks[0])
    run, _ = parse_mask_ref(args.masks[0])
    k = int(label.rsplit(":", 1)[1])
    seeds = [int(s) for s in args.seeds.split(",")]
    task = build_task(args.task, json.loads(args.task_options) if args.task_options else {})
    print(f"perturbation sensitivity of {label} ({ticket.sparsity():.2%}) on {task.name}, seeds {seeds}")
    for variant in ("ticket", *PERTURBATIONS):
        accs = []
        for seed in seeds:
            mask = None if variant == "ticket" else perturb(ticket, variant, seed)
            accs.append(transfer_ticket(run, k, _transfer_spec(args, run, seed, variant), task, mask=mask,
                                        progress=not args.quiet).metrics["test_acc"])
        mean, std = mean_std(accs)
        print(f"{variant:<11} test_acc {mean:.2%} ± {std:.2%}")


def cmd_study(args: argparse.Namespace) -> None:
    from ticketlab.study import load_study, run_study

    out = run_study(load_study(args.config), _runs_dir(args), progress=not args.quiet)
    print(out / "report.md")


def cmd_vl_study(args: argparse.Namespace) -> None:
    from ticketlab.vl.study import load_vl_study, run_vl_study

    out = run_vl_study(load_vl_study(args.config), _runs_dir(args), progress=not args.quiet)
    print(out / "report.md")


def cmd_select(args: argparse.Namespace) -> None:
    from ticketlab.patches.study import SelectorConfig, load_yaml, run_selection

    path = run_selection(load_yaml(args.config, SelectorConfig), _runs_dir(args), progress=not args.quiet)
    print(f"tickets: {path}\npicture: {path.parent / 'tickets.png'}")


def cmd_patch_study(args: argparse.Namespace) -> None:
    from ticketlab.patches.study import PatchStudyConfig, load_yaml, run_patch_study

    out = run_patch_study(load_yaml(args.config, PatchStudyConfig), _runs_dir(args), progress=not args.quiet)
    print(out / "report.md")


def cmd_demo(args: argparse.Namespace) -> None:
    config = resources.files("ticketlab") / "configs" / "demo.yaml"
    args.config = str(config)
    cmd_find(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ticketlab", description="Lottery tickets in pre-trained models")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func, help_text: str, config: bool = False) -> argparse.ArgumentParser:  # noqa: ANN001
        p = sub.add_parser(name, help=help_text, description=help_text)
        if config:
            p.add_argument("config", help="experiment YAML file (for find: or an existing run folder, to resume it)")
        p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, help="where runs live (default: %(default)s)")
        p.set_defaults(func=func)
        return p

    for name, func, text in (("find", cmd_find, "run or resume IMP and its baselines; prints the run folder"),
                             ("pretrain", cmd_pretrain, "pre-train the backbone of a config's pretrain section")):
        add(name, func, text, config=True).add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    add("demo", cmd_demo, "the demo: pre-train a small CNN on scenes, IMP + baselines, table and plot").add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars")
    add("ls", cmd_ls, "one line per run")
    show = add("show", cmd_show, "a run's results")
    show.add_argument("run", help="run folder or run id")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    add("prunable", cmd_prunable, "list the weights a config will prune", config=True)

    def transfer_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--task", help="target task name (see README)")
        p.add_argument("--task-options", help='JSON options of the task, e.g. \'{"n_train": 300}\'')
        p.add_argument("--seeds", default="0", help="comma-separated seeds (mean ± std is reported)")
        p.add_argument("--epochs", type=int, help="override the source run's epochs")
        p.add_argument("--lr", type=float, help="override the source run's learning rate")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    transfer = add("transfer", cmd_transfer, "fine-tune a run's ticket(s) from its θp on another task")
    transfer.add_argument("--mask", required=True, help="RUN_FOLDER[:ROUND] (all rounds if no round)")
    transfer.add_argument("--within-std", action="store_true", help="matching = within one std of dense")
    transfer.add_argument("--objective", default="supervised", help="fine-tuning loss, e.g. villa (adversarial)")
    transfer.add_argument("--objective-options", help='JSON options of the objective, e.g. \'{"steps": 3}\'')
    transfer_options(transfer)
    analyze = add("analyze", cmd_analyze, "mask overlap, per-layer sparsity, perturbation sensitivity")
    analyze.add_argument("analysis", choices=["overlap", "layers", "perturb"])
    analyze.add_argument("masks", nargs="+", help="RUN_FOLDER[:ROUND] (last round if no round)")
    analyze.add_argument("--plot", help="write a PNG here (overlap, layers)")
    transfer_options(analyze)
    for name, func, text in (
        ("study", cmd_study, "run the CV pre-training ticket study of a study config"),
        ("vl-study", cmd_vl_study, "run the V+L ticket study (pre-training, 7 tasks, universal tickets, VILLA)"),
        ("select", cmd_select, "patch tickets: (fine-tune and) run a token-reducing ViT selector over a dataset"),
        ("patch-study", cmd_patch_study, "ticket vs random-patch ViT students, and weight-level IMP vs re-init"),
    ):
        add(name, func, text, config=True).add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except TicketlabError as exc:
        print(f"ticketlab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ticketlab: interrupted; finished rounds are saved, re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
