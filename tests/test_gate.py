"""The regression gate (--baseline), the CI outputs (--junit, --metrics, $GITHUB_STEP_SUMMARY) and
the report.json schema, on real runs of the bundled example with the local device.

One short run is made per session; the gated runs re-use it with --resume (its candidates and
its cached device measurement), so the figures of the candidate are known exactly and only the
baseline changes: a planted baseline that is better than the candidate must fail (exit 5), the
unchanged one must pass.
"""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import jsonschema
import pytest
from junitparser import Failure, JUnitXml, Skipped

from edgeprune.cli import run_cli
from edgeprune.errors import EXIT_REGRESSION
from edgeprune.pipeline.report import gate as gate_mod
from edgeprune.pipeline.report.run_report import REPORT_FORMAT
from edgeprune.pipeline.report.schema import load_schema, schema_path, validation_errors

pytestmark = pytest.mark.slow  # the fast subset (-m 'not slow') skips this module

RUN = ["--max-rate", "0.1", "--step", "0.05", "--runs", "20", "--warmup", "2"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def base_run(tmp_path_factory):
    """A finished run (3 candidates, one device measurement): (run dir, report)."""
    out = tmp_path_factory.mktemp("gate") / "run"
    code = run_cli(["run", "--out", str(out), *RUN, "--json"])
    assert code == 0
    return out, json.loads((out / "report.json").read_text())


def _resume_with(tmp_path, base_run, *args, capsys=None) -> tuple[int, dict, Path]:
    """Copy the base run and re-run it with --resume plus ``args`` (no pruning, no device run)."""
    out = tmp_path / "run"
    shutil.copytree(base_run[0], out)
    code = run_cli(["run", "--out", str(out), *RUN, "--resume", *args])
    return code, json.loads((out / "report.json").read_text()), out


def _plant(report: dict, path: Path, **changes) -> Path:
    """A baseline like ``report`` whose chosen model was better: smaller, faster, more faithful."""
    b = copy.deepcopy(report)
    ch = b["chosen"]
    for key, value in changes.items():
        ch[key] = value
        if key == "latency_ms":  # the whole measurement scaled: every statistic, the spread too
            m = next(c for c in b["candidates"] if c["index"] == ch["index"])["measurement"]
            scale = value / report["chosen"]["latency_ms"]
            m["latency_ms"] = {k: v * scale if isinstance(v, (int, float)) else v for k, v in m["latency_ms"].items()}
    path.write_text(json.dumps(b))
    return path


# --------------------------------------------------------------------------- the gate
def test_gate_passes_against_its_own_report(tmp_path, base_run, capsys):
    baseline = tmp_path / "main-report.json"
    shutil.copy(base_run[0] / "report.json", baseline)
    code, rep, _ = _resume_with(tmp_path, base_run, "--baseline", str(baseline))
    cap = capsys.readouterr()
    assert code == 0, cap.err
    g = rep["gate"]
    assert g["regressed"] is False and g["regressions"] == [] and rep["exit_code"] == 0
    checks = {c["figure"]: c for c in g["checks"]}
    assert set(checks) == {"size", "ram", "latency", "fidelity"}
    for c in checks.values():  # the same candidate and the same cached measurement: no change at all
        assert c["compared"] and c["change"] == 0 and not c["regressed"]
    assert checks["size"]["old"] == base_run[1]["chosen"]["flash_bytes"]
    assert checks["latency"]["noise"] > 0  # the measured spread is part of the allowance
    assert "no regression" in cap.out and "regression:" not in cap.err


def test_planted_better_baseline_fails_with_exit_5_one_line_per_figure(tmp_path, base_run, capsys):
    ch = base_run[1]["chosen"]
    planted = _plant(base_run[1], tmp_path / "planted.json", flash_bytes=int(ch["flash_bytes"] * 0.8),
                     fidelity=ch["fidelity"] + 0.02, latency_ms=ch["latency_ms"] / 50)
    junit, metrics, summary = tmp_path / "junit.xml", tmp_path / "metrics.txt", tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    import os

    os.environ["GITHUB_STEP_SUMMARY"] = str(summary)
    try:
        code, rep, out = _resume_with(tmp_path, base_run, "--baseline", str(planted), "--junit", str(junit),
                                      "--metrics", str(metrics))
    finally:
        del os.environ["GITHUB_STEP_SUMMARY"]
    cap = capsys.readouterr()
    assert code == EXIT_REGRESSION == 5
    # size and fidelity are exact figures; latency is a regression only beyond tolerance + spread
    lat = next(c for c in rep["gate"]["checks"] if c["figure"] == "latency")
    noise_new, _ = gate_mod.median_noise(gate_mod.chosen_measurement(rep))
    noise_old, _ = gate_mod.median_noise(gate_mod.chosen_measurement(json.loads(planted.read_text())))
    assert noise_old == pytest.approx(noise_new / 50)  # the same measurement, scaled
    assert lat["noise"] == pytest.approx(noise_new + noise_old)
    assert lat["regressed"] == (lat["new"] - lat["old"] > 0.1 * lat["old"] + lat["noise"])
    regressed = ["size", "latency", "fidelity"] if lat["regressed"] else ["size", "fidelity"]
    assert rep["exit_code"] == 5 and rep["status"] == "ok" and rep["gate"]["regressions"] == regressed
    lines = [ln for ln in cap.err.splitlines() if ln.startswith("regression: ")]
    assert len(lines) == len(regressed)
    size_line = next(ln for ln in lines if ln.startswith("regression: size:"))
    old, new = int(ch["flash_bytes"] * 0.8), ch["flash_bytes"]
    assert f"{old:,} B" in size_line and f"{new:,} B" in size_line and f"+{new - old:,} B" in size_line
    assert "+25.0%" in size_line and "tolerance 0 B" in size_line
    fid_line = next(ln for ln in lines if ln.startswith("regression: fidelity:"))
    assert "-0.0200" in fid_line and "tolerance 0.0050" in fid_line
    assert "REGRESSION in " + ", ".join(regressed) in (out / "report.md").read_text()

    # JUnit, read back by a JUnit consumer: one case per check, failures carry the reason
    xml = JUnitXml.fromfile(str(junit))
    cases = {case.name: case for suite in xml for case in suite}
    assert set(cases) == {"fidelity", "budget.flash", "budget.ram", "budget.latency", "regression.size",
                          "regression.ram", "regression.latency", "regression.fidelity"}
    failed = {n for n, c in cases.items() if any(isinstance(r, Failure) for r in c.result)}
    skipped = {n for n, c in cases.items() if any(isinstance(r, Skipped) for r in c.result)}
    assert failed == {f"regression.{f}" for f in regressed}
    assert skipped == {"budget.latency"}  # the local profile has no latency budget
    size_failure = next(r for r in cases["regression.size"].result if isinstance(r, Failure))
    assert f"{old:,} B" in size_failure.message and "+25.0%" in size_failure.message
    suite = next(iter(xml))
    assert (suite.tests, suite.failures, suite.skipped) == (8, len(regressed), 1)

    # GitLab metrics: name value lines
    m = dict(line.split(" ") for line in metrics.read_text().splitlines())
    assert int(m["edgeprune_flash_bytes"]) == new and int(m["edgeprune_size_change"]) == new - old
    assert float(m["edgeprune_fidelity"]) == pytest.approx(ch["fidelity"], abs=1e-6)
    assert m["edgeprune_regressions"] == str(len(regressed)) and m["edgeprune_exit_code"] == "5"

    # the step summary is appended to, not replaced
    text = summary.read_text()
    assert text.startswith("earlier step\n") and "**REGRESSION** in " + ", ".join(regressed) in text
    assert "| regression.size | **FAIL** |" in text and "| size |" in text


def test_tolerances_are_options(tmp_path, base_run, capsys):
    ch = base_run[1]["chosen"]
    # 3 % smaller baseline, fidelity 0.004 better: within size=5%, fidelity=0.005 (the default)
    planted = _plant(base_run[1], tmp_path / "planted.json", flash_bytes=int(ch["flash_bytes"] * 0.97),
                     fidelity=ch["fidelity"] + 0.004)
    code, rep, _ = _resume_with(tmp_path, base_run, "--baseline", str(planted), "--max-regression", "size=5%")
    assert code == 0, capsys.readouterr().err
    assert rep["gate"]["tolerances"]["size"] == "5%" and rep["gate"]["tolerances"]["latency"] == "10%"
    # absolute tolerance with a unit, smaller than the growth: regression
    code, rep, _ = _resume_with(tmp_path / "b", base_run, "--baseline", str(planted), "--max-regression", "size=1kB")
    assert code == 5 and rep["gate"]["regressions"] == ["size"]


def test_latency_allowance_is_tolerance_plus_the_noise_of_both_medians():
    """The noise rule on its own: each median +- 1.58 IQR / sqrt(runs) (a box plot's notch), the
    IQR measured, else 1.05 (p90 - median), else 1.349 std; the two half-widths added."""
    def report(median, runs=25, **lat):
        m = {"latency_ms": dict(median=median, **lat), "runs": runs}
        return {"chosen": {"index": 0, "flash_bytes": 1, "ram_bytes": 1, "latency_ms": median, "fidelity": 1.0,
                           "score_name": "s", "latency_is_estimate": False},
                "candidates": [{"index": 0, "measurement": m}]}

    tol = gate_mod.parse_max_regression(None)
    old = report(1.0, iqr=0.5, p90=1.5)  # notch 1.58 * 0.5 / 5 = 0.158
    new = report(1.25, iqr=0.2)  # notch 1.58 * 0.2 / 5 = 0.0632
    within = gate_mod.compare(old, gate_mod.figures_of_report(new), tol)
    lat = next(c for c in within.checks if c.figure == "latency")
    assert lat.noise == pytest.approx(0.2212) and lat.allowance == pytest.approx(0.3212) and not lat.regressed
    beyond = gate_mod.compare(old, gate_mod.figures_of_report(report(1.33, iqr=0.2)), tol)
    assert beyond.regressions[0].figure == "latency" and beyond.exit_code == 5
    assert "tolerance 10% + noise 0.2212 ms" in beyond.lines()[0] and "+33.0%" in beyond.lines()[0]
    # more runs: a narrower notch, the same slowdown is caught
    more = gate_mod.compare(report(1.0, runs=400, iqr=0.5), gate_mod.figures_of_report(report(1.25, runs=400, iqr=0.2)),
                            tol)
    assert [c.figure for c in more.regressions] == ["latency"]
    # no IQR: from p90 - median; no p90 either: from std; nothing: the tolerance alone
    m = report(1.0, p90=1.3)["candidates"][0]["measurement"]
    assert gate_mod.median_noise(m) == (pytest.approx(1.58 * 1.05 * 0.3 / 5), "1.05 (p90 - median)")
    m = report(1.0, std=0.2)["candidates"][0]["measurement"]
    assert gate_mod.median_noise(m) == (pytest.approx(1.58 * 1.349 * 0.2 / 5), "1.349 std")
    bare = gate_mod.compare(report(1.0), gate_mod.figures_of_report(report(1.11)), tol)
    assert bare.regressions and "no spread measured" in bare.regressions[0].note


def test_tolerance_parsing():
    t = gate_mod.parse_max_regression("latency=20%, size=2kB")
    assert (t["latency"].value, t["latency"].relative) == (pytest.approx(0.2), True)
    assert (t["size"].value, t["size"].relative) == (2000, False)
    assert t["ram"].text("ram") == "5%" and t["fidelity"].value == pytest.approx(0.005)
    assert t["latency"].allowance(2.0) == pytest.approx(0.4)


@pytest.mark.parametrize("text, needle", [
    ("latency", "cannot read 'latency'"),
    ("speed=10%", "unknown figure 'speed'"),
    ("latency=fast", "'fast' is not a number"),
    ("size=-1", "not a number for size"),
    ("fidelity=-0.1", "must be a finite number >= 0"),
])
def test_bad_tolerances_exit_2(tmp_path, base_run, capsys, text, needle):
    code = run_cli(["run", "--out", str(tmp_path / "x"), "--baseline", str(base_run[0] / "report.json"),
                    "--max-regression", text])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "fix:" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()  # refused before any work


def test_baseline_of_another_device_or_quantization_is_refused(tmp_path, base_run, capsys):
    other = copy.deepcopy(base_run[1])
    other["device"].update(name="pi4", kind="ssh")
    (tmp_path / "pi4.json").write_text(json.dumps(other))
    code = run_cli(["run", "--out", str(tmp_path / "x"), *RUN, "--baseline", str(tmp_path / "pi4.json")])
    err = capsys.readouterr().err
    assert code == 2 and "measured on device 'pi4' (ssh), this run is on 'local' (local)" in err
    assert "not comparable" in err and "fix:" in err
    other = copy.deepcopy(base_run[1])
    other["settings"]["quantize"] = "float16"
    (tmp_path / "f16.json").write_text(json.dumps(other))
    code = run_cli(["run", "--out", str(tmp_path / "x"), *RUN, "--baseline", str(tmp_path / "f16.json")])
    err = capsys.readouterr().err
    assert code == 2 and "is a float16 model, this run is int8" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("content, needle", [
    (None, "no such file"),
    ("{not json", "not a JSON file"),
    ('{"a": 1}', "not an edgeprune report.json"),
    ('{"format": "edgeprune-report/1", "status": "ok"}', "does not match the report schema"),
])
def test_unusable_baseline_files_exit_2(tmp_path, capsys, content, needle):
    path = tmp_path / "bad-report.json"
    if content is not None:
        path.write_text(content)
    code = run_cli(["run", "--baseline", str(path), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err


def test_failed_run_keeps_exit_3_and_junit_names_the_failed_budget(tmp_path, base_run, capsys):
    junit = tmp_path / "junit.xml"
    code, rep, _ = _resume_with(tmp_path, base_run, "--budget", "100kB", "--baseline",
                                str(base_run[0] / "report.json"), "--junit", str(junit))
    assert code == 3
    assert rep["gate"]["compared"] is False and rep["exit_code"] == 3
    cases = {c.name: c for s in JUnitXml.fromfile(str(junit)) for c in s}
    flash = [r for r in cases["budget.flash"].result if isinstance(r, Failure)]
    assert flash and "over the 100 kB budget" in flash[0].message
    assert all(any(isinstance(r, Skipped) for r in cases[f"regression.{f}"].result)
               for f in ("size", "ram", "latency", "fidelity"))
    assert not any(isinstance(r, Failure) for r in cases["fidelity"].result)


def test_bench_baseline(tmp_path, base_run, capsys):
    best = base_run[0] / "best.tflite"
    ch = base_run[1]["chosen"]
    planted = _plant(base_run[1], tmp_path / "planted.json", flash_bytes=ch["flash_bytes"] - 100)
    junit = tmp_path / "junit.xml"
    code = run_cli(["bench", str(best), "--device", "local", "--runs", "20", "--baseline", str(planted),
                    "--max-regression", "latency=1000%,ram=50%", "--junit", str(junit)])
    cap = capsys.readouterr()
    assert code == 5, cap.err
    assert "regression: size:" in cap.err and "+100 B" in cap.err
    assert "fidelity: not compared" in cap.out  # bench measures no fidelity
    cases = {c.name: c for s in JUnitXml.fromfile(str(junit)) for c in s}
    assert [n for n, c in cases.items() if any(isinstance(r, Failure) for r in c.result)] == ["regression.size"]
    # an int8 .tflite against a float16 baseline: refused, from the file's own tensors
    other = copy.deepcopy(base_run[1])
    other["settings"]["quantize"] = "float16"
    (tmp_path / "f16.json").write_text(json.dumps(other))
    code = run_cli(["bench", str(best), "--device", "local", "--baseline", str(tmp_path / "f16.json")])
    assert code == 2 and "is a float16 model, this run is int8" in capsys.readouterr().err


# --------------------------------------------------------------------------- schema
def test_schema_command_prints_the_published_schema(capsys):
    assert run_cli(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == load_schema() == json.loads(schema_path().read_text())
    jsonschema.Draft202012Validator.check_schema(printed)
    assert printed["properties"]["format"]["const"] == REPORT_FORMAT
    assert schema_path().name == f"report-{REPORT_FORMAT.rsplit('/', 1)[1]}.json"
    assert run_cli(["schema", "--path"]) == 0 and capsys.readouterr().out.strip() == str(schema_path())


def test_schema_rejects_broken_reports(base_run):
    good = base_run[1]
    assert validation_errors(good) == []
    for breakage, needle in [
        (lambda r: r.pop("chosen"), "'chosen' is a required property"),
        (lambda r: r["chosen"].update(flash_bytes="684 kB"), "$.chosen.flash_bytes"),
        (lambda r: r["candidates"][0]["checks"].pop("flash"), "'flash' is a required property"),
        (lambda r: r.update(exit_code=7), "$.exit_code"),
        (lambda r: r.update(format="edgeprune-report/99"), "has no published schema"),
    ]:
        bad = copy.deepcopy(good)
        breakage(bad)
        errors = validation_errors(bad)
        assert errors and any(needle in e for e in errors), (needle, errors)


def test_published_schema_versions_keep_validating_their_golden_reports():
    """A schema change that an earlier report of the same version no longer passes is breaking:
    it needs a new report-N.json and format edgeprune-report/N (see pipeline/report/schema.py)."""
    golden = sorted((ROOT / "tests" / "data").glob("report-*.golden.json"))
    assert golden, "tests/data/report-N.golden.json: one real report per published schema version"
    versions = {int(p.name.split("-")[1].split(".")[0]) for p in golden}
    assert versions == {int(p.stem.split("-")[1]) for p in (ROOT / "configs" / "schema").glob("report-*.json")}
    for path in golden:
        report = json.loads(path.read_text())
        assert validation_errors(report) == [], path


def test_schema_ships_as_package_data():
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "schema/*.json" in data["edgeprune.configs"]


def test_the_suite_wide_schema_check_catches_an_invalid_report(tmp_path, base_run):
    """conftest validates every report.json the suite writes; here it must flag a broken one."""
    from conftest import _REPORTS_SEEN, _invalid_reports

    bad = copy.deepcopy(base_run[1])
    del bad["candidates"]
    path = tmp_path / "sub" / "report.json"
    path.parent.mkdir()
    path.write_text(json.dumps(bad))
    try:
        found = _invalid_reports(tmp_path)
        assert list(found) == [path] and "'candidates' is a required property" in found[path][0]
    finally:  # leave nothing invalid behind for the fixture's own check after this test
        path.unlink()
        _REPORTS_SEEN.pop(path, None)


def test_help_documents_exit_code_5_and_the_options(capsys):
    assert run_cli(["run", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "5 with --baseline: a figure (size, RAM, latency, fidelity) regressed" in text
    for option in ("--baseline", "--max-regression", "--junit", "--metrics"):
        assert option in text
    assert run_cli(["--help"]) == 0
    assert "5 (run/bench with --baseline)" in " ".join(capsys.readouterr().out.split())
