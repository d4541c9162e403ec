"""Pruning the four MLPerf Tiny models: every criterion at 10 %, 30 % and 50 %.

Checks numbers, not just "it runs": parameters fall strictly with the rate, widths match the
plan, the pruned model equals the original with the plan's merges applied and its removed
channels masked, a saved plan replays bit-exactly, a 0 % prune is the identity, and the 50 %
model converts to float32 TFLite and agrees with Keras.
"""
from __future__ import annotations

import numpy as np
import pytest

import keras  # noqa: E402  (a hard dependency: a missing keras must fail, not skip)

from conftest import mlperf_path  # noqa: E402

from edgeprune.pipeline.prune.graph import DependencyGraph  # noqa: E402
from edgeprune.pipeline.prune.plan import Plan  # noqa: E402
from edgeprune.pipeline.prune.pruner import prune  # noqa: E402
from edgeprune.pipeline.prune.surgery import masked_reference, PruneState, build_model, masked_model  # noqa: E402

pytestmark = pytest.mark.slow  # the fast subset (-m 'not slow') skips this module

MODELS = ["resnet8", "vww", "ad01", "kws"]
CRITERIA = ["paoding", "l1", "random"]
RATES = [0.1, 0.3, 0.5]


def close(a, b, rel, what=""):
    """max |a - b| <= rel * max(1, max |b|): absolute for the classifiers (outputs <= 1),
    relative to the output scale for ad01 (regression outputs in the tens)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    scale = max(1.0, float(np.abs(b).max()))
    err = float(np.abs(a - b).max())
    assert err <= rel * scale, f"{what}: max abs diff {err:.3g} > {rel:g} * {scale:.3g}"


def run(model, x):
    return np.asarray(model(x, training=False))


@pytest.fixture(scope="module")
def inputs(mlperf_models):
    """A few inputs per model: the (stand-in) samples of ad01 and str_ww, uniform [0, 1]
    images for the image models."""
    cache = {}

    def get(key):
        if key not in cache:
            model = mlperf_models(key)
            if key == "ad01":
                x = np.fromfile(mlperf_path("ad01_sample_normal_id_01.bin"), dtype=np.float32).reshape(40, 640)[::5]
            elif key == "kws":
                x = np.load(mlperf_path("calibration_samples.npz"))["specs"][:8].astype(np.float32)
            else:
                shape = tuple(model.inputs[0].shape[1:])
                x = np.random.default_rng(0).uniform(0, 1, (4, *shape)).astype(np.float32)
            cache[key] = x
        return cache[key]

    return get


@pytest.fixture(scope="module")
def pruned(mlperf_models):
    cache = {}

    def get(key, criterion, rate):
        k = (key, criterion, rate)
        if k not in cache:
            cache[k] = prune(mlperf_models(key), rate=rate, criterion=criterion)
        return cache[k]

    return get


def merged_masked_reference(original, plan: Plan):
    return masked_reference(original, plan)[0]


def width_of(layer) -> int:
    for attr in ("units", "filters", "output_dim"):
        if hasattr(layer, attr):
            return int(getattr(layer, attr))
    raise AssertionError(f"{layer.name} has no width")


@pytest.mark.parametrize("key", MODELS)
def test_zero_rate_is_identity(key, mlperf_models, inputs):
    model = mlperf_models(key)
    x = inputs(key)
    result = prune(model, rate=0.0)
    close(run(result.model, x), run(model, x), 1e-5, f"{key} at 0%")
    assert result.params_after == result.params_before == model.count_params()
    assert all(r.after == r.before for r in result.layers)


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("key", MODELS)
def test_prune_rates(key, criterion, mlperf_models, inputs, pruned, tmp_path):
    model = mlperf_models(key)
    x = inputs(key)
    y = run(model, x)
    previous = model.count_params()
    for rate in RATES:
        what = f"{key}/{criterion}/{rate}"
        result = pruned(key, criterion, rate)
        pm = result.model
        # parameters fall strictly with the rate, and every count agrees
        assert result.params_before == model.count_params(), what
        assert result.params_after == pm.count_params() == result.plan.params_after, what
        assert result.params_after < previous, what
        previous = result.params_after
        # the pruned model runs
        out = run(pm, x)
        assert out.shape == y.shape and np.isfinite(out).all(), what
        # its widths are the plan's (and the table's)
        rows = {name: r for r in result.layers for name in (r.layer, *r.coupled)}
        assert set(result.plan.widths) == set(rows), what
        shrunk = 0
        for name, (before, after) in result.plan.widths.items():
            assert width_of(model.get_layer(name)) == before, (what, name)
            assert width_of(pm.get_layer(name)) == after == len(result.plan.layers[name]), (what, name)
            assert (rows[name].before, rows[name].after) == (before, after), (what, name)
            assert 1 <= after <= before
            shrunk += after < before
        assert shrunk > 0, what
        # exactness: the original with the plan's merges applied and its removed channels
        # masked computes the same function as the physically smaller model
        close(out, run(merged_masked_reference(model, result.plan), x), 1e-5, f"{what} pruned vs masked")
        # the saved plan replays on the original bit-exactly
        path = tmp_path / f"{rate}.json"
        result.plan.save(path)
        replay = Plan.load(path).apply(model)
        np.testing.assert_array_equal(run(replay, x), out, err_msg=what)
        if criterion != "paoding":
            assert result.plan.merges == [], what


def test_paoding_merges_on_dense_autoencoder(pruned):
    """ad01 is the one Dense model: PAODING prunes it pair-wise (with merges)."""
    result = pruned("ad01", "paoding", 0.5)
    assert result.plan.merges, "no PAODING merge on ad01"
    methods = {r.method for r in result.layers if r.after < r.before}
    assert methods == {"paoding-pairwise"}, methods


def test_pruning_changes_the_function(mlperf_models, inputs, pruned):
    """Guard: the exactness checks above compare against a reference that differs from the
    unpruned original, so they are not vacuous."""
    for key in MODELS:
        x = inputs(key)
        diff = np.abs(run(pruned(key, "random", 0.5).model, x) - run(mlperf_models(key), x)).max()
        assert diff > 1e-4, key


def _tflite_outputs(tflite: bytes, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=tflite)
    interp.allocate_tensors()
    (inp,) = interp.get_input_details()
    (outp,) = interp.get_output_details()
    ys = []
    for sample in x:
        interp.set_tensor(inp["index"], sample[None].astype(inp["dtype"]))
        interp.invoke()
        ys.append(interp.get_tensor(outp["index"])[0].copy())
    return np.stack(ys)


def _to_tflite(model) -> bytes:
    try:
        from edgeprune.pipeline.convert.converter import ConvertConfig, convert
    except ImportError:  # the conversion stage is optional here
        import tensorflow as tf

        return tf.lite.TFLiteConverter.from_keras_model(model).convert()
    result = convert(model, ConvertConfig(quantize="float32"))
    assert result.quantize == "float32"
    return result.tflite


@pytest.mark.parametrize("key", MODELS)
def test_pruned_model_converts_to_float32_tflite(key, inputs, pruned):
    result = pruned(key, "paoding", 0.5)
    x = inputs(key)
    tflite = _to_tflite(result.model)
    got = _tflite_outputs(tflite, x)
    close(got, run(result.model, x), 1e-4, f"{key} TFLite vs Keras")
