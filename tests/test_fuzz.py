"""A fuzzer (issue 24, item 5): random VALID Keras graphs, pruned by every criterion.

Hypothesis (derandomized: the same graphs on every run, no example database) draws small
graphs of four families from the supported layer kinds:

- ``dense``: Dense chains with BatchNormalization, activation layers and Dropout, branches
  joined by Add / Subtract / Multiply / Average / Maximum / Concatenate, residual Adds;
- ``conv2d``: Conv2D (1x1 / 3x3, stride 1 / 2), DepthwiseConv2D (depth multiplier 1 / 2),
  SeparableConv2D, BatchNormalization, pooling, residual Adds and Concatenate branches, a
  Reshape that keeps the channels (to a Conv1D), then a GlobalPool / Flatten / flattening
  Reshape head;
- ``conv1d``: the same with Conv1D, SeparableConv1D, DepthwiseConv1D and 1-D pooling;
- ``seq``: 1-D sequences through Dense / Conv1D / BatchNormalization in front of stacked
  GRU / LSTM / SimpleRNN layers, each optionally wrapped in Bidirectional (every merge mode),
  the last returning the final state or a sequence pooled / flattened.

Every graph is built once and pruned at a drawn rate (one or two progressive steps) with one
criterion of the registry (``CRITERIA``), chosen by a hash of the drawn spec, so every criterion
prunes about a fifth of the graphs (pruning each graph with all five cost ~4 s a graph on the
loaded 2-core machine: 500 graphs would take over half an hour); for every result:

1. no crash;
2. the pruned model equals the ORIGINAL with the removed channels masked (the plan's merges
   applied first), the tolerance of tests/test_surgery.py (1e-5 of the output scale; 2e-5 for
   recurrent graphs, as tests/test_wild.py);
3. the serialised plan (JSON round trip) replays on the original to the same pruned weights,
   array for array (and, for a seeded 1 in 10, through ``Plan.apply`` to bit-identical outputs);
4. widths: every producer is as wide as the plan keeps, nothing is pruned to zero, parameters
   fall exactly when channels are removed.

A seeded 1 graph in 10 (``CONVERT_EVERY``) converts its pruned model to full int8: it converts
(int8 input) and the tool's runtime (fidelity.run_tflite, in a child process: the runtime can
abort, see the near-zero scale case below) runs it to finite outputs of the right size, or it is refused
with the tool's own error (UnsupportedModel / BadInput with a message), never another exception.
A seeded half of the flow graphs also runs flow + compensation, checked against the masked
original with the refit scattered in, and its plan replayed through ``Plan.apply``.

Minimised cases the fuzzer found are regular tests at the end of this module.

The test prints one summary line (graphs, layer kinds seen, prunes per criterion,
conversions tried / succeeded / refused) and writes it as JSON under its tmp_path; it FAILS if
fewer than ``MIN_GRAPHS`` graphs ran or a kind of ``REQUIRED_KINDS`` never appeared.
``EDGEPRUNE_FUZZ_EXAMPLES=N`` runs N graphs instead (a longer local run; below 500 the test fails).
"""
from __future__ import annotations

import json
import os
import time
import zlib
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import keras  # noqa: E402  (a hard dependency: a missing keras must fail, not skip)

from edgeprune.errors import BadInput, UnsupportedModel  # noqa: E402
from edgeprune.pipeline.prune.compensate import masked_refit_reference  # noqa: E402
from edgeprune.pipeline.prune.criteria import CRITERIA  # noqa: E402
from edgeprune.pipeline.prune.graph import DependencyGraph  # noqa: E402
from edgeprune.pipeline.prune.plan import Plan  # noqa: E402
from edgeprune.pipeline.prune.pruner import prune  # noqa: E402
from edgeprune.pipeline.prune.surgery import masked_reference, masked_weights, removed_channels  # noqa: E402
from edgeprune.pipeline.convert.xnnpack import xnnpack_requant_hazard  # noqa: E402
from test_surgery import assert_close, randomize  # noqa: E402  (the exactness helpers and tolerance)

L = keras.layers

MIN_GRAPHS = 500
N_GRAPHS = int(os.environ.get("EDGEPRUNE_FUZZ_EXAMPLES") or MIN_GRAPHS + 20)
CONVERT_EVERY = 10  # 1 graph in 10 (by its drawn seed) converts one pruned model to int8
APPLY_EVERY = 10  # 1 graph in 10 replays every plan through Plan.apply and compares outputs
COMPENSATE_EVERY = 2  # 1 flow graph in 2 (by seed) also runs flow + compensation
TOL = 1e-5  # tests/test_surgery.py
TOL_RECURRENT = 2e-5  # tests/test_wild.py
REQUIRED_KINDS = {
    "Dense", "Conv1D", "Conv2D", "DepthwiseConv2D", "SeparableConv2D", "DepthwiseConv1D", "SeparableConv1D",
    "BatchNormalization", "Add", "Concatenate", "Multiply", "Subtract", "Average", "Maximum",
    "MaxPooling2D", "AveragePooling2D", "MaxPooling1D", "AveragePooling1D",
    "GlobalAveragePooling2D", "GlobalMaxPooling2D", "GlobalAveragePooling1D", "GlobalMaxPooling1D",
    "Flatten", "Reshape", "GRU", "LSTM", "SimpleRNN", "Bidirectional",
    "Activation", "ReLU", "LeakyReLU", "ELU", "Dropout", "MultiHeadAttention",
}

# --------------------------------------------------------------------------- attention hook
# HOOK (issue 24 item 4, MultiHeadAttention, being added in parallel): once the attention
# handler is merged, set ATTENTION = True and add "MultiHeadAttention" to REQUIRED_KINDS; the
# ``seq`` family then draws the "attention" block below (a residual self-attention block with a
# feed-forward, as in a keyword-spotting transformer). Nothing here depends on it until then.
ATTENTION = True  # the attention handler (issue 24 item 4) is merged


def _attention_block(x, b):
    heads, key_dim = b["heads"], b["key_dim"]
    width = int(x.shape[-1])
    a = L.MultiHeadAttention(num_heads=heads, key_dim=key_dim)(x, x)
    x = L.Add()([x, a])
    f = L.Dense(b["ff"], activation="relu")(x)
    return L.Add()([x, L.Dense(width)(f)])


# --------------------------------------------------------------------------- graph specs
# the recurrent family costs ~4x a convolutional graph (eager recurrent steps): drawn 1 in 7
FAMILIES = ["dense", "dense", "conv2d", "conv2d", "conv1d", "conv1d", "seq"]
ACTS = ["relu", "linear", "tanh", "sigmoid", "elu"]
ACT_LAYERS = ["relu", "leaky", "elu", "activation"]
MERGES = ["Add", "Subtract", "Multiply", "Average", "Maximum", "Concatenate"]


def _width(draw):
    return draw(st.integers(2, 5))


@st.composite
def block_specs(draw, family: str):
    """One block of the family (the builder skips a block that does not fit the tensor, e.g.
    pooling a length-1 axis, so every drawn spec builds a valid graph)."""
    if family == "dense":
        kind = draw(st.sampled_from(["dense", "dense", "bn", "act", "dropout", "branch", "residual"]))
    elif family in ("conv2d", "conv1d"):
        kind = draw(st.sampled_from(["conv", "conv", "depthwise", "separable", "bn", "act", "pool", "dropout",
                                     "residual", "branch"] + (["to1d"] if family == "conv2d" else [])))
    else:
        kind = draw(st.sampled_from(["dense", "conv", "bn", "act", "dropout"]
                                    + (["attention"] if ATTENTION else [])))
    b = {"kind": kind}
    if kind in ("dense", "conv", "separable"):
        b.update(units=_width(draw), act=draw(st.sampled_from(ACTS)))
        if kind != "dense":
            b.update(k=draw(st.sampled_from([1, 3])), stride=draw(st.sampled_from([1, 1, 2])))
    elif kind == "depthwise":
        b.update(mult=draw(st.sampled_from([1, 1, 2])), act=draw(st.sampled_from(ACTS)))
    elif kind == "act":
        b.update(layer=draw(st.sampled_from(ACT_LAYERS)), act=draw(st.sampled_from(["relu", "tanh", "sigmoid"])))
    elif kind == "pool":
        b.update(op=draw(st.sampled_from(["max", "avg"])))
    elif kind == "branch":
        b.update(merge=draw(st.sampled_from(MERGES)), a=_width(draw), b=_width(draw),
                 identity=draw(st.booleans()), act=draw(st.sampled_from(ACTS)))
    elif kind == "residual":
        b.update(bn=draw(st.booleans()), mid=_width(draw))
    elif kind == "attention":
        b.update(heads=draw(st.integers(1, 2)), key_dim=draw(st.integers(1, 3)), ff=_width(draw))
    return b


@st.composite
def graph_specs(draw):
    family = draw(st.sampled_from(FAMILIES))
    spec = {"family": family, "seed": draw(st.integers(0, 2**31 - 1)), "out": draw(st.integers(1, 3)),
            "sequential": False}
    spec["blocks"] = draw(st.lists(block_specs(family), min_size=1 if family != "seq" else 0, max_size=3))
    if family == "dense":
        spec["inp"] = draw(st.integers(2, 5))
        spec["sequential"] = draw(st.booleans()) and all(b["kind"] in ("dense", "bn", "act", "dropout")
                                                         for b in spec["blocks"])
    elif family == "conv2d":
        spec["inp"] = (draw(st.sampled_from([4, 6])),) * 2 + (draw(st.integers(1, 3)),)
    else:
        spec["inp"] = (draw(st.sampled_from([4, 6])), draw(st.integers(1, 3)))
    if family == "seq":
        spec["rnn"] = [{"cls": draw(st.sampled_from(["GRU", "LSTM", "SimpleRNN"])), "units": _width(draw),
                        "bidir": draw(st.sampled_from([None, None, "concat", "sum", "ave", "mul"])),
                        "reset_after": draw(st.booleans())}
                       for _ in range(draw(st.integers(1, 2)))]
        spec["last"] = draw(st.sampled_from(["state", "gap", "gmp", "flatten"]))
    else:
        spec["head"] = draw(st.sampled_from(["gap", "gmp", "flatten", "reshape"]))
    spec["hidden"] = draw(st.sampled_from([0, _width(draw)]))
    spec["rate"] = draw(st.sampled_from([0.1, 0.25, 0.3, 0.5, 0.6, 0.75, 0.9]))
    spec["steps"] = draw(st.sampled_from([1, 1, 2]))
    return with_samples(spec)


def with_samples(spec):
    """The criterion and the seeded samples (Plan.apply replay, compensation, int8), derived from
    a hash of the drawn spec: uniform over the registry and reproducible from the spec alone."""
    h = zlib.crc32(repr(sorted(spec.items())).encode())
    spec["criterion"] = sorted(CRITERIA)[h % len(CRITERIA)]
    h //= len(CRITERIA)
    spec["apply"] = h % APPLY_EVERY == 0
    spec["convert"] = (h // APPLY_EVERY) % CONVERT_EVERY == 0
    spec["compensate"] = spec["criterion"] == "flow" and (h // APPLY_EVERY // CONVERT_EVERY) % COMPENSATE_EVERY == 0
    return spec


# --------------------------------------------------------------------------- builder
def _act_layer(b):
    return {"relu": lambda: L.ReLU(), "leaky": lambda: L.LeakyReLU(negative_slope=0.2),
            "elu": lambda: L.ELU(), "activation": lambda: L.Activation(b["act"])}[b["layer"]]()


def _spatial(x) -> tuple:
    return tuple(int(d) for d in x.shape[1:-1])


def _apply_block(x, b, family):
    """``x`` after block ``b``; a block that does not fit (pooling a length-1 axis) is skipped."""
    rank = len(x.shape) - 2  # spatial rank: 0 (vectors), 1 (sequences), 2 (images)
    width = int(x.shape[-1])
    kind = b["kind"]
    conv = {1: L.Conv1D, 2: L.Conv2D}.get(rank)
    if kind == "dense" or (kind == "conv" and rank == 0):
        return L.Dense(b["units"], activation=b["act"])(x)
    if kind == "conv":
        stride = b.get("stride", 1) if min(_spatial(x)) >= 2 else 1
        return conv(b["units"], b.get("k", 3), strides=stride, padding="same", activation=b["act"])(x)
    if kind == "depthwise":
        cls = {1: L.DepthwiseConv1D, 2: L.DepthwiseConv2D}[rank]
        return cls(3, depth_multiplier=b["mult"], padding="same", activation=b["act"])(x)
    if kind == "separable":
        cls = {1: L.SeparableConv1D, 2: L.SeparableConv2D}[rank]
        return cls(b["units"], b["k"], padding="same", activation=b["act"])(x)
    if kind == "bn":
        return L.BatchNormalization()(x)
    if kind == "act":
        return _act_layer(b)(x)
    if kind == "dropout":
        return L.Dropout(0.3)(x)
    if kind == "pool":
        if min(_spatial(x)) < 2:
            return x
        cls = {(1, "max"): L.MaxPooling1D, (1, "avg"): L.AveragePooling1D,
               (2, "max"): L.MaxPooling2D, (2, "avg"): L.AveragePooling2D}[(rank, b["op"])]
        return cls(2)(x)
    if kind == "to1d":  # (h, w, c) -> (h * w, c): the channels pass through; a Conv1D reads them
        if rank != 2:
            return x
        h, w = _spatial(x)
        x = L.Reshape((h * w, width))(x)
        return L.Conv1D(b.get("units", 3), 3, padding="same", activation="relu")(x)
    if kind == "residual":  # x + f(x), f a two-layer block back to x's width
        lay = (lambda n, act=None: L.Dense(n, activation=act)) if rank == 0 else \
              (lambda n, act=None: conv(n, 3, padding="same", activation=act))
        y = lay(b["mid"], "relu")(x)
        y = lay(width)(y)
        if b["bn"]:
            y = L.BatchNormalization()(y)
        return L.Add()([x, y])
    if kind == "branch":  # two branches (or x itself and one branch) joined by a merge layer
        lay = (lambda n: L.Dense(n, activation=b["act"])) if rank == 0 else \
              (lambda n: conv(n, 3, padding="same", activation=b["act"]))
        merge = b["merge"]
        same = merge != "Concatenate"
        q = lay(width if same and b["identity"] else b["b"])(x)
        p = x if b["identity"] else lay(int(q.shape[-1]) if same else b["a"])(x)
        cls = getattr(L, merge)
        return cls()([p, q])
    if kind == "attention":
        return _attention_block(x, b)
    raise AssertionError(kind)


def build(spec):
    fam = spec["family"]
    inp_shape = (spec["inp"],) if fam == "dense" else tuple(spec["inp"])
    if spec["sequential"]:
        layers = []
        for b in spec["blocks"]:
            layers.append({"dense": lambda: L.Dense(b["units"], activation=b["act"]), "bn": L.BatchNormalization,
                           "act": lambda: _act_layer(b), "dropout": lambda: L.Dropout(0.3)}[b["kind"]]())
        if spec["hidden"]:
            layers.append(L.Dense(spec["hidden"], activation="relu"))
        model = keras.Sequential([keras.Input(inp_shape), *layers, L.Dense(spec["out"])])
        return randomize(model, spec["seed"]) or model
    inp = keras.Input(inp_shape)
    x = inp
    for b in spec["blocks"]:
        x = _apply_block(x, b, fam)
    if fam == "seq":
        rnns = spec["rnn"]
        for i, r in enumerate(rnns):
            seq = i < len(rnns) - 1 or spec["last"] != "state"
            kw = {"reset_after": r["reset_after"]} if r["cls"] == "GRU" else {}
            cell = getattr(L, r["cls"])(r["units"], return_sequences=seq, **kw)
            x = L.Bidirectional(cell, merge_mode=r["bidir"])(x) if r["bidir"] else cell(x)
        last = spec["last"]
        if last != "state":
            x = {"gap": L.GlobalAveragePooling1D, "gmp": L.GlobalMaxPooling1D, "flatten": L.Flatten}[last]()(x)
    else:
        rank = len(x.shape) - 2
        head = spec["head"]
        if rank == 0:
            pass
        elif head in ("gap", "gmp"):
            x = {(1, "gap"): L.GlobalAveragePooling1D, (1, "gmp"): L.GlobalMaxPooling1D,
                 (2, "gap"): L.GlobalAveragePooling2D, (2, "gmp"): L.GlobalMaxPooling2D}[(rank, head)]()(x)
        elif head == "flatten":
            x = L.Flatten()(x)
        else:  # a flatten written as a Reshape
            x = L.Reshape((int(np.prod(x.shape[1:])),))(x)
    if spec["hidden"]:
        x = L.Dense(spec["hidden"], activation="relu")(x)
    model = keras.Model(inp, L.Dense(spec["out"])(x))
    randomize(model, spec["seed"])
    return model


def kinds_of(model) -> set[str]:
    out = set()
    for layer in model.layers:
        out.add(type(layer).__name__)
        if type(layer).__name__ == "Bidirectional":
            out.add(type(layer.forward_layer).__name__)
    return out - {"InputLayer"}


# --------------------------------------------------------------------------- checks
def outputs(model, x) -> np.ndarray:
    return np.asarray(model(x, training=False))


def masked_outputs(model, graph, plan, x) -> np.ndarray:
    """The ORIGINAL's outputs with the plan's removed channels masked (surgery.masked_weights,
    set on the original in place and restored: no clone per criterion); plans with merges go
    through surgery.masked_reference (merges first, then masking)."""
    if plan.merges:
        ref, _ = masked_reference(model, plan)
        return outputs(ref, x)
    masked = masked_weights(graph, removed_channels(graph, plan))
    saved = {name: model.get_layer(name).get_weights() for name in masked}
    try:
        for name, ws in masked.items():
            model.get_layer(name).set_weights(ws)
        return outputs(model, x)
    finally:
        for name, ws in saved.items():
            model.get_layer(name).set_weights(ws)


def check_result(model, graph, result, x, tol, what, apply=False):
    """The properties of one prune result (raises AssertionError naming ``what``)."""
    plan = result.plan
    got = outputs(result.model, x)
    assert np.all(np.isfinite(got)), f"{what}: non-finite outputs"
    assert_close(got, masked_outputs(model, graph, plan, x), tol, what=f"{what}: pruned vs masked original")
    # widths: every producer as wide as the plan keeps, never zero
    for layer, kept in plan.layers.items():
        assert len(kept) >= 1, f"{what}: {layer} pruned to zero"
        assert plan.widths[layer][1] == len(kept), f"{what}: {layer} width {plan.widths[layer]} vs kept {len(kept)}"
    for row in result.layers:
        assert 1 <= row.after <= row.before, f"{what}: {row}"
    removed = sum(w[0] - w[1] for w in plan.widths.values())
    if removed:
        assert result.params_after < result.params_before, f"{what}: channels removed but no parameter saved"
    else:
        assert result.params_after == result.params_before, f"{what}: nothing removed but parameters changed"
    # the serialised plan replays on the original to the same pruned weights
    replay = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    state = replay.to_state(graph)
    for layer in result.model.layers:
        want = layer.get_weights()
        if not want:
            continue
        have = state.weights[layer.name]
        assert len(have) == len(want), f"{what}: replay of {layer.name}: {len(have)} weights vs {len(want)}"
        for a, b in zip(have, want):
            assert a.shape == b.shape and np.array_equal(a, b), f"{what}: replay of {layer.name} differs"
    if apply:
        np.testing.assert_array_equal(outputs(replay.apply(model), x), got, err_msg=f"{what}: Plan.apply replay")
    return removed


_CHILD = """
import sys, numpy as np
from edgeprune.errors import BadInput
from edgeprune.pipeline.convert.fidelity import run_tflite
try:
    y, _ = run_tflite(open(sys.argv[1], "rb").read(), np.load(sys.argv[2]))
except BadInput as exc:
    print("BadInput: " + str(exc)); sys.exit(3)
np.save(sys.argv[3], y)
"""


def load_in_child(tflite: bytes, x: np.ndarray, tmp) -> tuple[str, np.ndarray | None]:
    """Run the .tflite on ``x`` with the tool's runtime (fidelity.run_tflite) in a child process:
    ("ok", outputs), ("BadInput: <message>", None), or ("aborted", None) when the runtime killed
    the process (a native abort; any other failure raises)."""
    import subprocess
    import sys

    (tmp / "m.tflite").write_bytes(tflite)
    np.save(tmp / "x.npy", x)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(tmp / "m.tflite"), str(tmp / "x.npy"), str(tmp / "y.npy")],
                          capture_output=True, text=True, env=env, timeout=300)
    if proc.returncode == 0:
        return "ok", np.load(tmp / "y.npy")
    if proc.returncode == 3:
        return proc.stdout.strip(), None
    if proc.returncode < 0 or proc.returncode == 134:  # SIGABRT
        return "aborted", None
    raise AssertionError(f"the .tflite runner failed (exit {proc.returncode}): {proc.stderr[-2000:]}")


def try_int8(pruned, x, stats, what, tmp):
    """Full int8: succeeds (int8 input, right output shape, finite) or is refused with the
    tool's own error; anything else propagates (a failure)."""
    from edgeprune.pipeline.convert import converter as conv
    stats["convert_tried"] += 1
    try:
        res = conv.convert(pruned, conv.ConvertConfig(quantize="int8", num_calibration=8, input_range=(-1.0, 1.0)))
    except (UnsupportedModel, BadInput) as exc:
        assert str(exc).strip(), f"{what}: refused without a message"
        stats["convert_refused"] += 1
        stats["refusals"][str(exc).splitlines()[0][:80]] += 1
        return
    assert res.inputs[0].dtype == "int8", f"{what}: int8 input expected, got {res.inputs[0].dtype}"
    outcome, y = load_in_child(res.tflite, x[:2], tmp)
    if outcome == "aborted":
        # Was a bug (issue 24 fuzzer): ai-edge-litert's XNNPACK delegate aborts the process ("double
        # free or corruption") preparing an int8 conv/FC whose requantization scale reaches 256 (a
        # tensor calibrated to a near-zero range). run_tflite now refuses such files first (see
        # test_int8_with_a_near_zero_scale_tensor_is_refused_cleanly); an abort here is a regression
        # of that guard or a new kind of abort. Loaded in a child so the suite survives; counted.
        stats["load_aborted"] += 1
        stats["refusals"]["load: the runtime aborted (XNNPACK)"] += 1
        return
    if outcome != "ok":
        # Seen: XNNPACK refuses to prepare some tiny int8 FULLY_CONNECTED layers (e.g. Dense(3 -> 1, relu)
        # -> Dense(1 -> 2), pruned or not); the tool says so with its own error ("cannot be loaded by
        # ai-edge-litert"), not a traceback. Counted apart, listed in the summary.
        assert outcome.startswith("BadInput") and ("cannot be loaded" in outcome or "XNNPACK" in outcome), f"{what}: {outcome}"
        stats["load_refused"] += 1
        stats["refusals"]["load: " + outcome.splitlines()[0][:70]] += 1
        return
    ref = outputs(pruned, x[:2])
    assert y.size == ref.size and np.all(np.isfinite(y)), f"{what}: int8 outputs {y.shape} vs {ref.shape}"
    stats["convert_ok"] += 1


def fuzz_one(spec, stats):
    model = build(spec)
    graph = DependencyGraph(model)
    recurrent = spec["family"] == "seq"
    tol = TOL_RECURRENT if recurrent else TOL
    x = np.random.default_rng(spec["seed"] % 1000).uniform(-1.0, 1.0, (4, *model.inputs[0].shape[1:])).astype(np.float32)
    stats["graphs"] += 1
    stats["kinds"].update(kinds_of(model))
    stats["families"][spec["family"]] += 1
    if graph.prunable_groups:
        stats["graphs_prunable"] += 1
    rate, step = spec["rate"], spec["rate"] / spec["steps"]
    apply = spec["apply"]
    criterion = spec["criterion"]
    what = f"{criterion} rate {rate} steps {spec['steps']} {spec['family']}"
    t0 = time.perf_counter()
    result = prune(model, rate=rate, criterion=criterion, step=step, input_range=(-1.0, 1.0), seed=spec["seed"] % 97)
    t1 = time.perf_counter()
    removed = check_result(model, graph, result, x, tol, what, apply)
    stats["t_prune"] += t1 - t0
    stats["t_check"] += time.perf_counter() - t1
    stats["prunes"][criterion] += 1
    stats["channels_removed"] += removed
    stats["replays_applied"] += int(apply)
    t0 = time.perf_counter()
    if spec["compensate"] and graph.prunable_groups:
        cal = np.random.default_rng(spec["seed"] % 991).uniform(-1.0, 1.0, (16, *x.shape[1:])).astype(np.float32)
        r = prune(model, rate=rate, criterion="flow", step=rate, input_range=(-1.0, 1.0), calibration=cal,
                  compensate=True)
        ref, _ = masked_refit_reference(model, r.plan)
        assert_close(outputs(r.model, x), outputs(ref, x), tol, what=f"flow+compensation rate {rate}: vs masked + refit")
        replay = Plan.from_dict(json.loads(json.dumps(r.plan.to_dict()))).apply(model)
        np.testing.assert_array_equal(outputs(replay, x), outputs(r.model, x), err_msg="compensated plan replay")
        stats["compensated"] += 1
    t1 = time.perf_counter()
    stats["t_compensate"] += t1 - t0
    if spec["convert"]:
        try_int8(result.model, x, stats, f"int8 of {what}", stats["tmp"])
    stats["t_convert"] += time.perf_counter() - t1


def new_stats():
    return {"graphs": 0, "graphs_prunable": 0, "kinds": Counter(), "families": Counter(), "prunes": Counter(),
            "channels_removed": 0, "replays_applied": 0, "compensated": 0, "convert_tried": 0, "convert_ok": 0,
            "convert_refused": 0, "load_refused": 0, "load_aborted": 0, "refusals": Counter(), "t_prune": 0.0, "t_check": 0.0, "t_compensate": 0.0,
            "t_convert": 0.0}


# --------------------------------------------------------------------------- the fuzz test
@pytest.mark.slow
def test_fuzz_random_graphs_prune_exactly_with_every_criterion(tmp_path, capsys):
    stats = new_stats()
    stats["tmp"] = tmp_path
    t0 = time.perf_counter()

    @settings(max_examples=N_GRAPHS, derandomize=True, database=None, deadline=None, print_blob=True,
              phases=[Phase.explicit, Phase.generate, Phase.shrink],
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(spec=graph_specs())
    def fuzz(spec):
        try:
            fuzz_one(spec, stats)
        except Exception as exc:  # name the graph: the spec is the minimal reproducer once shrunk
            raise AssertionError(f"{type(exc).__name__}: {exc}\nspec = {spec!r}") from exc

    fuzz()
    seconds = time.perf_counter() - t0
    kinds = dict(sorted(stats["kinds"].items()))
    summary = {
        "graphs": stats["graphs"], "graphs_with_prunable_groups": stats["graphs_prunable"],
        "families": dict(stats["families"]), "criteria": dict(stats["prunes"]),
        "channels_removed": stats["channels_removed"], "plans_replayed_through_apply": stats["replays_applied"],
        "flow_with_compensation": stats["compensated"],
        "int8": {"sample": f"1 graph in {CONVERT_EVERY} (by a hash of its spec)", "tried": stats["convert_tried"],
                 "converted": stats["convert_ok"], "refused": stats["convert_refused"],
                 "converted_but_refused_by_the_runtime": stats["load_refused"],
                 "converted_but_the_runtime_aborted_KNOWN_BUG": stats["load_aborted"],
                 "refusals": dict(stats["refusals"])},
        "kinds": kinds, "seconds": round(seconds, 1),
        "seconds_in": {k[2:]: round(stats[k], 1) for k in ("t_prune", "t_check", "t_compensate", "t_convert")},
    }
    (tmp_path / "fuzz_summary.json").write_text(json.dumps(summary, indent=1))
    line = (f"fuzz: {stats['graphs']} graphs ({stats['graphs_prunable']} with prunable groups), "
            f"{sum(stats['prunes'].values())} prunes ({', '.join(f'{c} {n}' for c, n in sorted(stats['prunes'].items()))}), "
            f"int8 on 1 graph in {CONVERT_EVERY}: {stats['convert_tried']} tried, {stats['convert_ok']} converted, "
            f"{stats['convert_refused']} refused, {stats['load_refused']} refused at load, {stats['load_aborted']} aborted the runtime; {len(kinds)} layer kinds: {', '.join(kinds)}; {seconds:.0f} s")
    with capsys.disabled():
        print("\n" + line)
    written = json.loads((tmp_path / "fuzz_summary.json").read_text())
    assert written["graphs"] >= MIN_GRAPHS, line
    missing = REQUIRED_KINDS - set(written["kinds"])
    assert not missing, f"layer kinds never generated: {sorted(missing)}; {line}"
    assert set(written["criteria"]) == set(CRITERIA), line  # every criterion of the registry
    assert min(written["criteria"].values()) >= written["graphs"] // (2 * len(CRITERIA)), line
    assert written["int8"]["tried"] >= written["graphs"] // CONVERT_EVERY // 2, line
    assert written["int8"]["converted"] >= 1, line
    assert written["flow_with_compensation"] >= 1 and written["channels_removed"] > 0, line


# --------------------------------------------------------------------------- the checks can fail
def widths_by_class(model, plan) -> dict:
    """The plan's [before, after] widths of the FIRST producer of each class (Keras numbers layer
    names per session, so the minimal cases do not name layers)."""
    out = {}
    for layer in model.layers:
        if layer.name in plan.widths:
            out.setdefault(type(layer).__name__, plan.widths[layer.name])
    return out


def test_fuzz_checks_detect_a_wrong_plan():
    """check_result fails when the plan does not describe the pruned model: the masking
    comparison and the replay comparison are not vacuous."""
    spec = {"family": "dense", "seed": 3, "out": 2, "sequential": False, "inp": 4, "hidden": 0, "rate": 0.5, "head": "gap",
            "steps": 1, "blocks": [{"kind": "dense", "units": 5, "act": "relu"}, {"kind": "bn"}]}
    model = build(spec)
    graph = DependencyGraph(model)
    x = np.random.default_rng(0).uniform(-1, 1, (4, 4)).astype(np.float32)
    result = prune(model, rate=0.5, criterion="l1", step=0.5, input_range=(-1.0, 1.0))
    assert check_result(model, graph, result, x, TOL, "l1") == 3  # 5 -> 2 channels
    (layer, kept), = [(k, v) for k, v in result.plan.layers.items() if len(v) < result.plan.widths[k][0]]
    other = sorted(set(range(5)) - set(kept))[:1] + kept[1:]  # one kept channel swapped for a removed one
    result.plan.layers[layer] = other
    with pytest.raises(AssertionError, match="pruned vs masked original"):
        check_result(model, graph, result, x, TOL, "l1 wrong plan")


# --------------------------------------------------------------------------- minimised cases the fuzzer found
@pytest.mark.parametrize("cls,features,units,bidir", [("GRU", 2, 5, None), ("LSTM", 6, 3, None), ("GRU", 2, 4, "concat")])
def test_flow_scores_a_recurrent_group_by_its_readers_not_by_the_layer_input(cls, features, units, bidir):
    """Found by the fuzzer: flow crashed on GRU(5) over 2 input channels ("operands could not be
    broadcast together with shapes (2,) (5,)"): it read the recurrent rows (the layer reading its
    own hidden state) as if they read the layer's input. With a wider input it scored silently
    with the wrong moments. Now the group is scored by the next layer's reads: E[h_c^2] * ||W_c||^2."""
    from edgeprune.pipeline.prune.pruner import PruneConfig, Pruner, target_width

    inp = keras.Input((4, features))
    rnn = getattr(L, cls)(units)
    h = (L.Bidirectional(rnn, merge_mode=bidir) if bidir else rnn)(inp)
    model = keras.Model(inp, L.Dense(2, name="head")(h))
    randomize(model, 5)
    pruner = Pruner(model, PruneConfig(rate=0.5, criterion="flow", step=0.5, input_range=(-1.0, 1.0)))
    pruner.criterion.begin_step(pruner.ctx)
    (group,) = pruner.groups
    got = pruner.criterion.scores(pruner.ctx, group)
    x = pruner.ctx.cache["synthetic"]
    feats = np.asarray(keras.Model(model.inputs, model.get_layer("head").input)(x), np.float64)
    m2 = np.square(feats).mean(0)
    energy = np.square(model.get_layer("head").get_weights()[0].astype(np.float64)).sum(1)
    want = (m2 * energy).reshape(-1, units).sum(0)  # Bidirectional concat: both directions' units
    np.testing.assert_allclose(got, want, rtol=1e-6)
    result = prune(model, rate=0.5, criterion="flow", step=0.5, input_range=(-1.0, 1.0))
    xs = np.random.default_rng(0).uniform(-1, 1, (4, 4, features)).astype(np.float32)
    removed = check_result(model, DependencyGraph(model), result, xs, TOL_RECURRENT, "flow recurrent")
    assert removed == units - target_width(units, 0.5, None) >= 1


def test_compensation_refits_a_dense_that_reads_a_sequence():
    """Found by the fuzzer: flow + compensation crashed ("matmul: ... size 5 is different from
    30") when a pruned group fed a Dense applied to a sequence (the sleep-staging model's Dense
    in front of its GRUs): the refit flattened (T, C) to T*C inputs. A Dense reads the last axis
    only: one fit row per sample and position. Exact against the masked original + refit."""
    inp = keras.Input((6, 3))
    x = L.Conv1D(5, 1, activation="elu", name="c")(inp)
    x = L.Dense(4, activation="relu", name="d_seq")(x)
    x = L.GlobalAveragePooling1D()(x)
    model = keras.Model(inp, L.Dense(2, name="out")(x))
    randomize(model, 7)
    rng = np.random.default_rng(0)
    cal, xs = (rng.uniform(-1, 1, (n, 6, 3)).astype(np.float32) for n in (16, 8))
    r = prune(model, rate=0.5, criterion="flow", step=0.5, input_range=(-1.0, 1.0), calibration=cal, compensate=True)
    assert set(r.plan.refits) == {"d_seq", "out"}
    assert r.plan.widths["c"] == [5, 2] and r.plan.widths["d_seq"] == [4, 2]
    ref, _ = masked_refit_reference(model, r.plan)
    assert_close(outputs(r.model, xs), outputs(ref, xs), TOL, what="compensated vs masked + refit")
    plain = prune(model, rate=0.5, criterion="flow", step=0.5, input_range=(-1.0, 1.0), calibration=cal)
    err = lambda m: float(np.square(outputs(m, cal) - outputs(model, cal)).mean())  # noqa: E731
    assert err(r.model) < err(plain.model)  # the refit helps on the samples it was fitted on


ABORT_SPEC = {"family": "conv2d", "seed": 274195740, "out": 1, "sequential": False, "inp": (4, 4, 2), "head": "gap",
              "hidden": 2, "rate": 0.9, "steps": 2,
              "blocks": [{"kind": "branch", "merge": "Subtract", "a": 5, "b": 5, "identity": True, "act": "relu"},
                         {"kind": "pool", "op": "max"}, {"kind": "to1d"}]}


def test_int8_with_a_near_zero_scale_tensor_is_refused_cleanly(tmp_path):
    """Found by the fuzzer: Conv2D -> Subtract with the input -> MaxPool -> Reshape to a sequence ->
    Conv1D(3) -> GAP -> Dense(2) -> Dense(1), pruned by taylor at 0.9 (Conv1D 3 -> 1, Dense 2 -> 1):
    the int8 file converts, but a 1-wide ReLU Dense is calibrated to a near-zero range (output
    scale 7.8e-9, requantization scale 2,407 >= XNNPACK's 256) and ai-edge-litert 2.3's XNNPACK
    delegate ABORTED THE PROCESS preparing it ("double free or corruption"). The tool now reads the
    scales from the flatbuffer before any interpreter is prepared and refuses the file with its own
    error naming the tensor and the scale. Loaded in a child process, so a regression is an
    "aborted" outcome, not a dead test run."""
    from edgeprune.pipeline.convert import converter as conv

    model = build(ABORT_SPEC)
    result = prune(model, rate=0.9, criterion="taylor", step=0.45, input_range=(-1.0, 1.0))
    assert widths_by_class(model, result.plan) == {"Conv2D": [2, 2], "Conv1D": [3, 1], "Dense": [2, 1]}
    res = conv.convert(result.model, conv.ConvertConfig(quantize="int8", num_calibration=8, input_range=(-1.0, 1.0)))
    hazard = xnnpack_requant_hazard(res.tflite)
    assert hazard is not None and hazard.op == "FULLY_CONNECTED"
    assert hazard.output_scale < 1e-7 and hazard.requant_scale >= 256, hazard
    x = np.random.default_rng(0).uniform(-1, 1, (2, 4, 4, 2)).astype(np.float32)
    outcome, _ = load_in_child(res.tflite, x, tmp_path)
    assert outcome != "aborted", "the TFLite runtime aborted the process loading the int8 model"
    assert outcome.startswith("BadInput: the int8 .tflite cannot be run by ai-edge-litert's XNNPACK delegate"), outcome
    assert f"'{hazard.tensor}' has scale {hazard.output_scale:.3g}" in outcome and "fix: " in outcome, outcome
    # the common path: the unpruned model's int8 file has no such tensor and loads in-process
    ok = conv.convert(model, conv.ConvertConfig(quantize="int8", num_calibration=8, input_range=(-1.0, 1.0)))
    assert xnnpack_requant_hazard(ok.tflite) is None
    from edgeprune.pipeline.convert.fidelity import run_tflite
    assert run_tflite(ok.tflite, x)[0].shape == (2, 1)


def test_paoding_prunes_a_dense_chain_over_a_sequence():
    """Found by the fuzzer: paoding's pair-wise Dense rule crashed ("matmul: ... size 1 is different
    from 4") on Dense(4) -> Dense(2) applied per position of a (4, 1) sequence in front of an LSTM:
    it read the (T, C) input bounds as one flat vector. Such groups are now ranked by scale;
    exact against the masked original."""
    spec = {"family": "seq", "seed": 0, "out": 1, "sequential": False, "inp": (4, 1), "last": "state", "hidden": 0,
            "blocks": [{"kind": "dense", "units": 4, "act": "relu"}, {"kind": "dense", "units": 2, "act": "relu"}],
            "rnn": [{"cls": "LSTM", "units": 2, "bidir": None, "reset_after": False}]}
    model = build(spec)
    result = prune(model, rate=0.5, criterion="paoding", step=0.5, input_range=(-1.0, 1.0))
    first = next(layer.name for layer in model.layers if type(layer).__name__ == "Dense")  # Dense(4) over (T, C)
    assert result.plan.widths[first] == [4, 2]
    assert {row.layer: row.method for row in result.layers}[first] == "paoding-scale"
    x = np.random.default_rng(1).uniform(-1, 1, (4, 4, 1)).astype(np.float32)
    assert check_result(model, DependencyGraph(model), result, x, TOL_RECURRENT, "paoding seq") >= 2
