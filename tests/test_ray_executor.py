"""The Ray executor on a local 2-CPU Ray (issue 22): a sweep gives the same results as the serial executor, a
worker killed mid-job is retried and resumes from its mid-round checkpoint with identical results, a driver
stopped mid-sweep resumes on re-run, and bad clusters / resources fail with one line before anything runs."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_config
from ticketlab import cli
from ticketlab.errors import ConfigError, TicketlabError
from ticketlab.executors import _check_shared_folder, run_ray
from ticketlab.jobs import Job
from ticketlab.results import score

pytest.importorskip("ray")
pytestmark = pytest.mark.slow
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}


def base_config(tmp_path: Path, **train: object) -> str:
    cfg = tiny_config(baselines=["omp"], prune={"rounds": 1, "rewind": "init"},
                      engine={"threads": 1, "checkpoint_every": 1}, train={"lr": 0.05, "epochs": 1, "batch_size": 32,
                                                                           **train})
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def fingerprint(runs: Path) -> dict[str, str]:
    """Every round's mask digest and metrics that must not depend on the executor (not timings, not pids)."""
    out = {}
    for metrics in sorted(runs.glob("imp-*/**/round_*/metrics.json")):
        m = json.loads(metrics.read_text())
        mask_file = metrics.parent / "mask.safetensors"  # transfer folders keep no mask
        mask = hashlib.sha256(mask_file.read_bytes()).hexdigest() if mask_file.is_file() else "-"
        key = str(metrics.relative_to(runs))
        out[key] = f"{mask} {score(m)} {score(m, 'val')} {m['final_train_loss']!r} {m['sparsity']}"
    return out


def sweep(args: list[str], **kwargs: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ticketlab", "sweep", *args, "-q"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_a_ray_sweep_equals_the_serial_one_and_a_failing_run_stops_nothing_else(tmp_path):
    base = base_config(tmp_path)
    sets = ["--set", "train.lr=0.05,0.02,3000", "--seeds", "0-1"]
    serial = sweep([base, *sets, "--runs-dir", str(tmp_path / "serial")])
    out, err = serial.communicate(timeout=600)
    # 6 runs × 4 jobs (IMP rounds 0 and 1, OMP at round 1, the run's report); a diverging run fails at round 0
    assert serial.returncode == 2 and "16 done, 2 failed, 6 skipped" in out, out + err
    parallel = sweep([base, *sets, "--executor", "ray", "--runs-dir", str(tmp_path / "ray")])
    out, err = parallel.communicate(timeout=600)
    assert parallel.returncode == 2 and "16 done, 2 failed, 6 skipped" in out, out + err
    assert "diverged" in out and err.strip().splitlines()[-1].startswith("ticketlab: error: 8 of the 24 jobs")
    a, b = fingerprint(tmp_path / "serial"), fingerprint(tmp_path / "ray")
    assert len(a) == 12 and a == b  # 4 finished runs × (2 IMP rounds + 1 OMP round)


def test_a_worker_killed_mid_run_is_retried_and_resumes_to_the_same_result(tmp_path):
    base = base_config(tmp_path, epochs=3)
    args = [base, "--set", "train.lr=0.05", "--runs-dir"]
    serial = sweep([*args, str(tmp_path / "serial")])
    serial.communicate(timeout=600)
    driver = sweep([*args, str(tmp_path / "ray"), "--executor", "ray"])
    killed, deadline = None, time.time() + 300
    while killed is None and time.time() < deadline and driver.poll() is None:
        checkpoints = list((tmp_path / "ray").glob("imp-*/rounds/.round_*.checkpoint.pt"))
        status = list((tmp_path / "ray").glob("imp-*/status.json"))
        if checkpoints and status:
            pid = json.loads(status[0].read_text())["pid"]
            os.kill(pid, signal.SIGKILL)  # the Ray worker running the job, mid-round
            killed = pid
        time.sleep(0.05)
    out, err = driver.communicate(timeout=600)
    assert killed is not None, "the job finished before a checkpoint was seen"
    assert driver.returncode == 0, out + err
    runs = list((tmp_path / "ray").glob("imp-*/rounds/round_*/metrics.json"))
    assert any(json.loads(m.read_text())["resumed_at_step"] for m in runs)  # resumed, not restarted
    assert fingerprint(tmp_path / "serial") == fingerprint(tmp_path / "ray")


def test_a_stopped_driver_resumes_on_rerun_without_recomputing(tmp_path):
    base = base_config(tmp_path)
    args = [base, "--set", "train.lr=0.05,0.04,0.03,0.02", "--runs-dir", str(tmp_path / "runs"), "--executor", "ray"]
    driver = sweep(args)
    deadline = time.time() + 300
    while time.time() < deadline and not list((tmp_path / "runs").glob("imp-*/results.md")):
        time.sleep(0.1)
    driver.send_signal(signal.SIGTERM)
    driver.communicate(timeout=120)
    finished = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("imp-*/**/round_*/metrics.json")}
    assert finished
    again = sweep(args)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0 and "16 done, 0 failed" in out, out + err
    assert all(path.stat().st_mtime_ns == t for path, t in finished.items())  # finished rounds were not redone


def test_bad_clusters_and_resources_fail_with_one_line_before_anything_runs(tmp_path, capsys):
    base = base_config(tmp_path)
    code = cli.main(["sweep", base, "--executor", "ray", "--address", "127.0.0.1:1", "--runs-dir",
                     str(tmp_path / "runs"), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "127.0.0.1:1" in err
    assert not list((tmp_path / "runs").glob("imp-*"))
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        job = Job("imp-x", "find", {"config": {}}, resources={"num_cpus": 1, "num_gpus": 2})
        with pytest.raises(ConfigError, match="needs 2 GPU.* cluster has 0"):
            run_ray([job], tmp_path / "runs", progress=False)
        with pytest.raises(TicketlabError, match="workers on node .* cannot see the runs folder .*every node mounts"):
            _check_shared_folder(ray, tmp_path / "runs", reader=lambda path: "unreadable: No such file or directory")
        assert not list((tmp_path / "runs").glob(".probe-*"))  # the probe is removed again
    finally:
        ray.shutdown()


def test_the_cv_study_on_ray_equals_the_serial_study(tmp_path):
    """The study's trainings as a graph (pre-trainings → IMP runs → transfers and perturbations), run on Ray,
    give the same masks, metrics and transfer rows as the local executor (one thread per process in both)."""
    from tests.test_study import TINY_STUDY
    from ticketlab.studies.base import STUDIES, study_config

    study = {**TINY_STUDY, "seeds": TINY_STUDY["seeds"][:1], "replicates": 1}  # one unit: the graph, in half the time
    cfg = study_config("cv_pretraining", study)
    jobs = STUDIES.get("cv_pretraining").jobs(cfg, tmp_path / "runs")
    kinds = [job.kind for job in jobs]
    assert kinds.count("pretrain") == len(TINY_STUDY["pretrainings"])
    assert all(job.after for job in jobs if job.kind != "pretrain")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    env = {**ENV, "OMP_NUM_THREADS": "1"}
    outputs = {}
    for executor in ("local", "ray"):
        runs = tmp_path / executor
        done = subprocess.run([sys.executable, "-m", "ticketlab", "study", "cv_pretraining", str(path), "-q",
                               "--executor", executor, "--runs-dir", str(runs)], capture_output=True, text=True,
                              env=env, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        rows = json.loads(next(runs.glob("study-*/transfer_rows.json")).read_text())
        outputs[executor] = ([(r["source"], r["seed"], r["round"], r["target"], score(r)) for r in rows],
                             fingerprint(runs))
    assert outputs["local"] == outputs["ray"] and len(outputs["local"][0]) > 10


def test_transfer_over_rounds_and_seeds_on_ray_equals_local(tmp_path):
    cfg = tiny_config(baselines=[], prune={"rounds": 1, "rewind": "init"}, engine={"threads": 1})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    found = subprocess.run([sys.executable, "-m", "ticketlab", "find", str(path), "-q", "--runs-dir",
                            str(tmp_path / "runs")], capture_output=True, text=True, env=ENV, timeout=300)
    run = Path(found.stdout.strip().splitlines()[-1])
    task = ["--task", "scenes_colour", "--task-options", '{"n_train": 96, "n_val": 48, "n_test": 48}', "--seeds", "0,1"]
    outputs = []
    for executor in ("local", "ray"):
        copy = tmp_path / executor
        subprocess.run(["cp", "-r", str(tmp_path / "runs"), str(copy)], check=True)
        done = subprocess.run([sys.executable, "-m", "ticketlab", "transfer", "--mask", str(copy / run.name), *task,
                               "-q", "--runs-dir", str(copy), "--executor", executor], capture_output=True, text=True,
                              env={**ENV, "OMP_NUM_THREADS": "1"}, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        transfers = sum("/transfer/" in key for key in fingerprint(copy))
        perturb = subprocess.run([sys.executable, "-m", "ticketlab", "analyze", "perturb", f"{copy / run.name}:1",
                                  *task[:-1], "0", "-q", "--runs-dir", str(copy), "--executor", executor],
                                 capture_output=True, text=True, env={**ENV, "OMP_NUM_THREADS": "1"}, timeout=600)
        assert perturb.returncode == 0, perturb.stderr[-2000:]
        outputs.append((done.stdout, perturb.stdout, transfers, fingerprint(copy)))
    assert outputs[0] == outputs[1] and "round  1" in outputs[0][0] and "complement" in outputs[0][1]
    assert outputs[0][2] == 4  # 2 rounds × 2 seeds; then the perturbations of round 1 (seed 0)


def test_find_on_ray_trains_baselines_beside_imp_rounds_and_equals_local(tmp_path):
    base = base_config(tmp_path)
    outputs = []
    for executor in ("local", "ray"):
        runs = tmp_path / executor
        done = subprocess.run([sys.executable, "-m", "ticketlab", "find", base, "-q", "--executor", executor,
                               "--runs-dir", str(runs)], capture_output=True, text=True,
                              env={**ENV, "OMP_NUM_THREADS": "1"}, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.append(fingerprint(runs))
    assert len(outputs[0]) == 3 and outputs[0] == outputs[1]  # IMP rounds 0 and 1, OMP at round 1
