"""The calibration / evaluation split of the user's samples: int8 calibration (and, later,
compensation and flow) use one part, the fidelity verdict the other; never the same samples.

Which samples are held out for calibration is decided by their CONTENT, not their position:
each sample's float32 bytes are hashed and the samples with the smallest hashes form the
calibration part. So the same samples give the same split whatever their order or file form
(an .npz, a folder of PNGs sorted by class, a CSV), and identical samples (duplicates) always
land on the same side: no evaluation sample also appears in the calibration part.

Sizes: one fifth of the samples, at most ``CALIBRATION_MAX`` (200), at least one when there
are two or more samples. With one sample (or only identical ones) nothing can be held out:
int8 is then calibrated on synthetic inputs in the input range, and the report says so.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from edgeprune.pipeline.data.eval_data import EvalData
from edgeprune.pipeline.search.run_config import CALIBRATION_MAX

METHOD = ("content hash: the samples whose float32 bytes hash lowest (1/5, at most "
          f"{CALIBRATION_MAX}) calibrate, the rest judge; the same samples in any order or file form split the same "
          "way, and identical samples never straddle the split")


@dataclass
class Split:
    calibration: np.ndarray | None  # None: calibrate on synthetic inputs (nothing could be held out)
    evaluation: EvalData
    info: dict = field(default_factory=dict)


def sample_keys(x) -> np.ndarray:
    """A 64-bit hash of each sample's float32 bytes (read batch by batch: ``x`` may be a lazy or
    memory-mapped sample array)."""
    from edgeprune.pipeline.data.batching import READ_BATCH

    keys = np.empty(len(x), dtype=np.uint64)
    for start in range(0, len(x), READ_BATCH):
        rows = np.ascontiguousarray(x[start:start + READ_BATCH], dtype=np.float32).reshape(-1, int(np.prod(x.shape[1:])))
        for j, row in enumerate(rows):
            keys[start + j] = int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little")
    return keys


def _subset(x, idx: np.ndarray):
    """Rows ``idx`` of ``x``: a lazy subset for a lazy sample array (nothing read), else a copy."""
    from edgeprune.pipeline.data.batching import is_lazy

    return x.take(idx) if is_lazy(x) else x[idx]


def calibration_size(n: int, max_cal: int = CALIBRATION_MAX) -> int:
    return 0 if n < 2 else min(max_cal, max(1, n // 5))


def split(data: EvalData, max_cal: int = CALIBRATION_MAX) -> Split:
    """Hold out a calibration part of ``data`` (see the module docstring); ``data`` is not changed."""
    n = data.n
    k = calibration_size(n, max_cal)
    keys = sample_keys(data.x)
    cal = np.zeros(n, bool)
    if k:
        kth = np.sort(keys)[k - 1]
        cal = keys <= kth  # duplicates of the boundary sample go with it
        if cal.all():
            cal = keys < kth
    ev = ~cal
    evaluation = EvalData(x=_subset(data.x, np.flatnonzero(ev)), y=None if data.y is None else data.y[ev], source=data.source, path=data.path,
                          input_scale=data.input_scale, input_range=data.input_range, notes=list(data.notes),
                          form=data.form, spec=data.spec)
    shared = int(np.isin(keys[ev], keys[cal]).sum())  # 0 by construction; counted, not assumed
    info = {"method": METHOD, "n_samples": n, "calibration": int(cal.sum()), "evaluation": int(ev.sum()),
            "shared": shared, "calibration_source": "user" if cal.any() else "synthetic"}
    if not cal.any():
        evaluation.notes.append("int8 calibrated on synthetic inputs in the input range: too few distinct samples "
                                "to hold any out of the evaluation")
    order = np.argsort(keys[cal], kind="stable")  # calibration in hash order: the same whatever the input order
    return Split(calibration=_subset(data.x, np.flatnonzero(cal)[order]) if cal.any() else None, evaluation=evaluation,
                 info=info)
