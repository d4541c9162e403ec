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
