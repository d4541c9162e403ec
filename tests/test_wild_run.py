"""``edgeprune run`` on the issue-10 case models and the MLPerf Tiny models: every run ends
with a report (exit 0 or 3, never 1 or 2), its int8 candidates at 30 % and 50 % exist, and
each candidate's Keras model equals the masked original under its plan. A candidate that
fails to convert is recorded as failed and the search goes on."""
from __future__ import annotations

import json

import numpy as np
import pytest

import keras  # noqa: F401,E402

from conftest import mlperf_path  # noqa: E402
from edgeprune.cli import run_cli  # noqa: E402
from edgeprune.errors import UnsupportedModel  # noqa: E402
from edgeprune.pipeline.convert.converter import ConvertConfig, convert, tensor_details  # noqa: E402
from edgeprune.pipeline.prune.pruner import prune  # noqa: E402
from edgeprune.pipeline.data.loading import load_model, with_input_shape  # noqa: E402
from edgeprune.pipeline.prune.plan import Plan  # noqa: E402
from edgeprune.pipeline.prune.surgery import masked_reference  # noqa: E402
from wild_models import CASES, RECURRENT, VARIABLE, inputs  # noqa: E402

pytestmark = pytest.mark.slow  # the fast subset (-m 'not slow') skips this module

FAST = ["--step", "0.3", "--max-rate", "0.5", "--min-fidelity", "0.01", "--runs", "2", "--warmup", "1", "--json",
        "--no-screen"]  # every candidate converted (its .tflite is checked)


def _run(capsys, argv):
    code = run_cli(["run", *argv])
    cap = capsys.readouterr()
    return code, (json.loads(cap.out) if cap.out.strip().startswith("{") else None), cap.err


def _check_run(code, rep, err, out_dir, original, sample_shape, stop_ok=False, dtype="int8"):
    assert code in (0, 3), err[-2000:]
    assert rep is not None and (out_dir / "report.json").is_file()
    assert rep["exit_code"] == code
    rates = [c["rate"] for c in rep["candidates"]]
    if stop_ok and rates == [0.0, 0.3]:  # synthetic-data fidelity fell to 0 at 0.3: the search stopped there
        assert rep["stop"]["reason"] == "fidelity"
    else:
        assert rates == [0.0, 0.3, 0.5], (rates, rep["failed_candidates"], rep["notes"])
    x = inputs(sample_shape, 4, seed=9)
    for cand in rep["candidates"][1:]:
        assert cand["params"] < rep["candidates"][0]["params"]
        pruned = keras.models.load_model(out_dir / cand["files"]["keras"], compile=False)
        reference, removed = masked_reference(original, Plan.load(out_dir / cand["files"]["plan"]))
        assert removed
        got, want = np.asarray(pruned(x)), np.asarray(reference(x))
        assert np.abs(got - want).max() <= 2e-5 * max(1.0, float(np.abs(want).max())), cand["name"]
        tflite = (out_dir / cand["files"]["tflite"]).read_bytes()
        ins, _ = tensor_details(tflite)
        assert ins[0].dtype == dtype and len(tflite) == cand["size_bytes"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_run_on_case_model_ends_with_a_report(name, tmp_path, capsys):
    model, shape = CASES[name]()
    path = tmp_path / f"{name}.keras"
    model.save(path)
    extra = ["--input-shape", "1," + ",".join(map(str, shape))] if name in VARIABLE else []
    if name in RECURRENT:  # full int8 of an unrolled recurrent model is refused (test below): dynamic-range int8
        extra += ["--quantize", "dynamic"]
    out_dir = tmp_path / "run"
    code, rep, err = _run(capsys, ["--model", str(path), "--out", str(out_dir), *FAST, *extra])
    original = with_input_shape(load_model(path), (1, *shape)) if name in VARIABLE else load_model(path)
    _check_run(code, rep, err, out_dir, original, shape, dtype="float32" if name in RECURRENT else "int8")
    if name == "sigmoid":
        assert rep["fidelity_threshold"]["metric"] == "binary"
    if name == "varlen":
        assert rep["fidelity_threshold"]["metric"] == "relerr"


def test_run_int8_on_a_recurrent_model_is_refused_with_the_way_out(tmp_path, capsys):
    """Full int8 of the stacked-GRU sleep-staging shape unrolls to many times the float32 file:
    `run` refuses it at the unpruned candidate (exit 2, one error line, --quantize dynamic)."""
    model, shape = CASES["sleep"]()
    path = tmp_path / "s.keras"
    model.save(path)
    code, rep, err = _run(capsys, ["--model", str(path), "--out", str(tmp_path / "run"), *FAST,
                                   "--input-shape", "1," + ",".join(map(str, shape))])
    assert code == 2, err[-2000:]
    assert "Traceback" not in err and "times the float32 file" in err and "--quantize dynamic" in err


def test_run_variable_length_without_input_shape_says_how(tmp_path, capsys):
    model, _ = CASES["varlen"]()
    path = tmp_path / "v.keras"
    model.save(path)
    code, rep, err = _run(capsys, ["--model", str(path), "--out", str(tmp_path / "run"), *FAST])
    assert code == 2 and "--input-shape" in err and "Traceback" not in err


@pytest.mark.parametrize("key", ["resnet8", "vww", "ad01", "kws"])
def test_run_on_mlperf_ends_with_a_report(key, tmp_path, capsys, mlperf_models):
    path = mlperf_path(key)
    out_dir = tmp_path / "run"
    code, rep, err = _run(capsys, ["--model", str(path), "--out", str(out_dir), *FAST])
    original = mlperf_models(key)
    shape = tuple(original.inputs[0].shape[1:])
    _check_run(code, rep, err, out_dir, original, shape, stop_ok=True)
    if rep["candidates"][-1]["rate"] < 0.5:  # 50 % outside the run: pruned, checked and converted here
        result = prune(original, rate=0.5, criterion="paoding")
        reference, _ = masked_reference(original, result.plan)
        x = inputs(shape, 4, seed=9)
        want = np.asarray(reference(x))
        assert np.abs(np.asarray(result.model(x)) - want).max() <= 2e-5 * max(1.0, float(np.abs(want).max()))
        res = convert(result.model, ConvertConfig(quantize="int8", num_calibration=16))
        assert res.inputs[0].dtype == "int8"


def test_failed_candidate_is_recorded_and_the_search_goes_on(tmp_path, capsys, monkeypatch):
    """Fault injection: the converter refuses the rate-0.50 candidate (as XNNPACK refused a
    MobileNet's rate-0.90 one); the run records it with the reason and goes on to 0.75."""
    from edgeprune.pipeline.convert import converter as conv

    real = conv.convert
    calls = []

    def flaky(model, config=None):
        calls.append(model.count_params())
        if len(calls) == 3:
            raise UnsupportedModel("injected: the runtime failed to prepare DEPTHWISE_CONV_2D")
        return real(model, config)

    monkeypatch.setattr(conv, "convert", flaky)
    model, shape = CASES["sigmoid"]()
    path = tmp_path / "s.keras"
    model.save(path)
    out_dir = tmp_path / "run"
    code, rep, err = _run(capsys, ["--model", str(path), "--out", str(out_dir), "--step", "0.25", "--max-rate", "0.75",
                                   "--min-fidelity", "0.01", "--runs", "2", "--warmup", "1", "--json", "--no-screen"])
    assert code in (0, 3), err[-2000:]
    assert [c["rate"] for c in rep["candidates"]] == [0.0, 0.25, 0.75]
    (failed,) = rep["failed_candidates"]
    assert failed["rate"] == 0.5 and failed["stage"] == "convert" and "failed to prepare" in failed["reason"]
    assert (out_dir / f"{failed['name']}.failed.json").is_file()
    assert any("failed at the convert stage" in n for n in rep["notes"])
    # the run dir with a .failed.json is still recognised as edgeprune's own: a rerun starts over
    monkeypatch.setattr(conv, "convert", real)
    code2, rep2, err2 = _run(capsys, ["--model", str(path), "--out", str(out_dir), "--step", "0.25", "--max-rate", "0.75",
                                      "--min-fidelity", "0.01", "--runs", "2", "--warmup", "1", "--json", "--no-screen"])
    assert code2 in (0, 3), err2[-2000:]
    assert rep2["failed_candidates"] == [] and len(rep2["candidates"]) == 4
