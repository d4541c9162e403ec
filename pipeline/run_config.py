"""Configuration, result and constants of ``edgeprune run`` (see :mod:`edgeprune.pipeline.run`)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

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
OBJECTIVES = ("auto", "size", "latency", "ram", "macs")  # --objective (pipeline/allocation/objective.py)


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
    confidence: Optional[float] = None  # the pick's agreement must clear min_fidelity with this probability
    data: Optional[Path] = None  # any form of --data (see pipeline/datasources.py)
    classes: Optional[str] = None  # --classes a,b,c: label order of image class folders / CSV label names
    quantize: str = "int8"
    criterion: str = "auto"  # auto: flow with data (the example's or --data), paoding without
    compensate: Optional[bool] = None  # None: on when there is data (ridge refit, pipeline/compensate.py)
    allocation: str = "auto"  # auto: global with data, uniform without (pipeline/allocation/)
    objective: str = "auto"  # what the global allocation pays for (pipeline/allocation/objective.py)
    step: float = DEFAULT_STEP
    max_rate: float = DEFAULT_MAX_RATE
    rates: Optional[list] = None  # --rate: build and judge only these rates (no search); each <= max_rate
    out: Optional[Path] = None
    resume: bool = False
    force: bool = False
    runs: int = 50
    warmup: int = 5
    measure_all: bool = False
    input_range: tuple[float, float] = (0.0, 1.0)
    seed: int = 0
    input_shape: Optional[tuple[int, ...]] = None  # fixes a variable-length input (batch first, batch 1)
    jobs: Optional[int] = None  # conversion worker processes; None: one per core (pipeline/convert_pool.py)
    # time-based measurement (TFLite benchmark_model's rules; see devices.base.BenchConfig)
    threads: Optional[int] = None  # None: the profile's
    min_secs: float = 1.0
    max_secs: float = 150.0
    warmup_min_secs: float = 0.5
    latency_stat: str = "p50"  # the statistic the latency budget is checked on: p50, p90, p99
    round_to: Optional[int] = None  # None: the profile's round_to (if any)
    predict: bool = True  # skip converting candidates predicted over the flash budget
    extra_devices: list = field(default_factory=list)  # more boards of the same type, measured in parallel
    # recovery training (pipeline/recover.py): distil candidates from the original on these samples
    train_data: Optional[Path] = None  # any form of --data; None: no training (nothing changes)
    recover: Optional[int] = None  # epochs per trained candidate (default 1 with train_data)
    temperature: float = 4.0  # distillation temperature
    label_weight: float = 0.0  # weight of the label loss (labelled train_data), 0 = distillation only


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


def _parse_budget(value, what: str) -> Optional[int]:
    if value is None:
        return None
    from edgeprune.devices.sizes import parse_size

    return parse_size(value, what=what)

