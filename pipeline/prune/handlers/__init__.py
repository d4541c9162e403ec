"""Layer handlers, one per Keras layer kind (see :mod:`.base`).

Importing this package fills the registry: each handler module registers its own classes.
"""
from edgeprune.pipeline.prune.handlers.base import (
    LayerHandler,
    handler_for,
    register,
    register_handler,
    registered_classes,
    unregister_handler,
)
from edgeprune.pipeline.prune.handlers import attention, channelwise, core, recurrent, structure  # noqa: F401,E402

__all__ = ["LayerHandler", "handler_for", "register", "register_handler", "registered_classes",
           "unregister_handler"]
