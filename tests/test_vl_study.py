"""The V+L study: summaries on hand-built runs, and a tiny end-to-end run that writes its report and resumes."""

from __future__ import annotations

import pytest

from tests.conftest import assert_figure
from tests.test_vl import ADAMW, SIZES, TINY_UNITER
from ticketlab.config import from_dict
from ticketlab.errors import ConfigError
from ticketlab.studies.vl_tickets import VLStudyConfig, check_study, run_vl_study, task_summary, universal_table


def fake_run(scores: list[float], sparsities: list[float]) -> dict:
    return {"rounds": [{"round": k, "sparsity": s, "metrics": {"test_acc": a}}
                       for k, (s, a) in enumerate(zip(sparsities, scores, strict=True))], "baselines": {}}


def test_relaxed_and_matching_sparsity_per_seed():
    sparsity = [0.0, 0.1, 0.2, 0.3]
    runs = {("t", 0): fake_run([0.80, 0.81, 0.795, 0.70], sparsity),   # matching 10 %, relaxed 20 %
            ("t", 1): fake_run([0.60, 0.60, 0.61, 0.595], sparsity),   # matching 20 %, relaxed 30 %
            ("t", 2): fake_run([0.90, 0.80, 0.70, 0.60], sparsity)}    # neither: None, not 0 %
    summary = task_summary(runs, relaxed=0.99)["t"]
    assert summary["matching"] == [0.1, 0.2, None]
    assert summary["relaxed"] == [0.2, 0.3, None]
    assert summary["curve"][0] == pytest.approx((0.0, 0.7667, 0.1528), abs=1e-3)


def test_universal_table_reports_scores_and_average_drops():
    rows = [{"target": t, "round": k, "kind": "standard", "sparsity": s, "test_acc": a}
            for t, k, s, a in [("a", 0, 0.0, 0.80), ("b", 0, 0.0, 0.50), ("a", 5, 0.5, 0.76), ("b", 5, 0.5, 0.50)]]
    tasks, table = universal_table(rows)
    assert tasks == ["a", "b"]
    assert table[0]["drop"] == 0.0
    assert table[1]["drop"] == pytest.approx(0.02)  # (0.04 + 0) / 2 points
    assert table[1]["relative_drop"] == pytest.approx((0.04 / 0.80) / 2)


def tiny_study(**overrides: object) -> VLStudyConfig:
    data = {
        "model": TINY_UNITER,
        "pretrain": {"objective": "vl_pretrain", "task": {"name": "vl_pretrain", "options": SIZES}, "train": ADAMW},
        "pretrain_imp_train": ADAMW,
        "tasks": [{"name": "vl_vqa", "options": SIZES}, {"name": "vl_retrieval", "options": SIZES}],
        "downstream_train": ADAMW,
        "prune": {"schedule": "original", "rate": 0.3, "rounds": 2},
        "seeds": [0, 1], "baseline_rounds": [2], "transfer_rounds": [1, 2],
        "adversarial_tasks": ["vl_vqa"], "adversarial_rounds": [2],
        "adversarial_options": {"steps": 2, "step_size": 0.01},
    }
    data.update(overrides)
    study = from_dict(VLStudyConfig, data)
    check_study(study)
    return study


def test_bad_study_configs_are_rejected_before_any_work():
    with pytest.raises(ConfigError, match="adversarial_tasks"):
        tiny_study(adversarial_tasks=["vl_gqa"])
    with pytest.raises(ConfigError, match="transfer_rounds"):
        tiny_study(transfer_rounds=[3])


@pytest.mark.slow
def test_tiny_vl_study_writes_its_report_and_resumes(tmp_path):
    study = tiny_study()
    out = run_vl_study(study, tmp_path, progress=False)
    report = (out / "report.md").read_text()
    for heading in ("Pre-training tickets", "Task-specific tickets", "Universal pre-training tickets",
                    "adversarial (VILLA)"):
        assert heading in report
    assert_figure(out / "task_curves.png")
    assert_figure(out / "adversarial.png")
    assert report.count("| vl_vqa |") >= 3  # curve row, relaxed/matching row, baseline row
    imp_runs = sorted(tmp_path.glob("imp-*"))
    assert len(imp_runs) == 1 + 2 * 2  # pre-training IMP + 2 tasks x 2 seeds
    assert len(list(tmp_path.glob("pretrain-*"))) == 1  # one θp shared by all
    stamp = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("metrics.json")}
    run_vl_study(study, tmp_path, progress=False)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("metrics.json")} == stamp  # nothing recomputed
