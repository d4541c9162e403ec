"""Surgery exactness: removing channels == masking the same channels in the original.

Property tests build small random Sequential / functional models (Dense chains with or
without BatchNormalization and activations; Conv2D/BN/ReLU/DepthwiseConv2D/MaxPool heads
with GlobalAvgPool or Flatten -> Dense; residual Add blocks; Concatenate of conv branches;
SeparableConv2D), give them random weights (BN moving statistics included), remove random
channels of every prunable group (never all) and compare the physically smaller model with
the masked original on random inputs. PAODING's merges are checked on duplicated neurons.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import keras  # noqa: E402  (a hard dependency: a missing keras must fail, not skip)

from edgeprune.pipeline.prune.graph import DependencyGraph  # noqa: E402
from edgeprune.pipeline.prune.plan import Plan  # noqa: E402
from edgeprune.pipeline.prune.pruner import prune  # noqa: E402
from edgeprune.pipeline.prune.surgery import masked_reference, PruneState, build_model, masked_model  # noqa: E402

L = keras.layers
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                database=None, print_blob=True)


# --------------------------------------------------------------------------- helpers
def randomize(model, seed: int) -> None:
    """Random non-trivial weights: kernels ~ N(0, 1/fan_in), biases, BN gamma/beta and
    moving statistics far from their (0, 1) defaults."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        new = []
        for w in layer.weights:
            shape, name = tuple(w.shape), w.name
            if name == "moving_variance":
                v = rng.uniform(0.3, 3.0, shape)
            elif name == "moving_mean":
                v = rng.normal(0.0, 0.7, shape)
            elif name == "gamma":
                v = rng.uniform(0.4, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
            elif name in ("beta", "bias"):
                v = rng.normal(0.0, 0.5, shape)
            else:  # kernels
                fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
                if name == "depthwise_kernel":
                    fan_in = int(np.prod(shape[:-2]))
                v = rng.normal(0.0, 1.0 / np.sqrt(max(fan_in, 1)), shape)
            new.append(v.astype(np.float32))
        if new:
            layer.set_weights(new)


def outputs(model, x) -> np.ndarray:
    return np.asarray(model(x, training=False))


def assert_close(a, b, rel=1e-5, what=""):
    """max |a - b| <= rel * max(1, output scale)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, f"{what}: shapes {a.shape} != {b.shape}"
    scale = max(1.0, float(np.abs(b).max()))
    err = float(np.abs(a - b).max())
    assert err <= rel * scale, f"{what}: max abs diff {err:.3g} > {rel:g} * scale {scale:.3g}"


def n_params(model) -> int:
    return int(sum(np.prod(w.shape) for w in model.weights))


def random_inputs(model, n: int, seed: int) -> np.ndarray:
    shape = tuple(model.inputs[0].shape[1:])
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (n, *shape)).astype(np.float32)


def reference_for_plan(original, plan: Plan):
    return masked_reference(original, plan)


# --------------------------------------------------------------------------- model generator
def _act(draw):
    return draw(st.sampled_from(["relu", "linear", "tanh", "sigmoid", "elu"]))


def _head(x, head: str, units: int):
    if head == "gap":
        x = L.GlobalAveragePooling2D()(x)
    elif head == "gmp":
        x = L.GlobalMaxPooling2D()(x)
    else:
        x = L.Flatten()(x)
    return L.Dense(units)(x)


@st.composite
def model_specs(draw):
    kind = draw(st.sampled_from(["dense", "conv", "residual", "concat", "separable"]))
    w = lambda: draw(st.integers(2, 6))  # noqa: E731
    spec = {"kind": kind, "seed": draw(st.integers(0, 2**31 - 1)), "out": draw(st.integers(1, 4))}
    if kind == "dense":
        spec["sequential"] = draw(st.booleans())
        spec["inp"] = draw(st.integers(2, 6))
        spec["layers"] = [
            {"units": w(), "act": _act(draw), "bn": draw(st.booleans()),
             "post": draw(st.sampled_from(["none", "relu_layer", "leaky", "dropout"]))}
            for _ in range(draw(st.integers(1, 3)))
        ]
    else:
        spec["hw"] = draw(st.sampled_from([4, 6]))
        spec["cin"] = draw(st.integers(1, 3))
        spec["widths"] = [w() for _ in range(3)]
        spec["head"] = draw(st.sampled_from(["gap", "gmp", "flatten"]))
        spec["bn"] = draw(st.booleans())
        spec["variant"] = draw(st.integers(0, 1))
    return spec


def build(spec):
    kind = spec["kind"]
    if kind == "dense":
        stack = []
        for lay in spec["layers"]:
            stack.append(L.Dense(lay["units"], activation=None if lay["bn"] else lay["act"]))
            if lay["bn"]:
                stack += [L.BatchNormalization(), L.Activation(lay["act"])]
            stack.append({"none": None, "relu_layer": L.ReLU(), "leaky": L.LeakyReLU(negative_slope=0.2),
                          "dropout": L.Dropout(0.5)}[lay["post"]])
        stack = [s for s in stack if s is not None] + [L.Dense(spec["out"])]
        if spec["sequential"]:
            model = keras.Sequential([keras.Input((spec["inp"],)), *stack])
        else:
            inp = keras.Input((spec["inp"],))
            x = inp
            for s in stack:
                x = s(x)
            model = keras.Model(inp, x)
    else:
        a, b, c = spec["widths"]
        bn = (lambda t: L.BatchNormalization()(t)) if spec["bn"] else (lambda t: t)
        inp = keras.Input((spec["hw"], spec["hw"], spec["cin"]))
        x = L.ReLU()(bn(L.Conv2D(a, 3, padding="same")(inp)))
        if kind == "conv":
            x = L.ReLU()(bn(L.DepthwiseConv2D(3, padding="same")(x)))
            x = L.MaxPooling2D(2)(x)
            x = L.Conv2D(b, 1, activation="relu")(x)
        elif kind == "residual":
            y = L.ReLU()(bn(L.Conv2D(b, 3, padding="same")(x)))
            y = bn(L.Conv2D(a, 3, padding="same")(y))
            x = L.ReLU()(L.Add()([x, y]))
            if spec["variant"]:  # projection shortcut: two new producers tied by an Add
                y = L.ReLU()(bn(L.Conv2D(c, 3, strides=2, padding="same")(x)))
                y = bn(L.Conv2D(b, 3, padding="same")(y))
                s = L.Conv2D(b, 1, strides=2)(x)
                x = L.ReLU()(L.Add()([s, y]))
        elif kind == "concat":
            p = L.Conv2D(b, 1, activation="relu")(x)
            q = L.Conv2D(c, 3, padding="same", activation="relu")(x)
            parts = [p, q] if not spec["variant"] else [x, q]  # variant: the stem's own channels too
            x = L.ReLU()(bn(L.Concatenate()(parts)))
            x = L.Conv2D(a, 1)(x)
        else:  # separable
            x = L.SeparableConv2D(b, 3, padding="same")(x)
            x = L.ReLU()(bn(x))
            if spec["variant"]:
                x = L.SeparableConv2D(c, 3, padding="same", activation="relu")(x)
        model = keras.Model(inp, _head(x, spec["head"], spec["out"]))
    randomize(model, spec["seed"])
    return model


def random_removal(graph, seed: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    removed = {}
    for k, g in enumerate(graph.prunable_groups):
        n = int(rng.integers(1 if k == 0 else 0, g.size))  # never all; the first group loses >= 1
        if n:
            removed[g.id] = np.sort(rng.choice(g.size, n, replace=False))
    return removed


# --------------------------------------------------------------------------- properties
@pytest.mark.slow
@settings(max_examples=40, **SETTINGS)
@given(spec=model_specs(), seed=st.integers(0, 2**31 - 1))
def test_removing_equals_masking_on_random_models(spec, seed):
    model = build(spec)
    graph = DependencyGraph(model)
    assert graph.prunable_groups, f"generator produced a model with nothing to prune: {spec}"
    removed = random_removal(graph, seed)
    state = PruneState(graph)
    for gid, rem in removed.items():
        state.remove(gid, rem)
    pruned = build_model(graph, state)
    reference = masked_model(graph, removed)
    x = random_inputs(model, 4, seed)
    assert_close(outputs(pruned, x), outputs(reference, x), what=f"pruned vs masked, {spec['kind']}")
    assert n_params(pruned) < n_params(model)
    for gid, rem in removed.items():  # every producer of the group is physically narrower
        for p in graph.groups[gid].producers:
            layer = pruned.get_layer(p)
            width = getattr(layer, "units", None) or getattr(layer, "filters")
            assert width == graph.groups[gid].size - len(rem)
    # the plan replays the same surgery on the original
    plan = Plan.from_dict(Plan.from_state(state).to_dict())
    np.testing.assert_array_equal(outputs(plan.apply(model), x), outputs(pruned, x))


@pytest.mark.slow
@settings(max_examples=25, **SETTINGS)
@given(spec=model_specs(), criterion=st.sampled_from(["paoding", "l1", "random"]),
       rate=st.sampled_from([0.2, 0.5, 0.8]))
def test_prune_equals_merged_and_masked_original(spec, criterion, rate):
    """The whole pipeline (progressive steps, criterion, merges) against an independent
    reference: the original with the plan's merges applied and its removed channels masked."""
    model = build(spec)
    result = prune(model, rate=rate, criterion=criterion, step=0.25, input_range=(-1.0, 1.0))
    reference, removed = reference_for_plan(model, result.plan)
    x = random_inputs(model, 4, spec["seed"] % 1000)
    assert_close(outputs(result.model, x), outputs(reference, x), what=f"{criterion} {rate} {spec['kind']}")
    for row in result.layers:
        assert 1 <= row.after <= row.before
    if removed:
        assert result.params_after < result.params_before


def test_masking_is_not_a_no_op():
    """The comparison above can fail: masking a used channel changes the outputs, and a
    model whose surgery forgot the consumer rows is detected."""
    spec = {"kind": "dense", "seed": 3, "out": 2, "sequential": False, "inp": 4,
            "layers": [{"units": 5, "act": "tanh", "bn": True, "post": "none"}]}
    model = build(spec)
    graph = DependencyGraph(model)
    gid = graph.prunable_groups[0].id
    x = random_inputs(model, 8, 0)
    masked = masked_model(graph, {gid: np.array([1, 3])})
    assert np.abs(outputs(masked, x) - outputs(model, x)).max() > 1e-3
    state = PruneState(graph)
    state.remove(gid, [1, 3])
    pruned = build_model(graph, state)
    wrong = masked_model(graph, {gid: np.array([0, 3])})
    assert np.abs(outputs(pruned, x) - outputs(wrong, x)).max() > 1e-3
    assert_close(outputs(pruned, x), outputs(masked, x))


def test_zero_rate_reproduces_random_conv_model():
    spec = {"kind": "residual", "seed": 5, "out": 3, "hw": 6, "cin": 2, "widths": [4, 5, 3],
            "head": "flatten", "bn": True, "variant": 1}
    model = build(spec)
    x = random_inputs(model, 4, 1)
    result = prune(model, rate=0.0)
    np.testing.assert_allclose(outputs(result.model, x), outputs(model, x), atol=1e-5, rtol=0)
    assert result.params_after == result.params_before == n_params(model)


# --------------------------------------------------------------------------- PAODING merges
def _mlp_with_duplicate(scale: float, bn: bool, seed: int = 0):
    """Input(6) -> Dense(5) [-> BN] -> ReLU -> Dense(3); hidden neuron 3 = scale * neuron 1
    (incoming weights and bias; with BN the pre-activation is duplicated and BN's
    parameters for 3 copy those of 1, which only keeps an exact duplicate for scale 1)."""
    inp = keras.Input((6,))
    if bn:
        h = L.Dense(5, name="hidden")(inp)
        h = L.BatchNormalization(name="bn")(h)
        h = L.Activation("relu")(h)
    else:
        h = L.Dense(5, activation="relu", name="hidden")(inp)
    out = L.Dense(3, name="out")(h)
    model = keras.Model(inp, out)
    randomize(model, seed)
    k, b = model.get_layer("hidden").get_weights()
    b = np.abs(b) + 0.2  # no dead neuron: removing one would be exact too, a tie with the duplicate
    k[:, 3], b[3] = scale * k[:, 1], scale * b[1]
    model.get_layer("hidden").set_weights([k, b])
    if bn:
        ws = model.get_layer("bn").get_weights()
        for w in ws:
            w[3] = w[1]
        model.get_layer("bn").set_weights(ws)
    return model


@pytest.mark.parametrize("scale,bn", [(1.0, False), (2.0, False), (0.5, False), (1.0, True)])
def test_paoding_merges_duplicate_neuron_exactly(scale, bn):
    model = _mlp_with_duplicate(scale, bn)
    result = prune(model, rate=0.2, criterion="paoding", widths={"hidden": 4}, step=1.0,
                   input_range=(-1.0, 1.0))
    kept = result.plan.layers["hidden"]
    assert len(kept) == 4
    gone = set(range(5)) - set(kept)
    assert gone in ({1}, {3}), f"PAODING removed {gone}, not one of the duplicated pair (1, 3)"
    assert len(result.plan.merges) == 1
    m = result.plan.merges[0]
    assert {m["removed"], m["into"]} == {1, 3}
    expected = scale if m["removed"] == 3 else 1.0 / scale
    assert m["scale"] == pytest.approx(expected, rel=1e-5)
    x = random_inputs(model, 64, 7)
    np.testing.assert_allclose(outputs(result.model, x), outputs(model, x), atol=1e-5, rtol=0)
    assert result.model.get_layer("hidden").units == 4


def test_plain_removal_of_duplicate_would_change_outputs():
    """Guard for the test above: without the merge, dropping a duplicate is not exact."""
    model = _mlp_with_duplicate(1.0, False)
    graph = DependencyGraph(model)
    gid = graph.group_of_producer["hidden"]
    x = random_inputs(model, 64, 7)
    masked = masked_model(graph, {gid: np.array([3])})
    assert np.abs(outputs(masked, x) - outputs(model, x)).max() > 1e-3
