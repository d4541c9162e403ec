"""Backend ``mcu``: a microcontroller, where there is nothing to connect to.

* flash = model bytes + the profile's ``runtime_flash_bytes`` (computed, exact for the model);
* RAM = the TFLite-Micro tensor arena measured on the host (:func:`edgeprune.devices.tflm.measure_arena`)
  + the profile's ``runtime_ram_bytes``;
* latency = MACs x ``cycles_per_mac`` / ``clock_hz``: an ESTIMATE, labelled as such in the
  Measurement (``measured["latency"] is False``, ``estimates["latency"]`` gives the method).

MACs are counted from the .tflite itself: ops and tensor shapes read with the ai-edge-litert
interpreter (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, TRANSPOSE_CONV, BATCH_MATMUL count
multiply-accumulates; ADD/MUL/pooling/activations count one operation per output element, or
per input element for pooling).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from edgeprune.errors import BadInput
from edgeprune.devices.base import BenchConfig, Device, LatencyStats, Measurement, file_sha256, register
from edgeprune.devices.sizes import format_size

LATENCY_METHOD = "ESTIMATE: MACs x cycles_per_mac / clock_hz (profile figures), not measured on the board"

_ELEMENTWISE = {"ADD", "SUB", "MUL", "DIV", "MAXIMUM", "MINIMUM", "SQUARED_DIFFERENCE", "RELU", "RELU6", "RELU_N1_TO_1",
                "LOGISTIC", "TANH", "HARD_SWISH", "LEAKY_RELU", "PRELU", "QUANTIZE", "DEQUANTIZE", "SOFTMAX", "LOG_SOFTMAX"}
_POOL = {"AVERAGE_POOL_2D", "MAX_POOL_2D", "MEAN", "SUM", "REDUCE_MAX", "L2_POOL_2D"}


@dataclass
class MacCount:
    total: int
    by_op: dict = field(default_factory=dict)  # op name -> MACs
    ops: int = 0


def count_macs(tflite_path) -> MacCount:
    """Multiply-accumulates of one inference, from the model's ops and tensor shapes."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    try:
        interp = Interpreter(model_path=str(tflite_path))
    except Exception as exc:
        raise BadInput(f"cannot read {tflite_path}: {exc}", "pass a valid .tflite file") from None
    tensors = {t["index"]: t for t in interp.get_tensor_details()}

    def shape(i):
        return [int(s) for s in tensors[i]["shape"]] if i >= 0 and i in tensors else []

    by_op: dict = {}
    total = 0
    ops = interp._get_ops_details()
    for op in ops:
        name = op["op_name"]
        ins = [int(i) for i in op["inputs"]]
        outs = [int(i) for i in op["outputs"]]
        out_shape = shape(outs[0]) if outs else []
        out_elems = int(np.prod(out_shape)) if out_shape else 0
        macs = 0
        if name == "CONV_2D" and len(ins) >= 2:
            w = shape(ins[1])  # [out_c, kh, kw, in_c]
            macs = out_elems * (w[1] * w[2] * w[3] if len(w) == 4 else 0)
        elif name == "DEPTHWISE_CONV_2D" and len(ins) >= 2:
            w = shape(ins[1])  # [1, kh, kw, out_c]
            macs = out_elems * (w[1] * w[2] if len(w) == 4 else 0)
        elif name == "CONV_3D" and len(ins) >= 2:
            w = shape(ins[1])  # [kd, kh, kw, in_c, out_c]
            macs = out_elems * (int(np.prod(w[:4])) if len(w) == 5 else 0)
        elif name == "FULLY_CONNECTED" and len(ins) >= 2:
            w = shape(ins[1])  # [units, in]
            macs = out_elems * (w[1] if len(w) == 2 else 0)
        elif name == "TRANSPOSE_CONV" and len(ins) >= 3:
            w = shape(ins[1])  # [out_c, kh, kw, in_c]; input is ins[2]
            x = shape(ins[2])
            macs = (int(np.prod(x)) * w[0] * w[1] * w[2]) if len(w) == 4 and x else 0
        elif name == "BATCH_MATMUL" and len(ins) >= 2:
            a = shape(ins[0])
            macs = out_elems * (a[-1] if a else 0)
        elif name in _POOL and ins:
            macs = int(np.prod(shape(ins[0]))) if shape(ins[0]) else out_elems
        elif name in _ELEMENTWISE:
            macs = out_elems
        if macs:
            by_op[name] = by_op.get(name, 0) + int(macs)
            total += int(macs)
    return MacCount(total=total, by_op=by_op, ops=len(ops))


@register("mcu")
class McuDevice(Device):
    """No transport: put/run/get are not available; bench() computes and estimates."""

    def put(self, local_path, remote_name):
        raise BadInput(f"{self.profile.name} is a microcontroller: nothing to copy files to",
                       "use `edgeprune bench` (it estimates on the host)")

    def run(self, argv, timeout):
        raise BadInput(f"{self.profile.name} is a microcontroller: nothing to run commands on",
                       "use `edgeprune bench` (it estimates on the host)")

    def get(self, remote_name):
        raise BadInput(f"{self.profile.name} is a microcontroller: nothing to read from", "use `edgeprune bench`")

    def check(self) -> dict:
        missing = []
        try:
            import tflite_micro

            tflm = getattr(tflite_micro, "__version__", None)
        except Exception as exc:
            tflm = None
            missing.append({"what": "tflite-micro (host)", "error": str(exc), "fix": "pip install tflite-micro"})
        mcu = self.profile.mcu
        return {"ok": not missing, "mode": "check", "kind": "mcu", "tflite_micro_version": tflm,
                "clock_hz": mcu.clock_hz, "cycles_per_mac": mcu.cycles_per_mac, "core": mcu.core,
                "note": "nothing to connect to: flash and RAM are computed on the host, latency is an estimate",
                "missing": missing}

    def bench(self, tflite_path: Path, config: BenchConfig) -> Measurement:
        from edgeprune.devices.tflm import measure_arena

        tflite_path = Path(tflite_path)
        mcu = self.profile.mcu
        arena = measure_arena(tflite_path, timeout=config.timeout or 60)
        macs = count_macs(tflite_path)
        est_ms = macs.total * mcu.cycles_per_mac / mcu.clock_hz * 1000.0
        model_bytes = tflite_path.stat().st_size
        lat = LatencyStats(median=est_ms, p90=est_ms, mean=est_ms, std=0.0, min=est_ms, max=est_ms)
        return Measurement(
            device=self.profile.name,
            kind="mcu",
            latency_ms=lat,
            runs=0,
            warmup=0,
            threads=1,
            load_ms=None,
            first_inference_ms=None,
            peak_rss_bytes=None,
            runtime="tflite-micro",
            runtime_version=arena.tflm_version,
            arch=mcu.core,
            python_version=None,
            output_checksum=None,
            model_bytes=model_bytes,
            model_sha256=file_sha256(tflite_path),
            ram_bytes=arena.arena_bytes + mcu.runtime_ram_bytes,
            flash_bytes=model_bytes + mcu.runtime_flash_bytes,
            measured={"latency": False, "load": False, "first_inference": False, "ram": False, "flash": False,
                      "output": False, "arena": True},
            estimates={
                "latency": f"{LATENCY_METHOD}: {macs.total:,} MACs x {mcu.cycles_per_mac:g} / {mcu.clock_hz:,} Hz",
                "ram": f"TFLite-Micro arena measured on the host ({format_size(arena.arena_bytes)}) + profile "
                       f"runtime_ram_bytes ({format_size(mcu.runtime_ram_bytes)})",
                "flash": f"model file ({format_size(model_bytes)}) + profile runtime_flash_bytes "
                         f"({format_size(mcu.runtime_flash_bytes)})",
            },
            extra={"arena": arena.to_dict(), "macs": macs.total, "macs_by_op": macs.by_op, "ops": macs.ops,
                   "clock_hz": mcu.clock_hz, "cycles_per_mac": mcu.cycles_per_mac, "estimate": True},
        )
