"""The pruning stage: progressive, structural, per-layer uniform.

``prune(model, rate=0.5)`` removes ``rate`` of every prunable group's channels in steps
of ``step`` (default 5 %), recomputing the criterion's scores after every step (PAODING's
schedule, with per-layer uniform allocation), and returns the physically smaller model
and its replayable :class:`~edgeprune.pipeline.prune.plan.Plan`. :class:`Pruner` exposes the
steps one by one, for the run pipeline, which converts and measures every step's
candidate.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from edgeprune.crash import stage
from edgeprune.errors import BadInput
from edgeprune.pipeline.prune.graph import DependencyGraph
from edgeprune.pipeline.prune.criteria import Context, get_criterion
from edgeprune.pipeline.prune.plan import Plan
from edgeprune.pipeline.prune.surgery import PruneState, build_model


@dataclass
class PruneConfig:
    rate: float = 0.5
    criterion: str = "paoding"
    step: float = 0.05
    round_to: int | None = None
    min_width: int = 1  # no group is pruned below this width (nor below its handlers' minimum)
    input_range: tuple[float, float] = (0.0, 1.0)
    seed: int = 0
    alpha: float = 0.5  # PAODING: weight of the L1 norm of the impact
    beta: float = 0.5  # PAODING: weight of the entropy of the impact
    # Optional final widths per producer layer (overrides ``rate`` for those layers);
    # each step moves every such layer the same fraction of the way there.
    widths: dict[str, int] | None = None
    # data-aware stages: calibration samples (never the evaluation samples), compensation
    # (ridge refit of the pruned groups' consumers, pipeline/prune/compensate.py) and allocation
    calibration: object = None
    compensate: bool = False
    ridge: float = 1e-2
    allocation: object = None  # an Allocation (pipeline/prune/allocation.py): per-group widths per rate
    augment: int = 8  # compensation fits on the calibration samples + this many shifted copies (pipeline/prune/augment.py)

    def validate(self) -> None:
        if not (0.0 <= self.rate < 1.0):
            raise BadInput(f"prune rate {self.rate} is outside [0, 1)", "e.g. --rate 0.5 removes half of each layer's channels")
        if not (0.0 < self.step <= 1.0):
            raise BadInput(f"step {self.step} must be in (0, 1]", "e.g. --step 0.05 (5% of the channels per step)")
        if self.round_to is not None and self.round_to < 1:
            raise BadInput(f"round_to {self.round_to} must be a positive integer")
        if self.min_width < 1:
            raise BadInput(f"min_width {self.min_width} must be a positive integer", "e.g. 2")
        lo, hi = self.input_range
        if not lo < hi:
            raise BadInput(f"input range {self.input_range} is empty", "give LO < HI")


@dataclass
class LayerWidth:
    layer: str
    before: int
    after: int
    coupled: list[str]
    method: str = ""


@dataclass
class PruneResult:
    model: object
    plan: Plan
    rate: float
    layers: list[LayerWidth]
    params_before: int
    params_after: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    frozen: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "rate": self.rate, "criterion": self.plan.criterion,
            "params_before": self.params_before, "params_after": self.params_after, "seconds": round(self.seconds, 3),
            "layers": [vars(l) for l in self.layers], "frozen": self.frozen, "notes": self.notes,
        }


def target_width(size: int, rate: float, round_to: int | None) -> int:
    keep = size * (1.0 - rate)
    if round_to:
        keep = max(round_to, int(round(keep / round_to)) * round_to)
        if keep > size:
            keep = size
    keep = int(round(keep)) if not round_to else keep
    return max(1, min(size, keep))


def count_params(graph: DependencyGraph, state: PruneState) -> int:
    from edgeprune.pipeline.prune.branches import removed_layers

    gone = removed_layers(state)
    return int(sum(w.size for name, ws in state.weights.items() if name not in gone for w in ws))


def trainable_param_count(model) -> int:
    return int(sum(np.prod(w.shape) for w in model.weights))


class Pruner:
    """Progressive structural pruning of one model; each :meth:`step_to` is one candidate."""

    def __init__(self, model, config: PruneConfig | None = None, *, plan: Plan | None = None):
        from edgeprune.pipeline.data.loading import check_supported

        self.config = config or PruneConfig()
        self.config.validate()
        if isinstance(self.config.allocation, str):
            from edgeprune.pipeline.prune.allocation import get_allocation

            self.config.allocation = get_allocation(self.config.allocation)
        check_supported(model)
        self.model = model
        self.graph = DependencyGraph(model)
        self.criterion = get_criterion(
            self.config.criterion, **({"alpha": self.config.alpha, "beta": self.config.beta}
                                       if self.config.criterion == "paoding" else {}))
        self.state = plan.to_state(self.graph) if plan is not None else PruneState(self.graph)
        self.rate = plan.rate if plan is not None else 0.0
        self.params_before = count_params(self.graph, PruneState(self.graph)) if plan is not None else count_params(self.graph, self.state)
        self.methods: dict[int, str] = {}
        # the allocation's rows (the global greedy's GlobalGreedy.log: one per removed chunk) made by
        # the last step_to; None: no step made here (the unpruned model, or a plan loaded)
        self.step_log: list | None = None
        self.ctx = Context(self.graph, self.state, tuple(self.config.input_range), np.random.default_rng(self.config.seed),
                           calibration=self.config.calibration, build=self.build)
        self.compensator = None
        self.augmented = False  # refits fitted on shifted copies too
        if self.config.compensate and self.config.calibration is not None:
            from edgeprune.pipeline.prune.augment import shifted_copies
            from edgeprune.pipeline.prune.compensate import Compensator

            # refits fitted on the calibration samples + shifted copies (bench/results/allocation.md)
            cal = self.config.calibration
            if len(cal) >= Compensator.max_samples(self.graph):  # the refit's memory cap leaves no room for copies
                fit = cal
            else:
                fit = shifted_copies(cal, self.config.augment)
            self.compensator = Compensator(self.graph, fit, self.config.ridge)
            del fit
            self.augmented = len(self.compensator.x) > len(cal)  # (what the refits are really fitted on)

    @property
    def groups(self):
        return self.graph.prunable_groups

    def _target(self, g, rate: float) -> int:
        """Never zero, never below the group's minimum width (the config's and its handlers')."""
        floor = min(g.size, max(self.config.min_width, g.min_width))
        if self.config.allocation is not None:
            w = self.config.allocation.width(g, rate)
            if w is not None:
                return max(floor, w)
        return max(floor, self._raw_target(g, rate))

    def _raw_target(self, g, rate: float) -> int:
        widths = self.config.widths or {}
        final = next((widths[p] for p in g.producers if p in widths), None)
        if final is None:
            return target_width(g.size, rate, self.config.round_to)
        final = max(1, min(g.size, int(final)))
        frac = 1.0 if self.config.rate <= 0 else min(1.0, rate / self.config.rate)
        return max(final, g.size - int(round((g.size - final) * frac)))

    @stage("prune")
    def step_to(self, rate: float) -> None:
        """Prune every prunable group down to ``target_width(size, rate)`` in one step (or let
        the allocation strategy do the step, e.g. the global greedy)."""
        from edgeprune.pipeline.data.batching import release_free_memory

        release_free_memory()  # (what the last candidate's conversion and step freed)
        self.ctx.state = self.state
        log = getattr(self.config.allocation, "log", None)
        n0 = len(log) if isinstance(log, list) else None
        self.step_log = None
        if self.config.allocation is not None and self.config.allocation.step(self, rate):
            self.rate = rate
            if n0 is not None:
                self.step_log = [dict(row) for row in log[n0:]]
            return
        self.criterion.begin_step(self.ctx)
        # downstream groups first: an upstream removal then never invalidates the input
        # bounds a downstream group's criterion uses within the same step
        order = sorted(self.groups, key=lambda g: self.graph.order.index(g.producers[0]), reverse=True)
        for g in order:
            target = self._target(g, rate)
            n_remove = self.state.sizes[g.id] - target
            if n_remove <= 0:
                continue
            sel = self.criterion.select(self.ctx, g, n_remove)
            for removed, into, scale in sel.merges:
                self.state.merge(g.id, removed, into, scale)
            self.state.remove(g.id, sel.remove)
            self.methods[g.id] = sel.method
        if self.compensator is not None and rate > 0:
            self.compensator.refit(self.state, self.build)
        self.rate = rate

    def schedule(self, rate: float, step: float | None = None) -> list[float]:
        step = step or self.config.step
        n = max(1, math.ceil(round((rate - self.rate) / step, 9)))
        return [min(rate, self.rate + step * (k + 1)) for k in range(n)] if rate > self.rate else []

    def steps(self, rate: float) -> Iterator[float]:
        for r in self.schedule(rate):
            self.step_to(r)
            yield r

    def plan(self) -> Plan:
        alloc = self.config.allocation
        return Plan.from_state(self.state, model=self.model.name, criterion=self.criterion.name, rate=self.rate,
                               allocation=getattr(alloc, "name", "") if alloc is not None else "",
                               params_before=self.params_before, params_after=count_params(self.graph, self.state),
                               compensation=(f"ridge least squares, ridge={self.config.ridge:g}"
                                             + (f", calibration + {self.config.augment} shifted copies"
                                                if self.augmented else "")) if self.compensator else "")

    def build(self):
        return build_model(self.graph, self.state)

    def current_model(self):
        """The Keras model of the current state: the one the allocation ended its last step with
        (the global greedy builds it after its last chunk and refits it in place) when it still
        holds exactly the state's weights (checked array by array), else a new :meth:`build`.
        The model is the allocation's: its next step changes its weights in place, so a caller
        must be done with it (or copy it) before the next :meth:`step_to`."""
        alloc = self.config.allocation
        model = alloc.last_model(self) if hasattr(alloc, "last_model") else None
        return model if model is not None else self.build()

    def layer_widths(self) -> list[LayerWidth]:
        rows = []
        for g in self.graph.groups.values():
            if not g.producers:
                continue
            rows.append(LayerWidth(g.producers[0], g.size, self.state.sizes[g.id], g.producers[1:],
                                   self.methods.get(g.id, "frozen: " + "; ".join(g.frozen_reasons) if g.frozen else "")))
        return rows

    def frozen(self) -> list[dict]:
        return [{"layer": g.name, "size": g.size, "reasons": g.frozen_reasons}
                for g in self.graph.groups.values() if g.producers and g.frozen]


def prune(model, rate: float = 0.5, criterion: str = "paoding", **options) -> PruneResult:
    """Prune ``model`` structurally to ``rate`` of each prunable layer's channels; ``options``:
    the other fields of :class:`PruneConfig` (step, round_to, input_range, seed, alpha, beta,
    widths, calibration, compensate, ridge, allocation, min_width), keyword only.

    Returns a :class:`PruneResult` with the smaller Keras model and the plan (``.save()``
    to JSON, ``Plan.load(path).apply(original)`` to replay)."""
    t0 = time.perf_counter()
    if "input_range" in options:
        options["input_range"] = tuple(options["input_range"])
    config = PruneConfig(rate=rate, criterion=criterion, **options)
    widths = config.widths
    if widths:
        unknown = sorted(set(widths) - {p for g in DependencyGraph(model).groups.values() for p in g.producers})
        if unknown:
            raise BadInput(f"widths name unknown layers {unknown}", "use the producer layer names of the model")
    pruner = Pruner(model, config)
    for _ in pruner.steps(rate):
        pass
    pruned = pruner.build()
    plan = pruner.plan()
    notes = pruner.graph.frozen_notes()
    if not pruner.groups:
        notes.append(pruner.graph.nothing_prunable_note())
    return PruneResult(model=pruned, plan=plan, rate=rate, layers=pruner.layer_widths(),
                       params_before=plan.params_before, params_after=trainable_param_count(pruned),
                       seconds=time.perf_counter() - t0, notes=notes, frozen=pruner.frozen())


@dataclass
class Candidate:
    """One progressive step's result: the model, its widths and parameter count."""

    index: int
    rate: float
    model: object
    plan: Plan
    layers: list[LayerWidth]
    params: int
    seconds: float  # pruning time of this step (scores, selection, surgery and rebuild)


def progressive(model, config: PruneConfig | None = None) -> Iterator[Candidate]:
    """Yield one :class:`Candidate` per step, from ``config.step`` up to ``config.rate``;
    each step builds on the previous one and the criterion's scores are recomputed."""
    pruner = Pruner(model, config or PruneConfig())
    for index, rate in enumerate(pruner.schedule(pruner.config.rate), start=1):
        t0 = time.perf_counter()
        pruner.step_to(rate)
        built = pruner.build()
        yield Candidate(index=index, rate=rate, model=built, plan=pruner.plan(), layers=pruner.layer_widths(),
                        params=trainable_param_count(built), seconds=time.perf_counter() - t0)
