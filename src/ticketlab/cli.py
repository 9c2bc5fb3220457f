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
    from ticketlab.pretrain import PretrainRun, run_pretraining

    cfg = load_config(args.config)
    if cfg.pretrain is None:
        raise ConfigError(f"{args.config} has no 'pretrain' section (objective, task, train)")
    print(run_pretraining(PretrainRun(cfg.model, cfg.pretrain, cfg.seed), _runs_dir(args), cfg.deterministic,
                          progress=not args.quiet))


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
