"""Memory flat in the data: batch sizes from a model's activation memory, and lazy sample arrays.

Every pass over samples (reference outputs, fidelity, int8 calibration) goes through here:

- :func:`batch_size_for` sizes a batch so that the activations of ALL layers of one batch fit a
  budget (:data:`BATCH_BUDGET_BYTES`, 256 MB): bytes per sample = sum over the layers of the
  product of their output shape (without the batch axis) times the dtype size. A 28x28 CNN gets
  the cap (:data:`MAX_BATCH`), MobileNetV2-224 a handful of samples, never a fixed count.
- :class:`Samples` is a lazy float32 view of stored samples (an array in memory, or a ``.npy``
  memory-mapped with ``np.load(mmap_mode='r')``), with an optional subset of indices, a scale
  (``input_scale`` of an ``.npz``) and a trailing channel axis of 1; slicing it reads and
  converts only that slice. :class:`SyntheticSamples` draws sample ``i`` from a generator seeded
  with ``(seed, i)``: any batch is reproducible without holding the others.
- :func:`iter_batches` yields float32 batches of any of these (or a plain array).

Both lazy arrays support ``len``, ``shape``, ``dtype``, ``ndim``, slicing, ``take``, ``min``/``max``
(streamed) and ``np.asarray`` (materialises everything: avoid it in pipeline code).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

BATCH_BUDGET_BYTES = 256 * 2**20  # activations of one batch, all layers together
MAX_BATCH = 256
READ_BATCH = 64  # samples per slice when a pass does not involve the model (checks, min/max)


# --------------------------------------------------------------------------- batch size
def _dims(shape) -> int:
    n = 1
    for d in tuple(shape)[1:]:
        n *= int(d) if d is not None else 1
    return n


def _dtype_size(t) -> int:
    name = getattr(getattr(t, "dtype", None), "name", None) or str(getattr(t, "dtype", "float32"))
    try:
        return int(np.dtype(name).itemsize)
    except TypeError:
        return 4


def _tensors(x) -> list:
    if isinstance(x, (list, tuple)):
        return [t for item in x for t in _tensors(item)]
    if isinstance(x, dict):
        return [t for item in x.values() for t in _tensors(item)]
    return [x] if hasattr(x, "shape") else []


def activation_bytes_per_sample(model) -> int:
    """Bytes of every layer's output for one sample (inputs included), summed over the layers;
    nested models are counted layer by layer."""
    total = 0
    for t in _tensors(getattr(model, "inputs", None) or []):
        total += _dims(t.shape) * _dtype_size(t)
    for layer in getattr(model, "layers", []):
        if hasattr(layer, "layers") and getattr(layer, "inputs", None) is not None:
            total += activation_bytes_per_sample(layer)
            continue
        try:
            outs = _tensors(layer.output)
        except (AttributeError, ValueError, RuntimeError):  # a layer never called symbolically
            continue
        if type(layer).__name__ == "InputLayer":
            continue  # counted with model.inputs
        total += sum(_dims(t.shape) * _dtype_size(t) for t in outs)
    return max(int(total), 1)


def batch_size_for(model, budget_bytes: int | None = None, max_batch: int = MAX_BATCH) -> int:
    """Samples per batch so that one batch's activations (all layers) stay within ``budget_bytes``
    (default :data:`BATCH_BUDGET_BYTES`, read at call time)."""
    per_sample = activation_bytes_per_sample(model)
    budget_bytes = BATCH_BUDGET_BYTES if budget_bytes is None else budget_bytes
    return int(max(1, min(int(max_batch), int(budget_bytes) // per_sample)))


# --------------------------------------------------------------------------- lazy samples
class _Lazy:
    """Common interface of the lazy sample arrays (float32, first axis = samples)."""

    dtype = np.dtype(np.float32)
    sample_shape: tuple[int, ...] = ()

    def __len__(self) -> int:  # pragma: no cover - subclasses
        raise NotImplementedError

    def _rows(self, idx: np.ndarray) -> np.ndarray:  # pragma: no cover - subclasses
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.sample_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.sample_shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __getitem__(self, key):
        n = len(self)
        if isinstance(key, tuple):
            head, rest = key[0], key[1:]
            return self[head][(slice(None), *rest)] if not isinstance(head, (int, np.integer)) else self[head][rest]
        if isinstance(key, (int, np.integer)):
            k = int(key) + (n if key < 0 else 0)
            if not 0 <= k < n:
                raise IndexError(f"index {key} out of range for {n} samples")
            return self._rows(np.array([k]))[0]
        if isinstance(key, slice):
            return self._rows(np.arange(n)[key])
        idx = np.asarray(key)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return self._rows(idx.astype(np.int64))

    def take(self, idx) -> "_Lazy":
        """A lazy subset (no sample is read)."""
        return _Subset(self, np.asarray(idx, dtype=np.int64))

    def batches(self, batch_size: int = READ_BATCH) -> Iterator[np.ndarray]:
        for start in range(0, len(self), max(1, int(batch_size))):
            yield self[start : start + batch_size]

    def min(self) -> np.float32:
        return np.float32(min((float(b.min()) for b in self.batches() if b.size), default=np.inf))

    def max(self) -> np.float32:
        return np.float32(max((float(b.max()) for b in self.batches() if b.size), default=-np.inf))

    def reshape(self, *shape) -> np.ndarray:
        return np.asarray(self).reshape(*shape)

    def astype(self, dtype, copy: bool = True) -> np.ndarray:
        return np.asarray(self).astype(dtype)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.empty(self.shape, np.float32)
        for start in range(0, len(self), READ_BATCH):
            out[start : start + READ_BATCH] = self[start : start + READ_BATCH]
        return out if dtype is None else out.astype(dtype)

    def nbytes_float32(self) -> int:
        return self.size * 4


class _Subset(_Lazy):
    def __init__(self, base: _Lazy, idx: np.ndarray):
        self.base, self.idx = base, idx
        self.sample_shape = base.sample_shape

    def __len__(self) -> int:
        return int(len(self.idx))

    def _rows(self, idx: np.ndarray) -> np.ndarray:
        return self.base._rows(self.idx[idx])

    def take(self, idx) -> _Lazy:
        return _Subset(self.base, self.idx[np.asarray(idx, dtype=np.int64)])


class Samples(_Lazy):
    """Stored samples read lazily as float32: ``base`` (ndarray or memmap) times ``scale``, with a
    trailing channel axis of 1 appended when ``add_channel``."""

    def __init__(self, base: np.ndarray, scale: float | None = None, add_channel: bool = False):
        self.base, self.scale, self.add_channel = base, scale, bool(add_channel)
        self.sample_shape = tuple(int(d) for d in base.shape[1:]) + ((1,) if add_channel else ())

    def __len__(self) -> int:
        return int(len(self.base))

    def _rows(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        if len(idx) and np.all(np.diff(idx) == 1):  # contiguous: a plain slice (cheap on a memmap)
            raw = self.base[int(idx[0]) : int(idx[-1]) + 1]
        else:
            raw = self.base[idx]
        x = np.array(raw, dtype=np.float32)  # a copy: never a view of the user's (or the mapped) array
        if self.scale is not None:
            x *= np.float32(self.scale)
        return x[..., None] if self.add_channel else x


class SyntheticSamples(_Lazy):
    """``n`` samples uniform in [lo, hi): sample ``i`` comes from ``default_rng((seed, i))``."""

    def __init__(self, n: int, sample_shape: tuple[int, ...], lo: float, hi: float, seed: int = 0,
                 dtype=np.float32):
        self.n, self.sample_shape = int(n), tuple(int(d) for d in sample_shape)
        self.lo, self.hi, self.seed = float(lo), float(hi), int(seed)
        self.dtype = np.dtype(dtype)

    def __len__(self) -> int:
        return self.n

    def _rows(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), *self.sample_shape), self.dtype)
        for j, i in enumerate(np.asarray(idx, dtype=np.int64)):
            if not 0 <= i < self.n:
                raise IndexError(f"index {i} out of range for {self.n} samples")
            rng = np.random.default_rng((self.seed, int(i)))
            if self.dtype.kind in "iu":
                out[j] = rng.integers(int(np.ceil(self.lo)), int(np.floor(self.hi)) + 1, size=self.sample_shape)
            else:
                out[j] = rng.uniform(self.lo, self.hi, size=self.sample_shape)
        return out


def iter_batches(x, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
    """(start, batch) over the first axis of an array or a lazy sample array; each batch is read
    (and converted) only when it is reached."""
    n = len(x)
    b = max(1, int(batch_size))
    for start in range(0, n, b):
        yield start, x[start : start + b]


def is_lazy(x) -> bool:
    return isinstance(x, _Lazy)


def release_free_memory() -> None:
    """Give the C heap's free pages back to the system (glibc ``malloc_trim``; nothing elsewhere).
    A conversion or a prune step frees its temporaries, but the heap keeps the pages: on
    MobileNetV2-224 an int8 conversion left 0.27 GB resident after it was freed. Called at the start
    of every prune step (Pruner.step_to) so that it starts from what is really in use."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
