"""Every bad input gets a one-line error naming the problem and the fix, and loses nothing written."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import tiny_config
from ticketlab import cli, experiment
from ticketlab.config import parse_config
from ticketlab.data import Split, Task, build_task
from ticketlab.errors import ConfigError, CorruptFileError, DataError, NonFiniteLossError, TicketlabError
from ticketlab.experiment import run_experiment
from ticketlab.tensorfiles import load_state_dict


def write(tmp_path, cfg) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps(cfg))
    return str(path)


def run_cli(args, capsys) -> tuple[int, str]:
    code = cli.main(args)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize(("override", "pattern"), [
    ({"model": {"name": "resnet9000"}}, r"unknown model 'resnet9000'.*; known models: .*resnet20"),
    ({"task": {"name": "imagenet"}}, r"unknown task 'imagenet'.*; known tasks: .*digits"),
    ({"prune": {"method": "snip"}}, r"unknown pruning method 'snip'.*; known pruning methods: .*global_magnitude"),
    ({"prune": {"rewind": "yesterday"}}, r"unknown rewind point 'yesterday'.*; known rewind points: early, init"),
    ({"baselines": ["lucky"]}, r"unknown baseline 'lucky'.*; known baselines: .*omp"),
    ({"prune": {"rate": 1.2}}, r"prune rate 1.2 is out of range"),
    ({"prune": {"rate": 0}}, r"prune rate 0.0 is out of range"),
    ({"prune": {"schedule": "explicit", "sparsities": [0.5, 1.0]}}, r"sparsity 1.0 is out of range.*\[0, 1\)"),
    ({"prune": {"schedule": "cubic"}}, r"bad value 'cubic' for prune.schedule.*; allowed: remaining, original"),
    ({"prune": {"rat": 0.2}},
     r"unknown config key 'prune.rat' \(did you mean 'rate'\?\); allowed keys here: method, schedule"),
    ({"train": {"lr": "fast"}}, r"train.lr must be float, got 'fast'"),
    ({"train": {"optimizer": "lion"}}, r"bad value 'lion' for train.optimizer.*; allowed: sgd, adamw"),
    ({"prune": {"rewind": "early"}}, r"needs prune.rewind_steps > 0"),
])
def test_bad_config_values(tmp_path, capsys, override, pattern):
    cfg = tiny_config(**override)
    code, err = run_cli(["find", write(tmp_path, cfg), "--runs-dir", str(tmp_path / "runs"), "-q"], capsys)
    assert code == 2
    assert len(err.splitlines()) == 1
    assert err.startswith("ticketlab: error: ")
    import re
    assert re.search(pattern, err), err
    assert not list((tmp_path / "runs").glob("imp-*")), "nothing should be created for a bad config"


def test_invalid_yaml(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("model: {name: resnet20\ntask: [")
    code, err = run_cli(["find", str(path), "-q"], capsys)
    assert code == 2 and "is not valid YAML" in err


def test_unwritable_runs_dir(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, err = run_cli(["find", write(tmp_path, tiny_config()), "--runs-dir", str(blocker / "runs"), "-q"], capsys)
    assert code == 2 and "is not writable" in err and "--runs-dir" in err


def test_corrupted_checkpoint_is_detected(tmp_path, capsys):
    ckpt = tmp_path / "model.pth"
    torch.save({"conv1.weight": torch.randn(4, 3, 3, 3)}, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(CorruptFileError, match="truncated"):
        load_state_dict(ckpt)
    st = tmp_path / "model.safetensors"
    st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    cfg = tiny_config(model={"name": "resnet20", "options": {"width": 4}, "checkpoint": str(st)})
    code, err = run_cli(["find", write(tmp_path, cfg), "--runs-dir", str(tmp_path / "runs"), "-q"], capsys)
    assert code == 2 and "not a readable safetensors file" in err


def test_pickled_objects_are_never_unpickled(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.ones(1), "obj": ValueError("not a tensor")}, path)
    with pytest.raises(CorruptFileError, match="weights_only"):
        load_state_dict(path)


def test_empty_and_mislabelled_datasets(tmp_path):
    empty = tmp_path / "empty.npz"
    np.savez(empty, x=np.zeros((0, 8, 8), np.uint8), y=np.zeros((0,), np.int64))
    with pytest.raises(DataError, match="empty"):
        build_task("npz", {"path": str(empty)})
    x = torch.zeros(4, 3, 8, 8)
    bad = Task("t", 3, Split(x, torch.tensor([0, 1, 2, 3])), Split(x, torch.tensor([0, 1, 1, 0])),
               Split(x, torch.tensor([0, 1, 2, 0])))
    with pytest.raises(DataError, match=r"train labels span \[0, 3\] but the task has 3 classes"):
        bad.validate()
    floats = tmp_path / "floats.npz"
    np.savez(floats, x=np.zeros((4, 8, 8), np.uint8), y=np.array([0.5, 1, 0, 1]))
    with pytest.raises(DataError, match="labels must be integers"):
        build_task("npz", {"path": str(floats)})
    with pytest.raises(DataError, match="does not exist"):
        build_task("image_folder", {"path": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="unknown option 'n_trian' for task 'scenes_shape'"):
        build_task("scenes_shape", {"n_trian": 5})


def test_nan_loss_stops_the_round_and_keeps_finished_rounds(tmp_path, monkeypatch, capsys):
    cfg = parse_config(tiny_config(baselines=[]))
    real = experiment.train_model
    calls = {"n": 0}

    def failing_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise NonFiniteLossError("the loss became nan at epoch 1, step 1; lower train.lr")
        return real(*args, **kwargs)

    monkeypatch.setattr(experiment, "train_model", failing_on_third)
    with pytest.raises(NonFiniteLossError):
        run_experiment(cfg, tmp_path, progress=False)
    run_dir = next(tmp_path.glob("imp-*"))
    assert sorted(p.name for p in (run_dir / "rounds").iterdir()) == [".round_002.log", "round_000", "round_001"]
    assert "stopped by NonFiniteLossError: the loss became nan" in (run_dir / "rounds/.round_002.log").read_text()
    stamp = (run_dir / "rounds/round_001/metrics.json").stat().st_mtime_ns
    monkeypatch.setattr(experiment, "train_model", real)
    run_experiment(cfg, tmp_path, progress=False)
    assert (run_dir / "rounds/round_002/metrics.json").is_file()
    assert (run_dir / "rounds/round_001/metrics.json").stat().st_mtime_ns == stamp


def test_cli_reports_nan_in_one_line(tmp_path):
    cfg = tiny_config(train={"lr": 1.0e30, "epochs": 1, "batch_size": 32, "momentum": 0.9}, baselines=[])
    proc = subprocess.run([sys.executable, "-m", "ticketlab", "find", write(tmp_path, cfg), "-q",
                           "--runs-dir", str(tmp_path / "runs")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "ticketlab: error: the loss became" in proc.stderr and "lower train.lr" in proc.stderr


def test_errors_are_ticketlab_errors():
    for cls in (ConfigError, CorruptFileError, DataError, NonFiniteLossError):
        assert issubclass(cls, TicketlabError)
