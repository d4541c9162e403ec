"""The ``edgeprune prune`` command: outputs, JSON, plan, and clean failures (exit 2)."""
from __future__ import annotations

import json

import numpy as np
import pytest

import keras  # noqa: E402  (a hard dependency: a missing keras must fail, not skip)

from conftest import mlperf_path  # noqa: E402

from edgeprune.cli import run_cli  # noqa: E402
from edgeprune.pipeline.data.loading import load_model  # noqa: E402
from edgeprune.pipeline.prune.plan import Plan  # noqa: E402


@pytest.fixture
def resnet(tmp_path):
    return str(mlperf_path("resnet8"))


def _run(capsys, *argv):
    code = run_cli(["prune", *map(str, argv)])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.mark.slow
def test_prune_writes_smaller_model_and_prints_table(capsys, tmp_path, resnet):
    out = tmp_path / "pruned.keras"
    code, stdout, stderr = _run(capsys, resnet, "--rate", "0.5", "--out", out)
    assert code == 0, stderr
    assert "Traceback" not in stdout + stderr
    original, pruned = load_model(resnet), load_model(out)
    assert pruned.count_params() < original.count_params()
    assert pruned.get_layer("conv2d").filters == 8
    # the table: one row per producer, widths, coupled layers and the frozen output layer
    assert "16 -> 8" in stdout and "64 -> 32" in stdout and "10 -> 10" in stdout
    assert "conv2d_2" in stdout and "frozen" in stdout and "model output" in stdout
    assert f"{original.count_params():,} -> {pruned.count_params():,}" in stdout
    x = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype(np.float32)
    assert np.asarray(pruned(x)).shape == (2, 10)


@pytest.mark.slow
def test_prune_json_and_plan(capsys, tmp_path, resnet):
    out, plan_path = tmp_path / "p.keras", tmp_path / "plan.json"
    code, stdout, stderr = _run(capsys, resnet, "--rate", "0.5", "--out", out, "--json", "--plan", plan_path,
                                "--criterion", "l1")
    assert code == 0, stderr
    data = json.loads(stdout)
    assert data["rate"] == 0.5 and data["criterion"] == "l1"
    widths = {row["layer"]: (row["before"], row["after"]) for row in data["layers"]}
    assert widths["conv2d"] == (16, 8) and widths["conv2d_6"] == (64, 32) and widths["dense"] == (10, 10)
    assert data["params_after"] < data["params_before"]
    pruned = load_model(out)
    assert data["params_after"] == pruned.count_params()
    # the plan replays to the written model
    plan = Plan.load(plan_path)
    assert plan.criterion == "l1" and plan.widths["conv2d_2"] == [16, 8]
    replay = plan.apply(load_model(resnet))
    x = np.random.default_rng(1).uniform(0, 1, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(replay(x)), np.asarray(pruned(x)), atol=1e-6, rtol=0)


@pytest.mark.slow
def test_prune_keras2_h5(capsys, tmp_path):
    out = tmp_path / "kws.keras"
    code, stdout, stderr = _run(capsys, mlperf_path("kws"), "--rate", "0.3", "--out", out, "--round-to", "8")
    assert code == 0, stderr
    assert load_model(out).count_params() < 47707


def _assert_clean_failure(code, stdout, stderr, *words):
    assert code == 2, (code, stdout, stderr)
    text = stdout + stderr
    assert "Traceback" not in text
    for w in words:
        assert w in text, (w, text)


def test_missing_model_exits_2(capsys, tmp_path):
    code, stdout, stderr = _run(capsys, tmp_path / "missing.h5", "--out", tmp_path / "o.keras")
    _assert_clean_failure(code, stdout, stderr, "does not exist", "missing.h5")
    assert not (tmp_path / "o.keras").exists()


@pytest.mark.parametrize("rate", ["1.5", "-0.1", "1.0"])
def test_bad_rate_exits_2(capsys, tmp_path, resnet, rate):
    code, stdout, stderr = _run(capsys, resnet, "--rate", rate, "--out", tmp_path / "o.keras")
    _assert_clean_failure(code, stdout, stderr, "rate")
    assert not (tmp_path / "o.keras").exists()


def test_unknown_criterion_exits_2(capsys, tmp_path, resnet):
    code, stdout, stderr = _run(capsys, resnet, "--criterion", "magic", "--out", tmp_path / "o.keras")
    _assert_clean_failure(code, stdout, stderr, "magic", "paoding")


def test_bad_input_range_and_out_folder_exit_2(capsys, tmp_path, resnet):
    code, stdout, stderr = _run(capsys, resnet, "--input-range", "1,0", "--out", tmp_path / "o.keras")
    _assert_clean_failure(code, stdout, stderr, "input-range")
    code, stdout, stderr = _run(capsys, resnet, "--out", tmp_path / "no" / "such" / "o.keras")
    _assert_clean_failure(code, stdout, stderr, "does not exist")


def test_corrupt_model_exits_2(capsys, tmp_path):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"\x00garbage" * 100)
    code, stdout, stderr = _run(capsys, bad, "--out", tmp_path / "o.keras")
    _assert_clean_failure(code, stdout, stderr, "bad.keras")
