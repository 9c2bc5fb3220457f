"""Verdict rows shared by the study reports: the written rules, a sparsity claim judged on validation scores over
seeds, and a paired comparison — so every study states its verdicts the same way (``stats`` holds the arithmetic)."""

from __future__ import annotations

from typing import Any

from ticketlab.analysis import at_chance
from ticketlab.figures import pct
from ticketlab.results import score
from ticketlab.stats import (
    Interval,
    gap_verdict,
    interval_text,
    mean_ci,
    minimum_detectable_effect,
    seeds_needed,
    sparsity_claim,
)
from ticketlab.studies.verdict_file import VerdictRow, comparison_record, paired_gap, record_gaps, sparsity_record

MATCHING_MARGIN = 0.01  # a matching ticket may be at most 1 pt below dense (the equivalence margin)

RULES = [  # the written rules every study report quotes above its verdict table
    "**Sparsity claims** (\"a matching ticket exists at s*\"), an equivalence (non-inferiority) test: per sparsity "
    "run, the paired 95 % t-interval over seeds of (sparse − dense) *validation* score; margin δ = 1 pt for "
    "matching, and for relaxed the gap is taken against 99 % of dense (δ = 1 % of dense). Reproduced when the "
    "interval's lower end is ≥ −δ at s* and at every sparsity below it that was run; contradicted when some "
    "interval's upper end is < −δ there; otherwise inconclusive, with the seeds a decision would need (power 0.8). "
    "A claim above the highest sparsity run is \"not tested\".",
    "**Usable references** (one rule for every claim): a dense reference (and the A side of a comparison) carries a "
    "claim only when (a) its mean is above chance by the binomial rule on its test size — more than two binomial "
    "standard errors above the majority-class rate of that test set —, (b) it converged: validation rose by at most "
    "1 pt over the last quarter of its epochs, and (c) it is below the 99 % ceiling; otherwise the row is "
    "inconclusive and says which.",
    "**Comparisons** (\"A beats B\"): the paired 95 % t-interval over seeds of (A − B) test score: above 0 → "
    "reproduced, below 0 → contradicted, straddling 0 → inconclusive (also when A is not usable). The "
    "comparisons of one table are one family: a decision stands only if the paired t-test also rejects under "
    "Holm's step-down rule at family-wise 5 % (the row names its raw decision when Holm overrules it).",
    "Every row's per-seed numbers are in `verdicts.json`; `ticketlab verdicts <this folder>` recomputes the table "
    "from that file alone.",
]


def run_cells(label: str, runs: dict[int, dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, Any]]:
    """IMP runs of one task over seeds in the cell format of ``analysis.summarize_transfer``."""
    cells: dict[tuple[str, str, int], dict[str, Any]] = {}
    for seed, run in runs.items():
        for r in run["rounds"]:
            m = r["metrics"]
            cell = cells.setdefault((label, "", r["round"]), {"sparsity": r["sparsity"], "val": {}, "test": {},
                                                              "chance_test": m.get("chance_test"),
                                                              "n_test": m.get("n_test"), "converged": True})
            cell["val"][seed], cell["test"][seed] = score(m, "val"), score(m)
            cell["converged"] = cell["converged"] and m.get("converged", True)
    for cell in cells.values():
        cell["ci"] = mean_ci(list(cell["test"].values()))
    return cells


CEILING = 0.99  # a reference at or above it leaves no room to measure a loss: claims on it are inconclusive


def reference_problem(cell: dict[str, Any]) -> str | None:
    """Why a reference cannot carry a claim (None: it can): at chance by the binomial rule on its test size
    (``analysis.at_chance`` on its mean over seeds — the one rule everywhere), not converged (validation still
    rose by more than 1 pt over the last quarter of its epochs, ``stats.converged``), or at ceiling (≥ 99 %)."""
    mean = cell["ci"].mean
    if mean is None:
        return "no runs"
    if at_chance(mean, cell.get("chance_test"), cell.get("n_test")):
        return "at chance"
    if cell.get("converged") is False:
        return "not converged"
    return "at ceiling" if mean >= CEILING else None


def usable(cell: dict[str, Any]) -> bool:
    return reference_problem(cell) is None


def claim_row(what: str, claimed: float | None, cells: dict[tuple[str, str, int], dict[str, Any]], source: str,
              target: str, relaxed: float | None = None) -> list[str]:
    """A verdict row for "a matching ticket (relaxed: ≥ ``relaxed`` × dense) exists at ``claimed`` sparsity"."""
    if claimed is None:
        return VerdictRow([what, "(no claim given)", "–", "–", "–"])
    dense = cells[(source, target, 0)]
    kind = "matching" if relaxed is None else f"relaxed ({relaxed:.0%})"
    margin = MATCHING_MARGIN if relaxed is None else 0.0
    # the row is decided from its record, so ``ticketlab verdicts`` recomputes exactly what the report shows
    record = sparsity_record(cells, source, target, 1.0 if relaxed is None else relaxed, claimed, margin,
                             usable(dense))
    gaps = record_gaps(record)
    result = sparsity_claim(gaps, claimed, record["usable"], margin)
    at = next((c for (s, t, k), c in cells.items() if (s, t) == (source, target) and k > 0
               and abs(c["sparsity"] - (result.measured or -1)) < 1e-9), None)
    measured = (f"{kind} (validation) up to {pct(result.measured)}; test there {interval_text(at['ci'])} vs dense "
                f"{interval_text(dense['ci'])}" if at else f"no sparsity matches; dense {interval_text(dense['ci'])}")
    gap_at_t = next((g for s, g in reversed(gaps) if s <= result.tested + 1e-9), gaps[0][1] if gaps else None)
    judged = (f"judged at {pct(result.tested)}" if result.verdict != "not tested"
              else f"highest sparsity run {pct(result.tested)}")
    problem = reference_problem(dense)
    return VerdictRow([what, f"{kind} at {pct(claimed)} ({judged})", measured,
                       f"{interval_text(gap_at_t, signed=True)} pts at {pct(result.tested)}; chance "
                       f"{pct(dense.get('chance_test'))}{decision_distance(gap_at_t, margin, result.verdict)}"
                       + (f"; dense reference {problem}: inconclusive" if problem else ""),
                       result.verdict], record)


def decision_distance(gap: Interval | None, margin: float, verdict: str) -> str:
    """What an inconclusive row lacks: its minimum detectable effect and the seeds a decision at δ would need."""
    if verdict != "inconclusive" or gap is None:
        return ""
    mde, needed = minimum_detectable_effect(gap), seeds_needed(gap, margin)
    if mde is None:
        return "; one seed: no interval"
    seeds = f"≥ {needed} seeds" if needed else "more than 1,000 seeds (the gap sits on the margin)"
    return f"; detectable with these seeds: {100 * mde:.1f} pts; deciding at δ = {100 * margin:.1f} pts needs {seeds}"


def comparison_row(what: str, a: dict[int, float], b: dict[int, float], chance: float | None,
                   n_test: int | None = None, converged: bool = True) -> list[str]:
    """A verdict row for "A beats B", paired by seed (``a``, ``b``: seed → test score); inconclusive when A is
    not usable: its mean at chance by the binomial rule on the test size, a training of A not converged
    (``converged``: all of A's trainings converged), or A at ceiling."""
    if not a or not b:
        return VerdictRow([what, "A > B", "no runs to compare", "–", "inconclusive"])
    seeds = sorted(set(a) & set(b))
    gap = paired_gap(a, b)
    problem = reference_problem({"ci": mean_ci([a[s] for s in seeds]), "chance_test": chance, "n_test": n_test,
                                 "converged": converged})
    ok = len(seeds) > 1 and problem is None
    scores = f"A {interval_text(mean_ci(list(a.values())))} vs B {interval_text(mean_ci(list(b.values())))}"
    return VerdictRow([what, "A > B", scores, f"{interval_text(gap, signed=True)} pts; chance {pct(chance)}"
                       + (f"; A {problem}: inconclusive" if problem else ""),
                       gap_verdict(gap, ok)], comparison_record(a, b, ok))
