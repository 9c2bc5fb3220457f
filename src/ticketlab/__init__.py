"""ticketlab: lottery tickets in pre-trained models.

The library is usable without the CLI::

    from ticketlab import config, experiment
    cfg = config.load_config("examples/demo.yaml")
    run = experiment.run_experiment(cfg, runs_dir="runs")

Importing the package registers every built-in plug-in (``ticketlab.plugins``, the one aggregator).
"""

from ticketlab import plugins as _plugins  # noqa: F401  (registration, once)
from ticketlab.errors import TicketlabError
from ticketlab.masks import Mask

__all__ = ["Mask", "TicketlabError"]
__version__ = "0.1.0"
