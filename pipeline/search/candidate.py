"""One candidate of ``edgeprune run``: a :class:`Candidate` replaces the dict records the stages
used to mutate. Its ``<name>.json`` in the run directory is :meth:`Candidate.to_json` (the same
keys, values and key order the dict records had); ``--resume`` reads it back with
:meth:`Candidate.from_json`.

Keys of the JSON that are absent are attributes left at None, except ``recovery``: with
``--train-data`` every candidate has the key, None while untrained, so its absence is
:data:`ABSENT` (falsy).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Optional

from edgeprune.pipeline.search.run_config import CANDIDATE_FORMAT


class _Absent:
    """The ``recovery`` key is not there (a run without --train-data)."""

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()

# the key order of a candidate's .json: a converted one, and one skipped (predicted over a budget)
_CONVERTED = ("format", "index", "rate", "name", "files", "params", "size_bytes", "flash_bytes", "sha256",
              "conversion", "fidelity", "screen", "widths", "allocation_log", "prediction", "made_by", "recovery", "timings", "created_at", "pid",
              "device", "vela", "arena_calibration", "checks")
_SKIPPED = ("format", "index", "rate", "name", "files", "params", "size_bytes", "flash_bytes", "sha256",
            "skipped", "skip_budget", "skip_what", "skip_value", "skip_limit", "skip_resource_budget", "prediction",
            "fidelity", "widths", "allocation_log", "timings", "created_at", "pid", "device", "checks")
# screened on the pruned Keras model (pipeline/search/host_screen.py): not converted (yet)
_SCREENED = ("format", "index", "rate", "name", "files", "params", "size_bytes", "flash_bytes", "sha256", "screen",
             "fidelity", "widths", "allocation_log", "prediction", "made_by", "timings", "created_at", "pid", "device", "checks")
# set by the device phase, in this order
_DEVICE = ("measurement", "not_measured", "first_measurement", "measurement_cached")


@dataclass
class Candidate:
    index: int
    rate: float
    name: str
    files: dict  # kind -> file name in the run directory (keras, tflite, plan, trained, vela_tflite, vela_json)
    params: int
    size_bytes: int  # the .tflite (predicted for a skipped candidate)
    flash_bytes: int  # what the flash budget is checked on (+ runtime on a microcontroller, Vela's figure)
    sha256: Optional[str]  # of the .tflite (None: not converted: skipped or screened)
    fidelity: dict  # pipeline.convert.fidelity result (scores None when not converted)
    widths: dict  # layer -> [width before, width after]
    prediction: Optional[dict]
    timings: dict
    created_at: Optional[str] = None
    pid: Optional[int] = None
    device: Optional[dict] = None  # the device measurement, as its .json keeps it
    conversion: Optional[dict] = None
    made_by: Optional[dict] = None
    recovery: Any = ABSENT  # --train-data: the training record (None: not trained)
    vela: Optional[dict] = None  # an Ethos-U profile: Vela's figures
    allocation_log: Optional[list] = None  # the global greedy's chunks removed by this candidate's step, in order
    arena_calibration: Optional[dict] = None  # candidate 0 on a microcontroller with a RAM budget
    # predicted over a budget: not converted
    skipped: Optional[str] = None  # why
    skip_budget: Any = None  # the flash predictor's key
    skip_what: Optional[str] = None  # "ram" or "latency" (None: flash)
    skip_value: Any = None
    skip_limit: Any = None
    skip_resource_budget: Optional[list] = None
    # screening (pipeline/search/host_screen.py): the Keras score and margin; "screened": not converted
    screen: Optional[dict] = None
    checks: dict = field(default_factory=dict)  # host checks, then the device's
    # the device phase
    measurement: Optional[dict] = None
    not_measured: Optional[str] = None
    first_measurement: Optional[dict] = None
    measurement_cached: Optional[bool] = None
    # this run only (never written)
    reused: bool = False
    extra: dict = field(default_factory=dict)  # keys of a .json this version does not know (kept as they are)

    # ---------------------------------------------------------------- views
    @property
    def meets_all(self) -> bool:
        """Every check so far passed."""
        return all(v["ok"] for v in self.checks.values())

    @property
    def screened(self) -> bool:
        """Screened on its pruned Keras model and not converted (no .tflite): neither a pass nor a pick."""
        return bool(self.screen and self.screen.get("screened"))

    @property
    def skip_kind(self) -> str:
        """What a skipped candidate was predicted over: flash, ram or latency."""
        return self.skip_what or "flash"

    # ---------------------------------------------------------------- JSON
    def to_json(self) -> dict:
        """The candidate's ``.json`` (the dict the run wrote before there was a dataclass)."""
        order = (_SKIPPED if self.skipped is not None else _SCREENED if self.screened else _CONVERTED) + _DEVICE
        out: dict = {}
        for key in order:
            value = CANDIDATE_FORMAT if key == "format" else getattr(self, key)
            if key == "recovery":
                if value is not ABSENT:
                    out[key] = value
            elif value is not None or key in ("sha256", "prediction", "device", "created_at", "pid"):
                out[key] = value
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, d: dict) -> "Candidate":
        """A candidate's ``.json`` (format edgeprune-candidate/1) read back; ValueError when it is not one."""
        if not isinstance(d, dict) or d.get("format") != CANDIDATE_FORMAT:
            raise ValueError("not an edgeprune candidate")
        known = {f.name for f in fields(cls)} - {"reused", "extra"}
        kw = {k: v for k, v in d.items() if k in known}
        kw["extra"] = {k: v for k, v in d.items() if k not in known and k not in ("format", "reused")}
        try:
            return cls(**kw)
        except TypeError as exc:  # a required key missing
            raise ValueError(f"not an edgeprune candidate: {exc}") from None


def candidate_name(index: int, rate: float) -> str:
    """A candidate's file stem in the run directory: ``cand-<index>-rate<rate>``."""
    r = f"{rate:.2f}" if abs(rate * 100 - round(rate * 100)) < 1e-6 else f"{rate:.4f}"
    return f"cand-{index:02d}-rate{r}"
