"""Sparsity schedules: the target sparsity of each IMP round (round 0 is the dense model)."""

from __future__ import annotations

from collections.abc import Callable

from ticketlab.errors import ConfigError
from ticketlab.pruning.base import check_sparsity
from ticketlab.registry import Registry

Schedule = Callable[[int, float, list[float]], list[float]]
SCHEDULES: Registry[Schedule] = Registry("sparsity schedule")


def _check_rate(rate: float) -> None:
    if not 0.0 < rate < 1.0:
        raise ConfigError(f"prune rate {rate!r} is out of range; use a fraction in (0, 1), e.g. 0.2")


@SCHEDULES.register("remaining")
def fraction_of_remaining(rounds: int, rate: float, sparsities: list[float]) -> list[float]:
    """Prune ``rate`` of the remaining weights per round: s_k = 1 - (1 - rate)^k (CV default, rate 0.2)."""
    _check_rate(rate)
    return [1.0 - (1.0 - rate) ** k for k in range(1, rounds + 1)]


@SCHEDULES.register("original")
def fraction_of_original(rounds: int, rate: float, sparsities: list[float]) -> list[float]:
    """Prune ``rate`` of the original weights per round: s_k = k * rate (V+L default, rate 0.1)."""
    _check_rate(rate)
    out = [k * rate for k in range(1, rounds + 1)]
    if out[-1] >= 1.0:
        raise ConfigError(
            f"{rounds} rounds of {rate:.0%} of the original weights reach {out[-1]:.0%} sparsity; "
            f"use at most {int((1 - 1e-9) / rate)} rounds"
        )
    return out


@SCHEDULES.register("explicit")
def explicit_list(rounds: int, rate: float, sparsities: list[float]) -> list[float]:
    """Use the given list of target sparsities (must increase)."""
    if not sparsities:
        raise ConfigError("schedule 'explicit' needs prune.sparsities, e.g. [0.5, 0.75, 0.9]")
    for s in sparsities:
        check_sparsity(s)
    if any(b <= a for a, b in zip(sparsities, sparsities[1:], strict=False)):
        raise ConfigError(f"prune.sparsities must increase strictly, got {sparsities}")
    return [float(s) for s in sparsities]


def round_sparsities(schedule: str, rounds: int, rate: float, sparsities: list[float]) -> list[float]:
    if schedule != "explicit" and rounds < 1:
        raise ConfigError(f"prune.rounds must be >= 1, got {rounds}")
    return SCHEDULES.get(schedule)(rounds, rate, sparsities)
