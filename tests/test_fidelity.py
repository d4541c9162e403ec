"""Fidelity metrics on the converted .tflite (ai-edge-litert) and evaluation-data loading."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from conftest import mlperf_path
from edgeprune.errors import BadInput, UnsupportedModel
from edgeprune.pipeline.convert.converter import ConvertConfig, convert
from edgeprune.pipeline.data.eval_data import SYNTHETIC_LABEL, EvalData, load_eval_data, synthetic_data
from edgeprune.pipeline.convert.fidelity import (
    FidelityConfig,
    choose_metric,
    compare,
    evaluate,
    keras_outputs,
    run_tflite,
)


@pytest.fixture(scope="module")
def example():
    from edgeprune.pipeline.example import example_data_path, example_model_path
    from edgeprune.pipeline.data.loading import load_model

    model = load_model(example_model_path())
    data = load_eval_data(example_data_path(), model)
    return model, data, keras_outputs(model, data.x)


@pytest.fixture(scope="module")
def example_int8(example):
    model, data, _ = example
    return convert(model, ConvertConfig(quantize="int8", calibration=data.x[:200]))


# --------------------------------------------------------------------------- metrics
def test_compare_on_known_vectors():
    ref = np.array([[3.0, 4.0], [1.0, 0.0]])
    cand = np.array([[3.0, 4.0], [0.0, 1.0]])
    stats = compare(cand, ref)
    assert stats["cosine"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert stats["rel_l2"] == pytest.approx(np.sqrt(2) / np.sqrt(26))
    assert stats["max_abs_diff"] == pytest.approx(1.0)
    zero = compare(np.zeros((2, 3)), np.zeros((2, 3)))
    assert zero["cosine"] == 1.0 and zero["rel_l2"] == 0.0


def test_choose_metric():
    probs = np.array([[0.1, 0.9], [0.7, 0.3]])
    logits = np.array([[-2.0, 5.0], [1.0, 0.5]])
    assert choose_metric(probs, None) == "top1"
    assert choose_metric(logits, None) == "relerr"  # 2 logits: ambiguous, set metric="top1"; few values: rel. error
    assert choose_metric(logits, np.array([1, 0])) == "top1"  # labels say it is a classifier
    assert choose_metric(np.array([[0.4], [0.6]]), None) == "binary"  # one sigmoid value: its decision
    assert choose_metric(np.array([[-3.0], [2.5]]), None) == "relerr"  # one regression value
    assert choose_metric(np.array([[-3.0], [2.5]]), np.array([0, 1])) == "relerr"  # one logit: no 0.5 threshold
    assert choose_metric(np.random.default_rng(0).normal(size=(4, 8)), None) == "regression"
    assert choose_metric(probs, None, "regression") == "regression"
    with pytest.raises(BadInput, match="unknown fidelity metric"):
        FidelityConfig(metric="f1")


def test_int8_quantise_dequantise_matches_keras(example, example_int8):
    """Wrong input quantisation or output dequantisation would wreck these numbers."""
    _, data, ref = example
    res = evaluate(example_int8.tflite, ref, data)
    assert example_int8.inputs[0].dtype == "int8"
    assert res.metric == "top1" and res.score == res.agreement
    assert res.agreement > 0.98
    assert res.max_abs_diff < 0.2  # dequantised probabilities, not raw int8 codes
    assert res.cosine > 0.99
    # accuracy against labels, with the original Keras model as the baseline
    keras_acc = float((ref.argmax(1) == data.y).mean())
    assert res.reference_accuracy == pytest.approx(keras_acc)
    assert res.accuracy_drop == pytest.approx(100 * (res.reference_accuracy - res.accuracy))
    assert abs(res.accuracy_drop) < 1.0
    assert res.n_samples == 1000 and res.data_source == "user"


def test_manual_int8_run_agrees_with_run_tflite(example, example_int8):
    """Cross-check the quantisation arithmetic against a hand-written loop."""
    from ai_edge_litert.interpreter import Interpreter

    _, data, _ = example
    x = data.x[:16]
    ours, _ = run_tflite(example_int8.tflite, x)
    interp = Interpreter(model_content=example_int8.tflite)
    interp.allocate_tensors()
    i, o = interp.get_input_details()[0], interp.get_output_details()[0]
    (si, zi), (so, zo) = i["quantization"], o["quantization"]
    manual = []
    for sample in x:
        q = np.clip(np.round(sample / si) + zi, -128, 127).astype(np.int8)[None]
        interp.set_tensor(i["index"], q)
        interp.invoke()
        manual.append((interp.get_tensor(o["index"])[0].astype(np.float32) - zo) * so)
    np.testing.assert_allclose(ours, np.stack(manual), atol=1e-7)


@pytest.mark.slow
def test_regression_metric_for_the_autoencoder(mlperf_models):
    model = mlperf_models("ad01")
    x = np.fromfile(mlperf_path("ad01_sample_normal_id_01.bin"), dtype=np.float32).reshape(40, 640)
    data = EvalData(x=x, y=None, source="user")
    ref = keras_outputs(model, x)
    f32 = evaluate(convert(model, ConvertConfig("float32")).tflite, ref, data)
    assert f32.metric == "regression" and f32.score == f32.cosine
    assert f32.agreement is None and f32.accuracy is None
    assert f32.cosine > 0.999999 and f32.rel_l2 < 1e-5
    dyn = evaluate(convert(model, ConvertConfig("dynamic")).tflite, ref, data)
    assert 1e-4 < dyn.rel_l2 < 0.2 and dyn.cosine < f32.cosine  # quantisation shows up, measurably
    json.dumps(dyn.to_dict())


def test_forced_regression_on_a_classifier(example, example_int8):
    _, data, ref = example
    res = evaluate(example_int8.tflite, ref, data, FidelityConfig(metric="regression"))
    assert res.metric == "regression" and res.score == res.cosine and res.agreement is None


def test_synthetic_evaluation_is_labelled(mlperf_models):
    model = mlperf_models("kws")
    data = synthetic_data(model, 12, (0.0, 1.0), seed=5)
    res = evaluate(convert(model, ConvertConfig("float32")).tflite, keras_outputs(model, data.x), data)
    assert res.data_source == "synthetic" and res.data_label == SYNTHETIC_LABEL == "synthetic (data-free)"
    assert res.accuracy is None and res.n_samples == 12
    d = res.to_dict()
    assert d["data_label"] == "synthetic (data-free)" and d["score"] == 1.0


def test_evaluate_from_a_path_and_mismatched_reference(example, example_int8, tmp_path):
    _, data, ref = example
    path = example_int8.save(tmp_path / "m.tflite")
    small = EvalData(x=data.x[:10], y=data.y[:10], source="user")
    res = evaluate(path, ref[:10], small)
    assert res.n_samples == 10 and res.agreement >= 0.9
    with pytest.raises(BadInput, match="reference has 9 outputs for 10 inputs"):
        evaluate(path, ref[:9], small)
    with pytest.raises(BadInput, match="does not exist"):
        evaluate(tmp_path / "nope.tflite", ref[:10], small)
    (tmp_path / "junk.tflite").write_bytes(b"not a flatbuffer at all")
    with pytest.raises(BadInput, match="cannot be loaded"):
        evaluate(tmp_path / "junk.tflite", ref[:10], small)


def test_keras_outputs_matches_predict(example):
    model, data, ref = example
    pred = model.predict(data.x[:64], verbose=0)
    np.testing.assert_allclose(keras_outputs(model, data.x[:64], batch_size=7), pred, atol=1e-5)
    np.testing.assert_allclose(ref[:64], pred, atol=1e-5)


# --------------------------------------------------------------------------- data
SHAPE = (28, 28, 1)


def test_load_npz_with_labels_and_missing_channel(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.random.default_rng(0).random((6, 28, 28)).astype(np.float32), y=np.arange(6))
    data = load_eval_data(path, SHAPE)
    assert data.x.shape == (6, 28, 28, 1) and data.x.dtype == np.float32
    assert data.y.tolist() == list(range(6)) and data.source == "user" and data.path == path


def test_mlperf_key_names_and_npy(tmp_path, mlperf_models):
    data = load_eval_data(mlperf_path("calibration_samples.npz"), mlperf_models("kws"))
    assert data.x.shape == (45, 30, 1, 40) and data.y.shape == (45,)
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((3, 28, 28, 1), np.float64))
    d = load_eval_data(path, SHAPE)
    assert d.y is None and d.x.dtype == np.float32 and d.n == 3


def test_uint8_is_not_rescaled_silently_unless_declared(tmp_path):
    img = np.full((2, 28, 28, 1), 255, np.uint8)
    plain, scaled = tmp_path / "plain.npz", tmp_path / "scaled.npz"
    np.savez(plain, x=img)
    np.savez(scaled, x=img, input_scale=np.float32(1 / 255))
    p = load_eval_data(plain, SHAPE)
    assert p.x.max() == 255.0 and p.input_scale is None
    assert any("not rescaled" in n for n in p.notes)
    s = load_eval_data(scaled, SHAPE)
    assert s.x.max() == pytest.approx(1.0) and s.input_scale == pytest.approx(1 / 255)


def test_one_hot_labels(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((3, 28, 28, 1), np.float32), y=np.eye(10)[[2, 7, 1]])
    assert load_eval_data(path, SHAPE).y.tolist() == [2, 7, 1]


def _bad(tmp_path, name, writer):
    path = tmp_path / name
    writer(path)
    with pytest.raises(BadInput) as info:
        load_eval_data(path, SHAPE)
    return info.value.message


def test_wrong_shape_says_expected_and_got(tmp_path):
    msg = _bad(tmp_path, "d.npz", lambda p: np.savez(p, x=np.zeros((4, 32, 32, 3), np.float32)))
    assert "(32, 32, 3)" in msg and "expects (28, 28, 1)" in msg


def test_non_numeric_files(tmp_path):
    assert "not numbers" in _bad(tmp_path, "s.npy", lambda p: np.save(p, np.array(["a", "b"])))
    assert "Python objects" in _bad(
        tmp_path, "o.npy", lambda p: np.save(p, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    )
    msg = _bad(tmp_path, "l.npz", lambda p: np.savez(p, x=np.zeros((2, 28, 28, 1)), y=np.array(["cat", "dog"])))
    assert "labels 'y'" in msg and "not numbers" in msg


def test_empty_files(tmp_path):
    assert "is empty (0 bytes)" in _bad(tmp_path, "e.npz", lambda p: p.write_bytes(b""))
    assert "is empty" in _bad(tmp_path, "z.npy", lambda p: np.save(p, np.zeros((0, 28, 28, 1), np.float32)))

    def empty_zip(p):
        with zipfile.ZipFile(p, "w"):
            pass

    assert "holds no arrays" in _bad(tmp_path, "n.npz", empty_zip)


def test_missing_corrupt_and_other_bad_files(tmp_path):
    assert "does not exist" in _bad(tmp_path, "nothing.npz", lambda p: None)
    assert "corrupt" in _bad(tmp_path, "c.npz", lambda p: p.write_bytes(b"\x00garbage" * 50))
    assert "cannot be read" in _bad(tmp_path, "c.npy", lambda p: p.write_bytes(b"\x93NUMPY garbage"))
    assert "unsupported data format .csv" in _bad(tmp_path, "d.csv", lambda p: p.write_text("1,2"))
    msg = _bad(tmp_path, "k.npz", lambda p: np.savez(p, a=np.zeros(3), b=np.zeros(3)))
    assert "no inputs named x" in msg
    msg = _bad(tmp_path, "m.npz", lambda p: np.savez(p, x=np.zeros((3, 28, 28, 1)), y=np.arange(2)))
    assert "3 inputs but 2 labels" in msg

    def nan(p):
        x = np.zeros((2, 28, 28, 1), np.float32)
        x[0, 0, 0, 0] = np.nan
        np.savez(p, x=x)

    assert "NaN" in _bad(tmp_path, "nan.npz", nan)


def test_multi_input_model_is_refused():
    import keras

    a, b = keras.Input((4,)), keras.Input((4,))
    model = keras.Model([a, b], keras.layers.Add()([a, b]))
    with pytest.raises(UnsupportedModel, match="2 inputs"):
        synthetic_data(model, 3)


def test_synthetic_data_is_seeded_and_in_range(mlperf_models):
    model = mlperf_models("resnet8")
    a = synthetic_data(model, 8, (-1.0, 1.0), seed=4)
    b = synthetic_data(model, 8, (-1.0, 1.0), seed=4)
    assert a.x.shape == (8, 32, 32, 3) and np.array_equal(a.x, b.x)
    assert -1.0 <= a.x.min() < -0.9 and 0.9 < a.x.max() <= 1.0
    assert a.source == "synthetic" and a.y is None and a.label == "synthetic (data-free)"
    with pytest.raises(BadInput, match="LO must be below HI"):
        synthetic_data(model, 3, (1.0, 1.0))
