"""Data held on the device (``engine.data_on_device``) and the batched augmentation that runs there."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import tiny_config
from ticketlab.augment import cifar_crop_flip
from ticketlab.config import parse_config
from ticketlab.errors import ConfigError
from ticketlab.experiment import run_experiment


def test_on_device_training_gives_the_same_round_as_the_loader(tmp_path):
    def run(on: bool):  # noqa: ANN202
        cfg = tiny_config(train={"optimizer": "sgd", "lr": 0.05, "epochs": 2, "batch_size": 16, "augment": "cifar"},
                          prune={"rounds": 1}, baselines=[], engine={"data_on_device": on})
        folder = run_experiment(parse_config(cfg), tmp_path / str(on), progress=False)
        return [json.loads((folder / f"rounds/round_00{k}/metrics.json").read_text()) for k in (0, 1)]

    for held, loaded in zip(run(True), run(False), strict=True):
        assert held["score"] == loaded["score"] and held["final_train_loss"] == loaded["final_train_loss"]


def test_on_device_refuses_a_split_that_does_not_fit(tmp_path, monkeypatch):
    from ticketlab.data import loader

    monkeypatch.setattr(loader, "free_bytes", lambda device: 1000)
    cfg = tiny_config(prune={"rounds": 1}, baselines=[], engine={"data_on_device": True})
    with pytest.raises(ConfigError, match=r"needs 0\.\d+ GiB but cpu has 0\.00 GiB free"):
        run_experiment(parse_config(cfg), tmp_path, progress=False)


def test_batched_crop_and_flip_are_uniform_and_deterministic_per_seed():
    n, pad = 4000, 4
    x = torch.arange(32 * 32, dtype=torch.float32).view(1, 1, 32, 32).expand(n, 1, 32, 32).contiguous()
    out = cifar_crop_flip(x, torch.Generator().manual_seed(0), pad)
    assert torch.equal(out, cifar_crop_flip(x, torch.Generator().manual_seed(0), pad))
    centre = out[:, 0, 16, 16]  # the value at the centre tells the offsets (dy, dx) and the flip
    row, col = torch.div(centre, 32, rounding_mode="floor").long(), (centre % 32).long()
    dy = row - 16 + pad
    first = out[:, 0, 16, 15]  # the left neighbour: one column less unless flipped
    flipped = (first % 32) > col
    counts = torch.bincount(dy, minlength=2 * pad + 1).double()
    assert counts.numel() == 2 * pad + 1 and (counts - n / (2 * pad + 1)).abs().max() < 4 * (n / 9) ** 0.5
    assert abs(flipped.double().mean() - 0.5) < 0.05


def test_channels_last_is_refused_on_cpu_and_compile_where_unavailable(tmp_path, monkeypatch):
    """channels_last on CPU: torch 2.13's oneDNN backward hangs on the second step (it stalled CI for 90 minutes),
    so it is refused before any training; compile is refused where dynamo is unsupported."""
    def run(engine: dict, name: str) -> None:
        cfg = tiny_config(train={"optimizer": "sgd", "lr": 0.05, "epochs": 1, "batch_size": 16},
                          prune={"rounds": 1}, baselines=[], engine=engine)
        run_experiment(parse_config(cfg), tmp_path / name, progress=False)

    with pytest.raises(ConfigError, match="engine.channels_last: .* set engine.channels_last: false on CPU"):
        run({"channels_last": True}, "cl")
    assert not (tmp_path / "cl").exists() or not list((tmp_path / "cl").rglob("metrics.json"))
    import torch._dynamo

    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    with pytest.raises(ConfigError, match="torch.compile is unavailable"):
        run({"compile": True}, "compiled")
