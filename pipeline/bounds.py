"""Interval bound propagation (data-free): the range of every tensor for inputs in a box.

Used by the PAODING criterion to bound how much a neuron pair's activations can differ
without any data. Affine layers use centre/radius form (``c' = f(c)``, ``r' = |A| r``),
monotone layers (activations, pooling, padding, flatten) map the lower and upper bounds.
Each layer kind's rule is its handler's ``bounds`` (:mod:`edgeprune.pipeline.handlers`).
Computed from a :class:`~edgeprune.pipeline.surgery.PruneState`'s CURRENT weights, so it
is valid at every progressive step. A layer it cannot bound gives ``None`` downstream.
"""
from __future__ import annotations

import numpy as np

MONOTONE_ACTIVATIONS = {
    "linear", None, "relu", "relu6", "sigmoid", "tanh", "elu", "selu", "softplus", "hard_sigmoid",
    "leaky_relu", "exponential", "hard_tanh", "softsign",
}
# Lipschitz constants of the monotone activations (bound on |f(a) - f(b)| / |a - b|)
LIPSCHITZ = {"linear": 1.0, None: 1.0, "relu": 1.0, "relu6": 1.0, "sigmoid": 0.25, "tanh": 1.0, "elu": 1.0,
             "selu": 1.7581, "softplus": 1.0, "hard_sigmoid": 1 / 6, "leaky_relu": 1.0, "hard_tanh": 1.0,
             "softsign": 1.0}
NOMINAL_LENGTH = 32  # stands for a None (variable) input dimension in the bounds


def activation_name(layer) -> str | None:
    cfg = layer.get_config()
    cls = type(layer).__name__
    if cls == "ReLU" and not cfg.get("max_value") and not cfg.get("negative_slope") and not cfg.get("threshold"):
        return "relu"
    if cls == "LeakyReLU":
        return "leaky_relu"
    if cls == "ELU":
        return "elu"
    act = cfg.get("activation", "linear")
    if isinstance(act, dict):  # a serialised activation object
        act = act.get("config", {}).get("name") or act.get("class_name")
    return act


def apply_activation(name, x: np.ndarray, layer=None) -> np.ndarray:
    import keras

    if name in ("linear", None):
        return x
    if layer is not None and type(layer).__name__ in ("ReLU", "LeakyReLU", "ELU", "Activation"):
        return np.asarray(layer(x))
    return np.asarray(keras.activations.get(name)(x))


def bn_affine(weights: list[np.ndarray], cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    """BatchNormalization at inference as ``y = s * x + t``."""
    i = 0
    gamma = beta = None
    if cfg.get("scale", True):
        gamma = weights[i]; i += 1
    if cfg.get("center", True):
        beta = weights[i]; i += 1
    mean, var = weights[i], weights[i + 1]
    s = (gamma if gamma is not None else 1.0) / np.sqrt(var + cfg.get("epsilon", 1e-3))
    t = (beta if beta is not None else 0.0) - mean * s
    return np.asarray(s, np.float64), np.asarray(t, np.float64)


def _conv(x: np.ndarray, kernel: np.ndarray, cfg: dict, depthwise: bool = False) -> np.ndarray:
    import tensorflow as tf

    strides = list(cfg.get("strides", (1, 1)))
    dil = list(cfg.get("dilation_rate", (1, 1)))
    padding = cfg.get("padding", "valid").upper()
    if padding == "CAUSAL":
        raise NotImplementedError
    x32 = tf.constant(x, tf.float32)
    k32 = tf.constant(kernel, tf.float32)
    if depthwise:
        if kernel.ndim != 4:
            raise NotImplementedError
        return tf.nn.depthwise_conv2d(x32, k32, strides=[1, *strides, 1], padding=padding, dilations=dil).numpy()
    return tf.nn.convolution(x32, k32, strides=strides, padding=padding, dilations=dil).numpy()


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
    from edgeprune.pipeline.handlers import handler_for

    handler = handler_for(info.layer, info.cls)
    if handler is None:
        raise NotImplementedError
    return handler.bounds(info, ins, weights, info.layer.get_config())
