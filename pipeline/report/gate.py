"""The regression gate: compare the chosen candidate of a run with a baseline report.json.

``edgeprune run --baseline main/report.json`` (and ``edgeprune bench --baseline``) compare
four figures of the new model with the baseline's chosen model:

- ``size``: the flash figure the budget is checked against (the .tflite file on a Linux
  board, file + runtime overhead on a microcontroller), in bytes;
- ``ram``: peak RSS on a Linux board (arena + runtime on a microcontroller), in bytes;
- ``latency``: the median in ms. Latency is noisy, so the allowance is the tolerance PLUS the
  measured noise of the two medians: each median's uncertainty is the half-width of a box
  plot's notch, ``1.58 * IQR / sqrt(runs)`` (McGill, Tukey & Larsen 1978: two medians whose
  notches do not overlap differ at about 95 %), from the measurement's interquartile range,
  or when it has none from p90 - median (x 1.05, the IQR of a normal distribution) or the
  standard deviation (x 1.349). The two half-widths are added. A latency within that band
  is "within noise", not a regression;
- ``fidelity``: the fidelity score (top-1 agreement or cosine similarity): a regression is a
  DROP of more than the tolerance (absolute).

Tolerances (``--max-regression size=0,ram=5%,latency=10%,fidelity=0.005``, the defaults): a
figure ending in ``%`` is relative to the baseline; otherwise it is absolute, in the figure's
unit (bytes, with units allowed: ``size=2kB``; ms; fidelity score points).

A baseline made on another device, or with another quantization, is refused (bad input,
exit 2): its figures say nothing about this one. A regression is exit code 5
(:data:`edgeprune.errors.EXIT_REGRESSION`), one line per regressed figure.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from edgeprune.errors import EXIT_OK, EXIT_REGRESSION, BadInput
from edgeprune.pipeline.atomic import write_text_atomic

FIGURES = ("size", "ram", "latency", "fidelity")
DEFAULT_MAX_REGRESSION = "size=0,ram=5%,latency=10%,fidelity=0.005"
MAX_REGRESSION_HINT = ("write FIGURE=VALUE pairs separated by commas, FIGURE one of size, ram, latency, fidelity; "
                       "VALUE relative ('10%') or absolute ('0', 'size=2kB', 'latency=0.5' ms, 'fidelity=0.005'), "
                       f"e.g. --max-regression {DEFAULT_MAX_REGRESSION}")
UNITS = {"size": "B", "ram": "B", "latency": "ms", "fidelity": ""}


@dataclass
class Tolerance:
    value: float
    relative: bool  # True: a fraction of the baseline figure (``10%`` -> 0.10)

    def allowance(self, old: float) -> float:
        return abs(old) * self.value if self.relative else self.value

    def text(self, figure: str) -> str:
        if self.relative:
            return f"{100 * self.value:g}%"
        return _fmt(figure, self.value)


def parse_max_regression(text: Optional[str]) -> dict[str, Tolerance]:
    """``"latency=10%,size=0"`` -> tolerances, the defaults filling the figures not named."""
    tol = _parse(DEFAULT_MAX_REGRESSION)
    if text:
        tol.update(_parse(text))
    return tol


def _parse(text: str) -> dict[str, Tolerance]:
    from edgeprune.devices.sizes import parse_size

    out: dict[str, Tolerance] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, eq, value = part.partition("=")
        name, value = name.strip().lower(), value.strip()
        if not eq or name not in FIGURES or not value:
            raise BadInput(f"--max-regression {text!r}: cannot read {part!r}"
                           + ("" if name in FIGURES or not eq else f" (unknown figure {name!r})"), MAX_REGRESSION_HINT)
        try:
            if value.endswith("%"):
                number = float(value[:-1])
                relative = True
            elif name in ("size", "ram"):
                number = float(parse_size(value, what=f"--max-regression {name}"))
                relative = False
            else:
                number = float(value)
                relative = False
        except (ValueError, BadInput):
            raise BadInput(f"--max-regression {text!r}: {value!r} is not a number for {name}",
                           MAX_REGRESSION_HINT) from None
        if not number >= 0 or number == float("inf"):
            raise BadInput(f"--max-regression {text!r}: the tolerance for {name} must be a finite number >= 0",
                           MAX_REGRESSION_HINT)
        out[name] = Tolerance(number / 100 if relative else number, relative)
    return out


# --------------------------------------------------------------------------- the baseline
def load_baseline(path: Path) -> dict:
    """Read a baseline report.json (or a run directory holding one), checked against the schema."""
    from edgeprune.pipeline.report.schema import validation_errors

    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    hint = "pass the report.json of an earlier `edgeprune run` (e.g. main's, from its CI artifacts)"
    if not path.is_file():
        raise BadInput(f"--baseline {path}: no such file", hint)
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"--baseline {path}: not a JSON file ({exc})", hint) from None
    if not isinstance(report, dict) or not str(report.get("format", "")).startswith("edgeprune-report/"):
        raise BadInput(f"--baseline {path}: not an edgeprune report.json (no 'format': 'edgeprune-report/N')", hint)
    errors = validation_errors(report)
    if errors:
        raise BadInput(f"--baseline {path}: does not match the report schema {report['format']}: {errors[0]}",
                       hint + " written by this edgeprune version (see `edgeprune schema`)")
    if report.get("chosen") is None:
        raise BadInput(f"--baseline {path}: that run chose no model (status {report.get('status')!r}), "
                       "so there is nothing to compare with",
                       "gate against the report of a run that succeeded (exit 0)")
    report["_path"] = str(path)
    return report


def check_same_target(baseline: dict, device: str, kind: Optional[str], quantize: str) -> None:
    """Refuse (exit 2) a baseline made on another device or with another quantization."""
    b_dev, b_kind = baseline["device"]["name"], baseline["device"].get("kind")
    b_q = baseline["settings"]["quantize"]
    where = baseline.get("_path", "the baseline")
    fix = ("gate against a report made on the same device with the same --quantize "
           "(e.g. main's report for this device), or drop --baseline")
    if b_dev != device or (kind is not None and b_kind != kind):
        raise BadInput(f"--baseline {where} was measured on device {b_dev!r} ({b_kind}), this run is on {device!r}"
                       + (f" ({kind})" if kind else "") + ": figures from another device are not comparable", fix)
    if b_q != quantize:
        raise BadInput(f"--baseline {where} is a {b_q} model, this run is {quantize}: "
                       "sizes, latency and fidelity of different quantizations are not comparable", fix)


# --------------------------------------------------------------------------- the comparison
@dataclass
class FigureCheck:
    figure: str
    old: Optional[float]
    new: Optional[float]
    tolerance: str
    allowance: float = 0.0  # the largest change that is not a regression (tolerance + noise)
    noise: Optional[float] = None  # latency: the spread added to the tolerance
    regressed: bool = False
    compared: bool = True
    note: str = ""

    @property
    def change(self) -> Optional[float]:
        if self.old is None or self.new is None:
            return None
        return self.new - self.old

    def line(self) -> str:
        """``latency: 1.2 ms -> 1.5 ms (+0.3 ms, +25.0%), tolerance 10% + spread 0.05 ms``."""
        f = self.figure
        if not self.compared:
            return f"{f}: not compared ({self.note})"
        ch = self.change
        pct = f", {100 * ch / self.old:+.1f}%" if self.old else ""
        tol = f"tolerance {self.tolerance}"
        if self.noise is not None:
            tol += f" + noise {_fmt(f, self.noise)} (allowed {_fmt(f, self.allowance, sign=True)})"
        verdict = "REGRESSION" if self.regressed else "ok"
        text = (f"{f}: {_fmt(f, self.old)} -> {_fmt(f, self.new)} ({_fmt(f, ch, sign=True)}{pct}), {tol}: {verdict}")
        return text + (f" ({self.note})" if self.note else "")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["change"] = self.change
        d["line"] = self.line()
        return d


@dataclass
class GateResult:
    baseline: str
    baseline_created_at: Optional[str]
    baseline_sha256: Optional[str]
    tolerances: dict
    checks: list[FigureCheck] = field(default_factory=list)
    compared: bool = True
    note: str = ""

    @property
    def regressions(self) -> list[FigureCheck]:
        return [c for c in self.checks if c.regressed]

    @property
    def exit_code(self) -> int:
        return EXIT_REGRESSION if self.regressions else EXIT_OK

    def lines(self) -> list[str]:
        return [c.line() for c in self.regressions]

    def to_dict(self) -> dict:
        return {"baseline": self.baseline, "baseline_created_at": self.baseline_created_at,
                "baseline_sha256": self.baseline_sha256, "tolerances": self.tolerances, "compared": self.compared,
                "note": self.note, "regressed": bool(self.regressions),
                "regressions": [c.figure for c in self.regressions],
                "checks": [c.to_dict() for c in self.checks]}


def latency_spread(measurement: Optional[dict]) -> tuple[Optional[float], str]:
    """The spread of a latency measurement in ms, and which statistic it is: the IQR when the
    measurement has one, else p90 - median, else the standard deviation; (None, why) if none."""
    if not measurement:
        return None, "no measurement"
    lat = measurement.get("latency_ms") or {}
    if lat.get("iqr") is not None:
        return float(lat["iqr"]), "IQR"
    if lat.get("p75") is not None and lat.get("p25") is not None:
        return float(lat["p75"]) - float(lat["p25"]), "IQR"
    med = lat.get("p50", lat.get("median"))
    if lat.get("p90") is not None and med is not None:
        return max(0.0, float(lat["p90"]) - float(med)), "p90 - median"
    if lat.get("std") is not None:
        return float(lat["std"]), "std"
    return None, "no spread measured"


NOTCH = 1.58  # box-plot notch: median +- 1.58 IQR / sqrt(n)


def median_noise(measurement: Optional[dict]) -> tuple[Optional[float], str]:
    """The uncertainty of a measurement's median latency in ms (a notch half-width,
    ``1.58 * IQR / sqrt(runs)``) and how the IQR was obtained; (None, why) without one."""
    if not measurement:
        return None, "no measurement"
    lat = measurement.get("latency_ms") or {}
    med = lat.get("p50", lat.get("median"))
    if lat.get("iqr") is not None:
        iqr, how = float(lat["iqr"]), "IQR"
    elif lat.get("p75") is not None and lat.get("p25") is not None:
        iqr, how = float(lat["p75"]) - float(lat["p25"]), "IQR"
    elif lat.get("p90") is not None and med is not None:
        iqr, how = 1.05 * max(0.0, float(lat["p90"]) - float(med)), "1.05 (p90 - median)"
    elif lat.get("std") is not None:
        iqr, how = 1.349 * float(lat["std"]), "1.349 std"
    else:
        return None, "no spread measured"
    runs = measurement.get("runs")
    if not isinstance(runs, (int, float)) or runs < 1:
        return iqr, how + " (run count unknown: the whole spread)"
    return NOTCH * iqr / runs ** 0.5, how


def chosen_measurement(report: dict) -> Optional[dict]:
    ch = report.get("chosen")
    if not ch:
        return None
    for c in report.get("candidates", []):
        if c.get("index") == ch.get("index"):
            return c.get("measurement")
    return None


def figures_of_report(report: dict) -> dict:
    """The gated figures of a report's chosen model (None where the report has none)."""
    ch = report["chosen"]
    return {"size": ch.get("flash_bytes", ch.get("size_bytes")), "ram": ch.get("ram_bytes"),
            "latency": ch.get("latency_ms"), "fidelity": ch.get("fidelity"),
            "latency_is_estimate": ch.get("latency_is_estimate"), "score_name": ch.get("score_name"),
            "latency_stat": ch.get("latency_stat"), "measurement": chosen_measurement(report),
            "sha256": ch.get("sha256")}


def compare(baseline: dict, new: Optional[dict], tolerances: dict[str, Tolerance]) -> GateResult:
    """Compare ``new`` (``figures_of_report`` of the candidate, or of a bench) with the baseline."""
    gate = GateResult(baseline=baseline.get("_path", ""), baseline_created_at=baseline.get("created_at"),
                      baseline_sha256=baseline["chosen"].get("sha256"),
                      tolerances={k: t.text(k) for k, t in tolerances.items()})
    if new is None:
        gate.compared = False
        gate.note = "no candidate was chosen, so there is nothing to compare (the run fails on its limits)"
        return gate
    old = figures_of_report(baseline)
    for f in FIGURES:
        tol = tolerances[f]
        o, n = old.get(f), new.get(f)
        check = FigureCheck(figure=f, old=o, new=n, tolerance=tol.text(f))
        if o is None or n is None:
            check.compared = False
            check.note = ("the baseline has no " if o is None else "this run has no ") + f"{f} figure" + (
                " (bench measures no fidelity)" if f == "fidelity" and n is None else "")
        elif f == "fidelity":
            if old.get("score_name") != new.get("score_name"):
                check.compared = False
                check.note = f"different fidelity scores ({old.get('score_name')} vs {new.get('score_name')})"
            else:
                check.allowance = tol.allowance(o)
                check.regressed = (o - n) > check.allowance + 1e-12
        elif f == "latency":
            if bool(old.get("latency_is_estimate")) != bool(new.get("latency_is_estimate")):
                check.compared = False
                check.note = "one latency is measured and the other estimated"
            elif (old.get("latency_stat") or "p50") != (new.get("latency_stat") or "p50"):
                check.compared = False
                check.note = (f"different latency statistics ({old.get('latency_stat') or 'p50'} vs "
                              f"{new.get('latency_stat') or 'p50'}): use the same --latency-stat")
            else:
                s_old, how_old = median_noise(old.get("measurement"))
                s_new, how_new = median_noise(new.get("measurement"))
                spreads = [s for s in (s_old, s_new) if s is not None]
                check.noise = sum(spreads) if spreads else 0.0
                check.allowance = tol.allowance(o) + check.noise
                check.regressed = (n - o) > check.allowance + 1e-12
                hows = sorted({h for s, h in ((s_old, how_old), (s_new, how_new)) if s is not None})
                check.note = ("noise = 1.58 IQR/sqrt(runs) of each median, IQR from " + " / ".join(hows)) if spreads \
                    else "no spread measured: tolerance only"
                if new.get("latency_is_estimate"):
                    check.note += "; both latencies are host estimates"
        else:
            check.allowance = tol.allowance(o)
            check.regressed = (n - o) > check.allowance + 1e-9
        gate.checks.append(check)
    return gate


def _fmt(figure: str, value: Optional[float], sign: bool = False) -> str:
    if value is None:
        return "-"
    s = "+" if sign and value > 0 else ""
    if figure in ("size", "ram"):
        from edgeprune.devices.sizes import format_size

        return f"{s}{int(value):,} B" if abs(value) < 1000 else f"{s}{int(value):,} B ({format_size(int(abs(value)))})"
    if figure == "latency":
        return f"{s}{value:.4g} ms"
    return f"{s}{value:.4f}"


# --------------------------------------------------------------------------- run / bench
def gate_run(result, baseline: dict, tolerances: dict[str, Tolerance]) -> GateResult:
    """Gate a finished ``edgeprune run``: compare, record ``gate`` in report.json / report.md, and
    make exit code 5 when a figure regressed (a run without a chosen model keeps its exit 3)."""
    from edgeprune.pipeline.report import run_report as rep
    from edgeprune.pipeline.atomic import write_json_atomic

    report = result.report
    check_same_target(baseline, report["device"]["name"], report["device"].get("kind"), report["settings"]["quantize"])
    gate = compare(baseline, figures_of_report(report) if report.get("chosen") else None, tolerances)
    report["gate"] = gate.to_dict()
    if result.exit_code == EXIT_OK and gate.regressions:
        result.exit_code = EXIT_REGRESSION
        report["exit_code"] = EXIT_REGRESSION
    run_dir = Path(result.run_dir)
    write_json_atomic(run_dir / "report.json", report)
    write_text_atomic(run_dir / "report.md", rep.markdown(report) + gate_markdown(gate))
    return gate


def gate_markdown(gate: GateResult) -> str:
    lines = ["", "## Regression gate", "", f"baseline: `{gate.baseline}`"
             + (f" ({gate.baseline_created_at})" if gate.baseline_created_at else ""), ""]
    if not gate.compared:
        return "\n".join(lines + [gate.note, ""])
    lines.append("**" + (f"REGRESSION in {', '.join(c.figure for c in gate.regressions)}" if gate.regressions
                         else "no regression") + "**")
    lines.append("")
    lines += [f"- {c.line()}" for c in gate.checks]
    return "\n".join(lines) + "\n"


def bench_figures(measurement: dict, tflite: Path) -> dict:
    """The gated figures of one ``edgeprune bench`` measurement (no fidelity: bench has none)."""
    size = measurement.get("flash_bytes")
    if size is None:
        size = Path(tflite).stat().st_size
    return {"size": size, "ram": measurement.get("ram_bytes"),
            "latency": (measurement.get("latency_ms") or {}).get("median"), "fidelity": None,
            "latency_is_estimate": bool(measurement.get("latency_is_estimate")), "score_name": None,
            "measurement": measurement, "sha256": measurement.get("sha256")}


def tflite_quantization(path: Path) -> str:
    """What a .tflite was quantized as, from its tensors: ``int8`` (integer input), ``float16``
    (float16 weights), ``dynamic`` (int8 weights, float input) or ``float32``."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    try:
        interp = Interpreter(model_path=str(path))
    except (ValueError, RuntimeError) as exc:
        raise BadInput(f"{path}: not a readable .tflite ({exc})", "pass a .tflite written by edgeprune") from None
    details = interp.get_tensor_details()
    if any(d["dtype"] in (np.int8, np.uint8) for d in interp.get_input_details()):
        return "int8"
    dtypes = {np.dtype(d["dtype"]) for d in details}
    if np.dtype(np.float16) in dtypes:
        return "float16"
    if np.dtype(np.int8) in dtypes:
        return "dynamic"
    return "float32"
