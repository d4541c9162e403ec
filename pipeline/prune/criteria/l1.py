"""``l1``: magnitude baseline, the L1 norm of each channel's incoming weights (summed over the
group's producers, each normalised by its mean)."""
from __future__ import annotations

from edgeprune.pipeline.prune.criteria.base import Importance, _channel_l1


class L1(Importance):
    name = "l1"

    def scores(self, ctx, group):
        return _channel_l1(ctx, group, fold_bn=False)
