"""``taylor``: first-order Taylor importance (the peers' best, Torch-Pruning's group Taylor).

One backward pass of the calibration samples against the ORIGINAL model's predictions
(cross-entropy to its arg-max for a classifier, squared error to its outputs otherwise): a
channel's score is ``sum |w * dL/dw|`` over every weight of the group that indexes it
(producer kernels and biases, BatchNorm parameters, the consumers' input weights).
"""
from __future__ import annotations

import numpy as np

from edgeprune.errors import BadInput
from edgeprune.pipeline.prune.calib import is_probability
from edgeprune.pipeline.prune.criteria.base import Context, Importance
from edgeprune.pipeline.prune.criteria.flow import calibration_or_synthetic
from edgeprune.pipeline.prune.graph import offsets


def _gradients(model, x, ref: np.ndarray) -> dict[str, list]:
    """Gradients of the summed loss over ``x``, accumulated batch by batch (batches sized by the
    model's activation memory: a tape keeps one batch's activations)."""
    import tensorflow as tf

    from edgeprune.pipeline.prune.calib import _batches, _call

    variables = {layer.name: list(layer.weights) for layer in model.layers if layer.weights}
    flat = [v for vs in variables.values() for v in vs]
    total: list = [None] * len(flat)
    start = 0
    for xb in _batches(x, model):
        rb = ref[start:start + len(xb)]
        start += len(xb)
        with tf.GradientTape() as tape:
            for v in flat:
                tape.watch(v.value)
            out = _call(model, xb, compiled=False)  # (the tape watches the weights)
            out = out[0] if isinstance(out, (list, tuple)) else out
            out = tf.reshape(out, (tf.shape(out)[0], -1))
            if is_probability(ref):
                labels = tf.constant(rb.argmax(1))
                loss = tf.reduce_sum(tf.keras.losses.sparse_categorical_crossentropy(labels, out))
            else:
                loss = 0.5 * tf.reduce_sum(tf.square(out - tf.constant(rb, dtype=out.dtype)))
        grads = tape.gradient(loss, [v.value for v in flat])
        for k, g in enumerate(grads):
            if g is not None:
                g = np.asarray(g, dtype=np.float64)
                total[k] = g if total[k] is None else total[k] + g
    out, i = {}, 0
    for name, vs in variables.items():
        out[name] = total[i:i + len(vs)]
        i += len(vs)
    return out


class Taylor(Importance):
    name = "taylor"

    def begin_step(self, ctx: Context) -> None:
        if ctx.build is None:
            raise BadInput("the taylor criterion needs the model's current state (internal: no build function)")
        model = ctx.build()
        x = calibration_or_synthetic(ctx)
        ref = ctx.reference
        if ref is None or len(ref) != len(x):
            from edgeprune.pipeline.prune.calib import outputs

            ref = outputs(ctx.graph.model, x)  # the original's predictions
            ctx.reference = ref
        self.grads = _gradients(model, x, ref)
        self.sizes0 = dict(ctx.state.sizes)

    def scores(self, ctx: Context, group) -> np.ndarray:
        state = ctx.state
        n = state.sizes[group.id]
        total = np.zeros(n)
        for ref in group.refs:
            g = self.grads.get(ref.layer, [None] * (ref.weight + 1))[ref.weight]
            if g is None:
                continue
            w = state.weights[ref.layer][ref.weight]
            # gradients were taken at the step's start: same layout for this group's axis,
            # other axes may have shrunk since (a downstream group pruned first) -> per block
            prod_axis = np.moveaxis(g, ref.axis, 0)
            w_axis = np.moveaxis(w, ref.axis, 0)
            if prod_axis.shape[1:] != w_axis.shape[1:]:
                continue  # another axis changed within the step; its contribution is left out
            now = [s for gg, s in offsets(ref.layout, state.sizes) if gg == group.id]
            then = [s for gg, s in offsets(ref.layout, self.sizes0) if gg == group.id]
            for s_now, s_then in zip(now, then):
                t = np.abs(w_axis[s_now:s_now + n] * prod_axis[s_then:s_then + n])
                total += t.reshape(n, -1).sum(1)
        return total
