"""``--objective`` of the global allocation (pipeline/prune/allocation/objective.py): ``size`` (and
``auto`` when the unpruned model is predicted to miss no budget) reproduces the
parameter-driven widths exactly; ``ram`` and ``macs`` cut their resource more than ``size`` at
the same rate, and reach the rate on their own resource; ``auto`` weights the missed budgets by
how far they are missed; a bad ``--objective`` exits 2 with error:/fix: through the real CLI."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest

import keras  # noqa: E402

from edgeprune.pipeline.prune.allocation import GlobalGreedy
from edgeprune.pipeline.prune.allocation.objective import Objective, resolve
from edgeprune.pipeline.prune.graph import DependencyGraph
from edgeprune.pipeline.prune.pruner import PruneConfig, Pruner
from edgeprune.pipeline.search.resources import ResourceModel


def act_heavy_cnn():
    """Early wide conv (the activation peak), late wide Dense (the parameters)."""
    keras.utils.set_random_seed(7)
    L = keras.layers
    x = keras.Input((16, 16, 1))
    h = L.Conv2D(16, 3, padding="same", activation="relu", name="c1")(x)
    h = L.MaxPooling2D(name="p1")(h)
    h = L.Conv2D(16, 3, padding="same", activation="relu", name="c2")(h)
    h = L.MaxPooling2D(name="p2")(h)
    h = L.Flatten(name="f")(h)
    h = L.Dense(64, activation="relu", name="d1")(h)
    out = L.Dense(4, activation="softmax", name="out")(h)
    return keras.Model(x, out)


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(4)
    return act_heavy_cnn(), rng.uniform(0, 1, (40, 16, 16, 1)).astype(np.float32)


def prune_with(model, cal, alloc, rate):
    p = Pruner(model, PruneConfig(rate=rate, criterion="flow", step=rate, calibration=cal, compensate=True,
                                  allocation=alloc))
    p.step_to(rate)
    return p


def kept(p):
    return {g: p.state.kept[g].tolist() for g in p.state.kept}


def test_size_objective_reproduces_todays_widths_exactly(setup):
    model, cal = setup
    today = prune_with(model, cal, GlobalGreedy(), 0.5)
    size = prune_with(model, cal, GlobalGreedy(objective=resolve("size")), 0.5)
    auto_fits = resolve("auto", predicted={"flash": 100, "ram": 50, "latency": 1.0},
                        budgets={"flash": 200, "ram": 60, "latency": 2.0})
    assert auto_fits.is_size and auto_fits.requested == "auto"
    auto = prune_with(model, cal, GlobalGreedy(objective=auto_fits), 0.5)
    assert kept(size) == kept(today) and kept(auto) == kept(today)
    assert size.plan().widths == today.plan().widths
    for name, ws in today.state.weights.items():  # refits included
        for a, b in zip(ws, size.state.weights[name]):
            assert np.array_equal(a, b), name


@pytest.mark.parametrize("resource", ["ram", "macs"])
def test_resource_objective_cuts_its_resource_more_than_size(setup, resource):
    model, cal = setup
    graph = DependencyGraph(model)
    rm = ResourceModel(graph, "int8")
    res0 = rm.evaluate(None)
    fig = {"ram": lambda r: r.peak_activation_bytes, "macs": lambda r: r.macs}[resource]
    rate = 0.5
    by_size = rm.evaluate(prune_with(model, cal, GlobalGreedy(), rate).state)
    obj = resolve(resource)
    assert obj.name == resource and not obj.is_size
    by_res = rm.evaluate(prune_with(model, cal, GlobalGreedy(objective=obj), rate).state)
    # the rate is the fraction of the objective's resource removed: reached
    assert 1 - fig(by_res) / fig(res0) >= rate - 1e-9, (fig(by_res), fig(res0))
    assert fig(by_res) < fig(by_size), (resource, fig(by_res), fig(by_size), fig(res0))
    if resource == "ram":  # the peak is c1's output: the parameter-driven greedy leaves most of it
        assert by_size.peak_activation_bytes > 0.5 * res0.peak_activation_bytes


def test_auto_weights_the_missed_budgets_by_how_far():
    o = resolve("auto", predicted={"flash": 100, "ram": 400, "latency": 3.0},
                budgets={"flash": 200, "ram": 100, "latency": 1.5})
    assert set(o.weights) == {"ram", "latency", "size"} and o.name == "auto"
    w_ram, w_lat = math.log(4), math.log(2)
    w_size = (w_ram + w_lat) / 2  # the file counts as the mean of the missed budgets
    total = w_ram + w_lat + w_size
    assert o.weights["ram"] == pytest.approx(w_ram / total)
    assert o.weights["latency"] == pytest.approx(w_lat / total)
    assert o.weights["size"] == pytest.approx(w_size / total)
    assert o.tie == 0.0  # the parameters are in the weights already
    assert "weighted fraction" in o.rate_measures
    only_flash = resolve("auto", predicted={"flash": 300}, budgets={"flash": 200})
    assert only_flash.is_size
    one = resolve("auto", predicted={"ram": 47744}, budgets={"ram": 35000})
    assert one.weights == {"ram": 0.5, "size": 0.5}
    assert "peak activation" in one.rate_measures and "prunable parameters" in one.rate_measures
    explicit = resolve("ram")
    assert explicit.weights == {"ram": 1.0} and explicit.tie > 0
    assert explicit.rate_measures.startswith("fraction of the predicted peak activation memory")


def test_bad_objective_exits_2_with_error_and_fix(tmp_path):
    env = dict(os.environ, COLUMNS="200", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-m", "edgeprune", "run", "--objective", "speed", "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out[-3000:]
    assert proc.returncode == 2, out[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[0].startswith("error: ") and "--objective 'speed'" in lines[0], lines
    assert lines[1].strip().startswith("fix:") and "auto, size, latency, ram, macs" in lines[1], lines
    assert not (tmp_path / "o" / "report.json").exists()


@pytest.mark.slow
def test_run_reports_the_objective_and_the_per_layer_table(setup, tmp_path):
    """A whole run on a microcontroller profile with --objective ram: the report says what the
    rate measures, the chosen model's per-layer table adds up to its figures, and the greedy
    reached the rate on the peak activation memory."""
    from edgeprune.pipeline.search import run_config as rc
    from edgeprune.pipeline.search.run import RunConfig, run

    model, _ = setup
    rng = np.random.default_rng(9)
    mp = tmp_path / "m.keras"
    model.save(mp)
    x = rng.uniform(0, 1, (120, 16, 16, 1)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    res = run(RunConfig(model=rc.ModelOptions(path=mp), data=rc.DataOptions(path=tmp_path / "d.npz"),
                        device=rc.DeviceOptions(name="nrf52840"), prune=rc.PruneOptions(objective="ram"),
                        search=rc.SearchOptions(step=0.3, max_rate=0.3), budgets=rc.BudgetOptions(min_fidelity=0.01),
                        output=rc.OutputOptions(out=tmp_path / "run"), measurement=rc.MeasurementOptions(runs=3, warmup=1)))
    rep = res.report
    obj = rep["settings"]["objective"]
    assert obj["requested"] == "ram" and obj["name"] == "ram" and obj["weights"] == {"ram": 1.0}
    assert "peak activation memory" in obj["rate_measures"]
    assert rep["settings"]["stages"]["rate"] == obj["rate_measures"]
    assert res.exit_code == 0 and rep["chosen"]["rate"] == pytest.approx(0.3)
    layers = {r["layer"]: r for r in rep["chosen"]["layers"]}
    assert sum(r["params"] for r in layers.values()) == rep["chosen"]["params"]
    assert layers["c1"]["width_before"] == 16 and layers["c1"]["width"] < 16
    assert sum(r["latency_share"] for r in layers.values()) == pytest.approx(1.0, abs=1e-3)
    # the rate is the fraction of the peak removed: c1's output + its input or p1 is the peak
    rm = ResourceModel(DependencyGraph(model), "int8")
    peak0 = rm.evaluate(None).peak_activation_bytes
    from edgeprune.pipeline.data.loading import load_model
    from edgeprune.pipeline.search.resources import resources_of

    chosen = load_model(tmp_path / "run" / (rep["chosen"]["name"] + ".keras"))
    assert 1 - resources_of(chosen).peak_activation_bytes / peak0 >= 0.3 - 1e-9


class _Calibrated:
    """Stands for the run: its ``ram_predictor`` calibrated on a measured arena."""

    def __init__(self, peak: int, arena: int):
        from edgeprune.pipeline.search.resources import RamPredictor

        self.ram_predictor = RamPredictor()
        self.ram_predictor.calibrate(peak, arena)


def test_auto_pays_for_ram_until_the_target_is_met_then_per_parameter(setup):
    """auto (constraint-driven): while the predicted arena (peak activation memory + the overhead
    measured on the unpruned model, 8 B less per channel removed) is over the RAM target the
    chunks pay in the weighted RAM + parameters; once it is met, per parameter only (the RAM
    term is clipped at the target), so at the same rate the file is smaller than with the
    weighted objective that keeps paying for RAM, and the arena still meets the target."""
    from edgeprune.pipeline.prune.allocation.objective import TARGET_MARGIN

    model, cal = setup
    graph = DependencyGraph(model)
    rm = ResourceModel(graph, "int8")
    res0 = rm.evaluate(None)
    assert res0.quant_channels == 16 + 16 + 64 + 4
    peak0, runtime, overhead = res0.peak_activation_bytes, 1000, 700
    arena_budget = int(0.6 * (peak0 + overhead))
    predicted, budgets = {"ram": peak0 + runtime}, {"ram": runtime + arena_budget}
    source = _Calibrated(peak0, peak0 + overhead)
    switching = resolve("auto", res0=res0, predicted=predicted, budgets=budgets, ram_source=source)
    weighted = resolve("auto", res0=res0, predicted=predicted, budgets=budgets)  # no calibration: no target
    assert switching.switching and not weighted.switching
    assert weighted.weights == switching.weights == {"ram": 0.5, "size": 0.5}
    target = arena_budget * (1 - TARGET_MARGIN)
    assert switching.target("ram") == pytest.approx(target)
    assert weighted.target("ram") is None
    assert switching.to_dict()["targets"] == {"ram": pytest.approx(target)}
    assert switching.value(res0, res0) == pytest.approx(1.0)

    rate = 0.6
    g_sw = GlobalGreedy(objective=switching)
    p_sw = prune_with(model, cal, g_sw, rate)
    g_w = GlobalGreedy(objective=weighted)
    p_w = prune_with(model, cal, g_w, rate)
    r_sw, r_w = rm.evaluate(p_sw.state), rm.evaluate(p_w.state)
    arena = r_sw.peak_activation_bytes + overhead - 8 * (res0.quant_channels - r_sw.quant_channels)
    assert switching.auto_figure(r_sw, res0, "ram") == arena
    assert arena <= target
    drives = [row["drives"] for row in g_sw.log]
    assert drives[0] == ["ram"] and drives[-1] == ["size"], drives
    first_size = drives.index(["size"])
    assert all(d == ["ram"] for d in drives[:first_size]) and all(d == ["size"] for d in drives[first_size:]), drives
    # the rate is reached on the clipped value: 0.5 x RAM (down to the target) + 0.5 x parameters
    v = 0.5 * target / (peak0 + overhead) + 0.5 * r_sw.params / res0.params
    assert switching.value(r_sw, res0) == pytest.approx(v)
    assert 1 - v >= rate - 1e-9
    # at the same rate the switching allocation removed more parameters than the weighted one,
    # which kept paying for RAM past the budget
    assert r_sw.params < r_w.params, (r_sw.params, r_w.params, res0.params)
    assert r_w.peak_activation_bytes < r_sw.peak_activation_bytes


def test_auto_on_a_board_builds_the_latency_model_when_a_latency_budget_is_set(setup, tmp_path):
    """``auto`` (the default) with ``--latency-budget`` on a board that runs the interpreter (the
    local device): the latency model is built (measured on the board) so that auto knows the
    unpruned model misses the budget, and latency drives the allocation with the parameters.
    Without the model auto took the budget for met and fell back to size."""
    from edgeprune.pipeline.search import run_config as rc
    from edgeprune.pipeline.search.run import RunConfig, run

    model, _ = setup
    rng = np.random.default_rng(11)
    mp = tmp_path / "m.keras"
    model.save(mp)
    np.savez(tmp_path / "d.npz", x=rng.uniform(0, 1, (120, 16, 16, 1)).astype(np.float32))
    res = run(RunConfig(model=rc.ModelOptions(path=mp), data=rc.DataOptions(path=tmp_path / "d.npz"),
                        device=rc.DeviceOptions(name="local"), search=rc.SearchOptions(step=0.3, max_rate=0.3),
                        budgets=rc.BudgetOptions(min_fidelity=0.01, latency_ms=1e-5),
                        output=rc.OutputOptions(out=tmp_path / "run"),
                        measurement=rc.MeasurementOptions(runs=3, warmup=1, threads=1)))
    obj = res.report["settings"]["objective"]
    assert obj["requested"] == "auto" and obj["name"] == "auto", obj
    assert "latency" in obj["missed"] and obj["missed"]["latency"]["budget"] == pytest.approx(1e-5)
    assert set(obj["weights"]) == {"latency", "size"}
    assert obj["latency_model"] is not None and (tmp_path / "run" / "latency-model.json").is_file()
    assert res.exit_code == 3  # 10 ns is out of any model's reach
