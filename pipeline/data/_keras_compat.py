"""The one place that knows about Keras internals or Keras-2 leftovers.

Everything else in edgeprune uses public Keras 3 API. Kept here:
- tolerant versions of layer classes for Keras 2 ``.h5`` configs that Keras 3 refuses
  (e.g. ``DepthwiseConv2D(groups=1)``), so legacy files load; the loaded model is then
  rebuilt with the standard classes, so nothing custom leaks into saved files;
- parsing the ``inbound_nodes`` of a functional ``get_config()``.
"""
from __future__ import annotations

import re
from typing import Any, Iterator

import keras

# Keys Keras 2 wrote that Keras 3 rejects, with the values under which dropping them is
# exact. A key with another value changes the computation, so it is not dropped.
LEGACY_KEYS: dict[str, dict[str, Any]] = {
    "DepthwiseConv2D": {"groups": 1},
    "SeparableConv2D": {"groups": 1},
    "Conv2DTranspose": {"groups": 1},
    "Conv1DTranspose": {"groups": 1},
    # Keras 2 recurrent layers: time_major=False is Keras 3's only layout (batch first)
    "SimpleRNN": {"time_major": False},
    "GRU": {"time_major": False},
    "LSTM": {"time_major": False},
    "ConvLSTM1D": {"time_major": False},
    "ConvLSTM2D": {"time_major": False},
    "BatchNormalization": {"renorm": False, "renorm_clipping": None, "renorm_momentum": 0.99,
                           "fused": None, "adjustment": None, "virtual_batch_size": None},
}
# Accepted for any layer: keys with no effect on inference.
LEGACY_ANY: dict[str, Any] = {}

_UNRECOGNIZED = re.compile(r"Unrecognized keyword arguments passed to (\w+): (\{.*\})")


class LegacyConfigError(Exception):
    def __init__(self, cls: str, key: str, value: Any):
        super().__init__(f"{cls} has Keras 2 option {key}={value!r}, which Keras 3 cannot represent")
        self.cls, self.key, self.value = cls, key, value


def tolerant_class(base: type) -> type:
    """A subclass of ``base`` whose constructor drops known-harmless Keras 2 keys."""
    allowed = LEGACY_KEYS.get(base.__name__, {})

    def __init__(self, *args, **kwargs):  # noqa: N807
        for key in list(kwargs):
            if key in allowed:
                value = kwargs.pop(key)
                if value != allowed[key] and not (allowed[key] is None and value in (None, False)):
                    raise LegacyConfigError(base.__name__, key, value)
        base.__init__(self, *args, **kwargs)

    return type(base.__name__, (base,), {"__init__": __init__, "_edgeprune_legacy": True})


def _drop_legacy_keys(entry: Any) -> Any:
    """A serialised layer (``{"class_name", "config"}``) without its known-harmless Keras 2
    keys (a key with another value raises LegacyConfigError)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
        return entry
    allowed = LEGACY_KEYS.get(entry.get("class_name", ""), {})
    cfg = dict(entry["config"])
    for key in [k for k in cfg if k in allowed]:
        value = cfg.pop(key)
        if value != allowed[key] and not (allowed[key] is None and value in (None, False)):
            raise LegacyConfigError(entry["class_name"], key, value)
    return {**entry, "config": cfg}


def tolerant_wrapper(base: type) -> type:
    """A wrapper class (Bidirectional) whose inner layers' configs are cleaned of the
    known-harmless Keras 2 keys before the standard deserialisation."""

    @classmethod
    def from_config(cls, config, custom_objects=None):  # noqa: N805
        config = dict(config)
        for key in ("layer", "backward_layer"):
            if key in config:
                config[key] = _drop_legacy_keys(config[key])
        return base.from_config.__func__(cls, config, custom_objects)

    return type(base.__name__, (base,), {"from_config": from_config, "_edgeprune_legacy": True})


WRAPPERS = ("Bidirectional",)


def legacy_custom_objects() -> dict[str, type]:
    objs = {}
    for name in LEGACY_KEYS:
        base = getattr(keras.layers, name, None)
        if base is not None:
            objs[name] = tolerant_class(base)
    for name in WRAPPERS:
        objs[name] = tolerant_wrapper(getattr(keras.layers, name))
    return objs


def parse_unrecognized(exc: BaseException) -> tuple[str, str] | None:
    m = _UNRECOGNIZED.search(str(exc))
    return (m.group(1), m.group(2)) if m else None


def layers_with_key(config: Any, cls: str, key: str) -> list[str]:
    """Names of the layers of class ``cls`` whose config has ``key``, anywhere in a model
    config (nested models and wrappers such as Bidirectional included)."""
    found: list[str] = []

    def walk(obj: Any) -> None:
        if isinstance(obj, dict):
            cfg = obj.get("config")
            if obj.get("class_name") == cls and isinstance(cfg, dict) and key in cfg:
                found.append(str(cfg.get("name", "?")))
            for value in obj.values():
                walk(value)
        elif isinstance(obj, list):
            for value in obj:
                walk(value)

    walk(config)
    return found


def has_legacy_layers(model: keras.Model) -> bool:
    return any(getattr(type(l), "_edgeprune_legacy", False) for l in model.layers)


def to_standard_classes(model: keras.Model) -> keras.Model:
    """Rebuild ``model`` with the standard Keras classes in place of the tolerant ones."""

    def clone(layer):
        cls = type(layer)
        if getattr(cls, "_edgeprune_legacy", False):
            std = cls.__mro__[1]
            return std.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    new = keras.models.clone_model(model, clone_function=clone)
    new.set_weights(model.get_weights())
    return new


def output_shapes(layer) -> list[tuple]:
    """Shapes of ``layer``'s output tensors (one per output; Keras returns a bare tensor
    for a single output and a list for several, e.g. an RNN with ``return_state``)."""
    out = layer.output
    outs = out if isinstance(out, (list, tuple)) else [out]
    return [tuple(t.shape) for t in outs]


def split_node_inputs(nodes: Any) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(data inputs, mask inputs) of a functional config's ``inbound_nodes``: Keras 3 lists
    the mask a layer receives (after Masking) under the call's ``mask`` keyword; it is not
    a data input. Keras 2 list nodes carry no masks."""
    data: list[tuple[str, int]] = []
    masks: list[tuple[str, int]] = []
    for node in nodes or []:
        if isinstance(node, dict) and ("args" in node or "kwargs" in node):
            data += [(n, t) for n, _, t in iter_history(node.get("args", []))]
            for key, value in (node.get("kwargs") or {}).items():
                target = masks if key == "mask" else data
                target += [(n, t) for n, _, t in iter_history(value)]
        else:
            data += [(n, t) for n, _, t in iter_history(node)]
    return data, masks


def iter_history(obj: Any) -> Iterator[tuple[str, int, int]]:
    """Yield (layer_name, node_index, tensor_index) for every tensor in an inbound-node
    structure of a functional config (Keras 3 ``__keras_tensor__`` dicts, or Keras 2
    ``[name, node, tensor, kwargs]`` lists)."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            name, node, tensor = obj["config"]["keras_history"]
            yield name, int(node), int(tensor)
            return
        for value in obj.values():
            yield from iter_history(value)
    elif isinstance(obj, (list, tuple)):
        if len(obj) >= 3 and isinstance(obj[0], str) and isinstance(obj[1], int) and isinstance(obj[2], int):
            yield obj[0], obj[1], obj[2]
            return
        for value in obj:
            yield from iter_history(value)
