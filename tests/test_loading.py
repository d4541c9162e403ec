"""Loading Keras models: Keras 2 .h5 files load, every broken input is a clear EdgepruneError."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

import keras  # noqa: E402  (a hard dependency: a missing keras must fail, not skip)

from conftest import mlperf_path  # noqa: E402

from edgeprune.errors import BadInput, EdgepruneError, UnsupportedModel  # noqa: E402
from edgeprune.pipeline.data.loading import load_model  # noqa: E402
from edgeprune.pipeline.prune.pruner import prune  # noqa: E402

L = keras.layers


@pytest.mark.parametrize("key,shape,classes", [pytest.param("vww", (96, 96, 3), 2, marks=pytest.mark.slow),
                                                  ("kws", (30, 1, 40), 3)])
def test_keras2_h5_loads_as_standard_classes(key, shape, classes, tmp_path):
    model = load_model(mlperf_path(key))
    assert tuple(model.inputs[0].shape[1:]) == shape
    assert tuple(model.outputs[0].shape[1:]) == (classes,)
    assert any(type(l).__name__ == "DepthwiseConv2D" for l in model.layers)
    legacy = [l.name for l in model.layers if getattr(type(l), "_edgeprune_legacy", False)]
    assert legacy == []
    x = np.random.default_rng(0).uniform(0, 1, (2, *shape)).astype(np.float32)
    y = np.asarray(model(x, training=False))
    np.testing.assert_allclose(y.sum(1), 1.0, atol=1e-5)  # softmax classifier
    # nothing custom leaks: plain Keras reloads the re-saved model and computes the same
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras", compile=False)
    np.testing.assert_allclose(np.asarray(again(x, training=False)), y, atol=1e-6, rtol=0)


def test_keras3_h5_loads(mlperf_models):
    for key in ("resnet8", "ad01"):
        model = mlperf_models(key)
        assert model.count_params() > 0


def _expect(path, exc_type, *words):
    with pytest.raises(exc_type) as info:
        load_model(path)
    err = info.value
    assert isinstance(err, EdgepruneError)
    text = str(err).lower()
    for w in words:
        assert w.lower() in text, f"{w!r} not in {str(err)!r}"
    assert "traceback" not in text
    return err


def test_missing_file(tmp_path):
    _expect(tmp_path / "nope.keras", BadInput, "nope.keras", "does not exist")


@pytest.mark.parametrize("name", ["empty.h5", "empty.keras"])
def test_empty_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    _expect(tmp_path / name, BadInput, name, "empty")


@pytest.mark.parametrize("name,word", [("junk.h5", "not an hdf5"), ("junk.keras", "not a valid .keras")])
def test_random_bytes(tmp_path, name, word):
    (tmp_path / name).write_bytes(np.random.default_rng(1).bytes(4096))
    _expect(tmp_path / name, BadInput, name, word)


def test_truncated_h5(tmp_path):
    src = mlperf_path("resnet8").read_bytes()
    path = tmp_path / "cut.h5"
    path.write_bytes(src[: len(src) // 3])  # a valid HDF5 signature, then nothing
    err = _expect(path, BadInput, "cut.h5")
    assert "re-export" in (err.hint or "") or "hdf5" in str(err).lower()


def test_zip_that_is_not_a_keras_archive(tmp_path):
    import zipfile

    path = tmp_path / "fake.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("hello.txt", "not a model")
    _expect(path, BadInput, "fake.keras")


def test_weights_only_h5(tmp_path):
    inp = keras.Input((4,))
    model = keras.Model(inp, L.Dense(2)(inp))
    path = tmp_path / "w.weights.h5"
    model.save_weights(path)
    _expect(path, BadInput, "weights only")


def test_unsupported_suffix_and_folder(tmp_path):
    path = tmp_path / "model.pb"
    path.write_bytes(b"x")
    _expect(path, BadInput, "unsupported model format")
    folder = tmp_path / "saved_model.keras"
    folder.mkdir()
    _expect(folder, BadInput, "folder")


class Sub(keras.Model):  # deliberately NOT registered with Keras
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = L.Dense(8, activation="relu")
        self.head = L.Dense(2)

    def call(self, x):
        return self.head(self.hidden(x))


def _subclassed():
    model = Sub()
    model(np.zeros((1, 4), np.float32))
    return model


def test_subclassed_model_file(tmp_path):
    path = tmp_path / "sub.keras"
    _subclassed().save(path)
    _expect(path, UnsupportedModel, "sub.keras", "subclassed")


def test_subclassed_model_passed_to_prune():
    with pytest.raises(UnsupportedModel) as info:
        prune(_subclassed(), rate=0.5)
    assert "subclassed" in str(info.value) and "Sub" in str(info.value)


def test_not_a_model_passed_to_prune():
    with pytest.raises(UnsupportedModel, match="not a Keras model"):
        prune(L.Dense(3), rate=0.5)


def test_copied_h5_with_other_suffix_loads(tmp_path):
    path = tmp_path / "copy.hdf5"
    shutil.copy(mlperf_path("kws"), path)
    assert load_model(path).count_params() == 47707
