"""Facts of the dependency graph: coupled groups, frozen groups, layouts, unknown layers."""
from __future__ import annotations

import numpy as np
import pytest

import keras  # noqa: E402  (a hard dependency: a missing keras must fail, not skip)

from edgeprune.errors import EdgepruneError  # noqa: E402
from edgeprune.pipeline.prune.graph import DependencyGraph  # noqa: E402
from edgeprune.pipeline.prune.pruner import prune  # noqa: E402
from edgeprune.pipeline.prune.surgery import PruneState, build_model, masked_model  # noqa: E402

L = keras.layers


def randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        ws = []
        for w in layer.weights:
            shape = tuple(w.shape)
            if w.name == "moving_variance":
                ws.append(rng.uniform(0.5, 2.0, shape))
            elif w.name in ("gamma",):
                ws.append(rng.uniform(0.5, 1.5, shape))
            else:
                ws.append(rng.normal(0, 0.5, shape))
        if ws:
            layer.set_weights([w.astype(np.float32) for w in ws])
    return model


def out(model, x):
    return np.asarray(model(x, training=False))


def x_for(model, n=4, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, *model.inputs[0].shape[1:])).astype(np.float32)


# --------------------------------------------------------------------------- ResNet-8
def test_resnet8_residual_groups_are_coupled(mlperf_models):
    model = mlperf_models("resnet8")
    graph = DependencyGraph(model)
    adds = [l for l in model.layers if type(l).__name__ == "Add"]
    assert len(adds) == 3
    multi = [g for g in graph.groups.values() if len(g.producers) > 1]
    # every Add ties exactly the groups of its two inputs into one group with two producers
    for add in adds:
        (g_add,) = set(graph.layouts[(add.name, 0)])
        assert len(graph.groups[g_add].producers) == 2, graph.groups[g_add].producers
    assert len(multi) == 3
    # the stem conv and the block conv whose output is added to it: ONE group
    stem = graph.group_of_producer["conv2d"]
    assert graph.group_of_producer["conv2d_2"] == stem
    assert sorted(graph.groups[stem].producers) == ["conv2d", "conv2d_2"]
    assert graph.group_of_producer["conv2d_4"] == graph.group_of_producer["conv2d_5"]
    assert graph.group_of_producer["conv2d_7"] == graph.group_of_producer["conv2d_8"]
    assert graph.groups[stem].prunable and graph.groups[stem].size == 16
    # the stem group indexes: both producers, both BNs after them, and its consumers
    members = set(graph.groups[stem].members)
    assert {"conv2d", "conv2d_2", "batch_normalization", "batch_normalization_2",
            "conv2d_1", "conv2d_3", "conv2d_5"} <= members
    # single-producer groups stay separate
    singles = {p for p in ("conv2d_1", "conv2d_3", "conv2d_6")}
    assert len({graph.group_of_producer[p] for p in singles} | {stem}) == 4


def test_resnet8_pruning_keeps_coupled_layers_identical(mlperf_models):
    model = mlperf_models("resnet8")
    result = prune(model, rate=0.5, criterion="l1")
    assert result.plan.layers["conv2d"] == result.plan.layers["conv2d_2"]
    assert result.plan.layers["conv2d_4"] == result.plan.layers["conv2d_5"]
    assert result.model.get_layer("conv2d").filters == result.model.get_layer("conv2d_2").filters == 8
    row = next(r for r in result.layers if "conv2d_2" in [r.layer, *r.coupled])
    assert {row.layer, *row.coupled} == {"conv2d", "conv2d_2"}


def test_resnet8_dense_output_is_frozen(mlperf_models):
    model = mlperf_models("resnet8")
    graph = DependencyGraph(model)
    g = graph.groups[graph.group_of_producer["dense"]]
    assert g.frozen and not g.prunable
    assert "model output" in g.frozen_reasons
    assert g not in graph.prunable_groups
    result = prune(model, rate=0.5, criterion="random")
    assert result.model.get_layer("dense").units == 10
    row = next(r for r in result.layers if r.layer == "dense")
    assert (row.before, row.after) == (10, 10) and row.method.startswith("frozen")
    assert "model output" in row.method
    assert any(f["layer"] == "dense" for f in result.frozen)


@pytest.mark.slow
def test_depthwise_is_channelwise_member_of_its_producer_group(mlperf_models):
    for key in ("vww", "kws"):
        model = mlperf_models(key)
        graph = DependencyGraph(model)
        dws = [l.name for l in model.layers if type(l).__name__ == "DepthwiseConv2D"]
        assert dws, key
        for name in dws:
            groups = [g for g in graph.groups.values() if name in g.members]
            assert len(groups) == 1, (key, name)
            roles = {r.role for r in graph.refs_by_layer[name]}
            assert roles == {"channelwise"}, (key, name, roles)
            assert name not in graph.group_of_producer


# --------------------------------------------------------------------------- Flatten -> Dense
def _flatten_model():
    inp = keras.Input((3, 3, 2))
    x = L.Conv2D(4, 1, activation="relu", name="conv")(inp)
    x = L.Flatten(name="flat")(x)
    x = L.Dense(5, activation="relu", name="fc")(x)
    return randomize(keras.Model(inp, L.Dense(2, name="head")(x)), 1)


def test_flatten_dense_rows_sliced_per_spatial_position():
    model = _flatten_model()
    graph = DependencyGraph(model)
    g = graph.group_of_producer["conv"]
    assert graph.layouts[("flat", 0)] == (g,) * 9
    state = PruneState(graph)
    state.remove(g, [1, 2])
    original = model.get_layer("fc").get_weights()[0]
    rows = [s * 4 + c for s in range(9) for c in (0, 3)]
    np.testing.assert_array_equal(state.weights["fc"][0], original[rows])
    pruned = build_model(graph, state)
    assert pruned.get_layer("fc").get_weights()[0].shape == (18, 5)
    x = x_for(model, 8)
    np.testing.assert_allclose(out(pruned, x), out(masked_model(graph, {g: np.array([1, 2])}), x), atol=1e-5, rtol=0)
    # and a wrong slicing (channel-major instead of position-major) would differ
    wrong = original[[c * 9 + s for c in (0, 3) for s in range(9)]]
    assert not np.allclose(wrong, state.weights["fc"][0])


# --------------------------------------------------------------------------- unknown layers
@keras.saving.register_keras_serializable(package="edgeprune_tests")
class Doubler(L.Layer):
    def call(self, x):
        return x * 2.0


def _with_middle(middle, sequential=False):
    layers = [L.Dense(6, activation="relu", name="d1"), middle, L.Dense(5, activation="relu", name="d2"),
              L.Dense(2, name="d3")]
    if sequential:
        model = keras.Sequential([keras.Input((4,)), *layers])
    else:
        inp = keras.Input((4,))
        x = inp
        for lay in layers:
            x = lay(x)
        model = keras.Model(inp, x)
    return randomize(model, 2)


MIDDLE = [
    pytest.param(lambda: Doubler(name="mid"), "Doubler", False, id="custom-functional"),
    pytest.param(lambda: Doubler(name="mid"), "Doubler", True, id="custom-sequential"),
    pytest.param(lambda: L.Lambda(lambda t: t * 3.0, name="mid"), "Lambda", False, id="lambda"),
]


@pytest.mark.parametrize("make,cls,sequential", MIDDLE)
def test_unknown_layer_freezes_its_channels_and_is_noted(make, cls, sequential):
    model = _with_middle(make(), sequential)
    graph = DependencyGraph(model)
    assert graph.unknown == {"mid": cls}
    g1 = graph.groups[graph.group_of_producer["d1"]]
    assert g1.frozen and any(cls in r for r in g1.frozen_reasons)
    assert graph.groups[graph.group_of_producer["d2"]].prunable  # downstream still prunable
    assert any(cls in n and "mid" in n for n in graph.frozen_notes())


PRUNE_MIDDLE = MIDDLE  # a Lambda (Python code, no weights) is kept as the same instance


@pytest.mark.parametrize("make,cls,sequential", PRUNE_MIDDLE)
def test_prune_through_unknown_layer(make, cls, sequential):
    model = _with_middle(make(), sequential)
    graph = DependencyGraph(model)
    result = prune(model, rate=0.5, criterion="l1")
    assert any(cls in n and "mid" in n for n in result.notes), result.notes
    assert result.model.get_layer("d1").units == 6
    assert result.model.get_layer("d2").units < 5
    # its channels were left alone: the pruned model equals the masked original
    gid = graph.group_of_producer["d2"]
    removed = np.setdiff1d(np.arange(5), result.plan.layers["d2"])
    x = x_for(model, 8)
    np.testing.assert_allclose(out(result.model, x), out(masked_model(graph, {gid: removed}), x), atol=1e-5, rtol=0)


def test_layer_normalization_freezes_channels():
    model = _with_middle(L.LayerNormalization(name="mid"))
    graph = DependencyGraph(model)
    g1 = graph.groups[graph.group_of_producer["d1"]]
    assert g1.frozen and any("LayerNormalization" in r for r in g1.frozen_reasons)
    result = prune(model, rate=0.5)
    assert result.model.get_layer("d1").units == 6
    frozen = next(f for f in result.frozen if f["layer"] == "d1")
    assert any("LayerNormalization" in r for r in frozen["reasons"])


def test_softmax_inside_model_freezes_the_group():
    inp = keras.Input((4,))
    x = L.Dense(6, activation="softmax", name="attn")(inp)
    model = randomize(keras.Model(inp, L.Dense(2, name="head")(x)))
    graph = DependencyGraph(model)
    assert not graph.groups[graph.group_of_producer["attn"]].prunable
    result = prune(model, rate=0.5)
    assert result.model.get_layer("attn").units == 6
    assert any("no prunable" in n for n in result.notes)


def test_shared_layer_is_rejected():
    inp = keras.Input((4,))
    shared = L.Dense(4, name="shared")
    model = keras.Model(inp, L.Dense(2)(shared(shared(inp))))
    with pytest.raises(EdgepruneError, match="shared"):
        DependencyGraph(model)


def test_concatenate_joins_layouts():
    inp = keras.Input((5, 5, 2))
    a = L.Conv2D(3, 1, name="a")(inp)
    b = L.Conv2D(4, 1, name="b")(inp)
    x = L.Concatenate(name="cat")([a, b])
    x = L.GlobalAveragePooling2D()(x)
    model = randomize(keras.Model(inp, L.Dense(2, name="head")(x)))
    graph = DependencyGraph(model)
    ga, gb = graph.group_of_producer["a"], graph.group_of_producer["b"]
    assert ga != gb
    assert graph.layouts[("cat", 0)] == (ga, gb)
    state = PruneState(graph)
    state.remove(gb, [0, 3])
    state.remove(ga, [1])
    k = model.get_layer("head").get_weights()[0]
    np.testing.assert_array_equal(state.weights["head"][0], k[[0, 2, 3 + 1, 3 + 2]])


# --------------------------------------------------------------------------- never to zero / rounding
def _narrow_model():
    inp = keras.Input((6, 6, 2))
    x = L.Conv2D(2, 3, activation="relu", name="c2")(inp)
    x = L.Conv2D(3, 1, activation="relu", name="c3")(x)
    x = L.Flatten()(x)
    x = L.Dense(2, activation="relu", name="d2")(x)
    x = L.Dense(12, activation="relu", name="d12")(x)
    x = L.Dense(20, activation="relu", name="d20")(x)
    x = L.Dense(5, activation="relu", name="d5")(x)
    return randomize(keras.Model(inp, L.Dense(3, name="head")(x)), 3)


@pytest.mark.parametrize("criterion", ["paoding", "l1", "random"])
def test_rate_099_never_prunes_a_group_to_zero(criterion):
    model = _narrow_model()
    result = prune(model, rate=0.99, criterion=criterion, step=0.33)
    rows = {r.layer: r for r in result.layers}
    for name in ("c2", "c3", "d2", "d12", "d20", "d5"):
        assert rows[name].after >= 1, (name, rows[name])
        assert result.model.get_layer(name).get_weights()[0].shape[-1] == rows[name].after
        if criterion != "paoding":  # paoding: see test_paoding_reaches_target_in_a_large_step
            assert rows[name].after == 1, (name, rows[name])
    assert rows["head"].after == 3
    out(result.model, x_for(model))  # runs


def test_paoding_reaches_target_in_a_large_step():
    keras.utils.set_random_seed(0)
    inp = keras.Input((4,))
    h = L.Dense(7, activation="relu", name="hidden")(inp)
    model = keras.Model(inp, L.Dense(3)(h))
    result = prune(model, rate=0.86, criterion="paoding", step=1.0)  # target_width(7, 0.86) == 1
    assert result.model.get_layer("hidden").units == 1


def test_rate_099_on_resnet8_leaves_one_channel(mlperf_models):
    result = prune(mlperf_models("resnet8"), rate=0.99, criterion="l1", step=0.5)
    for row in result.layers:
        assert row.after >= 1
        if row.layer != "dense":
            assert row.after == 1, row
    assert out(result.model, x_for(result.model, 2)).shape == (2, 10)


def test_round_to_8_keeps_multiples_of_8():
    model = _narrow_model()
    for rate in (0.3, 0.5, 0.9):
        result = prune(model, rate=rate, criterion="l1", round_to=8, step=0.5)
        for row in result.layers:
            if row.layer == "head":
                continue
            if row.before >= 8:
                assert row.after % 8 == 0 and 8 <= row.after <= row.before, (rate, row)
            else:
                assert row.after == row.before, (rate, row)
        rows = {r.layer: r.after for r in result.layers}
        assert rows["d20"] == {0.3: 16, 0.5: 8, 0.9: 8}[rate]


def test_round_to_8_on_resnet8(mlperf_models):
    result = prune(mlperf_models("resnet8"), rate=0.7, criterion="l1", round_to=8)
    for row in result.layers:
        if row.layer != "dense":
            assert row.after % 8 == 0 and row.after < row.before, row
    assert {r.layer: r.after for r in result.layers}["conv2d_6"] == 16  # 64 * 0.3 = 19.2 -> 16
