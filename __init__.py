"""edgeprune: make a trained Keras model fit a board.

Structural pruning (whole Dense units and Conv2D filters removed), TFLite conversion,
fidelity measured on the converted file, and latency/memory measured on the device.

The Python API is imported lazily so that ``edgeprune --version`` does not pay for
TensorFlow's start-up.
"""
from __future__ import annotations

import os as _os

# TensorFlow's C++ start-up chatter (oneDNN, CUDA probes) is noise for a CLI user.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"

__all__ = ["__version__", "prune", "load_model", "Plan", "EdgepruneError", "register_handler", "LayerHandler"]


def __getattr__(name: str):
    if name == "prune":
        from edgeprune.pipeline.prune.pruner import prune

        return prune
    if name == "load_model":
        from edgeprune.pipeline.data.loading import load_model

        return load_model
    if name == "Plan":
        from edgeprune.pipeline.prune.plan import Plan

        return Plan
    if name in ("register_handler", "LayerHandler"):
        from edgeprune.pipeline.prune import handlers

        return getattr(handlers, name)
    if name == "EdgepruneError":
        from edgeprune.errors import EdgepruneError

        return EdgepruneError
    raise AttributeError(f"module 'edgeprune' has no attribute {name!r}")
