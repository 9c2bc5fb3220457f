"""The engine: device/precision checks, batch splitting, bf16 on CPU, accumulation, augmentation, checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import TINY_SCENES, digits_config_file, tiny_config
from ticketlab import cli
from ticketlab.augment import cifar_crop_flip
from ticketlab.config import EngineConfig, TrainConfig, config_hash, parse_config
from ticketlab.data import build_task
from ticketlab.engine import resolve
from ticketlab.errors import ConfigError, TicketlabError
from ticketlab.masks import Mask
from ticketlab.models import build_model
from ticketlab.prunable import prunable_names
from ticketlab.pruning import prune
from ticketlab.results import score
from ticketlab.train import train_model


@pytest.fixture(scope="module")
def task():
    return build_task("scenes_shape", TINY_SCENES)


def masked(task, sparsity=0.5):
    model = build_model("resnet20", task.num_classes, {"width": 4}, seed=1)
    names = prunable_names(model)
    params = dict(model.named_parameters())
    return model, prune("global_magnitude", {n: params[n] for n in names}, Mask.ones(model, names), sparsity)


def test_impossible_engine_settings_are_one_line_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA device is visible"):
        resolve(EngineConfig(device="cuda"))
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        resolve(EngineConfig(precision="fp16"))
    assert resolve(EngineConfig(precision="auto")) == ("cpu", "fp32")
    cfg = tiny_config(engine={"grad_accumulation": 3})  # batch 32 does not split into 3 micro-batches
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main(["find", str(path), "-q", "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "not divisible by 1 processes × 3 accumulation steps" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("imp-*"))


def test_engine_values_that_change_results_are_hashed_and_the_others_are_not():
    base = parse_config(tiny_config())
    assert config_hash(parse_config(tiny_config(engine={"checkpoint_every": 7, "device": "cpu"}))) \
        == config_hash(base)
    assert config_hash(parse_config(tiny_config(engine={"precision": "bf16"}))) != config_hash(base)
    assert config_hash(parse_config(tiny_config(engine={"grad_accumulation": 2}))) != config_hash(base)


def test_bf16_on_cpu_keeps_masks_exact(task):
    model, mask = masked(task)
    result = train_model(model, task, TrainConfig(lr=0.05, epochs=1, batch_size=32), seed=0, mask=mask,
                         engine=EngineConfig(precision="bf16"))
    assert result.metrics["precision"] == "bf16" and result.metrics["world_size"] == 1
    for name, keep in mask.tensors.items():
        assert torch.count_nonzero(result.state[name][~keep]) == 0
        assert result.state[name].dtype == torch.float32  # autocast: weights stay fp32


def test_accumulation_matches_one_big_batch(task):
    """Two micro-batches of 16 with the loss halved give the gradient of one batch of 32 (no BatchNorm
    difference for a model without BatchNorm): the same weights up to float rounding."""
    cfg = {"config": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
                      "image_size": 32, "patch_size": 8, "hidden_dropout_prob": 0.0,
                      "attention_probs_dropout_prob": 0.0}}
    recipe = TrainConfig(optimizer="sgd", lr=0.05, momentum=0.0, weight_decay=0.0, epochs=1, batch_size=32)
    states = []
    for accumulation in (1, 2):
        model = build_model("vit", task.num_classes, cfg, seed=0)
        states.append(train_model(model, task, recipe, seed=0,
                                  engine=EngineConfig(grad_accumulation=accumulation)).state)
    assert all(torch.allclose(states[0][k], states[1][k], atol=1e-5) for k in states[0])


def test_cifar_augmentation_is_a_seeded_crop_of_the_padded_image():
    x = torch.randn(6, 3, 8, 8)
    a = cifar_crop_flip(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, cifar_crop_flip(x, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, x)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(len(x)):
        crops = [img[:, dy : dy + 8, dx : dx + 8] for img in (padded[i], padded[i].flip(-1))
                 for dy in range(9) for dx in range(9)]
        assert any(torch.equal(a[i], c) for c in crops), i


def test_supervised_augmentation_changes_training_but_not_masks(task):
    results = []
    for augment in ("none", "cifar", "imagenet"):
        model, mask = masked(task)
        results.append(train_model(model, task, TrainConfig(lr=0.05, epochs=1, batch_size=32, augment=augment),
                                   seed=0, mask=mask))
        assert all(torch.count_nonzero(results[-1].state[n][~k]) == 0 for n, k in mask.tensors.items())
    assert results[0].metrics["final_train_loss"] != results[1].metrics["final_train_loss"]


def test_a_checkpoint_from_another_config_is_refused(task, tmp_path):
    checkpoint = tmp_path / ".round.checkpoint.pt"
    model, _ = masked(task)
    train_model(model, task, TrainConfig(lr=0.05, epochs=1, batch_size=32), seed=0, checkpoint=checkpoint)
    assert checkpoint.is_file()  # deleted by the caller once the result is saved, not by the loop
    model, _ = masked(task)
    with pytest.raises(TicketlabError, match="belongs to a different config"):
        train_model(model, task, TrainConfig(lr=0.01, epochs=1, batch_size=32), seed=0, checkpoint=checkpoint)
    checkpoint.write_bytes(b"garbage")
    with pytest.raises(TicketlabError, match="unreadable"):
        train_model(model, task, TrainConfig(lr=0.05, epochs=1, batch_size=32), seed=0, checkpoint=checkpoint)


@pytest.mark.slow
def test_two_processes_with_gloo_match_one_process(tmp_path):
    """torchrun --nproc_per_node 2 on CPU: the run completes, both ranks hold the same masks, pruned weights are
    exactly zero, sparsity is exact, and test accuracy is within 2 points of the 1-process run (same global batch)."""
    from ticketlab.runfolders import load_run
    from ticketlab.tensorfiles import load_tensors

    path = digits_config_file(tmp_path, epochs=6, rounds=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    single = subprocess.run([sys.executable, "-m", "ticketlab", "find", str(path), "-q", "--runs-dir",
                             str(tmp_path / "one")], capture_output=True, text=True, env=env, timeout=600)
    assert single.returncode == 0, single.stderr
    torchrun = Path(sys.executable).with_name("torchrun")
    double = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "ticketlab", "find", str(path), "-q",
                             "--runs-dir", str(tmp_path / "two")], capture_output=True, text=True, env=env,
                            timeout=600)
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = (load_run(next((tmp_path / d).glob("imp-*"))) for d in ("one", "two"))
    for row in two["rounds"]:
        assert row["metrics"]["world_size"] == 2 and row["metrics"]["ranks_agree_on_mask"] is True
    for k in (1, 2):
        mask = Mask.load(Path(two["path"]) / f"rounds/round_{k:03d}/mask.safetensors")
        assert mask.num_pruned() == round([0.2, 0.36][k - 1] * mask.num_total())
    final, _ = load_tensors(Path(two["path"]) / "rounds/round_002/weights.safetensors")
    assert all(torch.count_nonzero(final[n][~keep]) == 0 for n, keep in mask.tensors.items())
    for a, b in zip(one["rounds"], two["rounds"], strict=True):
        assert abs(score(a["metrics"]) - score(b["metrics"])) <= 0.02 + 1e-9, (a["round"], a, b)
    assert double.stdout.strip().count("imp-") == 1  # only the main process prints


def test_image_folders_stream_file_by_file_and_workers_change_nothing(tmp_path):
    """An image folder is decoded lazily (only headers at build time); 2 loader workers train exactly like 0."""
    import numpy as np
    from PIL import Image

    from ticketlab.data.loader import LazyImages

    rng = np.random.default_rng(0)
    for cls in ("a", "b", "c"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(20):
            colour = {"a": (200, 30, 30), "b": (30, 200, 30), "c": (30, 30, 200)}[cls]
            pixels = np.clip(rng.normal(colour, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / cls / f"{i}.png")
    task = build_task("image_folder", {"path": str(tmp_path / "imgs")})
    assert isinstance(task.train.x, LazyImages) and task.train.x.shape[1:] == (3, 32, 32)
    first = task.train.x[[0, 1]]
    assert first.shape == (2, 3, 32, 32) and -1.0 <= float(first.min()) and float(first.max()) <= 1.0
    states = []
    for workers in (0, 2):
        model = build_model("resnet20", 3, {"width": 4}, seed=0)
        result = train_model(model, task, TrainConfig(lr=0.05, epochs=2, batch_size=16), seed=0,
                             engine=EngineConfig(workers=workers))
        states.append(result.state)
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert score(result.metrics) > 0.5  # three colours: learnable, far above chance (1/3)


def test_tracking_to_tensorboard_logs_every_epoch(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ticketlab.experiment import run_experiment

    cfg = parse_config(tiny_config(train={"lr": 0.05, "epochs": 3, "batch_size": 32}, prune={"rounds": 1},
                                   baselines=[], engine={"tracking": "tensorboard"}))
    run = run_experiment(cfg, tmp_path, progress=False)
    events = list((run / "rounds/tracking").glob("round_000*/**/events.out.tfevents.*"))
    assert events, list((run / "rounds").rglob("*"))
    accumulator = EventAccumulator(str(events[0].parent)).Reload()
    losses = [e.value for e in accumulator.Scalars("train_loss")]
    import json

    history = [json.loads(line) for line in (run / "rounds/round_000/metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and losses == pytest.approx([row["train_loss"] for row in history], rel=1e-5)


def test_input_normalisation_comes_from_the_checkpoint_and_can_be_overridden(tmp_path):
    """Tasks give images in [-1, 1]; a checkpoint's image processor (mean, std) is applied on top, or ImageNet's."""
    import json

    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       image_size=32, patch_size=8), add_pooling_layer=False).save_pretrained(tmp_path / "vit")
    (tmp_path / "vit/preprocessor_config.json").write_text(json.dumps({"image_mean": [0.2, 0.3, 0.4],
                                                                        "image_std": [0.5, 0.25, 0.1]}))
    model = build_model("vit", 3, {"path": str(tmp_path / "vit")})
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    seen = []
    model.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    model(x)
    pixels = x * 0.5 + 0.5
    mean, std = torch.tensor([0.2, 0.3, 0.4]).view(1, 3, 1, 1), torch.tensor([0.5, 0.25, 0.1]).view(1, 3, 1, 1)
    assert torch.allclose(seen[-1], (pixels - mean) / std, atol=1e-5)
    assert "input_scale" not in model.state_dict()  # checkpoints and θp keep their keys
    imagenet = build_model("resnet20", 3, {"width": 4}, normalize="imagenet")
    imagenet.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    imagenet(x)
    assert torch.allclose(seen[-1][:, 0], (pixels[:, 0] - 0.485) / 0.229, atol=1e-5)
    plain = build_model("resnet20", 3, {"width": 4})  # no declared statistics: inputs untouched
    plain.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    plain(x)
    assert torch.equal(seen[-1], x)
    with pytest.raises(ConfigError, match="model.normalize must be"):
        build_model("resnet20", 3, {"width": 4}, normalize="cifar")
