"""Sweeps and the local executor (issue 22): the product of swept values as content-addressed runs, a summary
table, `ls --sweep`, failures that do not stop independent runs, and bad `--set` values rejected up front."""

from __future__ import annotations

import csv
import hashlib
import json

import pytest
import yaml

from tests.conftest import tiny_config
from ticketlab import cli
from ticketlab.config import parse_config
from ticketlab.errors import ConfigError
from ticketlab.executors import run_local
from ticketlab.experiment import run_experiment
from ticketlab.jobs import JOB_KINDS, Job, check_graph
from ticketlab.results import score
from ticketlab.run_jobs import experiment_jobs
from ticketlab.sweep import parse_seeds, parse_sets


def sweep_config(tmp_path) -> str:
    cfg = tiny_config(baselines=[], prune={"rounds": 1, "rewind": "init"}, engine={"threads": 1})
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_a_sweep_runs_the_product_writes_a_summary_and_adds_only_new_runs(tmp_path, capsys):
    base, runs = sweep_config(tmp_path), str(tmp_path / "runs")
    args = ["sweep", base, "--set", "train.lr=0.05,0.02", "--seeds", "0-1", "--runs-dir", runs, "-q"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    sweep = out.split(":", 1)[0]
    assert sweep.startswith("sweep-") and "4 run(s) on the local executor" in out
    rows = list(csv.reader((tmp_path / "runs" / sweep / "summary.csv").open()))
    assert rows[0][:5] == ["train.lr", "seed", "run", "status", "best matching sparsity"]
    assert sorted((r[0], r[1]) for r in rows[1:]) == [("0.02", "0"), ("0.02", "1"), ("0.05", "0"), ("0.05", "1")]
    assert all(r[3] == "done" for r in rows[1:]) and len({r[2] for r in rows[1:]}) == 4
    assert all(0.0 <= float(r[-1]) <= 1.0 for r in rows[1:])  # the IMP test score at the last sparsity
    assert cli.main(["ls", "--sweep", sweep, "--runs-dir", runs]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 4
    # widening the sweep trains only the new point's runs: the 4 finished ones are found, not recomputed
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("imp-*/rounds/round_001/metrics.json")}
    assert cli.main(["sweep", base, "--set", "train.lr=0.05,0.02,0.01", "--seeds", "0-1", "--runs-dir", runs,
                     "-q"]) == 0
    capsys.readouterr()
    assert len(list((tmp_path / "runs").glob("imp-*"))) == 6
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())


def test_a_failing_run_does_not_stop_the_independent_ones_and_is_listed(tmp_path, capsys):
    base, runs = sweep_config(tmp_path), str(tmp_path / "runs")
    assert cli.main(["sweep", base, "--set", "train.lr=0.05,3000", "--runs-dir", runs, "-q"]) == 2
    captured = capsys.readouterr()
    assert "1 done, 1 failed, 0 skipped" in captured.out
    assert "failed  imp-" in captured.out and "diverged" in captured.out
    assert "1 of the 2 jobs of the runs did not finish" in captured.err


@pytest.mark.parametrize(("item", "pattern"), [
    ("train.lrr=0.1", r"--set train.lrr: unknown key 'lrr' in train \(did you mean 'lr'\?\); valid keys there"),
    ("trian.lr=0.1", r"unknown key 'trian' in the config \(did you mean 'train'"),
    ("train.lr", r"must look like key=v1,v2"),
])
def test_bad_set_keys_are_one_line_naming_the_key_and_the_valid_ones(item, pattern):
    with pytest.raises(ConfigError, match=pattern):
        parse_sets([item])


def test_a_value_of_the_wrong_type_names_the_point_and_the_key(tmp_path, capsys):
    base, runs = sweep_config(tmp_path), str(tmp_path / "runs")
    assert cli.main(["sweep", base, "--set", "train.epochs=1,fast", "--runs-dir", runs, "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "train.epochs=fast: train.epochs must be int, got 'fast'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # nothing written


def test_seeds_and_graph_checks():
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4] and parse_seeds("3,1") == [3, 1] and parse_seeds(None) is None
    with pytest.raises(ConfigError, match="--seeds must look like"):
        parse_seeds("a-b")
    assert "find" in JOB_KINDS
    with pytest.raises(ConfigError, match="cycle"):
        check_graph([Job("a", "find", {}, after=("b",)), Job("b", "find", {}, after=("a",))])
    with pytest.raises(ConfigError, match="not in the graph"):
        check_graph([Job("a", "find", {}, after=("z",))])


def test_the_local_executor_skips_what_depends_on_a_failed_job(tmp_path):
    good = tiny_config(baselines=[], prune={"rounds": 1, "rewind": "init"})
    bad = tiny_config(baselines=[], prune={"rounds": 1, "rewind": "init"}, seed=5)
    bad["train"]["lr"] = 3000.0
    jobs = [Job("bad", "find", {"config": bad}), Job("after-bad", "find", {"config": good}, after=("bad",)),
            Job("good", "find", {"config": good})]
    summary = run_local(jobs, tmp_path / "runs", progress=False)
    assert list(summary.failed) == ["bad"] and summary.skipped == {"after-bad": "bad"}
    assert list(summary.results) == ["good"]


def test_adding_engine_fields_renamed_no_existing_run_or_study_folder():
    """The ids of the shipped configs as computed before engine.threads / engine.resources existed: finished runs
    and studies of earlier versions keep being found (a study hashes its lists of dataclasses by repr). The study
    configs are the shipped ones of that time (``fixtures/earlier_configs``): the designs changed since (issue 23)."""
    from pathlib import Path

    from ticketlab.config import config_hash, load_config
    from ticketlab.studies.base import study_config

    root = Path(__file__).resolve().parents[1]
    expected = {"cv_pretraining": "1be3e0db5e9a", "vl_tickets": "18292c13a107", "patch_tickets": "95fff3af72df"}
    for name, digest in expected.items():
        data = yaml.safe_load((root / "tests/fixtures/earlier_configs" / f"{name}_study.yaml").read_text())
        assert config_hash(study_config(name, data)) == digest, name
    assert config_hash(load_config(root / "src/ticketlab/configs/demo.yaml")) == "5440b79ad5fd"


def test_set_values_may_hold_commas_inside_brackets_and_bad_yaml_is_one_line():
    sets = parse_sets(["train.betas=[0.9,0.99],[0.8,0.9]", "train.lr=0.1,0.05"])
    assert sets == {"train.betas": [[0.9, 0.99], [0.8, 0.9]], "train.lr": [0.1, 0.05]}
    with pytest.raises(ConfigError, match=r"--set train.lr: a value is not valid YAML"):
        parse_sets(["train.lr={a: [1}"])
    with pytest.raises(ConfigError, match="low to high"):
        parse_seeds("4-0")


def test_a_crashing_job_fails_alone_with_its_type_and_place(tmp_path):
    @JOB_KINDS.register("test_crash")
    def crash(payload, runs_dir, progress, index=True):  # noqa: ANN001, ANN202
        if payload["crash"]:
            raise RuntimeError("CUDA out of memory (simulated)")
        return "fine"

    summary = run_local([Job("a", "test_crash", {"crash": True}), Job("b", "test_crash", {"crash": False})],
                        tmp_path, progress=False)
    assert summary.results == {"b": "fine"}
    assert summary.failed["a"].startswith("RuntimeError: CUDA out of memory (simulated) (at test_sweep.py:")


def test_engine_resources_are_checked():
    with pytest.raises(ConfigError) as info:
        parse_config(tiny_config(engine={"resources": {"gpus": 1, "num_cpus": -1, "num_gpus": "1"}}))
    text = " | ".join(info.value.problems)
    assert "unknown engine.resources key 'gpus'" in text and "num_cpus must be a number >= 0" in text
    assert "num_gpus must be a number >= 0, got '1'" in text
    assert parse_config(tiny_config(engine={"resources": {"num_cpus": 2, "num_gpus": 0.5}})).engine.resources


def test_a_failed_plugin_load_is_retried_not_left_half_filled(monkeypatch):
    from ticketlab import registry

    calls = []

    def failing() -> None:
        calls.append("load")
        raise ImportError("no module named torch (simulated)")

    monkeypatch.setattr(registry, "_LOADER", {"load": failing, "done": False})
    fresh: registry.Registry = registry.Registry("thing")
    for _ in range(2):
        with pytest.raises(ImportError):
            fresh.get("x")
    assert calls == ["load", "load"]


def _fingerprint(runs) -> dict[str, tuple]:
    out = {}
    for metrics in sorted(runs.glob("imp-*/**/round_*/metrics.json")):
        m = json.loads(metrics.read_text())
        mask = hashlib.sha256((metrics.parent / "mask.safetensors").read_bytes()).hexdigest()
        out[str(metrics.relative_to(runs))] = (mask, score(m), score(m, "val"), m["final_train_loss"])
    return out


def test_a_run_with_baselines_is_a_graph_of_units_that_equals_the_serial_run(tmp_path):
    cfg = parse_config(tiny_config(baselines=["omp", "reversed"], prune={"rounds": 2}, engine={"threads": 1}))
    jobs = experiment_jobs(cfg, tmp_path / "graph")
    run_id, by_id = jobs[-1].id, {job.id: job for job in jobs}
    assert jobs[-1].kind == "find" and len(jobs[-1].after) == 3 + 2 * 2  # the report waits for every unit
    assert by_id[f"{run_id}:omp:1"].after == (f"{run_id}:imp:1",)  # a baseline waits only for its IMP round
    assert by_id[f"{run_id}:imp:2"].after == (f"{run_id}:imp:1",) and by_id[f"{run_id}:imp:0"].after == ()
    summary = run_local(jobs, tmp_path / "graph", progress=False)
    assert not summary.failed and len(summary.results) == len(jobs)
    run_experiment(cfg, tmp_path / "serial", progress=False)
    graph, serial = _fingerprint(tmp_path / "graph"), _fingerprint(tmp_path / "serial")
    assert len(graph) == 7 and graph == serial
    assert json.loads((tmp_path / "graph" / run_id / "status.json").read_text())["status"] == "done"
