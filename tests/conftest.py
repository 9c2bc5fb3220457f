from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

TINY_SCENES = {"n_train": 96, "n_val": 48, "n_test": 48}


def assert_figure(path, min_bytes: int = 5_000) -> None:
    """A real, non-blank PNG: it decodes, has a sensible size and more than one colour."""
    from PIL import Image

    assert path.stat().st_size > min_bytes, path
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width >= 300 and image.height >= 200, (path, image.size)
        extrema = image.convert("L").getextrema()
        assert extrema[1] - extrema[0] > 100, f"{path} is blank"


def tiny_config(**overrides: object) -> dict:
    """A config that runs an IMP experiment in a few seconds."""
    cfg = {
        "seed": 3,
        "model": {"name": "resnet20", "options": {"width": 4}},
        "task": {"name": "scenes_shape", "options": dict(TINY_SCENES)},
        "train": {"optimizer": "sgd", "lr": 0.05, "epochs": 1, "batch_size": 32},
        "prune": {"rounds": 2},
        "baselines": ["omp", "random_prune", "random_reinit", "reversed"],
    }
    cfg.update(overrides)
    model = cfg["model"]
    if not (cfg.get("pretrain") or model.get("checkpoint") or model.get("options", {}).get("path")):
        cfg["prune"] = {"rewind": "init", **cfg["prune"]}  # a random model has no θp: rewind to its initialisation
    return cfg


def digits_config_file(folder, epochs: int, rounds: int) -> str:
    """A ResNet-20 IMP config on scikit-learn's digits (16 px) written to ``folder``: the multi-process tests'."""
    import yaml

    cfg = tiny_config(task={"name": "digits", "options": {"image_size": 16}},
                      model={"name": "resnet20", "options": {"width": 8}},
                      train={"optimizer": "sgd", "lr": 0.1, "epochs": epochs, "batch_size": 64},
                      prune={"rounds": rounds}, baselines=[])
    path = folder / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture
def tiny() -> dict:
    return tiny_config()
