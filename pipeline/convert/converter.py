"""Keras -> TFLite conversion: float32, float16, dynamic-range int8 and full int8.

- Static batch size (1 by default): the model is traced as a ``tf.function`` with a fixed
  input signature and converted from that concrete function (no SavedModel round trip),
  so Flatten stays one RESHAPE instead of SHAPE/STRIDED_SLICE/PACK.
- Only TFLite builtin ops (``TFLITE_BUILTINS``, or ``TFLITE_BUILTINS_INT8`` for full
  int8); SELECT_TF_OPS are never enabled and the op list is checked for Flex/custom ops.
- Full int8 has int8 input and output tensors and every op int8. It is calibrated on the
  user's samples when given, otherwise on synthetic samples drawn uniformly from the
  declared input range (``calibration_source`` says which).
- The converter's chatter (C++ and Python, on file descriptors 1 and 2) is captured, not
  shown; if conversion fails, the error names the op/layer and keeps the captured log.

Usage::

    result = convert(model, ConvertConfig(quantize="int8", calibration=x))
    result.save("model.tflite"); result.size_bytes; result.ops; result.inputs[0].scale
"""
from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.crash import stage
from edgeprune.errors import BadInput, UnsupportedModel
from edgeprune.pipeline.atomic import write_bytes_atomic
from edgeprune.pipeline.convert.quiet import captured_output  # noqa: F401  (also conv.captured_output for its callers)

QUANTIZE_MODES = ("float32", "float16", "dynamic", "int8")
# Ops a dynamic batch dimension introduces around Flatten; microcontrollers do not want them.
DYNAMIC_SHAPE_OPS = ("SHAPE", "STRIDED_SLICE", "PACK")


# --------------------------------------------------------------------------- config
@dataclass
class ConvertConfig:
    """How to convert.

    quantize: "float32"; "float16" (float16 weights); "dynamic" (dynamic-range int8
    weights, float activations); "int8" (full integer: int8 input/output, every op int8).
    calibration: samples for int8, shape (N, *input_shape) (a missing trailing channel of
    1 is accepted); None -> ``num_calibration`` synthetic samples drawn uniformly from
    ``input_range`` with ``seed``.
    """

    quantize: str = "float32"
    batch_size: int = 1
    calibration: np.ndarray | None = None
    input_range: tuple[float, float] = (0.0, 1.0)
    num_calibration: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.quantize not in QUANTIZE_MODES:
            raise BadInput(
                f"unknown quantization {self.quantize!r}",
                f"use one of: {', '.join(QUANTIZE_MODES)}",
            )
        if int(self.batch_size) < 1:
            raise BadInput(f"batch size must be >= 1, got {self.batch_size}")
        self.batch_size = int(self.batch_size)
        lo, hi = (float(v) for v in self.input_range)
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise BadInput(f"input range {self.input_range!r}: LO must be below HI", "e.g. (0, 1) or (-1, 1)")
        self.input_range = (lo, hi)
        if int(self.num_calibration) < 1:
            raise BadInput(f"num_calibration must be >= 1, got {self.num_calibration}")
        self.num_calibration = int(self.num_calibration)


# --------------------------------------------------------------------------- result
@dataclass
class TensorInfo:
    """One input or output tensor of the converted model."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float = 0.0  # 0.0 = not quantised
    zero_point: int = 0

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0 and self.dtype in ("int8", "uint8", "int16")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "scale": self.scale,
            "zero_point": self.zero_point,
        }


@dataclass
class ConvertResult:
    tflite: bytes
    quantize: str
    ops: list[str]  # sorted, unique builtin op names (e.g. "CONV_2D")
    op_counts: dict[str, int]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    calibration_source: str | None  # "user", "synthetic" or None (no calibration needed)
    calibration_samples: int
    seconds: float
    batch_size: int = 1
    log: str = ""  # the converter's captured stdout/stderr
    notes: list[str] = field(default_factory=list)

    @property
    def size_bytes(self) -> int:
        return len(self.tflite)

    def save(self, path: str | Path) -> Path:
        """Write the .tflite atomically (pipeline/atomic.py)."""
        path = Path(path)
        parent = path.resolve().parent
        if not parent.is_dir():
            raise BadInput(f"output folder {parent} does not exist", "create it or choose another output path")
        try:
            write_bytes_atomic(path, self.tflite)
        except OSError as exc:
            raise BadInput(f"cannot write {path}: {exc}", "choose another output path") from None
        return path

    def to_dict(self) -> dict[str, Any]:
        return {
            "quantize": self.quantize,
            "size_bytes": self.size_bytes,
            "batch_size": self.batch_size,
            "ops": list(self.ops),
            "op_counts": dict(self.op_counts),
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "calibration_source": self.calibration_source,
            "calibration_samples": self.calibration_samples,
            "seconds": round(self.seconds, 3),
            "notes": list(self.notes),
        }


def quiet_import_tensorflow() -> None:
    """Import tensorflow and keras with their start-up chatter (oneDNN, CUDA probes, written
    by C++ before logging is configured) captured instead of shown. Call it first in a CLI
    command; later imports are free."""
    if "tensorflow" in sys.modules and "keras" in sys.modules:
        return
    with captured_output():
        import keras  # noqa: F401
        import tensorflow  # noqa: F401


# --------------------------------------------------------------------------- helpers
def input_specs(model) -> list[tuple[str, tuple[int | None, ...], str]]:
    """(name, per-sample shape, dtype) of each model input."""
    specs = []
    for t in model.inputs:
        shape = tuple(t.shape[1:])
        dtype = getattr(t.dtype, "name", None) or str(t.dtype)
        name = getattr(t, "name", "input")
        specs.append((name, shape, dtype))
    return specs


def _check_static(model) -> None:
    for name, shape, _ in input_specs(model):
        if any(d is None for d in shape):
            raise UnsupportedModel(
                f"input {name!r} has a dynamic dimension {('batch',) + shape}",
                "fix the variable dimensions with --input-shape (batch first, e.g. --input-shape 1,5000,4), "
                "or give the model a fully known input shape (keras.Input(shape=(...)) without None)",
            )


def fit_to_input(x: np.ndarray, shape: tuple[int, ...], what: str = "data") -> np.ndarray:
    """``x`` (N, *shape), or (N, *shape[:-1]) when the model's last dim is 1; else BadInput."""
    x = np.asarray(x)
    if tuple(x.shape[1:]) == tuple(shape):
        return x
    if len(shape) >= 1 and shape[-1] == 1 and tuple(x.shape[1:]) == tuple(shape[:-1]):
        return x[..., None]
    raise BadInput(
        f"{what} has per-sample shape {tuple(x.shape[1:])} (array {tuple(x.shape)}), "
        f"but the model expects {tuple(shape)}",
        f"give an array of shape (N, {', '.join(str(d) for d in shape)})",
    )


def synthetic_inputs(model, n: int, input_range: tuple[float, float], seed: int = 0) -> list:
    """``n`` samples per model input, uniform in ``input_range`` (integers for int inputs), as lazy
    arrays (:class:`~edgeprune.pipeline.data.batching.SyntheticSamples`): drawn when read."""
    from edgeprune.pipeline.data.batching import SyntheticSamples

    lo, hi = input_range
    out = []
    for k, (_, shape, dtype) in enumerate(input_specs(model)):
        kind = np.dtype(dtype) if np.issubdtype(np.dtype(dtype), np.integer) else np.float32
        out.append(SyntheticSamples(n, shape, lo, hi, seed=seed * 1000 + k, dtype=kind))
    return out


def _calibration_set(model, config: ConvertConfig) -> tuple[list, str]:
    """The calibration samples, lazily: a subset of the user's (read batch by batch by the
    representative dataset) or synthetic ones."""
    from edgeprune.pipeline.data.batching import READ_BATCH, Samples, is_lazy

    specs = input_specs(model)
    if config.calibration is None:
        return synthetic_inputs(model, config.num_calibration, config.input_range, config.seed), "synthetic"
    if len(specs) != 1:
        raise BadInput(
            f"user calibration data given for a model with {len(specs)} inputs",
            "calibration arrays are supported for single-input models; omit them for synthetic calibration",
        )
    x = config.calibration if is_lazy(config.calibration) or hasattr(config.calibration, "shape") \
        else np.asarray(config.calibration)
    if np.dtype(x.dtype).kind not in "biuf" or x.ndim < 1:
        raise BadInput(f"calibration data must be a numeric array, got dtype {x.dtype}")
    if len(x) == 0:
        raise BadInput("calibration data is empty", "give at least one sample")
    fit_to_input(x[:1], specs[0][1], "calibration data")  # the shape check (and its message)
    if not is_lazy(x):
        x = Samples(x, add_channel=tuple(x.shape[1:]) != tuple(specs[0][1]))
    elif tuple(x.shape[1:]) != tuple(specs[0][1]):
        x = _AddChannel(x)
    if len(x) > config.num_calibration:
        idx = np.random.default_rng(config.seed).choice(len(x), config.num_calibration, replace=False)
        x = x.take(np.sort(idx))
    for start in range(0, len(x), READ_BATCH):
        if not np.all(np.isfinite(x[start : start + READ_BATCH])):
            raise BadInput("calibration data contains NaN or infinity", "clean the data")
    return [x], "user"


class _AddChannel:
    """A lazy array with a trailing channel axis of 1 appended when read."""

    def __init__(self, x):
        self.x = x
        self.shape = (*x.shape, 1)
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, key):
        return np.asarray(self.x[key], dtype=np.float32)[..., None]

    def take(self, idx):
        return _AddChannel(self.x.take(idx))


def _concrete_function(model, batch_size: int):
    import tensorflow as tf

    signature = [
        tf.TensorSpec((batch_size, *shape), tf.as_dtype(dtype), name=re.sub(r"[^A-Za-z0-9_]", "_", name) or f"input_{i}")
        for i, (name, shape, dtype) in enumerate(input_specs(model))
    ]

    if len(signature) == 1:
        @tf.function(input_signature=signature, autograph=False)
        def serve(x):
            return model(x, training=False)
    else:
        @tf.function(input_signature=signature, autograph=False)
        def serve(*xs):
            return model(list(xs), training=False)

    return serve.get_concrete_function()


_FLEX_OP = re.compile(r"'tf\.(\w+)' op")
_TFL_OP = re.compile(r"'tfl\.(\w+)' op")
_SCOPE = re.compile(r'callsite\("([^"(]+)"\(|fused\["[^"]*", "([^"(@]+)')


def _layers_in(text: str, model) -> list[str]:
    """Layer names found in the op locations ("functional_1/conv_1/..." name scopes)."""
    names = {layer.name for layer in model.layers}
    hits: list[str] = []
    for m in _SCOPE.finditer(text):
        scope = m.group(1) or m.group(2) or ""
        for comp in scope.split("/")[1:]:
            cand = comp if comp in names else re.sub(r"_\d+$", "", comp)
            if cand in names:
                if cand not in hits:
                    hits.append(cand)
                break
    return hits


def _explain_conversion_error(exc: Exception, log: str, model) -> UnsupportedModel:
    text = f"{exc}\n{log}"
    tf_ops = sorted(set(_FLEX_OP.findall(text)))
    tfl_ops = sorted(set(_TFL_OP.findall(text)))
    layers_hit = _layers_in(text, model)
    where = f" in layer(s) {', '.join(repr(n) for n in layers_hit)}" if layers_hit else ""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    first = next((ln.split("error:", 1)[1].strip() for ln in lines if "error:" in ln), lines[0] if lines else type(exc).__name__)
    if tf_ops:
        msg = (
            f"the model cannot be converted with TFLite builtin ops: TensorFlow op(s) "
            f"{', '.join(tf_ops)}{where} have no TFLite builtin equivalent"
        )
        hint = "replace that layer with standard layers TFLite supports (edgeprune never enables SELECT_TF_OPS / Flex ops)"
    elif tfl_ops:
        msg = f"TFLite conversion failed at op(s) {', '.join(tfl_ops)}{where}: {first[:300]}"
        hint = "try another --quantize mode (e.g. float32 or dynamic), or replace that layer"
    else:
        msg = f"TFLite conversion failed{where}: {type(exc).__name__}: {first[:400]}"
        hint = "check that the model runs on one sample of its declared input shape"
    said = []
    for ln in text.splitlines():
        if "error:" in ln:
            m = ln.split("error:", 1)[1].strip()[:200]
            if m and m not in said and not m.startswith("failed while converting"):
                said.append(m)
    if said:
        hint += "\n  converter: " + "\n  converter: ".join(said[:4])
    err = UnsupportedModel(msg, hint)
    err.log = log  # type: ignore[attr-defined]  # the full converter output, for debugging
    return err


# --------------------------------------------------------------------------- flatbuffer
def read_ops(tflite: bytes) -> tuple[list[str], dict[str, int]]:
    """(sorted unique op names, counts) from the .tflite flatbuffer. Custom ops keep their
    custom code (Flex ops are custom ops named "Flex...")."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(bytearray(tflite), 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        if code == schema.BuiltinOperator.CUSTOM:
            custom = oc.CustomCode()
            codes.append(custom.decode() if isinstance(custom, bytes) else str(custom))
        else:
            codes.append(names.get(code, f"BUILTIN_{code}"))
    counts: dict[str, int] = {}
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        for o in range(sg.OperatorsLength()):
            name = codes[sg.Operators(o).OpcodeIndex()]
            counts[name] = counts.get(name, 0) + 1
    return sorted(counts), dict(sorted(counts.items()))


def tensor_details(tflite: bytes) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """Input and output tensors (shape, dtype, quantisation) read with ai-edge-litert."""
    from ai_edge_litert.interpreter import Interpreter

    with captured_output():  # the runtime announces its delegate on fd 2
        interp = Interpreter(model_content=tflite)

    def info(d: dict) -> TensorInfo:
        scale, zp = d.get("quantization", (0.0, 0))
        return TensorInfo(
            name=str(d["name"]),
            shape=tuple(int(v) for v in d["shape"]),
            dtype=np.dtype(d["dtype"]).name,
            scale=float(scale),
            zero_point=int(zp),
        )

    return [info(d) for d in interp.get_input_details()], [info(d) for d in interp.get_output_details()]


# --------------------------------------------------------------------------- convert
MAX_UNROLL_STEPS = 512  # int8 recurrent layers are unrolled up to this many time steps


def _recurrent_steps(model) -> list[tuple[str, int | None]]:
    """(layer name, time steps) of the recurrent layers (RNN/GRU/LSTM, Bidirectional)."""
    out = []
    for layer in model.layers:
        cfg = layer.get_config()
        if "unroll" in cfg or type(layer).__name__ == "Bidirectional":
            inp = layer.input[0] if isinstance(layer.input, (list, tuple)) else layer.input
            out.append((layer.name, inp.shape[1] if len(inp.shape) > 2 else None))
    return out


def short_tensor_names(tflite: bytes) -> bytes:
    """The same model with every tensor name but the main subgraph's inputs and outputs
    replaced by ``t<index>``. An unrolled recurrent model repeats long scoped names
    (``model/lstm/while/...``) for every tensor of every time step: about 45 % of its file
    (measured: 837 kB -> 467 kB for two stacked Bidirectional GRUs over 30 steps). Names do not
    take part in the computation; outputs are bit-identical."""
    from tensorflow.lite.tools import flatbuffer_utils as fu

    model = fu.convert_bytearray_to_object(bytearray(tflite))
    main = model.subgraphs[0]
    keep = set(int(i) for i in main.inputs) | set(int(i) for i in main.outputs)
    for sg in model.subgraphs:
        for i, t in enumerate(sg.tensors):
            if sg is not main or i not in keep:
                t.name = f"t{i}".encode()
    return bytes(fu.convert_object_to_bytearray(model))


UNROLLED_MAX_RATIO = 2.0  # an int8 file this many times the float32 file is refused, never shipped


def _refuse_bloated_unrolled(tflite: bytes, original, config: "ConvertConfig") -> None:
    """Refuse a full-int8 file of an unrolled recurrent model that is more than
    ``UNROLLED_MAX_RATIO`` times the float32 file of the same model (converted here to know it;
    skipped when the int8 file is below the bound 2 x 4 B per parameter, which the float32
    file can only exceed)."""
    params = int(original.count_params())
    if len(tflite) <= UNROLLED_MAX_RATIO * 4 * params:
        return
    f32 = convert(original, ConvertConfig(quantize="float32", batch_size=config.batch_size))
    if len(tflite) <= UNROLLED_MAX_RATIO * f32.size_bytes:
        return
    names = ", ".join(repr(n) for n, _ in _recurrent_steps(original))
    steps = max((t or 0) for _, t in _recurrent_steps(original))
    raise UnsupportedModel(
        f"full-int8 conversion of the recurrent layer(s) {names} gives a {len(tflite):,} B file, "
        f"{len(tflite) / f32.size_bytes:.1f} times the float32 file ({f32.size_bytes:,} B): TFLite has no full-int8 "
        f"recurrent loop the converter can produce here, so the layers are unrolled over their {steps} time steps, "
        f"which repeats the cell's graph once per step. Refused rather than shipped",
        "use --quantize dynamic (int8 weights, float activations: about a quarter of the float32 file) or float16; "
        "or a shorter --input-shape (fewer time steps)",
    )


def _unrolled(model):
    """``model`` with every recurrent layer unrolled (same weights, same computation).

    The TF converter crashes the process (segmentation fault, TF 2.21) when it quantizes the
    WHILE loop of a recurrent layer to full int8; unrolled, the loop becomes plain ops."""
    import keras

    steps = _recurrent_steps(model)
    long = [(n, t) for n, t in steps if t is None or t > MAX_UNROLL_STEPS]
    if long:
        name, t = long[0]
        raise UnsupportedModel(
            f"full-int8 conversion of recurrent layer {name!r} over {t or 'a variable number of'} time steps: "
            f"the TF converter cannot quantize its loop, and unrolling is limited to {MAX_UNROLL_STEPS} steps",
            "use --quantize dynamic or float16 (float activations), or a shorter --input-shape",
        )

    def clone(layer):
        cfg = layer.get_config()
        if "unroll" in cfg:
            cfg["unroll"] = True
        for key in ("layer", "backward_layer"):
            # a wrapped recurrent layer (Bidirectional's; TimeDistributed's may be a Conv2D)
            if isinstance(cfg.get(key), dict) and "unroll" in cfg[key].get("config", {}):
                cfg[key] = {**cfg[key], "config": {**cfg[key]["config"], "unroll": True}}
        return layer.__class__.from_config(cfg)

    new = keras.models.clone_model(model, clone_function=clone)
    new.set_weights(model.get_weights())
    return new


_FUSED_OP = "UNIDIRECTIONAL_SEQUENCE_LSTM"


def _lstm_function():
    """A tf.function with the interface and attributes of Keras 2's ``standard_lstm`` (args: inputs,
    init_h, init_c, kernel, recurrent_kernel, bias; 5 results), which the TFLite converter replaces
    by its fused UNIDIRECTIONAL_SEQUENCE_LSTM op (``api_implements: lstm_*``). The body (a scan)
    is the same computation, used only when the function runs in TensorFlow."""
    import uuid

    import tensorflow as tf

    def standard_lstm(inputs, init_h, init_c, kernel, recurrent_kernel, bias):
        def step(carry, xt):
            h, c = carry
            z = tf.matmul(xt, kernel) + tf.matmul(h, recurrent_kernel) + bias
            i, f, g, o = tf.split(z, 4, axis=1)  # Keras' gate order
            c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
            return tf.sigmoid(o) * tf.tanh(c), c

        hs, cs = tf.scan(step, tf.transpose(inputs, [1, 0, 2]), initializer=(init_h, init_c))
        return hs[-1], tf.transpose(hs, [1, 0, 2]), hs[-1], cs[-1], tf.constant(1.0, tf.float32)

    return tf.function(standard_lstm, autograph=False, experimental_attributes={
        "api_implements": f"lstm_{uuid.uuid4()}", "api_preferred_device": "CPU",
        "time_major": False, "go_backwards": False})


def _fusable_lstms(model) -> list[str]:
    """Names of the recurrent layers if EVERY one is a plain Keras LSTM the fused op computes
    exactly (tanh/sigmoid, bias, forward, no state in or out, no mask in the model), else []."""
    import keras

    names = []
    for layer in model.layers:
        if type(layer).__name__ in ("Masking",) or (type(layer).__name__ == "Embedding" and layer.get_config().get("mask_zero")):
            return []
    for name, steps in _recurrent_steps(model):
        layer = model.get_layer(name)
        cfg = layer.get_config()
        if type(layer) is not keras.layers.LSTM or not steps:
            return []
        if (cfg.get("activation"), cfg.get("recurrent_activation")) != ("tanh", "sigmoid") or not cfg.get("use_bias", True):
            return []
        if cfg.get("stateful") or cfg.get("return_state") or cfg.get("go_backwards") or len(layer.input.shape) != 3:
            return []
        names.append(name)
    return names


def _with_fused_lstms(model, names: list[str]):
    """``model`` with the LSTM layers ``names`` replaced by calls of :func:`_lstm_function` (their
    weights as constants); every other layer is the original layer object (shared)."""
    import keras

    class FusedLSTM(keras.layers.Layer):
        def __init__(self, src):
            super().__init__(name=src.name)
            self.units, self.return_sequences = int(src.units), bool(src.return_sequences)
            self.arrays = [np.asarray(w, np.float32) for w in src.get_weights()]
            self.fn = _lstm_function()

        def call(self, x, mask=None, training=None):
            import tensorflow as tf

            if mask is not None:  # the fused op has no mask input
                raise ValueError(f"LSTM {self.name!r} receives a mask")

            zero = tf.zeros((tf.shape(x)[0], self.units), x.dtype)
            last, seq, _, _, _ = self.fn(x, zero, zero, *(tf.constant(a) for a in self.arrays))
            return seq if self.return_sequences else last

        def compute_output_shape(self, shape):
            return (shape[0], shape[1], self.units) if self.return_sequences else (shape[0], self.units)

    wanted = set(names)
    return keras.models.clone_model(model, clone_function=lambda layer: FusedLSTM(layer) if layer.name in wanted else layer)


FUSED_MAX_ERROR = 0.05  # above this error on calibration samples, the unrolled int8 file is tried too
_ERR_SAMPLES = 16


def _int8_error(tflite: bytes, model, calibration) -> float | None:
    """Relative L2 error of the int8 file against the float Keras model on the first
    calibration samples (single-input models; None when it cannot be measured)."""
    from edgeprune.pipeline.convert.fidelity import run_tflite

    if not calibration or len(calibration) != 1:
        return None
    x = np.asarray(calibration[0][:_ERR_SAMPLES])
    try:
        y, _ = run_tflite(tflite, x)
    except BadInput:
        return None
    ref = np.asarray(model.predict(x, verbose=0, batch_size=len(x)), np.float32).reshape(y.shape)
    norm = float(np.linalg.norm(ref))
    return float(np.linalg.norm(y - ref) / norm) if norm > 0 else None


def _fused_converter(fused, config: "ConvertConfig"):
    """The converter of a model with fused-LSTM calls: lowered through a SavedModel (a frozen
    concrete function loses the ``api_implements`` attribute the fusion needs), the variables
    tracked by a tf.Module so they are frozen into constants (Keras' own tracking leaves
    VAR_HANDLE ops)."""
    import tensorflow as tf

    func = _concrete_function(fused, config.batch_size)
    holder = tf.Module()
    holder.variables_ = [getattr(v, "value", v) for v in fused.weights]
    converter = tf.lite.TFLiteConverter.from_concrete_functions([func], trackable_obj=holder)
    converter.experimental_lower_to_saved_model = True
    return converter


def _fused_lstm_model(model, calibration, config: "ConvertConfig"):
    """The model with its LSTMs as fused-op calls, or None when not every recurrent layer can be
    fused or the rebuilt model does not compute the original's outputs (checked on calibration
    samples) or the converter does not fuse them (checked on a float32 conversion, ~1 s: a full-int8
    conversion of a WHILE loop crashes the TF 2.21 converter, so int8 is only tried once fused)."""
    import tensorflow as tf

    names = _fusable_lstms(model)
    if not names:
        return None
    fused = _with_fused_lstms(model, names)
    if calibration:
        xs = [np.asarray(arr[: min(4, len(arr))]) for arr in calibration]
        x = xs[0] if len(xs) == 1 else xs
        want = np.asarray(model(x, training=False), np.float32)
        try:
            got = np.asarray(fused(x, training=False), np.float32)
        except Exception:  # noqa: BLE001 - e.g. a mask reaches an LSTM: the unrolled path decides
            return None
        if want.shape != got.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-5 * (1 + float(np.abs(want).max()))):
            return None
    with captured_output():
        converter = _fused_converter(fused, config)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        try:
            ops, _ = read_ops(converter.convert())
        except Exception:  # noqa: BLE001 - not fusable here: the unrolled path decides
            return None
    if _FUSED_OP not in ops or "WHILE" in ops:
        return None
    return fused, names


def _configure(converter, config: ConvertConfig, calibration) -> None:
    """The converter's settings for ``config.quantize`` (int8: the representative dataset, one batch
    of ``calibration`` at a time)."""
    import tensorflow as tf

    converter.experimental_lower_to_saved_model = False
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if config.quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif config.quantize == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif config.quantize == "int8":
        assert calibration is not None
        n = len(calibration[0])
        b = config.batch_size

        def representative():  # one batch read at a time: the calibration set is never held whole
            for start in range(0, n - b + 1, b) if n >= b else []:
                yield [np.asarray(arr[start : start + b]) for arr in calibration]
            if n < b:  # fewer samples than one batch: tile them
                reps = -(-b // n)
                yield [np.concatenate([np.asarray(arr[:n])] * reps)[:b] for arr in calibration]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8


def _run_converter(model, config: ConvertConfig, calibration, fused_names: list) -> tuple[bytes, str]:
    """(the TFLite flatbuffer, the converter's log) of ``model`` (traced, configured for ``config``, converted); raises
    UnsupportedModel naming the op/layer when TFLite builtins cannot express it."""
    import tensorflow as tf

    with captured_output() as box:
        try:
            func = _concrete_function(model, config.batch_size)
        except Exception as exc:  # tracing failed: the model does not run on this signature
            error: Exception | None = exc
        else:
            error = None
    if error is not None:
        raise _explain_conversion_error(error, box.text, model)

    with captured_output():
        # The model keeps the variables alive; lower_to_saved_model=False keeps the
        # conversion on the frozen concrete function (no SavedModel written to disk).
        converter = tf.lite.TFLiteConverter.from_concrete_functions([func], trackable_obj=model) if not fused_names \
            else _fused_converter(model, config)
    _configure(converter, config, calibration)
    if fused_names:
        converter.experimental_lower_to_saved_model = True  # keeps the fused-LSTM attribute (see _fused_converter)

    with captured_output() as box:
        try:
            tflite = converter.convert()
        except Exception as exc:
            error = exc
        else:
            error = None
    if error is not None:
        raise _explain_conversion_error(error, box.text, model)
    return tflite, box.text


def _unrolled_if_closer(original, config: ConvertConfig, calibration, err) -> "ConvertResult | None":
    """A fused int8 LSTM file that errs more than FUSED_MAX_ERROR: the unrolled file instead, when
    it is allowed (<= 2x float32) and closer; else None (the fused file stays)."""
    if err is None or err <= FUSED_MAX_ERROR:
        return None
    # measured: the fused int8 op can be much less accurate on TINY LSTMs (LSTM(1) -> Dense(2):
    # 0.41 vs 0.037 unrolled)
    try:
        alt: ConvertResult | None = convert(original, config, _fuse=False)
    except UnsupportedModel:  # unrolled refused (size, steps): the fused file stays
        return None
    alt_err = _int8_error(alt.tflite, original, calibration) if alt is not None else None
    if alt is None or alt_err is None or alt_err >= err:
        return None
    alt.notes.append(f"int8 LSTM layer(s) unrolled: TFLite's fused {_FUSED_OP} op erred {err:.3f} (relative L2 "
                     f"on {_ERR_SAMPLES} calibration samples), the unrolled file {alt_err:.3f}")
    return alt


@stage("convert", what="model")
def convert(model, config: ConvertConfig | None = None, *, _fuse: bool = True) -> ConvertResult:
    """Convert a Keras model to TFLite as ``config`` says; raises UnsupportedModel naming the
    op/layer when TFLite builtins cannot express the model."""
    config = config or ConvertConfig()
    _check_static(model)
    t0 = time.perf_counter()
    original, unrolled = model, False
    fused_names: list[str] = []
    calibration, source = _calibration_set(model, config) if config.quantize == "int8" else (None, None)
    if config.quantize == "int8" and _recurrent_steps(model):
        fused = _fused_lstm_model(model, calibration, config) if _fuse else None
        if fused is not None:  # TFLite's full-int8 fused LSTM op: no loop to quantize, no unrolling
            model, fused_names = fused
        else:
            model, unrolled = _unrolled(model), True
    tflite, log = _run_converter(model, config, calibration, fused_names)
    if unrolled:  # one copy of the cell's graph per time step: keep the file as small as it can be
        tflite = short_tensor_names(tflite)
        _refuse_bloated_unrolled(tflite, original, config)
    fused_note = ""
    if fused_names:
        err = _int8_error(tflite, original, calibration)
        fused_note = f"; relative L2 error {err:.3f} on {_ERR_SAMPLES} calibration samples" if err is not None else ""
        alt = _unrolled_if_closer(original, config, calibration, err)
        if alt is not None:
            return alt
    seconds = time.perf_counter() - t0

    ops, counts = read_ops(tflite)
    bad = [op for op in ops if op.startswith("Flex") or not op.isupper()]
    if bad:  # cannot happen with TFLITE_BUILTINS only; a hard check all the same
        raise UnsupportedModel(f"the converted model contains non-builtin ops {bad}", "replace the layers that need them")
    inputs, outputs = tensor_details(tflite)
    notes = []
    dyn = [op for op in ops if op in DYNAMIC_SHAPE_OPS]
    if dyn:
        notes.append(f"the converted model contains dynamic-shape ops {dyn} (microcontrollers may not support them)")
    if fused_names:
        notes.append(f"int8 LSTM layer(s) {', '.join(repr(n) for n in fused_names)} converted as TFLite's fused "
                     f"{_FUSED_OP} op (full int8, no unrolling{fused_note})")
    if config.quantize == "int8" and source == "synthetic":
        notes.append(
            f"int8 calibrated on {len(calibration[0])} synthetic samples, uniform in {list(config.input_range)} "  # type: ignore[index]
            "(data-free); give real samples for better int8 accuracy"
        )
    return ConvertResult(
        tflite=bytes(tflite),
        quantize=config.quantize,
        ops=ops,
        op_counts=counts,
        inputs=inputs,
        outputs=outputs,
        calibration_source=source,
        calibration_samples=len(calibration[0]) if calibration else 0,
        seconds=seconds,
        batch_size=config.batch_size,
        log=log,
        notes=notes,
    )
