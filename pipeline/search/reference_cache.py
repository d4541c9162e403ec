"""The original model's outputs on the evaluation data ("reference outputs"), computed once per run
and cached in the run directory (``reference.npz``) for ``--resume``.

The cache is keyed by the run's fingerprint (model and data sha256, ...), the evaluation split
(number of samples and a sha256 of the indices' first/last outputs is not needed: the split is a
function of the data) and the output shape; anything else recomputes it. It is written with the
run directory's atomic-write helper (temporary file + rename), so an interrupted run never
leaves a half-written cache.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from edgeprune.pipeline.atomic import write_bytes_atomic

REFERENCE_FILE = "reference.npz"


def cache_key(fingerprint: dict, n_samples: int) -> str:
    blob = json.dumps({"fingerprint": fingerprint, "n_samples": int(n_samples), "format": 1}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def load_cached(run_dir: Path, key: str, n_samples: int) -> np.ndarray | None:
    path = Path(run_dir) / REFERENCE_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            out = np.asarray(z["outputs"], dtype=np.float32)
    except (OSError, ValueError, KeyError):
        return None
    return out if len(out) == n_samples else None


def save(run_dir: Path, key: str, outputs: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, key=np.array(key), outputs=np.asarray(outputs, dtype=np.float32))
    write_bytes_atomic(Path(run_dir) / REFERENCE_FILE, buf.getvalue())


def reference_outputs(ctx) -> None:
    """The original model's outputs on the evaluation data (after the run directory is open: on
    ``--resume`` the cached outputs are reused)."""
    from edgeprune.pipeline.convert import fidelity as fid
    from edgeprune.pipeline.search.run_dir import fingerprint

    t0 = time.perf_counter()
    key = cache_key(fingerprint(ctx), len(ctx.data.x))
    ref = load_cached(ctx.run_dir, key, len(ctx.data.x)) if ctx.resumed else None
    ctx.reference_cached = ref is not None
    if ref is None:
        ctx.emit("status", text=f"reference outputs of the original model on {len(ctx.data.x)} samples")
        ref = fid.keras_outputs(ctx.model, ctx.data.x)
        save(ctx.run_dir, key, ref)
    ctx.reference = ref
    ctx.fid_config = fid.FidelityConfig()
    ctx.load_timings = dict(ctx.load_timings, reference_s=round(time.perf_counter() - t0, 3),
                            reference_cached=ctx.reference_cached)
