"""Typed, versioned results (issue 22): every unit's metrics.json names the task's metric and its score per split;
folders written before the record read the same; a record from a newer ticketlab is refused, not misread."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tests.conftest import tiny_config
from ticketlab.config import parse_config
from ticketlab.data.base import build_task
from ticketlab.experiment import run_experiment
from ticketlab.models.base import build_model
from ticketlab.results import RESULT_VERSION, UNRECORDED, Result, derived, read_result, score
from ticketlab.runfolders import load_run
from ticketlab.train import train_model


def test_a_record_round_trips_and_old_flat_dicts_read_the_same():
    result = Result("mcc", {"val": 0.25, "test": 0.5}, {"sparsity": 0.2, "seed": 1})
    record = json.loads(json.dumps(result.record()))
    assert record["result_version"] == RESULT_VERSION and record["score"] == {"val": 0.25, "test": 0.5}
    assert read_result(record) == result and record["sparsity"] == 0.2  # extras stay flat beside the record
    old = {"test_acc": 0.7, "val_acc": 0.6, "sparsity": 0.5}
    assert read_result(old) == Result(UNRECORDED, {"val": 0.6, "test": 0.7}, {"sparsity": 0.5})
    assert score(old) == 0.7 and score(old, "val") == 0.6 and score({"test_acc": 0.4}, "val") == 0.4
    student = {"test_acc": 0.3, "dense_test_acc": 0.4, "sparse_test_acc": 0.35}  # a patch student before the record
    assert score(student, "test_all_patches") == 0.4 and score(student, "test_kept_patches") == 0.35
    row = derived(record, target="vqa", seed=2)
    assert read_result(row) == Result("mcc", {"val": 0.25, "test": 0.5}, {"target": "vqa", "seed": 2})
    with pytest.raises(ValueError, match="version 99 .* upgrade ticketlab"):
        read_result({**record, "result_version": 99})
    with pytest.raises(KeyError, match="no 'train' score"):
        result.score("train")


def test_training_records_the_tasks_own_metric(tiny):
    cfg = parse_config(tiny)
    task = dataclasses.replace(build_task(cfg.task.name, cfg.task.options), metric="mcc")
    model = build_model(cfg.model.name, task.num_classes, cfg.model.options)
    result = read_result(train_model(model, task, cfg.train, seed=0).metrics)
    assert result.metric == "mcc" and set(result.scores) == {"val", "test"}
    assert -1.0 <= result.test <= 1.0 and result.extras["n_test"] == len(task.test)


def test_every_round_of_a_run_is_a_versioned_record(tmp_path):
    run = load_run(run_experiment(parse_config(tiny_config(baselines=["omp"], prune={"rounds": 1})), tmp_path,
                                  progress=False))
    records = [r["metrics"] for r in run["rounds"] + run["baselines"]["omp"]]
    assert len(records) == 3 and all(m["result_version"] == RESULT_VERSION for m in records)
    assert all(read_result(m).metric == "accuracy" and "test_acc" not in m for m in records)
    assert "dense test accuracy" in (tmp_path / run["run"] / "results.md").read_text()
