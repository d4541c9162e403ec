"""What a CI system reads from a run: JUnit XML, a Markdown job summary, GitLab metrics.

- :func:`write_junit` (``--junit FILE``): one test case per check (each budget, the fidelity
  threshold, each regression figure when gated); a failed check is a ``<failure>`` carrying the
  reason, a check that does not apply (no latency budget, never measured) is ``<skipped>``.
  Written with junitparser, not a string template.
- :func:`markdown_summary` (appended to ``$GITHUB_STEP_SUMMARY`` by :func:`append_step_summary`
  when that variable is set): the outcome, the checks and the gated figures as tables.
- :func:`metrics_text` (``--metrics FILE``): GitLab's metrics report, one ``name value`` a line,
  so a merge request shows each figure next to the target branch's.

The checks come from report.json (and its ``gate``), through :func:`checks_from_report`, for
``edgeprune run``; :func:`checks_from_gate` for ``edgeprune bench --baseline``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from edgeprune.pipeline.atomic import replace_atomic, write_text_atomic

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"


@dataclass
class CheckCase:
    name: str  # "budget.flash", "fidelity", "regression.latency"
    status: str  # passed / failed / skipped
    message: str  # the reason (failure/skip) or the figures (pass): one line
    details: str = ""


# --------------------------------------------------------------------------- checks
def _size(n) -> str:
    from edgeprune.devices.sizes import format_size

    return "-" if n is None else f"{int(n):,} B ({format_size(int(n))})"


def _reason(report: dict, *needles: str) -> Optional[str]:
    for r in report.get("reasons") or []:
        if all(n in r for n in needles):
            return r
    return None


def checks_from_report(report: dict) -> list[CheckCase]:
    """One case per budget (flash, RAM, latency), the fidelity threshold and each gated figure."""
    cases = _limit_checks(report)
    if report.get("gate"):
        cases += checks_from_gate(report["gate"])
    return cases


def _limit_checks(report: dict) -> list[CheckCase]:
    cands = report["candidates"]
    ch = report.get("chosen")
    chosen = next((c for c in cands if ch and c["index"] == ch["index"]), None)
    budgets = report["budgets"]
    ft = report["fidelity_threshold"]
    cases: list[CheckCase] = []

    # fidelity
    if chosen is not None:
        fc = chosen["checks"]["fidelity"]
        cases.append(CheckCase("fidelity", PASSED, f"{ch['score_name']} {ch['fidelity']:.4f} at rate {ch['rate']:.2f} "
                               f"meets the threshold ({_threshold(ft)})", str(fc)))
    else:
        fid_ok = [c for c in cands if c["checks"]["fidelity"]["ok"]]
        if fid_ok:
            cases.append(CheckCase("fidelity", PASSED, f"{len(fid_ok)} of {len(cands)} candidates meet the threshold "
                                   f"({_threshold(ft)}), up to rate {max(c['rate'] for c in fid_ok):.2f}"))
        else:
            cases.append(CheckCase("fidelity", FAILED, _reason(report, "fidelity") or
                                   f"no candidate meets the fidelity threshold ({_threshold(ft)})"))

    # budgets: flash (host), RAM and latency (device)
    host_ok = [c for c in cands if c["checks"]["fidelity"]["ok"]]
    for key, name, budget_key in (("flash", "budget.flash", "flash_bytes"), ("ram", "budget.ram", "ram_bytes"),
                                  ("latency", "budget.latency", "latency_ms")):
        limit = budgets[budget_key]["value"]
        fmt = (lambda v: f"{v:.4g} ms") if key == "latency" else _size
        if limit is None:
            cases.append(CheckCase(name, SKIPPED, f"no {key} budget (give one with --"
                                   + {"flash": "budget", "ram": "ram-budget", "latency": "latency-budget"}[key] + ")"))
            continue
        if chosen is not None:
            ck = chosen["checks"].get(key)
            est = " (estimate)" if ck and ck.get("estimate") else ""
            cases.append(CheckCase(name, PASSED, f"{fmt(ck['value'])}{est} <= {fmt(limit)} at rate {ch['rate']:.2f}"))
            continue
        pool = [c for c in host_ok if key in c["checks"]] if key == "flash" else \
            [c for c in host_ok if c["checks"]["flash"]["ok"] and key in c["checks"]]
        if not pool:
            why = ("no candidate within the fidelity threshold" if key == "flash" or not host_ok
                   else "no candidate passing the host checks was measured on the device")
            cases.append(CheckCase(name, SKIPPED, f"not checked: {why}"))
        elif any(c["checks"][key]["ok"] for c in pool):
            best = max((c for c in pool if c["checks"][key]["ok"]), key=lambda c: c["rate"])
            cases.append(CheckCase(name, PASSED, f"{fmt(best['checks'][key]['value'])} <= {fmt(limit)} "
                                   f"at rate {best['rate']:.2f}"))
        else:
            needle = {"flash": "budget (by", "ram": "RAM budget", "latency": "latency budget"}[key]
            best = min(pool, key=lambda c: c["checks"][key]["value"])
            cases.append(CheckCase(name, FAILED, _reason(report, needle) or
                                   f"best {fmt(best['checks'][key]['value'])} at rate {best['rate']:.2f} is over "
                                   f"the {fmt(limit)} budget"))
    return cases


def _threshold(ft: dict) -> str:
    from edgeprune.pipeline.search.verdict import threshold_text

    return threshold_text(ft)


def checks_from_gate(gate: dict) -> list[CheckCase]:
    """One case per gated figure (``gate`` as in report.json: ``GateResult.to_dict()``)."""
    if not gate.get("compared", True):
        return [CheckCase(f"regression.{f}", SKIPPED, gate.get("note") or "not compared")
                for f in ("size", "ram", "latency", "fidelity")]
    cases = []
    for c in gate["checks"]:
        status = FAILED if c["regressed"] else (PASSED if c["compared"] else SKIPPED)
        cases.append(CheckCase(f"regression.{c['figure']}", status, c["line"],
                               f"baseline {gate['baseline']}, tolerances {gate['tolerances']}"))
    return cases


# --------------------------------------------------------------------------- JUnit XML
def write_junit(path: Path, cases: list[CheckCase], suite: str, classname: str, seconds: float = 0.0) -> Path:
    """JUnit XML (junitparser) with one test case per check; written atomically."""
    from junitparser import Failure, JUnitXml, Skipped, TestCase, TestSuite

    ts = TestSuite(suite)
    for i, c in enumerate(cases):
        tc = TestCase(c.name, classname, seconds if i == 0 else 0.0)
        if c.status == FAILED:
            f = Failure(c.message, "edgeprune." + c.name.split(".")[0])
            f.text = c.details or c.message
            tc.result = [f]
        elif c.status == SKIPPED:
            tc.result = [Skipped(c.message)]
        else:
            tc.system_out = c.message + (f"\n{c.details}" if c.details else "")
        ts.add_testcase(tc)
    ts.update_statistics()
    xml = JUnitXml("edgeprune")
    xml.add_testsuite(ts)
    xml.update_statistics()
    path = Path(path)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            xml.write(fh, pretty=True)

    replace_atomic(path, write)
    return path


# --------------------------------------------------------------------------- Markdown summary
_ICON = {PASSED: "pass", FAILED: "**FAIL**", SKIPPED: "skipped"}


def markdown_summary(title: str, outcome: str, cases: list[CheckCase], gate: Optional[dict] = None) -> str:
    lines = [f"### {title}", "", outcome, "", "| check | result | detail |", "|---|---|---|"]
    lines += [f"| {c.name} | {_ICON[c.status]} | {_md_cell(c.message)} |" for c in cases]
    if gate and gate.get("compared", True) and gate.get("checks"):
        lines += ["", f"Against the baseline `{gate['baseline']}`:", "",
                  "| figure | baseline | this run | change | allowed | |", "|---|---|---|---|---|---|"]
        from edgeprune.pipeline.report.gate import _fmt

        for c in gate["checks"]:
            if not c["compared"]:
                lines.append(f"| {c['figure']} | {_fmt(c['figure'], c['old'])} | {_fmt(c['figure'], c['new'])} | - | - "
                             f"| not compared: {_md_cell(c['note'])} |")
                continue
            f = c["figure"]
            allowed = c["tolerance"] + (f" + noise {_fmt(f, c['noise'])}" if c.get("noise") is not None else "")
            verdict = "**REGRESSION**" if c["regressed"] else "ok"
            lines.append(f"| {f} | {_fmt(f, c['old'])} | {_fmt(f, c['new'])} | {_fmt(f, c['change'], sign=True)} "
                         f"| {allowed} | {verdict} |")
    return "\n".join(lines) + "\n\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def run_summary(report: dict) -> str:
    from edgeprune.pipeline.report.run_report import summary_line

    g = report.get("gate") or {}
    if report["exit_code"] == 0:
        outcome = "**passed**: " + summary_line(report)
    elif g.get("regressed"):
        outcome = "**REGRESSION** in " + ", ".join(g["regressions"]) + ": " + summary_line(report)
    else:
        outcome = "**failed**: " + summary_line(report)
    title = f"edgeprune run: {report['model']['name']} on {report['device']['name']} ({report['settings']['quantize']})"
    return markdown_summary(title, outcome, checks_from_report(report), g or None)


def append_step_summary(text: str, env: Optional[dict] = None) -> Optional[Path]:
    """Append ``text`` to the file named by ``$GITHUB_STEP_SUMMARY``; None when it is not set."""
    target = (env if env is not None else os.environ).get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    path = Path(target)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(text)
    return path


# --------------------------------------------------------------------------- GitLab metrics
def metrics_for_report(report: dict) -> dict[str, float]:
    from edgeprune.pipeline.report.gate import chosen_measurement, latency_spread

    cases = checks_from_report(report)
    m: dict[str, float] = {"edgeprune_exit_code": report["exit_code"],
                           "edgeprune_candidates": len(report["candidates"]),
                           "edgeprune_device_runs": report["device_runs"]["made"] + report["device_runs"]["cached"],
                           "edgeprune_checks_failed": sum(c.status == FAILED for c in cases),
                           "edgeprune_run_seconds": report["timings"]["total_s"]}
    ch = report.get("chosen")
    if ch:
        m.update({"edgeprune_prune_rate": ch["rate"], "edgeprune_params": ch["params"],
                  "edgeprune_flash_bytes": ch["flash_bytes"], "edgeprune_tflite_bytes": ch["size_bytes"],
                  "edgeprune_fidelity": ch["fidelity"], "edgeprune_latency_ms": ch["latency_ms"]})
        if ch.get("ram_bytes") is not None:
            m["edgeprune_ram_bytes"] = ch["ram_bytes"]
        if ch.get("accuracy") is not None:
            m["edgeprune_accuracy"] = ch["accuracy"]
        spread, _ = latency_spread(chosen_measurement(report))
        if spread is not None:
            m["edgeprune_latency_spread_ms"] = spread
    g = report.get("gate")
    if g:
        m.update(_gate_metrics(g))
    return m


def _gate_metrics(g: dict) -> dict[str, float]:
    m: dict[str, float] = {"edgeprune_regressions": len(g.get("regressions") or [])}
    for c in g.get("checks") or []:
        if c["compared"] and c["change"] is not None:
            m[f"edgeprune_{c['figure']}_change"] = c["change"]
    return m


def metrics_text(metrics: dict[str, float]) -> str:
    """GitLab metrics report: ``name value`` one a line."""
    return "".join(f"{k} {v:.6g}\n" if isinstance(v, float) else f"{k} {v}\n" for k, v in metrics.items())


def write_metrics(path: Path, metrics: dict[str, float]) -> Path:
    path = Path(path)
    write_text_atomic(path, metrics_text(metrics))
    return path


def write_run_outputs(report: dict, junit: Optional[Path], metrics: Optional[Path]) -> list[Path]:
    """All CI outputs of one ``edgeprune run``: --junit, --metrics, and the GitHub step summary."""
    written = []
    if junit is not None:
        title = f"edgeprune run {report['model']['name']} on {report['device']['name']}"
        written.append(write_junit(junit, checks_from_report(report), title,
                                   f"edgeprune.{report['device']['name']}", report["timings"]["total_s"]))
    if metrics is not None:
        written.append(write_metrics(metrics, metrics_for_report(report)))
    summary = append_step_summary(run_summary(report))
    if summary is not None:
        written.append(summary)
    return written


def write_bench_outputs(title: str, device: str, gate: Optional[dict], measurement: dict,
                        junit: Optional[Path], metrics: Optional[Path]) -> list[Path]:
    """CI outputs of ``edgeprune bench`` (the regression cases when gated)."""
    cases = checks_from_gate(gate) if gate else []
    written = []
    if junit is not None:
        written.append(write_junit(junit, cases, title, f"edgeprune.{device}"))
    if metrics is not None:
        m = {"edgeprune_latency_ms": measurement["latency_ms"]["median"]}
        if measurement.get("ram_bytes") is not None:
            m["edgeprune_ram_bytes"] = measurement["ram_bytes"]
        if measurement.get("flash_bytes") is not None:
            m["edgeprune_flash_bytes"] = measurement["flash_bytes"]
        if gate:
            m.update(_gate_metrics(gate))
        written.append(write_metrics(metrics, m))
    if gate:
        regressed = gate.get("regressions") or []
        outcome = ("**REGRESSION** in " + ", ".join(regressed)) if regressed else "**no regression**"
        summary = append_step_summary(markdown_summary(title, outcome, cases, gate))
        if summary is not None:
            written.append(summary)
    return written
