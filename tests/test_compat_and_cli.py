"""Run folders written before the architecture change still show, resume and transfer; registry-driven CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ticketlab import cli
from ticketlab.config import config_hash, parse_config
from ticketlab.experiment import run_dir_for
from ticketlab.masks import Mask
from ticketlab.results import read_result
from ticketlab.runfolders import load_run

FIXTURE = Path(__file__).parent / "fixtures" / "imp-6d501ecdd369"  # written by ticketlab d47b731 (before issue 11)


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    runs.mkdir()
    return Path(shutil.copytree(FIXTURE, runs / FIXTURE.name))


def test_old_run_keeps_its_hash_and_shows(old_run, capsys):
    config = parse_config(json.loads((old_run / "config.json").read_text()))
    assert run_dir_for(config, old_run.parent) == old_run  # the content hash did not move
    assert config_hash(config) == "6d501ecdd369"
    assert cli.main(["show", old_run.name, "--runs-dir", str(old_run.parent), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    stored = json.loads((old_run / "rounds/round_002/metrics.json").read_text())
    assert [r["round"] for r in shown["rounds"]] == [0, 1, 2]
    assert shown["rounds"][2]["metrics"]["test_acc"] == stored["test_acc"]
    assert sorted(shown["baselines"]) == ["omp", "random_reinit"]


def test_old_run_resumes_bit_identically(old_run, capsys):
    """A deleted baseline round is recomputed by the new code exactly as the old code computed it."""
    lost = old_run / "baselines/random_reinit/round_002"
    before = json.loads((lost / "metrics.json").read_text())
    mask_before = Mask.load(lost / "mask.safetensors")
    shutil.rmtree(lost)
    stamps = {p: p.stat().st_mtime_ns for p in old_run.rglob("metrics.json")}
    assert cli.main(["find", str(old_run), "-q"]) == 0
    assert capsys.readouterr().out.strip() == str(old_run)
    assert {p: p.stat().st_mtime_ns for p in old_run.rglob("metrics.json") if p in stamps} == stamps
    after = json.loads((lost / "metrics.json").read_text())
    for key in ("final_train_loss", "sparsity", "best_epoch"):
        assert after[key] == before[key], key
    old, new = read_result(before), read_result(after)  # the old flat dict and the new typed record agree
    assert old.scores == new.scores and set(new.scores) == {"val", "test"}
    assert old.metric == "unrecorded" and new.metric == "accuracy" and after["result_version"] == 1
    assert Mask.load(lost / "mask.safetensors") == mask_before
    assert len(load_run(old_run)["baselines"]["random_reinit"]) == 2


def test_old_run_transfers_by_its_run_id(old_run, capsys):
    args = ["transfer", "--mask", f"{old_run.name}:1", "--task", "scenes_colour", "--runs-dir", str(old_run.parent),
            "--task-options", '{"n_train": 32, "n_val": 16, "n_test": 16}', "--epochs", "1", "-q"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "round  1  sparsity  20.00%" in out
    (folder,) = (old_run / "transfer").glob("scenes_colour-*/round_001")
    assert json.loads((folder / "metrics.json").read_text())["sparsity"] == pytest.approx(0.2, abs=1e-3)


def test_list_is_generated_from_the_registries(capsys):
    from ticketlab.baselines import BASELINES
    from ticketlab.models import MODELS
    from ticketlab.studies import STUDIES

    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    sections = {line.rstrip(":") for line in out.splitlines() if not line.startswith(" ")}
    assert sections == {"models", "heads", "tasks", "metrics", "pruning methods", "prune structures", "schedules",
                        "rewind points",
                        "objectives", "baselines", "studies", "job kinds"}
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("  ")}
    assert set(MODELS.names()) | set(BASELINES.names()) | set(STUDIES.names()) <= listed
    assert "  random_reinit          random re-init" in out  # a baseline's label lives next to it
    assert cli.main(["list", "studies"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "studies:" and [line.split()[0] for line in lines[1:]] == STUDIES.names()


def test_study_by_name_rejects_unknown_names(tmp_path, capsys):
    config = tmp_path / "s.yaml"
    config.write_text("seed: 0\n")
    assert cli.main(["study", "lottery", str(config)]) == 2
    err = capsys.readouterr().err
    assert "unknown study 'lottery'; known studies: cv_pretraining, patch_tickets, vl_tickets" in err
    assert cli.main(["study", "cv_pretraining", str(config)]) == 2
    assert "a study needs at least one entry in 'pretrainings'" in capsys.readouterr().err
