"""Layer handlers as the one place of per-layer knowledge (issue 21, item 4): ``identity`` and
``refittable`` are handler attributes, the convolutions share one parametrized handler, and a
user registers a handler for their OWN layer class (``edgeprune.register_handler``): a model
containing it then prunes exactly (pruned == masked original); unregistered, the layer is
frozen and named, never passed through."""
from __future__ import annotations

import numpy as np
import pytest

import keras  # noqa: E402

import edgeprune  # noqa: E402
from edgeprune.pipeline.prune import compensate, criteria  # noqa: E402
from edgeprune.pipeline.prune.graph import DependencyGraph  # noqa: E402
from edgeprune.pipeline.prune.handlers import LayerHandler, handler_for, unregister_handler  # noqa: E402
from edgeprune.pipeline.prune.pruner import prune  # noqa: E402
from edgeprune.pipeline.prune.surgery import masked_reference  # noqa: E402

L = keras.layers


class ScaledDense(L.Layer):
    """A user's own layer: ``scale * (x @ W + b)`` (not a Dense subclass)."""

    def __init__(self, units, scale=1.5, **kwargs):
        super().__init__(**kwargs)
        self.units, self.scale = int(units), float(scale)

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")
        self.bias = self.add_weight(shape=(self.units,), name="bias", initializer="zeros")

    def call(self, x):
        return self.scale * (keras.ops.matmul(x, self.kernel) + self.bias)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "scale": self.scale}


class ScaledDenseHandler(LayerHandler):
    """Its channel rule: input channels index the kernel's rows, its output opens a group
    (kernel columns and bias); rebuilt narrower through the ``units`` config key."""

    width_key = "units"

    def visit(self, graph, info, ins, cfg):
        g = graph.new_group(cfg["units"], info.name)
        graph.add_ref(info.name, 0, 0, ins[0], "consumer")
        graph.add_ref(info.name, 0, 1, (g,), "producer")
        graph.add_ref(info.name, 1, 0, (g,), "producer")
        graph.set_layout(info.name, (g,))


def _model():
    rng = np.random.default_rng(0)
    inp = keras.Input((6,))
    x = L.Dense(10, activation="relu", name="d1")(inp)
    x = ScaledDense(8, name="mine")(x)
    x = L.ReLU(name="act")(x)
    model = keras.Model(inp, L.Dense(3, name="head")(x))
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([rng.normal(0, 0.6, tuple(w.shape)).astype(np.float32) for w in layer.weights])
    return model


@pytest.fixture
def registered():
    edgeprune.register_handler(ScaledDense, ScaledDenseHandler())
    yield
    unregister_handler(ScaledDense)


@pytest.mark.parametrize("criterion", ["l1", "random", "paoding", "flow", "taylor"])
def test_user_registered_layer_prunes_exactly(registered, criterion):
    model = _model()
    graph = DependencyGraph(model)
    assert graph.unknown == {}
    assert graph.groups[graph.group_of_producer["mine"]].prunable
    result = prune(model, rate=0.5, criterion=criterion, step=0.25)
    widths = {r.layer: (r.before, r.after) for r in result.layers}
    assert widths["mine"] == (8, 4) and widths["d1"] == (10, 5), widths
    new = result.model.get_layer("mine")
    assert isinstance(new, ScaledDense) and new.units == 4 and new.kernel.shape == (5, 4)
    reference, removed = masked_reference(model, result.plan)
    x = np.random.default_rng(1).uniform(-1, 1, (32, 6)).astype(np.float32)
    got, want = np.asarray(result.model(x)), np.asarray(reference(x))
    assert np.abs(got - want).max() <= 2e-5 * max(1.0, float(np.abs(want).max()))
    assert np.abs(got - np.asarray(model(x))).max() > 1e-3  # the comparison can fail


def test_unregistered_user_layer_is_frozen_and_named():
    model = _model()
    assert handler_for(model.get_layer("mine")) is None
    graph = DependencyGraph(model)
    assert graph.unknown == {"mine": "ScaledDense"}
    d1 = graph.groups[graph.group_of_producer["d1"]]
    assert d1.frozen and any("ScaledDense" in r for r in d1.frozen_reasons)
    result = prune(model, rate=0.5, criterion="l1")
    assert result.params_after == result.params_before
    assert any("ScaledDense" in n for n in result.notes)


def test_register_handler_as_decorator_and_checks():
    class Other(L.Layer):
        pass

    @edgeprune.register_handler(Other)
    class OtherHandler(LayerHandler):
        def visit(self, graph, info, ins, cfg):
            graph.set_layout(info.name, ins[0])

    try:
        assert isinstance(handler_for(Other()), OtherHandler)
    finally:
        unregister_handler(Other)
    assert handler_for(Other()) is None
    with pytest.raises(TypeError):
        edgeprune.register_handler(Other, object())


def test_identity_and_refittable_are_handler_attributes():
    assert not hasattr(criteria.base, "IDENTITY_LAYERS") and not hasattr(compensate, "REFIT_CLASSES")
    assert handler_for(L.Dropout(0.1)).identity and handler_for(L.Flatten()).identity
    assert not handler_for(L.MaxPooling2D()).identity and not handler_for(L.Dense(2)).identity
    assert handler_for(L.Dense(2)).refittable
    conv = {c: handler_for(getattr(L, c)(4, 3)) for c in ("Conv1D", "Conv2D", "Conv3D", "Conv2DTranspose")}
    assert type(conv["Conv1D"]) is type(conv["Conv3D"]) is type(conv["Conv2DTranspose"])  # one body
    assert [conv[c].refittable for c in conv] == [True, True, False, False]
    assert conv["Conv1D"].can_refit(L.Conv1D(4, 3)) and not conv["Conv1D"].can_refit(L.Conv1D(4, 3, padding="causal"))
    # a Conv2DTranspose's kernel is (kh, kw, out, in): producer axis 2, consumer axis 3
    inp = keras.Input((8, 8, 3))
    x = L.Conv2DTranspose(5, 3, name="ct")(inp)
    model = keras.Model(inp, L.Conv2D(2, 1, name="c")(x))
    graph = DependencyGraph(model)
    refs = {(r.weight, r.axis): r.role for r in graph.refs_by_layer["ct"]}
    assert refs == {(0, 2): "producer", (0, 3): "consumer", (1, 0): "producer"}
    assert compensate.refittable(graph, "c") and not compensate.refittable(graph, "ct")
