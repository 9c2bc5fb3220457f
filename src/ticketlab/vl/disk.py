"""Real V+L datasets on disk, in one documented format that feeds the seven task families and pre-training.

Layout of ``path``::

    train.jsonl  val.jsonl  test.jsonl      one sample per line
    features/<image_id>.safetensors         (or .npz) per image: feats [R, D] float, boxes [R, 4] (x0, y0, x1, y1,
                                            pixels or already in [0, 1]), optional image_size [2] (w, h),
                                            optional region_labels [R] int (masked-region classification targets)

A sample is ``{"image": id, "text": str, "label": ...}``; NLVR2 gives ``"images": [left, right]``; VCR gives
``"choices": [...]`` and the label is the right choice's index; RefCOCO's label is the referred region's row
in the image's features; retrieval / pre-training labels are 1 when the text matches the image. String labels
(VQA answers) are mapped to ids in sorted order (kept as the class names). Regions are padded to the largest
count (at most ``max_regions``).

The papers' metrics (``task.options.metric``: ``auto`` picks them where the data allows; ``accuracy`` opts out):

* VQA: a sample may carry ``"answers"``, the annotators' answers (normally 10, as released: VQA's are already
  normalised); its label may then be omitted (the most frequent normalised answer). String labels are normalised as
  the official evaluation does ("Two" -> "2"). With answers on every val/test sample the metric is ``vqa_score``
  (:mod:`ticketlab.vl.vqa_score`).
* Retrieval: val/test are galleries scored by R@1/5/10 both ways (``retrieval``): every distinct image of the split
  and every matching caption (label 1); an image may have several captions, one only in mismatched pairs is a
  distractor. Training stays image-text matching on the labelled pairs.
* RefCOCO: a sample may carry ``"box": [x0, y0, x1, y1]``, the referred object's box in pixels (its image's features
  then need ``image_size``); with boxes on every val/test sample the metric is ``refcoco_iou`` (UNITER's: the chosen
  region's box has IoU > 0.5 with it), else region-index accuracy.
* VCR: the paper's Q->A accuracy (``vcr_qa``).

Text is tokenised with the model's tokenizer and vocabulary (``full`` for real text). Features are read per image
once; a region-feature extractor (e.g. a Faster R-CNN, as UNITER used) is run beforehand — ticketlab does not ship
one.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ticketlab.data.base import SMOKE_WRITERS, TASKS, Split, Task, dry_run_hooks, label_names
from ticketlab.data.smoke_files import smoke_rng
from ticketlab.errors import DataError
from ticketlab.registry import bounds
from ticketlab.vl import disk_targets as targets
from ticketlab.vl.features import BOX_DIM, ImageFeatures
from ticketlab.vl.tasks import FAMILIES, pack

CLASSES = {"nlvr2": 2, "snli_ve": 3, "retrieval": 2, "pretrain": 2}


def read_samples(file: Path, family: str = "vqa", needs: str | None = None) -> list[dict[str, Any]]:
    """One split's samples, each checked (``needs``: a field every sample must have, for the asked metric)."""
    if not file.is_file():
        raise DataError(f"{file.parent} lacks {file.name} (one JSON sample per line); see ticketlab.vl.disk")
    samples = []
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                sample = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{file}:{n} is not valid JSON ({exc.msg}); fix that line") from exc
            if not isinstance(sample, dict) or "text" not in sample:
                raise DataError(f"{file}:{n} needs keys text, label and image (or images); has {sample!r:.80}")
            targets.check_sample(sample, family, f"{file}:{n}", needs)
            samples.append(sample)
    if not samples:
        raise DataError(f"{file} holds no samples")
    return samples


def read_image(folder: Path, image_id: str) -> dict[str, np.ndarray]:
    """One image's arrays from ``features/<id>.safetensors`` or ``.npz`` (never unpickled)."""
    for suffix in (".safetensors", ".npz"):
        file = folder / f"{image_id}{suffix}"
        if file.is_file():
            try:
                if suffix == ".npz":
                    with np.load(file, allow_pickle=False) as data:
                        arrays = {k: data[k] for k in data.files}
                else:
                    from safetensors.numpy import load_file

                    arrays = load_file(str(file))
            except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
                raise DataError(f"{file} is truncated or unreadable ({type(exc).__name__}); re-extract it") from exc
            if "feats" not in arrays or "boxes" not in arrays or len(arrays["feats"]) != len(arrays["boxes"]):
                raise DataError(f"{file} needs arrays feats [R, D] and boxes [R, 4] with the same R")
            return arrays
    raise DataError(f"no features for image {image_id!r} in {folder} (expected {image_id}.safetensors or .npz)")


def image_table(folder: Path, ids: list[str], max_regions: int) -> tuple[ImageFeatures, torch.Tensor]:
    """Features of ``ids`` padded to a common region count, boxes as the model's 7-d box features; and each image's
    size ``[n, 2]`` (w, h; 0 where the file gives none)."""
    arrays = [read_image(folder, i) for i in ids]
    dims = {a["feats"].shape[-1] for a in arrays}
    if len(dims) != 1:
        raise DataError(f"{folder}: images have feature sizes {sorted(dims)}; extract them all with one model")
    regions = min(max(len(a["feats"]) for a in arrays), max_regions)
    n, dim = len(ids), dims.pop()
    feats, boxes = torch.zeros(n, regions, dim), torch.zeros(n, regions, BOX_DIM)
    mask, labels = torch.zeros(n, regions, dtype=torch.bool), torch.full((n, regions), -1)
    sizes = torch.zeros(n, 2)
    for i, a in enumerate(arrays):
        r = min(len(a["feats"]), regions)
        box = torch.as_tensor(np.asarray(a["boxes"][:r, :4], dtype=np.float32))
        if "image_size" in a:
            w, h = (float(v) for v in np.asarray(a["image_size"]).reshape(-1)[:2])
            box, sizes[i] = box / torch.tensor([w, h, w, h]), torch.tensor([w, h])
        elif box.numel() and float(box.max()) > 1.0:
            raise DataError(f"image {ids[i]}: boxes are in pixels but the file has no image_size [w, h]; add it")
        width, height = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
        feats[i, :r] = torch.as_tensor(np.asarray(a["feats"][:r], dtype=np.float32))
        boxes[i, :r] = torch.cat([box, width[:, None], height[:, None], (width * height)[:, None]], 1)
        mask[i, :r] = True
        if "region_labels" in a:
            labels[i, :r] = torch.as_tensor(np.asarray(a["region_labels"][:r], dtype=np.int64))
    return ImageFeatures(feats, boxes, mask, labels, [[] for _ in ids]), sizes


def _images(sample: dict[str, Any], family: str) -> list[str]:
    images = sample.get("images", [sample["image"]] if "image" in sample else [])
    if family == "nlvr2" and len(images) != 2:
        raise DataError(f"an NLVR2 sample needs images: [left, right], got {images!r}")
    if not images:
        raise DataError(f"a sample has no image / images key: {sample!r:.80}")
    return [str(i) for i in images]


def build_disk_split(samples: list[dict[str, Any]], family: str, folder: Path, label_ids: dict[str, int],
                     tokenizer: str | None, vocabulary: str, max_regions: int, metric: str = "accuracy") -> Split:
    """Model inputs and labels of one split, plus the extra targets ``metric`` scores with (answers, gallery, boxes)."""
    ids = sorted({i for s in samples for i in _images(s, family)})
    row = {i: n for n, i in enumerate(ids)}
    feats, sizes = image_table(folder, ids, max_regions)
    groups, texts, labels = [], [], []
    for s in samples:
        images = tuple(row[i] for i in _images(s, family))
        if family == "vcr":
            choices = s.get("choices") or []
            groups.append(images[:1] * len(choices))
            texts.append([(s["text"], str(c)) for c in choices])
        elif family == "nlvr2":
            groups.append(images)
            texts.append([(s["text"], None)] * 2)
        else:
            groups.append(images[:1])
            texts.append([(s["text"], None)])
        label = targets.sample_label(s, family)
        labels.append(label_ids[str(label)] if label_ids else int(label))
    if len({len(g) for g in groups}) > 1:
        raise DataError("VCR samples must all have the same number of choices")
    names = sorted(label_ids, key=label_ids.get)
    extra = targets.metric_targets(metric, samples, names, [row[_images(s, family)[0]] for s in samples], sizes, ids)
    return Split({**pack(feats, groups, texts, tokenizer, vocabulary), **extra}, torch.tensor(labels))


@TASKS.register("vl_disk")
@bounds(max_regions=(1, 1000))
def vl_disk(path: str, family: str = "vqa", tokenizer: str | None = None, vocabulary: str = "full",
            max_regions: int = 100, metric: str = "auto") -> Task:
    """A V+L dataset in ticketlab's on-disk format (JSONL samples + per-image region features), scored by the
    papers' metrics (VQA score, retrieval R@k, RefCOCO box IoU) where the data carries what they need."""
    if family not in FAMILIES:
        raise DataError(f"task.options.family must be one of {', '.join(FAMILIES)}, got {family!r}")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset path {root} is not a folder; check task.options.path")
    needs = targets.NEEDS.get(targets.metric_option(metric, family))
    splits = {s: read_samples(root / f"{s}.jsonl", family, None if s == "train" else needs)
              for s in ("train", "val", "test")}
    raw = [targets.sample_label(s, family) for split in splits.values() for s in split]
    metric = targets.choose_metric(metric, family, [*splits["val"], *splits["test"]],
                                   named=any(isinstance(v, str) for v in raw))
    label_ids: dict[str, int] = {}
    if any(isinstance(v, str) for v in raw):
        label_ids = {name: i for i, name in enumerate(label_names(raw))}
    built = {name: build_disk_split(samples, family, root / "features", label_ids, tokenizer, vocabulary, max_regions,
                                    "accuracy" if name == "train" else metric)
             for name, samples in splits.items()}
    head, _, classes = FAMILIES[family]
    if family == "refcoco":
        classes = int(built["train"].x["image_mask"].shape[-1])
    elif family == "vcr":
        classes = int(built["train"].x["text_ids"].shape[1])
    elif label_ids:
        classes = len(label_ids)
    else:
        classes = CLASSES.get(family) or int(max(int(s.y.max()) for s in built.values())) + 1
    for name, split in built.items():  # regions pad per split: pad every split to the same count for the model
        if family == "refcoco" and split.x["image_mask"].shape[-1] != classes:
            raise DataError(f"refcoco: the {name} split's images have another maximum region count than train's; "
                            f"set task.options.max_regions to a count every image reaches")
    names = sorted(label_ids, key=label_ids.get) if label_ids else []
    return Task(f"vl_{family}", classes, built["train"], built["val"], built["test"], class_names=names,
                head=head, metric=metric)


@SMOKE_WRITERS.register("vl_disk")
def smoke_vl_disk(options: dict[str, Any], root: Path) -> str:
    """Eight images' region features and JSONL samples of the options' task family (see ``disk_targets.smoke_sample``)."""
    from safetensors.numpy import save_file

    family, rng = options.get("family", "vqa"), smoke_rng("vl_disk")
    (root / "features").mkdir(exist_ok=True)
    for i in range(8):
        save_file({"feats": rng.normal(size=(4, 192)).astype(np.float32),
                   "boxes": np.array(targets.SMOKE_BOXES, np.float32), "image_size": np.array([32, 32], np.float32)},
                  str(root / "features" / f"img{i}.safetensors"))
    for split, n in (("train", 16), ("val", 8), ("test", 8)):
        with open(root / f"{split}.jsonl", "w", encoding="utf-8") as handle:
            for j in range(n):
                handle.write(json.dumps(targets.smoke_sample(family, split, j)) + "\n")
    return str(root)


def _dry_run_probe(options: dict[str, Any]) -> int:
    """``--dry-run``: the three JSONL files with a parsable first sample, the features of the first training sample's
    image; returns the training samples (non-empty lines), never reading the rest."""
    root = Path(options["path"]).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset path {root} is not a folder; check task.options.path")
    counts = {}
    for split in ("train", "val", "test"):
        file = root / f"{split}.jsonl"
        if not file.is_file():
            raise DataError(f"{root} lacks {file.name} (one JSON sample per line); see ticketlab.vl.disk")
        with open(file, "rb") as handle:
            lines = (line for line in handle if line.strip())
            first = next(lines, None)
            counts[split] = sum(1 for _ in lines) + 1
        try:
            sample = json.loads(first) if first is not None else None
        except ValueError as exc:
            raise DataError(f"{file}: the first sample is not valid JSON ({exc}); fix that line") from exc
        if not isinstance(sample, dict) or "text" not in sample:
            raise DataError(f"{file}: the first sample needs keys text, label and image (or images); has {sample!r:.80}")
        if split == "train":
            read_image(root / "features", _images(sample, options.get("family", "vqa"))[0])
    return counts["train"]


dry_run_hooks(_dry_run_probe)(vl_disk)
