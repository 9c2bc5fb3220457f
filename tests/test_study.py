"""The CV pre-training study end to end, on a reduced setting (tiny data, 1 epoch, 2 rounds)."""

import json

import pytest
import yaml

from ticketlab import cli
from ticketlab.errors import ConfigError
from ticketlab.study import load_study

pytestmark = pytest.mark.slow

SMALL = {"n_train": 128, "n_val": 64, "n_test": 64}
TINY_STUDY = {
    "model": {"name": "resnet20", "options": {"width": 4}},
    "pretrainings": [
        {"label": label, "objective": label, "task": {"name": "scenes_shape_colour", "options": SMALL},
         "train": {"lr": 0.05, "epochs": 1, "batch_size": 64}, "imp_train": {"lr": 0.01, "epochs": 1, "batch_size": 64},
         **({"objective_options": {"queue_size": 128}} if label == "moco" else {})}
        for label in ("supervised", "simclr", "moco")
    ],
    "downstream": [{"name": "scenes_shape", "options": {"n_train": 64, "n_val": 32, "n_test": 32}},
                   {"name": "scenes_shifted_shape", "options": {"n_train": 64, "n_val": 32, "n_test": 32}}],
    "downstream_train": {"lr": 0.02, "epochs": 1, "batch_size": 64},
    "downstream_imp_from": ["supervised", "simclr"],
    "prune": {"rounds": 2},
    "baselines": ["random_prune"],
    "transfer_seeds": [0, 1],
    "analysis_round": 2,
}


@pytest.fixture(scope="module")
def study_out(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(TINY_STUDY))
    assert cli.main(["study", str(path), "--runs-dir", str(root / "runs"), "-q"]) == 0
    return root, path


def test_study_writes_report_figures_and_summary(study_out):
    root, _ = study_out
    out = next((root / "runs").glob("study-*"))
    report = (out / "report.md").read_text()
    for heading in ("Tickets on the pre-training tasks", "Tickets found on each downstream task", "Transfer of",
                    "Universal pre-training tickets", "Mask overlap", "Perturbation sensitivity", "Per-layer"):
        assert heading in report
    for figure in ("curves.png", "transfer_heatmap.png", "overlap.png", "layer_sparsity.png"):
        assert (out / figure).stat().st_size > 5_000, figure
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["universal"]) == {"supervised", "simclr", "moco"}
    assert len(summary["pairs"]) == 3 * 2
    variants = {(r["source"], r["variant"]) for r in summary["sensitivity"]}
    assert len(variants) == 3 * 4
    rows = json.loads((out / "transfer_rows.json").read_text())
    assert len(rows) == 3 * 2 * 2 * 3  # sources x targets x seeds x rounds (0..2)
    imp_runs = list((root / "runs").glob("imp-*"))
    assert len(imp_runs) == 3 + 2 * 2
    assert len(list((root / "runs").glob("pretrain-*"))) == 3  # each θp pre-trained once, shared by its runs


def test_rerunning_the_study_recomputes_nothing(study_out):
    root, path = study_out
    stamps = {p: p.stat().st_mtime_ns for p in (root / "runs").rglob("metrics.json")}
    assert cli.main(["study", str(path), "--runs-dir", str(root / "runs"), "-q"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (root / "runs").rglob("metrics.json")} == stamps


def test_transfer_and_analyze_cli_on_study_runs(study_out, capsys, tmp_path):
    root, _ = study_out
    run = next(p for p in (root / "runs").glob("imp-*") if (p / "rounds/round_002").is_dir())
    args = ["--task", "scenes_shape", "--task-options", '{"n_train": 64, "n_val": 32, "n_test": 32}', "-q",
            "--runs-dir", str(root / "runs")]
    assert cli.main(["transfer", "--mask", str(run), "--seeds", "0,1", *args]) == 0
    out = capsys.readouterr().out
    assert "round  2  sparsity  36.00%" in out and "highest matching sparsity" in out
    assert cli.main(["analyze", "overlap", f"{run}:1", f"{run}:2", "--plot", str(tmp_path / "o.png")]) == 0
    out = capsys.readouterr().out
    assert "1.000/1.000" in out and (tmp_path / "o.png").is_file()
    assert cli.main(["analyze", "perturb", f"{run}:2", *args]) == 0
    out = capsys.readouterr().out
    assert all(v in out for v in ("ticket", "complement", "random", "delta10"))
    assert cli.main(["analyze", "layers", f"{run}:2"]) == 0
    assert "36.00% of the prunable weights" in capsys.readouterr().out


def test_bad_study_configs(tmp_path):
    bad = dict(TINY_STUDY, downstream_imp_from=["byol"])
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="known pretraining labels: supervised, simclr, moco"):
        load_study(path)
    bad = dict(TINY_STUDY, pretrainings=[dict(TINY_STUDY["pretrainings"][0], objective="byol")], downstream_imp_from=[])
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="unknown pre-training objective 'byol'"):
        load_study(path)
