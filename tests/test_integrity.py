"""Runs you can trust after any crash: each failure is one line + exit 2, nothing finished is lost, status is right."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors import SafetensorError

from tests.conftest import tiny_config
from ticketlab import cli
from ticketlab.config import parse_config
from ticketlab.errors import DivergenceError, NonFiniteLossError
from ticketlab.experiment import run_dir_for, run_experiment
from ticketlab.fileio import MANIFEST
from ticketlab.masks import Mask
from ticketlab.step import TrainStep
from ticketlab.store import ResultStore

TWO_ROUNDS = dict(prune={"rounds": 2}, baselines=["random_prune"])


def write(tmp_path: Path, cfg: dict, name: str = "c.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def one_line_error(capsys, argv: list[str], match: str) -> str:
    """Run the CLI; it must exit 2 with exactly one stderr line containing ``match`` and no traceback."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("ticketlab: error: ") and match in err, err
    return err


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and "round_00" in str(p) and p.name != MANIFEST and not p.name.endswith(".checkpoint.pt")
            and not (p.name.startswith(".") and p.name.endswith(".log"))}  # an unfinished unit's own log


@pytest.fixture
def finished(tmp_path):
    cfg = tiny_config(**TWO_ROUNDS)
    run = run_experiment(parse_config(cfg), tmp_path / "runs", progress=False)
    return tmp_path, cfg, run


# -- divergence ------------------------------------------------------------------------------------------
def test_divergence_without_nan_is_stopped_naming_the_key(tmp_path, capsys):
    cfg = tiny_config(train={"lr": 100.0, "epochs": 2, "batch_size": 32}, prune={"rounds": 1}, baselines=[])
    err = one_line_error(capsys, ["find", write(tmp_path, cfg), "-q", "--runs-dir", str(tmp_path / "runs")],
                         "training diverged")
    assert "lower train.lr" in err
    run = run_dir_for(parse_config(cfg), tmp_path / "runs")
    assert not (run / "rounds/round_000").exists()  # no round is saved as done
    assert json.loads((run / "status.json").read_text())["status"] == "failed"


def test_divergence_rule_on_numbers():
    model = torch.nn.Linear(2, 2)
    step = TrainStep(model, parse_config(tiny_config()).train, 10, config_key="pretrain.train", reference_steps=2)
    step.check_loss(1.2)
    step.check_loss(1.0)
    step.check_loss(99.0)  # under 100 × 1.0
    with pytest.raises(DivergenceError, match=r"100× its first steps' value 1; .*pretrain.train.lr"):
        step.check_loss(101.0)
    with pytest.raises(NonFiniteLossError, match="lower pretrain.train.lr"):
        step.check_loss(float("nan"))
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    with pytest.raises(DivergenceError, match="weight holds NaN or infinite"):
        step.check_weights()


def test_a_nan_checkpoint_is_rejected_before_it_becomes_theta_p(tmp_path, capsys):
    from ticketlab.models import build_model

    state = build_model("resnet20", 3, {"width": 4}).backbone.state_dict()
    state["conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "bad.pt")
    cfg = tiny_config(model={"name": "resnet20", "options": {"width": 4}, "checkpoint": str(tmp_path / "bad.pt")})
    one_line_error(capsys, ["find", write(tmp_path, cfg), "-q", "--runs-dir", str(tmp_path / "runs")],
                   "NaN or infinite values in 'conv1.weight'")


def test_reports_show_chance_and_flag_rounds_at_chance(finished):
    _, _, run = finished
    metrics = json.loads((run / "rounds/round_001/metrics.json").read_text())
    labels = [0] * 0
    assert metrics["n_test"] == 48 and 0 < metrics["chance_test"] < 1
    lines = (run / "rounds/round_001/metrics.jsonl").read_text().splitlines()
    history = [json.loads(line)["val_score"] for line in lines]
    from ticketlab.stats import converged

    assert metrics["converged"] is converged(history)  # the usable-reference rule's input, recorded per training
    from ticketlab.data import build_task

    test = build_task("scenes_shape", {"n_train": 96, "n_val": 48, "n_test": 48}).test
    labels = test.y.tolist()
    assert metrics["chance_test"] == max(labels.count(c) for c in set(labels)) / len(labels)
    results = (run / "results.md").read_text()
    assert f"chance (majority class of the 48 test examples): {metrics['chance_test']:.2%}" in results
    from ticketlab.analysis import at_chance

    assert at_chance(0.40, 0.35, 100) and not at_chance(0.50, 0.35, 100)  # 0.35 + 2·0.0477 = 0.445


# -- one error boundary ------------------------------------------------------------------------------------
@pytest.mark.parametrize("failure, match", [
    (SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space left "
                     "on device\" })"), "disk full"),
    (OSError(errno.EROFS, "Read-only file system"), "read-only"),
])
def test_write_failures_mid_run_are_one_line_and_keep_finished_rounds(finished, monkeypatch, capsys, failure, match):
    tmp_path, cfg, run = finished
    shutil.rmtree(run / "baselines/random_prune/round_002")
    before = snapshot(run)

    def broken(*args, **kwargs):
        raise failure

    monkeypatch.setattr("safetensors.torch.save_file", broken)  # fileio imports it where it writes
    one_line_error(capsys, ["find", str(run), "-q"], match)
    after = snapshot(run)
    assert {k: v for k, v in after.items()} == before  # earlier rounds bit-identical
    assert not list(run.rglob(".*.tmp-*"))  # no temp left behind
    assert json.loads((run / "status.json").read_text())["status"] == "failed"


def test_index_disk_full_is_one_line(finished, monkeypatch, capsys):
    _, _, run = finished
    shutil.rmtree(run / "baselines/random_prune/round_002")
    before = snapshot(run)

    class Full:
        def __init__(self, db):
            self.db = db

        def __enter__(self):
            self.db.__enter__()
            return self

        def __exit__(self, *exc):
            return self.db.__exit__(*exc)

        def __getattr__(self, name):
            return getattr(self.db, name)

        def execute(self, sql, *args):
            if sql.startswith("INSERT OR REPLACE INTO results"):
                raise sqlite3.OperationalError("database or disk is full")
            return self.db.execute(sql, *args)

    real = ResultStore._connect
    monkeypatch.setattr(ResultStore, "_connect", lambda self: Full(real(self)))
    one_line_error(capsys, ["find", str(run), "-q"], "disk full")
    assert snapshot(run) == before
    assert json.loads((run / "status.json").read_text())["status"] == "failed"


def test_transfer_from_an_unwritable_run_fails_before_training(finished, capsys):
    _, _, run = finished
    (run / "transfer").write_text("not a folder")  # nothing can be written there
    args = ["transfer", "--mask", f"{run}:1", "--task", "scenes_shape", "-q"]
    started = time.perf_counter()
    one_line_error(capsys, args, "is read-only")
    assert time.perf_counter() - started < 5


def test_bad_data_files_are_one_line(tmp_path, capsys):
    from PIL import Image

    obj = tmp_path / "objects.npz"
    np.savez(obj, x=np.array([object(), 1], dtype=object), y=np.array([0, 1]))
    (tmp_path / "notzip.npz").write_bytes(b"hello")
    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / cls / "ok.png")
    (tmp_path / "imgs/a/broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    (tmp_path / "emptyhf").mkdir()
    cases = [("npz", obj, "object arrays"), ("npz", tmp_path / "notzip.npz", "not a readable .npz"),
             ("image_folder", tmp_path / "imgs", "broken.png is not a readable image"),
             ("hf_disk", tmp_path / "emptyhf", "save_to_disk")]
    for name, path, match in cases:
        cfg = tiny_config(task={"name": name, "options": {"path": str(path)}})
        one_line_error(capsys, ["find", write(tmp_path, cfg), "-q", "--runs-dir", str(tmp_path / "runs")], match)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("imp-*"))


def test_bad_hf_weights_are_one_line(tmp_path, capsys):
    from transformers import BertConfig

    BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
               vocab_size=50).save_pretrained(tmp_path / "bert")
    (tmp_path / "bert/model.safetensors").write_bytes(b"garbage")
    cfg = tiny_config(model={"name": "bert", "options": {"path": str(tmp_path / "bert")}})
    one_line_error(capsys, ["prunable", write(tmp_path, cfg)], "could not load a Hugging Face model")


@pytest.mark.parametrize("content", [b'{"round": 1}', b"\xff\xfe not utf-8", b"[1, 2]"])
def test_bad_metrics_files_are_one_line(finished, capsys, content):
    _, _, run = finished
    (run / "rounds/round_001/metrics.json").write_bytes(content)
    err = one_line_error(capsys, ["show", str(run)], "round_001")
    assert "delete" in err


def test_show_into_a_closed_pipe_is_quiet(finished):
    _, _, run = finished
    proc = subprocess.run(f"{sys.executable} -m ticketlab show {run} | head -1", shell=True, capture_output=True,
                          text=True, timeout=120)
    assert proc.stdout.startswith("| round") and proc.stderr == ""


# -- the index is a cache --------------------------------------------------------------------------------
def test_corrupt_missing_or_stale_index_heals(finished, capsys):
    tmp_path, _, run = finished
    runs = run.parent
    copied = runs / "imp-000000000000"
    shutil.copytree(run, copied)  # a run folder copied in from elsewhere
    (runs / "ticketlab.sqlite").write_bytes(b"this is not a database" * 100)
    assert cli.main(["ls", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert f"{run.name}  done" in out and "imp-000000000000  done" in out
    assert list(runs.glob("ticketlab.sqlite.broken-*"))  # moved aside, not deleted
    (runs / "ticketlab.sqlite").unlink()
    assert cli.main(["ls", "--runs-dir", str(runs), "--reindex"]) == 0
    out = capsys.readouterr().out
    assert "index rebuilt from the run folders: 2 runs" in out and out.count("  done ") == 2


# -- verified files --------------------------------------------------------------------------------------
def test_every_finished_round_has_a_manifest_and_verify_names_what_to_delete(finished, capsys):
    _, _, run = finished
    manifest = json.loads((run / "rounds/round_001" / MANIFEST).read_text())
    assert {"mask.safetensors", "mask.json", "metrics.json"} <= set(manifest["files"])
    assert manifest["released"] == ["final_weights.json", "final_weights.safetensors", "weights.json",
                                    "weights.safetensors"]  # keep: needed
    assert cli.main(["verify", str(run)]) == 0
    capsys.readouterr()
    mask = run / "rounds/round_002/mask.safetensors"
    mask.write_bytes(mask.read_bytes()[:-7])  # truncated
    err = one_line_error(capsys, ["show", str(run)], "round_002")
    assert "delete" in err
    assert cli.main(["verify", str(run)]) == 2
    captured = capsys.readouterr()
    assert "round_002/mask.safetensors: checksum mismatch" in captured.out
    one_line_error(capsys, ["find", str(run), "-q"], "round_002")


def test_a_missing_sidecar_is_corruption(finished, capsys):
    _, _, run = finished
    (run / "init/theta_p.json").unlink()
    shutil.rmtree(run / "baselines/random_prune/round_002")
    one_line_error(capsys, ["find", str(run), "-q"], "theta_p.safetensors has no checksum sidecar")


def test_masks_are_bit_packed(finished):
    _, _, run = finished
    mask = Mask.load(run / "rounds/round_001/mask.safetensors")
    size = (run / "rounds/round_001/mask.safetensors").stat().st_size
    assert size < mask.num_total() / 8 + 2_000
    assert mask.sparsity() == pytest.approx(0.2, abs=1e-3)


def test_files_and_folders_honour_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        run = run_experiment(parse_config(tiny_config(prune={"rounds": 1}, baselines=[])), tmp_path, progress=False)
    finally:
        os.umask(old)
    folder = run / "rounds/round_001"
    assert folder.stat().st_mode & 0o777 == 0o750
    for name in ("mask.safetensors", "mask.json", "metrics.json", MANIFEST):
        assert (folder / name).stat().st_mode & 0o777 == 0o640, name
    assert (run / "init/theta_p.safetensors").stat().st_mode & 0o777 == 0o640


def test_stale_temps_are_removed_only_when_their_owner_is_dead(finished):
    _, _, run = finished
    dead = run / ".round_009.tmp-999999999-abc"
    live = run / f".metrics.json.tmp-{os.getppid()}-abc"
    dead.mkdir()
    live.write_text("{}")
    assert cli.main(["find", str(run), "-q"]) == 0
    assert not dead.exists() and live.exists()


# -- lock and status -------------------------------------------------------------------------------------
def test_second_process_on_a_run_is_refused_and_a_killed_run_is_interrupted(tmp_path):
    cfg = tiny_config(train={"lr": 0.05, "epochs": 30, "batch_size": 32}, prune={"rounds": 3}, baselines=[])
    path = write(tmp_path, cfg)
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "ticketlab", "find", path, "-q", "--runs-dir", str(runs)]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = run_dir_for(parse_config(cfg), runs)
    deadline = time.time() + 120
    while not (run / "status.json").is_file() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert second.returncode == 2 and f"is in use by process {first.pid}" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    listing = subprocess.run([sys.executable, "-m", "ticketlab", "ls", "--runs-dir", str(runs)], capture_output=True,
                             text=True, timeout=120).stdout
    assert f"{run.name}  running" in listing
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 143 and "terminated (SIGTERM); finished rounds are saved" in err
    assert json.loads((run / "status.json").read_text())["status"] == "interrupted"
    again = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while json.loads((run / "status.json").read_text())["status"] != "running" and time.time() < deadline:
        time.sleep(0.2)
    again.send_signal(signal.SIGKILL)
    again.wait(timeout=60)
    listing = subprocess.run([sys.executable, "-m", "ticketlab", "ls", "--runs-dir", str(runs)], capture_output=True,
                             text=True, timeout=120).stdout
    assert f"{run.name}  interrupted" in listing  # running only while a live process holds the lock


# -- validate before writing ------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, match", [
    ({"model": {"name": "resnet20", "options": {"width": "x"}}}, "model.options.width of model 'resnet20' must be int"),
    ({"model": {"name": "resnet20", "options": {"widht": 4}}}, "unknown option 'widht'"),
    ({"model": {"name": "resnet20", "options": {"width": 0}}}, "model.options.width of model 'resnet20' must be in [1"),
    ({"task": {"name": "scenes_shape", "options": {"n_train": "10"}}}, "task.options.n_train"),
    ({"task": {"name": "scenes_shape", "options": {"n_val": 0}}}, "task.options.n_val"),
    ({"task": {"name": "scenes_shape", "options": {"image_size": 16}}}, "must be in [32, 64]"),
    ({"prune": {"rounds": 60}}, "cannot be reached"),
])
def test_bad_configs_fail_before_anything_is_written(tmp_path, capsys, overrides, match):
    cfg = tiny_config(**overrides)
    one_line_error(capsys, ["find", write(tmp_path, cfg), "-q", "--runs-dir", str(tmp_path / "runs")], match)
    assert not list((tmp_path / "runs").glob("imp-*")) if (tmp_path / "runs").exists() else True
    assert not (tmp_path / "runs/ticketlab.sqlite").exists()


def test_empty_huge_and_alias_bomb_configs_are_rejected(tmp_path, capsys):
    (tmp_path / "empty.yaml").write_text("")
    one_line_error(capsys, ["find", str(tmp_path / "empty.yaml"), "--runs-dir", str(tmp_path / "runs")], "is empty")
    pairs = zip("abcdefgh", "bcdefghi", strict=True)
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in pairs)
    (tmp_path / "bomb.yaml").write_text("model:\n  name: resnet20\n  options:\n" + "".join(
        "    " + line + "\n" for line in bomb.splitlines()))
    assert (tmp_path / "bomb.yaml").stat().st_size < 1000
    one_line_error(capsys, ["find", str(tmp_path / "bomb.yaml"), "--runs-dir", str(tmp_path / "runs")],
                   "expands to more than")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_cli_arguments_are_validated_like_config_values(finished, capsys):
    _, _, run = finished
    base = ["transfer", "--mask", f"{run.name}:1", "--runs-dir", str(run.parent), "-q"]
    one_line_error(capsys, base, "needs --task NAME")
    one_line_error(capsys, [*base, "--task", "scenes_shape", "--task-options", "{n_train: 3"], "not valid JSON")
    one_line_error(capsys, [*base, "--task", "scenes_shape", "--seeds", "0,x"], "--seeds must be comma-separated")
    one_line_error(capsys, [*base, "--task", "scenes_shape", "--task-options", '{"n_train": "3"}'],
                   "--task-options.n_train")


def test_theta_p_is_stored_once_per_pretraining_and_referenced(tmp_path, capsys):
    from tests.conftest import TINY_SCENES
    from ticketlab.runfolders import load_theta_p
    from ticketlab.tensorfiles import load_tensors

    pretrain = {"objective": "supervised", "task": {"name": "scenes_colour", "options": TINY_SCENES},
                "train": {"epochs": 1, "batch_size": 32, "lr": 0.05}, "seed": 0}
    runs = [run_experiment(parse_config(tiny_config(seed=s, pretrain=pretrain, prune={"rounds": 1}, baselines=[])),
                           tmp_path, progress=False) for s in (1, 2)]
    (checkpoint,) = tmp_path.glob("pretrain-*/backbone.safetensors")
    backbone, _ = load_tensors(checkpoint)
    for run in runs:
        stored, meta = load_tensors(run / "init/theta_p.safetensors")
        assert set(stored) == {"head.weight", "head.bias"} and meta["backbone_from"].endswith("backbone.safetensors")
        theta_p = load_theta_p(run)
        assert all(torch.equal(theta_p[f"backbone.{k}"], v) for k, v in backbone.items())
    checkpoint.write_bytes(checkpoint.read_bytes()[:-9])
    one_line_error(capsys, ["transfer", "--mask", f"{runs[0]}:1", "--task", "scenes_shape", "-q"], "pretrain-")
