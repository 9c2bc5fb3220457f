"""What the on-disk V+L format carries beyond a label, for the papers' metrics: VQA annotators' answers
(``vqa_score``), retrieval galleries (R@k) and RefCOCO ground-truth boxes (``refcoco_iou``); and the smoke samples
that exercise them. The per-sample targets ride in the split's input dict under keys the models ignore."""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from ticketlab.errors import DataError
from ticketlab.vl.metrics import GALLERY_IMAGE, TARGET_BOX, TARGET_IMAGE_SIZE
from ticketlab.vl.tasks import FAMILIES
from ticketlab.vl.vqa_score import ANSWER_IDS, ANSWER_SCORES, answer_targets, normalise_answer

# family -> its paper metric (``auto`` picks it where the data allows); metric -> the sample key it needs
PAPER_METRIC = {"vqa": "vqa_score", "refcoco": "refcoco_iou", "retrieval": "retrieval", "vcr": "vcr_qa"}
NEEDS = {"vqa_score": "answers", "refcoco_iou": "box"}


def metric_option(metric: str, family: str) -> str:
    """``task.options.metric``, checked against the family: auto, accuracy or the family's paper metric."""
    allowed = ["auto", "accuracy", *([PAPER_METRIC[family]] if family in PAPER_METRIC else [])]
    if metric not in allowed:
        raise DataError(f"task.options.metric {metric!r} does not fit family {family}; use one of {', '.join(allowed)}")
    return metric


def check_sample(sample: dict[str, Any], family: str, where: str, needs: str | None) -> None:
    """One sample's optional fields: answers a list of strings, box four pixel coordinates; a label unless VQA
    answers stand in for it; ``needs`` (the field an explicitly asked metric scores with) present."""
    if "answers" in sample:
        answers = sample["answers"]
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            raise DataError(f"{where}: answers must be a non-empty list of strings (the annotators' answers), "
                            f"got {answers!r:.60}")
    if "box" in sample:
        box = sample["box"]
        if (not isinstance(box, list) or len(box) != 4 or not all(isinstance(v, int | float) for v in box)
                or box[2] <= box[0] or box[3] <= box[1]):
            raise DataError(f"{where}: box must be [x0, y0, x1, y1] in pixels with x1 > x0 and y1 > y0, got {box!r:.60}")
    if "label" not in sample and not (family == "vqa" and "answers" in sample):
        extra = " (or, for VQA, answers)" if family == "vqa" else ""
        raise DataError(f"{where} needs keys text, label{extra} and image (or images); has {sample!r:.80}")
    if needs and needs not in sample:
        metric = next(m for m, field in NEEDS.items() if field == needs)
        raise DataError(f"{where} has no {needs!r}, which metric {metric} needs on every val/test sample; add it "
                        f"or set task.options.metric to auto or accuracy")


def sample_label(sample: dict[str, Any], family: str) -> object:
    """The label as given; for VQA a string label normalised as the official evaluation does, and without a label the
    most frequent normalised answer (ties: the first in sorted order)."""
    if family != "vqa":
        return sample["label"]
    if "label" in sample:
        return normalise_answer(sample["label"]) if isinstance(sample["label"], str) else sample["label"]
    counts = Counter(normalise_answer(a) for a in sample["answers"])
    top = max(counts.values())
    return min(a for a, n in counts.items() if n == top)


def choose_metric(option: str, family: str, scored: list[dict[str, Any]], named: bool = True) -> str:
    """The task's metric: the asked one, or (auto) the family's paper metric where every val/test sample carries
    what it needs (answers, boxes; the VQA score also answer strings as labels), else the family's default."""
    if option != "auto":
        return option
    paper = PAPER_METRIC.get(family)
    if paper is None:
        return FAMILIES[family][1]
    if paper == "vqa_score" and not named:
        return "accuracy"
    return paper if all(NEEDS.get(paper, "text") in s for s in scored) else "accuracy"


def metric_targets(metric: str, samples: list[dict[str, Any]], class_names: list[str], image_row: list[int],
                   sizes: torch.Tensor, image_ids: list[str]) -> dict[str, torch.Tensor]:
    """The extra input keys a val/test split needs for ``metric`` (none for accuracy)."""
    if metric == "vqa_score":
        if not class_names:
            raise DataError("metric vqa_score needs answer strings as VQA labels (or no labels, only answers); "
                            "the samples have integer labels")
        ids, scores = answer_targets([s["answers"] for s in samples], class_names)
        return {ANSWER_IDS: ids, ANSWER_SCORES: scores}
    if metric == "retrieval":
        if not any(s["label"] == 1 for s in samples):
            raise DataError("a retrieval val/test split has no matching pair (label 1), so no R@k gallery; add "
                            "matching pairs or set task.options.metric to accuracy")
        return {GALLERY_IMAGE: torch.tensor(image_row)}
    if metric == "refcoco_iou":
        size = sizes[torch.tensor(image_row)]
        missing = (size <= 0).any(1).nonzero().flatten()
        if len(missing):
            raise DataError(f"image {image_ids[image_row[int(missing[0])]]}: metric refcoco_iou compares pixel boxes, "
                            "but its features file has no image_size [w, h]; add it")
        return {TARGET_BOX: torch.tensor([s["box"] for s in samples], dtype=torch.float32), TARGET_IMAGE_SIZE: size}
    return {}


COLOURS = ("red", "blue", "green")
SMOKE_BOXES = [[0, 0, 16, 16], [16, 0, 32, 16], [0, 16, 16, 32], [16, 16, 32, 32]]  # the smoke images' regions


def smoke_sample(family: str, split: str, j: int) -> dict[str, Any]:
    """Sample ``j`` of a smoke split: VQA with 10 answers (every other one without a label), retrieval val/test
    galleries of two matching captions per image (and a distractor pair), RefCOCO with ground-truth boxes."""
    colour, other = COLOURS[j % 3], COLOURS[(j + 1) % 3]
    sample: dict[str, Any] = {"image": f"img{j % 8}", "text": "what colour is the small cube?", "label": colour}
    if family == "vqa":
        sample["answers"] = [colour] * 7 + [other.capitalize() + "."] * 3
        if j % 2:
            del sample["label"]
    elif family == "nlvr2":
        sample = {"images": [f"img{j % 8}", f"img{(j + 1) % 8}"], "text": "both have a cube", "label": j % 2}
    elif family == "retrieval" and split != "train":
        image = j // 2 if j < 6 else 6 + j % 2  # images 0-2 with two captions each; 6, 7 only in mismatched pairs
        sample = {"image": f"img{image}", "text": f"a {COLOURS[image % 3]} cube, view {j % 2}", "label": int(j < 6)}
    elif family in ("snli_ve", "retrieval", "pretrain", "refcoco"):
        sample["label"] = j % (3 if family == "snli_ve" else 2)
        if family == "refcoco":
            x0, y0, x1, y1 = SMOKE_BOXES[j % 2]
            sample["box"] = [x0 + 1, y0, x1, y1 + (j % 4) * 4]  # IoU with the labelled region: 0.94 ... 0.55
    elif family == "vcr":
        sample = {**sample, "choices": ["red", "blue", "green", "grey"], "label": j % 4}
    return sample
