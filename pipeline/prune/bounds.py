"""Interval bound propagation (data-free): the range of every tensor for inputs in a box.

Used by the PAODING criterion to bound how much a neuron pair's activations can differ
without any data. Affine layers use centre/radius form (``c' = f(c)``, ``r' = |A| r``),
monotone layers (activations, pooling, padding, flatten) map the lower and upper bounds.
Each layer kind's rule is its handler's ``bounds`` (:mod:`edgeprune.pipeline.prune.handlers`).
Computed from a :class:`~edgeprune.pipeline.prune.surgery.PruneState`'s CURRENT weights, so it
is valid at every progressive step. A layer it cannot bound gives ``None`` downstream.
"""
from __future__ import annotations

import numpy as np

from edgeprune.pipeline.prune.interval import NOMINAL_LENGTH


def interval_bounds(graph, state, input_range=(0.0, 1.0)) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray] | None]:
    """Lower/upper bounds of every layer output (batch of 1) for inputs in ``input_range``."""
    lo_in, hi_in = input_range
    bounds: dict = {}
    model = graph.model
    for name in graph.order:
        info = graph.layers[name]
        if info.cls == "InputLayer":
            # a variable dimension (None) is bounded on a nominal size: every position of
            # a variable-length input lies in the same box, so the bounds of layers that
            # pool over it do not depend on the length chosen
            shape = (1,) + tuple(d if d is not None else NOMINAL_LENGTH for d in graph._input_shape(info)[1:])
            bounds[(name, 0)] = (np.full(shape, lo_in, np.float64), np.full(shape, hi_in, np.float64))
            continue
        ins = [bounds.get(ref) for ref in info.inputs]
        if any(b is None for b in ins):
            bounds[(name, 0)] = None
            continue
        try:
            bounds[(name, 0)] = _layer_bounds(info, ins, state.weights.get(name, []))
        except NotImplementedError:
            bounds[(name, 0)] = None
        except _shape_errors() as exc:  # e.g. a conv that does not fit the nominal length
            bounds[(name, 0)] = None
            notes = getattr(graph, "bound_notes", None)
            if notes is not None:
                notes.append(f"{name}: no interval bounds ({type(exc).__name__}: {str(exc)[:120]})")
    del model
    return bounds


def _shape_errors() -> tuple[type, ...]:
    import tensorflow as tf

    return (ValueError, TypeError, tf.errors.OpError)


def _layer_bounds(info, ins, weights):
    """The layer's handler's bound rule (NotImplementedError: no bound)."""
    from edgeprune.pipeline.prune.handlers import handler_for

    handler = handler_for(info.layer, info.cls)
    if handler is None:
        raise NotImplementedError
    return handler.bounds(info, ins, weights, info.layer.get_config())
