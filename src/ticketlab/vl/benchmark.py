"""A V+L benchmark generated from scenes: the seven task families of Gan et al. at toy scale.

Every sample is built from :class:`~ticketlab.data.scenes.Scene` records, so its answer is exact:
VQA (attribute / count / existence questions, closed answer set), GQA (relational questions),
retrieval captions, SNLI-VE statements (entailment / neutral / contradiction), NLVR2 statements over
two images (true / false), RefCOCO referring expressions (answer: one object index) and VCR-style
multiple choice (one of 4 answers). Deterministic from a seed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ticketlab.data.scenes import COLOURS, MAX_OBJECTS, SHAPES, Scene, SceneObject

COUNT_WORDS = ("zero", "one", "two", "three", "four", "five")
ANSWERS = (*COLOURS, *SHAPES, *COUNT_WORDS, "yes", "no")  # the closed VQA/GQA answer set
NEUTRAL_TEMPLATES = ("the {c} {s} is made of metal", "the {c} {s} was drawn first", "the {c} {s} is heavy")
ENTAILMENT, NEUTRAL, CONTRADICTION = 0, 1, 2
VCR_DISTRACTORS = ("star", "heart")
# every word the generator can write (the closed language; the tokenizer keeps only these pieces)
VOCABULARY = (*COLOURS, *SHAPES, *COUNT_WORDS, *VCR_DISTRACTORS, "yes", "no", "how", "many", "objects", "are",
              "there", "is", "a", "what", "colour", "shape", "the", "largest", "object", "closest", "to", "from",
              "left", "right", "made", "of", "metal", "was", "drawn", "first", "heavy", "has", "more", "than",
              "image", "?", ":", ",")


@dataclass(frozen=True)
class VLSample:
    text: str
    label: int  # answer index, object index, entailment class, true(1)/false(0) or choice index
    images: tuple[int, ...]  # indices into the scene list (two for NLVR2)
    choices: tuple[str, ...] = field(default_factory=tuple)  # VCR only


def describe(obj: SceneObject) -> str:
    return f"{obj.colour} {obj.shape}"


def unique_objects(scene: Scene) -> list[int]:
    """Objects whose colour+shape phrase names exactly one object in the scene."""
    phrases = [describe(o) for o in scene.objects]
    return [i for i, p in enumerate(phrases) if phrases.count(p) == 1]


def vqa(scene: Scene, index: int, rng: np.random.Generator) -> VLSample:
    kind = rng.integers(3)
    if kind == 0:
        colour = COLOURS[rng.integers(len(COLOURS))]
        count = sum(o.colour == colour for o in scene.objects)
        return VLSample(f"how many {colour} objects are there?", ANSWERS.index(COUNT_WORDS[count]), (index,))
    if kind == 1:
        colour, shape = COLOURS[rng.integers(len(COLOURS))], SHAPES[rng.integers(len(SHAPES))]
        present = any(o.colour == colour and o.shape == shape for o in scene.objects)
        return VLSample(f"is there a {colour} {shape}?", ANSWERS.index("yes" if present else "no"), (index,))
    return VLSample("what colour is the largest object?", ANSWERS.index(scene.largest.colour), (index,))


def gqa(scene: Scene, index: int, rng: np.random.Generator) -> VLSample | None:
    """'what colour is the object closest to the <c s>?' — only when the anchor and the answer are unambiguous."""
    anchors = unique_objects(scene)
    if len(scene.objects) < 2 or not anchors:
        return None
    a = scene.objects[anchors[rng.integers(len(anchors))]]
    others = sorted((((o.x - a.x) ** 2 + (o.y - a.y) ** 2), o.colour) for o in scene.objects if o is not a)
    if len(others) > 1 and others[1][0] - others[0][0] < 4.0:
        return None  # a near tie: no unambiguous answer
    return VLSample(f"what colour is the object closest to the {describe(a)}?", ANSWERS.index(others[0][1]),
                    (index,))


def caption(scene: Scene) -> str:
    """Objects from left to right — a caption that identifies the scene for retrieval."""
    return "from left to right: " + ", ".join(describe(o) for o in sorted(scene.objects, key=lambda o: o.x))


def snli_ve(scene: Scene, index: int, rng: np.random.Generator) -> VLSample:
    kind = int(rng.integers(3))
    obj = scene.objects[rng.integers(len(scene.objects))]
    if kind == NEUTRAL:
        template = NEUTRAL_TEMPLATES[rng.integers(len(NEUTRAL_TEMPLATES))]
        return VLSample(template.format(c=obj.colour, s=obj.shape), NEUTRAL, (index,))
    count = len(scene.objects)
    if kind == CONTRADICTION:
        count = (count + int(rng.integers(1, MAX_OBJECTS))) % (MAX_OBJECTS + 1)  # any other count
    return VLSample(f"there are {COUNT_WORDS[count]} objects", kind, (index,))


def nlvr2(left: Scene, right: Scene, pair: tuple[int, int], rng: np.random.Generator) -> VLSample:
    """A colour present in at least one image, so true and false are about equally likely."""
    present = sorted({o.colour for o in (*left.objects, *right.objects)}, key=COLOURS.index)
    colour = present[rng.integers(len(present))]
    n_left = sum(o.colour == colour for o in left.objects)
    n_right = sum(o.colour == colour for o in right.objects)
    return VLSample(f"the left image has more {colour} objects than the right image", int(n_left > n_right), pair)


def refcoco(scene: Scene, index: int, rng: np.random.Generator) -> VLSample | None:
    candidates = unique_objects(scene)
    if not candidates:
        return None
    target = candidates[rng.integers(len(candidates))]
    return VLSample(f"the {describe(scene.objects[target])}", target, (index,))


def vcr(scene: Scene, index: int, rng: np.random.Generator) -> VLSample:
    """'what shape is the largest object?' with 4 choices, one right."""
    right = scene.largest.shape
    wrong = [s for s in (*SHAPES, *VCR_DISTRACTORS) if s != right]
    picks = [wrong[i] for i in rng.permutation(len(wrong))[:3]]
    slot = int(rng.integers(4))
    choices = tuple(picks[:slot] + [right] + picks[slot:])
    return VLSample("what shape is the largest object?", slot, (index,), choices)


def generate(task: str, scenes: list[Scene], seed: int) -> list[VLSample]:
    """One sample per scene (pairs for NLVR2; skipping scenes where the question would be ambiguous)."""
    rng = np.random.default_rng(seed)
    out: list[VLSample] = []
    captions = [caption(s) for s in scenes] if task == "retrieval" else []
    caption_counts = Counter(captions)
    for i, scene in enumerate(scenes):
        if task == "vqa":
            sample = vqa(scene, i, rng)
        elif task == "gqa":
            sample = gqa(scene, i, rng)
        elif task == "retrieval":  # a caption shared by several scenes would make retrieval ambiguous
            sample = VLSample(captions[i], i, (i,)) if caption_counts[captions[i]] == 1 else None
        elif task == "snli_ve":
            sample = snli_ve(scene, i, rng)
        elif task == "nlvr2":
            j = int(rng.integers(len(scenes)))
            sample = nlvr2(scene, scenes[j], (i, j), rng)
        elif task == "refcoco":
            sample = refcoco(scene, i, rng)
        elif task == "vcr":
            sample = vcr(scene, i, rng)
        else:
            raise ValueError(f"unknown V+L task {task!r}; known: {', '.join(VL_TASKS)}")
        if sample is not None:
            out.append(sample)
    return out


VL_TASKS = ("vqa", "gqa", "retrieval", "snli_ve", "nlvr2", "refcoco", "vcr")
