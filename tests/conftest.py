"""Shared fixtures: the MLPerf Tiny stand-ins (tests/mlperf_standins.py), small helpers."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest

import mlperf_standins


@pytest.fixture(scope="session", autouse=True)
def _mlperf_standins(tmp_path_factory):
    """Where the stand-ins of the MLPerf Tiny files are built, on first use, once per session."""
    return mlperf_standins.session(tmp_path_factory.mktemp("mlperf-standins"))


@pytest.fixture(scope="session", autouse=True)
def _work_cache(tmp_path_factory):
    """edgeprune's work cache (plans reused across runs, pipeline/search/work_cache.py) in the session's
    tmp dir, never the user's ~/.cache (subprocesses inherit it)."""
    old = os.environ.get("EDGEPRUNE_CACHE_DIR")
    os.environ["EDGEPRUNE_CACHE_DIR"] = str(tmp_path_factory.mktemp("edgeprune-cache"))
    yield
    if old is None:
        os.environ.pop("EDGEPRUNE_CACHE_DIR", None)
    else:
        os.environ["EDGEPRUNE_CACHE_DIR"] = old


def mlperf_path(key: str) -> Path:
    """The seeded stand-in file for an MLPerf Tiny model key ('resnet8', 'kws', 'vww', 'ad01')
    or file name ('calibration_samples.npz', 'pretrainedResnet_quant.tflite', ...)."""
    return mlperf_standins.session().path(key)


@pytest.fixture(scope="session")
def mlperf_models(_mlperf_standins):
    """key -> the stand-in model loaded from its Keras 2 .h5 file, once per session."""
    return _mlperf_standins.model


# --------------------------------------------------------------------------- devices (issue 4)
@pytest.fixture(scope="session")
def device_models(tmp_path_factory):
    """{'small': Path, 'big': Path} float .tflite files for the device tests (built once)."""
    from device_models import build

    root = tmp_path_factory.mktemp("device-models")
    return {"small": build("small", root / "small.tflite"), "big": build("big", root / "big.tflite")}


# --------------------------------------------------------------------------- report schema (issue 16)
# Every report.json the suite writes is validated against the published schema
# (configs/schema/report-N.json): after each test, the reports under its tmp_path (the test
# errors if one is invalid); at the end of the session, every report.json under pytest's base
# temporary folder (reports written by session fixtures and subprocesses too). Tests that plant
# a deliberately broken report name it otherwise (bad-report.json).
_REPORTS_SEEN: dict = {}


def _invalid_reports(root: Path) -> dict:
    import json

    from edgeprune.pipeline.report.schema import validation_errors

    bad = {}
    for path in sorted(Path(root).rglob("report.json")):
        if path in _REPORTS_SEEN:
            errors = _REPORTS_SEEN[path]
        else:
            try:
                report = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # not ours: a test's planted file named like ours (our writes are atomic)
            if not (isinstance(report, dict) and str(report.get("format", "")).startswith("edgeprune-report/")):
                continue  # not ours (a test's own fixture file)
            errors = validation_errors(report)
            _REPORTS_SEEN[path] = errors
        if errors:
            bad[path] = errors
    return bad


@pytest.fixture(autouse=True)
def _reports_match_the_schema(request):
    # tmp_path is requested before the test runs so that it is torn down after this check
    root = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if root is None:
        return
    bad = _invalid_reports(root)
    assert not bad, "report.json not matching the published schema: " + "; ".join(
        f"{p}: {e[:3]}" for p, e in bad.items())


def pytest_sessionfinish(session, exitstatus):
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    try:
        base = factory.getbasetemp()
    except Exception:
        return
    bad = _invalid_reports(base)
    session.config._edgeprune_reports = (len(_REPORTS_SEEN), bad)
    if bad and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    seen, bad = getattr(config, "_edgeprune_reports", (0, {}))
    if seen:
        terminalreporter.write_line(f"report.json schema: {seen} reports validated, {len(bad)} invalid")
    for path, errors in bad.items():
        terminalreporter.write_line(f"INVALID {path}: {errors[:5]}", red=True)
