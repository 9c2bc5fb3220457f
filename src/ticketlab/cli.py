"""The thin command-line layer over the library: the parser and the one error boundary (every expected failure
prints one line naming the problem and the fix and exits with status 2). The commands live in ``commands``."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import signal
import sqlite3
import sys
import threading
from typing import NoReturn

from ticketlab.errors import MAX_PROBLEMS, ConfigError, TicketlabError, did_you_mean, one_line
from ticketlab.fileio import storage_error

DEFAULT_RUNS_DIR = os.environ.get("TICKETLAB_RUNS_DIR", "runs")
READ_ONLY = "ticketlab.commands_read"  # commands that only read files: no torch
TRAINING = "ticketlab.commands"
DEPLOY = "ticketlab.commands_deploy"  # export and bench

SMOKE_HELP = "run end to end in seconds on CPU: tiny files in the same formats and a tiny model stand in for the " \
             "config's data and checkpoints (runs go to RUNS_DIR/smoke)"
DRY_RUN_HELP = "train nothing: check every data path and checkpoint the config names (one line per problem, exit " \
               "status 2), then print the units of work and an estimate of device-hours from a short measured " \
               "throughput (with --smoke: of the tiny stand-ins)"


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors that suggest the closest valid name (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        match = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if match:
            choices = re.findall(r"'([^']*)'", match.group(2)) or [c.strip() for c in match.group(2).split(",")]
            message = f"unknown {self._kind()} {match.group(1)!r}{did_you_mean(match.group(1), choices)}; " \
                      f"choose from {', '.join(choices)}"
        self.exit(2, f"ticketlab: error: {message} (see '{self.prog} --help')\n")

    def _kind(self) -> str:
        return "command" if self.prog == "ticketlab" else "choice"


def executor_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="local: one training after another in this process; ray: in parallel on a Ray cluster")
    p.add_argument("--address", help="join a running Ray cluster (auto or HOST:PORT) instead of starting one")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ticketlab", description="Lottery tickets in pre-trained models")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: str, help_text: str, config: bool = False, module: str = TRAINING
            ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if config:
            p.add_argument("config", help="experiment YAML file (for find: or an existing run folder, to resume it)")
        p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, help="where runs live (default: %(default)s)")
        p.set_defaults(func=(module, func))
        return p

    for name, func, text in (("find", "cmd_find", "run or resume IMP and its baselines; prints the run folder"),
                             ("pretrain", "cmd_pretrain", "pre-train the backbone of a config's pretrain section")):
        p = add(name, func, text, config=True)
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        p.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
        p.add_argument("--dry-run", action="store_true", help=DRY_RUN_HELP)
        if name == "find":
            executor_options(p)
    add("demo", "cmd_demo", "the demo: pre-train a small CNN on scenes, IMP + baselines, table and plot").add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars")
    ls = add("ls", "cmd_ls", "one line per run", module=READ_ONLY)
    ls.add_argument("--reindex", action="store_true", help="rebuild the index from the run folders")
    ls.add_argument("--sweep", help="only the runs of this sweep (its id, e.g. sweep-1a2b3c4d5e6f)")
    show = add("show", "cmd_show", "a run's results", module=READ_ONLY)
    show.add_argument("run", help="run folder or run id")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    add("prunable", "cmd_prunable", "list the weights a config will prune", config=True)

    def transfer_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--task", help="target task name (see README)")
        p.add_argument("--task-options", help='JSON options of the task, e.g. \'{"n_train": 300}\'')
        p.add_argument("--seeds", default="0", help="comma-separated seeds (mean ± std is reported)")
        p.add_argument("--epochs", type=int, help="override the source run's epochs")
        p.add_argument("--lr", type=float, help="override the source run's learning rate")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    transfer = add("transfer", "cmd_transfer", "fine-tune a run's ticket(s) from its θp on another task")
    transfer.add_argument("--mask", required=True, help="RUN[:ROUND], RUN a folder or a run id (all rounds if no round)")
    transfer.add_argument("--within-std", action="store_true", help="matching = within one std of dense")
    transfer.add_argument("--objective", default="supervised", help="fine-tuning loss, e.g. villa (adversarial)")
    transfer.add_argument("--objective-options", help='JSON options of the objective, e.g. \'{"steps": 3}\'')
    transfer_options(transfer)
    executor_options(transfer)
    analyze = add("analyze", "cmd_analyze", "mask overlap, per-layer sparsity, perturbation sensitivity")
    analyze.add_argument("analysis", choices=["overlap", "layers", "perturb"])
    analyze.add_argument("masks", nargs="+", help="RUN[:ROUND], RUN a folder or a run id (last round if no round)")
    analyze.add_argument("--plot", help="write a PNG here (overlap, layers)")
    transfer_options(analyze)
    executor_options(analyze)
    study = add("study", "cmd_study",
                "run a whole study: ticketlab study NAME CONFIG.yaml (see 'ticketlab list studies')")
    study.add_argument("study", nargs="+", metavar="NAME CONFIG", help="study name and its config file")
    study.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    study.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    study.add_argument("--dry-run", action="store_true", help=DRY_RUN_HELP)
    executor_options(study)
    for name, func, text in (
        ("vl-study", "cmd_study_alias", "alias of: ticketlab study vl_tickets CONFIG"),
        ("patch-study", "cmd_study_alias", "alias of: ticketlab study patch_tickets CONFIG"),
        ("select", "cmd_select", "patch tickets: (fine-tune and) run a token-reducing ViT selector over a dataset"),
    ):
        p = add(name, func, text, config=True)
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        p.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
        p.add_argument("--dry-run", action="store_true", help=DRY_RUN_HELP)
    export = add("export", "cmd_export", "write a ticket as a state dict, a compressed file or a save_pretrained folder",
                 module=DEPLOY)
    export.add_argument("ticket", help="RUN[:ROUND] (default: the last round)")
    export.add_argument("--out", required=True, help="output folder")
    export.add_argument("--format", help="comma-separated: state_dict, compressed, hf, slim, nm, onnx, pt2 "
                        "(torch.export program: plain torch loads it) (default: state_dict,compressed)")
    export.add_argument("--rewound", action="store_true", help="θp ⊙ mask instead of the trained weights")
    bench = add("bench", "cmd_bench", "parameters, FLOPs, file size, latency and throughput: dense vs the ticket",
                module=DEPLOY)
    bench.add_argument("ticket", help="RUN[:ROUND] (default: the last round)")
    bench.add_argument("--seconds", type=float, default=1.0, help="measuring time per timing")
    bench.add_argument("--threads", type=int, help="CPU threads for the timings (default: torch's)")
    bench.add_argument("--runtime", default="torch", choices=["torch", "onnxruntime"],
                       help="time the ticket in PyTorch (default) or its ONNX export in ONNX Runtime")
    add("verdicts", "cmd_verdicts", "recompute a study report's verdicts from its verdicts.json alone",
        module=READ_ONLY).add_argument("folder", help="a study report folder (holding report.md and verdicts.json)")
    add("verify", "cmd_verify", "check every file of a run (or all runs) against its checksums",
        module=READ_ONLY).add_argument(
        "run", nargs="?", help="run folder or run id (default: every run)")
    sweep = add("sweep", "cmd_sweep", "the product of swept config values (x seeds) as runs, and a summary table",
                config=True)
    sweep.add_argument("--set", action="append", metavar="KEY=V1,V2", help="a dotted config key and its values "
                       "(repeat for a product), e.g. --set train.lr=0.1,0.05")
    sweep.add_argument("--seeds", help="seeds as 0-4 or 0,1,2 (another axis of the product)")
    executor_options(sweep)
    sweep.add_argument("-q", "--quiet", action="store_true", help="no progress")
    sweep.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    sweep.add_argument("--dry-run", action="store_true", help=DRY_RUN_HELP)
    listing = add("list", "cmd_list", "models, tasks, pruning methods, objectives, baselines, studies (the registries)",
                  module=READ_ONLY)
    listing.add_argument("kind", nargs="?", help="only this kind, e.g. models")
    return parser


def print_problems(problems: list[str]) -> None:
    """Every problem of a config on its own line (the first MAX_PROBLEMS, then how many more)."""
    if len(problems) > 1:
        print(f"ticketlab: error: {len(problems)} problems in the config; fix them all, then re-run:", file=sys.stderr)
    for problem in problems[:MAX_PROBLEMS]:
        print(f"ticketlab: error: {one_line(problem)}", file=sys.stderr)
    if len(problems) > MAX_PROBLEMS:
        print(f"ticketlab: error: ... and {len(problems) - MAX_PROBLEMS} more", file=sys.stderr)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt("SIGTERM")


def main(argv: list[str] | None = None) -> int:
    """The one error boundary: every expected failure is one line naming the problem and the fix, status 2."""
    args = build_parser().parse_args(argv)
    module, name = args.func
    previous = signal.signal(signal.SIGTERM, _terminate) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        getattr(importlib.import_module(module), name)(args)
    except ConfigError as exc:
        print_problems(exc.problems)
        return 2
    except TicketlabError as exc:
        print(f"ticketlab: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `ticketlab show RUN | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (OSError, sqlite3.DatabaseError) as exc:
        print(f"ticketlab: error: {storage_error(exc, getattr(exc, 'filename', None) or args.runs_dir)}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        why = "terminated (SIGTERM)" if str(exc) == "SIGTERM" else "interrupted"
        print(f"ticketlab: {why}; finished rounds are saved, re-run the same command to resume", file=sys.stderr)
        return 130 if why == "interrupted" else 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
