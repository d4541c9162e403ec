"""Fidelity of a converted .tflite against the original float Keras model.

The .tflite runs with ai-edge-litert on the host (the runtime that ships, not the
deprecated ``tf.lite.Interpreter``), one sample per invoke at the model's static batch
size; int8/uint8 inputs are quantised with the input tensor's scale/zero-point and
int8/uint8 outputs dequantised. ``reference`` holds the ORIGINAL float Keras model's
outputs on the same inputs (computed once with :func:`keras_outputs`, then compared with
every candidate).

Metrics: top-1 agreement for classifiers; accuracy and accuracy drop (points, against
the Keras model's accuracy on the same data) when labels are given; relative L2 error,
mean per-sample cosine similarity and max abs difference for every output. ``score``
(named by ``metric``) is what the threshold applies to, and every metric can fail:

- ``top1``: agreement of the arg-max with the Keras model's (a vector of class scores);
- ``binary``: agreement of the decision ``output > 0.5`` with the Keras model's (a
  one-value sigmoid output; with 0/1 labels also the accuracy);
- ``relerr``: ``1 - relative L2 error`` (clipped at 0): a threshold of 0.95 allows a 5 %
  error. For outputs of few values (a regressor's one number);
- ``regression``: mean per-sample cosine similarity (outputs of 8 values or more).

metric="auto" picks ``top1`` for a vector of more than one value that is a probability
distribution (non-negative, sums to 1), or when labels are given; ``binary`` for one value
in [0, 1] (a sigmoid); ``relerr`` for other outputs of fewer than
8 values; ``regression`` otherwise. It never picks the cosine of a 1-value output, which is
1 whenever the signs agree and so cannot fail. A classifier that outputs logits should set
metric="top1".
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.crash import stage
from edgeprune.errors import BadInput

READ_BATCH = 64  # samples read from the data and quantised at a time by run_tflite

from edgeprune.pipeline.choices import METRICS  # noqa: E402  (the CLI's --metric choices)
FEW_VALUES = 8  # outputs with fewer values per sample are compared by relative error, not cosine
SCORE_NAMES = {"top1": "top-1 agreement", "binary": "decision agreement (> 0.5)",
               "relerr": "1 - relative L2 error", "regression": "cosine similarity"}


@dataclass
class FidelityConfig:
    metric: str = "auto"
    num_threads: int = 1

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise BadInput(f"unknown fidelity metric {self.metric!r}", f"use one of: {', '.join(METRICS)}")


@dataclass
class FidelityResult:
    metric: str  # "top1", "binary", "relerr" or "regression"
    score: float  # agreement (top1, binary), 1 - rel. L2 error (relerr) or cosine (regression)
    n_samples: int
    data_source: str  # "user" or "synthetic"
    data_label: str  # e.g. "synthetic (data-free)"
    agreement: float | None = None  # top-1 agreement with the Keras model
    accuracy: float | None = None  # of the .tflite, when labels are given
    reference_accuracy: float | None = None  # of the original Keras model, same data
    accuracy_drop: float | None = None  # points: 100 * (reference_accuracy - accuracy)
    rel_l2: float = 0.0
    cosine: float = 1.0
    max_abs_diff: float = 0.0
    seconds: float = 0.0
    ms_per_sample: float = 0.0  # host invoke time, not a device latency
    notes: list[str] = field(default_factory=list)

    @property
    def score_name(self) -> str:
        return SCORE_NAMES[self.metric]

    def to_dict(self) -> dict[str, Any]:
        def r(v):
            return None if v is None else round(float(v), 6)

        return {
            "metric": self.metric,
            "score": r(self.score),
            "score_name": self.score_name,
            "n_samples": self.n_samples,
            "data_source": self.data_source,
            "data_label": self.data_label,
            "agreement": r(self.agreement),
            "accuracy": r(self.accuracy),
            "reference_accuracy": r(self.reference_accuracy),
            "accuracy_drop": r(self.accuracy_drop),
            "rel_l2": r(self.rel_l2),
            "cosine": r(self.cosine),
            "max_abs_diff": r(self.max_abs_diff),
            "seconds": round(self.seconds, 3),
            "ms_per_sample": round(self.ms_per_sample, 4),
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------- running
def keras_outputs(model, x, batch_size: int | None = None) -> np.ndarray:
    """The Keras model's outputs on ``x`` (first output if several), float32.

    ``x`` is an array or a lazy sample array (:mod:`edgeprune.pipeline.data.batching`); it is read
    batch by batch, each batch sized by the model's activation memory
    (:func:`~edgeprune.pipeline.data.batching.batch_size_for`) unless ``batch_size`` is given, and run
    through one ``tf.function`` (a graph frees each layer's activations once used; eager calls
    on batches of 256 kept every layer's alive: 6.4 GB for 64 MobileNetV2-224 samples, against
    0.85 GB with this, measured in bench/results/scale.md). Only the outputs are kept.

    When every sample fits in ONE batch within the same activation budget (all layers' activations
    of all samples at once, :func:`~edgeprune.pipeline.data.batching.batch_size_for` without its
    batch cap) and no ``batch_size`` is given, the model is called once, eagerly: no
    ``tf.function`` is traced for a model that is run once (each pruned candidate is a new model;
    the trace cost ~40 % of the call on the bundled example, bench/results/search_speed.md), and
    the memory stays within the budget the graph keeps to."""
    import warnings

    import tensorflow as tf

    from edgeprune.pipeline.data.batching import batch_size_for, iter_batches

    if not batch_size and len(x) > 0 and batch_size_for(model, max_batch=len(x)) >= len(x):
        with warnings.catch_warnings():  # Keras warns when a 1-input model gets a bare tensor
            warnings.simplefilter("ignore")
            y = model(tf.convert_to_tensor(np.asarray(x[0:len(x)], dtype=np.float32)), training=False)
        return _first_output(y)
    b = int(batch_size) if batch_size else batch_size_for(model)
    call = tf.function(lambda t: model(t, training=False), reduce_retracing=True)
    out: np.ndarray | None = None
    for start, xb in iter_batches(x, b):
        with warnings.catch_warnings():  # Keras warns when a 1-input model gets a bare tensor
            warnings.simplefilter("ignore")
            y = call(tf.convert_to_tensor(np.asarray(xb, dtype=np.float32)))
        y = _first_output(y)
        if out is None:
            out = np.empty((len(x), *y.shape[1:]), np.float32)
        out[start : start + len(y)] = y
    return out if out is not None else np.zeros((0,), np.float32)


def _first_output(y) -> np.ndarray:
    """A model call's first output (a multi-output model's list or dict), float32."""
    if isinstance(y, (list, tuple)):
        y = y[0]
    elif isinstance(y, dict):
        y = next(iter(y.values()))
    return np.asarray(y, dtype=np.float32)


def _quantize(x: np.ndarray, scale: float, zero_point: int, dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    q = np.round(x / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def run_tflite(tflite: bytes | str | Path, x: np.ndarray, num_threads: int = 1) -> tuple[np.ndarray, float]:
    """Run the .tflite on every sample of ``x`` with ai-edge-litert; returns (float outputs of
    the first output tensor, seconds spent invoking)."""
    from ai_edge_litert.interpreter import Interpreter

    if isinstance(tflite, (str, Path)):
        path = Path(tflite)
        if not path.is_file():
            raise BadInput(f"TFLite file {path} does not exist")
        content = path.read_bytes()
    else:
        content = bytes(tflite)
    from edgeprune.pipeline.convert.quiet import captured_output
    from edgeprune.pipeline.convert.xnnpack import refuse_xnnpack_hazard

    refuse_xnnpack_hazard(content)  # XNNPACK would abort the process preparing it (a flatbuffer read, no interpreter)
    with captured_output() as box:  # the runtime prints "Created ... XNNPACK delegate" on fd 2
        try:
            interp = Interpreter(model_content=content, num_threads=num_threads)
            interp.allocate_tensors()
        except Exception as exc:  # corrupt file or unresolved ops
            error: Exception | None = exc
        else:
            error = None
    if error is not None:
        detail = str(error).strip() or box.text.strip()
        if re.search(r"xnnpack", detail, re.IGNORECASE):  # a valid file the CPU delegate cannot prepare
            fix = ("ai-edge-litert's XNNPACK delegate refuses an int8 layer of this valid file (seen on tiny int8 "
                   "FULLY_CONNECTED layers, e.g. a pruned 1-unit Dense), re-converting gives the same file: "
                   "prune less, calibrate on real samples (--data), or use --quantize dynamic / float16")
        else:
            fix = "re-convert the model"
        raise BadInput(f"the .tflite cannot be loaded by ai-edge-litert: {detail[:300]}", fix) from None
    (inp,) = interp.get_input_details()[:1]
    out = interp.get_output_details()[0]
    batch = int(inp["shape"][0]) if len(inp["shape"]) else 1
    sample_shape = tuple(int(d) for d in inp["shape"][1:])
    add_channel = False
    if not hasattr(x, "shape"):
        x = np.asarray(x)
    if tuple(x.shape[1:]) != sample_shape:
        if sample_shape and sample_shape[-1] == 1 and tuple(x.shape[1:]) == sample_shape[:-1]:
            add_channel = True
        else:
            raise BadInput(f"inputs have per-sample shape {tuple(x.shape[1:])}, the .tflite expects {sample_shape}")
    in_dtype = np.dtype(inp["dtype"])
    in_scale, in_zp = inp["quantization"]
    out_dtype = np.dtype(out["dtype"])
    out_scale, out_zp = out["quantization"]
    n = len(x)
    y: np.ndarray | None = None
    seconds = 0.0
    read = max(batch, (READ_BATCH // batch) * batch)  # samples read (and quantised) at a time
    for lo in range(0, n, read):
        xr = np.asarray(x[lo : lo + read])
        if add_channel:
            xr = xr[..., None]
        if in_dtype.kind in "iu" and in_scale:
            xq = _quantize(xr.astype(np.float32), in_scale, in_zp, in_dtype)
        else:
            xq = xr.astype(in_dtype)
        del xr
        for start in range(0, len(xq), batch):
            chunk = xq[start : start + batch]
            k = len(chunk)
            if k < batch:  # pad the last chunk by repeating its first sample
                chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch - k, axis=0)])
            interp.set_tensor(inp["index"], chunk)
            t0 = time.perf_counter()
            interp.invoke()
            seconds += time.perf_counter() - t0
            r = interp.get_tensor(out["index"])[:k]
            if y is None:
                y = np.empty((n, *r.shape[1:]), np.float32)
            if out_dtype.kind in "iu" and out_scale:
                r = (r.astype(np.float32) - np.float32(out_zp)) * np.float32(out_scale)
            y[lo + start : lo + start + k] = r
    if y is None:
        return np.zeros((0,), np.float32), seconds
    return y, seconds


# --------------------------------------------------------------------------- metrics
def _looks_like_probabilities(ref: np.ndarray) -> bool:
    flat = ref.reshape(len(ref), -1)
    return bool((flat >= -1e-6).all() and np.allclose(flat.sum(axis=1), 1.0, atol=1e-3))


def choose_metric(reference: np.ndarray, labels: np.ndarray | None, requested: str = "auto") -> str:
    """The metric for ``reference`` outputs (see the module doc); never one that cannot fail."""
    if requested != "auto":
        return requested
    per_sample = reference.shape[1:]
    n_values = int(np.prod(per_sample)) if per_sample else 1
    vector = len(per_sample) == 1 and per_sample[0] > 1
    if vector and (labels is not None or _looks_like_probabilities(reference)):
        return "top1"
    if n_values == 1:
        in_unit = bool(reference.size) and float(reference.min()) >= 0.0 and float(reference.max()) <= 1.0
        return "binary" if in_unit else "relerr"  # a logit or a regressed value: its error
    if n_values < FEW_VALUES:
        return "relerr"
    return "regression"


def compare(candidate: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """rel_l2 (over all values), mean per-sample cosine similarity, max abs difference."""
    c = candidate.reshape(len(candidate), -1).astype(np.float64)
    r = reference.reshape(len(reference), -1).astype(np.float64)
    diff = c - r
    rel_l2 = float(np.linalg.norm(diff) / max(np.linalg.norm(r), 1e-12))
    nc, nr = np.linalg.norm(c, axis=1), np.linalg.norm(r, axis=1)
    dots = (c * r).sum(axis=1)
    both_zero = (nc < 1e-12) & (nr < 1e-12)
    cos = np.where(both_zero, 1.0, dots / np.maximum(nc * nr, 1e-12))
    return {"rel_l2": rel_l2, "cosine": float(cos.mean()), "max_abs_diff": float(np.abs(diff).max()) if diff.size else 0.0}


@stage("fidelity", what="tflite")
def evaluate(tflite: bytes | str | Path, reference: np.ndarray, data, config: FidelityConfig | None = None) -> FidelityResult:
    """Run ``tflite`` on ``data.x`` and compare with ``reference`` (the original Keras model's
    outputs on the same inputs, see :func:`keras_outputs`)."""
    config = config or FidelityConfig()
    reference = np.asarray(reference, dtype=np.float32)
    if len(reference) != len(data.x):
        raise BadInput(f"reference has {len(reference)} outputs for {len(data.x)} inputs")
    t0 = time.perf_counter()
    out, invoke_seconds = run_tflite(tflite, data.x, config.num_threads)
    if out.reshape(len(out), -1).shape != reference.reshape(len(reference), -1).shape:
        raise BadInput(
            f"the .tflite's output per sample {out.shape[1:]} does not match the reference {reference.shape[1:]}",
            "compare against the outputs of the model it was converted from",
        )
    res = score_outputs(out, reference, data, config)
    res.seconds = time.perf_counter() - t0
    res.ms_per_sample = 1000.0 * invoke_seconds / max(len(out), 1)
    return res


def score_outputs(out: np.ndarray, reference: np.ndarray, data, config: FidelityConfig | None = None) -> FidelityResult:
    """The fidelity of outputs ``out`` (of a .tflite, or of a pruned Keras model when the search
    screens candidates, pipeline/search/host_screen.py) against ``reference``: the same metric and
    score :func:`evaluate` judges a .tflite on."""
    config = config or FidelityConfig()
    reference = np.asarray(reference, dtype=np.float32)
    out = np.asarray(out, dtype=np.float32).reshape(reference.shape)
    metric = choose_metric(reference, data.y, config.metric)
    stats = compare(out, reference)
    res = FidelityResult(
        metric=metric,
        score=0.0,
        n_samples=int(len(out)),
        data_source=data.source,
        data_label=data.label,
        notes=list(getattr(data, "notes", []) or []),
        **stats,
    )
    if metric == "top1":
        if reference.ndim != 2 or reference.shape[1] < 2:
            raise BadInput(f"metric top1 needs a vector of class scores per sample, got output shape {reference.shape[1:]}", "use --metric regression")
        pred, ref_pred = out.argmax(axis=1), reference.argmax(axis=1)
        res.agreement = float((pred == ref_pred).mean())
        res.score = res.agreement
        if data.y is not None:
            y = np.asarray(data.y)
            if y.max(initial=0) >= reference.shape[1]:
                res.notes.append(f"labels go up to {int(y.max())} but the model has {reference.shape[1]} classes")
            res.accuracy = float((pred == y).mean())
            res.reference_accuracy = float((ref_pred == y).mean())
            res.accuracy_drop = 100.0 * (res.reference_accuracy - res.accuracy)
    elif metric == "binary":
        if int(np.prod(reference.shape[1:])) != 1:
            raise BadInput(f"metric binary needs one output value per sample, got output shape {reference.shape[1:]}",
                           "use --metric top1 or regression")
        pred, ref_pred = out.reshape(-1) > 0.5, reference.reshape(-1) > 0.5
        res.agreement = float((pred == ref_pred).mean())
        res.score = res.agreement
        if data.y is not None:
            y = np.asarray(data.y).reshape(-1)
            if y.min(initial=0) < 0 or y.max(initial=0) > 1 or not np.all(np.isin(y, (0, 1))):
                res.notes.append("labels are not 0/1: the accuracy of a one-output model needs binary labels")
            else:
                y = y.astype(bool)
                res.accuracy = float((pred == y).mean())
                res.reference_accuracy = float((ref_pred == y).mean())
                res.accuracy_drop = 100.0 * (res.reference_accuracy - res.accuracy)
    elif metric == "relerr":
        res.score = max(0.0, 1.0 - stats["rel_l2"])
    else:
        res.score = stats["cosine"]
    return res
