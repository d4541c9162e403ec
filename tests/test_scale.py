"""Memory flat in the data (issue 17): batch sizes from the model's shapes, streamed passes equal
to unbatched ones, lazy / memory-mapped samples."""
from __future__ import annotations

import numpy as np
import pytest

from edgeprune.pipeline.data.batching import (SyntheticSamples, Samples, activation_bytes_per_sample, batch_size_for,
                                         is_lazy)


def _small_cnn():
    import keras

    inp = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inp)  # 8*8*4
    h = keras.layers.Flatten(name="flat")(h)  # 256
    out = keras.layers.Dense(10, activation="softmax", name="dense")(h)  # 10
    return keras.Model(inp, out)


# --------------------------------------------------------------------------- batch sizing
def test_activation_bytes_from_the_layer_output_shapes():
    model = _small_cnn()
    per_sample = (8 * 8 * 3 + 8 * 8 * 4 + 256 + 10) * 4  # input + every layer's output, float32
    assert activation_bytes_per_sample(model) == per_sample == 2856


def test_batch_size_follows_the_budget():
    model = _small_cnn()
    assert batch_size_for(model, budget_bytes=2856 * 5) == 5
    assert batch_size_for(model, budget_bytes=2856 * 5 + 2855) == 5
    assert batch_size_for(model, budget_bytes=100) == 1  # never zero
    assert batch_size_for(model, budget_bytes=2856 * 10_000, max_batch=256) == 256


def test_imagenet_size_model_gets_a_small_batch():
    import keras

    model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))
    per_sample = activation_bytes_per_sample(model)
    # MobileNetV2-224: ~83 MiB of activations per sample (float32), so 3 samples in 256 MiB
    assert 70 * 2**20 < per_sample < 100 * 2**20
    assert batch_size_for(model) == 256 * 2**20 // per_sample == 3


# --------------------------------------------------------------------------- streamed passes
def test_streamed_reference_outputs_equal_unbatched(tmp_path):
    from edgeprune.pipeline.example import example_data_path, example_model_path
    from edgeprune.pipeline.data.eval_data import load_eval_data
    from edgeprune.pipeline.convert.fidelity import keras_outputs
    from edgeprune.pipeline.data.loading import load_model

    model = load_model(example_model_path())
    data = load_eval_data(example_data_path(), model)
    x = np.asarray(data.x[:300])
    whole = np.asarray(model(x, training=False), dtype=np.float32)  # one unbatched call
    per_sample = activation_bytes_per_sample(model)
    b = batch_size_for(model, budget_bytes=per_sample * 7)
    assert b == 7
    streamed = keras_outputs(model, data.x.take(np.arange(300)), batch_size=b)  # lazy, 43 batches
    assert streamed.shape == whole.shape == (300, 10)
    np.testing.assert_allclose(streamed, whole, atol=1e-6, rtol=0)
    default = keras_outputs(model, data.x[:300])  # batch size from the 256 MB budget
    np.testing.assert_allclose(default, whole, atol=1e-6, rtol=0)


def test_npy_data_is_memory_mapped_and_read_in_batches(tmp_path):
    from edgeprune.pipeline.data.eval_data import load_eval_data

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (130, 28, 28)).astype(np.float32)
    path = tmp_path / "x.npy"
    np.save(path, x)
    data = load_eval_data(path, (28, 28, 1))
    assert is_lazy(data.x) and isinstance(data.x.base, np.memmap)
    assert data.x.shape == (130, 28, 28, 1) and data.x.dtype == np.float32
    np.testing.assert_array_equal(data.x[70:75], x[70:75, ..., None])
    sub = data.x.take([129, 3, 64])
    np.testing.assert_array_equal(np.asarray(sub), x[[129, 3, 64], ..., None])
    assert float(data.x.max()) == float(x.max()) and float(data.x.min()) == float(x.min())
    got = data.x[5:7]
    got[:] = -1  # a batch is a copy: the mapped file is never written
    assert np.array_equal(np.load(path)[5:7], x[5:7])


def test_scaled_uint8_samples_are_converted_per_batch():
    raw = (np.arange(4 * 5 * 5) % 256).astype(np.uint8).reshape(4, 5, 5)
    s = Samples(raw, scale=1 / 255, add_channel=True)
    assert s.shape == (4, 5, 5, 1) and s.dtype == np.float32
    np.testing.assert_allclose(s[1:3], raw[1:3, ..., None].astype(np.float32) * np.float32(1 / 255))


def test_synthetic_samples_reproducible_per_index():
    a = SyntheticSamples(10, (3, 2), -1.0, 1.0, seed=4)
    whole = np.asarray(a)
    assert whole.shape == (10, 3, 2) and -1.0 <= whole.min() and whole.max() < 1.0
    np.testing.assert_array_equal(a[6:9], whole[6:9])  # any batch without the others
    np.testing.assert_array_equal(a.take([9, 0])[0], whole[9])
    assert not np.array_equal(whole, np.asarray(SyntheticSamples(10, (3, 2), -1.0, 1.0, seed=5)))


def test_int8_calibration_from_lazy_samples_same_bytes_as_from_array():
    from edgeprune.pipeline.convert.converter import ConvertConfig, convert

    model = _small_cnn()
    x = np.random.default_rng(1).uniform(0, 1, (40, 8, 8, 3)).astype(np.float32)
    a = convert(model, ConvertConfig(quantize="int8", calibration=x, num_calibration=30))
    b = convert(model, ConvertConfig(quantize="int8", calibration=Samples(x), num_calibration=30))
    assert a.tflite == b.tflite and a.calibration_samples == b.calibration_samples == 30
    with pytest.raises(Exception, match="NaN"):
        bad = x.copy()
        bad[3, 0, 0, 0] = np.nan
        convert(model, ConvertConfig(quantize="int8", calibration=Samples(bad), num_calibration=50))


# --------------------------------------------------------------------------- reference cache
@pytest.mark.slow
def test_resume_reuses_the_cached_reference_outputs(tmp_path, capsys):
    import json

    from edgeprune.cli import run_cli
    from edgeprune.pipeline.data.eval_data import load_eval_data
    from edgeprune.pipeline.example import example_data_path, example_model_path
    from edgeprune.pipeline.convert.fidelity import keras_outputs
    from edgeprune.pipeline.data.loading import load_model

    out = tmp_path / "run"
    base = ["run", "--out", str(out), "--step", "0.1", "--runs", "2", "--warmup", "0", "--json"]
    assert run_cli([*base, "--max-rate", "0.1"]) == 0
    first = json.loads(capsys.readouterr().out)
    load = first["timings"]["load"]
    assert load["reference_cached"] is False and load["reference_s"] > 0
    assert set(load) >= {"tensorflow_import_s", "model_s", "data_s", "reference_s"}
    cache = out / "reference.npz"
    stamp = cache.stat().st_mtime_ns
    with np.load(cache) as z:
        cached = z["outputs"]
    # the cached outputs are the original model's on the evaluation split (200 samples held out)
    from edgeprune.pipeline.data.split import split

    model = load_model(example_model_path())
    evaluation = split(load_eval_data(example_data_path(), model)).evaluation
    assert cached.shape == (800, 10) and len(evaluation.x) == 800
    np.testing.assert_allclose(cached, keras_outputs(model, evaluation.x), atol=1e-6, rtol=0)

    assert run_cli([*base, "--max-rate", "0.1", "--resume"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["resume"]["candidates_reused"] == 2
    assert second["timings"]["load"]["reference_cached"] is True
    assert cache.stat().st_mtime_ns == stamp  # read, not rewritten
    # the new candidate was compared against the cached outputs: its agreement is consistent with them
    assert second["candidates"][0]["fidelity"] == first["candidates"][0]["fidelity"]

    assert run_cli([*base, "--max-rate", "0.1"]) == 0  # same configuration without --resume: started over
    third = json.loads(capsys.readouterr().out)
    assert third["timings"]["load"]["reference_cached"] is False


# --------------------------------------------------------------------------- data-aware stages, streamed
def test_flow_moments_and_taylor_gradients_streamed_equal_one_batch(monkeypatch):
    import tensorflow as tf

    from edgeprune.pipeline.data import batching
    from edgeprune.pipeline.prune.calib import layer_input_moments, layer_inputs
    from edgeprune.pipeline.prune.criteria.taylor import _gradients

    model = _small_cnn()
    x = np.random.default_rng(3).uniform(0, 1, (50, 8, 8, 3)).astype(np.float32)
    whole_acts = layer_inputs(model, ["conv", "dense"], x)  # budget 256 MB: one batch of 50
    direct = {n: np.mean(np.square(a.astype(np.float64)), axis=tuple(range(a.ndim - 1))) for n, a in whole_acts.items()}
    ref = np.asarray(model(x, training=False), dtype=np.float64)
    whole_grads = _gradients(model, x, ref)

    monkeypatch.setattr(batching, "BATCH_BUDGET_BYTES", 2856 * 6)  # 6 samples a batch: 9 batches
    assert batching.batch_size_for(model) == 6
    streamed = layer_input_moments(model, ["conv", "dense"], Samples(x))
    for n in ("conv", "dense"):
        assert streamed[n].shape == direct[n].shape
        np.testing.assert_allclose(streamed[n], direct[n], rtol=1e-9, atol=0)
    grads = _gradients(model, Samples(x), ref)
    for name, gs in whole_grads.items():
        for a, b in zip(gs, grads[name]):
            # float32 sums in another order (9 batches vs 1): exact up to rounding of the largest terms
            scale = float(np.abs(a).max())
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * max(scale, 1e-3))


def test_compensation_sample_cap_from_layer_shapes():
    from edgeprune.pipeline.prune.compensate import MIN_SAMPLES, Compensator
    from edgeprune.pipeline.prune.graph import DependencyGraph

    graph = DependencyGraph(_small_cnn())
    # the refit layers: conv (input 8*8*3 floats, 3x3 patches -> 1 + 9 copies), dense (input 256)
    per_sample = max(8 * 8 * 3 * 4 * (1 + 9), 256 * 4 * 2)
    assert Compensator.max_samples(graph, budget_bytes=per_sample * 40) == 40
    assert Compensator.max_samples(graph, budget_bytes=10) == MIN_SAMPLES


# --------------------------------------------------------------------------- conversion pool
@pytest.mark.slow
def test_pool_conversion_same_bytes_and_decisions_as_serial(tmp_path, capsys):
    """--jobs 2 against --jobs 1 on the example, with a threshold that stops the search before
    the last rate (chosen from a first run's scores): the same candidates, .tflite bytes,
    fidelity and stop; the candidate the lookahead converted past the stop is discarded, its
    files gone."""
    import json

    from edgeprune.cli import run_cli

    def run(jobs, min_fidelity, name):
        code = run_cli(["run", "--out", str(tmp_path / name), "--step", "0.1", "--max-rate", "0.5", "--min-fidelity",
                        repr(min_fidelity), "--runs", "2", "--warmup", "0", "--jobs", str(jobs), "--json",
                        "--no-screen"])  # every candidate converted, as the workers do
        assert code in (0, 3)
        return json.loads(capsys.readouterr().out)

    scores = [c["fidelity"]["score"] for c in run(1, 0.01, "scores")["candidates"]]
    assert len(scores) == 6
    k = min(range(1, 5), key=lambda j: scores[j])  # the lowest score before the last rate
    threshold = scores[k] + 1e-9  # the search stops at the first candidate scoring <= scores[k]
    stop_at = next(j for j in range(6) if scores[j] < threshold)
    assert stop_at <= 4
    serial, pooled = run(1, threshold, "jobs1"), run(2, threshold, "jobs2")
    assert serial["stop"] == pooled["stop"] == {"reason": "fidelity", "rate": round(0.1 * stop_at, 6)}
    assert pooled["settings"]["pool"] is True and serial["settings"]["pool"] is False
    keys = ("index", "rate", "name", "sha256", "size_bytes", "fidelity")

    def strip(c):  # the decision-relevant host figures (not the timings, not the device measurements)
        d = {k: (dict(c[k], seconds=None, ms_per_sample=None) if k == "fidelity" else c[k]) for k in keys}
        d["host_checks"] = {k: c["checks"][k] for k in ("fidelity", "flash")}
        return d

    assert [strip(c) for c in serial["candidates"]] == [strip(c) for c in pooled["candidates"]]
    assert [c["rate"] for c in pooled["candidates"]] == [round(0.1 * j, 6) for j in range(stop_at + 1)]
    assert serial.get("chosen", {}) and serial["chosen"]["sha256"] == pooled["chosen"]["sha256"]
    for c in serial["candidates"]:
        a = (tmp_path / "jobs1" / c["files"]["tflite"]).read_bytes()
        b = (tmp_path / "jobs2" / c["files"]["tflite"]).read_bytes()
        assert a == b and len(a) == c["size_bytes"]
    names1 = sorted(p.name for p in (tmp_path / "jobs1").iterdir())
    names2 = sorted(p.name for p in (tmp_path / "jobs2").iterdir())
    past = f"cand-{stop_at + 1:02d}"
    assert names1 == names2 and not any(n.startswith(past) for n in names2)  # past the stop: discarded


def test_jobs_below_one_is_bad_input(tmp_path, capsys):
    from edgeprune.cli import run_cli

    assert run_cli(["run", "--out", str(tmp_path / "r"), "--jobs", "0"]) == 2
    err = capsys.readouterr().err
    assert "--jobs must be at least 1, got 0" in err and "fix:" in err


def test_pool_size_rule():
    from edgeprune.pipeline.convert.convert_pool import AUTO_MIN_CONVERT_S, pool_size

    assert AUTO_MIN_CONVERT_S == 5.0
    assert pool_size(2, 2, todo=5, prunable=True, convert_seconds=[]) == 2  # --jobs 2: always
    assert pool_size(3, 2, todo=2, prunable=True, convert_seconds=[]) == 2  # never more than left to make
    assert pool_size(1, 8, todo=5, prunable=True, convert_seconds=[30.0]) == 0  # --jobs 1: serial
    assert pool_size(4, 4, todo=1, prunable=True, convert_seconds=[]) == 0  # one candidate: nothing to overlap
    assert pool_size(4, 4, todo=5, prunable=False, convert_seconds=[]) == 0
    # no --jobs: one per core, once a conversion took 5 s or more
    assert pool_size(None, 2, todo=5, prunable=True, convert_seconds=[]) == 0
    assert pool_size(None, 2, todo=5, prunable=True, convert_seconds=[1.2, 4.99]) == 0
    assert pool_size(None, 2, todo=5, prunable=True, convert_seconds=[8.4]) == 2
    assert pool_size(None, 1, todo=5, prunable=True, convert_seconds=[8.4]) == 0


@pytest.mark.slow
def test_pool_gives_the_serial_widths_under_a_ram_target(tmp_path, capsys):
    """--jobs 2 with --objective auto and a RAM budget: auto's RAM target exists only once
    candidate 0 calibrated the RAM predictor, so the lookahead prunes nothing past candidate 0
    before it is done; the widths (and bytes) are those of --jobs 1."""
    import json

    from edgeprune.cli import run_cli

    def run(jobs):
        code = run_cli(["run", "--out", str(tmp_path / f"j{jobs}"), "--device", "nrf52840", "--ram-budget", "52kB",
                        "--objective", "auto", "--step", "0.1", "--max-rate", "0.3", "--min-fidelity", "0.01",
                        "--jobs", str(jobs), "--no-screen", "--json"])
        assert code in (0, 3)
        return json.loads(capsys.readouterr().out)

    serial, pooled = run(1), run(2)
    assert pooled["settings"]["pool"] is True and serial["settings"]["pool"] is False

    def widths(report, jobs):  # (each candidate's record in the run directory holds its widths)
        return [(c["rate"], json.loads((tmp_path / f"j{jobs}" / f"{c['name']}.json").read_text())["widths"])
                for c in report["candidates"]]

    ws = widths(serial, 1)
    assert widths(pooled, 2) == ws
    assert len(ws) == 4 and ws[0][1] != ws[-1][1]
    assert [c["sha256"] for c in serial["candidates"]] == [c["sha256"] for c in pooled["candidates"]]
