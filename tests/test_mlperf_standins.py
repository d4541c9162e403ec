"""The MLPerf Tiny stand-ins (tests/mlperf_standins.py) are what the tests take them for: the
architectures of the real files (layer classes, widths, parameter counts, shapes), stored as
Keras 2 .h5 files that plain Keras 3 refuses where it refuses the real ones, seeded (the same
weights every time), with unit-scale activations (heads not saturated), and data files of the
real files' shapes and keys."""
from __future__ import annotations

import collections
import json

import h5py
import numpy as np
import pytest

import keras

import mlperf_standins as ms
from conftest import mlperf_path

# vww (MobileNet, 85 layers) takes seconds to load and run: outside the fast subset
KEYS = [pytest.param(k, marks=pytest.mark.slow) if k == "vww" else k for k in ms.KEYS]


@pytest.mark.parametrize("key", KEYS)
def test_architecture_is_the_real_files(key, mlperf_models):
    facts = ms.FACTS[key]
    model = mlperf_models(key)
    assert model.name == facts["name"]
    assert model.count_params() == facts["params"]
    assert sum(int(np.prod(w.shape)) for w in model.non_trainable_weights) == facts["non_trainable"]
    assert tuple(model.inputs[0].shape[1:]) == facts["input"] and tuple(model.outputs[0].shape[1:]) == facts["output"]
    assert dict(collections.Counter(type(l).__name__ for l in model.layers)) == facts["layers"]
    widths = [getattr(l, "filters", None) or l.units for l in model.layers if type(l).__name__ in ("Conv2D", "Dense")]
    assert widths == facts["widths"]
    assert model.layers[0].name == "input_1"


@pytest.mark.parametrize("key", ms.KEYS)
def test_files_are_keras2_h5_refused_by_plain_keras_like_the_real_ones(key):
    path = mlperf_path(key)
    assert path.name == ms.FACTS[key]["file"]
    with h5py.File(path, "r") as f:
        assert f.attrs["keras_version"] == ms.FACTS[key]["keras_version"]
        config = json.loads(f.attrs["model_config"])
    layers = config["config"]["layers"]
    assert all(isinstance(node, list) for entry in layers for node in entry["inbound_nodes"])  # Keras 2 form
    depthwise = [e for e in layers if e["class_name"] == "DepthwiseConv2D"]
    assert all(e["config"]["groups"] == 1 for e in depthwise)
    if depthwise:  # vww and kws: Keras 3 alone cannot read them (edgeprune's loader can: test_loading.py)
        with pytest.raises(Exception, match="groups"):
            keras.models.load_model(path, compile=False)
    else:
        assert keras.models.load_model(path, compile=False).count_params() == ms.FACTS[key]["params"]


@pytest.mark.parametrize("key", ["resnet8", "kws"])
def test_seeded(key):
    a, b = ms.build(key), ms.build(key)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    assert not np.array_equal(a.get_weights()[0], ms.build(key, seed=1).get_weights()[0])


@pytest.mark.parametrize("key", [k for k in KEYS if k != "ad01"])
def test_classifier_heads_are_not_saturated(key, mlperf_models):
    """BatchNormalization statistics set from data: the softmax is neither one-hot nor flat, so
    comparisons of outputs (pruned vs masked, .tflite vs Keras) are not trivially met."""
    model = mlperf_models(key)
    shape = ms.FACTS[key]["input"]
    x = ms.kws_inputs(8, 3) if key == "kws" else np.random.default_rng(3).uniform(0, 1, (8, *shape)).astype(np.float32)
    y = np.asarray(model(x, training=False))
    np.testing.assert_allclose(y.sum(1), 1.0, atol=1e-5)
    assert 1.0 / y.shape[1] + 0.05 < y.max(1).mean() and y.max(1).max() < 0.99, y.max(1)
    assert np.ptp(y, axis=0).max() > 0.01  # the inputs make a difference


def test_autoencoder_reconstructs_at_the_input_scale(mlperf_models):
    x = np.fromfile(mlperf_path("ad01_sample_normal_id_01.bin"), dtype=np.float32)
    assert x.size == 40 * 640
    x = x.reshape(40, 640)
    assert -40 < x.mean() < -15 and 5 < x.std() < 20  # log-mel-like, as the real ToyADMOS sample
    y = np.asarray(mlperf_models("ad01")(x, training=False))
    cos = (x * y).sum() / np.linalg.norm(x) / np.linalg.norm(y)
    assert cos > 0.9 and np.isfinite(y).all()


def test_kws_samples_have_the_real_keys_and_known_labels(mlperf_models):
    data = np.load(mlperf_path("calibration_samples.npz"))
    assert sorted(data.files) == ["labels", "specs"]
    x, y = data["specs"], data["labels"]
    assert x.shape == (45, 30, 1, 40) and x.dtype == np.float64 and y.shape == (45,)
    assert 0.0 <= x.min() and x.max() <= 1.0
    pred = np.asarray(mlperf_models("kws")(x.astype(np.float32), training=False)).argmax(1)
    wrong = np.flatnonzero(pred != y.astype(int))
    assert wrong.tolist() == list(ms.KWS_WRONG)
    assert len(set(pred.tolist())) >= 2  # the samples reach more than one class


def test_int8_resnet8_is_full_integer():
    from edgeprune.pipeline.convert.converter import tensor_details

    tflite = mlperf_path("pretrainedResnet_quant.tflite").read_bytes()
    ins, outs = tensor_details(tflite)
    assert ins[0].dtype == outs[0].dtype == "int8"
    assert ins[0].shape == (1, 32, 32, 3) and outs[0].shape == (1, 10)
    # the size is the architecture's: within 3 % of the file MLPerf Tiny ships
    assert abs(len(tflite) - ms.RESNET8_INT8_REFERENCE_BYTES) < 0.03 * ms.RESNET8_INT8_REFERENCE_BYTES
