"""ticketlab: lottery tickets in pre-trained models.

The library is usable without the CLI::

    from ticketlab import config, experiment
    cfg = config.load_config("examples/demo.yaml")
    run = experiment.run_experiment(cfg, runs_dir="runs")
"""

from ticketlab.errors import TicketlabError
from ticketlab.masks import Mask

__all__ = ["Mask", "TicketlabError"]
__version__ = "0.1.0"
