"""``uniform``: every prunable group keeps ``1 - rate`` of its channels (per-layer uniform
steps; the pruner's default ``target_width`` with ``round_to``/``widths`` honoured)."""
from __future__ import annotations

from edgeprune.pipeline.prune.allocation.base import Allocation


class Uniform(Allocation):
    name = "uniform"
    label = "uniform per-layer steps"
    rate_unit = "channels"
