"""Resource models of a candidate on the host (pipeline/search/resources.py): params, MACs and
activation memory per layer exact on small models (hand-computed), at any pruning state; the
predicted peak activation memory against the TFLite-Micro arena measured on the host."""
from __future__ import annotations

import numpy as np
import pytest

import keras  # noqa: E402

from edgeprune.pipeline.prune.graph import DependencyGraph
from edgeprune.pipeline.search.resources import RamPredictor, ResourceModel, resources_of
from edgeprune.pipeline.prune.surgery import PruneState, build_model


def hand_model():
    keras.utils.set_random_seed(3)
    L = keras.layers
    x = keras.Input((8, 8, 2), name="x")
    h = L.Conv2D(4, 3, padding="same", name="c1")(x)
    h = L.BatchNormalization(name="bn")(h)
    h = L.ReLU(name="relu")(h)
    h = L.MaxPooling2D(2, name="pool")(h)
    h = L.Conv2D(6, 1, activation="relu", name="c2")(h)
    h = L.Flatten(name="flat")(h)
    out = L.Dense(5, name="d")(h)
    return keras.Model(x, out)


def by_name(res):
    return {r.name: r for r in res.layers}


def test_params_macs_and_activations_per_layer_exact():
    model = hand_model()
    rm = ResourceModel(DependencyGraph(model), "int8")
    res = rm.evaluate(None, layers=True)
    L = by_name(res)
    # params: c1 3*3*2*4 + 4, bn 4 x 4 (gamma, beta, mean, var), c2 4*6 + 6, d 96*5 + 5
    assert [L[n].params for n in ("c1", "bn", "c2", "d")] == [76, 16, 30, 485]
    assert res.params == model.count_params() == 76 + 16 + 30 + 485
    # MACs: c1 8*8 positions x 4 filters x (3*3*2); c2 4*4 x 6 x 4; d 96 x 5
    assert (L["c1"].macs, L["c2"].macs, L["d"].macs) == (8 * 8 * 4 * 18, 4 * 4 * 6 * 4, 96 * 5)
    assert res.macs == 4608 + 384 + 480
    # int8 activations: bn and relu are fused into c1 (no tensor of their own)
    assert (L["x"].activation_bytes, L["c1"].activation_bytes, L["bn"].activation_bytes,
            L["relu"].activation_bytes, L["pool"].activation_bytes, L["c2"].activation_bytes,
            L["flat"].activation_bytes, L["d"].activation_bytes) == (128, 256, 0, 0, 64, 96, 96, 5)
    # live tensors per op: c1 128+256, pool 256+64, c2 64+96, flat 96+96, d 96+5 -> peak at c1
    assert (res.peak_activation_bytes, res.peak_at) == (384, "c1")
    assert sorted(res.peak_tensors) == ["c1", "x"]
    # float32 activations: 4 bytes each
    assert ResourceModel(DependencyGraph(model), "float32").evaluate(None).peak_activation_bytes == 4 * 384
    # weight bytes (int8): kernels 1 B, biases 4 B, 24 B per output channel of a kernel, BN folded
    assert res.weight_bytes == (72 + 16 + 4 * 24) + (24 + 24 + 6 * 24) + (480 + 20 + 5 * 24)


def test_resources_of_a_pruned_state_match_the_built_model():
    model = hand_model()
    graph = DependencyGraph(model)
    rm = ResourceModel(graph, "int8")
    state = PruneState(graph)
    state.remove(graph.group_of_producer["c1"], [0, 3])  # c1: 4 -> 2
    state.remove(graph.group_of_producer["c2"], [1, 2, 5])  # c2: 6 -> 3
    res = rm.evaluate(state, layers=True)
    L = by_name(res)
    assert (L["c1"].width, L["c1"].width_before, L["c2"].width) == (2, 4, 3)
    assert (L["c1"].macs, L["c2"].macs, L["d"].macs) == (8 * 8 * 2 * 18, 4 * 4 * 3 * 2, 48 * 5)
    assert (L["c1"].params, L["bn"].params, L["c2"].params, L["d"].params) == (38, 8, 9, 245)
    # peak: c1 op 128 + 128
    assert res.peak_activation_bytes == 256
    # the same figures from the physically smaller model
    built = build_model(graph, state)
    direct = resources_of(built, "int8")
    assert (direct.params, direct.macs, direct.peak_activation_bytes, direct.weight_bytes) == \
        (res.params, res.macs, res.peak_activation_bytes, res.weight_bytes)


def test_macs_agree_with_the_flash_prediction_module():
    from edgeprune.pipeline.search.predict import predict

    model = hand_model()
    res = resources_of(model, "int8")
    pred = predict(model, "int8")
    assert (res.macs, res.weight_bytes, res.params) == (pred.macs, pred.weight_bytes, pred.params)


def arena_cnn(c1: int, c2: int):
    keras.utils.set_random_seed(11)
    L = keras.layers
    x = keras.Input((28, 28, 1))
    h = L.Conv2D(c1, 3, padding="same", activation="relu", name="conv1")(x)
    h = L.MaxPooling2D(name="pool1")(h)
    h = L.Conv2D(c2, 3, padding="same", activation="relu", name="conv2")(h)
    h = L.MaxPooling2D(name="pool2")(h)
    h = L.Flatten()(h)
    h = L.Dense(32, activation="relu", name="fc1")(h)
    out = L.Dense(10, activation="softmax", name="logits")(h)
    return keras.Model(x, out)


ARENA_TOLERANCE = 0.10  # predicted (peak + overhead of the unpruned model) within 10 % of the measured arena


@pytest.mark.slow
def test_predicted_peak_against_the_tflm_arena(tmp_path):
    """The peak of live int8 tensors is the non-persistent part of the TFLM arena: the measured
    arena is the peak plus an overhead; calibrated on the widest model, the prediction of the
    narrower ones is within ARENA_TOLERANCE of the arena TFLM measures."""
    from edgeprune.devices.tflm import measure_arena
    from edgeprune.pipeline.convert import converter as conv

    rng = np.random.default_rng(0)
    cal = rng.uniform(0, 1, (16, 28, 28, 1)).astype(np.float32)
    rows = []
    for c1, c2 in ((32, 64), (16, 64), (8, 16), (24, 8)):
        m = arena_cnn(c1, c2)
        res = resources_of(m, "int8")
        r = conv.convert(m, conv.ConvertConfig(quantize="int8", calibration=cal))
        p = tmp_path / f"m{c1}-{c2}.tflite"
        r.save(p)
        arena = measure_arena(p).arena_bytes
        rows.append((c1, c2, res.peak_activation_bytes, arena, res.quant_channels))
    # the hand-computed peaks: max(784 + 784*c1, 784*c1 + 196*c1, 196*c1 + 196*c2, 196*c2 + 49*c2, ...)
    for c1, c2, peak, _, ch in rows:
        assert ch == c1 + c2 + 32 + 10  # conv1, conv2, fc1, logits: TFLM's per-channel quantization data
        assert peak == max(784 + 784 * c1, 980 * c1, 196 * (c1 + c2), 245 * c2, 98 * c2), (c1, c2, peak)
    for c1, c2, peak, arena, _ in rows:
        assert arena >= peak, (c1, c2, peak, arena)  # the arena holds at least the live tensors
    pred = RamPredictor()
    pred.calibrate(rows[0][2], rows[0][3])
    errs, errs_ch = [], []
    for c1, c2, peak, arena, ch in rows[1:]:
        err = abs(pred.arena(peak) - arena) / arena
        assert err <= ARENA_TOLERANCE, (c1, c2, peak, arena, pred.arena(peak), err)
        # the overhead shrinks by RamPredictor.PER_CHANNEL bytes per output channel removed
        # (what auto's RAM target counts on): closer than the constant overhead, within 3 %
        by_ch = peak + pred.overhead_of(ch, rows[0][4])
        err_ch = abs(by_ch - arena) / arena
        assert err_ch <= 0.03, (c1, c2, peak, arena, by_ch, err_ch, err)
        errs.append(err)
        errs_ch.append(err_ch)
    assert sum(errs_ch) < sum(errs), (errs_ch, errs)
