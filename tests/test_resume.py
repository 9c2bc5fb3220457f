"""Kill the real CLI process with SIGKILL mid-run, re-run it, and get what an uninterrupted run gets."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_config
from ticketlab.masks import Mask
from ticketlab.results import score
from ticketlab.runfolders import load_run

pytestmark = pytest.mark.slow


def start(config: Path, runs: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "ticketlab", "find", str(config), "--runs-dir", str(runs), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def finish(config: Path, runs: Path) -> Path:
    proc = start(config, runs)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()
    return Path(out.decode().strip().splitlines()[-1])


def scores(run_dir: Path) -> dict:
    run = load_run(run_dir)
    rows = [("imp", r) for r in run["rounds"]] + [(b, r) for b, rs in run["baselines"].items() for r in rs]
    return {(b, r["round"]): (score(r["metrics"], "val"), score(r["metrics"]), r["metrics"]["final_train_loss"])
            for b, r in rows}


def test_sigkill_and_resume_reproduces_the_uninterrupted_run(tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text(json.dumps(tiny_config(prune={"rounds": 3}, baselines=["omp", "random_reinit"])))
    reference = finish(config, tmp_path / "reference")

    runs = tmp_path / "killed"
    kills = 0
    for target in ("rounds/round_001", "rounds/round_003", "baselines/omp/round_002"):
        proc = start(config, runs)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if any((d / target).is_dir() for d in runs.glob("imp-*")):
                break
            time.sleep(0.05)
        if proc.poll() is None:
            time.sleep(0.3)  # land somewhere inside the next round
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
    assert kills >= 2, "the run finished before it could be killed; make the config slower"
    resumed = finish(config, runs)

    assert resumed.name == reference.name  # same config, same folder name
    assert not list(resumed.rglob(".round_*")), "temporary folders must not survive as results"
    for sub in ["rounds/round_001", "rounds/round_002", "rounds/round_003", "baselines/omp/round_003",
                "baselines/random_reinit/round_002"]:
        assert Mask.load(resumed / sub / "mask.safetensors") == Mask.load(reference / sub / "mask.safetensors"), sub
    assert scores(resumed) == scores(reference)


def test_sigkill_mid_round_resumes_from_its_checkpoint_bit_identically(tmp_path):
    """Killed inside round 1 (not between rounds), the run resumes from the round's last mid-round checkpoint and
    ends exactly like an uninterrupted run: same metrics, same final weights."""
    cfg = tiny_config(train={"optimizer": "sgd", "lr": 0.05, "epochs": 6, "batch_size": 16}, prune={"rounds": 1},
                      baselines=[], engine={"checkpoint_every": 2})
    config = tmp_path / "cfg.yaml"
    config.write_text(json.dumps(cfg))
    reference = finish(config, tmp_path / "reference")

    runs = tmp_path / "killed"
    proc = start(config, runs)
    deadline, killed_at = time.time() + 300, None
    while time.time() < deadline and proc.poll() is None:
        checkpoints = list(runs.glob("imp-*/rounds/.round_001.checkpoint.pt"))
        if checkpoints and checkpoints[0].stat().st_size > 0:
            time.sleep(0.2)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed_at = checkpoints[0]
            break
        time.sleep(0.02)
    assert killed_at is not None, "round 1 finished before it could be killed; make the config slower"
    assert not (killed_at.parent / "round_001").exists()  # killed mid-round
    resumed = finish(config, runs)
    metrics = json.loads((resumed / "rounds/round_001/metrics.json").read_text())
    assert 0 < metrics["resumed_at_step"] < metrics["steps"]  # it resumed from a mid-round checkpoint
    assert not killed_at.exists()  # the checkpoint is deleted once the round is saved
    assert scores(resumed) == scores(reference)
    from ticketlab.tensorfiles import load_tensors

    final, reference_final = (load_tensors(r / "rounds/round_001/weights.safetensors")[0] for r in (resumed, reference))
    assert all(torch.equal(final[k], reference_final[k]) for k in final)
    history = (resumed / "rounds/round_001/metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in history] == list(range(1, 7))
