"""The V+L study: summaries on hand-built runs, and a tiny end-to-end run that writes its report and resumes."""

from __future__ import annotations

import pytest

from tests.conftest import assert_figure
from tests.test_vl import ADAMW, SIZES, TINY_UNITER
from ticketlab.config import from_dict
from ticketlab.errors import ConfigError
from ticketlab.studies.vl_report import task_summary, universal_table
from ticketlab.studies.vl_tickets import VLStudyConfig, check_study, run_vl_study


def fake_run(scores: list[float], sparsities: list[float]) -> dict:
    return {"rounds": [{"round": k, "sparsity": s, "metrics": {"test_acc": a}}
                       for k, (s, a) in enumerate(zip(sparsities, scores, strict=True))], "baselines": {}}


def test_relaxed_and_matching_sparsity_over_seeds_on_validation():
    sparsity = [0.0, 0.1, 0.2, 0.3]
    runs = {("t", 0): fake_run([0.80, 0.81, 0.795, 0.82], sparsity),
            ("t", 1): fake_run([0.60, 0.60, 0.60, 0.62], sparsity),
            ("t", 2): fake_run([0.70, 0.71, 0.70, 0.72], sparsity)}
    summary = task_summary(runs, relaxed=0.99)["t"]
    # mean gaps over seeds: +0.67, −0.17, +2.0 points: matching stops at 10 % — the late match at 30 % does not count
    assert summary["matching"] == 0.1
    assert summary["relaxed"] == 0.3  # ≥ 99 % of dense at every sparsity
    assert summary["curve"][0] == pytest.approx((0.0, 0.70, 0.10), abs=1e-9)
    assert summary["cells"][("t", "", 3)]["ci"].low is not None  # an interval over the three seeds


def test_universal_table_reports_scores_and_average_drops_with_intervals():
    rows = [{"target": t, "round": k, "kind": "standard", "sparsity": s, "test_acc": a, "seed": seed}
            for t, k, s, a, seed in [("a", 0, 0.0, 0.80, 0), ("b", 0, 0.0, 0.50, 0), ("a", 5, 0.5, 0.76, 0),
                                     ("b", 5, 0.5, 0.50, 0), ("a", 0, 0.0, 0.82, 1), ("b", 0, 0.0, 0.52, 1),
                                     ("a", 5, 0.5, 0.80, 1), ("b", 5, 0.5, 0.50, 1)]]
    tasks, table = universal_table(rows)
    assert tasks == ["a", "b"]
    assert table[0]["drop"] == 0.0
    assert table[1]["drop"] == pytest.approx((0.02 + 0.02) / 2)  # seed 0: (0.04 + 0) / 2; seed 1: (0.02 + 0.02) / 2
    assert table[1]["scores"]["a"] == pytest.approx(0.78)
    assert table[1]["drop_ci"].n == 2
    assert universal_table(rows, skip=frozenset({"b"}))[1][1]["drop"] == pytest.approx(0.03)  # b excluded


def test_universal_drop_rule():
    from ticketlab.studies.vl_report import drop_row

    # per-seed drops (fractions): the interval's upper end decides "reproduced", its lower end "contradicted"
    assert drop_row(0.6, 1.88, [0.010, 0.011, 0.012])[-1] == "reproduced"  # [0.85, 1.35] pts ≤ 1.88
    assert drop_row(0.6, 1.88, [0.05, 0.051, 0.052])[-1] == "contradicted"  # whole interval above 1.88
    assert drop_row(0.6, 1.88, [0.005, 0.015, 0.025])[-1] == "inconclusive"  # mean 1.5 ≤ 1.88 but straddles
    assert drop_row(0.6, 1.88, [0.01])[-1] == "inconclusive"  # one seed: no interval
    record = drop_row(0.6, 1.88, [0.005, 0.015, 0.025]).record
    assert record["rule"] == "drop" and record["drops"] == [0.005, 0.015, 0.025]
    assert record["most"] == pytest.approx(0.0188)


def tiny_study(**overrides: object) -> VLStudyConfig:
    data = {
        "model": TINY_UNITER,
        "pretrain": {"objective": "vl_pretrain", "task": {"name": "vl_pretrain", "options": SIZES}, "train": ADAMW},
        "pretrain_imp_train": ADAMW,
        "tasks": [{"name": "vl_vqa", "options": SIZES}, {"name": "vl_retrieval", "options": SIZES}],
        "downstream_train": ADAMW,
        "prune": {"schedule": "original", "rate": 0.3, "rounds": 2},
        "seeds": [0, 1], "baselines": ["random_prune", "shuffled_pretrained"], "baseline_rounds": [2],
        "transfer_rounds": [1, 2],
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
    assert report.index("## Verdicts") < report.index("## 1.")
    verdict_section = report[:report.index("## 1.")]
    verdicts = [line for line in verdict_section.splitlines()
             if line.endswith(("| reproduced |", "| contradicted |", "| inconclusive |", "| not tested |"))]
    # 2 task claims + 2 tasks x 2 baselines at one round + the paper's universal drop at 60 % + VILLA on vl_vqa
    assert len(verdicts) == 2 + 2 * 2 + 1 + 1, verdicts
    imp_runs = sorted(tmp_path.glob("imp-*"))
    assert len(imp_runs) == 2 + 2 * 2  # pre-training IMP per seed + 2 tasks x 2 seeds
    assert len(list(tmp_path.glob("pretrain-*"))) == 1  # one θp shared by all
    stamp = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("metrics.json")}
    run_vl_study(study, tmp_path, progress=False)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("metrics.json")} == stamp  # nothing recomputed
