"""Channel-wise layers: output channel c depends on input channel c only.

Pass-through layers (activations, dropout, padding, cropping, pooling, up-sampling) keep
the input's layout; BatchNormalization and PReLU carry per-channel weights on it; layers
that mix channels (Softmax, LayerNormalization, Masking's mask) freeze it.
"""
from __future__ import annotations

import numpy as np

from edgeprune.pipeline.prune.interval import MONOTONE_ACTIVATIONS, activation_name, apply_activation, bn_affine
from edgeprune.pipeline.prune.handlers.base import LayerHandler, register

# Layers whose output channel c depends only on input channel c and that have no
# channel-indexed weights (names, for the modules that match on class names).
ACTIVATION_LAYERS = ("Activation", "ReLU", "LeakyReLU", "ELU", "ThresholdedReLU")
PASS_THROUGH = {
    *ACTIVATION_LAYERS,
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
    "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity",
    "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D",
    "Cropping1D", "Cropping2D", "Cropping3D",
    "UpSampling1D", "UpSampling2D", "UpSampling3D",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
    "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
}


@register(*ACTIVATION_LAYERS)
class ActivationHandler(LayerHandler):
    def visit(self, graph, info, ins, cfg):
        if info.cls == "Activation":
            self.freeze_if_mixing(graph, info.name, ins[0], cfg)
        graph.set_layout(info.name, ins[0])

    def bounds(self, info, ins, weights, cfg):
        act = activation_name(info.layer)
        if info.cls == "ThresholdedReLU" or act not in MONOTONE_ACTIVATIONS:
            raise NotImplementedError
        lo, hi = ins[0]
        return apply_activation(act, lo, info.layer), apply_activation(act, hi, info.layer)


# Identity at inference (the criteria look through them: ``LayerHandler.identity``).
IDENTITY = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
            "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity")


@register(*sorted(PASS_THROUGH - set(ACTIVATION_LAYERS) - set(IDENTITY)))
class PassThroughHandler(LayerHandler):
    """Dropout/noise (identity at inference), padding, cropping, pooling, up-sampling: each
    is monotone per channel, so its bounds are the layer applied to the bounds."""

    def visit(self, graph, info, ins, cfg):
        graph.set_layout(info.name, ins[0])

    def bounds(self, info, ins, weights, cfg):
        lo, hi = ins[0]
        return np.asarray(info.layer(lo, training=False)), np.asarray(info.layer(hi, training=False))


@register(*IDENTITY)
class IdentityHandler(PassThroughHandler):
    identity = True


@register("BatchNormalization")
class BatchNormHandler(LayerHandler):
    def visit(self, graph, info, ins, cfg):
        axis = cfg.get("axis", -1)
        axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
        shape = graph.in_shapes(info)[0]  # the data input (a Masking layer's mask is not one)
        rank = len(shape) if shape is not None else None
        if isinstance(axis, (list, tuple)) or (axis != -1 and rank is not None and axis != rank - 1):
            return graph.unknown_layer(info, ins, f"BatchNormalization over axis {axis}")
        for i in range(len(info.layer.weights)):
            graph.add_ref(info.name, i, 0, ins[0], "channelwise")
        graph.set_layout(info.name, ins[0])

    def bounds(self, info, ins, weights, cfg):
        lo, hi = ins[0]
        s, t = bn_affine(weights, cfg)
        a, b = lo * s + t, hi * s + t
        return np.minimum(a, b), np.maximum(a, b)


@register("PReLU")
class PReLUHandler(LayerHandler):
    def visit(self, graph, info, ins, cfg):
        shape = tuple(info.layer.weights[0].shape)
        if shape[-1] == graph.layout_size(ins[0]) and shape[-1] > 1:
            graph.add_ref(info.name, 0, len(shape) - 1, ins[0], "channelwise")
        graph.set_layout(info.name, ins[0])


@register("Softmax")
class SoftmaxHandler(LayerHandler):
    def visit(self, graph, info, ins, cfg):
        graph.freeze(ins[0], f"{info.name} (Softmax) mixes channels")
        graph.set_layout(info.name, ins[0])


@register("LayerNormalization", "UnitNormalization", "GroupNormalization")
class CrossChannelNormHandler(LayerHandler):
    def visit(self, graph, info, ins, cfg):
        graph.freeze(ins[0], f"{info.name} ({info.cls}) normalises across channels")
        graph.set_layout(info.name, ins[0])


@register("Masking")
class MaskingHandler(LayerHandler):
    """Zeroes the time steps where EVERY channel equals ``mask_value``: the mask reads all
    channels, so the input's channels are frozen; the output keeps the layout."""

    def visit(self, graph, info, ins, cfg):
        graph.freeze(ins[0], f"{info.name} (Masking) computes its mask across channels")
        graph.set_layout(info.name, ins[0])

    def bounds(self, info, ins, weights, cfg):
        lo, hi = ins[0]
        return np.minimum(lo, 0.0), np.maximum(hi, 0.0)


@register("Rescaling")
class RescalingHandler(LayerHandler):
    def visit(self, graph, info, ins, cfg):
        if np.ndim(cfg.get("scale", 1.0)) == 0 and np.ndim(cfg.get("offset", 0.0)) == 0:
            return graph.set_layout(info.name, ins[0])
        return graph.unknown_layer(info, ins, "Rescaling with per-channel scale")

    def bounds(self, info, ins, weights, cfg):
        scale, offset = float(cfg.get("scale", 1.0)), float(cfg.get("offset", 0.0))
        lo, hi = ins[0]
        a, b = lo * scale + offset, hi * scale + offset
        return np.minimum(a, b), np.maximum(a, b)
