"""Shared fixtures: paths to the MLPerf Tiny models in ../shared, small helpers."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_MODELS = Path(os.environ.get("EDGEPRUNE_MLPERF_DIR") or ROOT.parent / "shared" / "models" / "mlperf-tiny")

MLPERF = {
    "resnet8": "pretrainedResnet.h5",
    "vww": "vww_96.h5",
    "ad01": "ad01.h5",
    "kws": "str_ww_ref_model.h5",
}


def mlperf_path(key: str) -> Path:
    path = SHARED_MODELS / MLPERF.get(key, key)
    if not SHARED_MODELS.exists():
        pytest.skip(f"../shared/models/mlperf-tiny is absent next to this checkout ({SHARED_MODELS})")
    return path


@pytest.fixture(scope="session")
def mlperf_models():
    """Loaded MLPerf Tiny models, once per session (loading takes seconds)."""
    from edgeprune.pipeline.loading import load_model

    cache: dict = {}

    def get(key: str):
        if key not in cache:
            cache[key] = load_model(mlperf_path(key))
        return cache[key]

    return get


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

    from edgeprune.pipeline.schema import validation_errors

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
