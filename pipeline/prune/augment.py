"""Shifted copies of the calibration samples for the compensation refit.

The refit (pipeline/prune/compensate.py) needs no labels: its targets are what the ORIGINAL model's
layers compute on the same inputs. So any input the original model can be run on is a valid
fitting sample, and shifting the calibration images by a pixel or two gives the least-squares
fits many more rows (the example's fc1 reads up to 3,136 features from 200 images: the fit
is underdetermined without them). Only the calibration split is shifted, never the evaluation
samples. Inputs with spatial axes (rank >= 3: images, sequences) get ``copies`` shifted
copies (cyclic shifts by (1,0), (-1,0), (0,1), (0,-1), (1,1), (-1,-1), (2,0), (0,2) pixels,
in that order, the second offset dropped for one spatial axis); flat inputs are returned
unchanged. Measured in bench/results/allocation.md.
"""
from __future__ import annotations

import numpy as np

DEFAULT_COPIES = 8
OFFSETS = ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, -1), (2, 0), (0, 2))


def shifted_copies(x: np.ndarray, copies: int = DEFAULT_COPIES) -> np.ndarray:
    """``x`` followed by ``copies`` cyclically shifted copies (``x`` alone for flat inputs)."""
    x = np.asarray(x)
    if copies <= 0 or x.ndim < 3:
        return x
    spatial = list(range(1, x.ndim - 1))[:2]
    out, seen = [x], set()
    for off in OFFSETS:
        off = off[:len(spatial)]
        if not any(off) or off in seen:
            continue
        seen.add(off)
        out.append(np.roll(x, off, axis=spatial))
        if len(out) > copies:
            break
    return np.concatenate(out)
