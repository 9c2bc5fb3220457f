"""A sweep of 8 runs (about 10 s each, 1 thread each): the serial (local) executor vs Ray with 2 workers on this
machine, side by side in one run (issue 22). The Ray wall time includes starting and stopping the local Ray.

Prints the median wall time of each over ``--repeats`` (fresh runs folders each time, so nothing is cached), the
ratio Ray / serial (goal ≤ 0.6 on 2 cores), the scheduling overhead per run ((Ray wall − Ray start/stop −
serial wall / workers) / runs; goal < 0.5 s; Ray start/stop is measured alone as ticketlab starts it: its
workers started side by side, each importing torch) with its breakdown (the jobs' own time in the workers vs
serial, and the time workers sat idle), and whether the results are identical (mask sha256 and metrics).

    python benchmarks/sweep_scaling.py [--repeats 3] [--n-train 600] [--gpus-per-run 0.5]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from ticketlab.executors import _start_ray, run_graph, warm_pool
from ticketlab.results import score
from ticketlab.sweep import sweep_jobs, sweep_points


def base_config(n_train: int, gpus: float) -> dict:
    return {"seed": 0, "model": {"name": "resnet20", "options": {"width": 8}},
            "task": {"name": "scenes_shape", "options": {"n_train": n_train, "n_val": 100, "n_test": 100}},
            "train": {"lr": 0.05, "epochs": 2, "batch_size": 32}, "prune": {"rounds": 1, "rewind": "init"},
            "baselines": [], "engine": {"threads": 1, "resources": {"num_cpus": 1, "num_gpus": gpus}}}


def fingerprint(runs: Path) -> str:
    digest = hashlib.sha256()
    for metrics in sorted(runs.glob("imp-*/rounds/round_*/metrics.json")):
        m = json.loads(metrics.read_text())
        digest.update(metrics.parent.joinpath("mask.safetensors").read_bytes())
        digest.update(f"{metrics.relative_to(runs)} {score(m)} {score(m, 'val')} {m['final_train_loss']!r}".encode())
    return digest.hexdigest()


def ray_start_stop(workers: int) -> float:
    """Starting a local Ray as ticketlab does (its workers started side by side, each importing torch and the
    plug-ins), then stopping it: the fixed cost of a Ray pool, paid once per command."""
    import ray

    started = time.perf_counter()
    _start_ray(ray, None, workers)
    warm_pool(ray, workers)
    ray.shutdown()
    return time.perf_counter() - started


def settle(seconds: float = 5.0) -> None:
    """Let a stopped Ray's processes exit before the next timing starts (they would steal the cores)."""
    time.sleep(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-train", type=int, default=1500, help="training images per run (sets the run's length)")
    parser.add_argument("--gpus-per-run", type=float, default=0.0, help="e.g. 0.5: two runs share one GPU")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    base = base_config(args.n_train, args.gpus_per_run)
    points = sweep_points(base, {"train.lr": [0.05, 0.04, 0.03, 0.02]}, [0, 1])
    times: dict[str, list[float]] = {"local": [], "ray": [], "ray start+stop": [], "work local": [], "work ray": []}
    prints: dict[str, set[str]] = {"local": set(), "ray": set()}
    for _ in range(args.repeats):
        for executor in ("local", "ray"):
            runs = Path(tempfile.mkdtemp(prefix=f"sweep-{executor}-"))
            try:
                started = time.perf_counter()
                summary = run_graph(sweep_jobs(points, runs), runs, executor, progress=False)
                times[executor].append(time.perf_counter() - started)
                times[f"work {executor}"].append(sum(summary.job_seconds.values()))
                assert not summary.failed, summary.failed
                prints[executor].add(fingerprint(runs))
            finally:
                shutil.rmtree(runs, ignore_errors=True)
            settle()
        times["ray start+stop"].append(ray_start_stop(2))
        settle()
    workers = 2
    local, ray_wall, start, work_local, work_ray = (statistics.median(times[k]) for k in
                                                     ("local", "ray", "ray start+stop", "work local", "work ray"))
    print(f"{os.cpu_count()} cores; {len(points)} runs of ~{local / len(points):.1f} s each (1 thread); median of "
          f"{args.repeats}")
    print(f"serial (local executor)      {local:7.1f} s")
    print(f"ray, {workers} workers (incl. start) {ray_wall:7.1f} s   ratio {ray_wall / local:.2f} (goal ≤ 0.6)")
    print(f"ray start + stop alone       {start:7.1f} s   (incl. {workers} workers importing torch side by side)")
    overhead = (ray_wall - start - local / workers) / len(points)
    print(f"scheduling overhead per run  {overhead:7.2f} s (goal < 0.5)   "
          f"= (ray − start/stop − serial / {workers}) / runs")
    print(f"  of which: jobs' own time in workers {work_ray:.1f} s vs {work_local:.1f} s serial "
          f"({(work_ray - work_local) / len(points):+.2f} s per run: trainings side by side on the cores run slower than "
          f"one alone, and each worker's first run sets up once more); "
          f"idle workers {(ray_wall - start - work_ray / workers) / len(points):+.2f} s per run")
    same = len(prints["local"] | prints["ray"]) == 1
    print(f"results identical to serial (mask sha256, metrics): {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
