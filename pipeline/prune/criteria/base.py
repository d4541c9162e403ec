"""The interface every importance criterion implements, and helpers they share.

A criterion scores the channels of one group of coupled channels (lower = removed first) or
selects them directly (:meth:`Importance.select`, which may also return merges). It sees a
:class:`Context`: the dependency graph, the current :class:`~edgeprune.pipeline.prune.surgery.PruneState`,
the declared input range, a seeded generator, and for the data-aware criteria the calibration
samples (never the evaluation samples) and a way to build the current model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from edgeprune.pipeline.prune.interval import bn_affine
from edgeprune.pipeline.prune.graph import DependencyGraph, Group

@dataclass
class Selection:
    remove: list[int]
    merges: list[tuple[int, int, float]] = field(default_factory=list)  # (removed, into, scale), current positions
    method: str = ""


@dataclass
class Context:
    graph: DependencyGraph
    state: object  # PruneState
    input_range: tuple[float, float] = (0.0, 1.0)
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    bounds: dict | None = None
    calibration: np.ndarray | None = None  # calibration inputs (data-aware criteria)
    calibration_label: str = ""  # where they come from (data split, or synthetic)
    build: Callable | None = None  # () -> Keras model of the current state
    reference: np.ndarray | None = None  # the ORIGINAL model's outputs on ``calibration``
    cache: dict = field(default_factory=dict)  # per-step scratch shared by a criterion


class Importance:
    name = "base"

    def begin_step(self, ctx: Context) -> None:
        """Called once per progressive step, before the groups are visited."""

    def scores(self, ctx: Context, group: Group) -> np.ndarray:
        raise NotImplementedError

    def select(self, ctx: Context, group: Group, n_remove: int) -> Selection:
        s = self.scores(ctx, group)
        order = np.argsort(s, kind="stable")
        return Selection(remove=sorted(int(i) for i in order[:n_remove]), method=self.name)


def _channel_l1(ctx: Context, group: Group, fold_bn: bool) -> np.ndarray:
    state = ctx.state
    total = np.zeros(state.sizes[group.id])
    for ref in group.refs:
        if ref.role != "producer":
            continue
        w = state.weights[ref.layer][ref.weight]
        if w.ndim < 2:  # bias
            continue
        a = np.abs(np.moveaxis(w, ref.axis, -1))
        n = state.sizes[group.id]
        # the axis may hold the group several times (a recurrent layer's gate blocks)
        l1 = sum(a[..., s:s + n].reshape(-1, n).sum(0) for s in state.block_slices(ref, group.id))
        if fold_bn:
            bn = _following_bn(ctx.graph, ref.layer, group.id)
            if bn is not None:
                s, _ = bn_affine(state.weights[bn], ctx.graph.layers[bn].layer.get_config())
                l1 = l1 * np.abs(s)
        total += l1 / max(float(l1.mean()), 1e-12)
    return total


def _following_bn(graph: DependencyGraph, layer: str, gid: int) -> str | None:
    """The BatchNormalization that directly (through identity layers) follows ``layer``."""
    name = layer
    for _ in range(4):
        nxt = graph.consumers.get(name, [])
        if len(nxt) != 1:
            return None
        name = nxt[0]
        cls = graph.layers[name].cls
        if cls == "BatchNormalization":
            return name if graph.layouts[(name, 0)] == (gid,) else None
        if not graph.is_identity(name):
            return None
    return None


