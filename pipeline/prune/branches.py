"""Residual branch removal: a whole branch into an Add removed, the Add becomes identity.

A *branch* is one input path of an element-wise ``Add``: the layers between the point where
the Add's inputs fork and the Add, that feed nothing but this path (e.g. ResNet-8's
conv-BN-ReLU-conv-BN path, or a 1x1 projection on the other side). Removing it computes
exactly what the original computes with the branch's output zeroed: ``Add(skip, 0) = skip``.
The layers go (their parameters are saved); the Add, when one input is left, is bypassed.

The score is the zero-shot flow information at the Add: the energy the branch adds,
``E||b||^2 / E||s||^2`` with ``s`` the sum of the Add's other inputs, on the calibration
samples (one forward pass). The global allocation can propose the weakest branch as one more
"chunk" (its saving is the branch's parameters); it is off by default (see
bench/results/allocation.md for the measurement on ResNet-8).

State: ``state.branches`` lists the removed branches as ``(add layer, input index)``; the plan
records them (``Plan.branches``) and :func:`rewire` rebuilds the model without them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Branch:
    add: str  # the Add layer
    index: int  # which of its inputs
    layers: tuple[str, ...]  # the branch's layers, topological order

    @property
    def key(self) -> tuple[str, int]:
        return (self.add, self.index)


def _ancestors(graph, name: str) -> set[str]:
    out, stack = set(), [name]
    while stack:
        n = stack.pop()
        for src, _ in graph.layers[n].inputs:
            if src not in out:
                out.add(src)
                stack.append(src)
    return out


def _rewirable(graph) -> bool:
    """Only functional models of real layers (no TF ops, masks or multi-output layers)."""
    return all(info.layer is not None and not info.masks for n, info in graph.layers.items()
               if graph.layers[n].inputs) and len(graph.input_refs) == 1


def find_branches(graph) -> list[Branch]:
    """Every removable input path of every two-or-more-input Add of ``graph``'s model."""
    cached = getattr(graph, "_residual_branches", None)
    if cached is None:
        cached = graph._residual_branches = _find(graph)
    return cached


def _find(graph) -> list[Branch]:
    if not _rewirable(graph):
        return []
    out = []
    for name in graph.order:
        info = graph.layers[name]
        if info.cls != "Add" or len(info.inputs) < 2:
            continue
        paths = [_ancestors(graph, src) | {src} for src, _ in info.inputs]
        for i, (src, _) in enumerate(info.inputs):
            others = set().union(*(p for j, p in enumerate(paths) if j != i))
            layers = [n for n in paths[i] - others]
            # a branch layer may feed only branch layers or the Add (else removing it breaks others)
            if not layers or any(c not in layers and c != name for n in layers for c in graph.consumers.get(n, [])):
                continue
            if any(graph.layers[n].cls == "InputLayer" or not graph.layers[n].inputs for n in layers):
                continue
            out.append(Branch(name, i, tuple(n for n in graph.order if n in layers)))
    return out


def removed_layers(state) -> set[str]:
    """Layers of ``state``'s removed branches (empty when none)."""
    keys = getattr(state, "branches", None)
    if not keys:
        return set()
    by_key = {b.key: b for b in find_branches(state.graph)}
    return {n for k in keys for n in by_key[tuple(k)].layers}


def touched_consumers(state) -> list[str]:
    """Consumer layers of the groups a removed branch fed (they see a changed input: the
    compensation refits them)."""
    keys = getattr(state, "branches", None)
    if not keys:
        return []
    graph = state.graph
    gone = removed_layers(state)
    names = set()
    for add, _ in keys:
        for gid in set(graph.layouts[(add, 0)]):
            names |= {r.layer for r in graph.groups[gid].refs if r.role == "consumer" and r.layer not in gone}
    return [n for n in graph.order if n in names]


def remove_branch(state, branch: Branch) -> None:
    if getattr(state, "branches", None) is None:
        state.branches = []
    if branch.key not in [tuple(k) for k in state.branches]:
        state.branches.append(branch.key)


def rewire(graph, model, state):
    """``model`` (built at ``state``'s widths, same layer names as ``graph``'s) rebuilt without
    the removed branches: their layers dropped, an Add left with one input bypassed."""
    import keras

    keys = [tuple(k) for k in state.branches]
    gone = removed_layers(state)
    cut = {(add, i) for add, i in keys}
    in_name = graph.input_refs[0][0]
    x = keras.Input(shape=tuple(model.inputs[0].shape[1:]), name=in_name, dtype=model.inputs[0].dtype)
    tensors = {(in_name, 0): x}
    pending = []
    for name in graph.order:
        info = graph.layers[name]
        if name in gone or not info.inputs:
            continue
        ins = [tensors[ref] for i, ref in enumerate(info.inputs) if (name, i) not in cut]
        if info.cls == "Add" and len(ins) == 1:
            tensors[(name, 0)] = ins[0]
            continue
        old = model.get_layer(name)
        new = old.__class__.from_config(old.get_config())
        out = new(ins if len(info.inputs) > 1 else ins[0])
        pending.append((new, old))
        outs = out if isinstance(out, (list, tuple)) else [out]
        for k, t in enumerate(outs):
            tensors[(name, k)] = t
    result = keras.Model(x, [tensors[r] for r in graph.output_refs] if len(graph.output_refs) > 1
                         else tensors[graph.output_refs[0]], name=model.name)
    for new, old in pending:
        if old.weights:
            new.set_weights(old.get_weights())
    return result


def branch_energy(model, branches: list[Branch], x: np.ndarray, skip=()) -> dict[tuple[str, int], float]:
    """Flow score of each branch on ``model`` (built, branches in ``skip`` already removed):
    ``E||b||^2 / E||s||^2`` at its Add, ``s`` the sum of the Add's other inputs."""
    import keras

    from edgeprune.pipeline.prune.calib import _batches, _quiet

    bypassed = {k[0] for k in skip}  # an Add that lost an input is no longer built
    live = [b for b in branches if b.add not in bypassed]
    if not live:
        return {}
    adds = sorted({b.add for b in live})
    srcs = []
    for a in adds:
        node_in = model.get_layer(a).input
        node_in = node_in if isinstance(node_in, (list, tuple)) else [node_in]
        srcs.append(list(node_in))
    flat = [t for s in srcs for t in s]
    feats = keras.Model(model.inputs, flat)
    acc = None
    for xb in _batches(x):
        with _quiet():
            outs = feats(xb, training=False)
        outs = [np.asarray(o, dtype=np.float64) for o in (outs if isinstance(outs, (list, tuple)) else [outs])]
        acc = outs if acc is None else [np.concatenate([a, o]) for a, o in zip(acc, outs)]
    out, k = {}, 0
    for a, s in zip(adds, srcs):
        vals = acc[k:k + len(s)]
        k += len(s)
        for b in live:
            if b.add != a or b.index >= len(vals):
                continue
            # an Add that already lost inputs is not built as an Add any more: skip
            own = vals[b.index]
            rest = sum(v for j, v in enumerate(vals) if j != b.index)
            out[b.key] = float(np.mean(own ** 2) / max(float(np.mean(np.asarray(rest) ** 2)), 1e-30))
    return out
