"""Dependency graph of a Keras model: which channels must be removed together.

Every tensor's channel (last) axis is described by a *layout*: a tuple of group ids, each
group contributing all of its channels contiguously. A producer (Dense, Conv) opens a new
group for its output channels. Channel-wise layers (BatchNormalization, DepthwiseConv2D,
pooling, activations, dropout, padding) pass the layout through; element-wise merges
(Add, Multiply, ...) tie the groups of their inputs into one; Concatenate joins layouts;
Flatten repeats the layout once per spatial position (channel ``c`` at position ``s`` is
feature ``s * C + c``). Each layer's weights that index channels are recorded as
``(weight_index, axis, layout)``, so surgery can slice any weight from the plan alone.

The rule of each layer kind lives in its handler (:mod:`edgeprune.pipeline.prune.handlers`,
registered by Keras class); this module holds the union-find of groups, the traversal
and the small builder API the handlers call.

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
from edgeprune.pipeline.data import _keras_compat as compat

# Names kept for the modules that match layers by class name; the rules live in the
# layer handlers (edgeprune.pipeline.prune.handlers), one per layer kind.
from edgeprune.pipeline.prune.handlers.base import CHANNEL_MIXING_ACTIVATIONS, handler_for  # noqa: E402
from edgeprune.pipeline.prune.handlers.channelwise import PASS_THROUGH  # noqa: E402
from edgeprune.pipeline.prune.handlers.structure import ELEMENTWISE_MERGE  # noqa: E402

__all__ = ["DependencyGraph", "Group", "WeightRef", "LayerInfo", "offsets", "layout_indices",
           "PASS_THROUGH", "ELEMENTWISE_MERGE", "CHANNEL_MIXING_ACTIVATIONS"]


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
    min_width: int = 1  # the smallest width the group may be pruned to (see the handlers)

    @property
    def frozen(self) -> bool:
        return bool(self.frozen_reasons)

    @property
    def prunable(self) -> bool:
        return not self.frozen and self.size > max(1, self.min_width) and bool(self.producers)

    @property
    def name(self) -> str:
        return self.producers[0] if self.producers else f"group{self.id}"


@dataclass
class LayerInfo:
    name: str
    cls: str
    inputs: list[tuple[str, int]]  # (layer, tensor index) per input tensor
    layer: object
    masks: list[tuple[str, int]] = field(default_factory=list)  # Keras masks passed to the call
    mask_only: bool = False  # an op that only computes a mask (Masking's NotEqual/Any)


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
        self.shapes: dict[tuple[str, int], tuple] = {}
        self._handlers: dict = {}  # layer name -> its handler
        self._min_width: list[tuple[tuple[int, ...], int]] = []
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
            data, masks = compat.split_node_inputs(nodes)
            layer = by_name.get(name)
            infos.append(LayerInfo(name, type(layer).__name__ if layer is not None else entry["class_name"],
                                   data, layer, masks))
        # ops (no layer object) whose outputs only feed masks: part of a mask computation
        feeds_data = {src for info in infos for src, _ in info.inputs}
        mask_src = {src for info in infos for src, _ in info.masks}
        by_info = {i.name: i for i in infos}
        stack = [n for n in mask_src if n not in feeds_data]
        while stack:
            info = by_info.get(stack.pop())
            if info is None or info.layer is not None or info.mask_only:
                continue
            info.mask_only = True
            stack += [src for src, _ in info.inputs if src not in feeds_data or by_info[src].layer is None]
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

    def _visit(self, info: LayerInfo) -> None:
        """Dispatch to the layer's handler; a class without one is frozen, naming the class."""
        self._record_shapes(info)
        ins = self._in_layouts(info)
        if info.mask_only:  # a mask reads every channel of its input: freeze them, no note
            for x in ins:
                self._freeze(x, f"{info.name} ({info.cls}) computes a mask across channels")
            g = self._new_group(1)
            self._freeze([g], "a mask")
            self.layouts[(info.name, 0)] = (g,)
            return
        handler = handler_for(info.layer, info.cls)
        if handler is None:
            return self.unknown_layer(info, ins, None)
        cfg = info.layer.get_config() if info.layer is not None else {}
        if cfg.get("data_format") == "channels_first":
            return self.unknown_layer(info, ins, f"{info.cls} with data_format=channels_first")
        if handler.single_input and len(ins) != 1:
            return self.unknown_layer(info, ins, f"{info.cls} called on {len(ins)} inputs")
        self._handlers[info.name] = handler
        handler.visit(self, info, ins, cfg)
        if handler.min_width > 1:
            self._min_width.append((ins[0] if ins else (), handler.min_width))

    # ------------------------------------------------------------------ builder API (for handlers)
    def new_group(self, size: int, producer: str | None = None) -> int:
        return self._new_group(size, producer)

    def add_ref(self, layer: str, weight: int, axis: int, layout, role: str) -> None:
        self._ref(layer, weight, axis, tuple(layout), role)

    def freeze(self, layout: Iterable[int], reason: str) -> None:
        self._freeze(layout, reason)

    def tie(self, a: tuple[int, ...], b: tuple[int, ...]) -> None:
        """Channel i of layout ``a`` is channel i of layout ``b`` (group by group)."""
        for x, y in zip(a, b):
            self._union(x, y)

    def set_layout(self, layer: str, layout, index: int = 0) -> None:
        self.layouts[(layer, index)] = tuple(layout)

    def group_size(self, g: int) -> int:
        return self._size[self._find(g)]

    def layout_size(self, layout) -> int:
        return self._layout_size(tuple(layout))

    def in_shapes(self, info: LayerInfo) -> list[tuple | None]:
        """Shapes of the layer's input tensors (from their producers' outputs; a Masking
        layer's mask, which Keras lists among a layer's inputs, is not one of them)."""
        return [self.shapes.get(ref) for ref in info.inputs]

    def out_shapes(self, info: LayerInfo) -> list[tuple]:
        return [self.shapes[(info.name, i)] for i in range(len(compat.output_shapes(info.layer)))]


    def _record_shapes(self, info: LayerInfo) -> None:
        if info.layer is None:  # Sequential pseudo-input, or an op of the functional graph
            if info.cls == "InputLayer" and not info.inputs:
                self.shapes[(info.name, 0)] = tuple(self.model.inputs[0].shape)
            return
        for i, shape in enumerate(compat.output_shapes(info.layer)):
            self.shapes[(info.name, i)] = shape

    def _input_shape(self, info: LayerInfo) -> tuple:
        if info.layer is None:  # Sequential pseudo-input
            return tuple(self.model.inputs[0].shape)
        return tuple(info.layer.output.shape)

    def unknown_layer(self, info: LayerInfo, ins, why: str | None) -> None:
        """Freeze the layer's input and output channels, naming its class and ``why``."""
        label = why or f"layer class {info.cls} is not known to the pruning graph"
        self.unknown[info.name] = info.cls
        for x in ins:
            self._freeze(x, f"{info.name}: {label}")
        shapes = compat.output_shapes(info.layer) if info.layer is not None else [None]
        for i, shape in enumerate(shapes):
            size = shape[-1] if shape and shape[-1] else 1
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
        for layout, width in self._min_width:
            for g in layout:
                grp = roots[self._find(g)]
                grp.min_width = max(grp.min_width, width)
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

    def handler(self, layer: str):
        """The handler that described ``layer`` (None for a layer frozen as unknown)."""
        return self._handlers.get(layer)

    def is_identity(self, layer: str) -> bool:
        """``layer`` is the identity at inference (its handler says so: Dropout, noise, Flatten)."""
        h = self._handlers.get(layer)
        return bool(h is not None and h.identity)

    def can_refit(self, layer: str) -> bool:
        """Compensation may refit ``layer`` (its handler is ``refittable`` for its config)."""
        h = self._handlers.get(layer)
        info = self.layers.get(layer)
        return bool(h is not None and info is not None and info.layer is not None and h.can_refit(info.layer))

    @property
    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups.values() if g.prunable]

    def frozen_notes(self) -> list[str]:
        notes = []
        for cls_layer, cls in self.unknown.items():
            notes.append(f"layer {cls_layer!r} (class {cls}) is not known to the pruning graph: its channels are frozen")
        return notes

    def nothing_prunable_note(self) -> str:
        """Why no group can be pruned: frozen groups (with their reasons) and groups already
        at their minimum width are named separately (a model of one-channel layers is not
        'frozen', it has nothing to remove)."""
        with_producers = [g for g in self.groups.values() if g.producers]
        if not with_producers:
            return "no prunable channel group: the model has no layer with prunable output channels"
        frozen = [g for g in with_producers if g.frozen]
        narrow = [g for g in with_producers if not g.frozen and g.size <= max(1, g.min_width)]
        parts = []
        if frozen:
            shown = "; ".join(f"{g.name} ({g.frozen_reasons[0]})" for g in frozen[:4])
            more = f" and {len(frozen) - 4} more" if len(frozen) > 4 else ""
            parts.append(f"{len(frozen)} frozen: {shown}{more}")
        if narrow:
            shown = ", ".join(f"{g.name} ({g.size} channel{'s' if g.size != 1 else ''}, minimum {max(1, g.min_width)})"
                              for g in narrow[:4])
            more = f" and {len(narrow) - 4} more" if len(narrow) > 4 else ""
            parts.append(f"{len(narrow)} already at their minimum width, nothing to remove: {shown}{more}")
        return "no prunable channel group: " + "; ".join(parts)

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
