"""Model families. The registry and base types live in ``models.base`` (a leaf); plug-ins are imported
once by ``ticketlab.plugins``."""

from ticketlab.models.base import HEADS, MODELS, Backbone, TicketModel, build_model

__all__ = ["HEADS", "MODELS", "Backbone", "TicketModel", "build_model"]
