"""Interval arithmetic primitives of the bound propagation (pipeline/prune/bounds.py) and of the
handlers' bound rules: activations (monotone ones map lower and upper bounds), BatchNorm as an
affine map, a plain N-d convolution in NumPy. No knowledge of layers or graphs here, so the
handlers and the propagation that dispatches to them both import it without a cycle."""
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
