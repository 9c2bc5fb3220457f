"""The V+L generator's answers agree with an independent solver that reads the text and the scene."""

import re

import pytest

from ticketlab.data.scenes import generate_scenes
from ticketlab.vl.benchmark import ANSWERS, COUNT_WORDS, VL_TASKS, generate

SCENES = generate_scenes(300, seed=5)[1]


def objects_named(scene, phrase):
    return [i for i, o in enumerate(scene.objects) if f"{o.colour} {o.shape}" == phrase]


def solve(task, sample):
    """Answer from the question text and the scene records only (no generator code)."""
    scene = SCENES[sample.images[0]]
    text = sample.text
    if task == "vqa":
        if m := re.fullmatch(r"how many (\w+) objects are there\?", text):
            return ANSWERS.index(COUNT_WORDS[len([o for o in scene.objects if o.colour == m[1]])])
        if m := re.fullmatch(r"is there a (\w+) (\w+)\?", text):
            return ANSWERS.index("yes" if objects_named(scene, f"{m[1]} {m[2]}") else "no")
        largest = max(scene.objects, key=lambda o: o.radius)
        return ANSWERS.index(largest.colour)
    if task == "gqa":
        m = re.fullmatch(r"what colour is the object closest to the (\w+ \w+)\?", text)
        (anchor,) = objects_named(scene, m[1])
        a = scene.objects[anchor]
        closest = min((o for o in scene.objects if o is not a), key=lambda o: (o.x - a.x) ** 2 + (o.y - a.y) ** 2)
        return ANSWERS.index(closest.colour)
    if task == "retrieval":
        words = text.removeprefix("from left to right: ").split(", ")
        return next(i for i, s in enumerate(SCENES)
                    if [f"{o.colour} {o.shape}" for o in sorted(s.objects, key=lambda o: o.x)] == words)
    if task == "snli_ve":
        if m := re.fullmatch(r"there are (\w+) objects", text):
            return 0 if COUNT_WORDS.index(m[1]) == len(scene.objects) else 2
        return 1
    if task == "nlvr2":
        colour = re.fullmatch(r"the left image has more (\w+) objects than the right image", text)[1]
        right = SCENES[sample.images[1]]
        return int(sum(o.colour == colour for o in scene.objects) > sum(o.colour == colour for o in right.objects))
    if task == "refcoco":
        (index,) = objects_named(scene, text.removeprefix("the "))
        return index
    if task == "vcr":
        return sample.choices.index(max(scene.objects, key=lambda o: o.radius).shape)
    raise AssertionError(task)


@pytest.mark.parametrize("task", VL_TASKS)
def test_answers_match_an_independent_solver(task):
    samples = generate(task, SCENES, seed=1)
    assert len(samples) >= 100
    assert generate(task, SCENES, seed=1) == samples  # deterministic
    for sample in samples:
        assert solve(task, sample) == sample.label, sample


def test_label_spaces_are_covered():
    assert {s.label for s in generate("snli_ve", SCENES, 0)} == {0, 1, 2}
    assert {s.label for s in generate("nlvr2", SCENES, 0)} == {0, 1}
    assert {s.label for s in generate("vcr", SCENES, 0)} == {0, 1, 2, 3}
    assert len({s.label for s in generate("vqa", SCENES, 0)}) >= 8
    with pytest.raises(ValueError, match="known: vqa"):
        generate("okvqa", SCENES, 0)
