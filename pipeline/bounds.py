"""Interval bound propagation (data-free): the range of every tensor for inputs in a box.

Used by the PAODING criterion to bound how much a neuron pair's activations can differ
without any data. Affine layers use centre/radius form (``c' = f(c)``, ``r' = |A| r``),
monotone layers (activations, pooling, padding, flatten) map the lower and upper bounds.
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
MONOTONE_LAYERS = {
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise", "GaussianDropout",
    "AlphaDropout", "ActivityRegularization", "Identity",
    "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D",
    "UpSampling1D", "UpSampling2D", "UpSampling3D",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D", "Flatten", "Reshape",
}


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
            shape = (1,) + tuple(graph._input_shape(info)[1:])
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
    del model
    return bounds


def _layer_bounds(info, ins, weights):
    layer, cls = info.layer, info.cls
    cfg = layer.get_config()
    if cls in ("Dense", "Conv1D", "Conv2D", "DepthwiseConv2D", "SeparableConv2D"):
        lo, hi = ins[0]
        c, r = (lo + hi) / 2, (hi - lo) / 2
        if cls == "Dense":
            k = weights[0]
            c2, r2 = c @ k, r @ np.abs(k)
            bias = weights[1] if cfg.get("use_bias", True) else 0.0
        elif cls == "SeparableConv2D":
            dk, pk = weights[0], weights[1]
            c1, r1 = _conv(c, dk, cfg, depthwise=True), _conv(r, np.abs(dk), cfg, depthwise=True)
            one = {"strides": (1, 1), "padding": "valid"}
            c2, r2 = _conv(c1, pk, one), _conv(r1, np.abs(pk), one)
            bias = weights[2] if cfg.get("use_bias", True) else 0.0
        else:
            dw = cls == "DepthwiseConv2D"
            if dw and cfg.get("depth_multiplier", 1) != 1:
                raise NotImplementedError
            k = weights[0]
            c2, r2 = _conv(c, k, cfg, dw), _conv(r, np.abs(k), cfg, dw)
            bias = weights[1] if cfg.get("use_bias", True) else 0.0
        c2 = c2 + bias
        act = activation_name(layer)
        if act not in MONOTONE_ACTIVATIONS:
            raise NotImplementedError
        return apply_activation(act, c2 - r2), apply_activation(act, c2 + r2)
    if cls == "BatchNormalization":
        lo, hi = ins[0]
        s, t = bn_affine(weights, cfg)
        a, b = lo * s + t, hi * s + t
        return np.minimum(a, b), np.maximum(a, b)
    if cls in ("Activation", "ReLU", "LeakyReLU", "ELU"):
        act = activation_name(layer)
        if act not in MONOTONE_ACTIVATIONS:
            raise NotImplementedError
        lo, hi = ins[0]
        return apply_activation(act, lo, layer), apply_activation(act, hi, layer)
    if cls in MONOTONE_LAYERS:
        lo, hi = ins[0]
        if cls == "Reshape":
            shape = (1,) + tuple(cfg["target_shape"])
            return lo.reshape(shape), hi.reshape(shape)
        if cls == "Flatten":
            return lo.reshape(1, -1), hi.reshape(1, -1)
        return np.asarray(layer(lo, training=False)), np.asarray(layer(hi, training=False))
    if cls == "Add":
        return sum(b[0] for b in ins), sum(b[1] for b in ins)
    if cls == "Average":
        n = len(ins)
        return sum(b[0] for b in ins) / n, sum(b[1] for b in ins) / n
    if cls == "Subtract":
        return ins[0][0] - ins[1][1], ins[0][1] - ins[1][0]
    if cls == "Maximum":
        return np.maximum.reduce([b[0] for b in ins]), np.maximum.reduce([b[1] for b in ins])
    if cls == "Minimum":
        return np.minimum.reduce([b[0] for b in ins]), np.minimum.reduce([b[1] for b in ins])
    if cls == "Concatenate":
        axis = cfg.get("axis", -1)
        return np.concatenate([b[0] for b in ins], axis=axis), np.concatenate([b[1] for b in ins], axis=axis)
    if cls == "Multiply":
        lo, hi = ins[0]
        for l2, h2 in ins[1:]:
            cands = np.stack([lo * l2, lo * h2, hi * l2, hi * h2])
            lo, hi = cands.min(0), cands.max(0)
        return lo, hi
    raise NotImplementedError
