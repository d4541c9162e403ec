"""The board latency model (pipeline/search/latency_model.py): the fit recovers known coefficients and
reports its leave-one-out error; the microcontroller estimate is the mcu backend's formula; a
model built by measuring on this machine (the local device) is cached in the run directory
under its key and reused."""
from __future__ import annotations

import types

import numpy as np
import pytest

import keras  # noqa: E402

from edgeprune.pipeline.search.latency_model import (CACHE_FILE, LatencyModel, build_or_load, error_against, fit,
                                              mac_estimate, save)


def test_fit_recovers_known_coefficients_and_reports_its_error():
    pts = [{"rate": r, "macs": m, "act_bytes": a, "measured_ms": 0.02 + 3e-8 * m + 1e-6 * a}
           for r, m, a in ((0, 4.6e6, 40000), (0.3, 2.9e6, 30000), (0.5, 1.5e6, 21000), (0.7, 6e5, 15000),
                           (0.9, 1e5, 6000))]
    m = fit(pts)
    assert m.kind == "fit"
    assert m.intercept_ms == pytest.approx(0.02, rel=1e-6)
    assert m.ms_per_mac == pytest.approx(3e-8, rel=1e-6)
    assert m.ms_per_act_byte == pytest.approx(1e-6, rel=1e-5)
    assert m.error == pytest.approx(0.0, abs=1e-6)
    for p in pts:
        assert p["predicted_ms"] == pytest.approx(p["measured_ms"], rel=1e-4)
    # noisy points: the leave-one-out error is what a new candidate can expect
    noisy = [dict(p, measured_ms=p["measured_ms"] * f) for p, f in zip(pts, (1.1, 0.9, 1.05, 0.95, 1.0))]
    assert fit(noisy).error > 0.01
    assert error_against(m, [(1.1, 1.0), (0.8, 1.0), (1.0, 1.0)]) == pytest.approx(0.1)


def test_microcontroller_estimate_is_the_mcu_backends_formula():
    mcu = types.SimpleNamespace(cycles_per_mac=3.0, clock_hz=64_000_000)
    m = mac_estimate(mcu)
    assert m.predict_figures(4_643_840, 0) == pytest.approx(4_643_840 * 3.0 / 64e6 * 1000)
    assert "ESTIMATE" in m.label()


def small_model():
    keras.utils.set_random_seed(2)
    L = keras.layers
    x = keras.Input((32, 32, 3))
    h = L.Conv2D(32, 3, padding="same", activation="relu")(x)
    h = L.Conv2D(32, 3, padding="same", activation="relu")(h)
    h = L.MaxPooling2D()(h)
    h = L.Conv2D(64, 3, padding="same", activation="relu")(h)
    h = L.GlobalAveragePooling2D()(h)
    return keras.Model(x, L.Dense(10, activation="softmax")(h))


@pytest.mark.slow
def test_built_on_the_local_device_cached_and_reused(tmp_path):
    from edgeprune.devices.profile import load_profile
    from edgeprune.pipeline.search.run_config import Budget, Budgets, MeasurementOptions, RunConfig

    model = small_model()
    prof = load_profile("local")
    run = types.SimpleNamespace(model=model, profile=prof, run_dir=tmp_path, round_to=None, emit=lambda *a, **k: None,
                                budgets=Budgets(latency=Budget(1.0, "option")),
                                config=RunConfig(measurement=MeasurementOptions(threads=1)))
    m = build_or_load(run)
    assert m.kind == "fit" and not m.cached and len(m.points) == 5
    measured = [p["measured_ms"] for p in m.points]
    assert all(v > 0 for v in measured)
    assert measured[0] > measured[-1]  # the unpruned model is slower than the 90 %-pruned one
    assert m.points[0]["macs"] > m.points[-1]["macs"] > 0
    assert m.error is not None and np.isfinite(m.error)
    save(m, tmp_path)
    assert (tmp_path / CACHE_FILE).is_file()
    again = build_or_load(run)
    assert again.cached and again.intercept_ms == m.intercept_ms and again.points == m.points
    run.config.measurement.threads = 2  # another key: not reused
    assert build_or_load.__defaults__ is None  # (plain function)
    key_other = dict(m.key, threads=2)
    assert key_other != m.key


def test_depthwise_macs_get_their_own_rate():
    """A board that runs depthwise MACs 4x slower than conv MACs (the kind of gap measured on the local
    device: bench/results/latency_model_error.md): uniform prunes scale a depthwise op's MACs linearly
    and a conv's quadratically, so five of them separate the two rates, and a non-uniform candidate
    (depthwise share unlike any fit point's) is predicted exactly; one rate for all MACs misses it."""
    def ms(conv, dw, act):
        return 0.01 + 1e-8 * conv + 4e-8 * dw

    pts = []
    for r in (0.0, 0.3, 0.55, 0.75, 0.9):
        k = 1 - r
        conv, dw, act = 3e6 * k * k, 6e5 * k, 80000 * k
        pts.append({"rate": r, "macs": conv + dw, "dw_macs": dw, "act_bytes": act, "measured_ms": ms(conv, dw, act)})
    m = fit([dict(p) for p in pts])
    assert m.ms_per_dw_mac == pytest.approx(4e-8, rel=1e-4)
    assert m.ms_per_mac == pytest.approx(1e-8, rel=1e-4)
    assert "depthwise" in m.label()
    # a candidate whose convs were narrowed to a quarter, depthwise ops kept whole
    conv, dw, act = 3e6 / 16, 6e5, 60000
    truth = ms(conv, dw, act)
    assert m.predict_figures(conv + dw, act, dw) == pytest.approx(truth, rel=1e-4)
    one_rate = fit([{k: v for k, v in p.items() if k != "dw_macs"} for p in pts])
    assert one_rate.ms_per_dw_mac is None
    assert abs(one_rate.predict_figures(conv + dw, act) - truth) / truth > 0.10
    # Resources with or without per-layer rows give the same prediction (the allocation evaluates without)
    from edgeprune.pipeline.search.resources import ResourceModel
    from edgeprune.pipeline.prune.graph import DependencyGraph

    keras.utils.set_random_seed(0)
    L = keras.layers
    x = keras.Input((16, 16, 3))
    h = L.Conv2D(8, 3, padding="same")(x)
    h = L.DepthwiseConv2D(3, padding="same")(h)
    h = L.Conv2D(16, 1)(h)
    net = keras.Model(x, L.Dense(4)(L.GlobalAveragePooling2D()(h)))
    rm = ResourceModel(DependencyGraph(net), "int8")
    with_rows, without = rm.evaluate(None, layers=True), rm.evaluate(None)
    assert with_rows.depthwise_macs == 16 * 16 * 9 * 8 == sum(l.macs for l in with_rows.layers if l.kind == "DepthwiseConv2D")
    assert without.activation_bytes == with_rows.activation_bytes == sum(l.activation_bytes for l in with_rows.layers) > 0
    assert m.predict(without) == pytest.approx(m.predict(with_rows))
