"""Importance criteria, one module each, registered by name.

A criterion is an :class:`~edgeprune.pipeline.prune.criteria.base.Importance`: ``begin_step`` once
per progressive step, then ``select`` (or ``scores``) per group. A new criterion is a new
module here plus one line in :data:`CRITERIA`.

- ``paoding`` (data-free, the default without data), ``l1``, ``random``: weight-only;
- ``flow`` (one forward pass) and ``taylor`` (one backward pass): data-aware, they read the
  calibration samples (or synthetic inputs in the input range when there is no data).
"""
from __future__ import annotations

from edgeprune.errors import BadInput
from edgeprune.pipeline.prune.criteria.base import Context, Importance, Selection  # noqa: F401
from edgeprune.pipeline.prune.criteria.flow import Flow
from edgeprune.pipeline.prune.criteria.l1 import L1
from edgeprune.pipeline.prune.criteria.paoding import Paoding
from edgeprune.pipeline.prune.criteria.rand import Random
from edgeprune.pipeline.prune.criteria.taylor import Taylor

CRITERIA = {"paoding": Paoding, "l1": L1, "random": Random, "flow": Flow, "taylor": Taylor}
DATA_AWARE = {"flow", "taylor"}


def get_criterion(name: str | Importance, **kwargs) -> Importance:
    if isinstance(name, Importance):
        return name
    try:
        return CRITERIA[name](**kwargs)
    except KeyError:
        raise BadInput(f"unknown criterion {name!r}", f"use one of: {', '.join(CRITERIA)}") from None
