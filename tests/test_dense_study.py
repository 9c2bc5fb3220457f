"""The CV study with a detection and a segmentation downstream task (toy scale: boxes and label maps of generated
scenes): downstream IMP, transfer of every pre-training ticket, the report's rows, each scored by its own metric."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ticketlab import cli

STUDY = """
seed: 0
model: {name: resnet18, options: {width: 4}}
pretrainings:
  - label: supervised
    objective: supervised
    task: {name: scenes_shape_colour, options: {n_train: 64, n_val: 32, n_test: 32}}
    train: {lr: 0.05, epochs: 1, batch_size: 32}
    imp_train: {lr: 0.01, epochs: 1, batch_size: 32}
  - label: simclr
    objective: simclr
    objective_options: {temperature: 0.5}
    task: {name: scenes_shape_colour, options: {n_train: 64, n_val: 32, n_test: 32}}
    train: {lr: 0.05, epochs: 1, batch_size: 32}
    imp_train: {lr: 0.01, epochs: 1, batch_size: 32}
downstream:
  - {name: scenes_detection, options: {n_train: 32, n_val: 16, n_test: 16, seed: 7}}
  - {name: scenes_segmentation, options: {n_train: 32, n_val: 16, n_test: 16, seed: 7}}
downstream_train: {lr: 0.01, epochs: 1, batch_size: 16}
prune: {method: global_magnitude, schedule: remaining, rate: 0.2, rounds: 2, rewind: pretrained}
baselines: [random_prune]
baseline_rounds: [2]
seeds: [0]
analysis_round: 2
"""


def test_the_cv_study_transfers_tickets_to_detection_and_segmentation(tmp_path, capsys):
    (tmp_path / "study.yaml").write_text(STUDY)
    assert cli.main(["study", "cv_pretraining", str(tmp_path / "study.yaml"), "--runs-dir", str(tmp_path), "-q"]) == 0
    out = Path(capsys.readouterr().out.strip().splitlines()[-1]).parent
    rows = json.loads((out / "transfer_rows.json").read_text())
    assert len(rows) == 2 * 2 * 3  # (supervised, simclr) x (detection, segmentation) x rounds 0..2
    by_target = {r["target"]: r for r in rows}
    assert by_target["scenes_detection"]["metric"] == "coco_map" and "test_ap50" in by_target["scenes_detection"]
    assert by_target["scenes_segmentation"]["metric"] == "miou"
    for r in rows:
        assert 0.0 <= r["score"]["test"] <= 1.0 and abs(r["sparsity"] - [0.0, 0.2, 0.36][r["round"]]) < 0.01
    seg = [r for r in rows if r["target"] == "scenes_segmentation"]
    assert all(0.0 < r["chance_test"] < 1.0 for r in seg)  # most frequent class everywhere: a real chance level
    report = (out / "report.md").read_text()
    for row in ("| supervised | scenes_detection |", "| simclr | scenes_segmentation |"):
        assert row in report
    assert [t["name"] for t in json.loads((out / "study.json").read_text())["downstream"]] == [
        t["name"] for t in yaml.safe_load(STUDY)["downstream"]]
