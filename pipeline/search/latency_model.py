"""Latency model of a board: predicted latency of a candidate from its host resource figures.

- microcontroller profiles: the MAC-based ESTIMATE the mcu backend reports
  (``MACs x cycles_per_mac / clock_hz``), labelled as such (nothing is measured);
- boards that run a TFLite interpreter (local, SSH, labgrid): a fit over whole-model
  measurements ON THE BOARD of a few width-scaled variants of the run's model (the unpruned
  model and uniform prunes of it, converted as the run converts), non-negative least squares:
  ``latency = a + b x MACs + c x activation bytes`` (per-inference overhead, compute, memory
  traffic) for a model without depthwise ops; with depthwise ops ``latency = a + b x conv/dense
  MACs + d x depthwise MACs``: the runtime runs depthwise MACs at a lower rate (memory-bound),
  and on uniform prunes the depthwise MACs and the activation bytes both scale linearly in the
  width (collinear with the intercept), so the fit keeps the one that names the cost; a conv's
  MACs scale quadratically, which separates ``b`` from ``d``. Measured on the candidates of real
  runs: bench/results/latency_model_error.md. Cached in the run directory (``latency-model.json``) per board, runtime, threads,
  quantization and model architecture (the original model's layer configs), and reused by any
  run with the same key. Its error is the median absolute relative error on the fit points
  (leave-one-out), and :func:`error_against` compares it with measured candidates.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

CACHE_FILE = "latency-model.json"
FORMAT = "edgeprune-latency-model/2"  # /2: the depthwise MACs term
FIT_RATES = (0.0, 0.3, 0.55, 0.75, 0.9)  # uniform prunes measured for the fit


@dataclass
class LatencyModel:
    kind: str  # "mac_estimate" | "fit"
    intercept_ms: float = 0.0
    ms_per_mac: float = 0.0
    ms_per_act_byte: float = 0.0
    ms_per_dw_mac: Optional[float] = None  # a depthwise op's MACs (None: as ms_per_mac)
    error: Optional[float] = None  # median absolute relative error (leave-one-out on the fit points)
    key: dict = field(default_factory=dict)
    points: list = field(default_factory=list)  # [{"rate", "macs", "act_bytes", "measured_ms", "predicted_ms"}]
    build_s: Optional[float] = None
    cached: bool = False

    def predict(self, res) -> float:
        """The latency of a :class:`~edgeprune.pipeline.search.resources.Resources` (with or without
        its per-layer rows: the totals are the same)."""
        return self.predict_figures(res.macs, res.activation_bytes, res.depthwise_macs)

    def predict_figures(self, macs: float, act_bytes: float, dw_macs: float = 0.0) -> float:
        """``macs``: all MACs, ``dw_macs`` of them in depthwise ops."""
        dw = self.ms_per_mac if self.ms_per_dw_mac is None else self.ms_per_dw_mac
        return float(self.intercept_ms + self.ms_per_mac * (macs - dw_macs) + dw * dw_macs
                     + self.ms_per_act_byte * act_bytes)

    def label(self) -> str:
        if self.kind == "mac_estimate":
            return "ESTIMATE: MACs x cycles_per_mac / clock_hz (profile figures), not measured on the board"
        dw = (f"{self.ms_per_dw_mac * 1e6:.4g} ms/depthwise MMAC + "
              if self.ms_per_dw_mac is not None and any(p.get("dw_macs") for p in self.points) else "")
        return (f"fit over {len(self.points)} whole-model measurements on the board: "
                f"{self.intercept_ms:.4g} ms + {self.ms_per_mac * 1e6:.4g} ms/MMAC + {dw}"
                f"{self.ms_per_act_byte * 1e3:.4g} ms/kB of activations")

    def describe(self) -> dict:
        d = asdict(self)
        d["label"] = self.label()
        return d


def mac_estimate(mcu) -> LatencyModel:
    return LatencyModel("mac_estimate", ms_per_mac=1000.0 * float(mcu.cycles_per_mac) / float(mcu.clock_hz))


def fit(points: list[dict]) -> LatencyModel:
    """Non-negative least squares of measured ms on [1, MACs, activation bytes], or, when a point
    has depthwise MACs (``dw_macs``), on [1, conv/dense MACs, depthwise MACs] (see the module
    docstring; ``ms_per_dw_mac`` None: depthwise MACs cost as ``ms_per_mac``)."""
    with_dw = any(p.get("dw_macs") for p in points)
    X = np.array([[1.0, p["macs"] - p.get("dw_macs", 0), p.get("dw_macs", 0) if with_dw else p["act_bytes"]]
                  for p in points], dtype=np.float64)
    y = np.array([p["measured_ms"] for p in points], dtype=np.float64)
    scale = np.maximum(X.max(axis=0), 1e-12)

    def solve(Xs, ys):
        return _nnls(Xs / scale, ys) / scale

    coef = solve(X, y)
    errs = []
    for i in range(len(points)):  # leave-one-out error
        keep = np.arange(len(points)) != i
        c = solve(X[keep], y[keep])
        errs.append(abs(float(X[i] @ c) - y[i]) / max(y[i], 1e-12))
    m = LatencyModel("fit", float(coef[0]), float(coef[1]), 0.0 if with_dw else float(coef[2]),
                     ms_per_dw_mac=float(coef[2]) if with_dw else None,
                     error=float(np.median(errs)) if errs else None)
    for p in points:
        p["predicted_ms"] = round(m.predict_figures(p["macs"], p["act_bytes"], p.get("dw_macs", 0)), 6)
    m.points = points
    return m


def _nnls(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares for a few columns: the best of the least-squares fits on every
    subset of the columns whose coefficients are all non-negative (exact: the NNLS optimum is the
    unconstrained optimum on its support)."""
    from itertools import combinations

    n = X.shape[1]
    best, best_res = np.zeros(n), float(np.sum(y ** 2))
    for k in range(1, n + 1):
        for cols in combinations(range(n), k):
            c, *_ = np.linalg.lstsq(X[:, cols], y, rcond=None)
            if np.any(c < 0):
                continue
            res = float(np.sum((X[:, cols] @ c - y) ** 2))
            if res < best_res - 1e-18:
                best_res = res
                best = np.zeros(n)
                best[list(cols)] = c
    return best


def architecture_id(model) -> str:
    cfg = json.dumps(model.get_config(), sort_keys=True, default=str)
    return hashlib.sha256(cfg.encode()).hexdigest()[:16]


def error_against(model: LatencyModel, pairs: list[tuple[float, float]]) -> Optional[float]:
    """Median absolute relative error of (predicted, measured) pairs."""
    errs = [abs(p - m) / m for p, m in pairs if m and m > 0]
    return float(np.median(errs)) if errs else None


def model_for_run(run, res0) -> Optional[LatencyModel]:
    """The run's board latency model: the MAC estimate on a microcontroller; on a board that
    runs the interpreter, the cached or newly measured fit (only when a latency budget is set,
    since building it measures on the board)."""
    prof = run.profile
    if prof.kind == "mcu":
        return mac_estimate(prof.mcu)
    if run.budgets.latency_ms is None:
        return None
    return build_or_load(run)


def _key(run) -> dict:
    prof = run.profile
    return {"board": prof.name, "kind": prof.kind, "host": getattr(getattr(prof, "connection", None), "host", None),
            "threads": run.config.measurement.threads if run.config.measurement.threads is not None else prof.threads,
            "quantize": run.config.prune.quantize, "architecture": architecture_id(run.model)}


def build_or_load(run) -> LatencyModel:
    """Load ``latency-model.json`` from the run directory when its key matches, else measure."""
    key = _key(run)
    path = Path(run.run_dir) / CACHE_FILE
    if path.is_file():
        try:
            d = json.loads(path.read_text())
            if d.get("format") == FORMAT and d.get("key") == key:
                d.pop("format", None)
                d.pop("label", None)
                m = LatencyModel(**d)
                m.cached = True
                return m
        except (OSError, ValueError, TypeError):
            pass
    return build(run.model, run.profile, key, quantize=run.config.prune.quantize, round_to=run.round_to,
                 input_range=tuple(float(v) for v in run.config.model.input_range), emit=run.emit)


def save(model: LatencyModel, run_dir) -> None:
    """Write the model to the run directory (after the run directory is opened: a fresh run
    clears it), so the next run with the same key reuses it."""
    from edgeprune.pipeline.search.run_dir import write_json_atomic

    if model.kind == "fit":
        write_json_atomic(Path(run_dir) / CACHE_FILE, dict(model.describe(), format=FORMAT))


def build(model, profile, key: dict, *, quantize: str = "int8", round_to=None, input_range=(0.0, 1.0),
          emit=None, rates=FIT_RATES, passes: int = 1) -> LatencyModel:
    """Measure uniform prunes of ``model`` on the board ``profile`` and fit (see the module docstring).
    ``passes`` > 1: every variant is measured that many times, in passes over all the variants (a
    burst of load on a shared machine hits one pass, not one variant's every measurement), and
    the lowest p50 is kept (load only adds time)."""
    import tempfile

    from edgeprune.devices.base import BenchConfig, measure
    from edgeprune.pipeline.convert import converter as conv
    from edgeprune.pipeline.prune.graph import DependencyGraph
    from edgeprune.pipeline.prune.pruner import PruneConfig, Pruner
    from edgeprune.pipeline.search.resources import ResourceModel

    t0 = time.perf_counter()
    if emit is not None:
        emit("status", text=f"latency model: measuring {len(rates)} width-scaled variants on {profile.name}")
    cc = conv.ConvertConfig(quantize=quantize, calibration=None, input_range=tuple(input_range), num_calibration=16)
    threads = key["threads"]
    bc = BenchConfig(runs=20, warmup=3, threads=threads, min_secs=0.3, warmup_min_secs=0.1, max_secs=30)
    points = []
    pruner = Pruner(model, PruneConfig(rate=max(rates), criterion="l1", step=0.05, round_to=round_to))
    with tempfile.TemporaryDirectory(prefix="edgeprune-latmodel-") as tmp:
        files = []
        for rate in rates:
            if rate > 0:
                pruner.step_to(rate)
            with conv.captured_output():
                km = pruner.build()
            res = ResourceModel(DependencyGraph(km), quantize).evaluate(None)
            r = conv.convert(km, cc)
            p = Path(tmp) / f"latmodel-{rate:.2f}.tflite"
            r.save(p)
            files.append(p)
            points.append({"rate": rate, "macs": int(res.macs), "dw_macs": int(res.depthwise_macs),
                           "act_bytes": int(res.activation_bytes)})
        for _ in range(max(1, int(passes))):
            for pt, p in zip(points, files):
                lat = measure(profile, p, bc).latency_ms
                ms = float(lat.p50 if lat.p50 is not None else lat.median)
                pt["measured_ms"] = min(ms, pt.get("measured_ms", ms))
    m = fit(points)
    m.key = key
    m.build_s = round(time.perf_counter() - t0, 3)
    return m
