"""Shifted copies for the compensation refit, and the finer candidate spacing at high rates."""
from __future__ import annotations

import numpy as np

from edgeprune.pipeline.prune.augment import shifted_copies
from edgeprune.pipeline.search.host_phase import rate_schedule


def test_shifted_copies_of_images_are_exact_cyclic_shifts():
    x = np.arange(2 * 5 * 6 * 3, dtype=np.float32).reshape(2, 5, 6, 3)
    out = shifted_copies(x, 8)
    assert out.shape == (18, 5, 6, 3)
    np.testing.assert_array_equal(out[:2], x)
    np.testing.assert_array_equal(out[2:4], np.roll(x, 1, axis=1))  # down by one row
    np.testing.assert_array_equal(out[8:10], np.roll(x, (0, -1), axis=(1, 2)))  # left by one column
    np.testing.assert_array_equal(out[16:18], np.roll(x, 2, axis=2))
    assert len(shifted_copies(x, 3)) == 8


def test_sequences_shift_along_time_and_flat_inputs_are_left_alone():
    seq = np.random.default_rng(0).normal(size=(4, 10, 2)).astype(np.float32)
    out = shifted_copies(seq, 8)
    # one spatial axis: offsets 1, -1, 2 (the others repeat or are zero)
    assert out.shape == (16, 10, 2)
    np.testing.assert_array_equal(out[4:8], np.roll(seq, 1, axis=1))
    flat = np.ones((5, 7), np.float32)
    assert shifted_copies(flat, 8) is not None and shifted_copies(flat, 8).shape == (5, 7)
    assert shifted_copies(seq, 0).shape == seq.shape


def test_rate_schedule_halves_the_step_above_0_8():
    assert rate_schedule(0.05, 0.9)[-6:] == [0.75, 0.8, 0.825, 0.85, 0.875, 0.9]
    assert rate_schedule(0.1, 0.95) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95]
    assert rate_schedule(0.05, 0.5) == [round(0.05 * k, 6) for k in range(11)]
    assert rate_schedule(0.3, 0.3) == [0.0, 0.3]
