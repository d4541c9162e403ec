"""Attention blocks (issue 24, item 4): MultiHeadAttention prunes by whole heads (query, key,
value and output projections coupled), the feed-forward width of a transformer block prunes
like any Dense, the residual stream stays coupled (frozen behind LayerNormalization); every
criterion scores heads; the pruned model equals the original with the removed heads/channels
masked; plans replay exactly; the pruned models convert. TimeDistributed and Permute pass
channels through where they can, else they are frozen and named."""
from __future__ import annotations

import numpy as np
import pytest

import keras  # noqa: E402

from edgeprune.pipeline.convert import converter as conv  # noqa: E402
from edgeprune.pipeline.convert import fidelity as fid  # noqa: E402
from edgeprune.pipeline.prune.compensate import masked_refit_reference  # noqa: E402
from edgeprune.pipeline.prune.graph import DependencyGraph  # noqa: E402
from edgeprune.pipeline.prune.plan import Plan  # noqa: E402
from edgeprune.pipeline.prune.pruner import prune  # noqa: E402
from edgeprune.pipeline.prune.surgery import masked_reference  # noqa: E402
from wild_models import CASES, inputs, randomize  # noqa: E402

L = keras.layers
CRITERIA = ["l1", "paoding", "random", "flow", "taylor"]


def out(model, x):
    return np.asarray(model(x, training=False), dtype=np.float64)


def close_to_masked(result, reference, model, x):
    got, want = out(result.model, x), out(reference, x)
    diff = float(np.abs(got - want).max())
    assert diff <= 2e-5 * max(1.0, float(np.abs(want).max())), diff
    assert np.abs(got - out(model, x)).max() > 1e-4  # the comparison can fail
    return diff


def test_head_group_refs_and_residual_stream():
    model, _ = CASES["kws_transformer"]()
    graph = DependencyGraph(model)
    assert graph.unknown == {}
    mha = graph.groups[graph.group_of_producer["mha0"]]
    assert mha.prunable and mha.size == 4
    embed = graph.groups[graph.group_of_producer["embed"]]
    refs = {(r.weight, r.axis): (r.role, r.layout) for r in graph.refs_by_layer["mha0"]}
    h, d = (mha.id,), (embed.id,)
    assert refs == {
        (0, 0): ("consumer", d), (0, 1): ("producer", h), (1, 0): ("producer", h),  # query kernel, bias
        (2, 0): ("consumer", d), (2, 1): ("producer", h), (3, 0): ("producer", h),  # key
        (4, 0): ("consumer", d), (4, 1): ("producer", h), (5, 0): ("producer", h),  # value
        (6, 0): ("consumer", h), (6, 2): ("producer", d), (7, 0): ("producer", d),  # output projection
    }
    # the residual stream: embedding, both attention outputs and both FFN outputs are ONE group,
    # frozen by the LayerNormalizations (never pruned inconsistently)
    assert set(embed.producers) == {"embed", "ffn0_out", "ffn1_out"} and embed.frozen
    assert any("LayerNormalization" in r for r in embed.frozen_reasons)
    assert graph.layouts[("mha1", 0)] == d
    ffn = graph.groups[graph.group_of_producer["ffn0"]]
    assert ffn.prunable and ffn.size == 128 and ffn.members == ["ffn0", "ffn0_out"]


@pytest.mark.parametrize("criterion", CRITERIA)
def test_transformer_loses_40_percent_exactly(criterion, capsys):
    model, shape = CASES["kws_transformer"]()
    result = prune(model, rate=0.5, criterion=criterion, step=0.1)
    reduction = 1 - result.params_after / result.params_before
    widths = {r.layer: (r.before, r.after) for r in result.layers}
    with capsys.disabled():
        print(f"\nkws_transformer {criterion}: params {result.params_before} -> {result.params_after} "
              f"(-{reduction:.1%}), widths {widths}")
    assert reduction >= 0.40
    assert widths["mha0"] == widths["mha1"] == (4, 2) and widths["ffn0"] == widths["ffn1"] == (128, 64)
    assert widths["embed"] == (32, 32)
    new = result.model.get_layer("mha0")
    assert new.num_heads == 2 and new.key_dim == 16
    shapes = [tuple(w.shape) for w in new.get_weights()]
    assert shapes == [(32, 2, 16), (2, 16), (32, 2, 16), (2, 16), (32, 2, 16), (2, 16), (2, 16, 32), (32,)]
    assert sum(int(np.prod(w.shape)) for w in result.model.weights) == result.params_after
    reference, removed = masked_reference(model, result.plan)
    x = inputs(shape, 16)
    close_to_masked(result, reference, model, x)
    kept = result.plan.layers["mha0"]
    assert len(kept) == 2 and set(kept) <= {0, 1, 2, 3}
    # the plan replays exactly (through its JSON form)
    replay = Plan.from_dict(result.plan.to_dict()).apply(model)
    assert np.array_equal(out(replay, x), out(result.model, x))


@pytest.mark.parametrize("criterion", ["flow", "taylor"])
def test_transformer_compensated_exact_and_replayed(criterion):
    model, shape = CASES["kws_transformer"]()
    cal = inputs(shape, 64, seed=5)
    result = prune(model, rate=0.5, criterion=criterion, step=0.25, calibration=cal, compensate=True)
    assert sorted(result.plan.refits) == ["ffn0_out", "ffn1_out"]  # the FFN's second Dense (on a sequence)
    assert 1 - result.params_after / result.params_before >= 0.40
    reference, _ = masked_refit_reference(model, result.plan)
    x = inputs(shape, 16)
    close_to_masked(result, reference, model, x)
    replay = Plan.from_dict(result.plan.to_dict()).apply(model)
    assert np.abs(out(replay, x) - out(result.model, x)).max() <= 1e-6


def _head_scaled(head: int, which: str, factor: float = 0.01):
    model, shape = CASES["kws_transformer"]()
    layer = model.get_layer("mha0")
    w = layer.get_weights()
    if which == "qkv":
        for i in (0, 2, 4):
            w[i][:, head] *= factor
    else:
        w[6][head] *= factor
    layer.set_weights(w)
    return model, shape


@pytest.mark.parametrize("criterion, which", [("l1", "qkv"), ("paoding", "qkv"), ("flow", "out"), ("taylor", "out")])
def test_criteria_score_heads(criterion, which):
    """A head whose projections are 100x smaller is the one each criterion removes first."""
    for head in (1, 2):
        model, shape = _head_scaled(head, which)
        result = prune(model, rate=0.25, criterion=criterion, step=0.25, calibration=inputs(shape, 32, seed=2))
        assert sorted(result.plan.layers["mha0"]) == sorted(set(range(4)) - {head}), (criterion, head)


def test_flow_head_moments_are_the_heads_output_energy():
    from edgeprune.pipeline.prune.handlers import handler_for

    model, shape = CASES["kws_transformer"]()
    x = inputs(shape, 16, seed=3)
    layer = model.get_layer("mha0")
    m = handler_for(layer).consumer_moments(layer, model, x)
    w = layer.get_weights()
    rows = np.square(w[6].astype(np.float64)).reshape(4, -1).sum(1)
    sub = keras.Model(model.inputs, layer.output)
    full = out(sub, x)
    for h in range(4):
        masked = [a.copy() for a in w]
        masked[6][h] = 0.0
        layer.set_weights(masked)
        contrib = full - out(sub, x)  # head h's contribution to the attention output
        layer.set_weights(w)
        energy = np.square(contrib).sum(-1).mean()
        assert m[6][h] * rows[h] == pytest.approx(energy, rel=1e-4)
    q_in = out(keras.Model(model.inputs, layer.input[0]), x)
    np.testing.assert_allclose(m[0], np.square(q_in).reshape(-1, 32).mean(0), rtol=1e-5)


def test_at_least_one_head_is_kept():
    model, shape = CASES["kws_transformer"]()
    result = prune(model, rate=0.99, criterion="l1", step=0.33)
    assert result.model.get_layer("mha0").num_heads == 1
    reference, _ = masked_reference(model, result.plan)
    close_to_masked(result, reference, model, inputs(shape, 8))


@pytest.mark.parametrize("criterion", ["l1", "flow"])
def test_vit_block_prunes_exactly(criterion):
    model, shape = CASES["vit"]()
    graph = DependencyGraph(model)
    assert graph.unknown == {} and graph.groups[graph.group_of_producer["patch"]].frozen  # the residual stream
    result = prune(model, rate=0.5, criterion=criterion, step=0.25)
    widths = {r.layer: (r.before, r.after) for r in result.layers}
    assert widths["mha0"] == (3, 2) and widths["ffn0"] == (48, 24), widths
    reference, _ = masked_reference(model, result.plan)
    close_to_masked(result, reference, model, inputs(shape, 8))


@pytest.mark.parametrize("name, min_reduction", [("kws_transformer", 0.40), ("vit", 0.25)])
def test_pruned_attention_models_convert(name, min_reduction, capsys):
    model, shape = CASES[name]()
    result = prune(model, rate=0.5, criterion="l1", step=0.1)
    assert 1 - result.params_after / result.params_before >= min_reduction
    x = inputs(shape, 32, seed=7)
    ref = out(result.model, x)
    f32_orig = conv.convert(model, conv.ConvertConfig(quantize="float32"))
    sizes = {}
    for q, tol in (("float32", 1e-4), ("int8", 0.1)):
        res = conv.convert(result.model, conv.ConvertConfig(quantize=q, num_calibration=32))
        y, _ = fid.run_tflite(res.tflite, x)
        rel = float(np.linalg.norm(y.reshape(ref.shape) - ref) / np.linalg.norm(ref))
        assert rel < tol, (q, rel)
        sizes[q] = (res.size_bytes, round(rel, 4))
    assert conv.convert(result.model, conv.ConvertConfig(quantize="int8", num_calibration=8)).inputs[0].dtype == "int8"
    assert sizes["float32"][0] < f32_orig.size_bytes
    with capsys.disabled():
        print(f"\n{name}: float32 .tflite {f32_orig.size_bytes} B unpruned; pruned at 0.5 (size B, rel L2 vs Keras): {sizes}")


# --------------------------------------------------------------------------- TimeDistributed, Permute
def test_time_distributed_prunes_like_its_inner_layer():
    model, shape = CASES["time_dist"]()
    graph = DependencyGraph(model)
    assert graph.unknown == {}
    assert graph.groups[graph.group_of_producer["td_conv"]].prunable
    assert graph.layouts[("keep", 0)] == graph.layouts[("td_dense", 0)]  # Permute((1, 2)): channels stay last
    result = prune(model, rate=0.5, criterion="l1", step=0.25)
    assert result.model.get_layer("td_conv").layer.filters == 4
    assert result.model.get_layer("td_dense").layer.units == 5
    assert result.model.get_layer("td_dense").get_weights()[0].shape == (4, 5)
    reference, _ = masked_reference(model, result.plan)
    close_to_masked(result, reference, model, inputs(shape, 8))


def test_permute_moving_channels_and_unsupported_wrappers_are_frozen_and_named():
    inp = keras.Input((6, 4))
    x = L.Dense(8, name="d1")(inp)
    x = L.Permute((2, 1), name="swap")(x)
    x = L.Dense(5, name="d2")(x)
    x = L.TimeDistributed(L.BatchNormalization(), name="td_bn")(x)
    model = randomize(keras.Model(inp, L.Dense(2, name="head")(L.Flatten()(x))))
    graph = DependencyGraph(model)
    assert graph.unknown == {"swap": "Permute", "td_bn": "TimeDistributed"}
    d1 = graph.groups[graph.group_of_producer["d1"]]
    d2 = graph.groups[graph.group_of_producer["d2"]]
    assert d1.frozen and any("Permute(2, 1) moves the channel axis" in r for r in d1.frozen_reasons)
    assert d2.frozen and any("TimeDistributed(BatchNormalization)" in r for r in d2.frozen_reasons)


def test_unsupported_attention_calls_are_frozen_and_named():
    inp = keras.Input((6, 8))
    x = L.Dense(8, name="d")(inp)
    a = L.MultiHeadAttention(2, 4, output_shape=(6,), name="shaped")(x, x)
    b = L.MultiHeadAttention(2, 4, name="cross")(x, x, key=x)
    model = randomize(keras.Model(inp, [L.Dense(2, name="o1")(a), L.Dense(2, name="o2")(b)]))
    graph = DependencyGraph(model)
    assert graph.unknown == {"shaped": "MultiHeadAttention", "cross": "MultiHeadAttention"}
    d = graph.groups[graph.group_of_producer["d"]]
    assert d.frozen
    assert any("output_shape" in r for r in d.frozen_reasons)
    assert any("called on 3 tensors" in r for r in d.frozen_reasons)


def test_global_allocation_trial_masks_heads_exactly():
    """The global allocation scores a chunk with the model at the current widths and the removed
    channels masked: for a head group, whose producer (q/k/v) and consumer (output rows) weights
    are in the same layer, the masked trial computes what the pruned trial computes."""
    from edgeprune.pipeline.prune.allocation import greedy
    from edgeprune.pipeline.prune.allocation.greedy import GlobalGreedy
    from edgeprune.pipeline.prune.surgery import PruneState, build_model

    model, shape = CASES["kws_transformer"]()
    graph = DependencyGraph(model)
    state = PruneState(graph)
    state.remove(graph.group_of_producer["mha1"], [0])  # an earlier step: 3 heads left in mha1
    x = inputs(shape, 8)
    for layer in ("mha0", "mha1", "ffn0"):
        g = graph.groups[graph.group_of_producer[layer]]
        remove = [1]
        keep_local = np.setdiff1d(np.arange(state.sizes[g.id]), remove)
        trial = state.copy()
        trial.remove(g.id, remove)
        masked = greedy._masked_weights(graph, state, trial, g, keep_local)
        assert layer in masked or layer == "ffn0"
        current = build_model(graph, state)
        for name, ws in masked.items():
            current.get_layer(name).set_weights(ws)
        want = out(build_model(graph, trial), x)
        assert np.abs(out(current, x) - want).max() <= 2e-5 * max(1.0, float(np.abs(want).max())), layer
        assert np.abs(out(build_model(graph, state), x) - want).max() > 1e-4


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("criterion", ["l1", "taylor"])
def test_cross_attention_prunes_query_value_and_heads_together(use_bias, criterion):
    """Query and value from different producers, key_dim != value_dim, with and without biases:
    the value producer's channels (key/value kernel rows), the query producer's channels (query
    kernel rows AND the output's columns: the output has the query's width) and the heads are
    three groups, all pruned, exact against masking."""
    inp = keras.Input((7, 5))
    q = L.Dense(8, name="qa")(inp)
    v = L.Dense(6, activation="relu", name="va")(inp)
    a = L.MultiHeadAttention(3, 4, value_dim=5, use_bias=use_bias, name="att")(q, v)
    x = L.GlobalAveragePooling1D()(a)
    model = randomize(keras.Model(inp, L.Dense(2, name="head")(x)), 12)
    graph = DependencyGraph(model)
    assert graph.unknown == {}
    assert all(graph.groups[graph.group_of_producer[n]].prunable for n in ("qa", "va", "att"))
    result = prune(model, rate=0.5, criterion=criterion, step=0.25)
    widths = {r.layer: (r.before, r.after) for r in result.layers}
    assert widths["qa"] == (8, 4) and widths["va"] == (6, 3) and widths["att"] == (3, 2), widths
    att = result.model.get_layer("att")
    assert att.num_heads == 2 and att.get_weights()[-(2 if use_bias else 1)].shape == (2, 5, 4)
    reference, _ = masked_reference(model, result.plan)
    close_to_masked(result, reference, model, inputs((7, 5), 8))
