"""Text classification from a user's own files: CSV, JSON, JSONL, or a Hugging Face dataset saved on disk.

``path`` is one file (split here by a seeded cut), a folder with ``train`` / ``validation`` (or ``val``) /
``test`` files of one format, or a ``save_to_disk`` folder (a Dataset, or a DatasetDict with those splits).
Texts (or text pairs) are tokenised with the model's own tokenizer (its folder is the default) to
``max_length`` with padding and truncation; string labels are mapped to ids in sorted order and the mapping is
kept as the task's class names. ``metric``: accuracy, f1 (macro) or mcc (Matthews) — all three are reported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ticketlab.data.base import SMOKE_WRITERS, TASKS, Split, Task, dry_run_hooks, label_names, split_indices
from ticketlab.data.smoke_files import N_TRAIN
from ticketlab.errors import DataError
from ticketlab.registry import bounds

FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json"}
SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val", "dev"), "test": ("test",)}


def _load_files(root: Path) -> dict[str, Any]:
    """The splits found at ``root``: {"all": ds} for one file or a Dataset, else train/val/test datasets."""
    try:
        import datasets
        from datasets import Dataset, DatasetDict, load_dataset, load_from_disk
    except ImportError as exc:
        raise DataError("text tasks need: pip install datasets") from exc
    datasets.disable_progress_bars()
    if root.is_file():
        if root.suffix.lower() not in FORMATS:
            raise DataError(f"{root}: a text file must be .csv, .json or .jsonl")
        return {"all": _read(load_dataset, FORMATS[root.suffix.lower()], {"train": str(root)})["train"]}
    if (root / "dataset_info.json").is_file() or (root / "dataset_dict.json").is_file():
        data = load_from_disk(str(root))
        if isinstance(data, Dataset):
            return {"all": data}
        assert isinstance(data, DatasetDict)
        return {split: next((data[n] for n in names if n in data), None) for split, names in SPLIT_NAMES.items()}
    files = _split_files(root)
    kinds = {FORMATS[Path(f).suffix.lower()] for f in files.values()}
    if len(kinds) > 1:
        raise DataError(f"{root}: the split files mix formats {sorted(kinds)}; use one format")
    return _read(load_dataset, kinds.pop(), files)


def _split_files(root: Path) -> dict[str, str]:
    """The train / validation / test files of a split-files folder (DataError naming the missing ones)."""
    files: dict[str, str] = {}
    for split, names in SPLIT_NAMES.items():
        found = [f for n in names for f in sorted(root.glob(f"{n}.*")) if f.suffix.lower() in FORMATS]
        if found:
            files[split] = str(found[0])
    if set(files) != set(SPLIT_NAMES):
        raise DataError(f"{root} needs train, validation (or val) and test files (.csv/.json/.jsonl), found "
                        f"{sorted(files) or 'none'}; or give one file to split")
    return files


def _read(load_dataset: Any, kind: str, files: dict[str, str]) -> dict[str, Any]:
    try:
        return dict(load_dataset(kind, data_files=files))
    except Exception as exc:  # noqa: BLE001  pyarrow / datasets raise many types for a malformed file
        raise DataError(f"could not parse {', '.join(files.values())} as {kind} ({str(exc).splitlines()[0][:160]}); "
                        "fix the file") from exc


def _check_columns(ds: Any, columns: list[str], where: str) -> None:
    for column in columns:
        if column not in ds.column_names:
            raise DataError(f"{where}: no column {column!r}; the columns are {ds.column_names} (set "
                            "task.options.text_column / text_pair_column / label_column)")


def _tokenize(ds: Any, tokenizer: Any, text_column: str, pair_column: str | None,
              max_length: int) -> dict[str, torch.Tensor]:
    texts = [str(t) for t in ds[text_column]]
    pairs = [str(t) for t in ds[pair_column]] if pair_column else None
    batch = tokenizer(texts, pairs, padding="max_length", truncation=True, max_length=max_length,
                      return_tensors="pt")
    out = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    used = int(out["attention_mask"].any(0).nonzero().max()) + 1 if len(texts) else 1
    return {k: v[:, :used].contiguous() for k, v in out.items()}  # drop columns that are padding everywhere


def _label_ids(values: list[list[Any]], where: str) -> tuple[list[np.ndarray], list[str]]:
    """Integer labels as they are; strings mapped in sorted order (the mapping becomes the class names)."""
    flat = [v for split in values for v in split]
    if any(v is None for v in flat):
        raise DataError(f"{where}: some labels are empty; fill or drop those rows")
    if all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in flat):
        count = max(int(v) for v in flat) + 1 if flat else 0
        return [np.asarray(split, dtype=np.int64) for split in values], [str(i) for i in range(count)]
    names = label_names(flat)
    index = {n: i for i, n in enumerate(names)}
    return [np.asarray([index[str(v)] for v in split], dtype=np.int64) for split in values], names


@TASKS.register("text")
@bounds(max_length=(2, 8192), val_fraction=(0.01, 0.5), test_fraction=(0.01, 0.5))
def text(path: str, text_column: str = "text", text_pair_column: str | None = None, label_column: str = "label",
         tokenizer: str | None = None, max_length: int = 128, metric: str = "accuracy", val_fraction: float = 0.1,
         test_fraction: float = 0.2, seed: int = 0) -> Task:
    """Sequence classification from CSV / JSON / JSONL files or a saved Hugging Face dataset."""
    if metric not in ("accuracy", "f1", "mcc"):
        raise DataError(f"task.options.metric must be accuracy, f1 or mcc, got {metric!r}")
    if tokenizer is None:
        raise DataError("a text task needs a tokenizer: give the model a checkpoint folder (model.options.path) or "
                        "set task.options.tokenizer")
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"dataset path {root} does not exist; check task.options.path")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(tokenizer)
    except (OSError, ValueError) as exc:
        raise DataError(f"no tokenizer in {tokenizer!r} ({str(exc).splitlines()[0][:120]}); set task.options."
                        "tokenizer to the model's folder") from exc
    splits = _load_files(root)
    columns = [text_column, label_column, *([text_pair_column] if text_pair_column else [])]
    for name, ds in splits.items():
        if ds is None:
            raise DataError(f"{root}: the dataset has no {name} split; it needs train, validation and test")
        _check_columns(ds, columns, f"{root} ({name})")
    if "all" in splits:
        whole = splits["all"]
        parts = split_indices(len(whole), val_fraction, test_fraction, seed)
        splits = {name: whole.select(np.sort(idx)) for name, idx in zip(("train", "val", "test"), parts, strict=True)}
    labels, names = _label_ids([list(splits[s][label_column]) for s in ("train", "val", "test")], str(root))
    built = [Split(_tokenize(splits[s], tok, text_column, text_pair_column, max_length), torch.as_tensor(y))
             for s, y in zip(("train", "val", "test"), labels, strict=True)]
    return Task(root.stem if root.is_file() else root.name, len(names), *built, class_names=names, metric=metric)


@SMOKE_WRITERS.register("text")
def smoke_text(options: dict[str, Any], root: Path) -> str:
    """A CSV of two separable classes, in the option's column names."""
    import csv

    columns = [options.get("text_column", "text"), options.get("label_column", "label")]
    with open(root / "data.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for i in range(N_TRAIN):
            good = i % 2 == 0
            writer.writerow([f"{'a fine good film' if good else 'a dull bad film'} number {i}",
                             "positive" if good else "negative"])
    return str(root / "data.csv")


def _dry_run_probe(options: dict[str, Any]) -> int | None:
    """``--dry-run``: the path and its split files; the training rows counted from lines (None: a saved dataset or a
    JSON array, not counted)."""
    root = Path(options["path"]).expanduser()
    if not root.exists():
        raise DataError(f"dataset path {root} does not exist; check task.options.path")
    if (root / "dataset_info.json").is_file() or (root / "dataset_dict.json").is_file():
        return None
    if root.is_dir():
        return _rows(Path(_split_files(root)["train"]))
    if root.suffix.lower() not in FORMATS:
        raise DataError(f"{root}: a text file must be .csv, .json or .jsonl")
    rows = _rows(root)
    fractions = (options.get("val_fraction", 0.1), options.get("test_fraction", 0.2))
    return None if rows is None else len(split_indices(rows, *fractions, 0)[0])


def _rows(file: Path) -> int | None:
    """Non-empty lines (less a CSV's header); None for a JSON array."""
    if file.suffix.lower() == ".json":
        return None
    with open(file, "rb") as handle:
        return sum(1 for line in handle if line.strip()) - (file.suffix.lower() == ".csv")


dry_run_hooks(_dry_run_probe)(text)
