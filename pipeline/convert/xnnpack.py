"""XNNPACK's limits, read from a .tflite flatbuffer without an interpreter: ai-edge-litert's XNNPACK
delegate aborts the whole process on some int8 files (found by the graph fuzzer, issue 24), so
they are refused with the tool's error before any interpreter is prepared."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeprune.errors import UnsupportedModel


XNNPACK_MAX_REQUANT = 256.0  # XNNPACK refuses an int8 conv/FC whose input*filter/output scale is >= 256
_REQUANT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")


@dataclass
class RequantHazard:
    op: str
    tensor: str  # the op's output tensor
    output_scale: float
    requant_scale: float  # input scale * largest filter scale / output scale


def xnnpack_requant_hazard(tflite: bytes) -> RequantHazard | None:
    """:func:`_requant_hazard`; None for a file that is not a readable flatbuffer (the interpreter
    then says what is wrong with it, as before)."""
    try:
        return _requant_hazard(tflite)
    except Exception:  # noqa: BLE001 - corrupt/truncated bytes: not this check's to report
        return None


def _requant_hazard(tflite: bytes) -> RequantHazard | None:
    """The first int8 conv / fully-connected op whose requantization scale (input scale x filter
    scale / output scale) reaches XNNPACK's limit of 256, read from the flatbuffer (no interpreter).

    ai-edge-litert 2.3's XNNPACK delegate ABORTS THE PROCESS ("double free or corruption") when
    it prepares such an op (measured: the fuzzer's pruned Dense(1, relu) calibrated to [0, 2e-6],
    output scale 7.8e-9, requantization scale 2,407; the same file with that scale raised to give
    251.7 loads, 262 aborts; a Conv2D output made as small aborts too). It happens when a layer's
    output is (almost) constant on the calibration data. Float files return None."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(bytearray(tflite), 0)
    wanted = {getattr(schema.BuiltinOperator, n): n for n in _REQUANT_OPS}
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        codes.append(max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode())))
    if not any(c in wanted for c in codes):
        return None

    def scales(sg, index: int) -> np.ndarray | None:
        if index < 0:
            return None
        t = sg.Tensors(index)
        if t.Type() not in (schema.TensorType.INT8, schema.TensorType.UINT8):
            return None
        q = t.Quantization()
        if q is None or q.ScaleLength() == 0:
            return None
        return q.ScaleAsNumpy()

    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        for o in range(sg.OperatorsLength()):
            op = sg.Operators(o)
            code = codes[op.OpcodeIndex()]
            if code not in wanted or op.InputsLength() < 2 or op.OutputsLength() < 1:
                continue
            s_in, s_w, s_out = scales(sg, op.Inputs(0)), scales(sg, op.Inputs(1)), scales(sg, op.Outputs(0))
            if s_in is None or s_w is None or s_out is None:
                continue
            out_min = float(np.min(s_out))
            if out_min <= 0:
                continue
            ratio = float(np.max(s_in)) * float(np.max(s_w)) / out_min
            if ratio >= XNNPACK_MAX_REQUANT * (1 - 1e-3):
                name = sg.Tensors(op.Outputs(0)).Name()
                return RequantHazard(wanted[code], name.decode() if isinstance(name, bytes) else str(name), out_min, ratio)
    return None


def refuse_xnnpack_hazard(tflite: bytes) -> None:
    """Raise UnsupportedModel (the tool's error, naming the tensor and its scale) instead of
    letting the XNNPACK delegate abort the process; see xnnpack_requant_hazard."""
    hazard = xnnpack_requant_hazard(tflite)
    if hazard is None:
        return
    raise UnsupportedModel(
        f"the int8 .tflite cannot be run by ai-edge-litert's XNNPACK delegate: {hazard.op} output "
        f"'{hazard.tensor}' has scale {hazard.output_scale:.3g} (its requantization scale "
        f"{hazard.requant_scale:.4g} reaches XNNPACK's limit of {XNNPACK_MAX_REQUANT:g}; the runtime would abort "
        "the process loading it)",
        "the layer's output is (almost) constant on the calibration samples (a dead or pruned-away unit): "
        "calibrate on real samples (--data), prune less, or use --quantize dynamic / float16",
    )
