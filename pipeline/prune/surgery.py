"""Surgery: slice weights by group and rebuild a physically smaller Keras model.

:class:`PruneState` holds the current (already sliced) weights of every layer and, for
each group, which of the ORIGINAL channels are still present. Removing channels of a group
slices every weight that the dependency graph says is indexed by that group (the
producers' kernels and biases, BatchNorm/depthwise parameters, the consumers' input
weights). Merges (PAODING) add a removed channel's outgoing weights into its partner's
before the removal. :func:`build_model` rebuilds through public Keras API:
``keras.models.clone_model(clone_function=...)`` with new widths (each layer's handler
says which config keys carry its width), then ``set_weights``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from edgeprune.crash import stage
from edgeprune.errors import EdgepruneError, UnsupportedModel
from edgeprune.pipeline.prune.graph import DependencyGraph, layout_indices, offsets


@dataclass
class Merge:
    """Channel ``removed`` of the group produced by ``layer`` is removed and its outgoing
    weights, times ``scale``, are added to those of channel ``into`` (original indices)."""

    layer: str
    removed: int
    into: int
    scale: float = 1.0

    def to_dict(self) -> dict:
        return {"layer": self.layer, "removed": int(self.removed), "into": int(self.into), "scale": float(self.scale)}


class PruneState:
    def __init__(self, graph: DependencyGraph):
        self.graph = graph
        model = graph.model
        self.weights: dict[str, list[np.ndarray]] = {
            layer.name: [np.array(w, copy=True) for w in layer.get_weights()] for layer in model.layers
        }
        self.sizes: dict[int, int] = {gid: g.size for gid, g in graph.groups.items()}
        self.kept: dict[int, np.ndarray] = {gid: np.arange(g.size) for gid, g in graph.groups.items()}
        self.merges: list[Merge] = []
        self.refitted: Optional[set] = None  # compensation: the layers whose weights were refitted
        self.branches: Optional[list] = None  # residual branches removed (pipeline/prune/branches.py)

    def copy(self) -> "PruneState":
        new = PruneState.__new__(PruneState)
        new.graph = self.graph
        new.weights = {k: [w.copy() for w in v] for k, v in self.weights.items()}
        new.sizes = dict(self.sizes)
        new.kept = {k: v.copy() for k, v in self.kept.items()}
        new.merges = list(self.merges)
        new.refitted = set(self.refitted) if self.refitted is not None else None
        new.branches = list(self.branches) if self.branches else None
        return new

    # ----------------------------------------------------------------- channel access
    def block_slices(self, ref, gid: int) -> list[int]:
        """Start offsets of group ``gid``'s blocks along ``ref``'s axis (current sizes)."""
        return [start for g, start in offsets(ref.layout, self.sizes) if g == gid]

    def merge(self, gid: int, removed: int, into: int, scale: float = 1.0) -> None:
        """Add channel ``removed``'s outgoing (consumer) weights, times ``scale``, into
        channel ``into``'s; both are CURRENT positions within group ``gid``."""
        group = self.graph.groups[gid]
        for ref in group.refs:
            if ref.role != "consumer":
                continue
            w = np.moveaxis(self.weights[ref.layer][ref.weight], ref.axis, 0)  # a view
            for start in self.block_slices(ref, gid):
                w[start + into] += scale * w[start + removed]
        self.merges.append(Merge(group.name, int(self.kept[gid][removed]), int(self.kept[gid][into]), float(scale)))

    def remove(self, gid: int, remove_local) -> None:
        """Remove the channels at CURRENT positions ``remove_local`` from group ``gid``."""
        remove_local = np.unique(np.asarray(remove_local, dtype=np.int64))
        if remove_local.size == 0:
            return
        size = self.sizes[gid]
        keep_local = np.setdiff1d(np.arange(size), remove_local)
        if keep_local.size == 0:
            raise EdgepruneError(f"internal: refusing to prune group {self.graph.groups[gid].name} to zero channels")
        group = self.graph.groups[gid]
        for ref in group.refs:
            idx = layout_indices(ref.layout, self.sizes, {gid: keep_local})
            ws = self.weights[ref.layer]
            ws[ref.weight] = np.take(ws[ref.weight], idx, axis=ref.axis)
        self.sizes[gid] = int(keep_local.size)
        self.kept[gid] = self.kept[gid][keep_local]

    def widths(self) -> dict[str, tuple[int, int]]:
        """Producer layer -> (original width, current width)."""
        out = {}
        for gid, g in self.graph.groups.items():
            for p in g.producers:
                out[p] = (g.size, self.sizes[gid])
        return out


def build_model(graph: DependencyGraph, state: PruneState):
    """A new Keras model with the state's widths and weights; names, activations and
    every other setting are the original's."""
    import keras

    model = graph.model

    def clone(layer):
        with stage("prune", f"layer {layer.name!r} ({type(layer).__name__})"):
            handler = graph.handler(layer.name)
            if handler is None:
                return _rebuild(layer, {})
            return _rebuild(layer, handler.rebuild_config(layer, graph, state.sizes))

    new = keras.models.clone_model(model, clone_function=clone)
    for layer in new.layers:
        weights = state.weights.get(layer.name)
        if weights:
            with stage("prune", f"layer {layer.name!r} ({type(layer).__name__})"):
                layer.set_weights(weights)
    if getattr(state, "branches", None):
        from edgeprune.pipeline.prune.branches import rewire

        new = rewire(graph, new, state)
    return new


def _rebuild(layer, changes: dict):
    """A new instance of ``layer`` from its config with ``changes`` applied.

    Wrapped layers (Bidirectional's directions, TimeDistributed's layer) are serialized with
    their ``build_config``, i.e. the ORIGINAL input shape: they would be rebuilt for the
    unpruned input width, whatever the producer in front of them lost. Those are dropped, so
    every wrapped layer is built from the (pruned) input it really gets."""
    config = _without_build_configs({**layer.get_config(), **changes})
    try:
        return layer.__class__.from_config(config)
    except Exception as exc:  # e.g. a Lambda with Python code, refused in safe mode
        if not layer.weights and not changes:
            return layer  # no weights: sharing the instance with the original is harmless
        raise UnsupportedModel(
            f"layer {layer.name!r} (class {type(layer).__name__}) cannot be rebuilt from its config: {exc}",
            "register the class with keras.saving.register_keras_serializable or use standard layers",
        ) from None


def _without_build_configs(obj):
    if isinstance(obj, dict):
        return {k: _without_build_configs(v) for k, v in obj.items() if k not in ("build_config", "compile_config")}
    if isinstance(obj, list):
        return [_without_build_configs(v) for v in obj]
    return obj


def masked_model(graph: DependencyGraph, removed: dict[int, np.ndarray]):
    """A copy of the ORIGINAL model in which the channels ``removed[gid]`` (original
    indices) are masked: every consumer's input weights from them are zeroed. Removing the
    same channels must give the same outputs (the exactness test of surgery)."""
    import keras

    new = keras.models.clone_model(graph.model, clone_function=lambda layer: _rebuild(layer, {}))
    weights = masked_weights(graph, removed)
    for layer in new.layers:
        if layer.name in weights:  # layers without weights (e.g. the InputLayer, renamed by clone_model) skipped
            layer.set_weights(weights[layer.name])
    return new


def masked_weights(graph: DependencyGraph, removed: dict[int, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """The weights of :func:`masked_model`, layer name -> arrays (copies of the original's,
    every consumer's input weights from the channels ``removed[gid]`` zeroed), for every
    layer of the original that has weights."""
    model = graph.model
    sizes = {gid: g.size for gid, g in graph.groups.items()}
    out = {}
    for layer in model.layers:
        if not layer.weights:
            continue
        ws = [w.copy() for w in layer.get_weights()]
        for ref in graph.refs_by_layer.get(layer.name, []):
            if ref.role != "consumer":
                continue
            w = np.moveaxis(ws[ref.weight], ref.axis, 0)
            for gid, rem in removed.items():
                for g, start in offsets(ref.layout, sizes):
                    if g == gid:
                        w[start + np.asarray(rem, dtype=np.int64)] = 0.0
        out[layer.name] = ws
    return out


def removed_channels(graph, plan) -> dict:
    """group id -> the channel indices ``plan`` removes from that group (groups it keeps whole
    are left out); ``graph`` is the graph the plan's kept indices refer to."""
    removed = {}
    for layer, kept in plan.layers.items():
        gid = graph.group_of_producer[layer]
        rem = np.setdiff1d(np.arange(graph.groups[gid].size), kept)
        if rem.size:
            removed[gid] = rem
    return removed


def masked_reference(original, plan):
    """What a model pruned by ``plan`` must compute, built from the ORIGINAL at full width:
    the plan's merges applied, then every removed channel masked (see :func:`masked_model`).
    Returns ``(model, removed)`` with ``removed[group] = original indices``."""
    graph = DependencyGraph(original)
    if plan.merges:
        state = PruneState(graph)
        for m in plan.merges:  # no removal yet: current positions are original indices
            state.merge(graph.group_of_producer[m["layer"]], m["removed"], m["into"], m["scale"])
        graph = DependencyGraph(build_model(graph, state))
    removed = removed_channels(graph, plan)
    return masked_model(graph, removed), removed
