"""Kept for imports: the criteria now live one per module in :mod:`edgeprune.pipeline.prune.criteria`."""
from edgeprune.pipeline.prune.criteria import CRITERIA, DATA_AWARE, get_criterion  # noqa: F401
from edgeprune.pipeline.prune.criteria.base import Context, Importance, Selection  # noqa: F401
from edgeprune.pipeline.prune.criteria.flow import Flow  # noqa: F401
from edgeprune.pipeline.prune.criteria.l1 import L1  # noqa: F401
from edgeprune.pipeline.prune.criteria.paoding import HOMOGENEOUS, DenseChain, Paoding, dense_chain  # noqa: F401
from edgeprune.pipeline.prune.criteria.rand import Random  # noqa: F401
from edgeprune.pipeline.prune.criteria.taylor import Taylor  # noqa: F401
