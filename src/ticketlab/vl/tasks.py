"""The seven V+L tasks and the pre-training corpus as ``TASKS`` entries (``vl_vqa`` ... ``vl_pretrain``).

Each split is generated from its own scene stream (so resizing one split never changes another),
turned into questions by :mod:`ticketlab.vl.benchmark`, and stored as model-ready tensors (see
:mod:`ticketlab.vl.model` for the layout). Retrieval trains image-text matching on positives and
one sampled mismatching caption per image; its val/test splits are galleries scored by R@k.
"""

from __future__ import annotations

import numpy as np
import torch

from ticketlab.data.base import TASKS, Split, Task, images_to_tensor
from ticketlab.data.scenes import generate_scenes
from ticketlab.errors import DataError
from ticketlab.registry import bounds
from ticketlab.vl.benchmark import ANSWERS, VLSample, caption, generate
from ticketlab.vl.features import ImageFeatures, image_features
from ticketlab.vl.text import tokenizer_for

MAX_TEXT = 32
# task -> (head kind, metric, number of classes (None: one per image slot))
FAMILIES: dict[str, tuple[str, str, int | None]] = {
    "vqa": ("answer", "accuracy", len(ANSWERS)),
    "gqa": ("answer", "accuracy", len(ANSWERS)),
    "retrieval": ("answer", "retrieval", 2),
    "snli_ve": ("answer", "accuracy", 3),
    "nlvr2": ("pair", "accuracy", 2),
    "refcoco": ("pointer", "accuracy", None),
    "vcr": ("choice", "accuracy", 4),
    "pretrain": ("answer", "accuracy", 2),  # the ITM head; the pre-training objective scores itself
}


def trim(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Drop trailing columns that are padding in every row (shorter sequences, less compute)."""
    used = int((ids != pad_id).flatten(0, -2).any(0).nonzero().max()) + 1
    return ids[..., :used].contiguous()


def pack(feats: ImageFeatures, images: list[tuple[int, ...]], texts: list[list[tuple[str, str | None]]],
         tokenizer_path: str | None, vocabulary: str = "benchmark") -> dict[str, torch.Tensor]:
    """Model inputs: per sample, G (text, image) pairs."""
    tok = tokenizer_for(tokenizer_path, vocabulary)
    groups = len(images[0])
    flat = [t for sample in texts for t in sample]
    pairs = [p for _, p in flat]
    ids = tok.encode([t for t, _ in flat], MAX_TEXT, pairs if any(pairs) else None)
    index = torch.tensor(images)
    return {
        "text_ids": trim(ids.view(len(images), groups, -1), tok.pad_id),
        "image_feats": feats.feats[index], "image_boxes": feats.boxes[index],
        "image_mask": feats.mask[index], "region_labels": feats.labels[index],
    }


def build_split(task: str, n: int, seed: int, image_size: int, features: str, patch: int,
                tokenizer: str | None, gallery: bool, negative_seed: int) -> Split:
    if n < 1:
        raise DataError(f"V+L task {task!r}: a split of {n} scenes gives no samples; set n_train, n_val, n_test >= 1")
    images, scenes = generate_scenes(n, seed, image_size)
    feats = image_features(images_to_tensor(images, None), scenes, features, patch, seed)
    if task == "pretrain":  # every scene with its caption (duplicates allowed: ITM labels check the text)
        samples = [VLSample(caption(s), i, (i,)) for i, s in enumerate(scenes)]
    else:
        samples = generate(task, scenes, seed)
    if not samples:
        raise DataError(f"V+L task {task!r}: no samples from {n} scenes; raise n_train / n_val / n_test")
    if task == "retrieval" and not gallery:
        samples = [*samples, *mismatched(samples, scenes, negative_seed)]
    labels, groups, texts = [], [], []
    for s in samples:
        if task == "nlvr2":
            groups.append(s.images)
            texts.append([(s.text, None)] * 2)
        elif task == "vcr":
            groups.append(s.images * len(s.choices))
            texts.append([(s.text, c) for c in s.choices])
        else:
            groups.append(s.images)
            texts.append([(s.text, None)])
        if task == "refcoco":
            labels.append(feats.object_slot[s.images[0]][s.label])
        elif task in ("retrieval", "pretrain"):
            labels.append(int(s.label == s.images[0]))  # 1 = the caption matches the image
        else:
            labels.append(s.label)
    return Split(pack(feats, groups, texts, tokenizer), torch.tensor(labels))


def mismatched(samples: list[VLSample], scenes: list, seed: int) -> list[VLSample]:
    """One negative per positive: the caption with another image whose caption differs."""
    rng = np.random.default_rng(seed)
    captions = [caption(s) for s in scenes]
    if len(set(captions)) < 2:
        raise DataError("retrieval needs scenes with at least two different captions; raise n_train")
    out = []
    for s in samples:
        while True:  # rejection sampling: terminates, another caption exists
            j = int(rng.integers(len(scenes)))
            if captions[j] != s.text:
                out.append(VLSample(s.text, -1, (j,)))
                break
    return out


def vl_task(task: str, n_train: int, n_val: int, n_test: int, image_size: int, features: str, patch: int,
            tokenizer: str | None, seed: int) -> Task:
    head, metric, classes = FAMILIES[task]
    splits = [build_split(task, n, seed * 1000 + offset, image_size, features, patch, tokenizer,
                          gallery=offset > 0, negative_seed=seed * 1000 + offset + 500)
              for offset, n in enumerate((n_train, n_val, n_test))]
    if classes is None:
        classes = splits[0].x["image_mask"].shape[-1]
    return Task(f"vl_{task}", classes, *splits, head=head, metric=metric)


def _register(task: str, doc: str) -> None:
    def factory(n_train: int = 2000, n_val: int = 200, n_test: int = 200, image_size: int = 32,
                features: str = "regions", patch: int = 8, tokenizer: str | None = None, seed: int = 0) -> Task:
        return vl_task(task, n_train, n_val, n_test, image_size, features, patch, tokenizer, seed)

    factory.__doc__ = doc
    TASKS.register(f"vl_{task}")(bounds(n_train=(1, None), n_val=(1, None), n_test=(1, None), image_size=(32, 64),
                                         patch=(1, None))(factory))


_register("vqa", "VQA-style questions (counts, existence, attributes) over a closed answer set.")
_register("gqa", "GQA-style relational questions ('what colour is the object closest to the red circle?').")
_register("retrieval", "Image-text retrieval: ITM training with sampled negatives, R@1/5/10 on val/test galleries.")
_register("snli_ve", "SNLI-VE-style visual entailment: entailment / neutral / contradiction.")
_register("nlvr2", "NLVR2-style statements over two images: true / false.")
_register("refcoco", "RefCOCO-style referring expressions: point at the referred region (or patch).")
_register("vcr", "VCR-style multiple choice: pick one of 4 answers.")
_register("pretrain", "The V+L pre-training corpus: captioned scenes (MLM, ITM and MRM targets).")
