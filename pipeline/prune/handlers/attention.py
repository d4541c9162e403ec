"""Attention and the time/axis wrappers: MultiHeadAttention, TimeDistributed, Permute.

MultiHeadAttention prunes by whole heads. Its weights (Keras 3, with biases):
query kernel (d_q, H, key_dim) and bias (H, key_dim), key kernel (d_k, H, key_dim) and bias,
value kernel (d_v, H, value_dim) and bias, output kernel (H, value_dim, d_q) and bias (d_q,).
The layer opens ONE group of H channels, each channel a head: removing head h removes its
slice of the query, key and value projections (axis 1; producer weights) and its rows of the
output projection (axis 0; the consumer weight that reads the head's attention output).
Heads are independent until the output projection sums them, so a model without head h
equals the original with head h's output-projection rows zeroed (the masking reference).
The output has the query's width (``output_shape`` unset): its channels are the query's
layout (the residual stream), and the output projection's columns and bias are indexed by
it, so the residual stream is pruned together with the layers around it, or (behind a
LayerNormalization, as in every transformer block) frozen with them. The rebuilt layer gets
``num_heads`` = the kept heads.

TimeDistributed(Dense/Conv/pass-through) prunes like its inner layer (the same weights);
any other inner layer is frozen, naming it. Permute keeps the channels when the channel axis
stays last, otherwise its channels are frozen (never passed through).
"""
from __future__ import annotations

import numpy as np

from edgeprune.pipeline.prune.handlers.base import LayerHandler, handler_for, register
from edgeprune.pipeline.prune.handlers.channelwise import ActivationHandler, PassThroughHandler
from edgeprune.pipeline.prune.handlers.core import ConvHandler, DenseHandler


def _mha_indices(use_bias: bool) -> dict[str, int | None]:
    if use_bias:
        return {"qk": 0, "qb": 1, "kk": 2, "kb": 3, "vk": 4, "vb": 5, "ok": 6, "ob": 7}
    return {"qk": 0, "qb": None, "kk": 1, "kb": None, "vk": 2, "vb": None, "ok": 3, "ob": None}


@register("MultiHeadAttention")
class MultiHeadAttentionHandler(LayerHandler):
    width_key = "num_heads"
    single_input = False

    def visit(self, graph, info, ins, cfg):
        name, layer = info.name, info.layer
        if cfg.get("use_gate"):
            return graph.unknown_layer(info, ins, "MultiHeadAttention with use_gate=True")
        if cfg.get("output_shape") is not None:
            return graph.unknown_layer(info, ins, "MultiHeadAttention with output_shape set")
        if len(ins) != 2:  # query, value (key = value); a key or attention-mask tensor: frozen
            return graph.unknown_layer(info, ins, f"MultiHeadAttention called on {len(ins)} tensors "
                                       "(only query and value are supported)")
        if len(graph.out_shapes(info)) != 1:
            return graph.unknown_layer(info, ins, "MultiHeadAttention returning its attention scores")
        use_bias = cfg.get("use_bias", True)
        if len(layer.weights) != (8 if use_bias else 4):
            return graph.unknown_layer(info, ins, f"MultiHeadAttention with {len(layer.weights)} weights")
        q, v = ins
        i = _mha_indices(use_bias)
        g = graph.new_group(cfg["num_heads"], name)
        for kern, bias, x in (("qk", "qb", q), ("kk", "kb", v), ("vk", "vb", v)):
            graph.add_ref(name, i[kern], 0, x, "consumer")
            graph.add_ref(name, i[kern], 1, (g,), "producer")
            if bias is not None and i[bias] is not None:
                graph.add_ref(name, i[bias], 0, (g,), "producer")
        graph.add_ref(name, i["ok"], 0, (g,), "consumer")  # rows: the heads' attention outputs
        graph.add_ref(name, i["ok"], 2, q, "producer")  # columns: the output has the query's width
        if i["ob"] is not None:
            graph.add_ref(name, i["ob"], 0, q, "producer")
        graph.set_layout(name, q)

    def consumer_moments(self, layer, model, x) -> dict[int, np.ndarray]:
        """For the ``flow`` criterion: per consumer weight index, the second moment of what its
        axis reads (the query/value inputs' channels; for the output projection, per head, the
        energy of the head's contribution divided by its rows' energy, so that ``flow``'s
        ``m2 * ||W_h||^2`` is the head's output energy). Attention masks are not applied (a
        score, not the model's computation)."""
        import keras

        from edgeprune.pipeline.prune.calib import _batches, _call

        cfg = layer.get_config()
        i = _mha_indices(cfg.get("use_bias", True))
        w = [np.asarray(a, dtype=np.float64) for a in layer.get_weights()]
        zero = lambda k: 0.0 if i[k] is None else w[i[k]]  # noqa: E731
        feats = keras.Model(model.inputs, list(layer.input))
        key_dim = w[i["qk"]].shape[-1]
        m2q = m2v = head = 0.0
        count = 0
        for xb in _batches(x, model):
            qa, va = (np.asarray(t, dtype=np.float64) for t in _call(feats, xb))
            qa, va = qa.reshape(len(qa), -1, qa.shape[-1]), va.reshape(len(va), -1, va.shape[-1])
            m2q = m2q + np.square(qa).reshape(-1, qa.shape[-1]).sum(0)
            m2v = m2v + np.square(va).reshape(-1, va.shape[-1]).sum(0)
            count += qa.shape[0] * qa.shape[1]
            qh = np.einsum("btd,dhk->bthk", qa, w[i["qk"]]) + zero("qb")
            kh = np.einsum("bsd,dhk->bshk", va, w[i["kk"]]) + zero("kb")
            vh = np.einsum("bsd,dhk->bshk", va, w[i["vk"]]) + zero("vb")
            s = np.einsum("bthk,bshk->bhts", qh, kh) / np.sqrt(key_dim)
            p = np.exp(s - s.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            a = np.einsum("bhts,bshv->bthv", p, vh)
            contrib = np.einsum("bthv,hvd->bthd", a, w[i["ok"]])
            head = head + np.square(contrib).sum(axis=(0, 1, 3))
        rows = np.square(w[i["ok"]]).reshape(w[i["ok"]].shape[0], -1).sum(1)
        c = max(count, 1)
        return {i["qk"]: m2q / c, i["kk"]: m2v / c, i["vk"]: m2v / c,
                i["ok"]: (head / c) / np.maximum(rows, 1e-30)}


# inner handlers TimeDistributed can delegate to: their rules read only the inner layer's
# weights and config, not the input's rank
_TIME_DISTRIBUTABLE = (DenseHandler, ConvHandler, PassThroughHandler, ActivationHandler)


@register("TimeDistributed")
class TimeDistributedHandler(LayerHandler):
    """TimeDistributed(layer): the same weights as ``layer``, applied at every time step."""

    def _inner(self, layer):
        inner = getattr(layer, "layer", None)
        h = handler_for(inner) if inner is not None else None
        return (inner, h) if isinstance(h, _TIME_DISTRIBUTABLE) else (inner, None)

    def visit(self, graph, info, ins, cfg):
        from edgeprune.pipeline.prune.graph import LayerInfo

        inner, h = self._inner(info.layer)
        if h is None:
            cls = type(inner).__name__ if inner is not None else "?"
            return graph.unknown_layer(info, ins, f"TimeDistributed({cls}) (only Dense, Conv and "
                                       "channel-wise layers are pruned through)")
        icfg = inner.get_config()
        if icfg.get("data_format") == "channels_first":
            return graph.unknown_layer(info, ins, f"TimeDistributed({type(inner).__name__}) with channels_first")
        sub = LayerInfo(info.name, type(inner).__name__, info.inputs, inner, info.masks)
        h.visit(graph, sub, ins, icfg)

    def rebuild_changes(self, layer, width: int) -> dict:
        inner, h = self._inner(layer)
        changes = h.rebuild_changes(inner, width) if h is not None else {}
        if not changes:
            return {}
        sub = dict(layer.get_config()["layer"])
        sub["config"] = {**sub["config"], **changes}
        return {"layer": sub}


@register("Permute")
class PermuteHandler(LayerHandler):
    """``dims`` (1-based, without the batch axis): the channels pass through when the last
    axis stays last; a Permute that moves the channel axis freezes its channels."""

    def visit(self, graph, info, ins, cfg):
        dims = tuple(int(d) for d in cfg["dims"])
        if dims[-1] != len(dims):
            return graph.unknown_layer(info, ins, f"Permute{dims} moves the channel axis")
        graph.set_layout(info.name, ins[0])

    def bounds(self, info, ins, weights, cfg):
        perm = (0, *(int(d) for d in cfg["dims"]))
        lo, hi = ins[0]
        return np.transpose(lo, perm), np.transpose(hi, perm)
