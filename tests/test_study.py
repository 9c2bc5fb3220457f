"""The CV pre-training study end to end, on a reduced setting (tiny data, 1 epoch, 2 rounds)."""

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import assert_figure
from ticketlab import cli
from ticketlab.errors import ConfigError
from ticketlab.studies import load_study

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).parent.parent / "examples" / "cv_pretraining_study.yaml"


def reduced(config: dict) -> dict:
    """The shipped study config shrunk to seconds: tiny data, one epoch, two rounds, same structure."""
    small = {"n_train": 96, "n_val": 48, "n_test": 48}
    out = copy.deepcopy(config)
    out["model"]["options"]["width"] = 4
    for p in out["pretrainings"]:
        p["task"]["options"] = dict(small)
        p["train"].update(epochs=1, batch_size=48)
        p["imp_train"].update(epochs=1, batch_size=48)
        if p["objective"] == "moco":
            p["objective_options"]["queue_size"] = 96
    for t in out["downstream"]:
        if t["name"].startswith("scenes"):
            t["options"] = {**small, "seed": t["options"].get("seed", 0)}  # keeps its own scene streams
    out["downstream_train"].update(epochs=1)
    out["prune"]["rounds"] = 2
    out["analysis_round"] = 2
    out["baseline_rounds"] = [2]
    out["seeds"] = out["seeds"][:2]
    out["replicates"] = min(out.get("replicates", 1), 2)  # 2 θp replicates x the seeds: every unit-keyed path runs
    return out


TINY_STUDY = reduced(yaml.safe_load(EXAMPLE.read_text()))
LABELS = [p["label"] for p in TINY_STUDY["pretrainings"]]
TARGETS = len(TINY_STUDY["downstream"])
REPLICATES = TINY_STUDY["replicates"]
UNITS = [s + 1000 * r for r in range(REPLICATES) for s in TINY_STUDY["seeds"]]  # θp replicate x seed
SEEDS = len(UNITS)


@pytest.fixture(scope="module")
def study_out(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(TINY_STUDY))
    assert cli.main(["study", "cv_pretraining", str(path), "--runs-dir", str(root / "runs"), "-q"]) == 0
    return root, path


def test_study_writes_report_figures_and_summary(study_out):
    root, _ = study_out
    out = next((root / "runs").glob("study-*"))
    report = (out / "report.md").read_text()
    assert "| chance |" in report or "| chance | dense |" in report
    assert report.index("## Verdicts") < report.index("## 1.")  # the verdict table opens the report
    verdict_section = report[:report.index("## 1.")]
    verdict_rows = [line for line in verdict_section.splitlines()
             if line.endswith(("| reproduced |", "| contradicted |", "| inconclusive |", "| not tested |"))]
    # 3 own-task claims, 3 x targets transfers, 2 baselines x targets, 3 sources x 2 perturbations, 1 overlap
    assert len(verdict_rows) == 3 + 3 * TARGETS + 2 * TARGETS + 6 + 1
    for heading in ("Tickets on the pre-training tasks", "Tickets found on each downstream task", "Transfer of",
                    "Universal pre-training tickets", "Mask overlap", "Perturbation sensitivity", "Per-layer"):
        assert heading in report
    for figure in ("curves.png", "transfer_heatmap.png", "overlap.png", "layer_sparsity.png"):
        assert_figure(out / figure)
    compute = re.search(r"compute of every training behind this report: (\d+) units, ([\d,]+) optimizer steps",
                        report)
    assert compute and int(compute[1]) > 3 * SEEDS and int(compute[2].replace(",", "")) > 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["universal"]) == set(LABELS) == {"supervised", "simclr", "moco"}
    assert len(summary["pairs"]) == 3 * TARGETS
    variants = {(r["source"], r["variant"]) for r in summary["sensitivity"]}
    assert len(variants) == 3 * 4
    assert {r["seed"] for r in summary["sensitivity"]} == set(UNITS)  # unit i's ticket, fine-tuned with unit i
    rows = json.loads((out / "transfer_rows.json").read_text())
    assert len(rows) == 3 * TARGETS * SEEDS * 3  # sources x targets x seeds x rounds (0..2)
    imp_runs = list((root / "runs").glob("imp-*"))
    # pre-training tickets + downstream tickets from the supervised θp, each once per seed
    assert len(imp_runs) == (3 + TARGETS) * SEEDS
    assert len(list((root / "runs").glob("pretrain-*"))) == 3 * REPLICATES  # each θp replicate once, shared by seeds
    overlap = next(r for r in json.loads((out / "verdicts.json").read_text())["rows"] if "mask overlap" in r["claim"])
    assert overlap["rule"] == "drop" and len(overlap["drops"]) == REPLICATES  # judged over replicate pairs
    baselines = [p for p in imp_runs if (p / "baselines").is_dir()]
    assert len(baselines) == TARGETS * SEEDS


def test_rerunning_the_study_recomputes_nothing(study_out):
    root, path = study_out
    stamps = {p: p.stat().st_mtime_ns for p in (root / "runs").rglob("metrics.json")}
    # the old form `ticketlab study CONFIG` is an alias of `ticketlab study cv_pretraining CONFIG`
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
    lines = capsys.readouterr().out.splitlines()[1:3]
    rows = [[t for t in line.split()[1:] if "/" in t and not t.endswith(")")] for line in lines]
    # round 2 keeps 64 % of the weights, all inside round 1's 80 %: IoU 0.8, shared 0.8 (1 -> 2) and 1.0 (2 -> 1)
    assert rows == [["1.000/1.000", "0.800/0.800"], ["0.800/1.000", "1.000/1.000"]]
    chance = [t.rstrip(")") for t in lines[0].split() if t.endswith(")")]
    assert 0.5 < float(chance[1].split("/")[0]) < 0.6  # random 80 % and 64 % masks: IoU ≈ 0.512 / 0.928
    assert_figure(tmp_path / "o.png")
    assert cli.main(["analyze", "perturb", f"{run}:2", *args]) == 0
    out = capsys.readouterr().out
    assert all(v in out for v in ("ticket", "complement", "random", "delta10"))
    assert cli.main(["analyze", "layers", f"{run}:2"]) == 0
    assert "36.00% of the prunable weights" in capsys.readouterr().out


def test_bad_study_configs(tmp_path):
    path = tmp_path / "rounds.yaml"
    path.write_text(yaml.safe_dump(dict(TINY_STUDY, baseline_rounds=[1])))  # analysis_round is 2
    with pytest.raises(ConfigError, match="baseline_rounds \\[1\\] must include analysis_round \\(2\\)"):
        load_study("cv_pretraining", path)
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump(dict(TINY_STUDY, claims={"cifar10": 0.9})))  # a typo would lose a verdict
    with pytest.raises(ConfigError, match="claims names cifar10: not a pretraining label or downstream task"):
        load_study("cv_pretraining", path)
    bad = dict(TINY_STUDY, downstream_imp_from=["byol"])
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="known pretraining labels: supervised, simclr, moco"):
        load_study("cv_pretraining", path)
    bad = dict(TINY_STUDY, pretrainings=[dict(TINY_STUDY["pretrainings"][0], objective="byol")], downstream_imp_from=[],
               claims={})
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="unknown pre-training objective 'byol'"):
        load_study("cv_pretraining", path)


def test_verdicts_are_rederived_from_verdicts_json_alone(study_out, capsys, tmp_path):
    import shutil

    root, _ = study_out
    out = next((root / "runs").glob("study-*"))
    copy_dir = tmp_path / "report"  # only the report and its verdicts.json: no runs folder needed
    copy_dir.mkdir()
    for name in ("report.md", "verdicts.json"):
        shutil.copy(out / name, copy_dir / name)
    assert cli.main(["verdicts", str(copy_dir)]) == 0
    printed = capsys.readouterr().out
    assert "all match the report" in printed
    data = json.loads((copy_dir / "verdicts.json").read_text())
    recorded = [r for r in data["rows"] if r["rule"] in ("sparsity", "comparison")]
    assert recorded and all(isinstance(v, float) for r in recorded if r["rule"] == "comparison" for v in r["a"].values())
    row = next(r for r in data["rows"] if r["rule"] == "comparison" and r["verdict"] != "reproduced")
    row["usable"] = True  # hand-edited: A usable and far above B on every seed
    for seed in row["a"]:
        row["a"][seed] = row["b"][seed] + 0.3 + 1e-6 * int(seed)
    (copy_dir / "verdicts.json").write_text(json.dumps(data))
    assert cli.main(["verdicts", str(copy_dir)]) == 2
    err = capsys.readouterr().err
    assert row["claim"] in err and "differ" in err and len(err.strip().splitlines()) == 1
    (copy_dir / "verdicts.json").unlink()
    assert cli.main(["verdicts", str(copy_dir)]) == 2
    assert "has no verdicts.json" in capsys.readouterr().err
