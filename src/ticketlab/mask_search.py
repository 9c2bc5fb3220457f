"""Cheaper IMP: intermediate rounds that stop once their mask is found, full training only where it is reported.

IMP spends a full training per round, though only the last round's ticket (and the dense reference) is usually
reported; the intermediate rounds exist to find masks. Two ways to find them for less (``prune.*``):

- ``early_bird: {epsilon, window, every}`` (You et al., ICLR 2020): every ``every`` optimizer steps the round
  draws the mask it would prune to (the same method, structure and target as its end); the round stops when the
  normalised Hamming distance between consecutive draws has stayed below ``epsilon`` for ``window`` draws. The
  mask drawn then is the next round's mask. The distance curve is kept with the round and plotted.
- ``round_budget: 0.25``: a fixed fraction of the round's steps, then the mask is drawn from the weights there.

Round 0 (the dense reference, whose weights prune round 1) and the last round always train fully. An
intermediate round listed in ``report_rounds`` (``all`` — the default, ``last`` or a list) trains again fully
from the rewind point with its mask, so every reported score is a full training; the others record their search
only, and reports show them as such. Every unit records its compute (optimizer steps, samples, seconds).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ticketlab.errors import ConfigError
from ticketlab.masks import Mask
from ticketlab.results import compute
from ticketlab.train import Callback


def mask_distance(a: Mask, b: Mask) -> float:
    """Normalised Hamming distance: the fraction of prunable weights on which the two masks disagree."""
    if a.names() != b.names():
        raise ConfigError("mask_distance needs masks over the same weights")
    return float((a.flat() != b.flat()).sum()) / max(a.num_total(), 1)


class MaskSearch(Callback):
    """Draws the would-be mask during a round and asks the trainer to stop once it is found (``stop``)."""

    def __init__(self, draw: Callable[[nn.Module], Mask], *, every: int = 0, epsilon: float | None = None,
                 window: int = 1, budget_step: int | None = None) -> None:
        self.draw, self.every, self.epsilon, self.window, self.budget_step = draw, every, epsilon, window, budget_step
        self.stop, self.stopped_at = False, None
        self.curve: list[list[float]] = []  # [step, distance to the previous draw]
        self.mask: Mask | None = None
        self.last: Mask | None = None

    def on_step_end(self, step: int, model: nn.Module) -> None:
        if self.stop:
            return
        if self.budget_step is not None and step >= self.budget_step:
            self.mask, self.stop, self.stopped_at = self.draw(model), True, step
            return
        if self.epsilon is None or step % self.every:
            return
        drawn = self.draw(model)
        if self.last is not None:
            self.curve.append([step, mask_distance(drawn, self.last)])
            recent = self.curve[-self.window:]
            if len(recent) == self.window and all(d < self.epsilon for _, d in recent):
                self.mask, self.stop, self.stopped_at = drawn, True, step
        self.last = drawn

    def state_dict(self) -> dict[str, Any]:
        return {"stop": self.stop, "stopped_at": self.stopped_at, "curve": self.curve,
                "mask": None if self.mask is None else dict(self.mask.tensors),
                "last": None if self.last is None else dict(self.last.tensors)}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.stop, self.stopped_at, self.curve = saved["stop"], saved["stopped_at"], saved["curve"]
        self.mask = None if saved["mask"] is None else Mask(saved["mask"])
        self.last = None if saved["last"] is None else Mask(saved["last"])

    def summary(self, kind: str) -> dict[str, Any]:
        return {"kind": kind, "stopped_at_step": self.stopped_at, "distance_curve": self.curve}


def search_kind(prune: Any) -> str | None:
    """``early_bird``, ``budget`` or None (every round trains fully)."""
    if prune.early_bird is not None:
        return "early_bird"
    return "budget" if prune.round_budget < 1 else None


def searches(prune: Any, k: int, last: int) -> bool:
    """Whether IMP round ``k`` stops once the next round's mask is found (never round 0 or the last round)."""
    return search_kind(prune) is not None and 0 < k < last


def reported(prune: Any, k: int, last: int) -> bool:
    """Whether round ``k``'s score comes from a full training (always for round 0 and the last round)."""
    rounds = prune.report_rounds
    return rounds == "all" or k in (0, last) or (isinstance(rounds, list) and k in rounds)


def check_search(prune: Any, steps_per_round: int, rounds: int) -> None:
    """Every cheaper-IMP option in range, before anything is written."""
    problems = []
    if not 0 < prune.round_budget <= 1:
        problems.append(f"prune.round_budget must lie in (0, 1], got {prune.round_budget!r}")
    if prune.early_bird is not None and prune.early_bird.every > steps_per_round:
        problems.append(f"prune.early_bird.every={prune.early_bird.every} is larger than a round "
                        f"({steps_per_round} steps); draw the mask more often")
    if prune.early_bird is not None and prune.round_budget < 1:
        problems.append("give prune.early_bird or prune.round_budget, not both")
    shown = prune.report_rounds
    if not (shown in ("all", "last") or (isinstance(shown, list) and all(isinstance(k, int) and 0 <= k <= rounds
                                                                        for k in shown))):
        problems.append(f"prune.report_rounds must be all, last or a list of rounds in 0..{rounds}, got {shown!r}")
    if problems:
        raise ConfigError.many(problems)


def budget_step(prune: Any, steps_per_round: int) -> int | None:
    return None if prune.round_budget >= 1 else max(1, math.ceil(prune.round_budget * steps_per_round))


def with_compute(metrics: dict[str, Any], *parts: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` with the compute of every training that went into them (search + full training)."""
    each = [compute(p) for p in parts]
    metrics["compute"] = {"optimizer_steps": sum(c["optimizer_steps"] for c in each),
                          "samples": sum(c["samples"] for c in each),
                          "seconds": round(sum(c["seconds"] for c in each), 2)}
    return metrics


def weights_of(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {n: params[n].detach().cpu() for n in names}


def round_search(run: Any, k: int, mask: Mask) -> MaskSearch:
    """The search of IMP round ``k`` (a ``RunContext``): draws round ``k + 1``'s mask exactly as pruning would."""
    from ticketlab.pruning.base import prune
    from ticketlab.seeds import derive_seed

    cfg, names = run.config.prune, mask.names()
    steps = math.ceil(len(run.task.train) / run.config.train.batch_size) * run.config.train.epochs

    def draw(model: nn.Module) -> Mask:
        generator = torch.Generator().manual_seed(derive_seed(run.config.seed, "imp_prune", k + 1))
        return prune(cfg.method, weights_of(model, names), mask, run.sparsity(k + 1), generator, run.structure(),
                     cfg.structure, cfg.channel_multiple)

    bird = cfg.early_bird
    return MaskSearch(draw, every=bird.every if bird else 0, epsilon=bird.epsilon if bird else None,
                      window=bird.window if bird else 1, budget_step=budget_step(cfg, steps))


def plot_search(curve: list[list[float]], prune: Any, path: Any) -> None:
    """The mask-distance curve of an early-bird round, with its threshold."""
    if not curve:
        return
    from ticketlab.figures import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 3.2), dpi=120)
    ax.plot([s for s, _ in curve], [100 * d for _, d in curve], marker=".")
    if prune.early_bird is not None:
        ax.axhline(100 * prune.early_bird.epsilon, color="red", linestyle=":", label="epsilon")
        ax.legend(fontsize=8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mask change since the last draw (% of weights)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
