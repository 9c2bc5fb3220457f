"""How long the CLI takes to answer, against importing torch, side by side in one run (issue 21).

Times, interleaved round by round, fresh interpreters running: ``python -c "import torch"``, ``ticketlab --help``,
``ticketlab ls`` (a runs folder with one finished run), ``ticketlab list models`` (catalog cached) and
``ticketlab show RUN``. Prints the median of ``--repeats`` (default 5) for each and its ratio to importing torch
(goal: --help and ls each ≤ 0.3×).

    python benchmarks/cli_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

TINY = {"seed": 0, "model": {"name": "resnet20", "options": {"width": 4}},
        "task": {"name": "scenes_shape", "options": {"n_train": 64, "n_val": 32, "n_test": 32}},
        "train": {"lr": 0.05, "epochs": 1, "batch_size": 32}, "prune": {"rounds": 1, "rewind": "init"},
        "baselines": []}


def timed(command: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cli-startup-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TICKETLAB_CACHE_DIR": str(work / "cache")}
    ticketlab = [sys.executable, "-m", "ticketlab"]
    try:
        (work / "tiny.yaml").write_text(yaml.safe_dump(TINY))
        run = subprocess.run([*ticketlab, "find", "tiny.yaml", "-q"], env=env, cwd=work, check=True,
                             capture_output=True, text=True).stdout.strip().splitlines()[-1]
        subprocess.run([*ticketlab, "list"], env=env, cwd=work, check=True, capture_output=True)  # warm the cache
        commands = {"import torch": [sys.executable, "-c", "import torch"], "ticketlab --help": [*ticketlab, "--help"],
                    "ticketlab ls": [*ticketlab, "ls"], "ticketlab list models": [*ticketlab, "list", "models"],
                    "ticketlab show RUN": [*ticketlab, "show", run]}
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeats):  # interleaved: a busy moment slows every command alike
            for name, command in commands.items():
                times[name].append(timed(command, env, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    torch_s = statistics.median(times["import torch"])
    print(f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, median of {args.repeats} interleaved runs")
    for name, values in times.items():
        median = statistics.median(values)
        goal = "  (goal ≤ 0.30)" if name in ("ticketlab --help", "ticketlab ls") else ""
        print(f"{name:<24} {median:6.3f} s   ratio to import torch {median / torch_s:5.2f}{goal}")


if __name__ == "__main__":
    main()
