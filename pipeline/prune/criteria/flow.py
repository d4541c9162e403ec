"""``flow``: zero-shot information-flow importance (data-aware, one forward pass per step).

A channel matters by how much signal it carries into the next layer's pre-activation. One
forward pass of the calibration samples through the CURRENT model gives, at every consumer's
input, each channel's second moment ``E[a_c^2]`` (over samples and spatial positions); the
channel's contribution to the consumer's pre-activation energy is then ``E[a_c^2] *
||W_c||^2``, with ``W_c`` the consumer weights reading channel ``c`` (a Dense row, or all of a
Conv kernel's taps and filters for input channel ``c``). The score sums this over every
consumer of the group (coupled channels, e.g. through a residual Add, have several) and over
every block a Flatten repeats. No labels and no gradients; the calibration samples are the
run's held-out split, or synthetic inputs in the input range when there is no data.
"""
from __future__ import annotations

import numpy as np

from edgeprune.errors import BadInput
from edgeprune.pipeline.prune.calib import consumer_layers, layer_input_moments
from edgeprune.pipeline.prune.criteria.base import Context, Importance
from edgeprune.pipeline.prune.graph import offsets


def calibration_or_synthetic(ctx: Context, n: int = 64) -> np.ndarray:
    """The context's calibration samples, or seeded synthetic inputs in the input range."""
    if ctx.calibration is not None:
        return ctx.calibration
    if "synthetic" not in ctx.cache:
        shape = tuple(int(d) for d in ctx.graph.model.inputs[0].shape[1:])
        lo, hi = ctx.input_range
        rng = np.random.default_rng(1)
        ctx.cache["synthetic"] = rng.uniform(lo, hi, size=(n, *shape)).astype(np.float32)
    return ctx.cache["synthetic"]


class Flow(Importance):
    name = "flow"

    def begin_step(self, ctx: Context) -> None:
        if ctx.build is None:
            raise BadInput("the flow criterion needs the model's current state (internal: no build function)")
        from edgeprune.pipeline.prune.branches import removed_layers

        gone = removed_layers(ctx.state)
        names = [n for n in consumer_layers(ctx.graph, {g.id for g in ctx.graph.prunable_groups}) if n not in gone]
        # layers whose consumer weights read something else than their one input (attention
        # heads): their handler gives the second moments per consumer weight
        special = [n for n in names if hasattr(ctx.graph.handler(n), "consumer_moments")]
        model = ctx.build()
        x = calibration_or_synthetic(ctx)
        # second moment of every input channel, over samples and positions (accumulated batch by batch)
        plain = [n for n in names if n not in special]
        pre = ctx.cache.get("input_moments")  # the caller's one pass of x through this model (the global greedy)
        if pre is not None and pre[0] is model and all(n in pre[1] for n in plain):
            self.m2 = {n: pre[1][n] for n in plain}
        else:
            self.m2 = layer_input_moments(model, plain, x)
        self.m2_weight = {(n, k): m for n in special
                          for k, m in ctx.graph.handler(n).consumer_moments(model.get_layer(n), model, x).items()}
        self.sizes0 = dict(ctx.state.sizes)  # layouts of the measured activations

    def scores(self, ctx: Context, group) -> np.ndarray:
        state = ctx.state
        n = state.sizes[group.id]
        total = np.zeros(n)
        for ref in group.refs:
            if ref.role != "consumer":
                continue
            own = self.m2_weight.get((ref.layer, ref.weight))  # the handler's moments for this weight
            if own is None and ref.layer in group.producers:
                # a recurrent layer's recurrent rows read its own hidden state, not the layer's
                # input whose moments m2 holds (the fuzzer's GRU(5) on 2 input channels crashed
                # here; a wider input gave wrong scores silently): scored by its other readers.
                # (An attention layer also reads its own heads, with its handler's moments.)
                continue
            m2 = own if own is not None else self.m2.get(ref.layer)
            if m2 is None:  # e.g. in a removed branch
                continue
            w = np.moveaxis(state.weights[ref.layer][ref.weight], ref.axis, 0)
            energy = np.square(w.astype(np.float64)).reshape(w.shape[0], -1).sum(1)
            now = [s for g, s in offsets(ref.layout, state.sizes) if g == group.id]
            then = [s for g, s in offsets(ref.layout, self.sizes0) if g == group.id]
            for s_now, s_then in zip(now, then):
                total += m2[s_then:s_then + n] * energy[s_now:s_now + n]
        return total
