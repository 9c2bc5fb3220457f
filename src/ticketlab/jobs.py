"""A study or sweep as a graph of jobs, and the registry of job kinds (a leaf: it imports no plug-in).

A job is plain data — a kind, a JSON payload, the jobs it waits for, the resources it needs — so any executor
(this process, or Ray workers on other machines) can run it: the worker looks the kind up and calls it with the
payload and the runs folder. Every job is content-addressed and resumable underneath (its units skip what is
finished and resume from mid-round checkpoints), so re-running a graph only computes what is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ticketlab.errors import ConfigError
from ticketlab.registry import Registry


def job_resources(requested: dict[str, float] | None = None) -> dict[str, float]:
    """What a job asks an executor for: one CPU and no GPU unless ``engine.resources`` says otherwise."""
    return {"num_cpus": 1, "num_gpus": 0, **(requested or {})}


JobRunner = Callable[[dict[str, Any], Path, bool, bool], str]  # (payload, runs_dir, progress, index) -> folder
JOB_KINDS: Registry[JobRunner] = Registry("job kind")


@dataclass(frozen=True)
class Job:
    id: str  # unique in its graph; content-addressed (e.g. the run id)
    kind: str
    payload: dict[str, Any]
    after: tuple[str, ...] = ()  # ids of the jobs whose results this one reads
    resources: dict[str, float] = field(default_factory=job_resources)
    label: str = ""


def check_graph(jobs: list[Job]) -> list[Job]:
    """The jobs in an order where every job comes after the jobs it waits for; one-line errors for unknown
    dependencies and cycles (checked before anything runs)."""
    by_id = {job.id: job for job in jobs}
    if len(by_id) != len(jobs):
        raise ConfigError("two jobs of the graph share an id; make every swept run differ (duplicate --set values?)")
    for job in jobs:
        JOB_KINDS.get(job.kind)
        missing = [a for a in job.after if a not in by_id]
        if missing:
            raise ConfigError(f"job {job.id} waits for {missing}, which are not in the graph")
    ordered: list[Job] = []
    state: dict[str, int] = {}

    def visit(job: Job) -> None:
        if state.get(job.id) == 2:
            return
        if state.get(job.id) == 1:
            raise ConfigError(f"the job graph has a cycle through {job.id}")
        state[job.id] = 1
        for dependency in job.after:
            visit(by_id[dependency])
        state[job.id] = 2
        ordered.append(job)

    for job in jobs:
        visit(job)
    return ordered


def execute_job(job: Job, runs_dir: str | Path, progress: bool = False, index: bool = True) -> str:
    """Run one job in this process (what a worker calls, with ``index=False``: the driver indexes); returns its
    result folder."""
    return JOB_KINDS.get(job.kind)(job.payload, Path(runs_dir), progress, index)
