"""``edgeprune run``: find the largest prune rate whose converted model fits the board.

One entry point, :func:`run` (``RunConfig`` in, ``RunResult`` out); the CLI only renders.

The search
----------
1. **Host phase** (cheap, no device). Candidate 0 is the unpruned model (rate 0). Pruning
   then goes progressively in steps of ``step`` (each step continues from the previous
   candidate's state, as the criterion requires) up to ``max_rate``. Every candidate is
   built, converted to TFLite and checked on the host: its fidelity against the original
   float Keras model (on the evaluation data) and its size against the flash budget (the
   .tflite file on a Linux board; file + runtime overhead on a microcontroller). Pruning
   stops after the first candidate whose fidelity falls below the threshold, or at
   ``max_rate``. Each candidate's ``.keras``, ``.tflite``, ``.plan.json`` and metrics
   ``.json`` are written atomically before the next one starts (the ``.json`` is written
   last: it marks the candidate done).
2. **Device phase** (slow, shared). Only candidates that passed every host check can be
   the answer. Latency and memory fall as the rate rises, so the host-passing candidates
   are measured from the LARGEST rate down: the first one that meets the RAM and latency
   budgets is the answer (usually one device run). When one misses a device budget, the
   next smaller rate is measured only if the miss is within measurement noise
   (``NOISE_TOLERANCE``); a clear miss means every smaller rate (a bigger model) misses too,
   so they are not measured. Measurements are cached by the .tflite's sha256 (plus device
   and run settings) in ``measurements.json``: the same file is never measured twice, across
   candidates and across ``--resume``. ``measure_all`` measures every host-passing candidate
   (for the latency curve), still through the cache.

The answer is the largest rate whose candidate meets every budget and the fidelity
threshold; :data:`EXIT_NO_CANDIDATE` (3) when there is none, with the reason (which limit
failed, and by how much).

The run directory
-----------------
``run.json`` (the configuration and its fingerprint), per candidate ``cand-XX-rateR.keras``,
``.tflite``, ``.plan.json`` and ``.json``, ``measurements.json``, and at the end
``best.tflite``, ``report.json``, ``report.md`` and ``report.png``.

- ``resume=True`` continues a run with the same fingerprint (model, data, quantization,
  criterion, step, seed, input range): finished candidates and cached measurements are
  reused (budgets, thresholds, ``max_rate``, the device and its run settings may change).
- Without ``resume``, a directory holding a run with the SAME fingerprint is started over
  (its edgeprune files are removed); one holding a DIFFERENT configuration is refused
  (bad input) unless ``force=True``; a non-empty folder that is not a run directory is
  always refused (nothing of the user's is ever deleted).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from edgeprune.devices.base import file_sha256
from edgeprune.errors import EXIT_NO_CANDIDATE, EXIT_OK, BadInput, DeviceError, EdgepruneError

RUN_FORMAT = "edgeprune-run/1"
CANDIDATE_FORMAT = "edgeprune-candidate/1"
DEFAULT_MIN_FIDELITY = 0.95
DEFAULT_STEP = 0.05
DEFAULT_MAX_RATE = 0.9
SYNTHETIC_SAMPLES = 200
CALIBRATION_MAX = 200
# A device-budget miss within this fraction may be measurement noise: then the next smaller
# rate is still measured. A larger miss ends the device phase (smaller rates are bigger models).
NOISE_TOLERANCE = {"latency": 0.10, "ram": 0.05}
QUANTIZE_CHOICES = ("int8", "float16", "float32", "dynamic")

STRATEGY = (
    "host first: every candidate is converted and checked on the host (fidelity on the "
    "evaluation data, .tflite size against the flash budget); pruning stops at the first "
    "candidate below the fidelity threshold. Device: only candidates that pass every host "
    "check are measured, from the largest rate down; the first that meets the RAM and "
    "latency budgets is the answer. After a miss, the next smaller rate is measured only if "
    "the miss was within noise (latency 10%, RAM 5%), since smaller rates are bigger models. "
    "Measurements are cached by the .tflite's sha256, so no file is measured twice."
)

Progress = Callable[..., None]


# --------------------------------------------------------------------------- config / result
@dataclass
class RunConfig:
    model: Optional[Path] = None  # None: the bundled example
    device: str = "local"
    host: Optional[str] = None
    user: Optional[str] = None
    port: Optional[int] = None
    devices_dir: Optional[Path] = None
    trust_new_host: bool = False
    budget: Any = None  # flash / model-file bytes: int or "2MB"; None: the profile's
    ram_budget: Any = None
    latency_budget: Optional[float] = None  # ms
    min_fidelity: Optional[float] = None  # default DEFAULT_MIN_FIDELITY unless max_accuracy_drop is given
    max_accuracy_drop: Optional[float] = None  # points
    data: Optional[Path] = None
    quantize: str = "int8"
    criterion: str = "paoding"
    step: float = DEFAULT_STEP
    max_rate: float = DEFAULT_MAX_RATE
    out: Optional[Path] = None
    resume: bool = False
    force: bool = False
    runs: int = 50
    warmup: int = 5
    measure_all: bool = False
    input_range: tuple[float, float] = (0.0, 1.0)
    seed: int = 0


@dataclass
class RunResult:
    report: dict
    exit_code: int
    run_dir: Path
    files: dict = field(default_factory=dict)

    @property
    def chosen(self) -> Optional[dict]:
        return self.report.get("chosen")

    def to_json(self) -> str:
        return json.dumps(self.report, indent=1)


# --------------------------------------------------------------------------- small helpers
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def rate_schedule(step: float, max_rate: float) -> list[float]:
    """0, step, 2*step, ... <= max_rate, and max_rate itself last (rounded, resume-stable)."""
    rates = [0.0]
    k = 1
    while True:
        r = round(k * step, 6)
        if r > max_rate + 1e-9:
            break
        rates.append(r)
        k += 1
    if max_rate > 0 and rates[-1] < max_rate - 1e-9:
        rates.append(round(max_rate, 6))
    return rates


def candidate_name(index: int, rate: float) -> str:
    r = f"{rate:.2f}" if abs(rate * 100 - round(rate * 100)) < 1e-6 else f"{rate:.4f}"
    return f"cand-{index:02d}-rate{r}"


def write_json_atomic(path: Path, data) -> None:
    from edgeprune.pipeline.plan import write_json_atomic as _w

    _w(path, data)


def _copy_atomic(src: Path, dst: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _save_keras_atomic(model, path: Path) -> None:
    tmp = path.parent / f".{path.stem}.{os.getpid()}.tmp.keras"
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def fmt_bytes(n: Optional[float]) -> str:
    if n is None:
        return "-"
    from edgeprune.pipeline.report import _size

    return _size(n)


def _parse_budget(value, what: str) -> Optional[int]:
    if value is None:
        return None
    from edgeprune.devices.sizes import parse_size

    return parse_size(value, what=what)


# --------------------------------------------------------------------------- validation
def _validate(config: RunConfig) -> None:
    """Checks that need neither TensorFlow nor the device (fast bad-input errors)."""
    if not (0.0 < float(config.step) <= 1.0):
        raise BadInput(f"--step {config.step:g} must be in (0, 1]", "e.g. --step 0.05 (5% of the channels per step)")
    if not (0.0 <= float(config.max_rate) < 1.0):
        raise BadInput(f"--max-rate {config.max_rate:g} must be in [0, 1)", "e.g. --max-rate 0.9")
    if config.quantize not in QUANTIZE_CHOICES:
        raise BadInput(f"unknown --quantize {config.quantize!r}", f"use one of: {', '.join(QUANTIZE_CHOICES)}")
    if config.latency_budget is not None and not float(config.latency_budget) > 0:
        raise BadInput(f"--latency-budget {config.latency_budget:g} ms must be positive", "e.g. --latency-budget 20")
    if config.min_fidelity is not None and not (0.0 < float(config.min_fidelity) <= 1.0):
        raise BadInput(f"--min-fidelity {config.min_fidelity:g} must be in (0, 1]",
                       "it is the top-1 agreement (classifiers) or cosine similarity, e.g. 0.95")
    if config.max_accuracy_drop is not None and not (0.0 <= float(config.max_accuracy_drop) <= 100.0):
        raise BadInput(f"--max-accuracy-drop {config.max_accuracy_drop:g} must be in [0, 100] points", "e.g. 1.0")
    if config.runs < 1:
        raise BadInput(f"--runs must be at least 1, got {config.runs}")
    if config.warmup < 0:
        raise BadInput(f"--warmup must be 0 or more, got {config.warmup}")
    lo, hi = config.input_range
    if not float(lo) < float(hi):
        raise BadInput(f"input range {config.input_range} is empty", "give LO < HI, e.g. 0,1")
    if config.model is not None:
        p = Path(config.model)
        if not p.exists():
            raise BadInput(f"model file {p} does not exist", "check the path (a .keras or .h5 Keras model), or leave "
                           "--model out to use the bundled example")
    if config.data is not None:
        p = Path(config.data)
        if not p.exists():
            raise BadInput(f"data file {p} does not exist", "check the path (.npz with x[, y], or .npy)")
        if p.is_file() and not os.access(p, os.R_OK):
            raise BadInput(f"data file {p} is not readable", "check its permissions")


def _prepare_dir(path: Path) -> None:
    """Create the run dir and prove it is writable (a probe file), else BadInput."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise BadInput(f"output dir {path} is not writable: {exc.strerror or exc}",
                       "choose another --out (a folder you can write to)") from None


# --------------------------------------------------------------------------- the run dir
_OUR_FILES = re.compile(r"^(cand-\d+-rate[0-9.]+\.(keras|tflite|json|plan\.json)|best\.tflite|report\.(json|md|png)"
                        r"|measurements\.json|run\.json|\..*\.tmp.*|\.write-probe-.*)$")


def _clear_run_dir(path: Path) -> None:
    for f in path.iterdir():
        if f.is_file() and _OUR_FILES.match(f.name):
            f.unlink()


def _clean_tmp(path: Path) -> None:
    for f in path.iterdir():
        if f.is_file() and f.name.startswith(".") and (".tmp" in f.name or f.name.startswith(".write-probe-")):
            f.unlink(missing_ok=True)


# --------------------------------------------------------------------------- the run
class _Run:
    def __init__(self, config: RunConfig, progress: Optional[Progress]):
        self.c = config
        self.emit = progress or (lambda *a, **k: None)
        self.notes: list[str] = []
        self.t_start = time.perf_counter()

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        c = self.c
        _validate(c)
        from edgeprune.devices.profile import load_profile

        self.profile = load_profile(c.device, search_dirs=[c.devices_dir] if c.devices_dir else None,
                                    host=c.host, user=c.user, port=c.port)
        if c.trust_new_host:
            if self.profile.connection is None:
                raise BadInput(f"--trust-new-host applies to SSH devices; {self.profile.name!r} is kind {self.profile.kind!r}")
            self.profile = self.profile.model_copy(update={"connection": self.profile.connection.model_copy(
                update={"trust_new_host": True})})
        lim = self.profile.limits
        self.budgets = {
            "flash_bytes": self._budget(_parse_budget(c.budget, "--budget"), lim.flash_bytes),
            "ram_bytes": self._budget(_parse_budget(c.ram_budget, "--ram-budget"), lim.ram_bytes),
            "latency_ms": self._budget(float(c.latency_budget) if c.latency_budget is not None else None, lim.latency_ms),
        }
        if c.min_fidelity is None and c.max_accuracy_drop is None:
            self.min_fidelity: Optional[float] = DEFAULT_MIN_FIDELITY
        else:
            self.min_fidelity = float(c.min_fidelity) if c.min_fidelity is not None else None
        self.max_drop = float(c.max_accuracy_drop) if c.max_accuracy_drop is not None else None

        from edgeprune.pipeline.example import example_data_path, example_model_path

        example = example_model_path()
        self.model_path = Path(c.model) if c.model is not None else example
        self.is_example = self.model_path.resolve() == example.resolve()
        self.data_path = Path(c.data) if c.data is not None else (example_data_path() if self.is_example else None)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.model_path.stem)
        dev = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.profile.name)
        self.run_dir = Path(c.out) if c.out is not None else Path("edgeprune-runs") / f"{name}-{dev}-{c.quantize}"
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise BadInput(f"--out {self.run_dir} is a file, not a folder", "choose a folder for the run")
        _prepare_dir(self.run_dir)

    def _budget(self, option, profile_value) -> dict:
        if option is not None:
            return {"value": option, "source": "option"}
        return {"value": profile_value, "source": "profile" if profile_value is not None else None}

    # ---------------------------------------------------------------- load (TF)
    def load(self) -> None:
        from edgeprune.pipeline import convert as conv

        conv.quiet_import_tensorflow()
        from edgeprune.pipeline import fidelity as fid
        from edgeprune.pipeline.data import load_eval_data, synthetic_data
        from edgeprune.pipeline.importance import CRITERIA
        from edgeprune.pipeline.loading import load_model

        c = self.c
        if c.criterion not in CRITERIA:
            raise BadInput(f"unknown --criterion {c.criterion!r}", f"use one of: {', '.join(CRITERIA)}")
        self.emit("status", text=f"loading {self.model_path.name}")
        self.model = load_model(self.model_path)
        self.model_sha = file_sha256(self.model_path)
        if self.data_path is not None:
            data = load_eval_data(self.data_path, self.model)
            n = data.n
            if n >= 50:  # hold out a calibration subset: int8 is never calibrated on the evaluation samples
                import numpy as np

                idx = np.arange(n)
                cal = idx[::5][:CALIBRATION_MAX]
                rest = np.setdiff1d(idx, cal)
                self.calibration = data.x[cal]
                data.x = data.x[rest]
                if data.y is not None:
                    data.y = data.y[rest]
                cal_note = f"{len(cal)} samples of the data (every 5th), held out from the evaluation"
            else:
                self.calibration = data.x
                cal_note = f"all {n} samples (fewer than 50: the evaluation samples themselves)"
                self.notes.append(f"int8 calibrated on the evaluation data itself ({n} samples, fewer than 50)")
            self.data = data
            self.data_id = "file:" + file_sha256(self.data_path)
        else:
            self.data = synthetic_data(self.model, SYNTHETIC_SAMPLES, tuple(c.input_range), seed=1)
            self.calibration = None
            cal_note = f"{SYNTHETIC_SAMPLES} synthetic samples uniform in {list(c.input_range)} (seed 0)"
            self.data_id = f"synthetic:{SYNTHETIC_SAMPLES}:seed1:{list(c.input_range)}"
            self.notes.append("no --data: fidelity is measured on SYNTHETIC (data-free) inputs, not on real samples")
        self.calibration_note = cal_note if c.quantize == "int8" else None
        if self.max_drop is not None and self.data.y is None:
            raise BadInput("--max-accuracy-drop needs labelled data", "pass --data with labels (an .npz with x and y), "
                           "or use --min-fidelity")
        self.reference = fid.keras_outputs(self.model, self.data.x)
        self.fid_config = fid.FidelityConfig()

    # ---------------------------------------------------------------- run dir state
    def fingerprint(self) -> dict:
        c = self.c
        return {"model_sha256": self.model_sha, "data": self.data_id, "quantize": c.quantize, "criterion": c.criterion,
                "step": round(float(c.step), 6), "seed": c.seed, "input_range": [float(v) for v in c.input_range]}

    def open_run_dir(self) -> None:
        c, d = self.c, self.run_dir
        run_json = d / "run.json"
        fp = self.fingerprint()
        self.resumed = False
        if run_json.exists():
            try:
                old = json.loads(run_json.read_text())
                old_fp = old["fingerprint"]
            except (OSError, ValueError, KeyError, TypeError):
                if not c.force:
                    raise BadInput(f"{run_json} is unreadable or not an edgeprune run",
                                   "pass --force to start over there, or choose another --out") from None
                old_fp = None
            if old_fp == fp:
                if c.resume:
                    self.resumed = True
                else:
                    self.notes.append(f"{d} held a run of the same configuration: started over "
                                      "(pass --resume to reuse its candidates)")
                    _clear_run_dir(d)
            else:
                if not c.force:
                    diffs = [f"{k}: {old_fp.get(k)!r} there, {fp[k]!r} now" for k in fp if old_fp.get(k) != fp[k]] \
                        if isinstance(old_fp, dict) else ["unreadable"]
                    raise BadInput(f"--out {d} holds a run of a different configuration ({'; '.join(diffs)})",
                                   "pass --force to discard it and start over, or choose another --out")
                self.notes.append(f"--force: discarded the run of a different configuration in {d}")
                _clear_run_dir(d)
        else:
            others = [f.name for f in d.iterdir() if not _OUR_FILES.match(f.name)]
            if others:
                raise BadInput(f"--out {d} is not empty and is not an edgeprune run directory "
                               f"(holds {', '.join(sorted(others)[:3])}{'...' if len(others) > 3 else ''})",
                               "choose a new or empty folder for --out")
            if c.resume:
                self.notes.append(f"--resume: nothing to resume in {d}; started a new run")
            _clear_run_dir(d)
        _clean_tmp(d)
        write_json_atomic(run_json, {"format": RUN_FORMAT, "fingerprint": fp, "config": self.config_dict(),
                                     "updated_at": _now()})
        self.cache_path = d / "measurements.json"
        try:
            self.cache = json.loads(self.cache_path.read_text()) if self.cache_path.exists() else {}
        except (OSError, ValueError):
            self.cache = {}
            self.notes.append("measurements.json was unreadable: device measurements start afresh")

    def config_dict(self) -> dict:
        c = self.c
        return {
            "model": str(self.model_path), "example": self.is_example, "device": self.profile.name,
            "data": str(self.data_path) if self.data_path else None, "quantize": c.quantize, "criterion": c.criterion,
            "step": c.step, "max_rate": c.max_rate, "budgets": {k: v["value"] for k, v in self.budgets.items()},
            "min_fidelity": self.min_fidelity, "max_accuracy_drop": self.max_drop, "runs": c.runs, "warmup": c.warmup,
            "measure_all": c.measure_all, "input_range": list(c.input_range), "seed": c.seed,
        }

    # ---------------------------------------------------------------- checks
    def fidelity_ok(self, fr: dict) -> bool:
        ok = True
        if self.min_fidelity is not None:
            ok = ok and fr["score"] is not None and fr["score"] >= self.min_fidelity - 1e-12
        if self.max_drop is not None:
            ok = ok and fr["accuracy_drop"] is not None and fr["accuracy_drop"] <= self.max_drop + 1e-9
        return ok

    def host_flash(self, size: int) -> int:
        if self.profile.kind == "mcu":
            return size + int(self.profile.mcu.runtime_flash_bytes)
        return size

    def host_checks(self, rec: dict) -> dict:
        fr = rec["fidelity"]
        flash = rec["flash_bytes"]
        fb = self.budgets["flash_bytes"]["value"]
        return {
            "fidelity": {"ok": self.fidelity_ok(fr), "value": fr["score"], "accuracy_drop": fr.get("accuracy_drop"),
                         "min": self.min_fidelity, "max_accuracy_drop": self.max_drop},
            "flash": {"ok": fb is None or flash <= fb, "value": flash, "limit": fb},
        }

    # ---------------------------------------------------------------- host phase
    def host_phase(self) -> None:
        from edgeprune.pipeline.plan import Plan
        from edgeprune.pipeline.prune import PruneConfig, Pruner

        c, d = self.c, self.run_dir
        self.rates = rate_schedule(float(c.step), float(c.max_rate))
        self.candidates: list[dict] = []
        self.reused = 0
        if self.resumed:
            for i, r in enumerate(self.rates):
                path = d / f"{candidate_name(i, r)}.json"
                files_ok = all((d / f"{candidate_name(i, r)}{s}").is_file() for s in (".keras", ".tflite", ".plan.json"))
                if not (path.is_file() and files_ok):
                    break
                try:
                    rec = json.loads(path.read_text())
                except (OSError, ValueError):
                    break
                if rec.get("format") != CANDIDATE_FORMAT or abs(rec.get("rate", -1) - r) > 1e-9:
                    break
                rec["reused"] = True
                rec["checks"] = self.host_checks(rec)
                self.candidates.append(rec)
                self.emit("candidate", record=rec, total=len(self.rates), reused=True)
            self.reused = len(self.candidates)
        pconf = PruneConfig(rate=max(self.rates), criterion=c.criterion, step=float(c.step),
                            input_range=tuple(float(v) for v in c.input_range), seed=c.seed)
        if self.candidates:
            last = self.candidates[-1]
            pruner = Pruner(self.model, pconf, plan=Plan.load(d / last["files"]["plan"]))
        else:
            pruner = Pruner(self.model, pconf)
        self.prunable = bool(pruner.groups)
        if not self.prunable:
            self.notes.append("no prunable channel group in the model: only the unpruned candidate is evaluated")
        self.stop = None
        for i in range(len(self.candidates), len(self.rates)):
            if self.candidates and not self.candidates[-1]["checks"]["fidelity"]["ok"]:
                break
            if i > 0 and not self.prunable:
                break
            rec = self.make_candidate(pruner, i, self.rates[i])
            self.candidates.append(rec)
            self.emit("candidate", record=rec, total=len(self.rates), reused=False)
        last = self.candidates[-1]
        if not last["checks"]["fidelity"]["ok"]:
            self.stop = {"reason": "fidelity", "rate": last["rate"]}
        elif not self.prunable:
            self.stop = {"reason": "nothing to prune", "rate": 0.0}
        else:
            self.stop = {"reason": "max_rate", "rate": last["rate"]}

    def make_candidate(self, pruner, i: int, rate: float) -> dict:
        from edgeprune.pipeline import convert as conv
        from edgeprune.pipeline import fidelity as fid

        c, d = self.c, self.run_dir
        name = candidate_name(i, rate)
        self.emit("candidate_start", index=i, rate=rate, total=len(self.rates))
        t0 = time.perf_counter()
        if rate > 0:
            pruner.step_to(rate)
        with conv.captured_output():
            km = pruner.build()
        t1 = time.perf_counter()
        cc = conv.ConvertConfig(quantize=c.quantize, calibration=self.calibration,
                                input_range=tuple(float(v) for v in c.input_range), num_calibration=SYNTHETIC_SAMPLES)
        res = conv.convert(km, cc)
        t2 = time.perf_counter()
        fr = fid.evaluate(res.tflite, self.reference, self.data, self.fid_config)
        t3 = time.perf_counter()
        files = {"keras": f"{name}.keras", "tflite": f"{name}.tflite", "plan": f"{name}.plan.json"}
        with conv.captured_output():
            _save_keras_atomic(km, d / files["keras"])
        res.save(d / files["tflite"])
        plan = pruner.plan()
        plan.save(d / files["plan"])
        t4 = time.perf_counter()
        size = res.size_bytes
        rec = {
            "format": CANDIDATE_FORMAT,
            "index": i,
            "rate": rate,
            "name": name,
            "files": files,
            "params": int(km.count_params()),
            "size_bytes": size,
            "flash_bytes": self.host_flash(size),
            "sha256": hashlib.sha256(res.tflite).hexdigest(),
            "conversion": {k: v for k, v in res.to_dict().items() if k not in ("inputs", "outputs")},
            "fidelity": fr.to_dict(),
            "widths": plan.widths,
            "timings": {"prune_s": round(t1 - t0, 4), "convert_s": round(t2 - t1, 4), "fidelity_s": round(t3 - t2, 4),
                        "save_s": round(t4 - t3, 4)},
            "created_at": _now(),
            "pid": os.getpid(),
            "device": None,
        }
        rec["checks"] = self.host_checks(rec)
        write_json_atomic(d / f"{name}.json", rec)  # last: marks the candidate done
        rec["reused"] = False
        return rec

    # ---------------------------------------------------------------- device phase
    def device_key(self, sha: str) -> str:
        p = self.profile
        conn = p.connection
        where = f"{conn.host or conn.ssh_config_alias}:{conn.port or 22}" if conn is not None else p.kind
        return f"{sha}|{p.name}|{where}|runs={self.c.runs}|warmup={self.c.warmup}|threads={p.threads}"

    def check_reachable(self) -> None:
        """Fail fast (exit 4) when an SSH board cannot be reached, before the host phase."""
        if self.profile.kind != "ssh":
            return
        from edgeprune.devices.base import open_device, with_retries

        self.emit("status", text=f"connecting to {self.profile.name}")

        def once():
            with open_device(self.profile):
                return True

        with_retries(self.profile, once)

    def measure(self, rec: dict) -> tuple[dict, bool]:
        from edgeprune.devices.base import BenchConfig, measure

        key = self.device_key(rec["sha256"])
        if key in self.cache:
            return self.cache[key], True
        self.emit("device_start", record=rec)
        m = measure(self.profile, self.run_dir / rec["files"]["tflite"],
                    BenchConfig(runs=self.c.runs, warmup=self.c.warmup))
        lat = m.latency_ms
        entry = {
            "device": m.device, "kind": m.kind, "sha256": m.model_sha256,
            "latency_ms": {"median": lat.median, "p90": lat.p90, "mean": lat.mean, "std": lat.std,
                           "min": lat.min, "max": lat.max},
            "latency_is_estimate": m.is_estimate,
            "ram_bytes": m.ram_bytes, "peak_rss_bytes": m.peak_rss_bytes, "flash_bytes": m.flash_bytes,
            "load_ms": m.load_ms, "first_inference_ms": m.first_inference_ms,
            "runs": m.runs, "warmup": m.warmup, "threads": m.threads,
            "runtime": m.runtime, "runtime_version": m.runtime_version, "arch": m.arch,
            "emulated": m.extra.get("emulated"), "python_version": m.python_version, "measured": m.measured, "estimates": m.estimates,
            "wall_s": round(m.wall_s or 0.0, 3), "measured_at": _now(),
        }
        if m.kind == "mcu":
            entry["arena_bytes"] = (m.extra.get("arena") or {}).get("arena_bytes")
            entry["macs"] = m.extra.get("macs")
        self.cache[key] = entry
        write_json_atomic(self.cache_path, self.cache)
        self.device_runs += 1
        return entry, False

    def device_checks(self, m: dict) -> dict:
        rb, lb = self.budgets["ram_bytes"]["value"], self.budgets["latency_ms"]["value"]
        ram = m.get("ram_bytes")
        lat = m["latency_ms"]["median"]
        return {
            "ram": {"ok": True if (rb is None or ram is None) else ram <= rb, "value": ram, "limit": rb,
                    "estimate": not m["measured"].get("ram", False)},
            "latency": {"ok": True if lb is None else lat <= lb, "value": lat, "limit": lb,
                        "estimate": bool(m.get("latency_is_estimate"))},
        }

    def device_phase(self) -> None:
        self.device_runs = 0
        self.device_cached = 0
        self.device_seconds = 0.0
        host_pass = [r for r in self.candidates if all(v["ok"] for v in r["checks"].values())]
        for r in self.candidates:
            r["measurement"] = None
            if not r["checks"]["fidelity"]["ok"]:
                r["not_measured"] = "fails the fidelity threshold (host check)"
            elif not r["checks"]["flash"]["ok"]:
                r["not_measured"] = "over the flash budget (host check)"
        order = sorted(host_pass, key=lambda r: -r["rate"])
        self.emit("device_phase", total=len(order))
        skip: Optional[str] = None
        chosen = None
        for r in order:
            if skip is not None:
                r["not_measured"] = skip
                continue
            t0 = time.perf_counter()
            m, cached = self.measure(r)
            spent = time.perf_counter() - t0
            self.device_seconds += spent
            self.device_cached += int(cached)
            r["measurement"] = m
            r["measurement_cached"] = cached
            r["timings"]["device_s"] = round(spent, 4) if not cached else 0.0
            r["checks"].update(self.device_checks(m))
            ok = all(v["ok"] for v in r["checks"].values())
            self.emit("device_done", record=r, cached=cached, ok=ok)
            # keep the candidate's metrics file up to date with its measurement
            disk = {k: v for k, v in r.items() if k not in ("reused",)}
            write_json_atomic(self.run_dir / f"{r['name']}.json", dict(disk, device=m))
            if ok:
                chosen = chosen or r
                if not self.c.measure_all:
                    skip = f"not measured: rate {r['rate']:.2f} (a larger rate) already meets every budget"
                continue
            if self.c.measure_all:
                continue
            misses = []
            for lim in ("latency", "ram"):
                ck = r["checks"][lim]
                if not ck["ok"] and ck["limit"]:
                    misses.append((lim, ck["value"] / ck["limit"] - 1.0))
            clear = [(lim, m_) for lim, m_ in misses if m_ > NOISE_TOLERANCE[lim]]
            if clear:
                lim, m_ = clear[0]
                skip = (f"not measured: rate {r['rate']:.2f} (a smaller model) already missed the {lim} budget by "
                        f"{100 * m_:.0f}%; {lim} only grows as the rate falls")
        self.emit("device_phase_done", made=self.device_runs, cached=self.device_cached)
        if self.c.measure_all and order:
            passing = [r for r in order if all(v["ok"] for v in r["checks"].values())]
            chosen = passing[0] if passing else None
        self.chosen = chosen

    # ---------------------------------------------------------------- reasons
    def score_text(self, rec: dict) -> str:
        fr = rec["fidelity"]
        s = f"{fr['score_name']} {fr['score']:.4f}"
        if self.max_drop is not None and fr.get("accuracy_drop") is not None:
            s += f", accuracy drop {fr['accuracy_drop']:.2f} points"
        return s

    def threshold_text(self) -> str:
        parts = []
        if self.min_fidelity is not None:
            parts.append(f"{self.min_fidelity:g}")
        if self.max_drop is not None:
            parts.append(f"a {self.max_drop:g}-point accuracy drop")
        return " / ".join(parts)

    def reasons(self) -> list[str]:
        out: list[str] = []
        cands = self.candidates
        fid_ok = [r for r in cands if r["checks"]["fidelity"]["ok"]]
        fb = self.budgets["flash_bytes"]["value"]
        if not fid_ok:
            r0 = cands[0]
            out.append(f"the unpruned model (rate 0, {self.c.quantize}) already misses the fidelity threshold "
                       f"{self.threshold_text()}: {self.score_text(r0)}")
            return out
        flash_ok = [r for r in fid_ok if r["checks"]["flash"]["ok"]]
        if not flash_ok:
            s = min(fid_ok, key=lambda r: r["flash_bytes"])
            what = "model" if self.profile.kind != "mcu" else "model + runtime"
            out.append(f"smallest {what} within the fidelity threshold, {fmt_bytes(s['flash_bytes'])} at rate "
                       f"{s['rate']:.2f}, is still over the {fmt_bytes(fb)} budget (by {fmt_bytes(s['flash_bytes'] - fb)})")
        else:
            measured = [r for r in flash_ok if r.get("measurement")]
            for lim, unit in (("latency", "ms"), ("ram", "B")):
                checks = [r for r in measured if lim in r["checks"]]
                if checks and not any(r["checks"][lim]["ok"] for r in checks):
                    best = min(checks, key=lambda r: r["checks"][lim]["value"])
                    ck = best["checks"][lim]
                    est = " (estimate)" if ck.get("estimate") else ""
                    if lim == "latency":
                        out.append(f"fastest candidate measured {ck['value']:.2f} ms{est} at rate {best['rate']:.2f}, "
                                   f"over the {ck['limit']:g} ms latency budget by {ck['value'] - ck['limit']:.2f} ms")
                    else:
                        out.append(f"smallest RAM measured {fmt_bytes(ck['value'])}{est} at rate {best['rate']:.2f}, "
                                   f"over the {fmt_bytes(ck['limit'])} RAM budget by {fmt_bytes(ck['value'] - ck['limit'])}")
            if not out:
                out.append("no host-passing candidate met the device budgets")
        if self.stop["reason"] == "fidelity":
            last = cands[-1]
            out.append(f"fidelity fell below {self.threshold_text()} at rate {last['rate']:.2f} ({self.score_text(last)})")
        elif self.stop["reason"] == "max_rate":
            out.append(f"pruning stopped at --max-rate {self.c.max_rate:g} (a higher --max-rate may find a smaller model)")
        return out

    # ---------------------------------------------------------------- report
    def finish(self) -> RunResult:
        from edgeprune import __version__
        from edgeprune.pipeline import report as rep

        d = self.run_dir
        chosen = self.chosen
        best = d / "best.tflite"
        if chosen is not None:
            _copy_atomic(d / chosen["files"]["tflite"], best)
        elif best.exists():
            best.unlink()
        exit_code = EXIT_OK if chosen is not None else EXIT_NO_CANDIDATE
        p = self.profile
        kind = p.kind
        tot = {k: round(sum(r["timings"].get(k, 0.0) for r in self.candidates if not r.get("reused")), 3)
               for k in ("prune_s", "convert_s", "fidelity_s", "save_s")}
        tot["device_s"] = round(self.device_seconds, 3)
        tot["load_s"] = round(getattr(self, "load_seconds", 0.0), 3)  # TF import, model, data, reference outputs
        tot["total_s"] = round(time.perf_counter() - self.t_start, 3)
        fr0 = self.candidates[0]["fidelity"]
        cand_out = []
        for r in self.candidates:
            m = r.get("measurement")
            cand_out.append({
                "index": r["index"], "rate": r["rate"], "name": r["name"], "files": r["files"],
                "params": r["params"], "size_bytes": r["size_bytes"], "flash_bytes": r["flash_bytes"],
                "sha256": r["sha256"], "fidelity": r["fidelity"], "checks": r["checks"],
                "meets_all": all(v["ok"] for v in r["checks"].values()) and m is not None,
                "measurement": m, "measurement_cached": bool(r.get("measurement_cached")),
                "not_measured": r.get("not_measured") if m is None else None,
                "reused": bool(r.get("reused")), "timings": r["timings"], "created_at": r.get("created_at"),
            })
        report = {
            "format": rep.REPORT_FORMAT,
            "edgeprune_version": __version__,
            "created_at": _now(),
            "status": "ok" if chosen is not None else "no_candidate",
            "exit_code": exit_code,
            "run_dir": str(d),
            "model": {"path": str(self.model_path), "name": self.model.name, "example": self.is_example,
                      "sha256": self.model_sha, "params": int(self.model.count_params())},
            "device": {"name": p.name, "kind": kind, "description": p.description, "host": p.host,
                       "profile": p.source, "threads": p.threads,
                       "latency": "estimated on the host (not measured on a board)" if kind == "mcu"
                       else "measured on the device",
                       "ram": ("TFLite-Micro arena measured on the host + the profile's runtime overhead"
                               if kind == "mcu" else "peak RSS of the benchmark process, measured on the device"),
                       "flash": ("model file + the profile's runtime overhead" if kind == "mcu"
                                 else "the .tflite file size"),
                       "emulated": p.emulated, "arch": next((r["measurement"]["arch"] for r in cand_out
                                                             if r["measurement"] and r["measurement"].get("arch")), None)},
            "settings": {"quantize": self.c.quantize, "criterion": self.c.criterion, "step": self.c.step,
                         "max_rate": self.c.max_rate, "runs": self.c.runs, "warmup": self.c.warmup,
                         "measure_all": self.c.measure_all, "seed": self.c.seed,
                         "input_range": list(self.c.input_range)},
            "data": dict(self.data.to_dict(), calibration=self.calibration_note,
                         synthetic=self.data.source == "synthetic"),
            "budgets": self.budgets,
            "fidelity_threshold": {"min_fidelity": self.min_fidelity, "max_accuracy_drop": self.max_drop,
                                   "score_name": fr0["score_name"], "metric": fr0["metric"]},
            "strategy": STRATEGY,
            "stop": self.stop,
            "chosen": None,
            "reasons": [] if chosen is not None else self.reasons(),
            "device_runs": {"made": self.device_runs, "cached": self.device_cached,
                            "not_measured": sum(1 for r in cand_out if r["measurement"] is None)},
            "resume": {"resumed": self.resumed, "candidates_reused": self.reused,
                       "candidates_computed": len(self.candidates) - self.reused},
            "timings": tot,
            "candidates": cand_out,
            "notes": self.notes,
            "files": {"run": "run.json", "measurements": "measurements.json", "best": "best.tflite" if chosen else None,
                      "report_json": "report.json", "report_md": "report.md", "report_png": "report.png"},
        }
        if chosen is not None:
            m = chosen["measurement"]
            report["chosen"] = {
                "index": chosen["index"], "rate": chosen["rate"], "name": chosen["name"],
                "tflite": chosen["files"]["tflite"], "best": "best.tflite",
                "size_bytes": chosen["size_bytes"], "flash_bytes": chosen["flash_bytes"], "params": chosen["params"],
                "fidelity": chosen["fidelity"]["score"], "score_name": chosen["fidelity"]["score_name"],
                "accuracy": chosen["fidelity"].get("accuracy"), "accuracy_drop": chosen["fidelity"].get("accuracy_drop"),
                "latency_ms": m["latency_ms"]["median"], "latency_is_estimate": bool(m.get("latency_is_estimate")),
                "ram_bytes": m.get("ram_bytes"), "sha256": chosen["sha256"],
            }
        files = rep.write_reports(d, report)
        return RunResult(report=report, exit_code=exit_code, run_dir=d, files=files)


def run(config: RunConfig, progress: Optional[Progress] = None) -> RunResult:
    """The whole search (see the module docstring). Raises BadInput (exit 2) / DeviceError
    (exit 4); returns a RunResult whose ``exit_code`` is 0 (a candidate meets everything) or 3."""
    r = _Run(config, progress)
    r.setup()
    r.check_reachable()
    t0 = time.perf_counter()
    r.load()
    r.load_seconds = time.perf_counter() - t0
    r.open_run_dir()
    r.emit("host_phase", total=len(rate_schedule(float(config.step), float(config.max_rate))))
    r.host_phase()
    r.device_phase()
    return r.finish()
