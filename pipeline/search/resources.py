"""Resource models of a candidate, on the host, before conversion.

From the dependency graph of the ORIGINAL model and a pruning state (the group widths), per
layer and for the whole model, without building or converting anything (the global
allocation evaluates one state per trial chunk):

- **params**: the weights the state holds (exact);
- **weight bytes**: as :func:`edgeprune.pipeline.search.predict.weight_bytes` stores them (BatchNorm
  folded into the conv; int8 kernels, int32 biases, 24 B of per-channel quantization
  parameters per output channel), from the state's weight shapes;
- **MACs**: multiply-accumulates of one inference (Conv*, DepthwiseConv*, SeparableConv*,
  Dense), the original layer's count scaled by the kept fraction of its input and output
  channels (exact for these kinds: their MACs are linear in each width);
- **peak activation memory**: the tensors the converted graph materializes, live from the op
  that writes them to the last op that reads them, walked in execution (topological) order;
  the peak is the largest sum of live tensors at any op. BatchNormalization, activations that
  the converter fuses into the preceding op (ReLU, ReLU6, ...), Dropout and other identity
  layers write no tensor of their own (they alias their input). Element size: 1 byte for
  int8 (input and output int8 too), 4 bytes otherwise (float16 stores weights, not
  activations, in 16 bits). This is what a TFLite-Micro arena's non-persistent part is made
  of (its planner may fragment, and the persistent part holds per-op and per-tensor data):
  :class:`RamPredictor` adds the overhead learnt from one measured arena;
- **predicted latency**: a :class:`edgeprune.pipeline.search.latency_model.LatencyModel` applied to
  these figures (a board model); on a microcontroller the MAC-based estimate.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

# layers that write no tensor of their own in the converted graph (fused or identity)
ALIAS = {"BatchNormalization", "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
         "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization", "ReLU", "InputLayer"}
SOFT_P = 8  # the smooth peak's norm: ops within a few % of the peak count, two tied ops each half
FUSED_ACTIVATIONS = {"relu", "relu6", "linear", None}
_CONV = {"Conv1D", "Conv2D", "Conv3D", "Conv2DTranspose", "Conv1DTranspose", "Conv3DTranspose"}
_DEPTHWISE = {"DepthwiseConv1D", "DepthwiseConv2D"}
_SEPARABLE = {"SeparableConv1D", "SeparableConv2D"}


@dataclass
class LayerResources:
    name: str
    kind: str
    width: Optional[int]  # output channels at the state
    width_before: Optional[int]  # output channels of the original model
    params: int
    macs: int
    activation_bytes: int  # bytes of the tensor this layer writes (0: fused / alias)


@dataclass
class Resources:
    params: int
    weight_bytes: int
    macs: int
    peak_activation_bytes: int
    peak_at: str  # the op at which the live tensors peak
    peak_tensors: list = field(default_factory=list)  # the tensors live at the peak
    activation_soft_peak: float = 0.0  # L_p norm (p = SOFT_P) of the per-op live bytes: a smooth peak
    # output channels of the conv / depthwise / dense ops: TFLite-Micro keeps an int32 multiplier
    # and an int32 shift per output channel of each in its arena's persistent part (RamPredictor)
    quant_channels: int = 0
    layers: list = field(default_factory=list)  # LayerResources, in execution order
    activation_bytes: int = 0  # bytes every layer writes, summed (the latency model's memory traffic)
    depthwise_macs: int = 0  # the MACs of depthwise ops (DepthwiseConv, a SeparableConv's depthwise part)

    def to_dict(self, layers: bool = False) -> dict:
        d = asdict(self)
        if not layers:
            d.pop("layers")
        return d

    def get(self, resource: str, smooth: bool = False) -> float:
        """The figure of a resource name: ``size`` (weight bytes), ``params``, ``macs``, ``ram``
        (peak activation bytes)."""
        if resource == "ram" and smooth:
            return float(self.activation_soft_peak)
        return float({"size": self.weight_bytes, "params": self.params, "macs": self.macs,
                      "ram": self.peak_activation_bytes}[resource])


def _bytes_per(quantize: str, kind: str, n: int) -> float:
    from edgeprune.pipeline.search.predict import _bytes_per as bp

    return bp(quantize, kind, n)


def activation_bytes_per_element(quantize: str) -> int:
    return 1 if quantize == "int8" else 4


class ResourceModel:
    """Resources of any pruning state of one model (built once from its dependency graph)."""

    def __init__(self, graph, quantize: str = "int8"):
        self.graph = graph
        self.quantize = quantize
        self.elem = activation_bytes_per_element(quantize)
        model = graph.model
        self._layer_objs = {l.name: l for l in model.layers}
        self.order = [n for n in graph.order if not graph.layers[n].mask_only]
        self.macs0: dict[str, tuple[int, int]] = {}  # name -> (MACs scaled by in x out, MACs scaled by in)
        for name in self.order:
            self.macs0[name] = self._macs0(name)
        # tensors: an alias layer's output is its (first) input's tensor
        self.tensor_of: dict[tuple[str, int], tuple[str, int]] = {}
        for name in self.order:
            info = graph.layers[name]
            n_out = max(1, sum(1 for k in graph.shapes if k[0] == name))
            for i in range(n_out):
                if self._is_alias(info) and info.inputs:
                    self.tensor_of[(name, i)] = self.tensor_of.get(info.inputs[0], info.inputs[0])
                else:
                    self.tensor_of[(name, i)] = (name, i)
        self.ops = [n for n in self.order if graph.layers[n].inputs and not self._is_alias(graph.layers[n])]
        self.inputs = [self.tensor_of.get(r, r) for r in graph.input_refs]
        self.outputs = [self.tensor_of.get(r, r) for r in graph.output_refs]
        self.last_use: dict[tuple[str, int], int] = {}
        for i, op in enumerate(self.ops):
            for src in graph.layers[op].inputs:
                t = self.tensor_of.get(src, src)
                self.last_use[t] = max(self.last_use.get(t, -1), i)
        for t in self.outputs:
            self.last_use[t] = len(self.ops)

    # ------------------------------------------------------------------ structure
    def _is_alias(self, info) -> bool:
        if info.cls in ALIAS:
            return True
        if info.cls == "Activation" and info.layer is not None:
            act = info.layer.get_config().get("activation")
            if act in FUSED_ACTIVATIONS and info.inputs:
                src = self.graph.layers.get(info.inputs[0][0])
                return src is not None and (src.cls in _CONV | _DEPTHWISE | _SEPARABLE | {"Dense", "Add"}
                                            or src.cls == "BatchNormalization")
        return False

    def _width(self, ref, sizes) -> Optional[int]:
        layout = self.graph.layouts.get(ref)
        if layout is None:
            shape = self.graph.shapes.get(ref)
            return int(shape[-1]) if shape and shape[-1] else None
        return int(sum(sizes[g] for g in layout))

    def _width0(self, ref) -> Optional[int]:
        shape = self.graph.shapes.get(ref)
        return int(shape[-1]) if shape and shape[-1] else None

    def _macs0(self, name: str) -> tuple[int, int]:
        info = self.graph.layers[name]
        layer = info.layer
        if layer is None:
            return (0, 0)
        shape = self.graph.shapes.get((name, 0))
        if not shape:
            return (0, 0)
        out = [int(s) if s is not None else 1 for s in shape]
        spatial = int(np.prod(out[1:-1])) if len(out) > 2 else 1
        ws = [tuple(int(s) for s in w.shape) for w in layer.weights if len(w.shape) >= 2]
        if not ws:
            return (0, 0)
        if info.cls in _CONV or info.cls == "Dense":
            return (spatial * int(np.prod(ws[0])), 0)
        if info.cls in _DEPTHWISE:
            return (0, spatial * int(np.prod(ws[0])))
        if info.cls in _SEPARABLE and len(ws) >= 2:
            return (spatial * int(np.prod(ws[1])), spatial * int(np.prod(ws[0])))
        return (0, 0)

    # ------------------------------------------------------------------ evaluation
    def _elements(self, ref, sizes) -> int:
        shape = self.graph.shapes.get(ref)
        if shape is None:
            return 0
        dims = [int(s) if s is not None else 1 for s in shape[1:]]
        if not dims:
            return 1
        width = self._width(ref, sizes)
        return int(np.prod(dims[:-1])) * int(width if width is not None else dims[-1])

    def evaluate(self, state=None, layers: bool = False) -> Resources:
        """The resources of ``state`` (None: the original model)."""
        from edgeprune.pipeline.prune.branches import removed_layers

        graph = self.graph
        sizes = state.sizes if state is not None else {gid: g.size for gid, g in graph.groups.items()}
        gone = removed_layers(state) if state is not None else set()
        weights = state.weights if state is not None else None
        total_params = 0
        total_wbytes = 0.0
        total_macs = 0
        total_dw = 0
        total_act = 0
        quant_channels = 0
        rows = []
        for name in self.order:
            if name in gone:
                continue
            info = graph.layers[name]
            ws = weights.get(name, []) if weights is not None else (
                [np.asarray(w) for w in info.layer.get_weights()] if info.layer is not None else [])
            params = int(sum(int(w.size) for w in ws))
            total_params += params
            total_wbytes += self._weight_bytes(info, ws, sizes)
            m_inout, m_in = self.macs0[name]
            macs = 0
            if m_inout or m_in:
                src = info.inputs[0] if info.inputs else None
                w_in0, w_in = (self._width0(src), self._width(src, sizes)) if src else (None, None)
                w_out0, w_out = self._width0((name, 0)), self._width((name, 0), sizes)
                r_in = (w_in / w_in0) if w_in0 and w_in is not None else 1.0
                if info.cls == "Dense" and src is not None:
                    shape = graph.shapes.get(src) or ()
                    if len(shape) > 2:  # Dense on a rank > 2 tensor: the last axis only
                        pass
                r_out = (w_out / w_out0) if w_out0 and w_out is not None else 1.0
                macs = int(round(m_inout * r_in * r_out + m_in * r_in))
                if info.cls in _DEPTHWISE | _SEPARABLE:
                    total_dw += int(round(m_in * r_in))
            total_macs += macs
            if info.cls in _CONV | _DEPTHWISE | _SEPARABLE | {"Dense"}:
                w_out = self._width((name, 0), sizes) or 0
                quant_channels += w_out
                if info.cls in _SEPARABLE and info.inputs:  # its depthwise op, on the input's channels
                    quant_channels += self._width(info.inputs[0], sizes) or 0
            t = self.tensor_of.get((name, 0), (name, 0))
            act = self._elements((name, 0), sizes) * self.elem if t == (name, 0) else 0
            total_act += int(act)
            if layers:
                rows.append(LayerResources(name=name, kind=info.cls, width=self._width((name, 0), sizes),
                                           width_before=self._width0((name, 0)), params=params, macs=macs,
                                           activation_bytes=int(act)))
        peak, at, live_at_peak, soft = self._peak(sizes, gone)
        return Resources(params=total_params, weight_bytes=int(total_wbytes), macs=int(total_macs),
                         peak_activation_bytes=int(peak), peak_at=at, peak_tensors=live_at_peak,
                         activation_soft_peak=soft, quant_channels=int(quant_channels), layers=rows,
                         activation_bytes=int(total_act), depthwise_macs=int(total_dw))

    def _weight_bytes(self, info, ws, sizes) -> float:
        if info.cls == "BatchNormalization":
            return 0.0
        total = 0.0
        layer = info.layer
        names = [w.name.split("/")[-1].split(":")[0] for w in layer.weights] if layer is not None else []
        for k, w in enumerate(ws):
            n = int(w.size)
            nm = names[k] if k < len(names) else ""
            kind = "kernel" if ("kernel" in nm or w.ndim >= 2) else "bias"
            total += n * _bytes_per(self.quantize, kind, n)
            if self.quantize == "int8" and kind == "kernel" and w.ndim >= 2:
                ch = self._width((info.name, 0), sizes) or int(w.shape[-1])
                total += 24 * ch
        return total

    def _peak(self, sizes, gone) -> tuple[int, str, list]:
        """Largest sum of live tensor bytes over the ops, in execution order."""
        ops = [op for op in self.ops if op not in gone]
        index = {op: i for i, op in enumerate(self.ops)}
        nbytes = {}

        def size_of(t):
            if t not in nbytes:
                nbytes[t] = self._elements(t, sizes) * self.elem
            return nbytes[t]

        producers = {t: -1 for t in self.inputs}
        for op in ops:
            producers[(op, 0)] = index[op]
        best, at, live_best = 0, "", []
        totals = []
        for op in ops:
            i = index[op]
            live = [t for t, p in producers.items() if p <= i and self.last_use.get(t, p) >= i]
            total = sum(size_of(t) for t in live)
            totals.append(float(total))
            if total > best:
                best, at, live_best = total, op, [t[0] for t in live]
        soft = 0.0
        if best > 0:
            soft = float(best * np.sum((np.asarray(totals) / best) ** SOFT_P) ** (1.0 / SOFT_P))
        return int(best), at, live_best, soft


def resources_of(model, quantize: str = "int8") -> Resources:
    """Resources of a (pruned or not) Keras model, per layer."""
    from edgeprune.pipeline.prune.graph import DependencyGraph

    return ResourceModel(DependencyGraph(model), quantize).evaluate(layers=True)


class RamPredictor:
    """Predicted TFLite-Micro arena = peak activation bytes + an overhead learnt from one
    measured arena (the unpruned model's): the persistent part (per-op data, per-channel
    quantization parameters, tensor structs) and the planner's fragmentation. The margin is
    that calibration's error before it (the peak alone vs the real arena), at least 5 %."""

    MIN_MARGIN = 0.05
    PER_CHANNEL = 8  # bytes of the persistent part per output channel (measured: 7.3-8.1 B, below)

    def __init__(self):
        self.overhead: Optional[int] = None
        self.margin: Optional[float] = None

    def calibrate(self, peak: int, arena: int) -> None:
        self.overhead = int(arena) - int(peak)
        self.margin = max(self.MIN_MARGIN, abs(self.overhead) / max(int(arena), 1))

    @property
    def ready(self) -> bool:
        return self.overhead is not None

    def arena(self, peak: int) -> int:
        return int(peak) + int(self.overhead or 0)

    def overhead_of(self, channels: int, channels0: int) -> int:
        """The overhead of a variant with ``channels`` quantized output channels (the unpruned
        model's: ``channels0``): the persistent part shrinks by :data:`PER_CHANNEL` bytes per
        channel removed (the example's uniform prunes at rates 0-0.8: overhead 5,280 -> 3,072 B
        as the channels fall 362 -> 80, 7.3-8.1 B per channel)."""
        return int(self.overhead or 0) - self.PER_CHANNEL * (int(channels0) - int(channels))
