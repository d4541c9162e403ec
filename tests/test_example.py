"""The bundled Fashion-MNIST example: files, metadata, accuracy of the shipped artifacts."""
from __future__ import annotations

import numpy as np
import pytest

from edgeprune.errors import BadInput
from edgeprune.pipeline.example import (
    example_data_path,
    example_metadata,
    example_model_path,
)
from edgeprune.pipeline.example.fashion_mnist import DEBIAN_PACKAGE, load_fashion_mnist


@pytest.fixture(scope="module")
def bundle():
    from edgeprune.pipeline.data.eval_data import load_eval_data
    from edgeprune.pipeline.convert.fidelity import keras_outputs
    from edgeprune.pipeline.data.loading import load_model

    model = load_model(example_model_path())
    data = load_eval_data(example_data_path(), model)
    return model, data, keras_outputs(model, data.x)


def test_files_are_present_and_small():
    files = [example_model_path(), example_data_path(), example_model_path().parent / "example.json"]
    assert all(f.is_file() for f in files)
    assert sum(f.stat().st_size for f in files) < 8 * 1024 * 1024


def test_shipped_test_subset_is_uint8_with_declared_scale():
    with np.load(example_data_path()) as z:
        x, y, scale = z["x"], z["y"], float(z["input_scale"])
    assert x.dtype == np.uint8 and x.shape == (1000, 28, 28, 1)
    assert y.shape == (1000,) and set(np.unique(y)) == set(range(10))
    assert scale == pytest.approx(1 / 255)
    meta = example_metadata()
    assert meta["input_scale"] == pytest.approx(scale) and meta["input_range"] == [0.0, 1.0]
    # the subset is the first 1,000 official test images, as the metadata says
    x_test, y_test = load_fashion_mnist("test")
    assert np.array_equal(x[..., 0], x_test[:1000]) and np.array_equal(y, y_test[:1000])


def test_model_matches_metadata(bundle):
    model, data, ref = bundle
    meta = example_metadata()
    assert model.input_shape == (None, 28, 28, 1) and model.output_shape == (None, 10)
    assert model.count_params() == meta["params"]
    assert 800_000 <= meta["params"] <= 1_500_000
    assert 0.0 <= data.x.min() and data.x.max() <= 1.0 and data.input_scale == pytest.approx(1 / 255)
    keras_acc = float((ref.argmax(1) == data.y).mean())
    assert keras_acc == pytest.approx(meta["test_subset_accuracy"], abs=1e-3)
    assert keras_acc > 0.85 and meta["test_accuracy"] > 0.85
    assert meta["seed"] == 0 and meta["training"]["epochs"] >= 1


def test_architecture_is_the_one_train_py_builds(bundle):
    from edgeprune.pipeline.example.train import build_model

    model, _, _ = bundle
    fresh = build_model()
    assert [type(l).__name__ for l in fresh.layers] == [type(l).__name__ for l in model.layers]
    assert [w.shape for w in fresh.get_weights()] == [w.shape for w in model.get_weights()]


def test_float32_tflite_is_well_above_2mb_and_exact(bundle):
    from edgeprune.pipeline.convert.converter import ConvertConfig, convert
    from edgeprune.pipeline.convert.fidelity import evaluate

    model, data, ref = bundle
    result = convert(model, ConvertConfig("float32"))
    assert result.size_bytes > 2.5 * 1024 * 1024
    assert result.size_bytes == example_metadata()["tflite"]["float32"]["size_bytes"]
    res = evaluate(result.tflite, ref, data)
    assert res.agreement == 1.0 and res.max_abs_diff < 1e-4 and res.accuracy_drop == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("calibration", ["train-images", "synthetic"])
def test_int8_accuracy_within_one_point_of_keras(bundle, calibration):
    from edgeprune.pipeline.convert.converter import ConvertConfig, convert
    from edgeprune.pipeline.convert.fidelity import evaluate

    model, data, ref = bundle
    if calibration == "train-images":
        x_train, _ = load_fashion_mnist("train")
        cal = x_train[np.random.default_rng(0).choice(len(x_train), 200, replace=False)][..., None] / np.float32(255)
        config = ConvertConfig("int8", calibration=cal)
    else:
        config = ConvertConfig("int8")  # data-free, uniform in [0, 1]
    result = convert(model, config)
    assert result.size_bytes < 0.3 * example_metadata()["tflite"]["float32"]["size_bytes"]
    res = evaluate(result.tflite, ref, data)
    assert res.accuracy is not None and res.reference_accuracy is not None
    assert abs(res.accuracy - res.reference_accuracy) <= 0.01, res.to_dict()
    assert res.accuracy_drop <= 1.0 and res.agreement > 0.98


def test_fashion_mnist_reader(tmp_path, monkeypatch):
    x, y = load_fashion_mnist("test")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10000,) and y.dtype == np.uint8 and y.max() == 9
    assert np.bincount(y).tolist() == [1000] * 10  # the official test split is balanced
    monkeypatch.setenv("EDGEPRUNE_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(BadInput) as info:
        load_fashion_mnist("train")
    assert DEBIAN_PACKAGE in info.value.hint and "apt-get install" in info.value.hint
    with pytest.raises(BadInput, match="unknown Fashion-MNIST split"):
        load_fashion_mnist("validation")


def test_truncated_idx_file_is_reported(tmp_path):
    import gzip

    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\x00" * 100)
    with pytest.raises(BadInput, match="truncated"):
        load_fashion_mnist("test", tmp_path)
