"""The typed result of a unit of training: a small versioned record naming the task's metric and its score on
each split, plus the extras (sparsity, seeds, chance, timings...).

One place owns the layout. ``metrics.json`` of every unit (IMP round, baseline branch, transfer fine-tune,
pre-training, patch student) holds ``result_version``, ``metric`` and ``score: {split: value}`` beside the
extras; readers go through :func:`read_result` / :func:`score`, which also read the folders of versions before
the record (``test_acc`` / ``val_acc`` keys, whatever the metric was: their metric reads as ``unrecorded``).
A leaf: no torch, no plug-ins.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

RESULT_VERSION = 1
UNRECORDED = "unrecorded"  # the metric of a result written before the record (its task's metric was not stored)
# split -> its key in the flat dicts before version 1 (patch students scored three test inputs)
_LEGACY = {"val": "val_acc", "test": "test_acc", "test_all_patches": "dense_test_acc",
           "test_kept_patches": "sparse_test_acc", "test_selector_patches": "sparse_selector_acc"}


@dataclass(frozen=True)
class Result:
    metric: str  # the task's metric: accuracy, f1, mcc, recall@1, ...
    scores: dict[str, float]  # split -> score in that metric ("val": model selection, "test": reported)
    extras: dict[str, Any] = field(default_factory=dict)

    def score(self, split: str = "test") -> float:
        if split not in self.scores:
            raise KeyError(f"no {split!r} score in this result (it has {', '.join(self.scores) or 'none'})")
        return self.scores[split]

    @property
    def test(self) -> float:
        return self.score("test")

    @property
    def val(self) -> float:
        """The validation score; the test score for results that have none (reports judge them on test)."""
        return self.scores.get("val", self.scores["test"])

    def record(self) -> dict[str, Any]:
        """The JSON layout (extras flat beside the typed fields, so ``sparsity``, ``seed``... read as before)."""
        return {**self.extras, "result_version": RESULT_VERSION, "metric": self.metric, "score": dict(self.scores)}


def read_result(record: Mapping[str, Any]) -> Result:
    """A result from its JSON record, of this version or an older one (an old flat dict with ``test_acc``)."""
    version = record.get("result_version")
    if version is None:
        scores = {split: float(record[key]) for split, key in _LEGACY.items() if record.get(key) is not None}
        extras = {k: v for k, v in record.items() if k not in _LEGACY.values()}
        return Result(str(record.get("metric", UNRECORDED)), scores, extras)
    if version > RESULT_VERSION:
        raise ValueError(f"a result of version {version} (this ticketlab reads up to {RESULT_VERSION}); upgrade "
                         "ticketlab to read it")
    extras = {k: v for k, v in record.items() if k not in ("result_version", "metric", "score")}
    return Result(str(record["metric"]), {k: float(v) for k, v in record["score"].items()}, extras)


def score(record: Mapping[str, Any], split: str = "test") -> float:
    """The score on ``split`` of a stored record of any version (``val`` falls back to ``test`` when absent)."""
    result = read_result(record)
    return result.val if split == "val" else result.score(split)


def derived(record: Mapping[str, Any], **extras: Any) -> dict[str, Any]:
    """A report's row: the record's metric and scores with only the given extras."""
    result = read_result(record)
    return Result(result.metric, result.scores, extras).record()


def has_score(record: Mapping[str, Any], split: str) -> bool:
    return split in read_result(record).scores


def compute(record: Mapping[str, Any]) -> dict[str, float]:
    """A unit's compute ``{optimizer_steps, samples, seconds}``: as recorded, else from the trainer's own extras
    (one training, or a unit written before compute was recorded)."""
    return dict(record.get("compute") or {"optimizer_steps": int(record.get("steps", 0)),
                                          "samples": int(record.get("samples_seen", 0)),
                                          "seconds": float(record.get("train_seconds", 0.0))})
