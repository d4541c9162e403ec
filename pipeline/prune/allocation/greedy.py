"""``global``: budget-aware widths by a sensitivity-guided greedy on the calibration samples.

The rate is the fraction of the model's prunable parameters removed (what the flash budget and,
through the MACs, the latency budget pay for). A step to ``rate`` removes chunks until that
fraction is reached. For each chunk, every group that can still shrink proposes its chunk
(``chunk`` of its original width; the criterion picks which channels) and the proposal is
tried on the calibration samples: the channels are masked in the current model (their
consumers' input weights zeroed, exactly what removing them computes), with compensation on
the directly consuming layers refitted by ridge least squares first, and the model's output
is compared with the ORIGINAL model's (KL divergence for probabilities, relative squared error
otherwise). The chunk with the least loss increase per parameter saved is removed, its refit
kept. At the end of the step the run's full compensation (every consumer, in topological
order) is applied, as for uniform steps. Deterministic: the same model, calibration samples,
criterion and seed give the same widths.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeprune.pipeline.prune.allocation.base import Allocation, narrowest, prunable_params, removal, set_refit
from edgeprune.pipeline.prune.calib import batch_moments, layer_inputs, layer_inputs_and_outputs, output_loss, outputs
from edgeprune.pipeline.prune.graph import layout_indices
from edgeprune.pipeline.prune.allocation.table import table_mode, table_round

DEFAULT_CHUNK = 1 / 32
DEFAULT_MIN_KEEP = 0.0
EPS = 1e-9
NOISE_REL = 0.05  # auto (switching): loss increases below this fraction of the current loss count as this

ROUND_BUDGET_BYTES = 512 * 2**20  # a round's consumer inputs on its samples (float32)
MIN_ROUND_SAMPLES = 32


def round_bytes_per_sample(graph) -> int:
    """Bytes one calibration sample costs a greedy round: every consumer's input (float32)."""
    per_sample = 0
    for name in {r.layer for g in graph.groups.values() for r in g.refs if r.role == "consumer"}:
        try:
            shape = graph.layers[name].layer.input.shape[1:]
        except (AttributeError, ValueError, KeyError):
            continue
        per_sample += int(np.prod([int(d or 1) for d in shape])) * 4
    return max(per_sample, 1)


def max_round_samples(graph, budget_bytes: int | None = None) -> int:
    """Calibration samples one greedy round may pass through the model: every consumer's input
    on each within ``budget_bytes`` (:data:`ROUND_BUDGET_BYTES`), never fewer than
    :data:`MIN_ROUND_SAMPLES`."""
    budget = ROUND_BUDGET_BYTES if budget_bytes is None else int(budget_bytes)
    return max(MIN_ROUND_SAMPLES, budget // round_bytes_per_sample(graph))


@dataclass
class _Round:
    """One round of the greedy: the model at the current state and what every trial compares with."""
    model: Any
    xs: Any  # the scoring rows
    refs: Any  # the reference outputs on them
    base: float  # the loss of the current state
    p_now: int  # its prunable parameters
    remaining: float  # what is still to remove (parameters, or the objective's fraction)
    gone: set  # layers inside removed branches
    res_now: Any = None  # its resources (with an objective)
    names: Any = ()  # the consumer layers (topological order)
    acts: Any = None  # their inputs on the scoring rows
    tails: Any = None  # layer -> the model from its input on (None: not a closed sub-graph)
    cuts: Any = None  # (Layerwise, layer -> the live tensors in front of it on the scoring rows)


class GlobalGreedy(Allocation):
    name = "global"
    rate_unit = "params"

    def __init__(self, chunk: float = DEFAULT_CHUNK, min_keep: float = DEFAULT_MIN_KEEP, score: str = "holdout",
                 relative: bool = False, branches: bool = False, objective=None, table: bool | None = None):
        self.score = score
        # several chunks per round from one table of trials (None: when a round's trials cost more than
        # table.TABLE_MACS; pipeline/prune/allocation/table.py)
        self.table = table
        self.table_rounds = 0
        # what a chunk's saving and the rate measure (pipeline/prune/allocation/objective.py); None or
        # "size": the prunable parameters, exactly as before
        self.objective = objective if objective is not None and not objective.is_size else None
        if self.objective is not None:
            self.rate_unit = self.objective.resource
        self.branches = bool(branches)  # also propose removing whole residual branches (off by default)
        self.relative = bool(relative)  # chunk of the CURRENT width (finer as groups shrink)
        if not (0.0 < chunk <= 1.0):
            raise ValueError(f"chunk {chunk} must be in (0, 1]")
        self.chunk = float(chunk)
        self.min_keep = float(min_keep)
        self.label = (f"global greedy: least calibration-output loss per parameter saved, chunks of "
                      f"{self.chunk:.3g} of a group's width"
                      + ("; whole residual branches (least flow energy at their Add) as candidate moves"
                         if self.branches else ""))
        if self.objective is not None:
            self.label = self.label.replace("per parameter saved", f"per unit of {self.objective.resource} saved "
                                            f"(objective {self.objective.name})")
        self._ref = None  # (id(model), outputs of the ORIGINAL model on the calibration samples)
        self.samples_capped = None  # (samples used, samples given) when max_round_samples capped them
        self._last_model = None  # (state, its Keras model) at the end of the last step
        self._total = None
        self._last_pass = None  # the last round's pass (small models only): see _round_pass
        self.passes_reused = 0  # rounds that ran on from the last round's inputs
        self.trials = 0
        self.chunks = 0
        self.log: list[dict] = []  # one row per removed chunk: group, n, params saved, loss

    # ----------------------------------------------------------------- helpers
    def _calibration(self, pruner) -> np.ndarray:
        """The calibration samples a round passes through the model, at most
        :func:`max_round_samples` of them (the first ones): a round holds every consumer's input on
        every sample, so memory stays flat in the data (an ImageNet-size model holds tens of MB
        per sample)."""
        from edgeprune.pipeline.prune.criteria.flow import calibration_or_synthetic

        x = calibration_or_synthetic(pruner.ctx)
        n = max_round_samples(pruner.graph)
        if len(x) > n:
            self.samples_capped = (n, len(x))
            return x[:n]
        return x

    def _reference(self, pruner, x) -> np.ndarray:
        if self._ref is None or self._ref[0] != id(pruner.model):
            self._ref = (id(pruner.model), outputs(pruner.model, x))
            self._last_pass = None
            self._comp = None
            if pruner.compensator is not None and self.score == "holdout":
                from edgeprune.pipeline.prune.compensate import Compensator

                self._comp = Compensator(pruner.graph, x[self._fit_rows(len(x))], pruner.compensator.ridge)
            from edgeprune.pipeline.prune.surgery import PruneState

            self._total = prunable_params(pruner.graph, PruneState(pruner.graph))
            self._use_table = table_mode(self, pruner) and not self.branches
            if self._use_table and "table" not in self.label:
                self.label += ("; table rounds (one trial per group per round, several chunks taken by marginal "
                               "cost: a large model)")
            if self.objective is not None:
                from edgeprune.pipeline.search.resources import ResourceModel

                self._rm = ResourceModel(pruner.graph, self.objective.quantize)
                self._res0 = self._rm.evaluate(None)
        return self._ref[1]

    def _fit_rows(self, n: int) -> np.ndarray:
        """Samples the trial refits are fitted on; with ``score="holdout"`` the trial is
        scored on the others (a refit scored on its own samples looks better than it is)."""
        idx = np.arange(n)
        return idx[idx % 2 == 0] if self.score == "holdout" and n >= 8 else idx

    def _score_rows(self, n: int) -> np.ndarray:
        idx = np.arange(n)
        return idx[idx % 2 == 1] if self.score == "holdout" and n >= 8 else idx

    def _propose(self, pruner, state, g, n: int):
        """The state after removing ``n`` channels of group ``g`` (criterion's choice), with
        the directly consuming layers refitted when compensation is on."""
        sel = pruner.criterion.select(pruner.ctx, g, n)
        trial = removal(state, g, sel)
        keep_local = np.setdiff1d(np.arange(state.sizes[g.id]), np.asarray(sel.remove, dtype=np.int64))
        refit = []
        comp = self._comp if self._comp is not None else pruner.compensator
        if comp is not None and self.score != "mask":
            from edgeprune.pipeline.prune.compensate import refittable

            for name in self._consumers(pruner.graph, g):
                if not refittable(pruner.graph, name) or name not in self._acts:
                    continue
                ref = next(r for r in g.refs if r.role == "consumer" and r.layer == name)
                idx = layout_indices(ref.layout, state.sizes, {g.id: keep_local})
                set_refit(trial, name, comp.fit_layer(name, trial, np.take(self._acts[name], idx, axis=-1)))
                refit.append(name)
        return sel, trial, keep_local, refit

    @staticmethod
    def _consumers(graph, g) -> list[str]:
        names = {r.layer for r in g.refs if r.role == "consumer"}
        return [n for n in graph.order if n in names]

    # ----------------------------------------------------------------- the step
    def step(self, pruner, rate: float) -> bool:
        graph = pruner.graph
        x = self._calibration(pruner)
        ref = self._reference(pruner, x)
        target = rate * self._total
        obj = self.objective
        model, self._last_model = _model_of(pruner, self._last_model), None
        while True:
            state = pruner.state
            if obj is not None:  # the fraction of the objective's resources still to remove
                res_now = self._rm.evaluate(state)
                remaining = obj.value(res_now, self._res0) - (1.0 - rate)
                if remaining <= 1e-6:
                    break
            else:
                remaining = prunable_params(graph, state) - (self._total - target)
                if remaining <= EPS * self._total:
                    break
            pruner.ctx.state = state
            pruner.ctx.build = lambda: model
            gone, names = _consumers_left(pruner, state)
            rnd, self._acts = None, {}  # (the last round's inputs go before this round's pass)
            # ONE pass of the calibration samples through the round's model: every consumer's
            # input (the flow criterion's moments, the trial refits' inputs on the fit rows, the
            # trials' inputs on the scoring rows) and the output (the round's loss)
            acts, out = self._round_pass(model, names, x, state)
            pruner.ctx.cache["input_moments"] = (model, batch_moments(model, acts))
            pruner.criterion.begin_step(pruner.ctx)
            pruner.ctx.cache.pop("input_moments", None)
            fit = self._fit_rows(len(x)) if self._comp is not None else np.arange(len(x))
            comp = self._comp if self._comp is not None else pruner.compensator
            # (a refit's inputs on ITS samples: a Compensator keeps at most max_samples of the fit rows)
            score = self._score_rows(len(x))
            self._acts, score_acts = _split_rows(acts, fit, len(comp.x) if comp is not None else 0, score)
            xs, refs = x[score], ref[score]
            base = output_loss(out[score], refs)
            p_now = prunable_params(graph, state)
            rnd = _Round(model=model, xs=xs, refs=refs, base=base, p_now=p_now, remaining=remaining, gone=gone,
                         res_now=res_now if obj is not None else None, names=names, tails={}, acts=score_acts)
            del acts, out, score_acts
            if self._use_table:  # several chunks per round: pipeline/prune/allocation/table.py
                if not table_round(self, pruner, rnd):
                    break
                model = pruner.build()
                continue
            best, any_gain = self._best_chunk(pruner, rnd)
            if self.branches:
                from edgeprune.pipeline.prune.allocation.branch_moves import branch_trial

                bt = branch_trial(self, pruner, state, model, x[fit], xs, refs, base, p_now)
                if bt is not None and (best is None or bt[0] < best[0]):
                    _, branch, trial, saved, loss, ratio = bt
                    pruner.state = pruner.ctx.state = trial
                    self.chunks += 1
                    self.log.append({"branch": list(branch.key), "layers": list(branch.layers), "energy_ratio": ratio,
                                     "params_saved": int(saved), "loss": float(loss)})
                    model = pruner.build()
                    continue
            if best is None:  # nothing can shrink any more
                break
            if obj is not None and not any_gain:  # no chunk removes any of the objective's resources
                break
            _, g, n, sel, trial, saved, loss = best
            pruner.state = pruner.ctx.state = trial
            pruner.methods[g.id] = f"{sel.method} (global)"
            self.chunks += 1
            row = {"group": g.name, "removed": n, "width": int(trial.sizes[g.id]), "loss": float(loss),  # (width left)
                   "params_saved": int(saved if obj is None else p_now - prunable_params(graph, trial))}
            if obj is not None:
                row.update(saving=float(saved), drives=(obj.unmet(res_now, self._res0) or ["size"]) if obj.switching else sorted(obj.weights))
            self.log.append(row)
            model = pruner.build()
        pruner.ctx.build = pruner.build
        self._acts, rnd = {}, None
        if pruner.compensator is not None and rate > 0:  # on the model of the state (built after the last chunk)
            pruner.compensator.refit(pruner.state, lambda: model)  # (sets the refitted weights on it)
        self._last_model = (pruner.state, model)
        return True

    def _round_pass(self, model, names, x, state):
        """Every consumer's input and the output of the round's model on ``x``: run on from the
        last round's inputs when only layers from some point on changed (see :func:`_pass_from`),
        else one whole pass."""
        last, self._last_pass = self._last_pass, None
        got = _pass_from(model, names, x, state, last) if last is not None else None
        if got is None:
            got = layer_inputs_and_outputs(model, names, x)
        else:
            self.passes_reused += 1
        acts, out = got
        if sum(a.nbytes for a in acts.values()) <= ROUND_BUDGET_BYTES // 8 and not getattr(state, "branches", None):
            from edgeprune.pipeline.data.batching import batch_size_for
            from edgeprune.pipeline.prune.calib import BATCH

            weights = {n: [w.copy() for w in ws] for n, ws in state.weights.items()}
            self._last_pass = (x, list(names), acts, out, weights, batch_size_for(model, max_batch=BATCH))
        return acts, out

    def last_model(self, pruner):
        """The Keras model this allocation ended its last step with, if it still holds exactly the
        pruner's state (else a new build); None before any step."""
        return None if self._last_model is None else _model_of(pruner, self._last_model)

    def _chunk_size(self, pruner, state, g, rnd: "_Round") -> int:
        """How many channels of group ``g`` the next trial removes (0: none can go)."""
        round_to = int(pruner.config.round_to or 1)
        if rnd.gone and all(p in rnd.gone for p in g.producers):  # inside a removed branch
            return 0
        size = state.sizes[g.id]
        floor = narrowest(g, self.min_keep, pruner.config)  # (widths stay multiples of --round-to)
        room = size - floor
        if room <= 0:
            return 0
        n = min(room, max(1, int(round(self.chunk * (size if self.relative else g.size)))))
        per_channel = self._per_channel(pruner.graph, state, g) if self.objective is None else 0
        if per_channel > 0:  # do not overshoot the rate by more than a channel
            n = min(n, max(1, math.ceil(rnd.remaining / per_channel - EPS)))
        if round_to > 1:
            n = max(0, size - max(floor, ((size - n) // round_to) * round_to))
        return n

    def round_trials(self, pruner, rnd: "_Round"):
        """Every group's trial of its next chunk on the round's model: yields (cost, group, n,
        selection, trial state, saving, loss, objective gain)."""
        graph, state, obj, model = pruner.graph, pruner.state, self.objective, rnd.model
        for g in pruner.groups:
            n = self._chunk_size(pruner, state, g, rnd)
            if n <= 0:
                continue
            sel, trial, keep_local, refit = self._propose(pruner, state, g, n)
            saved = rnd.p_now - prunable_params(graph, trial)
            gain = 0.0
            if obj is not None:  # weighted fraction of the objective's resources + TIE x params
                gain = obj.driving_gain(rnd.res_now, self._rm.evaluate(trial), self._res0)
                saved = gain + obj.tie * saved / max(self._total, 1)
            if saved <= 0:
                continue
            masked = _masked_weights(graph, state, trial, g, keep_local)
            _prepare_trial(graph, rnd, masked)  # (before the trial's weights are set)
            for name, ws in masked.items():
                model.get_layer(name).set_weights(ws)
            loss = output_loss(_trial_outputs(pruner.graph, rnd, masked), rnd.refs)
            for name in masked:
                model.get_layer(name).set_weights(state.weights[name])
            self.trials += 1
            cost = (loss - rnd.base) / saved
            if obj is not None and obj.switching:
                # auto: a loss change within NOISE_REL of the current loss (a refit that
                # seems to LOWER the held-out loss included) is noise, not a bargain
                # inversely proportional to how LITTLE the chunk saves: such chunks rank
                # by their saving
                cost = max(loss - rnd.base, NOISE_REL * rnd.base) / saved
            yield cost, g, n, sel, trial, saved, loss, gain

    def _best_chunk(self, pruner, rnd: "_Round"):
        """(the cheapest chunk as (cost, group, n, selection, trial state, saving, loss) or None,
        whether any chunk removes some of the objective's resources)."""
        best, any_gain = None, False
        for cost, g, n, sel, trial, saved, loss, gain in self.round_trials(pruner, rnd):
            any_gain = any_gain or gain > 1e-12
            if best is None or cost < best[0] - 1e-15:
                best = (cost, g, n, sel, trial, saved, loss)
        return best, any_gain

    @staticmethod
    def _per_channel(graph, state, g) -> int:
        """Parameters one channel of ``g`` holds at the current widths."""
        total = 0
        for ref in g.refs:
            w = state.weights[ref.layer][ref.weight]
            blocks = sum(1 for gid in ref.layout if gid == g.id)
            total += blocks * (w.size // max(1, w.shape[ref.axis]))
        return total


def _split_rows(acts: dict, fit, n_fit: int, score) -> tuple[dict, dict]:
    """(the first ``n_fit`` fit rows, the scoring rows) of each layer's inputs in ``acts``, taken one
    layer at a time: the round's pass is let go layer by layer, never held twice (``acts`` itself is
    not changed; the last round's pass may keep it)."""
    acts, fits, scores = dict(acts), {}, {}
    for n in list(acts):
        a = acts.pop(n)
        if n_fit:
            fits[n] = a[fit][:n_fit]
        scores[n] = a[score]
        del a
    return fits, scores


def _consumers_left(pruner, state):
    """(the layers inside removed branches, the consumer layers outside them in topological order)."""
    from edgeprune.pipeline.prune.branches import removed_layers

    gone = removed_layers(state)
    names = {r.layer for g in pruner.groups for r in g.refs if r.role == "consumer"} - gone
    return gone, sorted(names, key=pruner.graph.order.index)


def _model_of(pruner, last):
    """The Keras model of the pruner's state: ``last`` = (state, model) the previous step ended
    with, when it still holds exactly the state's weights (nothing changed them since), else a
    new build."""
    state = pruner.state
    if last is None or last[0] is not state or getattr(state, "branches", None):
        return pruner.build()
    model = last[1]
    try:
        for name, ws in state.weights.items():
            if not _same_weights(model.get_layer(name).get_weights(), ws):
                return pruner.build()
    except ValueError:  # a layer the model does not have
        return pruner.build()
    return model


def _pass_from(model, names, x, state, last):
    """The round's pass (:func:`layer_inputs_and_outputs`) from the last round's ``last`` = (samples,
    consumers, their inputs, output, the weights it ran with, batch size): the layers in front of the
    first layer (topological order) whose weights differ from those compute exactly what they
    computed then (the same weights and widths on the same samples in the same batches), so their
    consumers' inputs are taken as they are and the rest run on from the first changed layer's
    input (:func:`calib.inputs_and_outputs_from`). None when that cannot be done exactly (other
    samples, consumers or batches, a removed branch, the first changed layer's input not kept, or
    not a closed sub-graph)."""
    from edgeprune.pipeline.data.batching import batch_size_for
    from edgeprune.pipeline.prune.calib import BATCH, inputs_and_outputs_from

    x0, names0, acts0, out0, weights0, b0 = last
    if x0 is not x or list(names) != names0 or getattr(state, "branches", None):
        return None
    if batch_size_for(model, max_batch=BATCH) != b0 or set(state.weights) != set(weights0):
        return None
    order = state.graph.order
    start = next((n for n in order if n in weights0 and not _same_weights(state.weights[n], weights0[n])), None)
    if start is None:  # nothing changed
        return dict(acts0), out0
    if start not in acts0:
        return None
    at = order.index(start)
    after = [n for n in names if order.index(n) >= at]
    got = inputs_and_outputs_from(model, start, acts0[start], after)
    if got is None:
        return None
    acts = {n: (got[0][n] if n in got[0] else acts0[n]) for n in names}
    return acts, got[1]


def _same_weights(ws, ws0) -> bool:
    return len(ws) == len(ws0) and all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(ws, ws0))


def _trial_start(graph, rnd: _Round, masked: dict):
    start = min(masked, key=graph.order.index) if masked else None
    return start if start is not None and rnd.acts is not None and start in rnd.acts else None


def _prepare_trial(graph, rnd: _Round, masked: dict) -> None:
    """What a trial runs on from, made with the ROUND's weights: the sub-model from the input of the
    first layer it changes, or, when that is not a closed sub-graph (a residual network's skip
    tensors cross it), the live tensors in front of every consumer on the scoring rows, kept once
    per round by one layer-wise pass (pipeline/prune/layerwise.py)."""
    from edgeprune.pipeline.prune.calib import tail_model, traced

    start = _trial_start(graph, rnd, masked)
    if start is None or traced(rnd.model):  # (the whole model, traced, costs less than a part op by op)
        return
    if start not in rnd.tails:
        rnd.tails[start] = tail_model(rnd.model, start)
    if rnd.tails[start] is None and rnd.cuts is None:
        from edgeprune.pipeline.prune.layerwise import Layerwise

        lw = Layerwise(rnd.model)
        rnd.cuts = (lw, lw.walk(lw.first_input(rnd.xs), 0, keep_at=set(rnd.names))[1]) if lw.ok else (None, {})


def _trial_outputs(graph, rnd: _Round, masked: dict) -> np.ndarray:
    """The round's model's outputs on the scoring rows with a trial's weights set: the whole model
    when it runs traced (calib.traced: a large model; one trace per round serves every trial),
    else run on from the scoring rows' input of the first layer the trial changes (the layers in
    front of it compute what they computed for the round: the same numbers, without re-running
    them), from the live tensors in front of it when that input alone does not determine the
    rest, or the whole model."""
    from edgeprune.pipeline.prune.calib import outputs_from, traced

    start = _trial_start(graph, rnd, masked)
    if start is not None and not traced(rnd.model):
        tail = rnd.tails.get(start)
        if tail is not None:
            return outputs_from(rnd.model, tail, rnd.acts[start])
        lw, kept = rnd.cuts or (None, {})
        if start in kept:
            return lw.walk(kept[start], lw.at[start])[0]
    return outputs(rnd.model, rnd.xs)


def _masked_weights(graph, state, trial, g, keep_local) -> dict[str, list[np.ndarray]]:
    """The trial's consumer weights at the CURRENT widths: removed channels' rows zero. A
    consumer that also holds other weights indexed by ``g`` (an attention layer's head
    projections, a recurrent kernel's gate columns) gets them back at the current widths
    too, the removed channels zero (their consumers ignore them)."""
    from edgeprune.pipeline.prune.branches import removed_layers

    out = {}
    gone = removed_layers(state)
    layers = [n for n in dict.fromkeys(r.layer for r in g.refs if r.role == "consumer") if n not in gone]
    for name in layers:
        ws = out.setdefault(name, [w.copy() for w in trial.weights[name]])
        for widx in dict.fromkeys(r.weight for r in g.refs if r.layer == name):
            cur = state.weights[name][widx]
            full = np.zeros(cur.shape, dtype=np.float32)
            idx = [np.arange(d) for d in cur.shape]
            for ref in g.refs:
                if ref.layer == name and ref.weight == widx:
                    idx[ref.axis] = layout_indices(ref.layout, state.sizes, {g.id: keep_local})
            full[np.ix_(*idx)] = trial.weights[name][widx]
            ws[widx] = full
    return out
