"""The one aggregator: imports every built-in plug-in so that it registers itself.

Registries (``models.base``, ``data.base``, ``objectives.base``, ``pruning.base``, ``baselines.base``,
``metrics``, ``rewind``, ``schedules``, ``studies.base``) are leaves that import no plug-in; this module is
imported once, at the first lookup of any registry (the loader the package's ``__init__`` installs), so every
public entry point sees full registries and commands that only read files never import it.
A new plug-in is one new file plus one line here.
"""

import re

from ticketlab import dense_metrics as _dense_metrics  # noqa: F401  (coco_map, miou)
from ticketlab import run_jobs as _run_jobs  # noqa: F401  (the `find` and `round` job kinds)
from ticketlab.baselines import builtin as _baselines  # noqa: F401
from ticketlab.data import coco as _coco  # noqa: F401
from ticketlab.data import digits as _digits  # noqa: F401
from ticketlab.data import files as _files  # noqa: F401
from ticketlab.data import scenes as _scenes  # noqa: F401
from ticketlab.data import scenes_dense as _scenes_dense  # noqa: F401
from ticketlab.data import standard as _standard  # noqa: F401
from ticketlab.data import text as _text  # noqa: F401
from ticketlab.data import voc_seg as _voc_seg  # noqa: F401
from ticketlab.models import dense_heads as _dense_heads  # noqa: F401
from ticketlab.models import hf as _hf  # noqa: F401
from ticketlab.models import resnet as _resnet  # noqa: F401
from ticketlab.models import swin as _swin  # noqa: F401
from ticketlab.objectives import contrastive as _contrastive  # noqa: F401
from ticketlab.objectives import patches as _patch_objectives  # noqa: F401
from ticketlab.pruning import coupled_channel as _coupled_channel  # noqa: F401
from ticketlab.pruning import heads as _heads  # noqa: F401
from ticketlab.pruning import magnitude as _magnitude  # noqa: F401
from ticketlab.pruning import nm as _nm  # noqa: F401
from ticketlab.pruning import random as _random  # noqa: F401
from ticketlab.pruning import refill as _refill  # noqa: F401
from ticketlab.pruning import structured as _structured  # noqa: F401
from ticketlab.studies import cv_pretraining as _cv_study  # noqa: F401
from ticketlab.studies import patch_tickets as _patch_study  # noqa: F401
from ticketlab.studies import vl_tickets as _vl_study  # noqa: F401
from ticketlab.vl import adversarial as _adversarial  # noqa: F401
from ticketlab.vl import disk as _vl_disk  # noqa: F401
from ticketlab.vl import hf_backbones as _hf_backbones  # noqa: F401
from ticketlab.vl import metrics as _vl_metrics  # noqa: F401
from ticketlab.vl import model as _vl_model  # noqa: F401
from ticketlab.vl import pretraining as _vl_pretraining  # noqa: F401
from ticketlab.vl import tasks as _vl_tasks  # noqa: F401
from ticketlab.vl import uniter as _vl_uniter  # noqa: F401
from ticketlab.vl import vqa_score as _vqa_score  # noqa: F401


def catalog() -> dict[str, list[tuple[str, str]]]:
    """Every registered name with a one-line description, per kind (``ticketlab list``)."""
    from ticketlab.baselines.base import BASELINES
    from ticketlab.data.base import TASKS
    from ticketlab.jobs import JOB_KINDS
    from ticketlab.metrics import METRICS
    from ticketlab.models.base import HEADS, MODELS
    from ticketlab.objectives.base import OBJECTIVES
    from ticketlab.pruning.base import PRUNING_METHODS, STRUCTURES
    from ticketlab.rewind import REWIND_POINTS
    from ticketlab.schedules import SCHEDULES
    from ticketlab.studies.base import STUDIES

    registries = {"models": MODELS, "heads": HEADS, "tasks": TASKS, "metrics": METRICS,
                  "pruning methods": PRUNING_METHODS, "prune structures": STRUCTURES,
                  "schedules": SCHEDULES, "rewind points": REWIND_POINTS,
                  "objectives": OBJECTIVES, "baselines": BASELINES, "studies": STUDIES,
                  "job kinds": JOB_KINDS}
    return {title: [(name, _describe(obj)) for name, obj in registry.items()] for title, registry in registries.items()}


SCOPES = {"global": "one threshold over all prunable weights", "layerwise": "the same fraction in every layer",
          "channel": "whole output channels of inner convolutions", "head_ffn": "whole attention heads and FFN neurons",
          "coupled_channel": "whole channel groups of Torch-Pruning's dependency graph, residual streams included"}
MAX_DESCRIPTION = 150


def _describe(obj: object) -> str:
    """A complete one-line description: the first sentences of the entry's docstring (or label) that fit."""
    if hasattr(obj, "scorer"):  # a pruning method
        scores = obj.scorer.__name__.removesuffix("_scores")
        scope = SCOPES.get(obj.scope) or "N:M semi-structured: {} of every {} consecutive weights kept".format(
            *obj.scope.split("_")[1:])
        return f"{scores.capitalize()} scores, {scope}."
    doc = (getattr(obj, "func", obj).__doc__ or "").strip()
    label = getattr(obj, "description", "") or getattr(obj, "label", "")
    if label and doc and hasattr(obj, "label"):  # a baseline: its plot label, then what it is
        return f"{label} — {_first_sentences(doc)}"
    return _first_sentences(label or doc)


def _first_sentences(text: str) -> str:
    """The first paragraph, joined into one line, cut after the last whole sentence within the length limit."""
    paragraph = " ".join(text.strip().split("\n\n")[0].split())
    if not paragraph:
        return ""
    if len(paragraph) > MAX_DESCRIPTION:
        ends = [m.end() for m in re.finditer(r"[.!?](?=\s+[A-Z(`])", paragraph) if m.end() <= MAX_DESCRIPTION]
        paragraph = paragraph[: ends[-1]] if ends else paragraph
    return paragraph if paragraph.endswith((".", "!", "?")) else paragraph + "."
