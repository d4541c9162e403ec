"""Residual branch removal as one more candidate move of the global greedy.

Per chunk, the live branch with the least flow information at its Add (``E||b||^2 / E||s||^2``,
:func:`edgeprune.pipeline.prune.branches.branch_energy`, on the scoring half of the calibration
samples) is tried like a chunk of channels: removed, the consumers behind its Add refitted
(when compensation is on, fitted on the fitting half), the output loss against the original
model measured, and its cost per parameter saved compared with the channel chunks'.
"""
from __future__ import annotations

import numpy as np

from edgeprune.pipeline.prune.allocation.base import prunable_params, set_refit
from edgeprune.pipeline.prune.branches import branch_energy, find_branches, remove_branch, touched_consumers
from edgeprune.pipeline.prune.calib import layer_inputs, output_loss, outputs


def branch_trial(alloc, pruner, state, model, x_fit, xs, refs, base: float, p_now: int):
    """``(cost, branch, trial_state, saved, loss)`` for the weakest live branch, or None."""
    graph = pruner.graph
    branches = find_branches(graph)
    done = [tuple(k) for k in (getattr(state, "branches", None) or [])]
    scores = branch_energy(model, branches, xs, skip=done)
    if not scores:
        return None
    key = min(scores, key=scores.get)
    branch = next(b for b in branches if b.key == key)
    trial = state.copy()
    remove_branch(trial, branch)
    saved = p_now - prunable_params(graph, trial)
    if saved <= 0:
        return None
    tmodel = pruner.build_state(trial) if hasattr(pruner, "build_state") else _build(graph, trial)
    comp = alloc._comp if alloc._comp is not None else pruner.compensator
    if comp is not None and alloc.score != "mask":
        from edgeprune.pipeline.prune.compensate import refittable

        for name in touched_consumers(trial):
            if not refittable(graph, name):
                continue
            x_p = layer_inputs(tmodel, [name], x_fit)[name]
            set_refit(trial, name, comp.fit_layer(name, trial, x_p))
            tmodel.get_layer(name).set_weights(trial.weights[name])
    loss = output_loss(outputs(tmodel, xs), refs)
    alloc.trials += 1
    return ((loss - base) / saved, branch, trial, saved, loss, float(scores[key]))


def _build(graph, state):
    from edgeprune.pipeline.prune.surgery import build_model

    return build_model(graph, state)
