"""Recurrent layers: SimpleRNN, GRU, LSTM and the Bidirectional wrapper.

A recurrent layer with ``units`` u opens one group of u channels (its hidden state).
Its kernel (in, k*u) and recurrent kernel (u, k*u) hold k gate blocks of u columns each
(LSTM: i, f, c, o, k = 4; GRU: z, r, h, k = 3; SimpleRNN: k = 1), so their output axis is
laid out as the group repeated k times; the bias likewise (GRU with ``reset_after`` has a
(2, 3u) bias). The recurrent kernel's rows read the hidden state: a removed unit's row is
a consumer of the group like a following Dense's row, so removing a unit equals masking
its outgoing weights (recurrent rows and the next layers' inputs).

Bidirectional: forward and backward layers share ONE group (same kept units in both), so
the output is laid out (g, g) when concatenated and (g,) for sum/ave/mul.
"""
from __future__ import annotations

from edgeprune.pipeline.prune.handlers.base import LayerHandler, register

GATES = {"SimpleRNN": 1, "GRU": 3, "LSTM": 4}
STATES = {"SimpleRNN": 1, "GRU": 1, "LSTM": 2}


def _rnn_refs(graph, name: str, cls: str, cfg: dict, x, g: int, offset: int, bias_shape) -> None:
    k = GATES[cls]
    gates = (g,) * k
    graph.add_ref(name, offset + 0, 0, x, "consumer")
    graph.add_ref(name, offset + 0, 1, gates, "producer")
    graph.add_ref(name, offset + 1, 0, (g,), "consumer")  # recurrent rows read the hidden state
    graph.add_ref(name, offset + 1, 1, gates, "producer")
    if cfg.get("use_bias", True):
        graph.add_ref(name, offset + 2, len(bias_shape) - 1, gates, "producer")


def _check(cls: str, cfg: dict) -> str | None:
    if cfg.get("time_major"):
        return f"{cls} with time_major=True"
    return None


@register("SimpleRNN", "GRU", "LSTM")
class RecurrentHandler(LayerHandler):
    width_key = "units"

    def visit(self, graph, info, ins, cfg):
        name, layer, cls = info.name, info.layer, info.cls
        why = _check(cls, cfg)
        if why:
            return graph.unknown_layer(info, ins, why)
        g = graph.new_group(cfg["units"], name)
        bias_shape = tuple(layer.weights[2].shape) if cfg.get("use_bias", True) else ()
        _rnn_refs(graph, name, cls, cfg, ins[0], g, 0, bias_shape)
        n_out = 1 + (STATES[cls] if cfg.get("return_state") else 0)
        for i in range(n_out):
            graph.set_layout(name, (g,), i)


@register("Bidirectional")
class BidirectionalHandler(LayerHandler):
    def visit(self, graph, info, ins, cfg):
        name, layer = info.name, info.layer
        fwd, bwd = layer.forward_layer, layer.backward_layer
        fcls, bcls = type(fwd).__name__, type(bwd).__name__
        if fcls not in GATES or bcls != fcls:
            return graph.unknown_layer(info, ins, f"Bidirectional({fcls}, {bcls})")
        fcfg, bcfg = fwd.get_config(), bwd.get_config()
        if fcfg["units"] != bcfg["units"] or fcfg.get("use_bias", True) != bcfg.get("use_bias", True):
            return graph.unknown_layer(info, ins, "Bidirectional with different forward and backward layers")
        why = _check(fcls, fcfg)
        if why:
            return graph.unknown_layer(info, ins, why)
        g = graph.new_group(fcfg["units"], name)
        n_w = len(fwd.weights)
        bias_shape = tuple(fwd.weights[2].shape) if fcfg.get("use_bias", True) else ()
        _rnn_refs(graph, name, fcls, fcfg, ins[0], g, 0, bias_shape)
        _rnn_refs(graph, name, fcls, bcfg, ins[0], g, n_w, bias_shape)
        mode = cfg.get("merge_mode", "concat")
        states = STATES[fcls] if fcfg.get("return_state") else 0
        if mode == "concat":
            outs = [(g, g)]
        elif mode in ("sum", "ave", "mul"):
            outs = [(g,)]
        elif mode is None:
            outs = [(g,), (g,)]
        else:
            return graph.unknown_layer(info, ins, f"Bidirectional with merge_mode={mode!r}")
        outs += [(g,)] * (2 * states)
        for i, lay in enumerate(outs):
            graph.set_layout(name, lay, i)

    def rebuild_changes(self, layer, width: int) -> dict:
        cfg = layer.get_config()
        changes = {}
        for key in ("layer", "backward_layer"):
            if cfg.get(key):
                sub = dict(cfg[key])
                sub["config"] = {**sub["config"], "units": int(width)}
                changes[key] = sub
        return changes
