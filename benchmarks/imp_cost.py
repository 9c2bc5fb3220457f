"""What a ticket at 80 % sparsity costs: full IMP vs early-bird IMP vs shortened rounds vs learning-rate rewinding
on one config (ResNet-20 on scikit-learn's digits, rewinding to the initialisation, no baselines), several seeds,
in one run: optimizer steps and wall time of the IMP units to the 80 % ticket (ratio to full IMP), and the paired
95 % interval of (method − full IMP) test accuracy at 80 %.

    python benchmarks/imp_cost.py [--seeds 3] [--epochs 6] [--width 8]

Goal (issue 24): early-bird ≤ 0.5× the steps of full IMP with the interval's lower end ≥ −1 pt.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import ticketlab.plugins  # noqa: F401 - registers the methods
from ticketlab.config import parse_config
from ticketlab.experiment import run_experiment
from ticketlab.paths import IMP, RunPaths
from ticketlab.report import unit_compute
from ticketlab.results import score
from ticketlab.runfolders import read_json
from ticketlab.stats import mean_ci, paired_ci

SPARSITIES = [0.2, 0.36, 0.488, 0.59, 0.672, 0.738, 0.8]  # 20 % of the remaining weights a round, to 80 %
METHODS: dict[str, dict[str, Any]] = {
    "full IMP": {},
    "early-bird (ε 0.05, window 3, every 10 steps)": {"early_bird": {"epsilon": 0.05, "window": 3, "every": 10},
                                                      "report_rounds": "last"},
    "shortened rounds (budget 0.25)": {"round_budget": 0.25, "report_rounds": "last"},
    "learning-rate rewinding": {"rewind": "lr"},
}


def one_run(method: dict[str, Any], seed: int, epochs: int, width: int, runs: Path) -> tuple[float, int, float]:
    cfg = {"seed": seed, "model": {"name": "resnet20", "options": {"width": width}},
           "task": {"name": "digits", "options": {"image_size": 16}},
           "train": {"optimizer": "sgd", "lr": 0.1, "epochs": epochs, "batch_size": 64},
           "prune": {"schedule": "explicit", "sparsities": SPARSITIES, "rewind": "init", **method}, "baselines": []}
    paths = RunPaths(run_experiment(parse_config(cfg), runs, progress=False))
    units = [unit_compute(read_json(paths.metrics(IMP, k))) for k in range(len(SPARSITIES) + 1)]
    return score(read_json(paths.metrics(IMP, len(SPARSITIES)))), sum(u[0] for u in units), sum(u[2] for u in units)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--width", type=int, default=8)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, int, float]]] = {name: [] for name in METHODS}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for name, method in METHODS.items():
                results[name].append(one_run(method, seed, args.epochs, args.width, Path(tmp)))
    full = results["full IMP"]
    print(f"ResNet-20 width {args.width} on digits (16 px), {args.epochs} epochs a full round, rounds to "
          f"{SPARSITIES[-1]:.0%} sparsity, rewind to init; seeds 0..{args.seeds - 1}")
    print("| method | optimizer steps to the 80 % ticket | × full IMP | wall time (s) | test accuracy at 80 % | "
          "minus full IMP, paired |")
    print("|---|---|---|---|---|---|")
    for name, rows in results.items():
        steps = statistics.fmean(r[1] for r in rows)
        ratio = statistics.fmean(r[1] / f[1] for r, f in zip(rows, full, strict=True))
        gap = "" if name == "full IMP" else str(paired_ci([r[0] for r in rows], [f[0] for f in full]))
        print(f"| {name} | {steps:,.0f} | ×{ratio:.2f} | {statistics.fmean(r[2] for r in rows):.0f} | "
              f"{mean_ci([r[0] for r in rows])} | {gap} |")


if __name__ == "__main__":
    main()
