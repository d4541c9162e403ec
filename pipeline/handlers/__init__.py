"""Layer handlers, one per Keras layer kind (see :mod:`.base`).

Importing this package fills the registry: each handler module registers its own classes.
"""
from edgeprune.pipeline.handlers.base import (
    LayerHandler,
    handler_for,
    register,
    register_handler,
    registered_classes,
    unregister_handler,
)
from edgeprune.pipeline.handlers import attention, channelwise, core, recurrent, structure  # noqa: F401,E402

__all__ = ["LayerHandler", "handler_for", "register", "register_handler", "registered_classes",
           "unregister_handler"]
