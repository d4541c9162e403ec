"""Producers (layers that open a new channel group) and the depthwise convolution.

Dense, Conv1D/2D/3D, Conv1D/2D/3DTranspose, SeparableConv1D/2D, Embedding open a group
for their output channels; DepthwiseConv1D/2D is channel-wise (its group is its input's).
"""
from __future__ import annotations

import numpy as np

from edgeprune.pipeline.prune.interval import MONOTONE_ACTIVATIONS, _conv, activation_name, apply_activation
from edgeprune.pipeline.prune.handlers.base import LayerHandler, register


def _kernel_ndim(layer, index: int = 0) -> int:
    return len(layer.weights[index].shape)


def _affine_bounds(layer, c2, r2, bias):
    c2 = c2 + bias
    act = activation_name(layer)
    if act not in MONOTONE_ACTIVATIONS:
        raise NotImplementedError
    return apply_activation(act, c2 - r2), apply_activation(act, c2 + r2)


@register("Dense")
class DenseHandler(LayerHandler):
    width_key = "units"
    refittable = True

    def visit(self, graph, info, ins, cfg):
        name, x = info.name, ins[0]
        g = graph.new_group(cfg["units"], name)
        graph.add_ref(name, 0, 0, x, "consumer")
        graph.add_ref(name, 0, 1, (g,), "producer")
        if cfg.get("use_bias", True):
            graph.add_ref(name, 1, 0, (g,), "producer")
        self.freeze_if_mixing(graph, name, (g,), cfg)
        graph.set_layout(name, (g,))

    def bounds(self, info, ins, weights, cfg):
        lo, hi = ins[0]
        c, r = (lo + hi) / 2, (hi - lo) / 2
        k = weights[0]
        bias = weights[1] if cfg.get("use_bias", True) else 0.0
        return _affine_bounds(info.layer, c @ k, r @ np.abs(k), bias)


class ConvHandler(LayerHandler):
    """One body for Conv1D/2D/3D and Conv1D/2D/3DTranspose, parametrized by ``rank`` and
    ``transpose``: the kernel is (..., in, out) for a convolution (input channels on axis -2,
    output channels on axis -1) and (..., out, in) for a transposed one. Compensation refits
    Conv1D/Conv2D (not causal, not grouped); PAODING bounds Conv1D/Conv2D."""

    width_key = "filters"

    def __init__(self, rank: int = 2, transpose: bool = False):
        self.rank = int(rank)
        self.transpose = bool(transpose)
        self.refittable = not self.transpose and self.rank in (1, 2)

    def can_refit(self, layer) -> bool:
        if not self.refittable:
            return False
        cfg = layer.get_config()
        return cfg.get("padding") != "causal" and cfg.get("groups", 1) == 1

    def visit(self, graph, info, ins, cfg):
        name, layer, x = info.name, info.layer, ins[0]
        if cfg.get("groups", 1) != 1:
            return graph.unknown_layer(info, ins, f"{info.cls} with groups={cfg['groups']}")
        g = graph.new_group(cfg["filters"], name)
        nd = _kernel_ndim(layer)
        in_axis, out_axis = (nd - 1, nd - 2) if self.transpose else (nd - 2, nd - 1)
        graph.add_ref(name, 0, in_axis, x, "consumer")
        graph.add_ref(name, 0, out_axis, (g,), "producer")
        if cfg.get("use_bias", True):
            graph.add_ref(name, 1, 0, (g,), "producer")
        self.freeze_if_mixing(graph, name, (g,), cfg)
        graph.set_layout(name, (g,))

    def bounds(self, info, ins, weights, cfg):
        if self.transpose or self.rank == 3 or cfg.get("groups", 1) != 1:
            raise NotImplementedError
        lo, hi = ins[0]
        c, r = (lo + hi) / 2, (hi - lo) / 2
        k = weights[0]
        bias = weights[1] if cfg.get("use_bias", True) else 0.0
        return _affine_bounds(info.layer, _conv(c, k, cfg), _conv(r, np.abs(k), cfg), bias)


for _rank in (1, 2, 3):
    register(f"Conv{_rank}D", rank=_rank)(ConvHandler)
    register(f"Conv{_rank}DTranspose", rank=_rank, transpose=True)(ConvHandler)


@register("SeparableConv1D", "SeparableConv2D")
class SeparableConvHandler(LayerHandler):
    """Depthwise kernel (..., C, 1) channel-wise on the input; pointwise (..., C, F)."""

    width_key = "filters"

    def visit(self, graph, info, ins, cfg):
        name, layer, x = info.name, info.layer, ins[0]
        if cfg.get("depth_multiplier", 1) != 1:
            return graph.unknown_layer(info, ins, f"{info.cls} with depth_multiplier={cfg['depth_multiplier']}")
        g = graph.new_group(cfg["filters"], name)
        nd = _kernel_ndim(layer)
        graph.add_ref(name, 0, nd - 2, x, "channelwise")
        graph.add_ref(name, 1, nd - 2, x, "consumer")
        graph.add_ref(name, 1, nd - 1, (g,), "producer")
        if cfg.get("use_bias", True):
            graph.add_ref(name, 2, 0, (g,), "producer")
        self.freeze_if_mixing(graph, name, (g,), cfg)
        graph.set_layout(name, (g,))

    def bounds(self, info, ins, weights, cfg):
        if info.cls != "SeparableConv2D" or cfg.get("depth_multiplier", 1) != 1:
            raise NotImplementedError
        lo, hi = ins[0]
        c, r = (lo + hi) / 2, (hi - lo) / 2
        dk, pk = weights[0], weights[1]
        c1, r1 = _conv(c, dk, cfg, depthwise=True), _conv(r, np.abs(dk), cfg, depthwise=True)
        one = {"strides": (1, 1), "padding": "valid"}
        bias = weights[2] if cfg.get("use_bias", True) else 0.0
        return _affine_bounds(info.layer, _conv(c1, pk, one), _conv(r1, np.abs(pk), one), bias)


@register("DepthwiseConv1D", "DepthwiseConv2D")
class DepthwiseConvHandler(LayerHandler):
    """Channel-wise: kernel (..., C, 1) and bias (C,) follow the input's group.

    min_width 2: a one-channel depthwise conv was refused by XNNPACK ("failed to prepare",
    int8 MobileNet at rate 0.90, issue 10), so its group keeps at least two channels. (Not
    reproduced on a small 16x16 model here: it loaded; the floor is a precaution.)"""

    min_width = 2

    def visit(self, graph, info, ins, cfg):
        name, layer, x = info.name, info.layer, ins[0]
        if cfg.get("depth_multiplier", 1) != 1:
            return graph.unknown_layer(info, ins, f"{info.cls} with depth_multiplier={cfg['depth_multiplier']}")
        nd = _kernel_ndim(layer)
        graph.add_ref(name, 0, nd - 2, x, "channelwise")
        if cfg.get("use_bias", True):
            graph.add_ref(name, 1, 0, x, "channelwise")
        self.freeze_if_mixing(graph, name, x, cfg)
        graph.set_layout(name, x)

    def bounds(self, info, ins, weights, cfg):
        if info.cls != "DepthwiseConv2D" or cfg.get("depth_multiplier", 1) != 1:
            raise NotImplementedError
        lo, hi = ins[0]
        c, r = (lo + hi) / 2, (hi - lo) / 2
        k = weights[0]
        bias = weights[1] if cfg.get("use_bias", True) else 0.0
        return _affine_bounds(info.layer, _conv(c, k, cfg, True), _conv(r, np.abs(k), cfg, True), bias)


@register("Embedding")
class EmbeddingHandler(LayerHandler):
    """Integer ids in (frozen), vectors out: the table's columns are the output group."""

    width_key = "output_dim"

    def visit(self, graph, info, ins, cfg):
        name = info.name
        g = graph.new_group(cfg["output_dim"], name)
        graph.freeze(ins[0], f"{name} (Embedding) reads integer ids")
        graph.add_ref(name, 0, 1, (g,), "producer")
        graph.set_layout(name, (g,))
