"""The CLI commands that only read files — ``ls``, ``show``, ``verify``, ``list`` — kept free of torch so they
answer at once (``cli.py`` imports this module for them and ``commands`` only for commands that train, load
models or export)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

from ticketlab.errors import ConfigError, TicketlabError, did_you_mean
from ticketlab.fileio import read_json, write_json
from ticketlab.paths import is_run_dir, resolve_run
from ticketlab.report import results_table
from ticketlab.runfolders import load_run, verify_run
from ticketlab.store import ResultStore


def runs_dir_of(args: argparse.Namespace) -> Path:
    """Where runs go; a ``--smoke`` run keeps to ``RUNS/smoke`` so it never mixes with real results."""
    return Path(args.runs_dir) / "smoke" if getattr(args, "smoke", False) else Path(args.runs_dir)


def cmd_ls(args: argparse.Namespace) -> None:
    runs = runs_dir_of(args)
    if not runs.is_dir():
        print(f"no runs yet in {runs}")
        return
    store = ResultStore(runs)
    if args.reindex:
        print(f"index rebuilt from the run folders: {store.reindex()} runs")
    rows = store.runs()
    if args.sweep:
        rows = [row for row in rows if row["run_id"] in sweep_runs(runs, args.sweep)]
    for row in rows:
        dense = f"{row['dense']:.2%}" if row["dense"] is not None else "—"
        top = f"{row['max_sparsity']:.2%}" if row["max_sparsity"] is not None else "—"
        error = f"  error: {row['error']}" if row["status"] == "failed" and row["error"] else ""
        print(f"{row['run_id']}  {row['status']:<11}  {row['model']:<10} {row['task']:<22} {row['method']:<20} "
              f"rounds={row['rounds']}  dense={dense}  max_sparsity={top}{error}")


def sweep_runs(runs: Path, sweep: str) -> set[str]:
    """The run ids of a sweep (its folder in the runs folder)."""
    path = runs / sweep / "sweep.json"
    if not path.is_file():
        known = sorted(p.name for p in runs.glob("sweep-*") if (p / "sweep.json").is_file())
        raise TicketlabError(f"no sweep {sweep!r} in {runs}{did_you_mean(sweep, known)}; sweeps: "
                             f"{', '.join(known) or '(none)'}")
    return {entry["run_id"] for entry in read_json(path)["runs"]}


def cmd_show(args: argparse.Namespace) -> None:
    run = load_run(resolve_run(args.run, runs_dir_of(args)))
    print(json.dumps(run, indent=2) if args.json else results_table(run))


def cmd_verdicts(args: argparse.Namespace) -> None:
    """Recompute every verdict of a study report from its ``verdicts.json`` alone; differences are an error."""
    from ticketlab.studies.verdict_file import check_verdicts

    rows, problems = check_verdicts(Path(args.folder))
    for claim, verdict in rows:
        print(f"{verdict:<13} {claim}")
    if problems:
        raise TicketlabError(f"{len(problems)} verdict(s) differ from the recorded numbers: {'; '.join(problems)}")
    print(f"{len(rows)} verdicts re-derived from {Path(args.folder) / 'verdicts.json'}; all match the report")


def cmd_verify(args: argparse.Namespace) -> None:
    """Check every finished folder of a run (or of every run) against its manifest and checksums."""
    runs_dir = runs_dir_of(args)
    runs = [resolve_run(args.run, runs_dir)] if args.run else \
        sorted(p for p in runs_dir.iterdir() if is_run_dir(p)) if runs_dir.is_dir() else []
    bad = []
    for run in runs:
        problems = verify_run(run)
        print(f"{run.name}: " + ("ok" if not problems else f"{len(problems)} problem(s)"))
        for problem in problems:
            print(f"  {problem}")
        bad += problems
    if bad:
        raise TicketlabError(f"{len(bad)} problem(s) found; delete the folders named above and re-run "
                             "'ticketlab find' on their runs to recompute them")


def cmd_list(args: argparse.Namespace) -> None:
    """Everything that can be named in a config, with a one-line description."""
    entries = catalog()
    kinds = [title for title in entries if not args.kind or title.startswith(args.kind.rstrip("s"))
             or args.kind in title]
    if not kinds:
        raise ConfigError(f"unknown kind {args.kind!r}{did_you_mean(args.kind, entries)}; kinds: "
                          f"{', '.join(entries)}")
    for title in kinds:
        print(f"{title}:")
        print("".join(f"  {name:<22} {text}\n" for name, text in entries[title]), end="")


def catalog() -> dict[str, list[list[str]]]:
    """The registries' catalog: live when the plug-ins are already loaded in this process (a library user's own
    plug-ins included), else from a cache keyed by the package's source files, so ``list`` needs no torch."""
    if "ticketlab.plugins" in sys.modules:
        return _live_catalog()
    path = _cache_dir() / f"catalog-{_source_key()}.json"
    if path.is_file():
        try:
            data = read_json(path)
            if isinstance(data, dict):
                return data
        except TicketlabError:
            pass  # a damaged cache is rebuilt
    data = _live_catalog()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, data)
    except (OSError, TicketlabError):
        pass  # no writable cache: the next `list` imports the plug-ins again
    return data


def _live_catalog() -> dict[str, list[list[str]]]:
    from ticketlab.plugins import catalog as live

    return {title: [[name, text] for name, text in rows] for title, rows in live().items()}


def _cache_dir() -> Path:
    base = os.environ.get("TICKETLAB_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ticketlab")
    return Path(base)


def _source_key() -> str:
    """Changes whenever any module of the package changes (path, size, modification time)."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
