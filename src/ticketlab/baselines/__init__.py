"""Baselines. The registry lives in ``baselines.base`` (a leaf); ``baselines.builtin`` holds the built-in ones."""

from ticketlab.baselines.base import BASELINES, Baseline, baseline, branch_label

__all__ = ["BASELINES", "Baseline", "baseline", "branch_label"]
