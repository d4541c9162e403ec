"""The interface of an allocation strategy, and the parameter accounting they share.

A strategy is called by :meth:`edgeprune.pipeline.prune.pruner.Pruner.step_to` once per progressive
step: either it answers per group (``width(group, rate)``, the pruner then asks the criterion
which channels to remove) or it performs the whole step itself (``step(pruner, rate)``, for
strategies that decide widths jointly, like the global greedy).
"""
from __future__ import annotations

import numpy as np


class Allocation:
    name = "base"
    label = ""  # how widths are chosen, for the report's made_by.allocation
    rate_unit = "channels"  # what the rate is a fraction of: "channels" (per group) or "params"

    def width(self, group, rate: float) -> int | None:
        """The group's width at ``rate`` (None: the pruner's default uniform width)."""
        return None

    def step(self, pruner, rate: float) -> bool:
        """Perform the step to ``rate`` on ``pruner``; False: not handled (use :meth:`width`)."""
        return False

    def last_model(self, pruner):
        """The Keras model of the pruner's state kept from the last step (None: none kept)."""
        return None


def _weight_groups(graph) -> dict[tuple[str, int], set[int]]:
    """(layer, weight index) -> the groups that index it."""
    out: dict[tuple[str, int], set[int]] = {}
    for gid, g in graph.groups.items():
        for ref in g.refs:
            out.setdefault((ref.layer, ref.weight), set()).add(gid)
    return out


def prunable_params(graph, state) -> int:
    """Parameters of ``state`` held in weights that a prunable group indexes: what pruning can
    shrink (the rest, e.g. the classifier's bias, stays whatever the widths)."""
    from edgeprune.pipeline.prune.branches import removed_layers

    prunable = {g.id for g in graph.prunable_groups}
    gone = removed_layers(state)
    total = 0
    for (layer, w), gids in _weight_groups(graph).items():
        if gids & prunable and layer not in gone:
            total += int(state.weights[layer][w].size)
    return total


def removed_params(graph, state, original_prunable: int) -> float:
    """Fraction of the original prunable parameters that ``state`` has removed."""
    if original_prunable <= 0:
        return 0.0
    return 1.0 - prunable_params(graph, state) / original_prunable


def set_refit(trial, name: str, new) -> None:
    """A trial state takes a consumer's refitted kernel (and bias) and records it as refitted."""
    trial.weights[name][0] = new[0]
    if len(new) > 1:
        trial.weights[name][1] = new[1]
    if getattr(trial, "refitted", None) is None:
        trial.refitted = set()
    trial.refitted.add(name)


def min_width(size: int, min_keep: float) -> int:
    """Never zero: at least one channel, and at least ``min_keep`` of the original width."""
    return int(max(1, int(np.ceil(min_keep * size - 1e-9))))


def narrowest(g, min_keep: float, config) -> int:
    """The narrowest group ``g`` may become: ``min_keep`` of its width, --min-width, its handlers'
    minimum, rounded up to a multiple of --round-to (at least one multiple)."""
    round_to = int(config.round_to or 1)
    floor = min(g.size, max(min_width(g.size, min_keep), config.min_width, g.min_width))
    if round_to > 1:
        floor = max(round_to, -(-floor // round_to) * round_to)
    return floor


def removal(state, g, sel):
    """A copy of ``state`` with the criterion's selection ``sel`` on group ``g`` applied: its
    merges first (exact), then its removals."""
    trial = state.copy()
    for removed, into, scale in sel.merges:
        trial.merge(g.id, removed, into, scale)
    trial.remove(g.id, sel.remove)
    return trial
