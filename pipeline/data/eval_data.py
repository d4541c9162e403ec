"""Evaluation data: the user's ``.npz``/``.npy`` file, checked against the model, or
data-free synthetic inputs (always labelled as such).

File formats:
- ``.npz`` with ``x`` (inputs) and optional ``y`` (integer labels, or one-hot); the
  MLPerf Tiny names ``specs``/``labels`` and numpy's default ``arr_0`` are accepted too.
  An optional scalar ``input_scale`` declares the preprocessing: the model's input is
  ``x * input_scale`` (the bundled example stores uint8 images with ``input_scale`` = 1/255).
  Without it, data is used exactly as stored: uint8 images are never rescaled silently.
- ``.npy``: the inputs only.

The per-sample shape must equal the model's input shape; a missing trailing channel
dimension of 1 is accepted (28x28 images for a 28x28x1 input).
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.errors import BadInput, UnsupportedModel

SUFFIXES = (".npz", ".npy")
X_KEYS = ("x", "specs", "arr_0")
Y_KEYS = ("y", "labels")
SYNTHETIC_LABEL = "synthetic (data-free)"


@dataclass
class EvalData:
    """Inputs (already preprocessed to what the model takes), optional labels, and where
    they came from: ``source`` is "user" or "synthetic"."""

    x: Any  # np.ndarray, or a lazy sample array (edgeprune.pipeline.data.batching)
    y: np.ndarray | None
    source: str
    path: Path | None = None
    input_scale: float | None = None
    input_range: tuple[float, float] | None = None  # for synthetic data
    notes: list[str] = field(default_factory=list)
    form: str | None = None  # npz, npy, images, csv, function (see datasources)
    spec: str | None = None  # the --data value as given, when it is not just a path

    @property
    def n(self) -> int:
        return int(len(self.x))

    @property
    def label(self) -> str:
        """How to name the data wherever it is shown."""
        if self.source == "synthetic":
            return SYNTHETIC_LABEL
        if self.spec is not None:
            return f"user data {self.spec}"
        return f"user data {self.path.name}" if self.path is not None else "user data"

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "label": self.label,
            "path": str(self.path) if self.path is not None else None,
            "n_samples": self.n,
            "labelled": self.y is not None,
            "input_scale": self.input_scale,
            "input_range": list(self.input_range) if self.input_range else None,
            "form": self.form or (self.path.suffix.lower().lstrip(".") if self.path is not None else None),
            "notes": list(self.notes),
        }


def _model_input_shape(model) -> tuple[int, ...]:
    if isinstance(model, (tuple, list)) and all(isinstance(d, (int, np.integer)) for d in model):
        return tuple(int(d) for d in model)
    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise UnsupportedModel("the model has no inputs", "build it with an Input layer")
    if len(inputs) != 1:
        raise UnsupportedModel(
            f"the model has {len(inputs)} inputs; evaluation data files support single-input models",
            "evaluate without --data (synthetic), or use a single-input model",
        )
    shape = tuple(inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise UnsupportedModel(f"the model's input shape {shape} is not fully known",
                               "fix the variable dimensions with --input-shape, batch first (e.g. --input-shape 1,5000,4)")
    return tuple(int(d) for d in shape)


def _open(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise BadInput(f"data file {path} does not exist", "check the path (.npz with x[, y], or .npy)")
    if path.is_dir():
        raise BadInput(f"{path} is a folder, not a data file", "give a .npz (x[, y]) or .npy file")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise BadInput(f"{path.name}: unsupported data format {suffix or '(no suffix)'}", "give a .npz (x[, y]) or .npy file")
    if path.stat().st_size == 0:
        raise BadInput(f"data file {path} is empty (0 bytes)", "re-export it with numpy.savez / numpy.save")
    try:
        if suffix == ".npz":
            if not zipfile.is_zipfile(path):
                raise BadInput(f"{path} is not a valid .npz file (not a zip archive): corrupt or truncated", "re-export it with numpy.savez")
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            if not arrays:
                raise BadInput(f"data file {path} is empty (the .npz holds no arrays)", "save the inputs as x (and labels as y)")
            return arrays
        return {"x": np.load(path, allow_pickle=False, mmap_mode="r")}  # read in batches, never whole
    except BadInput:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise BadInput(
                f"{path.name} holds Python objects, not numbers",
                "save a numeric array (float32, or uint8/int images) with numpy",
            ) from None
        raise BadInput(f"{path} cannot be read: {exc}", "re-export it with numpy.savez / numpy.save") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise BadInput(f"{path} cannot be read (corrupt or truncated): {type(exc).__name__}: {exc}", "re-export it") from None


def _pick(arrays: dict[str, np.ndarray], keys: tuple[str, ...]) -> tuple[str | None, np.ndarray | None]:
    for k in keys:
        if k in arrays:
            return k, arrays[k]
    return None, None


def _check_numeric(name: str, arr: np.ndarray, what: str) -> None:
    if arr.dtype.kind not in "biuf":
        raise BadInput(
            f"{name}: {what} has dtype {arr.dtype}, not numbers",
            "store inputs as a numeric array (float32, or uint8/int images)",
        )


def load_eval_data(path: str | Path, model) -> EvalData:
    """Load and check evaluation data for ``model`` (a Keras model, or its per-sample input
    shape). Raises BadInput with what is wrong: missing/empty/corrupt file, non-numeric
    data, wrong shape (expected vs got), NaN, labels that do not match."""
    path = Path(path)
    _model_input_shape(model)
    arrays = _open(path)
    xkey, x = _pick(arrays, X_KEYS)
    if x is None:
        if len(arrays) == 1:
            xkey, x = next(iter(arrays.items()))
        else:
            raise BadInput(
                f"{path.name} has arrays {sorted(arrays)} but no inputs named {' or '.join(X_KEYS[:2])}",
                "name the inputs x (and the labels y): numpy.savez(path, x=..., y=...)",
            )
    ykey, y = _pick(arrays, Y_KEYS)
    return check_arrays(path.name, x, y, model, xkey=xkey, ykey=ykey or "y", input_scale=arrays.get("input_scale"),
                        path=path, lazy=True)


def check_arrays(name: str, x, y, model, *, xkey: str = "x", ykey: str = "y", input_scale=None,
                 path: Path | None = None, notes: list[str] | None = None, form: str | None = None,
                 spec: str | None = None, lazy: bool = False) -> EvalData:
    """The checks every form of ``--data`` goes through (the single place they live): numeric
    inputs, at least one sample, the model's per-sample shape, an optional declared
    ``input_scale``, no NaN/infinity, labels (whole numbers, one per sample, within the model's
    classes). ``name`` names the data in the messages. ``lazy``: keep the samples as stored (an
    ``.npz``/``.npy``, possibly memory-mapped) and read them batch by batch
    (:class:`~edgeprune.pipeline.data.batching.Samples`); else a float32 array."""
    shape = _model_input_shape(model)
    x = x if isinstance(x, np.ndarray) else np.asarray(x)  # a memory-mapped .npy stays a np.memmap (nothing read)
    _check_numeric(name, x, f"array {xkey!r}")
    if x.ndim == 0 or len(x) == 0:
        raise BadInput(f"data file {name} is empty: array {xkey!r} has shape {x.shape}", "give at least one sample")
    from edgeprune.pipeline.data.batching import READ_BATCH, Samples
    from edgeprune.pipeline.convert.converter import fit_to_input

    fit_to_input(x[:1], shape, f"{name} ({xkey!r})")  # the shape check (and its message)
    add_channel = tuple(x.shape[1:]) != tuple(shape)
    notes = list(notes or [])
    scale = None
    if input_scale is not None:
        s = np.asarray(input_scale)
        if s.size != 1 or s.dtype.kind not in "iuf" or not np.isfinite(s).all() or float(s) <= 0:
            raise BadInput(f"{name}: input_scale must be one positive number, got {s!r}")
        scale = float(s.reshape(()))
        notes.append(f"inputs scaled by input_scale={scale:.6g} declared in {name}")
    # The samples stay as stored (a .npy memory-mapped, uint8 images as uint8) and are read,
    # converted to float32 and scaled batch by batch (edgeprune.pipeline.data.batching.Samples).
    top = None
    for start in range(0, len(x), READ_BATCH):
        chunk = np.asarray(x[start : start + READ_BATCH])
        if chunk.dtype.kind == "f" and not np.isfinite(chunk if scale is None else chunk * np.float32(scale)).all():
            raise BadInput(f"{name}: the inputs contain NaN or infinity", "clean the data")
        if scale is None and x.dtype == np.uint8 and chunk.size:
            top = max(top or 0, int(chunk.max()))
    if scale is None and top is not None and top > 1:
        notes.append(
            f"{name} holds uint8 values up to {top}, used as-is (not rescaled); if the model "
            "expects [0, 1], store input_scale=1/255 in the .npz"
        )
    x = Samples(x, scale=scale, add_channel=add_channel)
    if not lazy:  # already in memory (images, CSV, a function's arrays): float32 now, as before
        x = np.asarray(x)

    if y is not None:
        y = _check_labels(name, ykey, np.asarray(y), len(x), notes)
        classes = _model_classes(model)
        if classes and len(y) and int(y.max()) >= classes:
            bad = int((y >= classes).sum())
            raise BadInput(f"{name}: labels {ykey!r} go up to {int(y.max())} ({bad} of {len(y)} samples), but the "
                           f"model has {classes} output classes (labels 0..{classes - 1})",
                           "check that the labels belong to this model (class indices, 0-based)")
    return EvalData(x=x, y=y, source="user", path=path, input_scale=scale, notes=notes, form=form, spec=spec)


def _model_classes(model) -> int | None:
    """Number of classes of a single-output classifier-shaped model (width of its last axis;
    2 for one sigmoid unit), or None when that is not a question (several outputs, no model)."""
    outputs = getattr(model, "outputs", None)
    if not outputs or len(outputs) != 1:
        return None
    shape = tuple(outputs[0].shape)
    if len(shape) != 2 or shape[-1] is None:
        return None
    return 2 if int(shape[-1]) == 1 else int(shape[-1])


def _check_labels(name: str, key: str, y: np.ndarray, n: int, notes: list[str]) -> np.ndarray:
    if y.dtype.kind not in "biuf":
        raise BadInput(f"{name}: labels {key!r} have dtype {y.dtype}, not numbers", "store integer class labels")
    if y.ndim == 2 and y.shape[1] > 1:  # one-hot
        notes.append(f"labels {key!r} are one-hot; using their argmax")
        y = y.argmax(axis=1)
    y = y.reshape(len(y), -1)[:, 0] if y.ndim == 2 and y.shape[1] == 1 else y
    if y.ndim != 1:
        raise BadInput(f"{name}: labels {key!r} have shape {y.shape}; expected ({n},) class indices")
    if len(y) != n:
        raise BadInput(f"{name}: {n} inputs but {len(y)} labels in {key!r}", "give one label per sample")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise BadInput(f"{name}: labels {key!r} are not whole numbers", "store integer class labels")
    if (y < 0).any():
        raise BadInput(f"{name}: labels {key!r} contain negative values", "store class indices 0..C-1")
    return y.astype(np.int64)


def synthetic_data(model, n: int = 100, input_range: tuple[float, float] = (0.0, 1.0), seed: int = 0) -> EvalData:
    """``n`` inputs drawn uniformly from ``input_range`` (data-free evaluation, no labels)."""
    shape = _model_input_shape(model)
    lo, hi = float(input_range[0]), float(input_range[1])
    if not lo < hi:
        raise BadInput(f"input range {input_range!r}: LO must be below HI")
    if n < 1:
        raise BadInput(f"number of synthetic samples must be >= 1, got {n}")
    from edgeprune.pipeline.data.batching import SyntheticSamples

    x = SyntheticSamples(n, shape, lo, hi, seed=seed)  # drawn batch by batch, never held whole
    return EvalData(x=x, y=None, source="synthetic", path=None, input_range=(lo, hi))
