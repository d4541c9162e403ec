"""Layer handlers, one per Keras layer kind (see :mod:`.base`)."""
from edgeprune.pipeline.handlers.base import LayerHandler, handler_for, register, registered_classes

__all__ = ["LayerHandler", "handler_for", "register", "registered_classes"]
