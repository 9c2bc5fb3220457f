"""One IMP run as jobs for an executor: the ``find`` job kind (a whole run) and the ``round`` job kind (one unit
of a run), and the graph of a run that :func:`experiment_jobs` builds for ``find --executor``, sweeps and studies.

A run without baselines is a chain (round k prunes round k-1's weights): one ``find`` job. A run with baselines
is split: IMP round k waits for round k-1, each baseline branch at round k waits only for IMP round k, so the
baselines of early rounds train beside later IMP rounds; a last ``find`` job (after every unit) writes the
report and the run's status, reading the finished units instead of training them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ticketlab.config import ExperimentConfig, parse_config, to_dict
from ticketlab.engine import is_main_process
from ticketlab.experiment import open_run, run_dir_for, run_experiment, run_round, run_unit_keys
from ticketlab.fileio import ensure_writable_dir, write_json
from ticketlab.jobs import JOB_KINDS, Job, job_resources
from ticketlab.paths import IMP
from ticketlab.pretrain import pretrain_job_for
from ticketlab.store import NoIndex, set_status


@JOB_KINDS.register("find")
def find_job(payload: dict[str, Any], runs_dir: Path, progress: bool, index: bool = True) -> str:
    """One IMP run with its baselines (what ``ticketlab find`` runs)."""
    return str(run_experiment(parse_config(payload["config"]), runs_dir, progress, index=index))


@JOB_KINDS.register("round")
def round_job(payload: dict[str, Any], runs_dir: Path, progress: bool, index: bool = True) -> str:
    """One unit of an IMP run: IMP round k or a baseline branch at round k (the run's ``find`` job indexes it)."""
    config = parse_config(payload["config"])
    branch, k, data = payload["branch"], int(payload["round"]), to_dict(config)
    runs_dir = ensure_writable_dir(Path(runs_dir))
    run = open_run(config, runs_dir)
    store = NoIndex() if is_main_process() else None  # rank 0 writes the folder's status; the driver indexes
    if store is not None and not run.paths.config.is_file():
        run.paths.root.mkdir(exist_ok=True)
        write_json(run.paths.config, data)
    set_status(store, run.paths, data, "running")  # ls shows it, with this pid
    try:
        run_round(run, branch, k, runs_dir, progress)
    except Exception as exc:  # the run's folder says so (its find job, which would, never runs)
        set_status(store, run.paths, data, "failed", f"{branch} round {k}: {type(exc).__name__}: {exc}"[:2000])
        raise
    return str(run.paths.branch(branch, k))


def round_job_id(run_id: str, branch: str, k: int) -> str:
    return f"{run_id}:{branch}:{k}"


def experiment_jobs(cfg: ExperimentConfig, runs_dir: Path, label: str = "") -> list[Job]:
    """The jobs of one IMP run: its pre-training first (when it has one: runs sharing a θp then wait for one
    pre-training instead of racing for it), its units when it has baselines, then the run itself (the last job;
    its id is the run id)."""
    resources = job_resources(cfg.engine.resources)
    before = [pretrain_job_for(cfg, runs_dir)] if cfg.pretrain is not None else []
    run_id = run_dir_for(cfg, runs_dir).name
    payload = {"config": to_dict(cfg)}
    units: list[Job] = []
    for branch, k in run_unit_keys(cfg) if cfg.baselines else []:
        if branch != IMP:  # a baseline reads IMP round k's mask (and round 0)
            waits: tuple[str, ...] = (round_job_id(run_id, IMP, k),)
        elif k > 0:  # IMP round k prunes round k-1's weights
            waits = (round_job_id(run_id, IMP, k - 1),)
        else:
            waits = tuple(j.id for j in before)
        units.append(Job(round_job_id(run_id, branch, k), "round", {**payload, "branch": branch, "round": k},
                         after=waits, resources=resources, label=f"{label} {branch} round {k}".strip()))
    last_after = tuple(j.id for j in units) or tuple(j.id for j in before)
    return [*before, *units, Job(run_id, "find", payload, after=last_after, resources=resources, label=label)]


def merge_jobs(groups: list[list[Job]]) -> list[Job]:
    """Jobs of several groups, each id once (runs sharing a pre-training share its job)."""
    return list({job.id: job for group in groups for job in group}.values())
