"""Work reused across runs by content: the pruning plan a run reached at a rate, keyed by what
determines it (the run's fingerprint: model bytes, data, criterion, compensation, allocation and
objective, step, seed, input range; plus ``--max-rate``, which sets the schedule's widths, and
the rate).

``edgeprune run`` writes the plan of every candidate it builds here; ``run --rate R`` (the
fixed-rate path) replays the stored plan instead of pruning again, so a CI pipeline that
re-checks the rate main's report chose costs loading, conversion, fidelity and device time.
A plan replays exactly (plan.py: the kept channels, merges and refitted weights), so the
candidate is the same model as the one the search built.

Location: ``$EDGEPRUNE_CACHE_DIR/plans`` or ``~/.cache/edgeprune/plans``. Entries are small
JSON files written atomically; an unreadable entry is ignored (recomputed). Clearing the
folder is always safe.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

FORMAT = "edgeprune-plan-cache/1"


def cache_dir() -> Path:
    root = os.environ.get("EDGEPRUNE_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "edgeprune") / "plans"


def plan_key(fingerprint: dict, max_rate: float, rate: float) -> str:
    blob = json.dumps({"format": FORMAT, "fingerprint": fingerprint, "max_rate": round(float(max_rate), 6),
                       "rate": round(float(rate), 6)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def load_plan(key: str):
    """The cached :class:`~edgeprune.pipeline.prune.plan.Plan` for ``key``, or None."""
    from edgeprune.pipeline.prune.plan import Plan

    path = cache_dir() / f"{key}.plan.json"
    if not path.is_file():
        return None
    try:
        plan = Plan.load(path)
    except Exception:  # noqa: BLE001 - a damaged entry is recomputed, never trusted
        return None
    return None if plan.trained else plan  # recovery-trained weights live beside a run's plan, not here


def store_plan(key: str, plan_path: Path) -> Optional[Path]:
    """Copy a candidate's plan into the cache (best effort: a read-only home loses only speed)."""
    from edgeprune.pipeline.atomic import write_bytes_atomic

    try:
        d = cache_dir()
        d.mkdir(parents=True, exist_ok=True)
        dest = d / f"{key}.plan.json"
        write_bytes_atomic(dest, Path(plan_path).read_bytes())
        return dest
    except OSError:
        return None
