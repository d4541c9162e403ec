"""Allocation strategies: how many channels each prunable group keeps at a prune rate.

An allocation is one module here plus one line in :data:`ALLOCATIONS`:

- ``uniform``: every group loses the same fraction of its channels (the rate), PAODING's
  per-layer schedule; the rate is the fraction of each group's channels removed;
- ``global``: a sensitivity-guided greedy on the calibration samples that removes, chunk by
  chunk, the group's channels that cost the least fidelity per parameter saved; the rate is
  the fraction of the prunable parameters removed.
"""
from __future__ import annotations

from edgeprune.errors import BadInput
from edgeprune.pipeline.prune.allocation.base import Allocation, prunable_params, removed_params  # noqa: F401
from edgeprune.pipeline.prune.allocation.greedy import GlobalGreedy
from edgeprune.pipeline.prune.allocation.uniform import Uniform

ALLOCATIONS = {"uniform": Uniform, "global": GlobalGreedy}


def get_allocation(name: "str | Allocation | None", **kwargs) -> Allocation:
    if name is None:
        return Uniform()
    if isinstance(name, Allocation):
        return name
    try:
        return ALLOCATIONS[name](**kwargs)
    except KeyError:
        raise BadInput(f"unknown allocation {name!r}", f"use one of: {', '.join(ALLOCATIONS)}") from None
