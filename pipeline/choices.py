"""The names the command line offers as choices, each list defined once.

Light on purpose (no numpy, no TensorFlow): ``cli.py`` builds its choice enums from these at
startup. The modules that own the names use them (``QUANTIZE``, ``OBJECTIVES``, ``LATENCY_STATS``,
``METRICS``); the two registries whose modules import TensorFlow, ``pipeline.criteria.CRITERIA``
and ``pipeline.allocation.ALLOCATIONS``, are checked against ``CRITERIA`` and ``ALLOCATIONS``
by tests/test_house.py.
"""
from __future__ import annotations

QUANTIZE = ("int8", "float16", "float32", "dynamic")
CRITERIA = ("paoding", "l1", "random", "flow", "taylor")  # the keys of pipeline.criteria.CRITERIA
ALLOCATIONS = ("uniform", "global")  # the keys of pipeline.allocation.ALLOCATIONS
OBJECTIVES = ("auto", "size", "latency", "ram", "macs")  # --objective (pipeline/allocation/objective.py)
LATENCY_STATS = ("p50", "p90", "p99")  # --latency-stat (pipeline/noise.py)
METRICS = ("auto", "top1", "binary", "relerr", "regression")  # convert --metric (pipeline/fidelity.py)
