"""Compensation (ridge refit of the pruned groups' consumers) and the data-aware criteria:
numbers, not smoke. The pruned + compensated model equals the ORIGINAL with the removed
channels masked and the plan's refitted weights scattered in (to 1e-5), a saved plan replays
the refit exactly, a 0 % prune is the identity, and the refit lowers the calibration error."""
from __future__ import annotations

import numpy as np
import pytest

import keras  # noqa: E402  (a hard dependency: a missing keras must fail, not skip)

from edgeprune.pipeline.prune.calib import outputs, output_loss
from edgeprune.pipeline.prune.compensate import masked_refit_reference
from edgeprune.pipeline.prune.plan import Plan
from edgeprune.pipeline.prune.pruner import prune


def close(a, b, tol, what=""):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    scale = max(1.0, float(np.abs(b).max()))
    err = float(np.abs(a - b).max())
    assert err <= tol * scale, f"{what}: max abs diff {err:.3g} > {tol:g} * {scale:.3g}"


def small_cnn():
    keras.utils.set_random_seed(3)
    L = keras.layers
    x = keras.Input((12, 12, 2))
    h = L.Conv2D(8, 3, padding="same", name="c1")(x)
    h = L.BatchNormalization(name="bn1")(h)
    h = L.ReLU(name="r1")(h)
    h = L.Conv2D(12, 3, strides=2, activation="relu", name="c2")(h)
    h = L.DepthwiseConv2D(3, padding="same", activation="relu", name="dw")(h)
    h = L.Conv2D(10, 1, activation="relu", name="pw")(h)
    h = L.Flatten(name="f")(h)
    h = L.Dense(16, activation="relu", name="d1")(h)
    out = L.Dense(5, activation="softmax", name="out")(h)
    m = keras.Model(x, out)
    # non-trivial BatchNorm statistics
    bn = m.get_layer("bn1")
    g, b, mu, var = bn.get_weights()
    rng = np.random.default_rng(0)
    bn.set_weights([rng.uniform(0.5, 1.5, 8), rng.normal(0, 0.1, 8), rng.normal(0, 0.1, 8), rng.uniform(0.5, 2, 8)])
    return m


@pytest.fixture(scope="module")
def cnn():
    m = small_cnn()
    rng = np.random.default_rng(1)
    return m, rng.uniform(0, 1, (64, 12, 12, 2)).astype(np.float32), rng.uniform(0, 1, (16, 12, 12, 2)).astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("criterion", ["flow", "taylor", "paoding"])
def test_pruned_and_compensated_equals_masked_original_with_the_refit(cnn, criterion, tmp_path):
    model, cal, x = cnn
    r = prune(model, rate=0.5, criterion=criterion, step=0.25, calibration=cal, compensate=True)
    assert set(r.plan.refits) == {"c2", "pw", "d1", "out"}  # every consumer of a pruned group
    assert r.params_after < r.params_before
    ref, removed = masked_refit_reference(model, r.plan)
    assert removed  # channels really were removed
    close(outputs(r.model, x), outputs(ref, x), 1e-5, f"{criterion}: pruned vs masked+refit reference")
    # replay from the saved JSON plan on the original
    r.plan.save(tmp_path / "p.json")
    replay = Plan.load(tmp_path / "p.json").apply(model)
    close(outputs(replay, x), outputs(r.model, x), 1e-6, "replayed plan")


def test_zero_rate_is_the_identity_and_records_no_refit(cnn):
    model, cal, x = cnn
    r = prune(model, rate=0.0, criterion="flow", calibration=cal, compensate=True)
    assert r.plan.refits == {}
    close(outputs(r.model, x), outputs(model, x), 1e-6, "0% prune")


def test_refit_lowers_the_calibration_error_at_the_same_channels(cnn):
    model, cal, _ = cnn
    plain = prune(model, rate=0.5, criterion="flow", step=0.5, calibration=cal, compensate=False)
    comp = prune(model, rate=0.5, criterion="flow", step=0.5, calibration=cal, compensate=True)
    assert plain.plan.layers == comp.plan.layers  # one step: same channels chosen
    ref = outputs(model, cal)
    e_plain = output_loss(outputs(plain.model, cal), ref)
    e_comp = output_loss(outputs(comp.model, cal), ref)
    assert e_comp < 0.5 * e_plain, (e_comp, e_plain)


def test_dense_refit_is_the_ridge_solution():
    """Dense consumer with more samples than inputs: the refit solves the normal equations
    (bias unpenalised) of the ridge problem against the original pre-activations."""
    keras.utils.set_random_seed(0)
    L = keras.layers
    model = keras.Sequential([keras.Input((6,)), L.Dense(10, activation="relu", name="h"), L.Dense(4, name="o")])
    cal = np.random.default_rng(2).normal(size=(300, 6)).astype(np.float32)
    r = prune(model, rate=0.5, criterion="l1", step=0.5, calibration=cal, compensate=True, ridge=1e-2)
    kept = r.plan.layers["h"]
    wh, bh = model.get_layer("h").get_weights()
    wo, bo = model.get_layer("o").get_weights()
    hid = np.maximum(cal.astype(np.float64) @ wh + bh, 0)
    y = hid @ wo + bo
    a = np.hstack([hid[:, kept], np.ones((300, 1))])
    d = len(kept)
    lam = 1e-2 * np.trace(a[:, :d].T @ a[:, :d]) / d
    prior = np.vstack([wo[kept], bo[None]])
    reg = np.diag([lam] * d + [0.0])
    sol = np.linalg.solve(a.T @ a + reg, a.T @ y + reg @ prior)
    got = r.model.get_layer("o").get_weights()
    close(got[0], sol[:d], 1e-4, "kernel")
    close(got[1], sol[d], 1e-4, "bias")


@pytest.mark.slow
@pytest.mark.parametrize("key", ["resnet8", "kws"])
@pytest.mark.parametrize("rate", [0.3, 0.5])
def test_mlperf_flow_compensation_exact_against_masked_refit_reference(key, rate, mlperf_models):
    from conftest import mlperf_path

    model = mlperf_models(key)
    if key == "kws":
        x = np.load(mlperf_path("calibration_samples.npz"))["specs"][:24].astype(np.float32)
    else:
        x = np.random.default_rng(0).uniform(0, 1, (24, *model.inputs[0].shape[1:])).astype(np.float32)
    cal, ev = x[:16], x[16:]
    r = prune(model, rate=rate, criterion="flow", step=rate, calibration=cal, compensate=True)
    assert r.plan.refits, "nothing refitted"
    assert r.params_after < r.params_before
    ref, _ = masked_refit_reference(model, r.plan)
    close(outputs(r.model, ev), outputs(ref, ev), 1e-5, f"{key} {rate}")
    replay = Plan.from_dict(r.plan.to_dict()).apply(model)
    close(outputs(replay, ev), outputs(r.model, ev), 1e-6, f"{key} {rate} replay")


@pytest.mark.slow
def test_run_default_engine_on_the_example_is_flow_with_compensation_and_replays(tmp_path, capsys):
    """`edgeprune run` with data picks flow + compensation + global widths, says so per candidate, and the
    candidate's plan (with its refits) replays to the candidate's model."""
    import json

    from edgeprune.cli import run_cli
    from edgeprune.pipeline.example import example_model_path
    from edgeprune.pipeline.data.loading import load_model

    out = tmp_path / "run"
    code = run_cli(["run", "--out", str(out), "--step", "0.3", "--max-rate", "0.3", "--runs", "2", "--warmup", "0",
                    "--json"])
    rep = json.loads(capsys.readouterr().out)
    assert code == 0
    assert rep["settings"]["criterion"] == "flow" and rep["settings"]["compensate"] is True
    c = rep["candidates"][1]
    assert c["made_by"]["criterion"] == "flow" and c["made_by"]["compensation"].startswith("ridge least-squares refit")
    assert c["made_by"]["calibration"] == "held-out calibration split"
    plan = Plan.load(out / c["files"]["plan"])
    assert plan.refits
    original = load_model(example_model_path())
    # widths by the global greedy: the rate is the fraction of the prunable parameters removed
    from edgeprune.pipeline.prune.allocation import GlobalGreedy, prunable_params, removed_params
    from edgeprune.pipeline.prune.graph import DependencyGraph
    from edgeprune.pipeline.prune.surgery import PruneState

    assert rep["settings"]["allocation"] == "global" and plan.allocation == "global"
    assert c["made_by"]["allocation"].startswith("global greedy")
    graph = DependencyGraph(original)
    full = PruneState(graph)
    total = prunable_params(graph, full)
    slack = max(GlobalGreedy._per_channel(graph, full, g) for g in graph.prunable_groups) / total
    assert 0.3 <= removed_params(graph, plan.to_state(graph), total) <= 0.3 + slack
    x = np.random.default_rng(0).uniform(0, 1, (8, 28, 28, 1)).astype(np.float32)
    saved = keras.models.load_model(out / c["files"]["keras"], compile=False)
    close(outputs(plan.apply(original), x), outputs(saved, x), 1e-6, "plan replay vs saved candidate")


@pytest.mark.parametrize("shape,kernel,cfg", [
    ((3, 9, 7, 2), (3, 3, 2, 4), {"padding": "same", "strides": (1, 1), "dilation_rate": (1, 1)}),
    ((2, 8, 8, 3), (2, 4, 3, 4), {"padding": "same", "strides": (2, 2), "dilation_rate": (1, 1)}),
    ((2, 10, 9, 1), (3, 2, 1, 4), {"padding": "valid", "strides": (3, 3), "dilation_rate": (1, 1)}),
    ((2, 11, 10, 2), (3, 3, 2, 4), {"padding": "same", "strides": (1, 1), "dilation_rate": (2, 2)}),
    ((3, 13, 2), (5, 2, 4), {"padding": "same", "strides": (2,), "dilation_rate": (1,)}),
    ((3, 13, 2), (3, 2, 4), {"padding": "valid", "strides": (1,), "dilation_rate": (3,)}),
])
def test_patches_on_a_row_subset_are_tensorflows_patches_exactly(shape, kernel, cfg):
    """The refit's im2col (gathered in numpy, only the seeded rows) must equal
    tf.image.extract_patches' rows bit for bit (the refits, so the plans, depend on it)."""
    import tensorflow as tf

    from edgeprune.pipeline.prune.compensate import _patches, patch_count

    x = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    x2 = x[:, None] if x.ndim == 3 else x
    ks = (1, kernel[0]) if x.ndim == 3 else kernel[:2]
    st = (1, cfg["strides"][0]) if x.ndim == 3 else cfg["strides"]
    dl = (1, cfg["dilation_rate"][0]) if x.ndim == 3 else cfg["dilation_rate"]
    ref = np.asarray(tf.image.extract_patches(tf.constant(x2), sizes=[1, *ks, 1], strides=[1, *st, 1],
                                              rates=[1, *dl, 1], padding=cfg["padding"].upper()))
    ref = ref.reshape(-1, ref.shape[-1])
    assert patch_count(x.shape, cfg, kernel) == len(ref)
    got = _patches(x, cfg, kernel)
    assert got.shape == ref.shape and np.array_equal(got, ref)
    rows = np.sort(np.random.default_rng(0).choice(len(ref), len(ref) // 3, replace=False))
    assert np.array_equal(_patches(x, cfg, kernel, rows), ref[rows])


def residual_cnn():
    keras.utils.set_random_seed(11)
    L = keras.layers
    x = keras.Input((10, 10, 3))
    h = L.Conv2D(8, 3, padding="same", activation="relu", name="stem")(x)
    r = L.Conv2D(16, 1, activation="relu", name="expand")(h)
    r = L.DepthwiseConv2D(3, padding="same", name="dw")(r)
    r = L.Conv2D(8, 1, name="project")(r)
    h = L.Add(name="add")([h, r])
    h = L.Conv2D(12, 3, strides=2, activation="relu", name="c2")(h)
    h = L.GlobalAveragePooling2D(name="gap")(h)
    out = L.Dense(4, activation="softmax", name="out")(h)
    return keras.Model(x, out)


def test_layerwise_pass_sees_every_layers_input_exactly():
    """run_layerwise hands each visited layer the input layer_inputs computes, bit for bit, and a
    visitor that changes a layer's weights changes what every later layer sees (the refit's need)."""
    from edgeprune.pipeline.prune.calib import layer_inputs, runs_on
    from edgeprune.pipeline.prune.layerwise import run_layerwise

    m = residual_cnn()
    x = np.random.default_rng(3).uniform(0, 1, (40, 10, 10, 3)).astype(np.float32)
    names = ["expand", "project", "c2", "out"]
    assert not runs_on(m, names) and runs_on(m, ["c2", "out"])  # the Add: project's input alone does not give c2's
    seen = {}
    assert run_layerwise(m, x, {n: (lambda a, n=n: seen.__setitem__(n, a.copy())) for n in names})
    want = layer_inputs(m, names, x)
    for n in names:
        assert np.array_equal(seen[n], want[n]), n
    w = m.get_layer("project").get_weights()
    seen.clear()
    run_layerwise(m, x, {"project": lambda a: m.get_layer("project").set_weights([w[0] * 0.5, w[1]]),
                         "c2": lambda a: seen.__setitem__("c2", a.copy())})
    assert np.array_equal(seen["c2"], layer_inputs(m, ["c2"], x)["c2"])  # after the change
    assert not np.allclose(seen["c2"], want["c2"])


def test_refit_of_a_residual_network_in_one_layerwise_pass_equals_the_per_layer_refit(monkeypatch):
    """A residual network's refit runs ONE layer-wise pass (no layer's input follows from the last
    one's alone); it computes exactly what refitting layer by layer, each from a prefix pass, does."""
    from edgeprune.pipeline.prune import compensate

    m = residual_cnn()
    cal = np.random.default_rng(4).uniform(0, 1, (48, 10, 10, 3)).astype(np.float32)
    ev = np.random.default_rng(5).uniform(0, 1, (16, 10, 10, 3)).astype(np.float32)
    a = prune(m, rate=0.4, criterion="flow", step=0.2, calibration=cal, compensate=True)
    calls = []
    real = compensate.Compensator._refit_layerwise
    monkeypatch.setattr(compensate.Compensator, "_refit_layerwise",
                        lambda self, *args: calls.append(1) or real(self, *args))
    a2 = prune(m, rate=0.4, criterion="flow", step=0.2, calibration=cal, compensate=True)
    assert calls  # the layer-wise pass ran
    monkeypatch.setattr(compensate, "runs_on", lambda model, names: True)  # force layer by layer
    b = prune(m, rate=0.4, criterion="flow", step=0.2, calibration=cal, compensate=True)
    assert a.plan.refits and set(a.plan.refits) == set(b.plan.refits)
    for name in a.plan.refits:
        for wa, wb in zip(a.model.get_layer(name).get_weights(), b.model.get_layer(name).get_weights()):
            np.testing.assert_allclose(wa, wb, rtol=0, atol=1e-6)
    np.testing.assert_allclose(outputs(a.model, ev), outputs(b.model, ev), atol=1e-6)
    np.testing.assert_array_equal(outputs(a.model, ev), outputs(a2.model, ev))
    ref, _ = masked_refit_reference(m, a.plan)
    close(outputs(a.model, ev), outputs(ref, ev), 1e-5, "layerwise refit vs masked reference")
