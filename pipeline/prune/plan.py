"""A serialisable pruning plan: producer layer -> kept channel indices, plus merges.

The plan is what surgery replays: ``Plan.apply(original_model)`` applies the recorded
merges in order (original channel indices) and then keeps ``layers[name]`` of every
producer's output channels. It is JSON, stable, and independent of the criterion that
made it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeprune.errors import BadInput
from edgeprune.pipeline.atomic import write_json_atomic  # noqa: F401  (plan.save and older imports)

FORMAT = "edgeprune-plan/1"


@dataclass
class Plan:
    layers: dict[str, list[int]]
    merges: list[dict] = field(default_factory=list)
    widths: dict[str, list[int]] = field(default_factory=dict)  # layer -> [before, after]
    model: str = ""
    criterion: str = ""
    rate: float = 0.0
    params_before: int = 0
    params_after: int = 0
    # compensation: layer -> {weight index: encoded float32 array}, the refitted weights at
    # the pruned widths (pipeline/prune/compensate.py); replayed after the removals
    refits: dict = field(default_factory=dict)
    compensation: str = ""
    allocation: str = ""  # how the widths were chosen ("uniform", "global"); "" = uniform
    branches: list = field(default_factory=list)  # removed residual branches: [add layer, input index]
    # recovery training (pipeline/prune/recover.py): {"file": "<name>.trained.bin", "sha256": ..., ...}; the
    # file (next to the plan) holds every weight of the pruned model after training, applied by apply()
    trained: dict = field(default_factory=dict)
    folder: Path | None = field(default=None, repr=False, compare=False)  # where load() read the plan

    @classmethod
    def from_state(cls, state, *, model: str = "", criterion: str = "", rate: float = 0.0,
                   params_before: int = 0, params_after: int = 0, compensation: str = "",
                   allocation: str = "") -> "Plan":
        from edgeprune.pipeline.prune.compensate import refits_of

        layers, widths = {}, {}
        for gid, g in state.graph.groups.items():
            for p in g.producers:
                layers[p] = [int(i) for i in state.kept[gid]]
                widths[p] = [g.size, int(state.sizes[gid])]
        return cls(layers=layers, merges=[m.to_dict() for m in state.merges], widths=widths, model=model,
                   criterion=criterion, rate=float(rate), params_before=params_before, params_after=params_after,
                   refits=refits_of(state), compensation=compensation, allocation=allocation,
                   branches=[[a, int(i)] for a, i in (getattr(state, "branches", None) or [])])

    def to_dict(self) -> dict:
        return {"format": FORMAT, "model": self.model, "criterion": self.criterion, "rate": self.rate,
                "params_before": self.params_before, "params_after": self.params_after,
                "widths": self.widths, "layers": self.layers, "merges": self.merges,
                **({"allocation": self.allocation} if self.allocation else {}),
                **({"branches": self.branches} if self.branches else {}),
                **({"compensation": self.compensation, "refits": self.refits} if self.refits else {}),
                **({"trained": self.trained} if self.trained else {})}

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        if d.get("format") != FORMAT:
            raise BadInput(f"not an edgeprune plan (format {d.get('format')!r}, expected {FORMAT!r})")
        return cls(layers={k: list(map(int, v)) for k, v in d["layers"].items()}, merges=list(d.get("merges", [])),
                   widths=d.get("widths", {}), model=d.get("model", ""), criterion=d.get("criterion", ""),
                   rate=float(d.get("rate", 0.0)), params_before=int(d.get("params_before", 0)),
                   params_after=int(d.get("params_after", 0)), refits=dict(d.get("refits") or {}),
                   compensation=d.get("compensation", ""), allocation=d.get("allocation", ""),
                   branches=[list(b) for b in d.get("branches", [])], trained=dict(d.get("trained") or {}))

    def save(self, path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path) -> "Plan":
        try:
            plan = cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError) as exc:
            raise BadInput(f"cannot read plan {path}: {exc}") from None
        plan.folder = Path(path).parent
        return plan

    def to_state(self, graph):
        """Replay on the ORIGINAL model's graph: merges in order, then the kept indices."""
        from edgeprune.pipeline.prune.surgery import PruneState

        state = PruneState(graph)
        for m in self.merges:
            gid = graph.group_of_producer.get(m["layer"])
            if gid is None:
                raise BadInput(f"plan merges into layer {m['layer']!r}, which is not a producer of this model")
            state.merge(gid, int(m["removed"]), int(m["into"]), float(m.get("scale", 1.0)))
        done = set()
        for layer, kept in self.layers.items():
            gid = graph.group_of_producer.get(layer)
            if gid is None:
                raise BadInput(f"plan names layer {layer!r}, which is not a prunable producer of this model",
                               "replay a plan on the model it was made for")
            kept = np.asarray(kept, dtype=np.int64)
            if gid in done:
                if not np.array_equal(state.kept[gid], kept):
                    raise BadInput(f"plan keeps different channels for coupled layers of group {layer!r}")
                continue
            size = graph.groups[gid].size
            if kept.size == 0 or kept.max(initial=-1) >= size or np.unique(kept).size != kept.size:
                raise BadInput(f"plan for layer {layer!r}: kept indices must be distinct, within 0..{size - 1}, non-empty")
            if kept.size < size:
                if graph.groups[gid].frozen:
                    raise BadInput(f"plan prunes layer {layer!r}, whose channels are frozen")
                state.remove(gid, np.setdiff1d(np.arange(size), kept))
            done.add(gid)
        if self.branches:
            from edgeprune.pipeline.prune.branches import find_branches, remove_branch

            by_key = {b.key: b for b in find_branches(graph)}
            for add, i in self.branches:
                if (add, int(i)) not in by_key:
                    raise BadInput(f"plan removes input {i} of {add!r}, which is not a removable residual branch "
                                   "of this model", "replay a plan on the model it was made for")
                remove_branch(state, by_key[(add, int(i))])
        if self.refits:
            from edgeprune.pipeline.prune.compensate import decode

            for name, ws in self.refits.items():
                if name not in state.weights:
                    raise BadInput(f"plan refits layer {name!r}, which is not in this model")
                for i, enc in ws.items():
                    w = decode(enc)
                    if int(i) >= len(state.weights[name]) or state.weights[name][int(i)].shape != w.shape:
                        raise BadInput(f"plan refit of layer {name!r} weight {i} has shape {tuple(w.shape)}, "
                                       "which does not match the pruned model", "replay a plan on the model it was made for")
                    state.weights[name][int(i)] = w
            state.refitted = set(self.refits)
        return state

    def apply(self, model, folder=None):
        """The pruned model; with ``trained`` (recovery training) its weights are the trained ones,
        read from the file the plan names (in ``folder``, default the plan's own folder) and checked
        against the recorded sha256. The pruning state (``to_state``) never includes them: pruning
        continues from the untrained, compensated state."""
        from edgeprune.pipeline.prune.graph import DependencyGraph
        from edgeprune.pipeline.prune.surgery import build_model

        graph = DependencyGraph(model)
        built = build_model(graph, self.to_state(graph))
        if self.trained:
            self.apply_trained(built, folder)
        return built

    def trained_bytes(self, folder=None) -> bytes:
        import hashlib

        base = Path(folder) if folder is not None else (self.folder or Path("."))
        path = base / self.trained["file"]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BadInput(f"plan names trained weights {path}, which cannot be read: {exc.strerror or exc}",
                           "keep the .trained.bin next to its .plan.json (or pass its folder)") from None
        if hashlib.sha256(data).hexdigest() != self.trained.get("sha256"):
            raise BadInput(f"trained weights {path} do not match the sha256 the plan recorded",
                           "the file was changed or belongs to another plan: use the run directory's files as written")
        return data

    def apply_trained(self, built, folder=None) -> None:
        from edgeprune.pipeline.prune.recover import set_weights_bytes

        set_weights_bytes(built, self.trained_bytes(folder), what=f"trained weights {self.trained['file']}")


