"""The report of one IMP run: results table (terminal / Markdown) and the sparsity-accuracy plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ticketlab.analysis import at_chance, highest_sparsity
from ticketlab.baselines.base import branch_label
from ticketlab.figures import markdown_table, pct, pyplot
from ticketlab.fileio import read_json
from ticketlab.paths import IMP, RunPaths
from ticketlab.results import compute, read_result, score
from ticketlab.runfolders import load_run


def results_table(run: dict[str, Any]) -> str:
    """Markdown table: one row per round, the test score (the task's metric, in %) of IMP and each baseline."""
    branches = list(run["baselines"])
    by_branch = {b: {r["round"]: r for r in rows} for b, rows in run["baselines"].items()}
    stored = {b: next((r["metrics"].get("label") for r in rows), None) for b, rows in run["baselines"].items()}
    head = ["round", "sparsity (prunable)", "sparsity (model)", "IMP", *[branch_label(b, stored[b]) for b in branches],
            "IMP optimizer steps"]
    rows = []
    for row in run["rounds"]:
        k, m = row["round"], row["metrics"]
        cells = [str(k), f"{m['sparsity']:.2%}", f"{m['model_sparsity']:.2%}",
                 _score(m) if fully_trained(m) else f"mask search only ({m['steps']} steps)"]
        for b in branches:
            other = by_branch[b].get(k)
            cells.append(_score(other["metrics"]) if other else ("(dense)" if k == 0 else "—"))
        rows.append([*cells, f"{unit_compute(m)[0]:,}"])
    lines = [markdown_table(head, rows)]
    if run["rounds"]:
        dense = run["rounds"][0]["metrics"]
        result = read_result(dense)
        lines += ["", f"dense test {result.metric} {result.test:.2%}; " + ticket_summary(run["rounds"], result.test)]
        if dense.get("chance_test") is not None:
            lines += [f"chance (majority class of the {dense['n_test']} test examples): {dense['chance_test']:.2%}; "
                      "† = at chance (within 2 binomial standard errors of it)"]
            if at_chance(result.test, dense["chance_test"], dense["n_test"]):
                lines += ["the dense model is at chance: every comparison with it is inconclusive"]
        lines += [compute_line(run)]
        if dense.get("device") is not None:
            lines += [f"trained on {dense['device']}, {dense.get('precision', '?')}, {dense.get('world_size', 1)} "
                      f"process(es), {dense.get('threads', 'unrecorded')} CPU thread(s) per process"]
    return "\n".join(lines)


def fully_trained(metrics: dict[str, Any]) -> bool:
    """False for an intermediate round of cheaper IMP that only searched for the next mask (``mask_search``)."""
    return metrics.get("fully_trained", True)


def unit_compute(metrics: dict[str, Any]) -> tuple[int, int, float]:
    """(optimizer steps, samples, seconds) of one unit; units written before compute was recorded: their steps."""
    c = compute(metrics)
    return int(c["optimizer_steps"]), int(c["samples"]), float(c["seconds"])


def compute_line(run: dict[str, Any]) -> str:
    """What the run cost, IMP and baselines, beside what full IMP (every round a full training) would cost."""
    imp = [unit_compute(r["metrics"]) for r in run["rounds"]]
    other = [unit_compute(r["metrics"]) for rows in run["baselines"].values() for r in rows]
    steps, seconds = sum(c[0] for c in imp), sum(c[2] for c in imp)
    full = imp[0][0] * len(imp) if imp else 0
    shown = [str(r["round"]) for r in run["rounds"] if fully_trained(r["metrics"])]
    return (f"compute: IMP {steps:,} optimizer steps ({sum(c[1] for c in imp):,} samples, {seconds:.0f} s) — full IMP "
            f"of these rounds: {full:,} steps ({steps / max(full, 1):.2f}×); baselines {sum(c[0] for c in other):,} "
            f"steps ({sum(c[2] for c in other):.0f} s); rounds fully trained: {', '.join(shown)}")


def folders_compute(folders: list[Path]) -> str:
    """One line: the compute of every unit (a ``metrics.json`` with steps, or a patch selector's ``selector.json``)
    under ``folders`` — a study's total."""
    files = sorted({p for folder in folders for name in ("metrics.json", "selector.json")
                    for p in Path(folder).rglob(name)})
    records = (read_json(p) for p in files)  # a selector keeps its training's metrics inside selector.json
    records = (m.get("metrics", m) if isinstance(m, dict) and p.name == "selector.json" else m
               for p, m in zip(files, records, strict=True))
    units = [m for m in records if isinstance(m, dict) and ("steps" in m or "compute" in m)]
    steps, samples, seconds = (sum(c[i] for c in map(unit_compute, units)) for i in range(3))
    return (f"compute of every training behind this report: {len(units)} units, {steps:,} optimizer steps, "
            f"{samples:,} samples, {seconds / 3600:.2f} h (units reused from earlier runs included)")


def _score(metrics: dict[str, Any]) -> str:
    test = score(metrics)
    flag = " †" if at_chance(test, metrics.get("chance_test"), metrics.get("n_test")) else ""
    return f"{test:.2%}{flag}"


def ticket_summary(rounds: list[dict[str, Any]], dense: float, relaxed: float = 0.99) -> str:
    """Highest sparsity up to which every IMP round is matching (val >= dense val) and relaxed (>= 99 %), decided
    on *validation* scores, with the test score there; inconclusive when the dense model is at chance."""
    first = rounds[0]["metrics"] if rounds else {}
    if at_chance(score(first) if first else dense, first.get("chance_test"), first.get("n_test")):
        return "matching / relaxed sparsity: inconclusive (the dense model is at chance)"
    dense_val = score(first, "val") if first else dense
    curve = [(r["sparsity"], score(r["metrics"], "val")) for r in rounds
             if r["round"] > 0 and fully_trained(r["metrics"])]
    test_at = {r["sparsity"]: score(r["metrics"]) for r in rounds}

    def shown(s: float | None) -> str:
        return pct(s) if s is None else f"{pct(s)} (test {test_at[s]:.2%})"

    return (f"highest matching sparsity {shown(highest_sparsity(curve, dense_val))}; highest relaxed ({relaxed:.0%}) "
            f"sparsity {shown(highest_sparsity(curve, relaxed * dense_val))} — every lower round matches too, decided "
            "on validation scores (one seed: no interval)")


def plot_sparsity_accuracy(run: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=150)
    series = {IMP: run["rounds"], **run["baselines"]}
    markers = {IMP: "o", "omp": "s", "random_prune": "v", "random_reinit": "x", "reversed": "d"}
    for branch, rows in series.items():
        rows = [r for r in rows if r["round"] > 0 and fully_trained(r["metrics"])]
        if rows:
            ax.plot([100 * r["sparsity"] for r in rows], [100 * score(r["metrics"]) for r in rows],
                    marker=markers.get(branch, "."), label=branch_label(branch),
                    linewidth=2 if branch == IMP else 1.2)
    if run["rounds"]:
        dense = 100 * score(run["rounds"][0]["metrics"])
        ax.axhline(dense, color="black", linestyle="--", linewidth=1, label=f"dense ({dense:.1f} %)")
        ax.axhspan(0.99 * dense, dense, color="grey", alpha=0.15, label="relaxed (≥ 99 % of dense)")
        chance = run["rounds"][0]["metrics"].get("chance_test")
        if chance is not None:
            ax.axhline(100 * chance, color="red", linestyle=":", linewidth=1, label=f"chance ({100 * chance:.1f} %)")
    cfg = run["config"]
    ax.set_xlabel("sparsity of the prunable weights (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{cfg['model']['name']} on {cfg['task']['name']} — {cfg['prune']['method']}, "
                 f"rewind to {cfg['prune']['rewind']}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(run_dir: Path) -> dict[str, Any]:
    paths = RunPaths(run_dir)
    run = load_run(run_dir)
    paths.results.write_text(f"# {run['run']}\n\n{results_table(run)}\n\n![]({paths.plot.name})\n")
    plot_sparsity_accuracy(run, paths.plot)
    return run
