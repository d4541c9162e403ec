"""Kept for imports: the criteria now live one per module in :mod:`edgeprune.pipeline.criteria`."""
from edgeprune.pipeline.criteria import CRITERIA, DATA_AWARE, get_criterion  # noqa: F401
from edgeprune.pipeline.criteria.base import Context, Importance, Selection  # noqa: F401
from edgeprune.pipeline.criteria.flow import Flow  # noqa: F401
from edgeprune.pipeline.criteria.l1 import L1  # noqa: F401
from edgeprune.pipeline.criteria.paoding import HOMOGENEOUS, DenseChain, Paoding, dense_chain  # noqa: F401
from edgeprune.pipeline.criteria.rand import Random  # noqa: F401
from edgeprune.pipeline.criteria.taylor import Taylor  # noqa: F401
