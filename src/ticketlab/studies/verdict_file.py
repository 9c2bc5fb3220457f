"""Verdicts a reader can re-check: every verdict row of a study report carries the per-seed numbers its rule uses
(``VerdictRow.record``); the report folder keeps them in ``verdicts.json``, and ``ticketlab verdicts DIR``
recomputes every verdict from that file alone and compares it with the report.

Units are keyed ``seed + 1000 · replicate`` (``studies.common``): when a row spans several independent
pre-training replicates, its interval is taken over replicates (each the mean of its nested seeds), never over
seeds that share a θp as if they were independent; with one replicate, over seeds.

Comparisons ("A beats B") of one table form one family: their verdicts are Holm-adjusted (family-wise 5 %); a
row whose raw interval decides but whose Holm test does not reads "inconclusive" and says so.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from ticketlab.errors import CorruptFileError, TicketlabError
from ticketlab.fileio import read_json, write_json
from ticketlab.stats import Interval, drop_claim, gap_verdict, holm, mean_ci, paired_ci, paired_p, sparsity_claim
from ticketlab.studies.common import replicate_of

VERSION = 1
FILE = "verdicts.json"
HOLM_NOTE = "; raw interval decides ({raw}), not significant after Holm over the {m} comparisons of this table"


class VerdictRow(list):
    """A verdict table row (claim, paper, measured, context, verdict) with the inputs its rule recomputes from."""

    def __init__(self, cells: list[str], record: dict[str, Any] | None = None) -> None:
        super().__init__(cells)
        self.record = record


def _seeded(values: dict[Any, float]) -> dict[str, float]:
    return {str(k): float(v) for k, v in values.items()}


def pool_by_replicate(values: dict[Any, float]) -> list[float]:
    """One value per unit, or with units of more than one replicate the mean of each replicate's units."""
    ordered = sorted(values, key=lambda k: int(k))
    groups: dict[int, list[float]] = {}
    for key in ordered:
        groups.setdefault(replicate_of(int(key)), []).append(values[key])
    if len(groups) <= 1:
        return [values[k] for k in ordered]
    return [statistics.fmean(v) for v in groups.values()]


def paired_units(a: dict[Any, float], b: dict[Any, float]) -> tuple[list[float], list[float]]:
    """A and B paired on their shared units; with units of more than one replicate, pooled to one pair per
    replicate (the mean over its seeds), so an interval's degrees of freedom are the independent θp."""
    shared = set(a) & set(b)
    return pool_by_replicate({k: a[k] for k in shared}), pool_by_replicate({k: b[k] for k in shared})


def paired_gap(a: dict[Any, float], b: dict[Any, float]) -> Interval | None:
    """The paired 95 % interval of (A − B) over ``paired_units`` (None: nothing shared)."""
    x, y = paired_units(a, b)
    return paired_ci(x, y) if x else None


def record_gaps(record: dict[str, Any]) -> list[tuple[float, Interval]]:
    """Per sparsity of a sparsity-claim record, the paired interval of (sparse − reference) over shared units."""
    gaps = []
    for point in record["gaps"]:
        if (gap := paired_gap(point["sparse"], point["reference"])) is not None:
            gaps.append((point["sparsity"], gap))
    return gaps


def recompute(record: dict[str, Any]) -> str | None:
    """The raw verdict of one recorded row (before Holm), or None for rows whose rule is not recorded."""
    rule = record.get("rule")
    if rule == "sparsity":
        return sparsity_claim(record_gaps(record), record["claimed"], record["usable"], record["margin"]).verdict
    if rule == "comparison":
        return gap_verdict(paired_gap(record["a"], record["b"]), record["usable"])
    if rule == "imp_vs_reinit":
        if not record["cnn"] or not record["vit"]:  # no re-init baseline was run
            return "inconclusive"
        return imp_vs_reinit_verdict(mean_ci(record["cnn"]), mean_ci(record["vit"]), record["usable"])
    if rule == "drop":
        if not record["drops"] or not record.get("usable", True):
            return "inconclusive"
        return drop_claim(mean_ci(record["drops"]), record["most"])
    return None


def comparison_p(record: dict[str, Any]) -> float | None:
    return paired_p(*paired_units(record["a"], record["b"])) if record["usable"] else None


def final_verdicts(records: list[dict[str, Any] | None], stored: list[str]) -> list[str]:
    """Every row's verdict: recomputed where recorded (Holm over the table's comparisons), else as stored."""
    raw = [recompute(r) if r else None for r in records]
    family = [i for i, r in enumerate(records) if r and r.get("rule") == "comparison"]
    pvalues = [comparison_p(records[i]) for i in family]
    rejected = holm([1.0 if p is None else p for p in pvalues]) if family else []
    out = [v if v is not None else s for v, s in zip(raw, stored, strict=True)]
    for i, keep in zip(family, rejected, strict=True):
        if out[i] in ("reproduced", "contradicted") and not keep:
            out[i] = "inconclusive"
    return out


def apply_holm(rows: list[list[str]]) -> list[list[str]]:
    """The table's comparison verdicts, Holm-adjusted in place (the raw decision is named where they differ)."""
    records = [getattr(row, "record", None) for row in rows]
    adjusted = final_verdicts(records, [row[-1] for row in rows])
    m = sum(1 for r in records if r and r.get("rule") == "comparison")
    for row, verdict in zip(rows, adjusted, strict=True):
        if verdict != row[-1]:
            row[-2] += HOLM_NOTE.format(raw=row[-1], m=m)
            row[-1] = verdict
    return rows


def write_verdicts(out: Path, rows: list[list[str]]) -> Path:
    """``verdicts.json`` beside the report: each row's claim, verdict and recorded inputs."""
    entries = [{"claim": row[0], "verdict": row[-1], **(getattr(row, "record", None) or {"rule": "not recorded"})}
               for row in rows]
    write_json(out / FILE, {"version": VERSION, "rows": entries})
    return out / FILE


def check_verdicts(folder: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(claim, recomputed verdict) per row, and every problem: a row whose recomputed verdict differs from the one
    in ``verdicts.json`` or in ``report.md``."""
    path = Path(folder) / FILE
    if not path.is_file():
        raise TicketlabError(f"{folder} has no {FILE}; re-run the study with this version to write it")
    try:
        data = read_json(path)
        rows = data["rows"]
        records = [None if r.get("rule") == "not recorded" else r for r in rows]
        verdicts = final_verdicts(records, [r["verdict"] for r in rows])
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"{path} is not a verdicts file this version reads ({exc}); re-run the study") from None
    report = (Path(folder) / "report.md").read_text(encoding="utf-8") if (Path(folder) / "report.md").is_file() else ""
    problems = []
    for row, verdict in zip(rows, verdicts, strict=True):
        if verdict != row["verdict"]:
            problems.append(f"{row['claim']!r}: the recorded numbers give {verdict}, the file says {row['verdict']}")
        elif report and not any(line.startswith(f"| {row['claim']} |") and line.endswith(f"| {verdict} |")
                                for line in report.splitlines()):
            problems.append(f"{row['claim']!r}: report.md does not show the verdict {verdict}")
    return [(r["claim"], v) for r, v in zip(rows, verdicts, strict=True)], problems


def sparsity_record(cells: dict[tuple[str, str, int], dict[str, Any]], source: str, target: str, factor: float,
                    claimed: float, margin: float, usable: bool) -> dict[str, Any]:
    """The inputs of a sparsity claim: per sparse round, the per-seed validation scores and factor × dense."""
    dense = cells[(source, target, 0)]["val"]
    gaps = [{"sparsity": cell["sparsity"], "sparse": _seeded(cell["val"]),
             "reference": _seeded({s: factor * v for s, v in dense.items()})}
            for (s, t, k), cell in sorted(cells.items()) if (s, t) == (source, target) and k > 0]
    return {"rule": "sparsity", "claimed": float(claimed), "margin": float(margin), "usable": bool(usable),
            "gaps": gaps}


def comparison_record(a: dict[Any, float], b: dict[Any, float], usable: bool) -> dict[str, Any]:
    return {"rule": "comparison", "a": _seeded(a), "b": _seeded(b), "usable": bool(usable)}


def imp_vs_reinit_verdict(cnn: Interval, vit: Interval, usable: bool = True) -> str:
    """Shen et al.'s claim 1 (weight-level IMP barely beats re-init on a ViT, clearly on a CNN), from the intervals
    over seeds of each architecture's gap IMP − re-init: reproduced when the CNN's interval lies above 0 and the
    ViT's mean is below its lower end; contradicted when the CNN's lies below 0 or the ViT's lies wholly above the
    CNN's; otherwise, or with a reference not usable (``verdicts.reference_problem``), inconclusive."""
    if not usable or None in (cnn.low, cnn.high, vit.low, vit.high):
        return "inconclusive"
    if cnn.high < 0 or vit.low > cnn.high:
        return "contradicted"
    return "reproduced" if cnn.low > 0 and vit.mean < cnn.low else "inconclusive"


def imp_vs_reinit_record(cnn: list[float], vit: list[float], usable: bool) -> dict[str, Any]:
    """Per seed, each architecture's gap IMP − re-init averaged over the IMP rounds."""
    return {"rule": "imp_vs_reinit", "cnn": [float(x) for x in cnn], "vit": [float(x) for x in vit],
            "usable": bool(usable)}
