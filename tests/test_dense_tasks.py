"""Detection and segmentation tasks (issue 26): file formats read back exactly, bad input, COCO mAP and mIoU
against hand-worked values and pycocotools, NMS against brute force, tickets on a dense model, tiny training."""

from __future__ import annotations

import copy
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ticketlab.config import TrainConfig
from ticketlab.data.base import SMOKE_WRITERS, TASKS, build_task
from ticketlab.dense_metrics import coco_ap, miou
from ticketlab.errors import ConfigError, DataError
from ticketlab.masks import Mask
from ticketlab.metrics import chance_score
from ticketlab.models import build_model
from ticketlab.models.fcos import assign, batched_nms, fcos_detect, flatten_levels, nms
from ticketlab.objectives.base import Objective
from ticketlab.prunable import prunable_names
from ticketlab.step import TrainStep

TINY = {"n_train": 4, "n_val": 2, "n_test": 2}


def _image(path, width, height):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 90, dtype=np.uint8)).save(path)


def _coco_folder(root, boxes_val=((4, 2, 10, 6),), missing=False):
    """train: two 50x50 images; val: one 40x20 image with ``boxes_val`` ([x, y, w, h], category 7)."""
    (root / "annotations").mkdir(parents=True)
    categories = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]
    train = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}], "categories": categories,
             "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [5, 5, 20, 10], "iscrowd": 0},
                             {"id": 2, "image_id": 2, "category_id": 7, "bbox": [0, 0, 50, 50], "iscrowd": 0},
                             {"id": 3, "image_id": 2, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 1}]}
    val = {"images": [{"id": 9, "file_name": "c.png"}], "categories": categories,
           "annotations": [{"id": 10 + i, "image_id": 9, "category_id": 7, "bbox": list(b)}
                           for i, b in enumerate(boxes_val)]}
    for name, data in (("train2017", train), ("val2017", val)):
        (root / "annotations" / f"instances_{name}.json").write_text(json.dumps(data))
    _image(root / "train2017" / "a.png", 50, 50)
    _image(root / "train2017" / "b.png", 50, 50)
    if not missing:
        _image(root / "val2017" / "c.png", 40, 20)


def test_coco_json_boxes_are_read_back_scaled_with_the_image(tmp_path):
    _coco_folder(tmp_path)
    task = build_task("coco_detection", {"path": str(tmp_path), "image_size": 32, "val_fraction": 0.5})
    assert (task.head, task.metric, task.num_classes, task.class_names) == ("detection", "coco_map", 2, ["cat", "dog"])
    # the published val set is the test split; 40x20 -> 32x32 scales x by 0.8 and y by 1.6; dog (id 7) = class 1
    assert torch.allclose(task.test.y[0, 0], torch.tensor([1, 4 * 0.8, 2 * 1.6, 14 * 0.8, 8 * 1.6]))
    assert task.test.x[0:1].shape == (1, 3, 32, 32)
    train_rows = torch.cat([task.train.y, task.val.y]).flatten(0, 1)
    real = sorted(r.tolist() for r in train_rows if r[0] >= 0)  # the crowd box is dropped
    s = 32 / 50
    assert real == [pytest.approx([0, 5 * s, 5 * s, 25 * s, 15 * s]), pytest.approx([1, 0, 0, 32, 32])]


def test_voc_xml_boxes_are_read_back_the_detectron2_way(tmp_path):
    for folder in ("Annotations", "ImageSets/Main"):
        (tmp_path / folder).mkdir(parents=True)
    objects = {"a": [("dog", 5, 3, 15, 9), ("cat", 1, 1, 40, 20)], "b": [("cat", 2, 2, 6, 6)], "c": []}
    for image_id, found in objects.items():
        _image(tmp_path / "JPEGImages" / f"{image_id}.jpg", 40, 20)
        xml = "".join(f"<object><name>{n}</name><difficult>1</difficult><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
                      f"<xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>" for n, a, b, c, d in found)
        (tmp_path / "Annotations" / f"{image_id}.xml").write_text(f"<annotation>{xml}</annotation>")
    (tmp_path / "ImageSets/Main/trainval.txt").write_text("b\nc\n")
    (tmp_path / "ImageSets/Main/test.txt").write_text("a\n")
    task = build_task("coco_detection", {"path": str(tmp_path), "format": "voc", "image_size": 32,
                                         "val_fraction": 0.5})
    assert task.num_classes == 20 and task.class_names[7] == "cat" and task.class_names[11] == "dog"
    sx, sy = 0.8, 1.6  # 1-based pixel indices: xmin - 1, ymin - 1
    expected = torch.tensor([[11, 4 * sx, 2 * sy, 15 * sx, 9 * sy], [7, 0, 0, 32, 32]])
    assert torch.allclose(task.test.y[0], expected)
    assert len(task.train) == len(task.val) == 1


def _palette_png(path, labels):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.frombytes("P", labels.shape[::-1], labels.astype(np.uint8).tobytes())
    image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 3 * 253)
    image.save(path)


def test_png_label_maps_are_read_as_class_indices(tmp_path):
    blocks = np.array([[0, 1, 2, 255], [1, 1, 0, 0], [2, 2, 2, 1], [0, 255, 1, 2]])
    for i in range(4):  # 64 px maps of 16 px blocks, each image its own row order
        _image(tmp_path / "JPEGImages" / f"{i}.jpg", 64, 64)
        _palette_png(tmp_path / "SegmentationClass" / f"{i}.png", np.kron(np.roll(blocks, i, 0), np.ones((16, 16))))
    for size in (64, 32):  # read as is, and resized by nearest neighbour
        task = build_task("voc_segmentation", {"path": str(tmp_path), "image_size": size, "num_classes": 3,
                                               "val_fraction": 0.25, "test_fraction": 0.25})
        assert (task.head, task.metric, task.train.y.dtype) == ("segmentation", "miou", torch.uint8)
        every = torch.cat([task.train.y, task.val.y, task.test.y]).numpy()
        expected = [np.kron(np.roll(blocks, i, 0), np.ones((size // 4, size // 4))) for i in range(4)]
        assert sorted(next(i for i, e in enumerate(expected) if np.array_equal(y, e)) for y in every) == [0, 1, 2, 3]


def _one_line(exc_info, *parts):
    message = str(exc_info.value)
    assert "\n" not in message and all(p in message for p in parts), message


def test_bad_detection_and_segmentation_files_are_one_line_data_errors(tmp_path):
    _coco_folder(tmp_path / "missing", missing=True)
    with pytest.raises(DataError) as err:
        build_task("coco_detection", {"path": str(tmp_path / "missing"), "image_size": 32})
    _one_line(err, "instances_val2017.json", "image id 9", "c.png", "add the image")
    _coco_folder(tmp_path / "outside", boxes_val=((30, 2, 20, 6),))  # x1 = 50 > 40 px
    with pytest.raises(DataError) as err:
        build_task("coco_detection", {"path": str(tmp_path / "outside"), "image_size": 32})
    _one_line(err, "instances_val2017.json", "image id 9", "outside the 40x20 image", "fix or drop")
    _image(tmp_path / "seg" / "JPEGImages" / "x.jpg", 4, 4)
    _palette_png(tmp_path / "seg" / "SegmentationClass" / "x.png", np.array([[0, 1, 7, 255]] * 4))
    with pytest.raises(DataError) as err:
        build_task("voc_segmentation", {"path": str(tmp_path / "seg"), "image_size": 32, "num_classes": 5})
    _one_line(err, "x.png", "label value 7", "5 classes")


def test_coco_map_of_hand_worked_cases():
    targets = torch.tensor([[[0, 0, 0, 10, 10], [0, 20, 20, 30, 30]]], dtype=torch.float32)
    perfect = [{"boxes": targets[0, :, 1:], "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([0, 0])}]
    assert coco_ap(targets, perfect, (32, 32)) == {"score": 1.0, "ap50": 1.0, "ap75": 1.0}
    # one of two objects found, IoU 10x6.2 / 10x10 = 0.62, no false positive: recall 0.5 at precision 1, so 51 of
    # COCO's 101 recall points; matched at IoU thresholds 0.50, 0.55, 0.60 (3 of 10), not at 0.75
    half = [{"boxes": torch.tensor([[0, 0, 10, 6.2]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}]
    scores = coco_ap(targets, half, (32, 32))
    assert scores["ap50"] == pytest.approx(51 / 101)
    assert scores["score"] == pytest.approx(3 / 10 * 51 / 101)
    assert scores["ap75"] == 0.0
    assert chance_score("coco_map", targets) == 0.0


def test_coco_map_agrees_with_pycocotools_on_random_boxes(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gen = torch.Generator().manual_seed(0)

    def boxes(n):
        xy = torch.rand(n, 2, generator=gen) * 40
        return torch.cat([xy, xy + 4 + torch.rand(n, 2, generator=gen) * 20], 1)

    targets = torch.full((6, 5, 5), -1.0)
    detections, gt, dt = [], [], []
    for i in range(6):
        k = i % 4 + 1
        targets[i, :k, 0] = torch.randint(0, 3, (k,), generator=gen).float()
        targets[i, :k, 1:] = boxes(k)
        near = targets[i, :k, 1:] + torch.randn(k, 4, generator=gen) * 2
        found = torch.cat([near, boxes(3)])
        found[:, 2:] = found[:, 2:].maximum(found[:, :2] + 1)
        labels = torch.cat([targets[i, :k, 0].long(), torch.randint(0, 3, (3,), generator=gen)])
        detections.append({"boxes": found, "scores": torch.rand(len(found), generator=gen), "labels": labels})
        gt += [{"id": len(gt) + j + 1, "image_id": i, "category_id": int(c) + 1, "iscrowd": 0,
                "area": (x1 - x0) * (y1 - y0), "bbox": [x0, y0, x1 - x0, y1 - y0]}
               for j, (c, x0, y0, x1, y1) in enumerate(targets[i, :k].tolist())]
        dt += [{"image_id": i, "category_id": int(c) + 1, "score": s, "bbox": [x0, y0, x1 - x0, y1 - y0]}
               for (x0, y0, x1, y1), s, c in zip(found.tolist(), detections[-1]["scores"].tolist(),
                                                 detections[-1]["labels"].tolist(), strict=True)]
    (tmp_path / "gt.json").write_text(json.dumps({"images": [{"id": i, "width": 64, "height": 64} for i in range(6)],
                                                  "annotations": gt,
                                                  "categories": [{"id": c} for c in (1, 2, 3)]}))
    (tmp_path / "dt.json").write_text(json.dumps(dt))
    truth = COCO(str(tmp_path / "gt.json"))
    reference = COCOeval(truth, truth.loadRes(str(tmp_path / "dt.json")), "bbox")
    reference.evaluate()
    reference.accumulate()
    reference.summarize()
    ours = coco_ap(targets, detections, (64, 64))
    assert 0.0 < ours["score"] < 1.0
    assert [ours["score"], ours["ap50"], ours["ap75"]] == pytest.approx(list(reference.stats[:3]))


def test_decoding_fcos_targets_recovers_every_box():
    """Outputs that say exactly what the targets say (class, ltrb, centerness) decode to the boxes: mAP 1."""
    task = TASKS.build("scenes_detection", n_train=6, n_val=1, n_test=1)
    sizes, strides = (16, 8, 4), [2.0, 4.0, 8.0]  # the CIFAR-stem ResNet's last three stages on 32 px
    outputs = {"cls": [torch.full((6, 3, s, s), -10.0) for s in sizes], "box": [torch.zeros(6, 4, s, s) for s in sizes],
               "ctr": [torch.full((6, 1, s, s), -10.0) for s in sizes], "strides": strides, "size": (32, 32)}
    _, _, _, points, stride, low, high = flatten_levels(outputs)
    starts = np.cumsum([0] + [s * s for s in sizes])
    for i, target in enumerate(task.train.y):
        classes, reg = assign(points, stride, low, high, target, 3)
        for level, s in enumerate(sizes):
            part = slice(starts[level], starts[level + 1])
            positive = (classes[part] < 3).view(s, s)
            where = positive.flatten().nonzero()[:, 0]
            outputs["cls"][level][i].view(3, -1)[classes[part][where], where] = 10.0
            outputs["box"][level][i] = reg[part].T.reshape(4, s, s) * positive
            outputs["ctr"][level][i][0][positive] = 10.0
    assert coco_ap(task.train.y, fcos_detect(outputs), (32, 32))["score"] == pytest.approx(1.0)


class _Predictor(nn.Module):
    """A stand-in segmentation model that outputs one-hot logits of fixed predictions."""

    def __init__(self, predicted: torch.Tensor, num_classes: int) -> None:
        super().__init__()
        self.predicted = predicted
        self.head = nn.Module()
        self.head.num_classes = num_classes
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(self.predicted[: len(x)], self.head.num_classes).permute(0, 3, 1, 2).float()


def test_miou_of_a_hand_worked_4x4_case():
    from ticketlab.data.base import Split

    labels = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255], [2, 2, 255, 255]]])
    predicted = torch.tensor([[[0, 0, 1, 0], [0, 1, 1, 1], [2, 2, 3, 3], [0, 2, 0, 0]]])
    # class 0: 3 hits / (4 labelled + 5 predicted - 3) = 1/2; class 1: 3 / (4 + 4 - 3) = 3/5; class 2: 3 / (4 + 3 - 3)
    # = 3/4; class 3 is predicted only on ignored pixels and class 4 nowhere: both left out of the mean
    scores = miou(_Predictor(predicted, 5), Split(torch.zeros(1, 3, 4, 4), labels))
    assert scores["score"] == pytest.approx((1 / 2 + 3 / 5 + 3 / 4) / 3)
    assert scores["pixel_accuracy"] == pytest.approx(9 / 12)
    assert chance_score("miou", labels) == pytest.approx(4 / 12 / 3)  # majority class everywhere: IoU 1/3, others 0


def _brute_nms(boxes, scores, labels, threshold):
    def iou(a, b):
        w, h = max(0.0, min(a[2], b[2]) - max(a[0], b[0])), max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
        return w * h / union

    order = sorted(range(len(boxes)), key=lambda i: -scores[i])
    keep = []
    for i in order:
        if all(labels[i] != labels[j] or iou(boxes[i], boxes[j]) <= threshold for j in keep):
            keep.append(i)
    return keep


def test_nms_matches_a_brute_force_reference():
    rng = random.Random(0)
    for trial in range(5):
        n = 60
        xy = [(rng.uniform(0, 50), rng.uniform(0, 50)) for _ in range(n)]
        boxes = [[x, y, x + rng.uniform(2, 15), y + rng.uniform(2, 15)] for x, y in xy]
        scores, labels = [rng.random() for _ in range(n)], [rng.randrange(3) for _ in range(n)]
        kept = batched_nms(torch.tensor(boxes), torch.tensor(scores), torch.tensor(labels), 0.3 + 0.1 * trial)
        assert kept.tolist() == _brute_nms(boxes, scores, labels, 0.3 + 0.1 * trial)
    single = nms(torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 6]]), torch.tensor([0.9, 0.8, 0.7]), 0.5)
    assert single.tolist() == [0, 1]  # IoU 0.5 is not > 0.5: kept; 0.6 is dropped


def _steps(model, task, mask=None, steps=5):
    """Losses of ``steps`` AdamW steps on the whole (tiny) training split."""
    recipe = TrainConfig(optimizer="adamw", lr=0.003, weight_decay=0.0, epochs=1, batch_size=4, lr_schedule="constant")
    step = TrainStep(model, recipe, steps, mask=mask)
    losses = [step(task.train.x, task.train.y) for _ in range(steps)]
    return [v for v in [*losses, step.flush()] if v is not None]


@pytest.mark.parametrize("name", ["scenes_detection", "scenes_segmentation"])
def test_a_few_steps_on_resnet18_lower_the_dense_loss(name):
    task = TASKS.build(name, **TINY).validate()
    model = build_model("resnet18", task.num_classes, {"width": 4}, seed=0, head=task.head)
    losses = _steps(model, task)
    assert losses[-1] < 0.8 * losses[0], losses
    assert 0.0 <= Objective().evaluate(model, task, "val") <= 1.0  # the task's metric runs on the trained model


def test_a_ticket_on_a_detector_covers_the_backbone_only():
    task = TASKS.build("scenes_detection", **TINY).validate()
    classifier = build_model("resnet18", 3, {"width": 4}, seed=1)
    names = prunable_names(classifier)
    keep = {}
    for i, n in enumerate(names):  # a layer-wise magnitude ticket, sparsity 10 %..80 %
        weight = classifier.get_parameter(n).detach().abs()
        keep[n] = weight > weight.flatten().kthvalue(max(1, int(weight.numel() * (0.1 + 0.7 * i / len(names))))).values
    ticket = Mask(keep)
    detector = build_model("resnet18", task.num_classes, {"width": 4}, seed=2, head="detection")
    detector.backbone.load_state_dict(classifier.backbone.state_dict())
    assert prunable_names(detector) == names  # the neck and heads are never prunable
    head_before = {k: v.clone() for k, v in detector.head.state_dict().items()}
    ticket.apply_(detector)
    assert all(torch.equal(v, detector.head.state_dict()[k]) for k, v in head_before.items())
    _steps(detector, task, mask=ticket, steps=1)
    for n, sparsity in ticket.layer_sparsity().items():
        assert float((detector.get_parameter(n) == 0).float().mean()) == pytest.approx(sparsity), n
    head_weights = [p for k, p in detector.head.named_parameters() if p.dim() == 4]
    assert all(bool((p != 0).all()) for p in head_weights)


def test_dense_heads_tap_their_own_backbone_after_a_copy_or_a_new_head():
    model = build_model("resnet20", 4, {"width": 4}, head="segmentation")
    model.reset_head(4, seed=5)  # the old head's hooks are removed
    assert len(model.backbone.layer3._forward_hooks) == 1
    twin = copy.deepcopy(model)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    twin.eval()
    assert torch.allclose(twin(x), model(x))
    assert model.head.tap.maps == [] and twin.head.tap.maps == []


def test_non_cnn_backbones_and_the_registry_listing():
    vit = {"config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                      "image_size": 32, "patch_size": 8}}
    with pytest.raises(ConfigError) as err:
        build_model("vit", 3, vit, head="detection")
    _one_line(err, "CNN backbone", "model.name")
    from ticketlab.plugins import catalog

    listed = dict(catalog()["tasks"])
    assert {"coco_detection", "voc_segmentation", "scenes_detection", "scenes_segmentation"} <= set(listed)
    assert {"detection", "segmentation"} <= set(dict(catalog()["heads"]))


@pytest.mark.parametrize(("name", "options"), [("coco_detection", {}), ("coco_detection", {"format": "voc"}),
                                               ("voc_segmentation", {})])
def test_smoke_writers_write_files_their_reader_loads(tmp_path, name, options):
    path = SMOKE_WRITERS.get(name)(options, tmp_path)
    task = build_task(name, {**options, "path": path, "image_size": 32})
    assert len(task.train) + len(task.val) == 16 and len(task.test) == 8
    assert task.test.x[0:2].shape == (2, 3, 32, 32)


@pytest.mark.parametrize("recipe", [{"augment": "cifar"}, {"augment": "imagenet"}, {"randaugment": "rand-m9-mstd0.5"}])
def test_pixel_moving_augmentation_is_refused_for_dense_tasks(recipe):
    """Boxes and label maps do not follow a crop, flip or RandAugment rotation: one line before any step; erasing
    keeps pixels in place and is allowed."""
    for name in ("scenes_detection", "scenes_segmentation"):
        task = TASKS.build(name, **TINY).validate()
        model = build_model("resnet18", task.num_classes, {"width": 4}, seed=0, head=task.head)
        with pytest.raises(ConfigError, match="move image content but not the boxes / label maps") as info:
            TrainStep(model, TrainConfig(**recipe), 1, task=task)
        assert "\n" not in str(info.value)
        TrainStep(model, TrainConfig(random_erasing=0.25), 1, task=task)
