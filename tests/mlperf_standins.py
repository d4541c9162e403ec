"""Seeded stand-ins for the MLPerf Tiny reference models, built in code (tests read nothing
outside the repository).

Same architectures as the files of MLPerf Tiny (mlcommons/tiny) that the project's benches
use: the same layer classes, names, order, connections, kernel sizes, strides, paddings,
activations, input and output shapes and parameter counts (the numbers in ``FACTS``), and the
same file format: Keras 2 ``.h5`` files (``keras_version`` 2.x, ``groups: 1`` in the
convolution configs, so that plain Keras 3 refuses the DepthwiseConv2D ones exactly as it
refuses the real files). Only the weights differ: seeded, with the BatchNormalization
statistics set from a seeded batch (each layer's input mean and variance) so that every
layer sees unit-scale activations, as in a trained network, and the softmax heads are not
saturated. What a test can no longer claim with them is what only training gives (accuracy
on real samples, the class a trained model maps noise to); such tests build the property
they need explicitly.

- ``resnet8``: ResNet-8 for CIFAR-10 (32x32x3 -> 10), 16/32/64 filters, two 1x1 projection
  shortcuts, AveragePooling2D(8) -> Flatten -> Dense softmax; 78,666 parameters.
- ``kws``: the DS-CNN streaming wake-word model (``str_ww_ref_model.h5``, 30x1x40 -> 3):
  four DepthwiseConv2D (3x1, 5x1, 10x1, 15x1, valid, no bias) each followed by a 1x1 Conv2D
  (128, 128, 128, 32; no bias), BatchNormalization, ReLU and Dropout(0.2), then Flatten ->
  Dense softmax; 47,707 parameters.
- ``vww``: MobileNetV1 alpha 0.25 for visual wake words (96x96x3 -> 2): a 3x3/2 Conv2D (8)
  and 13 depthwise-separable blocks, AveragePooling2D(3) -> Flatten -> Dense softmax;
  221,794 parameters.
- ``ad01``: the ToyADMOS anomaly-detection autoencoder (640 -> 640): Dense 128 x4, 8,
  128 x4, each with BatchNormalization and ReLU, then Dense 640; 269,992 parameters.

Data: ``kws_samples`` stands in for ``calibration_samples.npz`` (45 spectrograms in [0, 1]
under the keys ``specs``/``labels``, labelled with the stand-in's own class except 5), ``ad01_sample`` for
``ad01_sample_normal_id_01.bin`` (40 frames x 640 float32, log-mel-like values around -28).
``resnet8_int8`` is the stand-in of ``pretrainedResnet_quant.tflite``: the ResNet-8
stand-in fully int8 (int8 input and output), converted with TFLiteConverter directly.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# facts of the real files (their README and model.summary()), checked by test_mlperf_standins.py
FACTS = {
    "resnet8": {"file": "pretrainedResnet.h5", "params": 78_666, "non_trainable": 480, "input": (32, 32, 3),
                "output": (10,), "keras_version": "2.4.0", "name": "model",
                "layers": {"Activation": 7, "Add": 3, "AveragePooling2D": 1, "BatchNormalization": 7, "Conv2D": 9,
                           "Dense": 1, "Flatten": 1, "InputLayer": 1},
                "widths": [16, 16, 16, 32, 32, 32, 64, 64, 64, 10]},
    "kws": {"file": "str_ww_ref_model.h5", "params": 47_707, "non_trainable": 832, "input": (30, 1, 40),
            "output": (3,), "keras_version": "2.14.0", "name": "model",
            "layers": {"Activation": 4, "BatchNormalization": 4, "Conv2D": 4, "Dense": 1, "DepthwiseConv2D": 4,
                       "Dropout": 4, "Flatten": 1, "InputLayer": 1},
            "widths": [128, 128, 128, 32, 3]},
    "vww": {"file": "vww_96.h5", "params": 221_794, "non_trainable": 5_472, "input": (96, 96, 3), "output": (2,),
            "keras_version": "2.4.0", "name": "model",
            "layers": {"Activation": 27, "AveragePooling2D": 1, "BatchNormalization": 27, "Conv2D": 14, "Dense": 1,
                       "DepthwiseConv2D": 13, "Flatten": 1, "InputLayer": 1},
            "widths": [8, 16, 32, 32, 64, 64, 128, 128, 128, 128, 128, 128, 256, 256, 2]},
    "ad01": {"file": "ad01.h5", "params": 269_992, "non_trainable": 2_064, "input": (640,), "output": (640,),
             "keras_version": "2.4.0", "name": "functional_1",
             "layers": {"Activation": 9, "BatchNormalization": 9, "Dense": 10, "InputLayer": 1},
             "widths": [128, 128, 128, 128, 8, 128, 128, 128, 128, 640]},
}
# pretrainedResnet_quant.tflite as shipped by MLPerf Tiny: its size in bytes (a fact of the file)
RESNET8_INT8_REFERENCE_BYTES = 98_496
KEYS = tuple(FACTS)
L2 = float(np.float32(1e-4))  # the kernel_regularizer of the originals, as stored (9.999999747378752e-05)
ALIASES = {f["file"]: k for k, f in FACTS.items()}


class _Names:
    """Keras 2's automatic layer names: conv2d, conv2d_1, ... per class, in creation order."""

    def __init__(self):
        self.count: dict[str, int] = {}

    def __call__(self, base: str) -> str:
        n = self.count.get(base, 0)
        self.count[base] = n + 1
        return base if n == 0 else f"{base}_{n}"


# --------------------------------------------------------------------------- architectures
def _resnet8():
    import keras

    L, name = keras.layers, _Names()
    reg = keras.regularizers.L2(L2)

    def conv(x, filters, kernel, strides=1):
        return L.Conv2D(filters, kernel, strides=strides, padding="same", kernel_initializer="he_normal",
                        kernel_regularizer=reg, name=name("conv2d"))(x)

    def bn(x):
        return L.BatchNormalization(name=name("batch_normalization"))(x)

    def relu(x):
        return L.Activation("relu", name=name("activation"))(x)

    inp = keras.Input((32, 32, 3), name="input_1")
    x = relu(bn(conv(inp, 16, 3)))
    # stack 1: identity shortcut
    y = bn(conv(relu(bn(conv(x, 16, 3))), 16, 3))
    x = relu(L.Add(name=name("add"))([x, y]))
    # stacks 2 and 3: strided block, 1x1 projection shortcut (created after the block's 2nd conv)
    for filters in (32, 64):
        y = relu(bn(conv(x, filters, 3, 2)))
        y = conv(y, filters, 3)
        shortcut = conv(x, filters, 1, 2)
        y = bn(y)
        x = relu(L.Add(name=name("add"))([shortcut, y]))
    x = L.AveragePooling2D(pool_size=8, name=name("average_pooling2d"))(x)
    x = L.Flatten(name=name("flatten"))(x)
    out = L.Dense(10, activation="softmax", kernel_initializer="he_normal", name=name("dense"))(x)
    return keras.Model(inp, out, name="model")


def _kws():
    import keras

    L, name = keras.layers, _Names()
    inp = keras.Input((30, 1, 40), name="input_1")
    x = inp
    for kernel, filters in ((3, 128), (5, 128), (10, 128), (15, 32)):
        x = L.DepthwiseConv2D((kernel, 1), padding="valid", use_bias=False, name=name("depthwise_conv2d"))(x)
        x = L.Conv2D(filters, 1, padding="valid", use_bias=False, name=name("conv2d"))(x)
        x = L.BatchNormalization(name=name("batch_normalization"))(x)
        x = L.Activation("relu", name=name("activation"))(x)
        x = L.Dropout(0.2, name=name("dropout"))(x)
    x = L.Flatten(name=name("flatten"))(x)
    out = L.Dense(3, activation="softmax", name=name("dense"))(x)
    return keras.Model(inp, out, name="model")


def _vww():
    import keras

    L, name = keras.layers, _Names()
    reg = keras.regularizers.L2(L2)

    def bn_relu(x):
        x = L.BatchNormalization(name=name("batch_normalization"))(x)
        return L.Activation("relu", name=name("activation"))(x)

    inp = keras.Input((96, 96, 3), name="input_1")
    x = L.Conv2D(8, 3, strides=2, padding="same", kernel_initializer="he_normal", kernel_regularizer=reg,
                 name=name("conv2d"))(inp)
    x = bn_relu(x)
    blocks = [(16, 1), (32, 2), (32, 1), (64, 2), (64, 1), (128, 2)] + [(128, 1)] * 5 + [(256, 2), (256, 1)]
    for filters, stride in blocks:
        x = bn_relu(L.DepthwiseConv2D(3, strides=stride, padding="same", name=name("depthwise_conv2d"))(x))
        x = bn_relu(L.Conv2D(filters, 1, padding="same", kernel_initializer="he_normal", kernel_regularizer=reg,
                             name=name("conv2d"))(x))
    x = L.AveragePooling2D(pool_size=3, name=name("average_pooling2d"))(x)
    x = L.Flatten(name=name("flatten"))(x)
    out = L.Dense(2, activation="softmax", name=name("dense"))(x)
    return keras.Model(inp, out, name="model")


def _ad01():
    import keras

    L, name = keras.layers, _Names()
    inp = keras.Input((640,), name="input_1")
    x = inp
    for units in (128, 128, 128, 128, 8, 128, 128, 128, 128):
        x = L.Dense(units, name=name("dense"))(x)
        x = L.BatchNormalization(name=name("batch_normalization"))(x)
        x = L.Activation("relu", name=name("activation"))(x)
    out = L.Dense(640, name=name("dense"))(x)
    return keras.Model(inp, out, name="functional_1")


ARCHITECTURES = {"resnet8": _resnet8, "kws": _kws, "vww": _vww, "ad01": _ad01}


# --------------------------------------------------------------------------- data
def kws_inputs(n: int, seed: int) -> np.ndarray:
    """Spectrogram-like inputs (n, 30, 1, 40) in [0, 1]: smooth in time and frequency."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.0, 0.6, (n, 1, 1, 40))
    x = base + np.cumsum(rng.normal(0.0, 0.08, (n, 30, 1, 40)), axis=1)
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def ad01_sample(seed: int = 1) -> np.ndarray:
    """Stand-in of ad01_sample_normal_id_01.bin: 40 frames x 640 float32, log-mel-like (around
    -28, spread ~11, a per-feature profile plus frame noise)."""
    rng = np.random.default_rng(seed)
    profile = -28.0 + 9.0 * np.sin(np.linspace(0, 12, 640)) + rng.normal(0, 3.0, 640)
    return (profile + rng.normal(0.0, 5.0, (40, 640))).astype(np.float32)


def _init_inputs(key: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if key == "kws":
        return kws_inputs(64, seed)
    if key == "ad01":
        return np.concatenate([ad01_sample(seed), ad01_sample(seed + 1)])
    shape = FACTS[key]["input"]
    n = 32 if key == "resnet8" else 12
    return rng.uniform(0.0, 1.0, (n, *shape)).astype(np.float32)


# --------------------------------------------------------------------------- weights
def _seeded_weights(model, key: str, seed: int) -> None:
    """Seeded kernels (He-normal like the originals), small biases, then one forward pass in
    topological order on a seeded batch setting each BatchNormalization's moving statistics to
    its input's batch mean and variance (gamma ~ U(0.6, 1.4), beta ~ N(0, 0.2))."""
    import keras

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        ws = []
        for w in layer.weights:
            shape = tuple(w.shape)
            if w.name == "kernel" and len(shape) == 4 and type(layer).__name__ == "DepthwiseConv2D":
                v = rng.normal(0.0, np.sqrt(2.0 / (shape[0] * shape[1])), shape)
            elif w.name == "kernel":
                v = rng.normal(0.0, np.sqrt(2.0 / int(np.prod(shape[:-1]))), shape)
            elif w.name == "bias":
                v = rng.normal(0.0, 0.05, shape)
            elif w.name == "gamma":
                v = rng.uniform(0.6, 1.4, shape)
            elif w.name == "beta":
                v = rng.normal(0.0, 0.2, shape)
            else:  # moving statistics: set from the data below
                v = np.zeros(shape) if w.name == "moving_mean" else np.ones(shape)
            ws.append(v.astype(np.float32))
        if ws:
            layer.set_weights(ws)

    x = _init_inputs(key, seed + 1)
    config = model.get_config()
    from edgeprune.pipeline.data._keras_compat import split_node_inputs

    values: dict[str, np.ndarray] = {}
    for entry in config["layers"]:
        layer = model.get_layer(entry["name"])
        data, _ = split_node_inputs(entry["inbound_nodes"])
        if not data:
            values[layer.name] = x
            continue
        args = [values[n] for n, _ in data]
        arg = args if len(args) > 1 else args[0]
        if isinstance(layer, keras.layers.BatchNormalization):
            axes = tuple(range(arg.ndim - 1))
            gamma, beta, _, _ = layer.get_weights()
            layer.set_weights([gamma, beta, arg.mean(axes).astype(np.float32),
                               (arg.var(axes) + 1e-3).astype(np.float32)])
        values[layer.name] = np.asarray(layer(arg, training=False))
    if key == "ad01":  # an autoencoder reconstructs its input: the output bias is the input's mean
        head = model.layers[-1]
        kernel, _ = head.get_weights()
        head.set_weights([(kernel * 0.5).astype(np.float32), x.mean(0).astype(np.float32)])


def build(key: str, seed: int = 0):
    """The stand-in Keras model (Keras 3 objects, standard classes), seeded."""
    key = ALIASES.get(key, key)
    model = ARCHITECTURES[key]()
    _seeded_weights(model, key, seed + {"resnet8": 0, "kws": 10, "vww": 20, "ad01": 30}[key])
    return model


# --------------------------------------------------------------------------- Keras 2 .h5 files
def _keras2_object(obj):
    """A Keras 3 serialised initializer/regularizer as Keras 2.4 wrote it."""
    if isinstance(obj, dict) and "class_name" in obj:
        return {"class_name": obj["class_name"], "config": obj.get("config", {})}
    return obj


def keras2_config(model) -> dict:
    """``model``'s functional config in the form Keras 2 wrote into .h5 files: list inbound
    nodes, ``batch_input_shape``, string dtypes, BatchNormalization axes as lists, and
    ``groups: 1`` in every Conv2D/DepthwiseConv2D config (the key Keras 3 refuses for
    DepthwiseConv2D)."""
    from edgeprune.pipeline.data._keras_compat import split_node_inputs

    cfg = model.get_config()
    layers = []
    for entry in cfg["layers"]:
        cls, c = entry["class_name"], dict(entry["config"])
        c["dtype"] = "float32"
        if cls == "InputLayer":
            c = {"batch_input_shape": list(c["batch_shape"]), "dtype": "float32", "sparse": False, "ragged": False,
                 "name": c["name"]}
        for k in [k for k in c if k.endswith(("_initializer", "_regularizer", "_constraint"))]:
            c[k] = _keras2_object(c[k])
        if cls in ("Conv2D", "DepthwiseConv2D"):
            c["groups"] = 1
        if cls == "BatchNormalization" and isinstance(c.get("axis"), int):
            c["axis"] = [c["axis"]]
        for k in ("lora_rank", "lora_alpha", "quantization_config", "seed", "noise_shape"):
            if c.get(k) is None:
                c.pop(k, None)
        data, _ = split_node_inputs(entry["inbound_nodes"])
        inbound = [[[n, 0, t, {}] for n, t in data]] if data else []
        layers.append({"class_name": cls, "config": c, "name": entry["name"], "inbound_nodes": inbound})
    return {"class_name": "Functional", "config": {
        "name": cfg["name"], "layers": layers,
        "input_layers": [[t.name if hasattr(t, "name") else t[0], 0, 0] for t in _io(cfg["input_layers"])],
        "output_layers": [[t[0], 0, 0] for t in _io(cfg["output_layers"])]}}


def _io(spec):
    """[[name, node, tensor], ...] from Keras 3's single or list form."""
    return [spec] if spec and isinstance(spec[0], str) else list(spec)


def save_keras2_h5(model, path: Path, keras_version: str) -> Path:
    """Write ``model`` as a Keras 2 HDF5 file: Keras 3's legacy HDF5 writer (the weight layout
    Keras 2 used), then the Keras 2 model config and version attributes."""
    import h5py

    path = Path(path)
    model.save(path)
    with h5py.File(path, "r+") as f:
        f.attrs["model_config"] = json.dumps(keras2_config(model))
        f.attrs["keras_version"] = keras_version
        f.attrs["backend"] = "tensorflow"
    return path


# --------------------------------------------------------------------------- files, cached
class Standins:
    """Stand-in files built on first use into ``root`` and reused (one per session)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()  # a data file builds the model it needs under the same lock
        self._models: dict[str, object] = {}

    def path(self, key: str) -> Path:
        """The file standing in for ``key`` (a model key, or a file name of the MLPerf folder)."""
        key = ALIASES.get(key, key)
        makers = {"calibration_samples.npz": self._kws_samples, "ad01_sample_normal_id_01.bin": self._ad01_bin,
                  "pretrainedResnet_quant.tflite": self._resnet8_int8}
        with self._lock:
            if key in FACTS:
                target = self.root / FACTS[key]["file"]
                if not target.exists():
                    _atomic(target, lambda tmp: save_keras2_h5(build(key), tmp, FACTS[key]["keras_version"]))
                return target
            target = self.root / key
            if not target.exists():
                _atomic(target, makers[key])
            return target

    def model(self, key: str):
        """The stand-in loaded from its Keras 2 .h5 file by edgeprune's loader (as a user's file)."""
        from edgeprune.pipeline.data.loading import load_model

        key = ALIASES.get(key, key)
        if key not in self._models:
            self._models[key] = load_model(self.path(key))
        return self._models[key]

    # data files
    def _kws_samples(self, tmp: Path) -> None:
        """45 spectrograms labelled with the stand-in's own top-1 class for 40 of them
        and a wrong class for the 5 listed in ``KWS_WRONG`` (so its accuracy is 40/45)."""
        x = kws_inputs(45, 7).astype(np.float64)  # the real file stores float64
        pred = np.asarray(self.model("kws")(x.astype(np.float32), training=False)).argmax(1)
        y = pred.copy()
        y[list(KWS_WRONG)] = (pred[list(KWS_WRONG)] + 1) % 3
        with open(tmp, "wb") as fh:
            np.savez(fh, specs=x, labels=y.astype(np.float64))

    def _ad01_bin(self, tmp: Path) -> None:
        ad01_sample().tofile(tmp)

    def _resnet8_int8(self, tmp: Path) -> None:
        tmp.write_bytes(int8_tflite(self.model("resnet8")))


KWS_WRONG = (3, 11, 19, 27, 40)  # the samples of kws_samples labelled with another class than predicted


def int8_tflite(model, n: int = 32, seed: int = 5) -> bytes:
    """Full-integer conversion (int8 input and output) with TFLiteConverter, calibrated on seeded
    uniform [0, 1] inputs: how MLPerf Tiny made pretrainedResnet_quant.tflite."""
    import tensorflow as tf

    x = np.random.default_rng(seed).uniform(0, 1, (n, *model.inputs[0].shape[1:])).astype(np.float32)

    @tf.function(input_signature=[tf.TensorSpec((1, *model.inputs[0].shape[1:]), tf.float32)], autograph=False)
    def serve(t):
        return model(t, training=False)

    conv = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], model)
    conv.experimental_lower_to_saved_model = False  # convert the frozen function (variables kept by the model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([x[i:i + 1]] for i in range(n))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    return conv.convert()


def _atomic(target: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=target.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_SESSION: Standins | None = None


def session(root: Path | None = None) -> Standins:
    """The process's Standins (conftest.py gives it pytest's session temporary folder)."""
    global _SESSION
    if _SESSION is None or (root is not None and Path(root) != _SESSION.root):
        if root is None:
            root = Path(tempfile.mkdtemp(prefix="mlperf-standins-"))
        _SESSION = Standins(root)
    return _SESSION
