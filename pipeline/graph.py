"""Dependency graph of a Keras model: which channels must be removed together.

Every tensor's channel (last) axis is described by a *layout*: a tuple of group ids, each
group contributing all of its channels contiguously. A producer (Dense, Conv) opens a new
group for its output channels. Channel-wise layers (BatchNormalization, DepthwiseConv2D,
pooling, activations, dropout, padding) pass the layout through; element-wise merges
(Add, Multiply, ...) tie the groups of their inputs into one; Concatenate joins layouts;
Flatten repeats the layout once per spatial position (channel ``c`` at position ``s`` is
feature ``s * C + c``). Each layer's weights that index channels are recorded as
``(weight_index, axis, layout)``, so surgery can slice any weight from the plan alone.

A group is *frozen* (never pruned) when it reaches a model input or output, or a layer
whose per-channel semantics the graph does not know (the class is reported), or a layer
that mixes channels (softmax, LayerNormalization). Unknown layers are never passed
through silently.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from edgeprune.errors import UnsupportedModel
from edgeprune.pipeline import _keras_compat as compat

# Layers whose output channel c depends only on input channel c and that have no
# channel-indexed weights.
PASS_THROUGH = {
    "Activation", "ReLU", "LeakyReLU", "ELU", "ThresholdedReLU",
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
ELEMENTWISE_MERGE = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"}
# Activations that mix channels: removing one changes the others.
CHANNEL_MIXING_ACTIVATIONS = {"softmax", "log_softmax"}
PRODUCERS = {"Dense", "Conv1D", "Conv2D", "Conv3D", "SeparableConv1D", "SeparableConv2D", "Embedding"}


@dataclass(frozen=True)
class WeightRef:
    """Weight ``weight`` of ``layer`` whose axis ``axis`` is indexed by ``layout``."""

    layer: str
    weight: int
    axis: int
    layout: tuple[int, ...]
    role: str  # "producer" | "channelwise" | "consumer"


@dataclass
class Group:
    id: int
    size: int
    producers: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)  # every layer with a weight indexed by the group
    refs: list[WeightRef] = field(default_factory=list)
    frozen_reasons: list[str] = field(default_factory=list)

    @property
    def frozen(self) -> bool:
        return bool(self.frozen_reasons)

    @property
    def prunable(self) -> bool:
        return not self.frozen and self.size > 1 and bool(self.producers)

    @property
    def name(self) -> str:
        return self.producers[0] if self.producers else f"group{self.id}"


@dataclass
class LayerInfo:
    name: str
    cls: str
    inputs: list[tuple[str, int]]  # (layer, tensor index) per input tensor
    layer: object


class DependencyGraph:
    """Groups of coupled channels of a Sequential or functional Keras model."""

    def __init__(self, model):
        self.model = model
        self._parent: dict[int, int] = {}
        self._size: dict[int, int] = {}
        self._reasons: dict[int, list[str]] = {}
        self._refs: list[WeightRef] = []
        self._producers: dict[int, list[str]] = {}
        self.layouts: dict[tuple[str, int], tuple[int, ...]] = {}
        self.layers: dict[str, LayerInfo] = {}
        self.order: list[str] = []
        self.unknown: dict[str, str] = {}  # layer name -> class, for layers the graph does not know
        self.consumers: dict[str, list[str]] = {}
        self._build()
        self._finalise()

    # ------------------------------------------------------------------ union-find
    def _new_group(self, size: int, producer: str | None = None) -> int:
        gid = len(self._parent)
        self._parent[gid] = gid
        self._size[gid] = int(size)
        self._reasons[gid] = []
        self._producers[gid] = [producer] if producer else []
        return gid

    def _find(self, g: int) -> int:
        while self._parent[g] != g:
            self._parent[g] = self._parent[self._parent[g]]
            g = self._parent[g]
        return g

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra == rb:
            return
        self._parent[rb] = ra
        self._reasons[ra] += self._reasons.pop(rb)
        self._producers[ra] += self._producers.pop(rb)

    def _freeze(self, layout: Iterable[int], reason: str) -> None:
        for g in layout:
            r = self._find(g)
            if reason not in self._reasons[r]:
                self._reasons[r].append(reason)

    # ------------------------------------------------------------------ building
    def _graph_structure(self) -> list[LayerInfo]:
        import keras

        model = self.model
        infos: list[LayerInfo] = []
        if isinstance(model, keras.Sequential):
            prev = None
            if model.inputs:
                prev = ("__input__", 0)
                infos.append(LayerInfo("__input__", "InputLayer", [], None))
            for layer in model.layers:
                infos.append(LayerInfo(layer.name, type(layer).__name__, [prev] if prev else [], layer))
                prev = (layer.name, 0)
            self.output_refs = [prev]
            self.input_refs = [("__input__", 0)]
            return infos
        cfg = model.get_config()
        by_name = {l.name: l for l in model.layers}
        for entry in cfg["layers"]:
            name = entry.get("name") or entry["config"]["name"]
            nodes = entry.get("inbound_nodes") or []
            if len(nodes) > 1:
                raise UnsupportedModel(
                    f"layer {name!r} ({entry['class_name']}) is shared (called {len(nodes)} times); "
                    "shared layers cannot be pruned structurally",
                    "give each call its own layer",
                )
            inputs = [(n, t) for n, _, t in compat.iter_history(nodes)] if nodes else []
            layer = by_name.get(name)
            infos.append(LayerInfo(name, type(layer).__name__ if layer is not None else entry["class_name"], inputs, layer))
        self.input_refs = [(n, t) for n, _, t in compat.iter_history(cfg["input_layers"])]
        self.output_refs = [(n, t) for n, _, t in compat.iter_history(cfg["output_layers"])]
        return infos

    def _build(self) -> None:
        for info in self._graph_structure():
            self.layers[info.name] = info
            self.order.append(info.name)
            for src, _ in info.inputs:
                self.consumers.setdefault(src, []).append(info.name)
            self._visit(info)
        for ref in self.output_refs:
            self._freeze(self.layouts[ref], "model output")

    def _in_layouts(self, info: LayerInfo) -> list[tuple[int, ...]]:
        return [self.layouts[ref] for ref in info.inputs]

    def _ref(self, layer: str, weight: int, axis: int, layout: tuple[int, ...], role: str) -> None:
        self._refs.append(WeightRef(layer, weight, axis, tuple(layout), role))

    def _layout_size(self, layout: tuple[int, ...]) -> int:
        return sum(self._size[self._find(g)] for g in layout)

    def _visit(self, info: LayerInfo) -> None:  # noqa: C901 - one branch per layer family
        name, cls, layer = info.name, info.cls, info.layer
        if cls == "InputLayer":
            shape = self._input_shape(info)
            g = self._new_group(shape[-1] if shape and shape[-1] else 1)
            self._freeze([g], "model input")
            self.layouts[(name, 0)] = (g,)
            return
        ins = self._in_layouts(info)
        cfg = layer.get_config() if layer is not None else {}
        if cfg.get("data_format") == "channels_first":
            return self._unknown(info, ins, f"{cls} with data_format=channels_first")
        act = cfg.get("activation")
        if cls in PRODUCERS and len(ins) == 1:
            x = ins[0]
            weights = layer.get_weights()
            if cls == "Dense":
                g = self._new_group(cfg["units"], name)
                self._ref(name, 0, 0, x, "consumer")
                self._ref(name, 0, 1, (g,), "producer")
                if cfg.get("use_bias", True):
                    self._ref(name, 1, 0, (g,), "producer")
            elif cls in ("Conv1D", "Conv2D", "Conv3D"):
                if cfg.get("groups", 1) != 1:
                    return self._unknown(info, ins, f"{cls} with groups={cfg['groups']}")
                g = self._new_group(cfg["filters"], name)
                nd = weights[0].ndim
                self._ref(name, 0, nd - 2, x, "consumer")
                self._ref(name, 0, nd - 1, (g,), "producer")
                if cfg.get("use_bias", True):
                    self._ref(name, 1, 0, (g,), "producer")
            elif cls in ("SeparableConv1D", "SeparableConv2D"):
                if cfg.get("depth_multiplier", 1) != 1:
                    return self._unknown(info, ins, f"{cls} with depth_multiplier={cfg['depth_multiplier']}")
                g = self._new_group(cfg["filters"], name)
                nd = weights[0].ndim
                self._ref(name, 0, nd - 2, x, "channelwise")  # depthwise kernel (.., C, 1)
                self._ref(name, 1, nd - 2, x, "consumer")  # pointwise kernel (.., C, F)
                self._ref(name, 1, nd - 1, (g,), "producer")
                if cfg.get("use_bias", True):
                    self._ref(name, 2, 0, (g,), "producer")
            else:  # Embedding: integer ids in, vectors out
                g = self._new_group(cfg["output_dim"], name)
                self._freeze(x, f"{name} (Embedding) reads integer ids")
                self._ref(name, 0, 1, (g,), "producer")
            if act in CHANNEL_MIXING_ACTIVATIONS:
                self._freeze((g,), f"{name} applies {act} across channels")
            self.layouts[(name, 0)] = (g,)
            return
        if cls in ("DepthwiseConv1D", "DepthwiseConv2D") and len(ins) == 1:
            if cfg.get("depth_multiplier", 1) != 1:
                return self._unknown(info, ins, f"{cls} with depth_multiplier={cfg['depth_multiplier']}")
            nd = layer.get_weights()[0].ndim
            self._ref(name, 0, nd - 2, ins[0], "channelwise")
            if cfg.get("use_bias", True):
                self._ref(name, 1, 0, ins[0], "channelwise")
            if act in CHANNEL_MIXING_ACTIVATIONS:
                self._freeze(ins[0], f"{name} applies {act} across channels")
            self.layouts[(name, 0)] = ins[0]
            return
        if cls == "BatchNormalization" and len(ins) == 1:
            axis = cfg.get("axis", -1)
            axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
            rank = len(layer.input.shape) if hasattr(layer, "input") else None
            if axis != -1 and rank is not None and axis != rank - 1:
                return self._unknown(info, ins, f"BatchNormalization over axis {axis}")
            for i in range(len(layer.get_weights())):
                self._ref(name, i, 0, ins[0], "channelwise")
            self.layouts[(name, 0)] = ins[0]
            return
        if cls == "PReLU" and len(ins) == 1:
            w = layer.get_weights()[0]
            if w.shape[-1] == self._layout_size(ins[0]) and w.shape[-1] > 1:
                self._ref(name, 0, w.ndim - 1, ins[0], "channelwise")
            self.layouts[(name, 0)] = ins[0]
            return
        if cls in PASS_THROUGH and len(ins) == 1:
            if cls == "Activation" and act in CHANNEL_MIXING_ACTIVATIONS:
                self._freeze(ins[0], f"{name} applies {act} across channels")
            self.layouts[(name, 0)] = ins[0]
            return
        if cls == "Softmax":
            self._freeze(ins[0], f"{name} (Softmax) mixes channels")
            self.layouts[(name, 0)] = ins[0]
            return
        if cls in ("LayerNormalization", "UnitNormalization", "GroupNormalization") and len(ins) == 1:
            self._freeze(ins[0], f"{name} ({cls}) normalises across channels")
            self.layouts[(name, 0)] = ins[0]
            return
        if cls == "Rescaling" and len(ins) == 1:
            if np.ndim(cfg.get("scale", 1.0)) == 0 and np.ndim(cfg.get("offset", 0.0)) == 0:
                self.layouts[(name, 0)] = ins[0]
                return
            return self._unknown(info, ins, "Rescaling with per-channel scale")
        if cls == "Flatten" and len(ins) == 1:
            in_shape = layer.input.shape
            reps = int(np.prod([d for d in in_shape[1:-1]])) if len(in_shape) > 2 else 1
            self.layouts[(name, 0)] = tuple(ins[0]) * reps
            return
        if cls == "Reshape" and len(ins) == 1:
            in_shape, out_shape = tuple(layer.input.shape), tuple(layer.output.shape)
            if in_shape[-1] == out_shape[-1]:
                in_sp = int(np.prod(in_shape[1:-1])) if len(in_shape) > 2 else 1
                out_sp = int(np.prod(out_shape[1:-1])) if len(out_shape) > 2 else 1
                if in_sp == out_sp:
                    self.layouts[(name, 0)] = ins[0]
                    return
            if len(out_shape) == 2 and len(in_shape) > 2:  # a flatten written as Reshape
                reps = int(np.prod(in_shape[1:-1]))
                self.layouts[(name, 0)] = tuple(ins[0]) * reps
                return
            return self._unknown(info, ins, f"Reshape {in_shape[1:]} -> {out_shape[1:]} moves channels")
        if cls in ELEMENTWISE_MERGE and len(ins) >= 2:
            first = ins[0]
            same = all(len(x) == len(first) for x in ins) and all(
                self._size[self._find(a)] == self._size[self._find(b)] for x in ins for a, b in zip(x, first)
            )
            if not same:
                return self._unknown(info, ins, f"{cls} of differently laid-out or broadcast inputs")
            for x in ins[1:]:
                for a, b in zip(first, x):
                    self._union(a, b)
            self.layouts[(name, 0)] = first
            return
        if cls == "Concatenate" and len(ins) >= 2:
            rank = len(layer.output.shape)
            axis = cfg.get("axis", -1)
            if axis in (-1, rank - 1):
                self.layouts[(name, 0)] = tuple(g for x in ins for g in x)
                return
            first = ins[0]
            if all(len(x) == len(first) for x in ins):
                for x in ins[1:]:
                    for a, b in zip(first, x):
                        self._union(a, b)
                self.layouts[(name, 0)] = first
                return
            return self._unknown(info, ins, f"Concatenate over axis {axis}")
        return self._unknown(info, ins, None)

    def _input_shape(self, info: LayerInfo) -> tuple:
        if info.layer is None:  # Sequential pseudo-input
            return tuple(self.model.inputs[0].shape)
        return tuple(info.layer.output.shape)

    def _unknown(self, info: LayerInfo, ins, why: str | None) -> None:
        label = why or f"layer class {info.cls} is not known to the pruning graph"
        self.unknown[info.name] = info.cls
        for x in ins:
            self._freeze(x, f"{info.name}: {label}")
        layer = info.layer
        outputs = layer.output if layer is not None else None
        outs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for i, t in enumerate(outs):
            size = t.shape[-1] if t is not None and len(t.shape) and t.shape[-1] else 1
            g = self._new_group(size)
            self._freeze([g], f"{info.name}: output of {label}")
            self.layouts[(info.name, i)] = (g,)
        # weights of an unknown layer are never sliced: its channels are frozen

    # ------------------------------------------------------------------ results
    def _finalise(self) -> None:
        roots: dict[int, Group] = {}
        for g in list(self._parent):
            r = self._find(g)
            if r not in roots:
                roots[r] = Group(id=r, size=self._size[r], producers=list(dict.fromkeys(self._producers.get(r, []))),
                                 frozen_reasons=list(self._reasons.get(r, [])))
        # canonical layouts (root ids) and refs
        self.layouts = {k: tuple(self._find(g) for g in v) for k, v in self.layouts.items()}
        self.refs = [WeightRef(r.layer, r.weight, r.axis, tuple(self._find(g) for g in r.layout), r.role) for r in self._refs]
        for ref in self.refs:
            for g in set(ref.layout):
                grp = roots[g]
                grp.refs.append(ref)
                if ref.layer not in grp.members:
                    grp.members.append(ref.layer)
        # number groups 0..n-1 in model order for readable reports
        ordered = sorted(roots.values(), key=lambda grp: grp.id)
        self.groups: dict[int, Group] = {grp.id: grp for grp in ordered}
        self.refs_by_layer: dict[str, list[WeightRef]] = {}
        for ref in self.refs:
            self.refs_by_layer.setdefault(ref.layer, []).append(ref)
        self.group_of_producer = {p: grp.id for grp in ordered for p in grp.producers}

    @property
    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups.values() if g.prunable]

    def frozen_notes(self) -> list[str]:
        notes = []
        for cls_layer, cls in self.unknown.items():
            notes.append(f"layer {cls_layer!r} (class {cls}) is not known to the pruning graph: its channels are frozen")
        return notes

    def describe(self) -> list[dict]:
        return [
            {"group": g.id, "name": g.name, "size": g.size, "producers": g.producers, "members": g.members,
             "prunable": g.prunable, "frozen": g.frozen_reasons}
            for g in self.groups.values()
            if g.producers or g.members
        ]


def offsets(layout: tuple[int, ...], sizes: dict[int, int]) -> list[tuple[int, int]]:
    """(group, start) for each block of ``layout`` given current group ``sizes``."""
    out, start = [], 0
    for g in layout:
        out.append((g, start))
        start += sizes[g]
    return out


def layout_indices(layout: tuple[int, ...], sizes: dict[int, int], kept: dict[int, np.ndarray]) -> np.ndarray:
    """Indices along an axis laid out as ``layout`` (with ``sizes``) that survive ``kept``.

    ``kept[g]`` are positions within group g's current channels; groups absent from
    ``kept`` keep everything."""
    parts = []
    for g, start in offsets(layout, sizes):
        k = kept.get(g)
        parts.append(start + (np.arange(sizes[g]) if k is None else np.asarray(k, dtype=np.int64)))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
