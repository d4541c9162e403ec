"""The names the command line offers as choices, each list defined once.

Light on purpose (no numpy, no TensorFlow): ``cli.py`` builds its choice enums from these at
startup. The modules that own the names use them (``QUANTIZE``, ``OBJECTIVES``, ``LATENCY_STATS``,
``METRICS``); the two registries whose modules import TensorFlow, ``pipeline.prune.criteria.CRITERIA``
and ``pipeline.prune.allocation.ALLOCATIONS``, are checked against ``CRITERIA`` and ``ALLOCATIONS``
by tests/test_house.py.
"""
from __future__ import annotations

QUANTIZE = ("int8", "float16", "float32", "dynamic")
CRITERIA = ("paoding", "l1", "random", "flow", "taylor")  # the keys of pipeline.prune.criteria.CRITERIA
ALLOCATIONS = ("uniform", "global")  # the keys of pipeline.prune.allocation.ALLOCATIONS
OBJECTIVES = ("auto", "size", "latency", "ram", "macs")  # --objective (pipeline/prune/allocation/objective.py)
LATENCY_STATS = ("p50", "p90", "p99")  # --latency-stat (pipeline/search/noise.py)
METRICS = ("auto", "top1", "binary", "relerr", "regression")  # convert --metric (pipeline/convert/fidelity.py)
