"""ticketlab: lottery tickets in pre-trained models.

The library is usable without the CLI::

    from ticketlab import config, experiment
    cfg = config.load_config("examples/demo.yaml")
    run = experiment.run_experiment(cfg, runs_dir="runs")

The built-in plug-ins (``ticketlab.plugins``, the one aggregator) register themselves at the first lookup of any
registry, not at import: importing ticketlab stays cheap, and commands that only read files never import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from ticketlab.errors import TicketlabError
from ticketlab.registry import load_plugins_with

load_plugins_with(lambda: importlib.import_module("ticketlab.plugins") and None)

__all__ = ["Mask", "TicketlabError"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``ticketlab.Mask`` on demand (it needs torch)."""
    if name == "Mask":
        from ticketlab.masks import Mask

        return Mask
    raise AttributeError(f"module 'ticketlab' has no attribute {name!r}")
