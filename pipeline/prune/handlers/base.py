"""The layer-handler registry: one handler per Keras layer kind.

A handler owns everything edgeprune knows about one kind of layer:

- :meth:`LayerHandler.visit`: its channel rule in the dependency graph (which groups its
  output opens or passes on, which of its weights are indexed by which groups, what it
  freezes), through the small builder API of :class:`~edgeprune.pipeline.prune.graph.DependencyGraph`
  (``new_group``, ``add_ref``, ``freeze``, ``tie``, ``set_layout``, ``unknown_layer``);
- :meth:`LayerHandler.rebuild_changes`: the config changes that give the layer a new
  output width (surgery rebuilds it from its config; the weights are sliced by the refs
  the handler declared);
- :meth:`LayerHandler.bounds`: its interval-bound rule for the data-free PAODING
  criterion, if any (``NotImplementedError`` = no bound downstream);
- :attr:`LayerHandler.min_width`: the smallest width its group may be pruned to.

Handlers are registered by Keras class (exact class, as TFMOT's prune registry does: a
user's subclass of ``Dense`` may compute something else, so it is not treated as a
Dense but frozen as an unknown class). The registry is filled by the handler modules
themselves (imported by the package's ``__init__``); a user registers a handler for their
own layer class with :func:`register_handler` (``edgeprune.register_handler``). Adding a
layer kind = one handler + its tests.
"""
from __future__ import annotations

from typing import Callable

_REGISTRY: dict[type, "LayerHandler"] = {}
_BY_NAME: dict[str, "LayerHandler"] = {}  # only for the Sequential pseudo-input (no layer object)

# Activations that mix channels: removing one changes the others.
CHANNEL_MIXING_ACTIVATIONS = {"softmax", "log_softmax"}


class LayerHandler:
    """Base class. ``width_key`` is the config key of the output width for producers.

    ``identity``: the layer is the identity at inference and keeps the layout (Dropout,
    noise, Flatten for a 2-D input): the criteria look through it. ``refittable``:
    compensation may refit its kernel and bias by least squares (Dense, Conv1D/Conv2D);
    :meth:`can_refit` adds the per-config conditions."""

    width_key: str | None = None
    min_width: int = 1
    # the layer needs exactly one input tensor (most layers); merges override
    single_input: bool = True
    identity: bool = False
    refittable: bool = False

    def visit(self, graph, info, ins: list[tuple[int, ...]], cfg: dict) -> None:
        raise NotImplementedError

    def can_refit(self, layer) -> bool:
        """Whether compensation may refit this layer (``refittable`` and its config allows it)."""
        return self.refittable

    def rebuild_changes(self, layer, width: int) -> dict:
        """Config changes for a producer whose group now has ``width`` channels."""
        return {self.width_key: int(width)} if self.width_key else {}

    def rebuild_config(self, layer, graph, sizes: dict[int, int]) -> dict:
        """Config changes for ``layer`` given the CURRENT group ``sizes`` (surgery): a
        producer gets its group's width; layers whose config spells a channel count
        (Reshape) override this."""
        gid = graph.group_of_producer.get(layer.name)
        return self.rebuild_changes(layer, sizes[gid]) if gid is not None else {}

    def bounds(self, info, ins, weights, cfg):
        raise NotImplementedError

    # helpers for subclasses ---------------------------------------------------------
    @staticmethod
    def freeze_if_mixing(graph, name: str, layout, cfg: dict) -> None:
        act = cfg.get("activation")
        if isinstance(act, dict):
            act = act.get("config", {}).get("name") or act.get("class_name")
        if act in CHANNEL_MIXING_ACTIVATIONS:
            graph.freeze(layout, f"{name} applies {act} across channels")


def register_handler(layer_cls, handler=None):
    """Register ``handler`` (a :class:`LayerHandler` instance, or a subclass: instantiated
    without arguments) for the Keras layer class ``layer_cls`` (the exact class: its
    subclasses are not covered). Without ``handler``, a class decorator::

        @register_handler(MyLayer)
        class MyLayerHandler(LayerHandler): ...

    ``layer_cls`` may also be the name of a ``keras.layers`` class (skipped when this Keras
    version does not have it). Registering again replaces the previous handler."""

    def add(h):
        inst = h() if isinstance(h, type) else h
        if not isinstance(inst, LayerHandler):
            raise TypeError(f"a handler must be a LayerHandler, not {type(inst).__name__}")
        if isinstance(layer_cls, str):
            import keras

            cls = getattr(keras.layers, layer_cls, None)
            _BY_NAME[layer_cls] = inst
        else:
            cls = layer_cls
        if cls is not None:
            if not isinstance(cls, type):
                raise TypeError(f"register_handler needs a layer class, not {cls!r}")
            _REGISTRY[cls] = inst
        return h

    if handler is None:
        return add
    add(handler)
    return handler


def register(*names: str, **kwargs) -> Callable[[type], type]:
    """Class decorator for the built-in handlers: one instance (``handler_cls(**kwargs)``)
    registered for the Keras layer classes ``keras.layers.<name>``."""

    def deco(handler_cls: type) -> type:
        inst = handler_cls(**kwargs)
        for name in names:
            register_handler(name, inst)
        return handler_cls

    return deco


def unregister_handler(layer_cls) -> None:
    """Remove the handler of ``layer_cls`` (its layers are then frozen as unknown)."""
    _REGISTRY.pop(layer_cls, None)


def handler_for(layer, cls_name: str | None = None) -> LayerHandler | None:
    """The handler of ``layer``'s exact class (Keras-2 tolerant classes count as their
    standard base), or None when edgeprune does not know the class."""
    if layer is None:
        return _BY_NAME.get(cls_name or "") if cls_name == "InputLayer" else None
    cls = type(layer)
    if getattr(cls, "_edgeprune_legacy", False):
        cls = cls.__mro__[1]
    return _REGISTRY.get(cls)


def registered_classes() -> list[str]:
    return sorted({c.__name__ for c in _REGISTRY})
