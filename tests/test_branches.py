"""Residual branch removal (pipeline/prune/branches.py): numbers, not smoke.

Removing a branch must compute exactly what the original computes with that branch's output
zeroed (its last BatchNorm's gamma and beta set to 0), save exactly the branch's parameters,
be recorded in the plan and replay bit-exactly; with compensation, the layers behind the Add
are refitted (recorded in the plan) and the refit lowers the output error; the global greedy
with branch moves on removes a branch that carries nothing.
"""
from __future__ import annotations

import numpy as np
import pytest

import keras  # noqa: E402  (a hard dependency: a missing keras must fail, not skip)

from edgeprune.pipeline.prune.branches import branch_energy, find_branches, remove_branch, removed_layers
from edgeprune.pipeline.prune.calib import output_loss, outputs
from edgeprune.pipeline.prune.graph import DependencyGraph
from edgeprune.pipeline.prune.plan import Plan
from edgeprune.pipeline.prune.surgery import PruneState, build_model


def close(a, b, tol, what=""):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    scale = max(1.0, float(np.abs(b).max()))
    err = float(np.abs(a - b).max())
    assert err <= tol * scale, f"{what}: max abs diff {err:.3g} > {tol:g} * {scale:.3g}"


def zeroed(model, bn_name):
    """The original with ``bn_name``'s output forced to 0 (gamma = beta = 0)."""
    ref = keras.models.clone_model(model)
    ref.set_weights(model.get_weights())
    layer = ref.get_layer(bn_name)
    w = layer.get_weights()
    w[0][:] = 0.0
    w[1][:] = 0.0
    layer.set_weights(w)
    return ref


@pytest.fixture(scope="module")
def resnet(mlperf_models):
    model = mlperf_models("resnet8")
    x = np.random.default_rng(0).uniform(0, 255, (24, 32, 32, 3)).astype(np.float32)
    return model, x


def test_resnet8_branches_found(resnet):
    model, _ = resnet
    br = {b.key: b.layers for b in find_branches(DependencyGraph(model))}
    # the identity block's skip is no branch (it is the fork itself); the projections are
    assert br == {
        ("add", 1): ("conv2d_1", "batch_normalization_1", "activation_1", "conv2d_2", "batch_normalization_2"),
        ("add_1", 0): ("conv2d_5",),
        ("add_1", 1): ("conv2d_3", "batch_normalization_3", "activation_3", "conv2d_4", "batch_normalization_4"),
        ("add_2", 0): ("conv2d_8",),
        ("add_2", 1): ("conv2d_6", "batch_normalization_5", "activation_5", "conv2d_7", "batch_normalization_6"),
    }


@pytest.mark.slow
@pytest.mark.parametrize("add,last_bn", [("add", "batch_normalization_2"), ("add_1", "batch_normalization_4"),
                                         ("add_2", "batch_normalization_6")])
def test_removed_branch_equals_original_with_branch_output_zeroed(resnet, add, last_bn):
    model, x = resnet
    graph = DependencyGraph(model)
    branch = next(b for b in find_branches(graph) if b.key == (add, 1))
    state = PruneState(graph)
    remove_branch(state, branch)
    pruned = build_model(graph, state)
    close(outputs(pruned, x), outputs(zeroed(model, last_bn), x), 1e-5, add)
    saved = sum(model.get_layer(n).count_params() for n in branch.layers)
    assert pruned.count_params() == model.count_params() - saved
    assert not any(layer.name in branch.layers for layer in pruned.layers)
    plan = Plan.from_dict(Plan.from_state(state).to_dict())
    assert plan.branches == [[add, 1]]
    close(outputs(plan.apply(model), x), outputs(pruned, x), 0.0, "replay")


@pytest.mark.slow
def test_branch_removal_with_compensation_refits_behind_the_add(resnet):
    from edgeprune.pipeline.prune.compensate import Compensator

    model, x = resnet
    cal, ev = x[:16], x[16:]
    graph = DependencyGraph(model)
    state = PruneState(graph)
    remove_branch(state, next(b for b in find_branches(graph) if b.key == ("add_2", 1)))
    uncompensated = build_model(graph, state)
    comp = Compensator(graph, cal, 1e-2)
    names = comp.refit(state, lambda: build_model(graph, state))
    assert names == ["dense"]  # the only weighted consumer behind add_2 (through pooling and flatten)
    assert removed_layers(state).isdisjoint(names)
    compensated = build_model(graph, state)
    ref = outputs(model, cal)
    assert output_loss(outputs(compensated, cal), ref) < 0.5 * output_loss(outputs(uncompensated, cal), ref)
    plan = Plan.from_dict(Plan.from_state(state).to_dict())
    assert set(plan.refits) == {"dense"} and plan.branches == [["add_2", 1]]
    # = the original with the branch zeroed and the refitted Dense weights
    reference = zeroed(model, "batch_normalization_6")
    reference.get_layer("dense").set_weights(state.weights["dense"])
    close(outputs(compensated, ev), outputs(reference, ev), 1e-5, "compensated")
    close(outputs(plan.apply(model), ev), outputs(compensated, ev), 1e-6, "replay")


def dead_branch_model():
    keras.utils.set_random_seed(5)
    L = keras.layers
    x = keras.Input((8, 8, 3))
    h = L.Conv2D(8, 3, padding="same", activation="relu", name="c0")(x)
    b = L.Conv2D(8, 3, padding="same", activation="relu", name="b1")(h)
    b = L.Conv2D(8, 3, padding="same", name="b2")(b)
    b = L.BatchNormalization(name="bbn")(b)
    h = L.Add(name="add")([h, b])
    h = L.ReLU(name="r")(h)
    h = L.Conv2D(16, 3, padding="same", activation="relu", name="c3")(h)
    h = L.GlobalAveragePooling2D(name="gap")(h)
    out = L.Dense(4, activation="softmax", name="out")(h)
    m = keras.Model(x, out)
    bn = m.get_layer("bbn")
    g, beta, mu, var = bn.get_weights()
    bn.set_weights([np.full(8, 1e-4, np.float32), np.zeros(8, np.float32), mu, var])  # a branch carrying ~nothing
    return m


@pytest.mark.slow
def test_global_greedy_removes_a_branch_that_carries_nothing():
    from edgeprune.pipeline.prune.allocation import GlobalGreedy
    from edgeprune.pipeline.prune.pruner import PruneConfig, Pruner

    model = dead_branch_model()
    x = np.random.default_rng(2).uniform(0, 1, (32, 8, 8, 3)).astype(np.float32)
    energy = branch_energy(model, find_branches(DependencyGraph(model)), x)
    assert energy[("add", 1)] < 1e-6  # the flow score sees the dead branch
    p = Pruner(model, PruneConfig(rate=0.5, criterion="flow", calibration=x, compensate=True,
                                  allocation=GlobalGreedy(branches=True)))
    p.step_to(0.3)
    assert [tuple(k) for k in p.state.branches] == [("add", 1)]
    built = p.build()
    assert built.count_params() <= model.count_params() * 0.75
    close(outputs(built, x), outputs(model, x), 1e-2, "dead branch removed")
    close(outputs(p.plan().apply(model), x), outputs(built, x), 1e-6, "replay")
    # off by default: the same step without branch moves removes channels only
    q = Pruner(model, PruneConfig(rate=0.5, criterion="flow", calibration=x, compensate=True, allocation="global"))
    q.step_to(0.3)
    assert not getattr(q.state, "branches", None)


def test_sequential_model_has_no_branches():
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d"), keras.layers.Dense(2, name="o")])
    assert find_branches(DependencyGraph(m)) == []
