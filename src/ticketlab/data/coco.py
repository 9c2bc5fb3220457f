"""``coco_detection``: object detection from COCO-format JSON or Pascal VOC XML, images resized to ``image_size``.

``format: coco`` — ``path`` is either COCO's folder (``annotations/instances_<split>.json`` with the images in
``<split>/``, e.g. ``instances_val2017.json`` + ``val2017/``; the split is read from the name: train / val /
test) or one JSON file (images in ``images/`` beside it, or beside the file). Category ids map, in increasing
order, to classes 0..K-1. Crowd annotations (``iscrowd: 1``) are dropped (COCOeval would ignore them; a
simplification) and so are boxes empty after clipping; a box more than 1 px outside its image is an error.
``format: voc`` — ``path`` is a VOC folder (``Annotations/*.xml``, ``JPEGImages/``, ``ImageSets/Main/``); boxes
are read as detectron2 reads them (1-based pixel indices: xmin - 1, ymin - 1), "difficult" objects kept; the 20
VOC classes in their usual order when every name is one of them, else the sorted names.

Images are resized to ``image_size`` x ``image_size`` (aspect not kept) and the boxes scaled with them. Splits:
see :mod:`ticketlab.data.dense_files`.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import numpy as np

from ticketlab.data.base import SMOKE_WRITERS, TASKS, Task, dry_run_hooks, label_names
from ticketlab.data.dense_files import (
    SPLITS,
    VOC_CLASSES,
    assign_splits,
    dense_task,
    existing,
    image_size_of,
    voc_split_ids,
)
from ticketlab.data.dense_labels import dense_head, pad_targets
from ticketlab.data.dense_probes import HEADERS, listing, option, require_files, train_count
from ticketlab.data.smoke_files import smoke_rng
from ticketlab.errors import ConfigError, DataError
from ticketlab.registry import bounds

TOLERANCE = 1.0  # px a box may stick out of its image (rounding in exported annotations); it is clipped


def _scaled(boxes: list[list[float]], size: tuple[int, int], image_size: int, what: str) -> np.ndarray:
    """Rows (class, x0, y0, x1, y1) in the file's pixels -> checked, clipped, scaled to the resized image."""
    width, height = size
    rows = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
    outside = (rows[:, 1] < -TOLERANCE) | (rows[:, 2] < -TOLERANCE) | (rows[:, 3] > width + TOLERANCE) | \
        (rows[:, 4] > height + TOLERANCE)
    if outside.any():
        c, x0, y0, x1, y1 = rows[np.argmax(outside)]
        raise DataError(f"{what}: box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the {width}x{height} image; "
                        "fix or drop that annotation")
    rows[:, [1, 3]] = rows[:, [1, 3]].clip(0, width) * (image_size / width)
    rows[:, [2, 4]] = rows[:, [2, 4]].clip(0, height) * (image_size / height)
    return rows[(rows[:, 3] > rows[:, 1]) & (rows[:, 4] > rows[:, 2])].astype(np.float32)


def _json_sets(root: Path) -> list[tuple[str | None, Path, Path]]:
    """(split or None, annotation file, image folder) of a COCO folder or a single JSON file."""
    if root.is_file():
        folder = root.parent / "images" if (root.parent / "images").is_dir() else root.parent
        return [(None, root, folder)]
    files = sorted((root / "annotations").glob("instances_*.json")) if (root / "annotations").is_dir() else []
    sets = []
    for file in files:
        stem = file.stem.removeprefix("instances_")
        split = next((s for s in SPLITS if s in stem), None)
        if split is not None:
            sets.append((split, file, root / stem if (root / stem).is_dir() else root / "images"))
    if not sets:
        raise DataError(f"{root} holds no annotations/instances_<train|val|test>*.json; point task.options.path at "
                        "a COCO folder or a COCO JSON file")
    if "train" not in {s for s, _, _ in sets}:
        raise DataError(f"{root}/annotations has no instances_train*.json; add the training annotations")
    if len({s for s, _, _ in sets}) != len(sets):
        raise DataError(f"{root}/annotations has several JSON files for one split; keep one per split")
    return sets


def _load_coco(file: Path, categories: dict[int, int]) -> tuple[list[dict], list[dict], dict[int, str]]:
    """(images, annotations, category names) of a COCO JSON; the first file read fixes ``categories``."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        images, annotations = data["images"], data.get("annotations", [])
        names = {int(c["id"]): str(c.get("name", c["id"])) for c in data.get("categories", [])}
        if not all({"id", "file_name"} <= img.keys() for img in images):
            raise KeyError("an image without id or file_name")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{file} is not COCO-format JSON (images, annotations, categories): "
                        f"{type(exc).__name__}; re-export it") from exc
    if not categories:
        categories.update({c: i for i, c in enumerate(sorted(names))})
    return images, annotations, names


def _counted(file: Path, ann: dict, image_ids: dict | set, categories: dict[int, int]) -> bool:
    """Whether annotation ``ann`` is used (crowds are not); one naming an unknown image or category is an error."""
    if ann.get("iscrowd", 0):
        return False
    if ann.get("image_id") not in image_ids:
        raise DataError(f"{file}: annotation {ann.get('id')} points to image id {ann.get('image_id')}, which is "
                        "not in 'images'; add the image or drop the annotation")
    if ann.get("category_id") not in categories:
        raise DataError(f"{file}: annotation {ann.get('id')} has category_id {ann.get('category_id')}, not in "
                        "'categories'; add the category or fix the annotation")
    return True


def _read_coco(file: Path, folder: Path, image_size: int,
               categories: dict[int, int]) -> tuple[list[Path], list[np.ndarray], list[str]]:
    images, annotations, names = _load_coco(file, categories)
    by_image: dict[Any, list[list[float]]] = {img["id"]: [] for img in images}
    for ann in annotations:
        if not _counted(file, ann, by_image, categories):
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        by_image[ann["image_id"]].append([categories[ann["category_id"]], x, y, x + w, y + h])
    files, targets = [], []
    for img in images:
        path = folder / img["file_name"]
        what = f"{file} image id {img['id']}"
        targets.append(_scaled(by_image[img["id"]], image_size_of(path, what), image_size, what))
        files.append(path)
    return files, targets, [names[c] for c in sorted(categories)]


def _read_voc(root: Path, ids: list[str]) -> tuple[list[Path], list[list[list[float]]], list[str]]:
    """Files, per-image (name, x0, y0, x1, y1) rows in file pixels (names resolved later), and every name seen."""
    files, rows, names = [], [], []
    for image_id in ids:
        xml = root / "Annotations" / f"{image_id}.xml"
        try:
            tree = ElementTree.parse(xml).getroot()
            found = [(obj.findtext("name", "").strip(), *(float(obj.find("bndbox").findtext(k)) for k in
                                                          ("xmin", "ymin", "xmax", "ymax")))
                     for obj in tree.iter("object")]
        except (OSError, ElementTree.ParseError, AttributeError, TypeError, ValueError) as exc:
            raise DataError(f"{xml} is not a readable VOC annotation ({type(exc).__name__}); fix or remove it") from exc
        file = root / "JPEGImages" / (tree.findtext("filename") or f"{image_id}.jpg").strip()
        files.append(file)
        rows.append([[n, x0 - 1, y0 - 1, x1, y1] for n, x0, y0, x1, y1 in found])
        names += [r[0] for r in rows[-1]]
    return files, rows, names


def _voc_sets(root: Path) -> dict[str, list[str]]:
    """Image ids per published split (ImageSets/Main), else ``{"all": every Annotations/*.xml}``."""
    return voc_split_ids(root, "Main") or {"all": sorted(f.stem for f in (root / "Annotations").glob("*.xml"))}


@TASKS.register("coco_detection")
@dense_head("detection")
@bounds(image_size=(32, 4096), val_fraction=(0.01, 0.5), test_fraction=(0.01, 0.5))
def coco_detection(path: str, format: str = "coco", image_size: int = 512, val_fraction: float = 0.1,
                   test_fraction: float = 0.2, seed: int = 0) -> Task:
    """Object detection from COCO JSON (``format: coco``) or Pascal VOC XML (``format: voc``); box mAP."""
    root = existing(path)
    files: list[Path] = []
    targets: list[np.ndarray] = []
    published: dict[str, list[int]] | None = {}
    if format == "coco":
        categories: dict[int, int] = {}
        for split, file, folder in _json_sets(root):
            split_files, split_targets, classes = _read_coco(file, folder, image_size, categories)
            if split is None:
                published = None
            else:
                published[split] = list(range(len(files), len(files) + len(split_files)))
            files, targets = files + split_files, targets + split_targets
        if published is not None and set(published) == {"train"}:
            published = None
    elif format == "voc":
        if not (root / "Annotations").is_dir():
            raise DataError(f"{root} has no Annotations/ folder; point task.options.path at a VOC folder "
                            "(Annotations/, JPEGImages/, ImageSets/Main/)")
        sets = _voc_sets(root)
        all_rows: list[list[list[float]]] = []
        names: list[str] = []
        for split, ids in sets.items():
            split_files, split_rows, split_names = _read_voc(root, ids)
            published[split] = list(range(len(files), len(files) + len(split_files)))
            files, all_rows, names = files + split_files, all_rows + split_rows, names + split_names
        classes = VOC_CLASSES if set(names) <= set(VOC_CLASSES) else label_names(names)
        index = {n: i for i, n in enumerate(classes)}
        for file, rows in zip(files, all_rows, strict=True):
            what = f"{root / 'Annotations'} image id {file.stem}"
            targets.append(_scaled([[index[r[0]], *r[1:]] for r in rows], image_size_of(file, what), image_size,
                                   what))
        published = None if "all" in sets else published
    else:
        raise ConfigError(f"task.options.format must be coco or voc, got {format!r}")
    rows = assign_splits(published, len(files), val_fraction, test_fraction, seed)
    return dense_task(root.stem, files, pad_targets(targets), rows, classes, image_size, "detection", str(root))


@SMOKE_WRITERS.register("coco_detection")
def smoke_coco_detection(options: dict[str, Any], root: Path) -> str:
    """Scene images with their boxes, in COCO's layout (train2017 / val2017) or VOC's (``format: voc``)."""
    from PIL import Image

    from ticketlab.data.scenes import SHAPES, generate_scenes
    from ticketlab.data.scenes_dense import scene_boxes

    rng = smoke_rng("coco_detection")
    images, scenes = generate_scenes(24, int(rng.integers(1000)), 40)
    voc = options.get("format") == "voc"
    for folder in (["Annotations", "JPEGImages", "ImageSets/Main"] if voc else ["annotations", "train2017",
                                                                              "val2017"]):
        (root / folder).mkdir(parents=True, exist_ok=True)
    coco: dict[str, dict[str, Any]] = {s: {"images": [], "annotations": [], "categories": [
        {"id": i + 1, "name": n} for i, n in enumerate(SHAPES)]} for s in ("train2017", "val2017")}
    for i, (image, scene) in enumerate(zip(images, scenes, strict=True)):
        split, name = ("train2017" if i < 16 else "val2017"), f"{i:06d}"
        boxes = scene_boxes(scene, 40)
        if voc:
            Image.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg")
            objects = "".join(f"<object><name>{SHAPES[int(c)]}</name><difficult>0</difficult><bndbox><xmin>{x0 + 1:g}"
                              f"</xmin><ymin>{y0 + 1:g}</ymin><xmax>{x1:g}</xmax><ymax>{y1:g}</ymax></bndbox></object>"
                              for c, x0, y0, x1, y1 in boxes)
            (root / "Annotations" / f"{name}.xml").write_text(
                f"<annotation><filename>{name}.jpg</filename>{objects}</annotation>", encoding="utf-8")
            continue
        Image.fromarray(image).save(root / split / f"{name}.png")
        coco[split]["images"].append({"id": i, "file_name": f"{name}.png", "width": 40, "height": 40})
        coco[split]["annotations"] += [{"id": 100 * i + k, "image_id": i, "category_id": int(c) + 1, "iscrowd": 0,
                                        "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]}
                                       for k, (c, x0, y0, x1, y1) in enumerate(boxes)]
    if voc:
        for split, ids in (("train", range(16)), ("val", range(16, 24))):
            (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i:06d}\n" for i in ids))
        return str(root)
    for split, data in coco.items():
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data), encoding="utf-8")
    return str(root)


# -- --dry-run probe (``dry_run_hooks``): the layout, annotations against images, presence by listing, few headers ----
def _coco_probe(options: dict[str, Any]) -> int:
    """COCO: every JSON parsed and its annotations checked against its images and categories as the reader checks
    them, every listed image present, the first few images' headers read. VOC: :func:`_voc_probe`."""
    root = existing(str(options["path"]))
    format = option(coco_detection, options, "format")
    if format == "voc":
        return _voc_probe(root, options)
    if format != "coco":
        raise ConfigError(f"task.options.format must be coco or voc, got {format!r}")
    sets = _json_sets(root)
    categories: dict[int, int] = {}
    sizes: dict[str, int] = {}
    for split, file, folder in sets:
        images, annotations, _ = _load_coco(file, categories)
        image_ids = {img["id"] for img in images}
        for ann in annotations:
            _counted(file, ann, image_ids, categories)
        require_files(folder, [str(img["file_name"]) for img in images], str(file),
                      "add the images or drop them from the JSON's 'images'")
        for img in images[:HEADERS]:
            image_size_of(folder / img["file_name"], f"{file} image id {img['id']}")
        sizes[split or "all"] = len(images)
    return train_count(coco_detection, options, sizes, bool(set(sizes) - {"all", "train"}), str(root))


def _voc_probe(root: Path, options: dict[str, Any]) -> int:
    """Annotations/ and JPEGImages/ present, an XML and an image for every listed id, the first few XMLs parsed as
    the reader parses them and their images' headers read (an XML is parsed only when its image is not <id>.jpg)."""
    for folder in ("Annotations", "JPEGImages"):
        if not (root / folder).is_dir():
            raise DataError(f"{root} has no {folder}/ folder; point task.options.path at a VOC folder "
                            "(Annotations/, JPEGImages/, ImageSets/Main/)")
    sets = _voc_sets(root)
    ids = [i for split_ids in sets.values() for i in split_ids]
    require_files(root / "Annotations", [f"{i}.xml" for i in ids], str(root / "ImageSets" / "Main"),
                  "add the annotations or drop their ids from the split files")
    images, present = root / "JPEGImages", listing(root / "JPEGImages")
    odd = [i for i in ids if f"{i}.jpg" not in present]  # named otherwise in its XML, or missing
    named = {i: str(f.relative_to(images) if f.is_relative_to(images) else f)
             for i, f in zip(odd, _read_voc(root, odd)[0], strict=True)}
    require_files(images, [named.get(i, f"{i}.jpg") for i in ids], str(root / "Annotations"),
                  "add the images or remove their annotations")
    for file in _read_voc(root, ids[:HEADERS])[0]:
        image_size_of(file, f"{root / 'Annotations'} image id {file.stem}")
    return train_count(coco_detection, options, {s: len(v) for s, v in sets.items()}, "all" not in sets, str(root))


dry_run_hooks(_coco_probe)(coco_detection)
