"""Calibration activations: what the data-aware stages (flow and taylor criteria, compensation,
global allocation) read from a model on the calibration samples.

The calibration samples are the run's held-out calibration split (never the evaluation
samples), or synthetic inputs in the declared input range when there is no data (labelled so).
"""
from __future__ import annotations

import contextlib
import weakref

import numpy as np

BATCH = 256


def consumer_layers(graph, gids=None) -> list[str]:
    """Layers that read channels of the groups ``gids`` (all groups: None) through a consumer
    weight, in the model's topological order."""
    names = set()
    for gid, g in graph.groups.items():
        if gids is not None and gid not in gids:
            continue
        for ref in g.refs:
            if ref.role == "consumer":
                names.add(ref.layer)
    return [n for n in graph.order if n in names]


@contextlib.contextmanager
def _quiet():
    """Keras warns that a single array does not match a functional model's one-element input
    list; the call is right, the warning is noise on the run's stderr."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match", category=UserWarning)
        yield


def _batches(x, model=None):
    """Float32 batches of ``x`` (an array or a lazy sample array), sized by ``model``'s activation
    memory (edgeprune.pipeline.data.batching.batch_size_for; at most BATCH)."""
    from edgeprune.pipeline.data.batching import batch_size_for

    b = batch_size_for(model, max_batch=BATCH) if model is not None else BATCH
    for a in range(0, len(x), b):
        yield np.asarray(x[a:a + b], dtype=np.float32)


_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> its traced forward pass
_CALLS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> its eager calls so far
_BYTES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> its activation bytes per sample
# a model with at least this many bytes of activations per sample (all layers) is traced from its
# second call on: called eagerly, a Keras model runs op by op (MobileNetV2-224, 83 MB per sample, on
# 22 images: 2.2 s eager, 0.26 s traced, the same numbers). Smaller models lose: each round's model
# and each pass's feature model is a new trace (three greedy steps of the MLPerf Tiny stand-ins, under
# load: VWW, 2.9 MB per sample, 152 s eager against 206 s traced; ResNet-8, 1.1 MB, 35 s against 38 s;
# the bundled example, 0.2 MB: 21.5 s of pruning against 27.5 s). Nothing between 2.9 and 83 MB was
# measured. A property of the model, not a timing: the same model takes the same path everywhere.
COMPILE_MIN_BYTES = 16 * 2**20


def heavy(model) -> bool:
    """Whether ``model`` runs traced from its second call on (:data:`COMPILE_MIN_BYTES`)."""
    from edgeprune.pipeline.data.batching import activation_bytes_per_sample

    size = _BYTES.get(model)
    if size is None:
        try:
            size = activation_bytes_per_sample(model)
        except Exception:  # noqa: BLE001 - a model whose layers cannot be sized: eager calls
            size = 0
        _BYTES[model] = size
    return size >= COMPILE_MIN_BYTES


def traced(model) -> bool:
    """Whether ``model``'s calls run (or will run, from the second on) as one traced graph: then
    running it whole costs less than running part of it op by op."""
    return model in _COMPILED or heavy(model)


def _compiled(model, xb):
    """``model``'s forward pass as one traced graph (tf.function, inference), traced once for any
    batch size, from a :func:`heavy` model's second call on; None: call it eagerly."""
    fn = _COMPILED.get(model)
    if fn is None:
        calls = _CALLS.get(model, 0)
        _CALLS[model] = calls + 1
        if calls >= 1 and heavy(model):
            import tensorflow as tf

            ref = weakref.ref(model)  # (the cache must not keep the model alive)
            spec = tf.TensorSpec((None,) + tuple(np.shape(xb))[1:], tf.float32)
            fn = tf.function(lambda t: ref()(t, training=False), input_signature=[spec], autograph=False)
            _COMPILED[model] = fn
    return fn


def _call(model, xb, compiled: bool = True):
    """``model`` on the batch ``xb`` for inference; ``compiled``: as one traced graph from a heavy
    model's second call on (:func:`heavy`; a gradient tape over the weights needs the eager call)."""
    import warnings

    compiled = compiled and isinstance(xb, np.ndarray) and xb.dtype == np.float32
    with warnings.catch_warnings():  # Keras warns when a 1-input model gets a bare tensor
        warnings.simplefilter("ignore")
        fn = _compiled(model, xb) if compiled else None
        if fn is None:
            return model(xb, training=False)
        import logging

        log = logging.getLogger("tensorflow")
        level = log.level
        log.setLevel(logging.ERROR)  # each model is a new tf.function: TF warns that they "retrace"
        try:
            return fn(xb)
        finally:
            log.setLevel(level)


def layer_inputs(model, names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    """The input tensor of each layer ``names`` of ``model`` on ``x`` (float32 numpy)."""
    import keras

    if not names:
        return {}
    feats = keras.Model(model.inputs, [model.get_layer(n).input for n in names])
    parts: list[list[np.ndarray]] = [[] for _ in names]
    for xb in _batches(x, model):
        outs = _call(feats, xb)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for i, o in enumerate(outs):
            parts[i].append(np.asarray(o, dtype=np.float32))
    return {n: np.concatenate(p) for n, p in zip(names, parts)}


def runs_on(model, names: list[str]) -> bool:
    """Whether each layer's input in ``names`` (topological order) is computed from the previous
    one's input alone (:func:`layer_inputs_from` can run on from it): a chain, no residual path
    around any of them."""
    try:
        ins = [model.get_layer(n).input for n in names]
    except ValueError:
        return False
    if any(isinstance(t, (list, tuple)) for t in ins) or len(model.inputs) != 1:
        return False
    return all(_only_through(dst, src, model.inputs) for src, dst in zip(ins, ins[1:]))


def _only_through(dst, src, inputs) -> bool:
    """Whether every path from the model's ``inputs`` to tensor ``dst`` passes through tensor
    ``src`` (Keras would otherwise build a sub-model that silently computes something else)."""
    stack, seen = [dst], {id(dst)}
    while stack:
        t = stack.pop()
        if t is src:
            continue
        if any(t is i for i in inputs):
            return False
        try:
            hist = t._keras_history
            parents = list(hist.operation._inbound_nodes[hist.node_index].input_tensors)
        except (AttributeError, IndexError):
            return False
        if not parents:
            return False
        for p in parents:
            if id(p) not in seen:
                seen.add(id(p))
                stack.append(p)
    return True


def layer_inputs_from(model, start: str, x_start: np.ndarray, name: str) -> np.ndarray | None:
    """The input of layer ``name`` of ``model``, run on from ``x_start``, the input of layer
    ``start`` on the same samples (what :func:`layer_inputs` gave for ``start``): only the layers
    in between run, in the same batches, so the result is :func:`layer_inputs`' exactly. None
    when the input of ``name`` does not depend on that of ``start`` alone (another path from the
    model's inputs reaches it, e.g. a residual branch around ``start``)."""
    import keras

    src, dst = model.get_layer(start).input, model.get_layer(name).input
    if isinstance(src, (list, tuple)) or isinstance(dst, (list, tuple)) or len(model.inputs) != 1:
        return None
    if not _only_through(dst, src, model.inputs):
        return None
    try:
        sub = keras.Model(src, dst)
    except Exception:  # noqa: BLE001 - not a closed sub-graph: the caller runs the whole prefix
        return None
    from edgeprune.pipeline.data.batching import batch_size_for

    b = batch_size_for(model, max_batch=BATCH)  # the batches layer_inputs ran ``start``'s input in
    parts = []
    for a in range(0, len(x_start), b):
        out = _call(sub, np.asarray(x_start[a:a + b], dtype=np.float32))
        out = out[0] if isinstance(out, (list, tuple)) else out
        parts.append(np.asarray(out, dtype=np.float32))
    return np.concatenate(parts)


def tail_model(model, start: str):
    """The part of ``model`` from the input of layer ``start`` to its (first) output, sharing its
    layers (weights set on ``model`` apply), or None when the output depends on more than that
    input (another path from the model's inputs reaches it)."""
    import keras

    src, dst = model.get_layer(start).input, model.outputs[0]
    if isinstance(src, (list, tuple)) or len(model.inputs) != 1 or not _only_through(dst, src, model.inputs):
        return None
    try:
        return keras.Model(src, dst)
    except Exception:  # noqa: BLE001 - not a closed sub-graph: the caller runs the whole model
        return None


def outputs_from(model, tail, x_start: np.ndarray) -> np.ndarray:
    """:func:`outputs` of ``model`` run on from ``x_start``, the input of ``tail``'s first layer on
    the same samples (as :func:`layer_inputs` gave it): the same batches, so the same numbers."""
    from edgeprune.pipeline.data.batching import batch_size_for

    b = batch_size_for(model, max_batch=BATCH)
    parts = []
    for a in range(0, len(x_start), b):
        xb = np.asarray(x_start[a:a + b], dtype=np.float32)
        o = _call(tail, xb)
        o = o[0] if isinstance(o, (list, tuple)) else o
        parts.append(np.asarray(o, dtype=np.float64).reshape(len(xb), -1))
    return np.concatenate(parts)


def layer_inputs_and_outputs(model, names: list[str], x: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """:func:`layer_inputs` of ``names`` and :func:`outputs` of ``model`` on ``x`` in one pass."""
    import keras

    feats = keras.Model(model.inputs, [model.get_layer(n).input for n in names] + [model.outputs[0]])
    parts: list[list[np.ndarray]] = [[] for _ in names]
    outs_y = []
    for xb in _batches(x, model):
        outs = _call(feats, xb)
        outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
        for i, o in enumerate(outs[:-1]):
            parts[i].append(np.asarray(o, dtype=np.float32))
        outs_y.append(np.asarray(outs[-1], dtype=np.float64).reshape(len(xb), -1))
    return {n: np.concatenate(p) for n, p in zip(names, parts)}, np.concatenate(outs_y)


def inputs_and_outputs_from(model, start: str, x_start: np.ndarray, names: list[str]):
    """:func:`layer_inputs_and_outputs` of ``names`` (layers at or after ``start``) and of the
    output, run on from ``x_start``, the input of layer ``start`` on the same samples (as
    :func:`layer_inputs` gave it): only the layers from ``start`` on run, in the same batches, so
    the numbers are :func:`layer_inputs_and_outputs`' exactly. None when one of them does not
    depend on the input of ``start`` alone (another path from the model's inputs reaches it)."""
    import keras

    src = model.get_layer(start).input
    same = [n for n in names if model.get_layer(n).input is src]  # their input is ``x_start`` itself
    names = [n for n in names if n not in same]
    dsts = [model.get_layer(n).input for n in names] + [model.outputs[0]]
    if isinstance(src, (list, tuple)) or len(model.inputs) != 1 or any(isinstance(d, (list, tuple)) for d in dsts):
        return None
    if not all(_only_through(d, src, model.inputs) for d in dsts):
        return None
    try:
        feats = keras.Model(src, dsts)
    except Exception:  # noqa: BLE001 - not a closed sub-graph: the caller runs the whole model
        return None
    from edgeprune.pipeline.data.batching import batch_size_for

    b = batch_size_for(model, max_batch=BATCH)  # the batches layer_inputs_and_outputs runs
    parts: list[list[np.ndarray]] = [[] for _ in names]
    outs_y = []
    for a in range(0, len(x_start), b):
        xb = np.asarray(x_start[a:a + b], dtype=np.float32)
        outs = _call(feats, xb)
        outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
        for i, o in enumerate(outs[:-1]):
            parts[i].append(np.asarray(o, dtype=np.float32))
        outs_y.append(np.asarray(outs[-1], dtype=np.float64).reshape(len(xb), -1))
    acts = {n: np.asarray(x_start, dtype=np.float32) for n in same}
    acts.update({n: np.concatenate(p) for n, p in zip(names, parts)})
    return acts, np.concatenate(outs_y)


def batch_moments(model, acts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """:func:`layer_input_moments` from the inputs :func:`layer_inputs` gave (the same batches,
    so the same sums)."""
    from edgeprune.pipeline.data.batching import batch_size_for

    b = batch_size_for(model, max_batch=BATCH)
    out = {}
    for n, a_all in acts.items():
        total, count = None, 0
        for s in range(0, len(a_all), b):
            a = np.asarray(a_all[s:s + b], dtype=np.float64)
            part = np.square(a).reshape(-1, a.shape[-1]).sum(0)
            total = part if total is None else total + part
            count += int(np.prod(a.shape[:-1]))
        out[n] = total / max(count, 1)
    return out


def layer_input_moments(model, names: list[str], x) -> dict[str, np.ndarray]:
    """Per input channel of each layer ``names``: the mean of the squared input over samples and
    positions (float64), accumulated batch by batch (only the running sums are kept)."""
    import keras

    if not names:
        return {}
    feats = keras.Model(model.inputs, [model.get_layer(n).input for n in names])
    sums: list[np.ndarray | None] = [None] * len(names)
    counts = [0] * len(names)
    for xb in _batches(x, model):
        outs = _call(feats, xb)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for i, o in enumerate(outs):
            a = np.asarray(o, dtype=np.float64)
            part = np.square(a).reshape(-1, a.shape[-1]).sum(0)
            sums[i] = part if sums[i] is None else sums[i] + part
            counts[i] += int(np.prod(a.shape[:-1]))
    return {n: s / max(c, 1) for n, s, c in zip(names, sums, counts)}


def outputs(model, x: np.ndarray) -> np.ndarray:
    """The model's (first) output on ``x`` as float64 numpy, flattened per sample."""
    parts = []
    for xb in _batches(x, model):
        o = _call(model, xb)
        o = o[0] if isinstance(o, (list, tuple)) else o
        parts.append(np.asarray(o, dtype=np.float64).reshape(len(xb), -1))
    return np.concatenate(parts)


def is_probability(y: np.ndarray) -> bool:
    """Outputs that look like class probabilities (a softmax): non-negative rows summing to 1."""
    return y.ndim == 2 and y.shape[1] > 1 and bool(np.all(y >= -1e-6)) and bool(
        np.allclose(y.sum(1), 1.0, atol=1e-3))


def output_loss(y: np.ndarray, ref: np.ndarray) -> float:
    """How far outputs ``y`` are from the reference outputs ``ref`` on the calibration set:
    the mean KL divergence KL(ref || y) for probabilities, else the relative squared error."""
    if is_probability(ref):
        p = np.clip(ref, 1e-12, 1.0)
        q = np.clip(y, 1e-12, 1.0)
        return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1)))
    return float(np.sum((y - ref) ** 2) / max(float(np.sum(ref ** 2)), 1e-30))
