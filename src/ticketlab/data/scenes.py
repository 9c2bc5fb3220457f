"""A Sort-of-CLEVR-style scene generator: coloured shapes on a canvas, deterministic from a seed.

One generator, several label semantics (the stand-ins for the CV study's downstream datasets):
shape or colour of the largest object, object count, distinct-colour count, shape x colour (a rich
pre-training label), and a shifted domain (other palette, textured background, noise) standing in
for VisDA. The V+L tasks of later issues build questions and captions from the same ``Scene`` records.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ticketlab.data.base import TASKS, Split, Task, images_to_tensor
from ticketlab.registry import bounds

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow", "magenta", "cyan")
PALETTES = {
    "default": np.array([[220, 40, 40], [40, 180, 60], [50, 80, 230], [235, 215, 40], [210, 60, 210],
                         [40, 210, 220]], dtype=np.float32),
    # same colour names, shifted hues and darker: a domain shift, not a relabelling
    "shifted": np.array([[160, 70, 40], [90, 140, 50], [70, 60, 170], [190, 160, 90], [150, 70, 130],
                         [70, 150, 150]], dtype=np.float32),
}
MAX_OBJECTS = 5


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    x: float  # centre, pixels
    y: float
    radius: float


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]  # objects[0] is the largest

    @property
    def largest(self) -> SceneObject:
        return self.objects[0]


def _shape_mask(obj: SceneObject, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy = xx - obj.x, yy - obj.y
    if obj.shape == "circle":
        return dx**2 + dy**2 <= obj.radius**2
    if obj.shape == "square":
        half = obj.radius * 0.85
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    # upward triangle inscribed in the radius
    top, bottom = -obj.radius, obj.radius * 0.8
    return (dy >= top) & (dy <= bottom) & (np.abs(dx) <= (dy - top) * 0.6)


def sample_scene(rng: np.random.Generator, size: int) -> Scene:
    """1..5 non-overlapping objects; the first is clearly the largest."""
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    objects: list[SceneObject] = []
    for i in range(count):
        radius = size * (rng.uniform(0.2, 0.26) if i == 0 else rng.uniform(0.08, 0.13))
        for _ in range(100):
            x, y = rng.uniform(radius, size - radius, size=2)
            if all((x - o.x) ** 2 + (y - o.y) ** 2 > (radius + o.radius + 1) ** 2 for o in objects):
                break
        else:
            break  # canvas full: fewer objects
        objects.append(SceneObject(SHAPES[rng.integers(3)], COLOURS[rng.integers(len(COLOURS))],
                                   float(x), float(y), float(radius)))
    return Scene(tuple(objects))


def render_scene(scene: Scene, size: int, rng: np.random.Generator, domain: str = "default") -> np.ndarray:
    """uint8 (size, size, 3) image."""
    palette = PALETTES[domain]
    if domain == "shifted":
        yy, xx = np.mgrid[0:size, 0:size]
        stripes = ((xx + yy) // max(size // 8, 1)) % 2
        image = np.where(stripes[..., None] == 1, 95.0, 60.0) * np.ones(3, dtype=np.float32)
    else:
        image = np.full((size, size, 3), 24.0, dtype=np.float32)
    for obj in scene.objects:
        image[_shape_mask(obj, size)] = palette[COLOURS.index(obj.colour)]
    noise = 28.0 if domain == "shifted" else 6.0
    image += rng.normal(0.0, noise, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def generate_scenes(n: int, seed: int, size: int = 32, domain: str = "default") -> tuple[np.ndarray, list[Scene]]:
    if not 32 <= size <= 64:
        raise ValueError(f"scene image_size must be in [32, 64], got {size}")
    if domain not in PALETTES:
        raise ValueError(f"unknown scene domain {domain!r}; known: {', '.join(PALETTES)}")
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, size) for _ in range(n)]
    images = np.stack([render_scene(s, size, rng, domain) for s in scenes]) if n else np.zeros((0, size, size, 3))
    return images, scenes


LABELS = {
    "shape": (lambda s: SHAPES.index(s.largest.shape), list(SHAPES)),
    "colour": (lambda s: COLOURS.index(s.largest.colour), list(COLOURS)),
    "count": (lambda s: len(s.objects) - 1, [str(i) for i in range(1, MAX_OBJECTS + 1)]),
    "colour_count": (lambda s: len({o.colour for o in s.objects}) - 1, [str(i) for i in range(1, MAX_OBJECTS + 1)]),
    "shape_colour": (lambda s: SHAPES.index(s.largest.shape) * len(COLOURS) + COLOURS.index(s.largest.colour),
                     [f"{c} {s}" for s in SHAPES for c in COLOURS]),
}


def scene_task(name: str, label: str, domain: str, n_train: int, n_val: int, n_test: int, image_size: int,
               seed: int) -> Task:
    label_of, class_names = LABELS[label]
    splits = []
    # each split has its own stream, so resizing one split never changes the others
    for offset, n in enumerate((n_train, n_val, n_test)):
        images, scenes = generate_scenes(n, seed * 1000 + offset, image_size, domain)
        splits.append(Split(images_to_tensor(images, None), torch.tensor([label_of(s) for s in scenes])))
    return Task(name, len(class_names), *splits, class_names=class_names)


def stream_seeds(name: str, options: dict) -> set[int]:
    """The generator seeds of a scenes task's three splits (empty for other tasks): two tasks whose sets intersect
    show the same images, so a "downstream" task must not share them with its pre-training task."""
    if not name.startswith("scenes_"):
        return set()
    seed = int(options.get("seed", 0))
    return {seed * 1000 + offset for offset in range(3)}


def _register(name: str, label: str, domain: str, doc: str) -> None:
    def factory(n_train: int = 2000, n_val: int = 500, n_test: int = 1000, image_size: int = 32,
                seed: int = 0) -> Task:
        return scene_task(name, label, domain, n_train, n_val, n_test, image_size, seed)

    factory.__doc__ = doc
    TASKS.register(name)(bounds(n_train=(1, None), n_val=(1, None), n_test=(1, None), image_size=(32, 64))(factory))


_register("scenes_shape", "shape", "default", "Shape of the largest object (3 classes).")
_register("scenes_colour", "colour", "default", "Colour of the largest object (6 classes).")
_register("scenes_count", "count", "default", "Number of objects (5 classes).")
_register("scenes_colour_count", "colour_count", "default", "Number of distinct colours (5 classes).")
_register("scenes_shape_colour", "shape_colour", "default", "Shape x colour of the largest object (18 classes).")
_register("scenes_shifted_shape", "shape", "shifted", "Shape of the largest object, shifted domain (VisDA stand-in).")
_register("scenes_shifted_count", "count", "shifted", "Number of objects, shifted domain (a VisDA stand-in not read off "
          "the pre-training label).")
