"""Models from the wild (issue 10): every case model prunes exactly (pruned == masked
original at 30/50 %, both criteria), converts to int8, and the layer handlers' facts
(LSTM gate blocks, Bidirectional coupling, Conv2DTranspose, minimum widths, unknown
classes named, nothing-to-prune notes), the fidelity metrics that can fail, and the
Keras 2 recurrent keys."""
from __future__ import annotations

import json

import numpy as np
import pytest

import keras  # noqa: E402

from edgeprune.errors import BadInput, UnsupportedModel  # noqa: E402
from edgeprune.pipeline.convert import converter as conv  # noqa: E402
from edgeprune.pipeline.convert import fidelity as fid  # noqa: E402
from edgeprune.pipeline.data.eval_data import EvalData  # noqa: E402
from edgeprune.pipeline.prune.graph import DependencyGraph  # noqa: E402
from edgeprune.pipeline.prune.handlers import handler_for, registered_classes  # noqa: E402
from edgeprune.pipeline.data.loading import load_model, parse_input_shape, with_input_shape  # noqa: E402
from edgeprune.pipeline.prune.pruner import prune  # noqa: E402
from edgeprune.pipeline.prune.surgery import masked_reference  # noqa: E402
from wild_models import CASES, RECURRENT, VARIABLE, inputs, randomize  # noqa: E402

L = keras.layers


def out(model, x):
    return np.asarray(model(x, training=False))


def case_inputs(name, shape, n=8, seed=0):
    x = inputs(shape, n, seed)
    if name in ("masked_lstm", "sleep"):  # padded sequences: the last time steps of half the samples are masked
        x[::2, -6:, :] = 0.0
    return x


# --------------------------------------------------------------------------- exactness per case
@pytest.mark.parametrize("criterion", ["paoding", "l1"])
@pytest.mark.parametrize("rate", [0.3, 0.5])
@pytest.mark.parametrize("name", sorted(CASES))
def test_case_prunes_exactly_against_masked_original(name, rate, criterion):
    model, shape = CASES[name]()
    result = prune(model, rate=rate, criterion=criterion, step=0.1)
    assert result.params_after < result.params_before, (name, result.notes)
    reference, removed = masked_reference(model, result.plan)
    assert removed, "something must have been removed"
    x = case_inputs(name, shape)
    got, want = out(result.model, x), out(reference, x)
    scale = max(1.0, float(np.abs(want).max()))
    assert np.abs(got - want).max() <= 2e-5 * scale, (name, float(np.abs(got - want).max()))
    # and the comparison can fail: the pruned model computes something else than the original
    assert np.abs(got - out(model, x)).max() > 1e-4
    # never pruned to zero; never below a group's minimum width
    for row in result.layers:
        assert 1 <= row.after <= row.before


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_case_converts_to_int8_after_pruning(name):
    model, shape = CASES[name]()
    pruned = prune(model, rate=0.5, criterion="l1").model
    if name in VARIABLE:
        with pytest.raises(UnsupportedModel, match="--input-shape"):
            conv.convert(pruned, conv.ConvertConfig(quantize="int8", num_calibration=8))
        pruned = with_input_shape(pruned, (1, *shape))
    if name in RECURRENT:  # unrolled full int8 is many times the float32 file: refused, dynamic instead
        with pytest.raises(UnsupportedModel, match=r"times the float32 file .*Refused") as info:
            conv.convert(pruned, conv.ConvertConfig(quantize="int8", num_calibration=16))
        assert "--quantize dynamic" in info.value.hint
        f32 = conv.convert(pruned, conv.ConvertConfig(quantize="float32"))
        res = conv.convert(pruned, conv.ConvertConfig(quantize="dynamic"))
        assert res.size_bytes <= f32.size_bytes
    else:
        res = conv.convert(pruned, conv.ConvertConfig(quantize="int8", num_calibration=16))
        assert res.inputs[0].dtype == "int8" and res.size_bytes > 0
    x = case_inputs(name, shape, 16)
    y, _ = fid.run_tflite(res.tflite, x)
    ref = out(pruned, x)
    rel = np.linalg.norm(y.reshape(ref.shape) - ref) / np.linalg.norm(ref)
    assert rel < 0.25, f"{name}: int8 relative L2 error {rel:.3f}"


def test_short_tensor_names_keep_outputs_and_io_names():
    """The unrolled recurrent model's names shortened: the file shrinks, outputs are bit-identical,
    input/output names kept (issue 24)."""
    model, shape = CASES["masked_lstm"]()
    m = conv._unrolled(with_input_shape(model, (1, *shape)))
    res = conv.convert(m, conv.ConvertConfig(quantize="float32"))
    short = conv.short_tensor_names(res.tflite)
    assert len(short) < 0.8 * len(res.tflite)
    x = case_inputs("masked_lstm", shape, 8)
    assert np.array_equal(fid.run_tflite(short, x)[0], fid.run_tflite(res.tflite, x)[0])
    names = lambda b: ([t.name for t in conv.tensor_details(b)[0]], [t.name for t in conv.tensor_details(b)[1]])
    assert names(short) == names(res.tflite)


# --------------------------------------------------------------------------- handler facts
def test_lstm_gate_blocks_and_recurrent_rows():
    model, _ = CASES["masked_lstm"]()
    graph = DependencyGraph(model)
    lstm = next(layer for layer in model.layers if isinstance(layer, L.LSTM))
    g = graph.groups[graph.group_of_producer[lstm.name]]
    assert g.prunable and g.size == 10
    refs = {(r.weight, r.axis): r for r in graph.refs_by_layer[lstm.name]}
    assert refs[(0, 1)].layout == (g.id,) * 4  # kernel (4, 40): 4 gate blocks of the group
    assert refs[(1, 0)].layout == (g.id,) and refs[(1, 0)].role == "consumer"  # recurrent rows read h
    assert refs[(2, 0)].layout == (g.id,) * 4
    # Masking's mask ops are not unknown layers, and BatchNormalization after Masking is known
    assert graph.unknown == {}
    bn = next(layer for layer in model.layers if isinstance(layer, L.BatchNormalization))
    assert graph.handler(bn.name) is not None


def test_bidirectional_directions_share_one_group():
    model, _ = CASES["bi_rnn"]()
    graph = DependencyGraph(model)
    bi = next(layer for layer in model.layers if isinstance(layer, L.Bidirectional))
    gid = graph.group_of_producer[bi.name]
    assert graph.layouts[(bi.name, 0)] == (gid, gid)  # concat: forward units, then backward units
    result = prune(model, rate=0.5, criterion="l1")
    new = result.model.get_layer(bi.name)
    assert new.forward_layer.units == new.backward_layer.units == 4


def test_conv_transpose_is_a_producer_and_upsampling_passes_through():
    model, _ = CASES["unet"]()
    graph = DependencyGraph(model)
    ct = next(layer for layer in model.layers if isinstance(layer, L.Conv2DTranspose))
    gid = graph.group_of_producer[ct.name]
    refs = {(r.weight, r.axis): r.role for r in graph.refs_by_layer[ct.name]}
    assert refs == {(0, 2): "producer", (0, 3): "consumer", (1, 0): "producer"}  # kernel (kh, kw, out, in)
    cat = next(layer for layer in model.layers if isinstance(layer, L.Concatenate))
    assert gid in graph.layouts[(cat.name, 0)]
    assert graph.unknown == {}


def test_handlers_are_registered_by_exact_class():
    assert {"Dense", "LSTM", "GRU", "Bidirectional", "Conv2DTranspose", "UpSampling2D", "Masking"} <= set(
        registered_classes())

    class MyDense(L.Dense):  # a subclass may compute something else: not treated as a Dense
        pass

    assert handler_for(L.Dense(3)) is not None and handler_for(MyDense(3)) is None
    inp = keras.Input((4,))
    x = L.Dense(6, name="d1")(inp)
    x = MyDense(5, name="mine")(x)
    model = randomize(keras.Model(inp, L.Dense(2, name="d2")(x)))
    graph = DependencyGraph(model)
    assert graph.unknown == {"mine": "MyDense"}
    assert graph.groups[graph.group_of_producer["d1"]].frozen
    assert any("MyDense" in r for r in graph.groups[graph.group_of_producer["d1"]].frozen_reasons)


def test_depthwise_group_keeps_two_channels():
    model, _ = CASES["depthwise"]()
    graph = DependencyGraph(model)
    dw = next(layer for layer in model.layers if isinstance(layer, L.DepthwiseConv2D))
    g = graph.groups[graph.layouts[(dw.name, 0)][0]]
    assert g.min_width == 2 and g.producers
    result = prune(model, rate=0.99, criterion="l1")
    new_dw = result.model.get_layer(dw.name)
    assert new_dw.get_weights()[0].shape[2] == 2  # not 1
    other = next(r for r in result.layers if r.layer.startswith("conv2d") and r.before == 8)
    assert other.after == 1  # groups without a depthwise member may go down to 1
    wider = prune(model, rate=0.99, criterion="l1", min_width=3)
    assert all(r.after >= 3 for r in wider.layers if r.before >= 3)


def test_nothing_prunable_note_says_frozen_or_narrow():
    inp = keras.Input((3,))
    x = L.Dense(1, name="one")(inp)
    model = randomize(keras.Model(inp, L.Dense(2, name="head")(x)))
    note = prune(model, rate=0.5).notes[-1]
    assert "minimum width" in note and "one (1 channel" in note and "frozen: head (model output)" in note
    inp = keras.Input((3,))
    x = L.Dense(4, name="wide")(inp)
    x = L.LayerNormalization(name="ln")(x)
    model = randomize(keras.Model(inp, L.Dense(2, name="head")(x)))
    note = prune(model, rate=0.5).notes[-1]
    assert "2 frozen" in note and "LayerNormalization" in note and "minimum width" not in note


def test_paoding_on_variable_length_input():
    model, shape = CASES["varlen"]()
    result = prune(model, rate=0.5, criterion="paoding")
    assert result.params_after < result.params_before
    methods = {r.method for r in result.layers if r.after < r.before}
    assert "paoding-pairwise" in methods  # the Dense group got bounds through the pooled None axis


def test_input_shape_parsing_and_checks():
    model, _ = CASES["varlen"]()
    assert parse_input_shape("1,5000,4") == (1, 5000, 4)
    fixed = with_input_shape(model, (1, 50, 4))
    assert tuple(fixed.inputs[0].shape) == (None, 50, 4)
    x = inputs((50, 4), 3)
    np.testing.assert_allclose(out(fixed, x), out(model, x), atol=1e-6)
    for bad, msg in (("1,50", "2 dimensions"), ("1,50,5", "fixed dimension"), ("a,b", "not a shape"), ("0,5,4", "not a shape")):
        with pytest.raises(BadInput, match=msg):
            with_input_shape(model, parse_input_shape(bad))


# --------------------------------------------------------------------------- fidelity metrics that can fail
def _tflite(model):
    return conv.convert(model, conv.ConvertConfig(quantize="float32")).tflite


def test_sigmoid_candidate_whose_decisions_flip_fails():
    model, shape = CASES["sigmoid"]()
    x = inputs(shape, 200, seed=3)
    # a decisive head: the logit scaled up and centred on the data, so both decisions occur
    head = model.layers[-1]
    k, b = head.get_weights()
    p = fid.keras_outputs(model, x)[:, 0].astype(np.float64)
    logit = (np.log(p / (1 - p)) - b[0]) * 50.0
    head.set_weights([k * 50.0, np.array([-np.median(logit)], np.float32)])
    reference = fid.keras_outputs(model, x)
    assert 0.2 < (reference > 0.5).mean() < 0.8, "the test model must take both decisions"
    data = EvalData(x=x, y=None, source="synthetic")
    same = fid.evaluate(_tflite(model), reference, data)
    assert same.metric == "binary" and same.score >= 0.99
    # the candidate: the last layer's logit negated -> every decision flips, the output stays a sigmoid
    flipped = keras.models.clone_model(model)
    flipped.set_weights(model.get_weights())
    head = flipped.layers[-1]
    head.set_weights([-w for w in head.get_weights()])
    res = fid.evaluate(_tflite(flipped), reference, data)
    assert res.metric == "binary" and res.score_name.startswith("decision agreement")
    assert res.score < 0.5 and res.agreement == res.score
    assert res.cosine == pytest.approx(1.0)  # what the old metric said: a 1-value cosine cannot fail
    with_labels = fid.evaluate(_tflite(flipped), reference,
                               EvalData(x=x, y=(reference[:, 0] > 0.5).astype(int), source="user"))
    assert with_labels.accuracy == pytest.approx(res.score) and with_labels.accuracy_drop > 50


def test_regressor_gets_a_relative_error_metric():
    model, shape = CASES["varlen"]()
    model = with_input_shape(model, (1, *shape))
    x = inputs(shape, 100, seed=4)
    reference = fid.keras_outputs(model, x)
    data = EvalData(x=x, y=None, source="synthetic")
    same = fid.evaluate(_tflite(model), reference, data)
    assert same.metric == "relerr" and same.score > 0.999
    off = keras.models.clone_model(model)
    shifted = [w.copy() for w in model.get_weights()]
    shifted[-1] = shifted[-1] + 0.5 * np.abs(reference).mean()  # output bias moved by half the mean output
    off.set_weights(shifted)
    res = fid.evaluate(_tflite(off), reference, data)
    assert res.score == pytest.approx(1 - res.rel_l2) and res.score < 0.7


# --------------------------------------------------------------------------- Keras 2 recurrent keys
def _keras2_h5(tmp_path, extra: dict):
    import h5py

    inp = keras.Input((6, 3))
    x = L.LSTM(4, return_sequences=True, name="rec")(inp)
    x = L.Bidirectional(L.GRU(3), name="bi")(x)
    model = randomize(keras.Model(inp, L.Dense(1, activation="sigmoid", name="head")(x)))
    path = tmp_path / "legacy.h5"
    model.save(path)
    with h5py.File(path, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])

        def walk(o):
            if isinstance(o, dict):
                if o.get("class_name") in ("LSTM", "GRU"):
                    o["config"].update(extra)
                for v in o.values():
                    walk(v)
            elif isinstance(o, list):
                for v in o:
                    walk(v)

        walk(cfg)
        f.attrs["model_config"] = json.dumps(cfg)
    return model, path


def test_keras2_time_major_false_loads_exactly(tmp_path):
    model, path = _keras2_h5(tmp_path, {"time_major": False, "implementation": 2})
    loaded = load_model(path)
    assert all(not getattr(type(layer), "_edgeprune_legacy", False) for layer in loaded.layers)
    x = inputs((6, 3), 4)
    np.testing.assert_array_equal(out(loaded, x), out(model, x))
    assert DependencyGraph(loaded).groups[DependencyGraph(loaded).group_of_producer["rec"]].prunable


def test_keras2_time_major_true_and_unknown_keys_are_named(tmp_path):
    _, path = _keras2_h5(tmp_path, {"time_major": True})
    with pytest.raises(UnsupportedModel, match=r"time_major=True.*layer 'rec'") as info:
        load_model(path)
    assert "check that the file is a Keras model" not in str(info.value)
    _, path = _keras2_h5(tmp_path, {"weird_option": 3})
    with pytest.raises(UnsupportedModel, match=r"layer 'rec' \(LSTM\) has the Keras 2 option\(s\) weird_option"):
        load_model(path)
