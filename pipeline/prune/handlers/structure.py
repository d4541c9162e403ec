"""Structure: the model input, reshaping (Flatten, Reshape) and merges (Add, Concatenate, ...)."""
from __future__ import annotations

import numpy as np

from edgeprune.pipeline.prune.handlers.base import LayerHandler, register

ELEMENTWISE_MERGE = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")


def _spatial(shape) -> int | None:
    """Number of positions (product of the dims between batch and channels), None if unknown."""
    dims = tuple(shape[1:-1]) if len(shape) > 2 else ()
    if any(d is None for d in dims):
        return None
    return int(np.prod(dims)) if dims else 1


@register("InputLayer")
class InputHandler(LayerHandler):
    single_input = False

    def visit(self, graph, info, ins, cfg):
        shape = graph._input_shape(info)
        g = graph.new_group(shape[-1] if shape and shape[-1] else 1)
        graph.freeze([g], "model input")
        graph.set_layout(info.name, (g,))


@register("Flatten")
class FlattenHandler(LayerHandler):
    """Channel c at position s becomes feature s * C + c: the layout repeats per position
    (``identity``: on a 2-D input it changes nothing, the criteria look through it)."""

    identity = True

    def visit(self, graph, info, ins, cfg):
        reps = _spatial(graph.in_shapes(info)[0])
        if reps is None:
            return graph.unknown_layer(info, ins, "Flatten of a variable-size input")
        graph.set_layout(info.name, tuple(ins[0]) * reps)

    def bounds(self, info, ins, weights, cfg):
        lo, hi = ins[0]
        return lo.reshape(1, -1), hi.reshape(1, -1)


@register("Reshape")
class ReshapeHandler(LayerHandler):
    def visit(self, graph, info, ins, cfg):
        in_shape, out_shape = graph.in_shapes(info)[0], graph.out_shapes(info)[0]
        in_sp, out_sp = _spatial(in_shape), _spatial(out_shape)
        if in_shape[-1] == out_shape[-1] and in_sp is not None and in_sp == out_sp:
            return graph.set_layout(info.name, ins[0])
        if len(out_shape) == 2 and len(in_shape) > 2 and in_sp is not None:  # a flatten written as Reshape
            return graph.set_layout(info.name, tuple(ins[0]) * in_sp)
        return graph.unknown_layer(info, ins, f"Reshape {tuple(in_shape[1:])} -> {tuple(out_shape[1:])} moves channels")

    def rebuild_config(self, layer, graph, sizes):
        """``target_shape`` spells the channel count (or, flattening, positions x channels):
        its last entry follows the current width of the output layout."""
        target = list(layer.get_config()["target_shape"])
        if not target or target[-1] == -1:
            return {}
        target[-1] = sum(sizes[g] for g in graph.layouts[(layer.name, 0)])
        return {"target_shape": tuple(target)}

    def bounds(self, info, ins, weights, cfg):
        lo, hi = ins[0]
        shape = (1,) + tuple(cfg["target_shape"])
        return lo.reshape(shape), hi.reshape(shape)


@register(*ELEMENTWISE_MERGE)
class ElementwiseMergeHandler(LayerHandler):
    """Inputs added/multiplied channel by channel: their groups become one."""

    single_input = False

    def visit(self, graph, info, ins, cfg):
        first = ins[0]
        same = len(ins) >= 2 and all(len(x) == len(first) for x in ins) and all(
            graph.group_size(a) == graph.group_size(b) for x in ins for a, b in zip(x, first)
        )
        if not same:
            return graph.unknown_layer(info, ins, f"{info.cls} of differently laid-out or broadcast inputs")
        for x in ins[1:]:
            graph.tie(first, x)
        graph.set_layout(info.name, first)

    def bounds(self, info, ins, weights, cfg):
        cls = info.cls
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
        lo, hi = ins[0]  # Multiply
        for l2, h2 in ins[1:]:
            cands = np.stack([lo * l2, lo * h2, hi * l2, hi * h2])
            lo, hi = cands.min(0), cands.max(0)
        return lo, hi


@register("Concatenate")
class ConcatenateHandler(LayerHandler):
    """Along channels: the layouts are joined; along another axis: the groups are tied."""

    single_input = False

    def visit(self, graph, info, ins, cfg):
        if len(ins) < 2:
            return graph.unknown_layer(info, ins, "Concatenate of one input")
        rank = len(graph.out_shapes(info)[0])
        axis = cfg.get("axis", -1)
        if axis in (-1, rank - 1):
            return graph.set_layout(info.name, tuple(g for x in ins for g in x))
        first = ins[0]
        if all(len(x) == len(first) for x in ins):
            for x in ins[1:]:
                graph.tie(first, x)
            return graph.set_layout(info.name, first)
        return graph.unknown_layer(info, ins, f"Concatenate over axis {axis}")

    def bounds(self, info, ins, weights, cfg):
        axis = cfg.get("axis", -1)
        return np.concatenate([b[0] for b in ins], axis=axis), np.concatenate([b[1] for b in ins], axis=axis)
