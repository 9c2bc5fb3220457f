"""``--dry-run``: every missing or malformed input is one line naming its key path (exit 2); a good config prints its
units of work and an estimate; every paper preset dry-runs with ``--smoke``."""

from __future__ import annotations

import gzip
import json
import os
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ticketlab import cli
from ticketlab.config import TaskConfig
from ticketlab.data.base import SMOKE_WRITERS, build_task
from ticketlab.dry_run import input_problems
from ticketlab.estimate import train_samples

EXAMPLES = Path(__file__).parent.parent / "examples"
PRESETS = sorted((EXAMPLES / "papers").glob("*.yaml"))
RECORD = 32 * 32 * 3 + 1  # a CIFAR-10 binary record: label byte + pixels


class Mkdir:
    """Unpickling this would create ``path``: a checkpoint that is not a state dict, and proof nothing unpickles it."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


def cifar10(root: Path, records: int = 10, short: str | None = None) -> Path:
    root.mkdir(parents=True)
    for name in [*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin"]:
        size = RECORD * records - (5 if name == short else 0)
        (root / name).write_bytes(bytes(size))
    return root


def config(tmp_path: Path, data: Path, checkpoint: Path, **extra: object) -> Path:
    cfg = {"model": {"name": "resnet20", "options": {"width": 4}, "checkpoint": str(checkpoint)},
           "task": {"name": "cifar10", "options": {"path": str(data)}},
           "train": {"epochs": 2, "batch_size": 8}, "prune": {"rounds": 2}, "baselines": ["omp"],
           "engine": {"device": "cpu"}, **extra}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def dry_run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main([*args, "--dry-run"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_missing_data_and_checkpoint_are_one_line_each_naming_the_key(tmp_path, capsys):
    path = config(tmp_path, tmp_path / "no-cifar", tmp_path / "no.pt")
    code, out, err = dry_run(capsys, "find", str(path), "--runs-dir", str(tmp_path / "runs"))
    lines = [line for line in err.splitlines() if line.startswith("dry-run: ")]
    assert code == 2 and len(lines) == 2, err
    assert lines[0].startswith(f"dry-run: model.checkpoint: {tmp_path / 'no.pt'} does not exist;")
    assert lines[1].startswith(f"dry-run: task.options.path: {tmp_path / 'no-cifar'} does not exist;")
    assert "units of work" not in out and not (tmp_path / "runs").exists()  # nothing ran, no run folder


def test_malformed_cifar_file_and_pickled_checkpoint_are_reported_never_unpickled(tmp_path, capsys):
    data = cifar10(tmp_path / "cifar", short="data_batch_3.bin")
    checkpoint, marker = tmp_path / "evil.pt", tmp_path / "unpickled"
    torch.save({"state_dict": Mkdir(marker)}, checkpoint)
    code, _, err = dry_run(capsys, "find", str(config(tmp_path, data, checkpoint)), "--runs-dir", str(tmp_path))
    lines = [line for line in err.splitlines() if line.startswith("dry-run: ")]
    assert code == 2 and len(lines) == 2, err
    assert lines[0].startswith(f"dry-run: model.checkpoint: {checkpoint} does not load with weights_only=True")
    assert lines[1].startswith("dry-run: task.options.path: ") and "data_batch_3.bin is truncated" in lines[1]
    assert f"{RECORD * 10 - 5} bytes is not a multiple of the {RECORD}-byte record" in lines[1]
    assert not marker.exists()


def test_a_good_config_prints_units_steps_and_an_estimate(tmp_path, capsys):
    checkpoint = tmp_path / "weights.pt"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(4, 3, 3, 3)}}, checkpoint)
    path = config(tmp_path, cifar10(tmp_path / "cifar"), checkpoint, prune={"rounds": 2, "rewind": "init"},
                  engine={"device": "auto", "channels_last": True})  # a GPU config: timed on CPU without it
    code, out, err = dry_run(capsys, "find", str(path), "--runs-dir", str(tmp_path / "runs"))
    assert code == 0, err
    # 50 training records, 10 % cut for validation (ceil 5) -> 45; ceil(45 / 8) = 6 steps x 2 epochs = 12 per unit
    # IMP rounds 0, 1, 2 (3 units) + omp at rounds 1, 2 (2 units): 5 units, 60 steps
    assert "inputs OK (model.checkpoint, task.options.path)" in out
    assert "5 units of work: 3 x IMP round, 2 x baseline training" in out
    assert "n_train 45, 2 epochs x 6 steps of 8 = 12 steps each" in out
    assert "samples/s" in out and "on CPU" in out and "32x32 images" in out
    assert "device-hours for 60 training steps (an estimate:" in out
    assert not (tmp_path / "runs").exists()


def test_study_keys_in_lists_and_other_formats(tmp_path):
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08\x01" + bytes(8)))
    vl = tmp_path / "vqa"
    (vl / "features").mkdir(parents=True)
    for split in ("train", "val", "test"):
        (vl / f"{split}.jsonl").write_text(json.dumps({"image": "im0", "text": "a cube?", "label": "yes"}) + "\n")
    folder = tmp_path / "folder"
    (folder / "cat").mkdir(parents=True)
    (folder / "dog").mkdir()
    (folder / "cat" / "a.png").write_bytes(b"not a png")
    hf = tmp_path / "bert"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 10}))
    data = {"model": {"name": "bert", "options": {"path": str(hf)}},
            "pretrainings": [{"task": {"name": "mnist", "options": {"path": str(tmp_path / "mnist")}}}],
            "downstream": [{"name": "scenes_shape"}, {"name": "vl_disk", "options": {"path": str(vl)}},
                           {"name": "image_folder", "options": {"path": str(folder)}}]}
    problems, checked = input_problems(data)
    assert checked == ["model.options.path", "pretrainings[0].task.options.path", "downstream[1].options.path",
                       "downstream[2].options.path"]
    expected = [("model.options.path", "has no weights"), ("model.options.path", "has no tokenizer"),
                ("pretrainings[0].task.options.path", "bad magic number"),
                ("downstream[1].options.path", "no features for image 'im0'"),
                ("downstream[2].options.path", f"class folder {folder / 'dog'} holds no images")]
    assert len(problems) == len(expected), problems
    for line, (key, text) in zip(problems, expected, strict=True):
        assert line.startswith(f"dry-run: {key}: ") and text in line, line


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_paper_preset_dry_runs_with_smoke(preset, tmp_path, capsys):
    command = shlex.split(preset.read_text().splitlines()[0].removeprefix("# run: "))[1:]
    command = [str(EXAMPLES.parent / a) if a.endswith(".yaml") else a for a in command]
    code, out, err = dry_run(capsys, *command, "--smoke", "--runs-dir", str(tmp_path))
    assert code == 0, err
    assert "dry-run: inputs OK (" in out and "units of work" in out and "not measured" not in out
    assert "device-hours for" in out and not (tmp_path / "smoke" / "index.sqlite").exists()
    assert np.isfinite(float(out.split("dry-run: estimate ")[1].split()[0]))


@pytest.mark.parametrize(("name", "extra"), [("coco_detection", {}), ("coco_detection", {"format": "voc"}),
                                             ("voc_segmentation", {})], ids=["coco", "voc_xml", "voc_seg"])
def test_good_detection_and_segmentation_folders_dry_run_with_their_train_split_size(name, extra, tmp_path):
    options = {**extra, "path": SMOKE_WRITERS.get(name)(extra, tmp_path / "data"), "val_fraction": 0.25,
               "image_size": 32}
    problems, checked = input_problems({"task": {"name": name, "options": options}})
    assert (problems, checked) == ([], ["task.options.path"])
    # the smoke folders publish 16 train + 8 held-out images: the held-out set is the test split and validation is
    # cut from train, ceil(16 x 0.25) = 4 -> 12 training images
    assert train_samples(TaskConfig(name, options)) == 12 == len(build_task(name, options).train)


def test_coco_json_naming_a_missing_image_and_a_missing_label_folder_are_one_line_each(tmp_path):
    coco = SMOKE_WRITERS.get("coco_detection")({}, tmp_path / "coco")
    (tmp_path / "coco" / "val2017" / "000020.png").unlink()
    seg = SMOKE_WRITERS.get("voc_segmentation")({}, tmp_path / "voc")
    shutil.rmtree(tmp_path / "voc" / "SegmentationClass")
    problems, _ = input_problems({"downstream": [{"name": "coco_detection", "options": {"path": coco}},
                                                 {"name": "voc_segmentation", "options": {"path": seg}}]})
    assert problems == [
        f"dry-run: downstream[0].options.path: {tmp_path / 'coco' / 'annotations' / 'instances_val2017.json'}: 1 of "
        f"8 listed files are missing from {tmp_path / 'coco' / 'val2017'} (first: 000020.png); add the images or "
        "drop them from the JSON's 'images'",
        f"dry-run: downstream[1].options.path: {tmp_path / 'voc'} has no SegmentationClass/ folder; point "
        "task.options.path at a VOC folder (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/)"]


def test_a_studys_released_checkpoints_are_checked_like_the_loader_reads_them(tmp_path):
    """``pretrainings[].checkpoint`` (a CV study's released θp) is checked, and a file the loader would refuse (tensors
    nested under an unknown key) is refused by the dry run too."""
    import torch

    from ticketlab.dry_run import input_problems

    torch.save({"resnet": {"conv1.weight": torch.zeros(1)}, "head": {"fc.weight": torch.zeros(1)}}, tmp_path / "x.pth")
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}}, tmp_path / "ok.pth")
    problems, checked = input_problems({"pretrainings": [
        {"label": "a", "checkpoint": str(tmp_path / "missing.pth")},
        {"label": "b", "checkpoint": str(tmp_path / "x.pth")},
        {"label": "c", "checkpoint": str(tmp_path / "ok.pth")}]})
    assert checked == [f"pretrainings[{i}].checkpoint" for i in range(3)]
    assert len(problems) == 2 and "pretrainings[0].checkpoint" in problems[0] and "does not exist" in problems[0]
    assert "pretrainings[1].checkpoint" in problems[1] and "state dict of tensors" in problems[1]


def test_dense_tasks_are_timed_with_their_own_heads_and_label_shapes():
    """A detection or segmentation estimate times the FPN + FCOS / semantic head (as costly as the backbone at
    512 px), fed labels of the head's shape, not a linear classifier."""
    import torch

    from ticketlab.estimate import _head, synthetic_labels

    assert _head(TaskConfig("coco_detection", {"path": "x"})) == ("detection", 20)
    assert _head(TaskConfig("voc_segmentation", {"path": "x", "num_classes": 5})) == ("segmentation", 5)
    assert _head(TaskConfig("cifar10", {"path": "x"})) == ("linear", 10)
    images = torch.zeros(3, 3, 64, 64)
    boxes = synthetic_labels("detection", 20, images, 3)
    assert boxes.shape == (3, 4, 5) and bool((boxes[..., 3:] > boxes[..., 1:3]).all() and (boxes[..., 1:] <= 64).all())
    assert synthetic_labels("segmentation", 5, images, 3).shape == (3, 64, 64)
