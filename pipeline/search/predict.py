"""Predict a candidate's .tflite size and MACs from its pruned Keras model, before converting.

Converting (TFLite converter + int8 calibration) is the slow part of a candidate. Under a
flash budget most low-rate candidates are too big anyway, so ``edgeprune run`` predicts each
candidate's size from its weights and skips converting those that cannot fit.

- **weight bytes**: every weight the .tflite stores, in the bytes the quantization stores it
  with. BatchNormalization is folded into the preceding convolution by the converter, so
  its parameters are not stored (its per-channel shift becomes the conv's bias, counted).
  ``int8``: kernels 1 byte, biases 4 (int32); ``float16``: 2 bytes each; ``float32``: 4;
  ``dynamic``: kernels of 1024+ elements 1 byte, the rest 4. Per-channel quantization
  parameters (float32 scale + int64 zero point, for the kernel and for its int32 bias) count
  24 bytes per output channel in int8.
- **MACs**: multiply-accumulates of one inference (Conv2D, DepthwiseConv2D, SeparableConv2D,
  Conv1D, Dense), from the layers' output shapes.
- **size**: weight bytes + a fixed overhead (graph, op and tensor tables, metadata)
  learnt from the first candidate's REAL conversion: ``overhead = real size - weight
  bytes``. The margin is the same first candidate's error before that calibration (how far
  the weights alone are from the real size, as a fraction), at least :data:`MIN_MARGIN`;
  a candidate is skipped only when its prediction minus that margin is still over the budget.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from edgeprune.devices.sizes import format_size

MIN_MARGIN = 0.05  # never skip a candidate predicted within 5 % of the budget
_CONV = ("Conv1D", "Conv2D", "Conv3D", "Conv2DTranspose")
_BN = ("BatchNormalization",)


@dataclass
class Prediction:
    params: int
    weight_bytes: int
    macs: int
    size_bytes: Optional[int] = None  # weight bytes + calibrated overhead (None before calibration)
    margin: Optional[float] = None

    def to_dict(self) -> dict:
        return asdict(self)


def _bytes_per(quantize: str, kind: str, n: int) -> float:
    if quantize == "float32":
        return 4.0
    if quantize == "float16":
        return 2.0
    if quantize == "dynamic":
        return 1.0 if kind == "kernel" and n >= 1024 else 4.0
    return 1.0 if kind == "kernel" else 4.0  # int8: int8 kernels, int32 biases


def weight_bytes(model, quantize: str) -> int:
    """Bytes of the weights as the converted model stores them (see the module docstring)."""
    total = 0.0
    for layer in _layers(model):
        cls = type(layer).__name__
        if cls in _BN:
            continue  # folded into the preceding conv by the converter
        for w in layer.weights:
            n = int(np.prod(w.shape)) if len(w.shape) else 1
            name = w.name.split("/")[-1].split(":")[0]
            kind = "kernel" if ("kernel" in name or len(w.shape) >= 2) else "bias"
            total += n * _bytes_per(quantize, kind, n)
            if quantize == "int8" and kind == "kernel" and len(w.shape) >= 2:
                out = _out_shape(layer)
                channels = out[-1] if out else int(w.shape[-1])
                total += 24 * channels  # per-channel scale (float32) + zero point (int64), kernel and bias
    return int(total)


def _layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:  # nested models
            yield from _layers(layer)
        else:
            yield layer


def _out_shape(layer):
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):
        return None
    return [int(s) if s is not None else 1 for s in shape]


def count_macs(model) -> int:
    """Multiply-accumulates of one inference (batch 1) of the Keras model."""
    total = 0
    for layer in _layers(model):
        cls = type(layer).__name__
        out = _out_shape(layer)
        if out is None:
            continue
        spatial = int(np.prod(out[1:-1])) if len(out) > 2 else 1
        ws = [w for w in layer.weights if len(w.shape) >= 2]
        if not ws:
            continue
        k = [int(s) for s in ws[0].shape]
        if cls in _CONV:
            total += spatial * int(np.prod(k))  # k = (*kernel, in/groups, out)
        elif cls == "DepthwiseConv2D":
            total += spatial * int(np.prod(k))  # (kh, kw, in, multiplier)
        elif cls == "SeparableConv2D":
            dw, pw = [int(s) for s in ws[0].shape], [int(s) for s in ws[1].shape]
            total += spatial * int(np.prod(dw)) + spatial * int(np.prod(pw))
        elif cls == "Dense":
            total += spatial * int(np.prod(k))
    return int(total)


def predict(model, quantize: str) -> Prediction:
    return Prediction(params=int(model.count_params()), weight_bytes=weight_bytes(model, quantize),
                      macs=count_macs(model))


class FlashPredictor:
    """Calibrated on the first candidate's real conversion; then says which candidates to skip."""

    def __init__(self, budget: Optional[int], runtime_bytes: int = 0):
        self.budget = budget
        self.runtime_bytes = int(runtime_bytes)  # added to the file on a microcontroller
        self.overhead: Optional[int] = None
        self.margin: Optional[float] = None
        self.check: Optional[dict] = None

    def key(self) -> list:
        """What a skip depended on (a resumed run re-decides when it changed)."""
        return [self.budget, self.runtime_bytes]

    @property
    def ready(self) -> bool:
        return self.overhead is not None

    def calibrate(self, pred: Prediction, real_size: int) -> None:
        """Learn the overhead and the margin from a real conversion (the first candidate)."""
        self.overhead = int(real_size) - pred.weight_bytes
        self.margin = max(MIN_MARGIN, abs(self.overhead) / max(int(real_size), 1))
        self.check = {"weight_bytes": pred.weight_bytes, "real_size_bytes": int(real_size),
                      "overhead_bytes": self.overhead, "margin": round(self.margin, 4)}

    def size(self, pred: Prediction) -> int:
        pred.size_bytes = pred.weight_bytes + (self.overhead or 0)
        pred.margin = self.margin
        return pred.size_bytes

    def skip_reason(self, pred: Prediction) -> Optional[str]:
        """Why this candidate cannot fit the flash budget (None: convert it)."""
        if self.budget is None or not self.ready:
            return None
        flash = self.size(pred) + self.runtime_bytes
        low = flash * (1.0 - self.margin)
        if low <= self.budget:
            return None
        what = "model + runtime" if self.runtime_bytes else ".tflite"
        return (f"predicted {what} {format_size(flash)} (at least {format_size(low)} with the "
                f"{100 * self.margin:.0f}% margin) is over the {format_size(self.budget)} flash budget")
