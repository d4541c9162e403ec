"""``random``: the seeded baseline."""
from __future__ import annotations

from edgeprune.pipeline.prune.criteria.base import Importance


class Random(Importance):
    name = "random"

    def scores(self, ctx, group):
        return ctx.rng.random(ctx.state.sizes[group.id])
