"""Noise-aware latency decisions for ``edgeprune run``.

The latency budget is checked on one stated statistic of the timed runs (``p50`` by default,
``--latency-stat p90`` or ``p99``). A measurement has a spread: its interquartile range (IQR,
p75 - p25). When the budget lies within half an IQR of the statistic (the *noise band*), one
measurement cannot say which side of the budget the model is on: the candidate is measured
once more (a fresh measurement, not the cache) and decided on the second one. If the budget
still lies in the second measurement's band, the verdict is ``within noise``: the candidate is
not taken as meeting the budget (the answer must clearly meet it), and the search goes on to
the next smaller rate, as after any near miss.

A board that was busy before measuring (1-minute load average per CPU above the profile's
``max_load_per_core``) makes every latency on it suspect: the report carries a warning.
"""
from __future__ import annotations

from typing import Optional

from edgeprune.pipeline.choices import LATENCY_STATS  # noqa: E402  (the CLI's --latency-stat choices)


def stat_value(lat: dict, stat: str) -> float:
    if stat == "p50":
        return float(lat.get("p50", lat["median"]))
    return float(lat.get(stat, lat["median"]))


def band(m: dict, stat: str) -> tuple[float, float, float]:
    """(value, low, high): the statistic and its noise band, value -/+ half the IQR (0 for estimates)."""
    lat = m["latency_ms"]
    v = stat_value(lat, stat)
    half = 0.0 if m.get("latency_is_estimate") else float(lat.get("iqr") or 0.0) / 2.0
    return v, v - half, v + half


def straddles(m: dict, stat: str, limit: Optional[float]) -> bool:
    """Is the budget inside the measurement's noise band?"""
    if limit is None or m.get("latency_is_estimate"):
        return False
    _, lo, hi = band(m, stat)
    return lo <= limit <= hi and hi > lo


def latency_check(m: dict, stat: str, limit: Optional[float], *, remeasured: bool = False) -> dict:
    """The latency check of one measurement: ok only when the statistic is within the budget AND
    (after the re-measurement) the budget is not inside the noise band."""
    v, lo, hi = band(m, stat)
    noisy = straddles(m, stat, limit)
    ok = True if limit is None else (v <= limit and not (noisy and remeasured))
    ck = {"ok": ok, "value": v, "limit": limit, "stat": stat, "spread_ms": hi - lo, "band_ms": [lo, hi],
          "estimate": bool(m.get("latency_is_estimate"))}
    if noisy and remeasured:
        ck["ok"] = False
        ck["within_noise"] = True
    if remeasured:
        ck["remeasured"] = True
    return ck


def load_warning(m: dict, max_load_per_core: Optional[float], rate: float) -> Optional[str]:
    per_core = m.get("load_per_core")
    if per_core is None or max_load_per_core is None or per_core <= max_load_per_core:
        return None
    return (f"the device was busy before measuring rate {rate:.2f}: load {per_core:.2f} per CPU (1-minute average), "
            f"above the profile's max_load_per_core {max_load_per_core:g}; its latencies may be inflated: "
            "measure on an idle board")
