"""``voc_segmentation``: semantic segmentation in Pascal VOC's layout, label maps read as class indices.

``path`` is a VOC folder: ``JPEGImages/<id>.jpg`` (or .png), ``SegmentationClass/<id>.png`` and optionally
``ImageSets/Segmentation/{train,val,trainval,test}.txt`` (splits: :mod:`ticketlab.data.dense_files`; without
split files every label map is used and cut by fractions). A label PNG is read as class indices — palette
("P", VOC's own) or greyscale — never as colours; 255 is "void" (ignored). Images are resized to
``image_size`` (bilinear), label maps to the same size by nearest neighbour (a label is never interpolated).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ticketlab.data.base import SMOKE_WRITERS, TASKS, Task, dry_run_hooks
from ticketlab.data.dense_files import VOC_CLASSES, assign_splits, dense_task, existing, image_size_of, voc_split_ids
from ticketlab.data.dense_labels import IGNORE_INDEX, dense_head
from ticketlab.data.dense_probes import HEADERS, listing, require_files, train_count
from ticketlab.data.smoke_files import smoke_rng
from ticketlab.errors import DataError
from ticketlab.registry import bounds

INDEX_MODES = ("P", "L", "I", "I;16")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # JPEGImages/<id><suffix>, tried in this order


def _check_header(file: Path, image: Any, expected: tuple[int, int]) -> None:
    """A label map opened as ``image`` (PIL, header only) holds class indices and matches its image's size."""
    if image.mode not in INDEX_MODES:
        raise DataError(f"{file} is a {image.mode} image; save label maps as palette or greyscale PNGs of "
                        "class indices (255 = ignore)")
    if image.size != expected:
        raise DataError(f"{file} is {image.size[0]}x{image.size[1]} but its image is {expected[0]}x"
                        f"{expected[1]}; a label map must match its image")


def read_label_map(file: Path, num_classes: int, image_size: int, expected: tuple[int, int]) -> np.ndarray:
    """``[image_size, image_size]`` int64 class indices of one label PNG, checked against ``num_classes``."""
    from PIL import Image

    if not file.is_file():
        raise DataError(f"label map {file} does not exist; add it or drop the image id from the split file")
    try:
        with Image.open(file) as image:
            _check_header(file, image, expected)
            labels = np.asarray(image.resize((image_size, image_size), Image.Resampling.NEAREST)).astype(np.int64)
            full = np.asarray(image)
    except (OSError, ValueError) as exc:
        raise DataError(f"{file} is not a readable PNG ({type(exc).__name__}); replace it") from exc
    bad = full[(full >= num_classes) & (full != IGNORE_INDEX)]
    if len(bad) or full.min() < 0:
        value = int(bad.max()) if len(bad) else int(full.min())
        raise DataError(f"{file} holds label value {value} but the task has {num_classes} classes (0..{num_classes - 1}"
                        ", 255 = ignore); fix the label map or set task.options.num_classes")
    return labels


def _image_file(root: Path, image_id: str) -> Path:
    for suffix in IMAGE_SUFFIXES:
        if (root / "JPEGImages" / f"{image_id}{suffix}").is_file():
            return root / "JPEGImages" / f"{image_id}{suffix}"
    return root / "JPEGImages" / f"{image_id}.jpg"  # missing: image_size_of names it


def _segmentation_sets(root: Path, folders: tuple[str, ...] = ("SegmentationClass",)) -> dict[str, list[str]]:
    """Image ids per published split (ImageSets/Segmentation), else ``{"all": every SegmentationClass/*.png}``;
    each of ``folders`` must exist."""
    for folder in folders:
        if not (root / folder).is_dir():
            raise DataError(f"{root} has no {folder}/ folder; point task.options.path at a VOC folder "
                            "(JPEGImages/, SegmentationClass/, ImageSets/Segmentation/)")
    return voc_split_ids(root, "Segmentation") or {"all": sorted(f.stem for f in (root / "SegmentationClass")
                                                                 .glob("*.png"))}


@TASKS.register("voc_segmentation")
@dense_head("segmentation")
@bounds(image_size=(32, 4096), num_classes=(2, 254), val_fraction=(0.01, 0.5), test_fraction=(0.01, 0.5))
def voc_segmentation(path: str, image_size: int = 512, num_classes: int = 21, val_fraction: float = 0.1,
                     test_fraction: float = 0.2, seed: int = 0) -> Task:
    """Semantic segmentation from VOC-style images + SegmentationClass PNGs (255 = ignore); mIoU."""
    root = existing(path)
    sets = _segmentation_sets(root)
    files: list[Path] = []
    maps: list[np.ndarray] = []
    published: dict[str, list[int]] = {}
    for split, ids in sets.items():
        published[split] = list(range(len(files), len(files) + len(ids)))
        for image_id in ids:
            image = _image_file(root, image_id)
            size = image_size_of(image, f"{root} image id {image_id}")
            maps.append(read_label_map(root / "SegmentationClass" / f"{image_id}.png", num_classes, image_size, size))
            files.append(image)
    rows = assign_splits(None if "all" in sets else published, len(files), val_fraction, test_fraction, seed)
    classes = ["background", *VOC_CLASSES] if num_classes == 21 else [str(i) for i in range(num_classes)]
    # uint8 (255 = void fits): a 10k-image set at 512 px is 2.6 GB, not 21 GB as int64; loss and metric cast per batch
    targets = torch.from_numpy(np.stack(maps).astype(np.uint8)) if maps else \
        torch.zeros(0, image_size, image_size, dtype=torch.uint8)
    return dense_task(root.name, files, targets, rows, classes, image_size, "segmentation", str(root))


@SMOKE_WRITERS.register("voc_segmentation")
def smoke_voc_segmentation(options: dict[str, Any], root: Path) -> str:
    """Scene images and their shape maps as VOC palette PNGs (a void border of 255, as VOC draws one)."""
    from PIL import Image

    from ticketlab.data.scenes import generate_scenes
    from ticketlab.data.scenes_dense import scene_label_map

    rng = smoke_rng("voc_segmentation")
    images, scenes = generate_scenes(24, int(rng.integers(1000)), 40)
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * (3 * 251) + [224, 224, 192]
    for i, (image, scene) in enumerate(zip(images, scenes, strict=True)):
        Image.fromarray(image).save(root / "JPEGImages" / f"{i:06d}.jpg")
        labels = scene_label_map(scene, 40).astype(np.uint8)
        labels[[0, -1], :] = labels[:, [0, -1]] = IGNORE_INDEX
        label_image = Image.frombytes("P", (40, 40), labels.tobytes())
        label_image.putpalette(palette)
        label_image.save(root / "SegmentationClass" / f"{i:06d}.png")
    for split, ids in (("train", range(16)), ("val", range(16, 24))):
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i:06d}\n" for i in ids))
    return str(root)


# -- --dry-run probe (``dry_run_hooks``): the layout, a label map and an image per id by listing, a few headers -------
def _voc_segmentation_probe(options: dict[str, Any]) -> int:
    """SegmentationClass/ and JPEGImages/ present, a label PNG and an image for every listed id, and the first few
    label maps' headers checked against their images' (mode, size) — no pixel is decoded."""
    from PIL import Image

    root = existing(str(options["path"]))
    sets = _segmentation_sets(root, ("SegmentationClass", "JPEGImages"))
    ids = [i for split_ids in sets.values() for i in split_ids]
    split_files = root / "ImageSets" / "Segmentation"
    require_files(root / "SegmentationClass", [f"{i}.png" for i in ids], str(split_files),
                  "add the label maps or drop their ids from the split files")
    present = listing(root / "JPEGImages")
    absent = [i for i in ids if not any(f"{i}{suffix}" in present for suffix in IMAGE_SUFFIXES)]
    if absent:
        raise DataError(f"{root}: {len(absent)} of {len(ids)} ids have no JPEGImages/<id>.jpg (or .jpeg, .png) "
                        f"(first: {absent[0]}); add the images or drop their ids from {split_files}")
    for image_id in ids[:HEADERS]:
        size = image_size_of(_image_file(root, image_id), f"{root} image id {image_id}")
        file = root / "SegmentationClass" / f"{image_id}.png"
        try:
            with Image.open(file) as label_map:
                _check_header(file, label_map, size)
        except (OSError, ValueError) as exc:
            raise DataError(f"{file} is not a readable PNG ({type(exc).__name__}); replace it") from exc
    return train_count(voc_segmentation, options, {s: len(v) for s, v in sets.items()}, "all" not in sets, str(root))


dry_run_hooks(_voc_segmentation_probe)(voc_segmentation)
