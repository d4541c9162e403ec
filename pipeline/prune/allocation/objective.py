"""What the global allocation pays for: ``--objective auto|size|latency|ram|macs``.

The global greedy removes, chunk by chunk, the channels whose removal costs the least output
loss per unit of the objective's resource saved, and the prune rate is the fraction of that
resource removed:

- ``size``: the prunable parameters (today's behaviour, exactly: the greedy's own code path);
- ``ram``: the predicted peak activation memory (live tensors of the converted graph in
  execution order, :mod:`edgeprune.pipeline.search.resources`: what a TFLite-Micro arena holds);
- ``macs``: multiply-accumulates of one inference;
- ``latency``: the predicted latency of the board (its latency model,
  :mod:`edgeprune.pipeline.search.latency_model`; on a microcontroller the MAC-based estimate, which
  ranks chunks exactly as ``macs``);
- ``auto``: the budgets the UNPRUNED model is predicted to miss, each weighted by how far it
  misses (``log(predicted / budget)``), plus the file (the prunable parameters) weighted as
  the mean of those: the search's answer is the largest rate within the fidelity threshold,
  and an allocation that paid only for, say, the arena would leave the Dense layers (the file)
  whole at that rate. The rate measures the weighted fraction of those resources removed;
  when the unpruned model is predicted to miss no budget (or only flash), ``size`` exactly.

``auto`` is constraint-driven: a missed budget drives the cost only until its resource is
predicted to meet the budget (its *target*: RAM, the budget less the runtime RAM, less
:data:`TARGET_MARGIN`, against the predicted TFLite-Micro arena: the peak activation memory
plus the overhead measured on the unpruned model, 8 B less per output channel removed;
latency, the budget less the margin). The value the rate measures is the weighted fraction of
the resources with each missed resource's fraction clipped at its target, and a chunk's
saving is the (smooth) value it removes: while a budget is missed, the weighted fraction of
that resource and of the parameters; once every target is met, the parameters only (the
search keeps shrinking the file at the fidelity it can still afford). Without a target for
every missed budget (the RAM overhead not measured: ``--no-predict``, float models) nothing is
clipped: the weighted sum of before. The target exists once the run has calibrated its RAM predictor on
candidate 0 (serially, before any pruning step; KNOWN GAP: an explicit ``--jobs N`` > 1 prunes
the first candidates ahead before candidate 0 is converted, so those steps rank without the
target and the widths can differ from ``--jobs 1``; not fixed, not measured).

For the explicit objectives (``ram``, ``macs``, ``latency``), a chunk's saving is the weighted fraction of the objective's
resources it removes plus :data:`TIE` times the fraction of the prunable parameters it
removes: chunks that do not touch the binding resource (e.g. a Dense layer under a RAM
objective) still shrink the file when their loss is small enough, but a chunk that removes
none of the binding resource is never what reaches the rate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from edgeprune.errors import BadInput

from edgeprune.pipeline.search.run_config import OBJECTIVES  # noqa: E402  (one list, checked before TensorFlow starts)
TARGET_MARGIN = 0.02  # auto aims this fraction under a budget (the channel-aware arena prediction's error: <= 0.6 % on the example's uniform prunes, 3 % in tests/test_resources.py)
TIE = 1.0  # weight of the parameters saved in a chunk's saving, relative to the objective's resources

RESOURCE_LABEL = {
    "size": "prunable parameters",
    "ram": "predicted peak activation memory (the TFLite-Micro arena's live tensors)",
    "macs": "MACs (multiply-accumulates of one inference)",
    "latency": "predicted latency",
}


def check_objective(name: Optional[str]) -> str:
    name = "auto" if name is None else str(name)
    if name not in OBJECTIVES:
        raise BadInput(f"unknown --objective {name!r}", f"use one of: {', '.join(OBJECTIVES)}")
    return name


@dataclass
class Objective:
    """A weighted set of resources (weights sum to 1); ``size`` alone is today's allocation."""

    name: str  # the resolved objective: size, ram, macs, latency, or "auto" (several)
    weights: dict = field(default_factory=lambda: {"size": 1.0})
    requested: str = "size"  # what the user asked for (auto, size, ...)
    reason: str = ""
    quantize: str = "int8"
    latency: object = None  # a LatencyModel (pipeline/search/latency_model.py) for the latency resource
    tie_weight: Optional[float] = None  # None: TIE
    missed: dict = field(default_factory=dict)  # auto: resource -> {"predicted", "budget", "weight"}
    # auto (constraint-driven): the arena bytes the RAM budget leaves (budget - runtime RAM), the
    # latency budget (ms), and the object whose ``ram_predictor`` (the run's, calibrated on the
    # unpruned model's measured arena) gives the TFLite-Micro overhead
    ram_arena_budget: Optional[int] = None
    latency_budget: Optional[float] = None
    ram_source: object = None

    @property
    def switching(self) -> bool:
        """auto with a target for every missed budget: each stops driving the cost once met.
        Without all targets (the RAM overhead not measured), the weighted sum of before."""
        if self.requested != "auto" or self.is_size:
            return False
        return all(self._target(r) is not None for r in self.weights if r != "size")

    def target(self, resource: str) -> Optional[float]:
        """The figure (:meth:`auto_figure`'s unit: RAM, the predicted TFLite-Micro arena; latency,
        ms) at which ``resource`` is predicted to meet its budget, with :data:`TARGET_MARGIN`;
        None when the objective is not switching."""
        return self._target(resource) if self.switching else None

    def _target(self, resource: str) -> Optional[float]:
        if resource not in self.missed:
            return None
        if resource == "ram" and self.ram_arena_budget is not None:
            rp = getattr(self.ram_source, "ram_predictor", None)
            if rp is None or not rp.ready:
                return None
            return self.ram_arena_budget * (1 - TARGET_MARGIN)
        if resource == "latency" and self.latency_budget is not None and self.latency is not None:
            return self.latency_budget * (1 - TARGET_MARGIN)
        return None

    def auto_figure(self, res, res0, r: str, smooth: bool = False) -> float:
        """:meth:`figure`, with RAM as the predicted TFLite-Micro arena (the peak activation
        memory plus the overhead measured on the unpruned model, shrinking with the channels)
        when the objective is switching."""
        f = self.figure(res, r, smooth)
        if r == "ram" and self.switching:
            f += self.ram_source.ram_predictor.overhead_of(res.quant_channels, res0.quant_channels)
        return f

    def unmet(self, res, res0=None) -> list:
        """The missed resources ``res`` does not yet meet (auto); every weighted one but size otherwise."""
        out = []
        for r in self.weights:
            if r == "size":
                continue
            t = self.target(r)
            if t is None or self.auto_figure(res, res0, r) > t:
                out.append(r)
        return out

    def driving_gain(self, res, trial, res0) -> float:
        """What a chunk from ``res`` to ``trial`` saves, as the greedy divides its loss by: the
        (smooth) value it removes; with auto switching, each met resource's fraction is clipped
        at its target, so once every target is met only the parameters count."""
        return self.value(res, res0, smooth=True) - self.value(trial, res0, smooth=True)

    def _frac(self, res, res0, r: str, smooth: bool) -> float:
        t = self.target(r)
        if t is None:
            base = self.figure(res0, r, smooth)
            return self.figure(res, r, smooth) / base if base > 0 else 0.0
        base = self.auto_figure(res0, res0, r, smooth)
        f = self.auto_figure(res, res0, r, smooth) / base if base > 0 else 0.0
        real0 = self.auto_figure(res0, res0, r)
        tf = t / real0 if real0 > 0 else 0.0
        if self.auto_figure(res, res0, r) <= t:  # met: removing more of it is not counted
            return tf
        return max(f, tf)

    @property
    def is_size(self) -> bool:
        return set(self.weights) == {"size"}

    @property
    def rate_measures(self) -> str:
        if self.is_size:
            return "fraction of the prunable parameters removed"
        if len(self.weights) == 1:
            (r,) = self.weights
            return f"fraction of the {RESOURCE_LABEL[r]} removed"
        labels = dict(RESOURCE_LABEL)
        if self.requested == "auto":  # switching: the RAM term is the predicted arena once it is calibrated
            labels["ram"] = ("predicted RAM (peak activation memory + the TFLite-Micro overhead measured on the "
                             "unpruned model)")
        parts = ", ".join(f"{labels[r]} x {w:.2f}" for r, w in self.weights.items())
        out = f"weighted fraction removed of: {parts}"
        if self.requested == "auto":
            out += ("; a missed budget's resource counts until it is predicted to meet the budget, "
                    "then the parameters drive the allocation")
        return out

    @property
    def resource(self) -> str:
        """Short name of the resource the rate measures (for the screen)."""
        if self.is_size:
            return "params"
        return "+".join(self.weights)

    @property
    def tie(self) -> float:  # noqa: F811 - auto already counts the parameters in its weights
        if "size" in self.weights:
            return 0.0
        return TIE if self.tie_weight is None else float(self.tie_weight)

    def figure(self, res, resource: str, smooth: bool = False) -> float:
        if resource == "latency":
            if self.latency is None:
                return float(res.macs)
            return float(self.latency.predict(res))
        if resource == "size":
            return float(res.params)
        return res.get(resource, smooth)

    def value(self, res, res0, smooth: bool = False) -> float:
        """The weighted fraction of the original resources ``res`` still uses (1 at rate 0).
        ``smooth``: the peak activation memory as a smooth peak (an L_p norm of every op's live
        bytes), so that narrowing one of two tensors that tie for the peak counts as progress;
        the rate is always measured on the real peak."""
        return sum(w * self._frac(res, res0, r, smooth) for r, w in self.weights.items())

    def to_dict(self) -> dict:
        return {"requested": self.requested, "name": self.name, "weights": dict(self.weights),
                "rate_measures": self.rate_measures, "resource": self.resource, "reason": self.reason,
                "tie_params_weight": None if self.is_size else self.tie,
                "missed": self.missed or None,
                "targets": ({r: self.target(r) for r in self.missed if r != "size"} or None) if self.switching else None,
                "latency_model": self.latency.describe() if self.latency is not None and "latency" in self.weights else None}


def resolve(requested: str, *, res0=None, predicted: Optional[dict] = None, budgets: Optional[dict] = None,
            quantize: str = "int8", latency=None, ram_source=None) -> Objective:
    """The objective for ``requested``. ``predicted``: resource -> the unpruned model's predicted
    figure in the budget's unit (``flash``, ``ram``, ``latency``), None when it cannot be predicted;
    ``budgets``: the same keys -> the budget (None: no limit). ``ram_source``: an object whose
    ``ram_predictor`` (once calibrated) gives the TFLite-Micro overhead of auto's RAM target;
    the predicted ``ram`` is the peak activation memory of ``res0`` plus the runtime RAM."""
    requested = check_objective(requested)
    if requested == "size":
        return Objective("size", {"size": 1.0}, requested, "--objective size", quantize)
    if requested in ("ram", "macs", "latency"):
        return Objective(requested, {requested: 1.0}, requested, f"--objective {requested}", quantize, latency)
    predicted, budgets = predicted or {}, budgets or {}
    missed, unpredicted = {}, []
    for key, resource in (("flash", "size"), ("ram", "ram"), ("latency", "latency")):
        p, b = predicted.get(key), budgets.get(key)
        if p is None and b is not None:
            unpredicted.append(key)
        if p is None or b is None or b <= 0 or p <= b:
            continue
        missed[resource] = {"predicted": p, "budget": b, "weight": math.log(p / b)}
    if not missed or set(missed) == {"size"}:
        why = ("the unpruned model is predicted to meet every budget" if not missed
               else "only the flash budget is predicted to be missed")
        if unpredicted:
            why += f" (the {' and '.join(unpredicted)} budget cannot be predicted here: not counted)"
        return Objective("size", {"size": 1.0}, "auto", f"auto: {why}: size (the prunable parameters)", quantize,
                         missed=missed)
    raw = {r: m["weight"] for r, m in missed.items()}
    if "size" not in raw:  # the file always counts (see the module docstring)
        raw["size"] = sum(raw.values()) / len(raw)
    total = sum(raw.values())
    weights = {r: w / total for r, w in raw.items()}
    for r in missed:
        missed[r]["weight"] = round(weights[r], 4)
    name = "auto"
    why = "; ".join(f"{r} predicted {m['predicted']:.4g} over the {m['budget']:.4g} budget" for r, m in missed.items())
    obj = Objective(name, weights, "auto", f"auto: {why}", quantize, latency, missed=missed, ram_source=ram_source)
    if "ram" in missed and res0 is not None:
        runtime = predicted["ram"] - int(res0.peak_activation_bytes)
        obj.ram_arena_budget = int(budgets["ram"]) - runtime
    if "latency" in missed:
        obj.latency_budget = float(budgets["latency"])
    return obj
