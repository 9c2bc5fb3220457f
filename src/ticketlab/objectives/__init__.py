"""Training objectives. The registry and base class live in ``objectives.base`` (a leaf)."""

from ticketlab.metrics import accuracy
from ticketlab.objectives.base import OBJECTIVES, Objective

__all__ = ["OBJECTIVES", "Objective", "accuracy"]
