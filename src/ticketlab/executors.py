"""Executors run a graph of jobs (``jobs.py``): ``local`` in this process, in dependency order (today's order and
results), or ``ray`` on a Ray cluster — a local one started and stopped here, or a running one joined with
``--address``. Workers write only their jobs' folders on the shared runs folder; the driver alone writes the
SQLite index (from those folders) and shows one progress view of all jobs.

Faults: a worker killed mid-job is retried by Ray and resumes from the job's mid-round checkpoint; a job that
fails for a reason retrying cannot fix (bad config, divergence: a ``TicketlabError``) fails once, with its
one-line error, and the jobs that do not depend on it go on; the summary lists the failed ones.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ticketlab.errors import ConfigError, TicketlabError, one_line
from ticketlab.fileio import ensure_writable_dir
from ticketlab.jobs import JOB_KINDS, Job, check_graph, execute_job, job_resources
from ticketlab.progress import progress_bar
from ticketlab.store import ResultStore

EXECUTORS = ("local", "ray")
RAY_RETRIES = 3  # restarts of a job whose worker died (not of a job that raised an error)


@dataclass
class Summary:
    """What happened to every job of a graph."""

    results: dict[str, str] = field(default_factory=dict)  # job id -> result folder
    failed: dict[str, str] = field(default_factory=dict)  # job id -> one-line error
    skipped: dict[str, str] = field(default_factory=dict)  # job id -> the failed job it waited for
    seconds: float = 0.0
    job_seconds: dict[str, float] = field(default_factory=dict)  # job id -> seconds its worker spent on it

    def lines(self) -> list[str]:
        out = [f"{len(self.results)} done, {len(self.failed)} failed, {len(self.skipped)} skipped "
               f"in {self.seconds:.1f} s (jobs)"]
        out += [f"failed  {job}: {error}" for job, error in self.failed.items()]
        if self.skipped:
            shown = ", ".join(list(self.skipped)[:5]) + (", ..." if len(self.skipped) > 5 else "")
            out.append(f"skipped {len(self.skipped)} job(s) that wait for failed ones: {shown}")
        return out

    def record(self, job_id: str, outcome: dict[str, Any]) -> None:
        """A job's outcome (``_remote_job``'s, on any executor): its folder and time, or its one-line error."""
        if "result" in outcome:
            self.results[job_id] = outcome["result"]
            self.job_seconds[job_id] = outcome["seconds"]
        else:
            self.failed[job_id] = outcome["error"]

    def raise_if_unfinished(self, what: str) -> None:
        """The one rule for a graph that did not finish: a one-line error (how many of ``what``, the first
        failures); finished jobs are kept, so re-running the same command resumes."""
        unfinished = len(self.failed) + len(self.skipped)
        if unfinished:
            raise TicketlabError(f"{unfinished} of the {unfinished + len(self.results)} jobs of the {what} did not "
                                 f"finish ({'; '.join(self.lines()[1:4])}); fix the cause and re-run the same "
                                 "command: finished ones are kept")


class View:
    """One progress view for many jobs: done / running / failed / queued, rate and ETA (plain lines in logs)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = progress_bar(total=total, desc="jobs", unit="job", disable=not enabled)
        self.total = total

    def update(self, summary: Summary, running: int, finished: int = 0) -> None:
        finished_all = len(summary.results) + len(summary.failed) + len(summary.skipped)
        self.bar.set_postfix(done=len(summary.results), running=running, failed=len(summary.failed),
                             queued=self.total - finished_all - running)
        self.bar.update(finished)

    def close(self) -> None:
        self.bar.close()


def _one_line(exc: BaseException) -> str:
    return one_line(exc if isinstance(exc, TicketlabError) else f"{type(exc).__name__}: {exc}")


def _waits_for_failed(job: Job, summary: Summary) -> str | None:
    return next((a for a in job.after if a in summary.failed or a in summary.skipped), None)


def run_local(jobs: list[Job], runs_dir: Path, progress: bool = True) -> Summary:
    """Every job in this process, in dependency order; failures are recorded and their dependents skipped."""
    ordered, summary, started = check_graph(jobs), Summary(), time.perf_counter()
    view = View(len(ordered), progress)
    try:
        for job in ordered:
            cause = _waits_for_failed(job, summary)
            if cause is not None:
                summary.skipped[job.id] = cause
                view.update(summary, 0, 1)
                continue
            view.update(summary, 1)
            summary.record(job.id, _remote_job(job, str(runs_dir), index=True))  # the same error rule as on Ray
            view.update(summary, 0, 1)
    finally:
        view.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _remote_job(job: Job, runs_dir: str, index: bool = False) -> dict[str, Any]:
    """What a Ray worker runs: the job, with errors retrying cannot fix returned as values (never retried).
    A crash (an out-of-memory error, a bug) fails its job only: the summary names it, the graph goes on."""
    started = time.perf_counter()
    try:
        return {"result": execute_job(job, runs_dir, progress=False, index=index),
                "seconds": time.perf_counter() - started}
    except TicketlabError as exc:
        return {"error": _one_line(exc)}
    except Exception as exc:  # noqa: BLE001  a bug: reported with where it happened, not retried
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return {"error": f"{_one_line(exc)} (at {Path(where.filename).name}:{where.lineno})"}


def warm_worker() -> None:
    """Run by every worker of a Ray that ticketlab starts, as it starts: torch and the plug-ins are imported while
    the driver still probes the cluster, not when the first job arrives."""
    from ticketlab.figures import pyplot

    JOB_KINDS.names()  # the first registry lookup imports every plug-in (and torch)

    pyplot()  # every run writes its plot


def _worker_pid() -> int:
    return os.getpid()


def warm_pool(ray: Any, jobs: int) -> None:
    """Start every worker the graph can use at once, side by side, each importing torch and the plug-ins
    (``warm_worker``) — started lazily they would start one after another as jobs arrive."""
    slots = min(int(ray.cluster_resources().get("CPU", 1)), jobs)
    ray.get([ray.remote(_worker_pid).options(num_cpus=1).remote() for _ in range(slots)])


def _read_probe(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        return f"unreadable: {exc.strerror}"


def run_ray(jobs: list[Job], runs_dir: Path, progress: bool = True, address: str | None = None,
            num_cpus: int | None = None) -> Summary:
    """The graph on Ray: jobs are submitted as soon as the jobs they wait for are done."""
    ordered, summary, started = check_graph(jobs), Summary(), time.perf_counter()
    runs_dir = Path(runs_dir).resolve()  # workers elsewhere must not resolve a relative path against their own cwd
    try:
        import ray
    except ImportError:
        raise TicketlabError("--executor ray needs Ray: pip install 'ticketlab[ray]' (or pip install ray)") from None
    own = not ray.is_initialized()
    if own:
        _start_ray(ray, address, num_cpus)
    view = None
    try:
        _check_resources(ray, ordered)
        warm_pool(ray, len(ordered))
        _check_shared_folder(ray, runs_dir)  # on a warm worker
        remote = ray.remote(_remote_job)
        by_id = {job.id: job for job in ordered}
        store, view = ResultStore(runs_dir), View(len(ordered), progress)
        pending: dict[Any, str] = {}
        waiting = list(ordered)
        while waiting or pending:
            for job in list(waiting):
                cause = _waits_for_failed(job, summary)
                if cause is not None:
                    summary.skipped[job.id] = cause
                    waiting.remove(job)
                    view.update(summary, len(pending), 1)
                elif all(a in summary.results for a in job.after):
                    options = {**job_resources(job.resources), "max_retries": RAY_RETRIES}
                    pending[remote.options(**options).remote(job, str(runs_dir))] = job.id
                    waiting.remove(job)
            view.update(summary, len(pending))
            if not pending:
                continue
            ready, _ = ray.wait(list(pending), num_returns=1)
            job_id = pending.pop(ready[0])
            try:
                outcome = ray.get(ready[0])
            except Exception as exc:  # noqa: BLE001  Ray could not run it to the end
                died = type(exc).__name__ in ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError")
                outcome = {"error": f"the worker running it died {RAY_RETRIES + 1} times ({type(exc).__name__})" if died
                           else f"Ray could not run it: {one_line(exc)[:200]}"}
            summary.record(job_id, outcome)
            folder = runs_dir / job_id
            if by_id[job_id].kind == "find" and folder.is_dir():
                store.index_folder(folder)  # the driver is the only writer of the index
            view.update(summary, len(pending), 1)
    finally:
        if view is not None:
            view.close()
        if own:
            ray.shutdown()
    summary.seconds = time.perf_counter() - started
    return summary


def _check_reachable(address: str) -> None:
    """Ray retries a dead ``HOST:PORT`` for minutes; a plain TCP connect says at once whether anything listens."""
    host, _, port = address.rpartition(":")
    if address == "auto" or not port.isdigit():
        return
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except OSError as exc:
        raise TicketlabError(f"no Ray cluster answers at {address} ({exc.strerror or exc}); start one there with "
                             "'ray start --head', or drop --address to start a local one") from None


def _start_ray(ray: Any, address: str | None, num_cpus: int | None) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no reporting home unless the user turns it on
    env = {k: v for k, v in os.environ.items() if k.startswith(("HF_", "TRANSFORMERS_", "TICKETLAB_"))}
    if address:
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False,
                     runtime_env={"env_vars": env, "worker_process_setup_hook": "ticketlab.executors.warm_worker"})
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                     runtime_env={"env_vars": env, "worker_process_setup_hook": "ticketlab.executors.warm_worker"})
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"at {address}" if address else "on this machine"
        hint = " (a cluster started by 'ray start' uses token authentication: export RAY_AUTH_MODE=token here, with " \
               "its token in ~/.ray/auth_token or RAY_AUTH_TOKEN)" if address and \
            os.environ.get("RAY_AUTH_MODE") != "token" else ""
        raise TicketlabError(f"could not reach a Ray cluster {where} ({one_line(exc)[:200]}){hint}; "
                             "start one with 'ray start --head', or drop --address to start a local one") from None


def _check_resources(ray: Any, jobs: list[Job]) -> None:
    """A job needing more GPUs or CPUs than the whole cluster has would wait forever: refuse it before running."""
    total = ray.cluster_resources()
    for job in jobs:
        needs = job_resources(job.resources)
        for key, name in (("num_gpus", "GPU"), ("num_cpus", "CPU")):
            if needs[key] > total.get(name, 0):
                raise ConfigError(f"job {job.id} needs {needs[key]:g} {name}(s) but the Ray cluster has "
                                  f"{total.get(name, 0):g}; lower engine.resources.{key} or add nodes")


def _check_shared_folder(ray: Any, runs_dir: Path, reader: Any = _read_probe) -> None:
    """The workers must see the driver's runs folder (one machine, or a shared file system): the driver writes a
    probe file and a worker must read it back."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ensure_writable_dir(runs_dir)
    token = os.urandom(8).hex()
    runs_dir = Path(runs_dir).resolve()
    probe = runs_dir / f".probe-{token}"
    probe.write_text(token)
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    try:
        seen = ray.get([ray.remote(reader).options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
            node, soft=False)).remote(str(probe)) for node in nodes])
    except Exception as exc:  # noqa: BLE001  e.g. ticketlab not importable on a node
        raise TicketlabError(f"a Ray node could not run ticketlab's probe ({one_line(exc)[:200]}); "
                             "install the same ticketlab on every node") from None
    finally:
        probe.unlink(missing_ok=True)
    for node, answer in zip(nodes, seen, strict=True):
        if answer != token:
            raise TicketlabError(f"the Ray workers on node {node[:12]} cannot see the runs folder "
                                 f"{runs_dir} ({answer}); put it on a file system every node "
                                 "mounts at the same path")


def run_graph(jobs: list[Job], runs_dir: Path, executor: str = "local", progress: bool = True,
              address: str | None = None) -> Summary:
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}")
    if address and executor != "ray":
        raise ConfigError("--address needs --executor ray")
    if executor == "ray":
        return run_ray(jobs, runs_dir, progress, address)
    return run_local(jobs, runs_dir, progress)
