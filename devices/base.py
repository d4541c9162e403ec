"""The device protocol, the measurement result, the backend registry and ``measure``.

Design (labgrid in miniature): a profile is data (:mod:`.profile`); a backend is a class per
file registered for a profile ``kind`` with :func:`register`; every backend speaks the same
small protocol: ``put(local_path, remote_name)``, ``run(argv, timeout)``, ``get(remote_name)``,
``close()`` (and is a context manager). Benchmarking a .tflite on a board that runs Python is
the same on every such backend: push ``board_runner.py`` and the model into the device's work
dir, run it, parse its JSON (:meth:`Device.bench`). Backends that cannot run anything (a
microcontroller) override ``bench`` instead.

Other stages call only :func:`measure`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from edgeprune.crash import stage
from edgeprune.errors import BadInput, DeviceError
from edgeprune.devices.profile import Profile, load_profile

log = logging.getLogger("edgeprune.devices")

__all__ = [
    "Device",
    "BenchConfig",
    "Measurement",
    "LatencyStats",
    "RunResult",
    "TransientDeviceError",
    "register",
    "backend_for",
    "open_device",
    "measure",
    "check_device",
    "with_retries",
    "RUNNER_PATH",
    "NO_RUNTIME_HINT",
]

RUNNER_PATH = Path(__file__).resolve().parent / "board_runner.py"
NO_RUNTIME_HINT = (
    "install a TFLite runtime for the board's Python: `pip install ai-edge-litert` "
    "(or `pip install tflite-runtime`, or tensorflow), or point the profile's runtime.python "
    "at a Python (e.g. a venv) that has one"
)


class TransientDeviceError(DeviceError):
    """A dropped connection or transient socket error: :func:`measure` retries these."""


@dataclass
class RunResult:
    exit: int
    stdout: str
    stderr: str

    def __iter__(self):  # allows `code, out, err = device.run(...)`
        return iter((self.exit, self.stdout, self.stderr))


@dataclass
class BenchConfig:
    """How to benchmark, as TFLite's benchmark_model does it (its flag names in brackets).

    Warm up for at least ``warmup`` inferences [warmup_runs] AND ``warmup_min_secs`` seconds,
    then time inferences until at least ``runs`` [num_runs] AND ``min_secs`` seconds; both
    phases stop at ``max_secs``. ``min_secs=0, warmup_min_secs=0`` is a fixed count.
    ``threads=None`` [num_threads] takes the profile's; ``inputs`` feed the checksum.
    """

    runs: int = 50
    warmup: int = 5
    threads: Optional[int] = None
    inputs: Any = None  # optional np.ndarray (or list of arrays, one per model input)
    timeout: Optional[float] = None  # seconds for the run on the device; None: the profile's (raised to fit max_secs)
    seed: int = 0  # seeded input pattern when no inputs are given
    min_secs: float = 1.0
    max_secs: float = 150.0
    warmup_min_secs: float = 0.5

    def __post_init__(self) -> None:
        if self.runs < 1:
            raise BadInput(f"num-runs must be at least 1, got {self.runs}", "pass --num-runs 1 or more")
        if self.warmup < 0:
            raise BadInput(f"warmup-runs must be 0 or more, got {self.warmup}", "pass --warmup-runs 0 or more")
        if self.threads is not None and self.threads < 1:
            raise BadInput(f"num-threads must be at least 1, got {self.threads}", "pass --num-threads 1 or more")
        if self.timeout is not None and self.timeout <= 0:
            raise BadInput(f"timeout must be positive, got {self.timeout}", "pass a timeout in seconds")
        if self.min_secs < 0 or self.warmup_min_secs < 0:
            raise BadInput(f"min-secs and warmup-min-secs must be 0 or more, got {self.min_secs:g} / "
                           f"{self.warmup_min_secs:g}", "e.g. --min-secs 1 --warmup-min-secs 0.5 (0: a fixed count)")
        if not self.max_secs > 0 or self.max_secs < self.min_secs:
            raise BadInput(f"max-secs must be positive and at least min-secs, got {self.max_secs:g} "
                           f"(min-secs {self.min_secs:g})", "e.g. --max-secs 150")

    @property
    def time_based(self) -> bool:
        return self.min_secs > 0 or self.warmup_min_secs > 0

    def runner_args(self) -> list:
        """The board runner's options (benchmark_model's names, kebab-case)."""
        return ["--num-runs", str(self.runs), "--warmup-runs", str(self.warmup), "--min-secs", f"{self.min_secs:g}",
                "--max-secs", f"{self.max_secs:g}", "--warmup-min-secs", f"{self.warmup_min_secs:g}"]

    def key(self) -> str:
        """What makes two measurements comparable (for caches)."""
        return (f"runs={self.runs}|warmup={self.warmup}|min_secs={self.min_secs:g}|max_secs={self.max_secs:g}"
                f"|warmup_min_secs={self.warmup_min_secs:g}")


@dataclass
class LatencyStats:
    """Latency in ms. ``median`` is ``p50``; the spread is ``iqr`` (p75 - p25) and ``mad``."""

    median: float
    p90: float
    mean: float
    std: float
    min: float
    max: float
    p50: Optional[float] = None
    p25: Optional[float] = None
    p75: Optional[float] = None
    p99: Optional[float] = None
    iqr: float = 0.0
    mad: float = 0.0

    def __post_init__(self) -> None:
        if self.p50 is None:
            self.p50 = self.median
        for k in ("p25", "p75", "p99"):
            if getattr(self, k) is None:
                setattr(self, k, self.median if k != "p99" else self.max)

    def stat(self, name: str) -> float:
        """``p50`` / ``p90`` / ``p99`` / ``median`` / ``mean`` / ``min``."""
        return float(getattr(self, "median" if name == "p50" else name))

    @classmethod
    def from_dict(cls, d: dict) -> "LatencyStats":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: float(v) for k, v in d.items() if k in names and v is not None})


@dataclass
class Measurement:
    """One benchmark of one .tflite on one device. Times in ms, sizes in bytes.

    ``measured`` says, per figure (latency, load, first_inference, ram, flash, output), whether
    it was measured on the device (True) or not (False); ``estimates`` gives the method for each
    figure that was estimated. ``ram_bytes`` / ``flash_bytes`` are what the limits are checked
    against: peak RSS and model-file size on a Linux board; arena + runtime overhead and model
    + runtime overhead on a microcontroller.
    """

    device: str
    kind: str
    latency_ms: LatencyStats
    runs: int
    warmup: int
    threads: Optional[int]
    load_ms: Optional[float]
    first_inference_ms: Optional[float]
    peak_rss_bytes: Optional[int]
    runtime: Optional[str]
    runtime_version: Optional[str]
    arch: Optional[str]
    python_version: Optional[str]
    output_checksum: Optional[str]
    model_bytes: int
    model_sha256: str
    ram_bytes: Optional[int] = None
    flash_bytes: Optional[int] = None
    measured: dict = field(default_factory=dict)
    estimates: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # backend-specific details (arena, MACs, VmHWM, ...)
    wall_s: Optional[float] = None  # host time for the whole measurement
    timed_s: Optional[float] = None  # seconds of timed inferences (the samples behind latency_ms)
    warmup_s: Optional[float] = None  # seconds of warm-up
    capped: bool = False  # max_secs ended timing before num_runs / min_secs were reached
    load_per_core: Optional[float] = None  # 1-minute load average / CPUs on the device, before measuring
    loadavg_1m: Optional[float] = None
    settings: dict = field(default_factory=dict)  # the requested BenchConfig (num_runs, min_secs, ...)

    @property
    def is_estimate(self) -> bool:
        return not self.measured.get("latency", False)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)


# --------------------------------------------------------------------------- protocol
class Device:
    """Base class of the backends. Subclasses implement put/run/get/close (or override bench)."""

    kind: str = ""

    def __init__(self, profile: Profile):
        self.profile = profile

    # -- the protocol -------------------------------------------------------
    def put(self, local_path: Union[str, os.PathLike], remote_name: str) -> str:
        """Copy a local file into the device's work dir as ``remote_name``; return its path there."""
        raise NotImplementedError

    def run(self, argv: list, timeout: float) -> RunResult:
        """Run ``argv`` (a list, quoted by the backend) in the work dir; (exit, stdout, stderr)."""
        raise NotImplementedError

    def get(self, remote_name: str) -> bytes:
        """Read a file from the device's work dir."""
        raise NotImplementedError

    def close(self) -> None:
        """Remove the work dir and disconnect. Safe to call twice."""

    def __enter__(self) -> "Device":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- shared on every board that runs Python --------------------------------
    def python(self) -> str:
        return self.profile.runtime.python

    def bench(self, tflite_path: Path, config: BenchConfig) -> Measurement:
        tflite_path = Path(tflite_path)
        runner = self.put(RUNNER_PATH, "board_runner.py")
        model = self.put(tflite_path, "model.tflite")
        threads = config.threads if config.threads is not None else self.profile.threads
        argv = [self.python(), runner, model, *config.runner_args(), "--seed", str(config.seed)]
        if threads is not None:
            argv += ["--num-threads", str(threads)]
        argv += ["--accept", ",".join(self.profile.runtime.accept)]
        if config.inputs is not None:
            tmp = _inputs_file(config.inputs)
            try:
                argv += ["--inputs", self.put(tmp, "inputs.npz")]
            finally:
                os.unlink(tmp)
        res = self.run(argv, timeout=run_timeout(config, self.profile))
        report = parse_runner_output(res, self.profile)
        return measurement_from_report(report, self.profile, tflite_path, config, threads)

    def check(self) -> dict:
        """What the board has: Python, runtimes, numpy, architecture, free memory and disk."""
        runner = self.put(RUNNER_PATH, "board_runner.py")
        res = self.run([self.python(), runner, "--check", "--accept", ",".join(self.profile.runtime.accept)], timeout=120)
        return parse_runner_output(res, self.profile, allow_error=True)


def run_timeout(config: BenchConfig, profile: Profile) -> float:
    """The explicit ``config.timeout``, else the profile's, raised to fit warm-up and timing
    (each at most ``max_secs``) plus a minute for start-up and loading."""
    if config.timeout:
        return float(config.timeout)
    return max(float(profile.runtime.run_timeout_s), 2 * float(config.max_secs) + 60.0)


def _inputs_file(inputs) -> Path:
    import tempfile

    import numpy as np

    arrays = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    fd, name = tempfile.mkstemp(suffix=".npz", prefix="edgeprune-inputs-")
    os.close(fd)
    np.savez(name, *[np.asarray(a) for a in arrays])
    return Path(name)


def parse_runner_output(res: RunResult, profile: Profile, *, allow_error: bool = False) -> dict:
    """Read the board runner's JSON and turn its errors into DeviceErrors that say the fix."""
    name = profile.name
    report = None
    for line in reversed(res.stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                report = json.loads(line)
                break
            except ValueError:
                continue
    stderr_tail = _tail(res.stderr)
    if report is None:
        low = (res.stderr + res.stdout).lower()
        if "no space left" in low:
            raise DeviceError(f"{name}: the board's disk is full (No space left on device)",
                              "free space in the board's temp dir (df -h /tmp), or set runtime.remote_tmp to a roomier folder")
        if res.exit == 127 or "not found" in low and "python" in low:
            raise DeviceError(f"{name}: Python not found on the board ({profile.runtime.python!r}): {stderr_tail}",
                              "install python3 on the board (apt install python3 python3-numpy) or set the profile's runtime.python")
        if "syntaxerror" in low:
            raise DeviceError(f"{name}: the board's Python is too old for the board runner: {stderr_tail}",
                              "use Python 3.7 or newer on the board (runtime.python)")
        raise DeviceError(f"{name}: the board runner gave no result (exit {res.exit}): {stderr_tail or '(no output)'}",
                          "run `edgeprune devices check " + name + "` to see what the board is missing")
    if report.get("ok") or allow_error:
        return report
    err = report.get("error", {})
    kind, message = err.get("kind", "unknown"), err.get("message", "")
    if kind == "no_runtime":
        raise DeviceError(f"{name}: no TFLite runtime on the board ({message})", NO_RUNTIME_HINT)
    if kind == "no_numpy":
        raise DeviceError(f"{name}: numpy is missing on the board ({message})",
                          "pip install numpy (or apt install python3-numpy) for the board's Python")
    if kind in ("bad_model", "allocate"):
        raise BadInput(f"{name}: the runtime on the board cannot load the model: {message}",
                       "check the .tflite (is it complete? does the board's runtime version support its ops?)")
    if kind == "bad_inputs":
        raise BadInput(f"{name}: the inputs do not fit the model: {message}", "pass inputs shaped like the model's input")
    if kind == "disk_full":
        raise DeviceError(f"{name}: the board's disk is full: {message}", "free space in the board's temp dir")
    raise DeviceError(f"{name}: the board runner failed ({kind}): {message}", "see the message; `edgeprune devices check " + name + "` lists what the board has")


def emulation_note(profile: Profile) -> str:
    """What an emulated board's figures are (None-safe callers check ``profile.emulated`` first)."""
    return (f"EMULATED ({profile.emulated}): latency is the emulator's, peak RSS includes the emulator, "
            "CPU count, memory and disk are the host's")


def _tail(text: str, n: int = 600) -> str:
    text = (text or "").strip()
    return text if len(text) <= n else "..." + text[-n:]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def measurement_from_report(report: dict, profile: Profile, tflite_path: Path, config: BenchConfig, threads) -> Measurement:
    lat = report["latency_ms"]
    model_bytes = tflite_path.stat().st_size
    rss = report.get("peak_rss_bytes")
    extra = {k: report[k] for k in ("vmhwm_bytes", "ru_maxrss_bytes", "inputs", "outputs", "runner_version", "cpu_count") if k in report}
    if profile.emulated:
        extra["emulated"] = emulation_note(profile)
    return Measurement(
        device=profile.name,
        kind=profile.kind,
        latency_ms=LatencyStats.from_dict(lat),
        runs=int(report["runs"]),
        warmup=int(report["warmup"]),
        threads=threads,
        load_ms=report.get("load_ms"),
        first_inference_ms=report.get("first_inference_ms"),
        peak_rss_bytes=rss,
        runtime=report.get("runtime"),
        runtime_version=report.get("runtime_version"),
        arch=report.get("arch"),
        python_version=report.get("python_version"),
        output_checksum=report.get("output_checksum"),
        model_bytes=model_bytes,
        model_sha256=file_sha256(tflite_path),
        ram_bytes=rss,
        flash_bytes=model_bytes,
        measured={"latency": True, "load": True, "first_inference": True, "ram": rss is not None,
                  "flash": True, "output": True},
        estimates={},
        extra=extra,
        timed_s=report.get("timed_s"),
        warmup_s=report.get("warmup_s"),
        capped=bool(report.get("capped", False)),
        load_per_core=report.get("load_per_core"),
        loadavg_1m=report.get("loadavg_1m"),
        settings=bench_settings(config),
    )


def bench_settings(config: BenchConfig) -> dict:
    return {"num_runs": config.runs, "warmup_runs": config.warmup, "min_secs": config.min_secs,
            "max_secs": config.max_secs, "warmup_min_secs": config.warmup_min_secs}


# --------------------------------------------------------------------------- registry
_BACKENDS: dict[str, type] = {}
_BACKEND_MODULES = {"local": "edgeprune.devices.local", "ssh": "edgeprune.devices.ssh", "mcu": "edgeprune.devices.mcu",
                    "labgrid": "edgeprune.devices.labgrid", "ethos-u": "edgeprune.devices.ethos_u"}


def register(kind: str) -> Callable[[type], type]:
    """Class decorator: ``@register("ssh") class SshDevice(Device): ...``."""

    def deco(cls: type) -> type:
        cls.kind = kind
        _BACKENDS[kind] = cls
        return cls

    return deco


def backend_for(kind: str) -> type:
    if kind not in _BACKENDS and kind in _BACKEND_MODULES:
        import importlib

        importlib.import_module(_BACKEND_MODULES[kind])
    try:
        return _BACKENDS[kind]
    except KeyError:
        raise BadInput(f"no backend for device kind {kind!r}", f"use one of: {', '.join(sorted(_BACKEND_MODULES))}") from None


def open_device(profile: Union[Profile, str]) -> Device:
    """Open (connect to) the device a profile describes; use as a context manager."""
    if not isinstance(profile, Profile):
        profile = load_profile(profile)
    return backend_for(profile.kind)(profile)


def _check_model(tflite_path) -> Path:
    path = Path(tflite_path)
    if not path.is_file():
        raise BadInput(f"model {path} does not exist", "pass the path of a .tflite file (edgeprune convert writes one)")
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[4:8] != b"TFL3":
        raise BadInput(f"{path} is not a TFLite flatbuffer (no TFL3 identifier)", "pass a .tflite file written by the TFLite converter")
    return path


@stage("device", what="profile")
def measure(profile: Union[Profile, str], tflite_path, config: Optional[BenchConfig] = None) -> Measurement:
    """Measure ``tflite_path`` on the device ``profile`` describes. The single entry point.

    Opens the device, benchmarks, always closes it (removing any remote work dir). A dropped
    connection is retried with exponential backoff (``connection.retries`` attempts); auth,
    host-key and model errors are not.
    """
    if not isinstance(profile, Profile):
        profile = load_profile(profile)
    config = config or BenchConfig()
    path = _check_model(tflite_path)

    def once() -> Measurement:
        t0 = time.perf_counter()
        with open_device(profile) as dev:
            m = dev.bench(path, config)
        m.wall_s = time.perf_counter() - t0
        return m

    return with_retries(profile, once)


@stage("device", what="profile")
def check_device(profile: Union[Profile, str]) -> dict:
    """Connect and report what the board has (Python, runtime, arch, memory, disk, what is missing)."""
    if not isinstance(profile, Profile):
        profile = load_profile(profile)

    def once() -> dict:
        t0 = time.perf_counter()
        with open_device(profile) as dev:
            info = dev.check()
        info["wall_s"] = time.perf_counter() - t0
        if profile.emulated:
            info["emulated"] = emulation_note(profile)
        return info

    return with_retries(profile, once)


def with_retries(profile: Profile, fn: Callable[[], Any]) -> Any:
    """Call ``fn``; retry it with exponential backoff while it raises TransientDeviceError."""
    from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

    attempts = profile.connection.retries if profile.connection is not None else 1

    def _log_retry(state) -> None:
        exc = state.outcome.exception()
        log.warning("%s; retrying (attempt %d of %d)", getattr(exc, "message", exc), state.attempt_number + 1, attempts)

    wrapped = retry(
        retry=retry_if_exception_type(TransientDeviceError),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=0.5, min=0.5, max=8),
        before_sleep=_log_retry,
        reraise=True,
    )(fn)
    return wrapped()
