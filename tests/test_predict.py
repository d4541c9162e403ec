"""Predict before converting: weight bytes and MACs of pruned models against their REAL
conversions, and `edgeprune run` skipping candidates that cannot fit the flash budget."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgeprune.cli import run_cli
from edgeprune.devices.mcu import count_macs as tflite_macs
from edgeprune.pipeline.convert.converter import ConvertConfig, convert
from edgeprune.pipeline.search.predict import MIN_MARGIN, FlashPredictor, count_macs, predict
from edgeprune.pipeline.prune.pruner import PruneConfig, Pruner


def _real(model, tmp_path, name, quantize="int8"):
    res = convert(model, ConvertConfig(quantize=quantize, num_calibration=8))
    path = tmp_path / f"{name}.tflite"
    res.save(path)
    return res.size_bytes, path


@pytest.mark.slow
@pytest.mark.parametrize("quantize", ["int8", "float32"])
def test_resnet8_prediction_within_2_percent_and_macs_exact(mlperf_models, tmp_path, quantize):
    """ResNet-8 (Conv + BatchNorm folded by the converter, residual Adds, Dense): calibrated on
    the unpruned model's real conversion, the prediction at 30 % and 60 % is within 2 %."""
    model = mlperf_models("resnet8")
    pruner = Pruner(model, PruneConfig(rate=0.6, step=0.3))
    fp = FlashPredictor(budget=1)
    for rate in (0.0, 0.3, 0.6):
        if rate:
            pruner.step_to(rate)
        km = pruner.build() if rate else model
        pred = predict(km, quantize)
        real, path = _real(km, tmp_path, f"r{rate}", quantize)
        if not fp.ready:
            fp.calibrate(pred, real)
            assert fp.margin >= MIN_MARGIN
        size = fp.size(pred)
        assert abs(size - real) / real < 0.02, (rate, size, real)
        by_op = tflite_macs(path).by_op
        dense_conv = sum(by_op.get(k, 0) for k in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"))
        assert pred.macs == dense_conv, (rate, pred.macs, by_op)
        assert pred.params == km.count_params()


def test_skip_only_beyond_the_margin():
    fp = FlashPredictor(budget=100_000)
    from edgeprune.pipeline.search.predict import Prediction

    fp.calibrate(Prediction(params=1, weight_bytes=90_000, macs=1), real_size=100_000)  # overhead 10 kB -> margin 10%
    assert fp.overhead == 10_000 and fp.margin == pytest.approx(0.10)
    near = Prediction(params=1, weight_bytes=100_000, macs=1)  # predicted 110 kB: 99 kB after the margin
    assert fp.skip_reason(near) is None
    far = Prediction(params=1, weight_bytes=105_000, macs=1)  # 115 kB: 103.5 kB after the margin
    reason = fp.skip_reason(far)
    assert reason and "115 kB" in reason and "100 kB flash budget" in reason
    assert FlashPredictor(budget=None).skip_reason(far) is None  # no budget: nothing skipped


@pytest.mark.slow
def test_run_with_200kB_budget_skips_conversions(tmp_path, capsys):
    out = tmp_path / "run"
    code = run_cli(["run", "--out", str(out), "--budget", "200KB", "--num-runs", "5", "--min-secs", "0.1",
                    "--warmup-min-secs", "0", "--json"])
    rep = json.loads(capsys.readouterr().out)
    assert code == rep["exit_code"]
    cands = rep["candidates"]
    skipped = [c for c in cands if c["skipped"]]
    converted = [c for c in cands if not c["skipped"]]
    pr = rep["prediction"]
    assert pr["conversions_saved"] == len(skipped) == len(pr["skipped"]) >= 5
    assert cands[0]["skipped"] is None  # the first candidate is converted: it calibrates the margin
    assert pr["calibration"]["real_size_bytes"] == cands[0]["size_bytes"]
    for c in skipped:
        assert not (out / f"{c['name']}.tflite").exists() and not (out / f"{c['name']}.keras").exists()
        assert (out / c["files"]["plan"]).exists()
        assert c["flash_bytes"] * (1 - pr["calibration"]["margin"]) > 200_000
        assert c["measurement"] is None and "not converted" in c["not_measured"]
    for c in converted:  # the converted candidates' predictions were right to the 2 %
        p = c["prediction"]
        assert abs(p["size_bytes"] - c["size_bytes"]) / c["size_bytes"] < 0.02
    md = (out / "report.md").read_text()
    assert f"{len(skipped)} candidates predicted over the flash budget were not converted" in md
    # resume with the same budget reuses the skipped candidates; nothing is converted again
    code = run_cli(["run", "--out", str(out), "--budget", "200KB", "--num-runs", "5", "--min-secs", "0.1",
                    "--warmup-min-secs", "0", "--json", "--resume"])
    rep2 = json.loads(capsys.readouterr().out)
    assert rep2["resume"]["candidates_computed"] == 0 and rep2["prediction"]["conversions_saved"] == 0
    assert [c["skipped"] is not None for c in rep2["candidates"]] == [c["skipped"] is not None for c in cands]


@pytest.mark.slow
def test_prediction_does_not_change_the_answer(tmp_path, capsys):
    common = ["--step", "0.1", "--max-rate", "0.4", "--budget", "600kB", "--num-runs", "5", "--min-secs", "0.1",
              "--warmup-min-secs", "0", "--json"]
    assert run_cli(["run", "--out", str(tmp_path / "a"), *common]) == 0
    a = json.loads(capsys.readouterr().out)
    assert run_cli(["run", "--out", str(tmp_path / "b"), *common, "--no-predict"]) == 0
    b = json.loads(capsys.readouterr().out)
    assert a["chosen"]["rate"] == b["chosen"]["rate"] and a["chosen"]["sha256"] == b["chosen"]["sha256"]
    skipped = {c["index"] for c in a["candidates"] if c["skipped"]}
    assert skipped and not any(c["skipped"] for c in b["candidates"])
    for c in b["candidates"]:  # every skipped candidate really was over the budget
        if c["index"] in skipped:
            assert c["size_bytes"] > 600_000
    assert b["prediction"]["conversions_saved"] == 0 and a["prediction"]["conversions_saved"] == len(skipped)


@pytest.mark.slow
def test_round_to_in_run_and_profile(tmp_path, capsys):
    assert run_cli(["run", "--out", str(tmp_path / "r"), "--step", "0.15", "--max-rate", "0.3", "--round-to", "8",
                    "--num-runs", "3", "--min-secs", "0", "--warmup-min-secs", "0", "--json"]) in (0, 3)
    rep = json.loads(capsys.readouterr().out)
    assert rep["settings"]["round_to"] == 8
    for c in rep["candidates"][1:]:
        plan = json.loads((tmp_path / "r" / c["files"]["plan"]).read_text())
        after = {layer: wa for layer, (wb, wa) in plan["widths"].items() if wa != wb}  # frozen logits stay 10
        assert after and all(w % 8 == 0 for w in after.values()), plan["widths"]
        assert all(len(plan["layers"][layer]) == w for layer, w in after.items())
        assert any(wa < wb for wb, wa in plan["widths"].values())  # and pruned
    # the profile field: a device with round_to: 4 uses it when --round-to is not given
    prof = tmp_path / "simd.yaml"
    prof.write_text("kind: local\nthreads: 1\nround_to: 4\nlimits: {flash_bytes: 100MB, ram_bytes: 2GB}\n")
    from edgeprune.pipeline.search.run import RunConfig
    from edgeprune.pipeline.search.run_setup import setup

    from edgeprune.pipeline.search.run_config import DeviceOptions, OutputOptions, PruneOptions

    assert setup(RunConfig(device=DeviceOptions(name=str(prof)), output=OutputOptions(out=tmp_path / "p"))).round_to == 4
    assert setup(RunConfig(device=DeviceOptions(name=str(prof)), output=OutputOptions(out=tmp_path / "q"),
                           prune=PruneOptions(round_to=16))).round_to == 16
    assert run_cli(["run", "--out", str(tmp_path / "z"), "--round-to", "0"]) == 2
    assert "--round-to" in capsys.readouterr().err
