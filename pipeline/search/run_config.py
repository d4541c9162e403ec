"""Configuration, result and constants of ``edgeprune run`` (see :mod:`edgeprune.pipeline.search.run`)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from edgeprune.pipeline import choices

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
QUANTIZE_CHOICES = choices.QUANTIZE

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
OBJECTIVES = choices.OBJECTIVES  # --objective (pipeline/prune/allocation/objective.py)


@dataclass
class ModelOptions:
    """The model to prune."""
    path: Optional[Path] = None  # None: the bundled example
    input_shape: Optional[tuple[int, ...]] = None  # fixes a variable-length input (batch first, batch 1)
    input_range: tuple[float, float] = (0.0, 1.0)
    plugins: list = field(default_factory=list)  # --plugin files: the user's layers and handlers (pipeline/data/plugins.py)


@dataclass
class DataOptions:
    """The evaluation (and calibration) samples."""
    path: Optional[Path] = None  # any form of --data (see pipeline/data/datasources.py)
    classes: Optional[str] = None  # --classes a,b,c: label order of image class folders / CSV label names


@dataclass
class DeviceOptions:
    """The board(s) the candidates are measured on."""
    name: str = "local"
    extra: list = field(default_factory=list)  # more boards of the same type, measured in parallel
    host: Optional[str] = None
    user: Optional[str] = None
    port: Optional[int] = None
    devices_dir: Optional[Path] = None
    trust_new_host: bool = False


@dataclass
class BudgetOptions:
    """The limits as given (parsed once by run_setup._validate; None: the profile's)."""
    flash: Any = None  # flash / model-file bytes: int or "2MB"
    ram: Any = None
    latency_ms: Optional[float] = None
    min_fidelity: Optional[float] = None  # default DEFAULT_MIN_FIDELITY unless max_accuracy_drop is given
    max_accuracy_drop: Optional[float] = None  # points
    confidence: Optional[float] = None  # --confidence: min_fidelity must hold for the agreement's lower bound


@dataclass
class PruneOptions:
    """How the candidates are made."""
    quantize: str = "int8"
    criterion: str = "auto"  # auto: flow with data (the example's or --data), paoding without
    compensate: Optional[bool] = None  # None: on when there is data (ridge refit, pipeline/prune/compensate.py)
    allocation: str = "auto"  # auto: global with data, uniform without (pipeline/prune/allocation/)
    objective: str = "auto"  # what the global allocation pays for (pipeline/prune/allocation/objective.py)
    round_to: Optional[int] = None  # None: the profile's round_to (if any)
    seed: int = 0


@dataclass
class SearchOptions:
    """Which candidates are tried and measured."""
    step: float = DEFAULT_STEP
    max_rate: float = DEFAULT_MAX_RATE
    rates: Optional[list] = None  # --rate: build and judge only these rates (no search); each <= max_rate
    predict: bool = True  # skip converting candidates predicted over the flash budget
    screen: bool = True  # judge candidates on the pruned Keras model first; convert only those near the stop (host_screen.py)
    measure_all: bool = False
    jobs: Optional[int] = None  # conversion worker processes; None: one per core (pipeline/convert/convert_pool.py)


@dataclass
class MeasurementOptions:
    """Time-based measurement on the device (TFLite benchmark_model's rules; devices.base.BenchConfig)."""
    runs: int = 50
    warmup: int = 5
    threads: Optional[int] = None  # None: the profile's
    min_secs: float = 1.0
    max_secs: float = 150.0
    warmup_min_secs: float = 0.5
    latency_stat: str = "p50"  # the statistic the latency budget is checked on: p50, p90, p99

    def bench(self, **extra):
        """The :class:`~edgeprune.devices.base.BenchConfig` of these settings (BadInput when invalid);
        ``extra``: bench's own fields (inputs, timeout)."""
        from edgeprune.devices.base import BenchConfig

        return BenchConfig(runs=self.runs, warmup=self.warmup, threads=self.threads, min_secs=self.min_secs,
                           max_secs=self.max_secs, warmup_min_secs=self.warmup_min_secs, **extra)


@dataclass
class OutputOptions:
    """The run directory."""
    out: Optional[Path] = None
    resume: bool = False
    force: bool = False


@dataclass
class RecoverOptions:
    """Recovery training (pipeline/prune/recover.py): distil candidates from the original on these samples."""
    train_data: Optional[Path] = None  # any form of --data; None: no training (nothing changes)
    epochs: Optional[int] = None  # --recover: epochs per trained candidate (default 1 with train_data)
    temperature: float = 4.0  # distillation temperature
    label_weight: float = 0.0  # weight of the label loss (labelled train_data), 0 = distillation only


@dataclass
class RunConfig:
    """``edgeprune run``'s configuration, by part (the CLI's option groups)."""
    model: ModelOptions = field(default_factory=ModelOptions)
    data: DataOptions = field(default_factory=DataOptions)
    device: DeviceOptions = field(default_factory=DeviceOptions)
    budgets: BudgetOptions = field(default_factory=BudgetOptions)
    prune: PruneOptions = field(default_factory=PruneOptions)
    search: SearchOptions = field(default_factory=SearchOptions)
    measurement: MeasurementOptions = field(default_factory=MeasurementOptions)
    output: OutputOptions = field(default_factory=OutputOptions)
    recover: RecoverOptions = field(default_factory=RecoverOptions)


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



# --------------------------------------------------------------------------- budgets (parsed once)
@dataclass(frozen=True)
class Budget:
    """One limit of the run: its value (bytes or ms; None: no limit) and where it came from."""
    value: Any = None
    source: Optional[str] = None  # "option", "profile" or None

    @classmethod
    def of(cls, option, profile_value) -> "Budget":
        if option is not None:
            return cls(option, "option")
        return cls(profile_value, "profile" if profile_value is not None else None)

    def to_dict(self) -> dict:
        return {"value": self.value, "source": self.source}


@dataclass(frozen=True)
class Budgets:
    """The run's flash, RAM and latency budgets (``report.json`` ``budgets``)."""
    flash: Budget = Budget()
    ram: Budget = Budget()
    latency: Budget = Budget()

    @property
    def flash_bytes(self) -> Optional[int]:
        return self.flash.value

    @property
    def ram_bytes(self) -> Optional[int]:
        return self.ram.value

    @property
    def latency_ms(self) -> Optional[float]:
        return self.latency.value

    def to_dict(self) -> dict:
        return {"flash_bytes": self.flash.to_dict(), "ram_bytes": self.ram.to_dict(),
                "latency_ms": self.latency.to_dict()}

    def values(self) -> dict:
        return {"flash_bytes": self.flash_bytes, "ram_bytes": self.ram_bytes, "latency_ms": self.latency_ms}


@dataclass(frozen=True)
class RequestedBudgets:
    """The budgets given as options, parsed once (None: the profile's)."""
    flash_bytes: Optional[int] = None
    ram_bytes: Optional[int] = None
    latency_ms: Optional[float] = None

    def with_profile(self, limits) -> Budgets:
        return Budgets(Budget.of(self.flash_bytes, limits.flash_bytes), Budget.of(self.ram_bytes, limits.ram_bytes),
                       Budget.of(self.latency_ms, limits.latency_ms))


# --------------------------------------------------------------------------- small helpers
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _parse_budget(value, what: str) -> Optional[int]:
    if value is None:
        return None
    from edgeprune.devices.sizes import parse_size

    return parse_size(value, what=what)

