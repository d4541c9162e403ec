"""``--data`` in the forms people have it. Each loader only READS and declares its preprocessing;
every form then goes through :func:`edgeprune.pipeline.data.eval_data.check_arrays` (shape, NaN, labels
within the model's classes), the single place those checks live.

The four forms:

- ``samples.npz`` / ``samples.npy``: arrays (see :mod:`edgeprune.pipeline.data.eval_data`).
- a folder of images (PNG, JPEG, BMP), read with Pillow. With one sub-folder per class (the
  ``keras.utils.image_dataset_from_directory`` convention) the labels come from the folder
  names; the class order is ``classes`` (``--classes a,b,c``) when given, else the folder names'
  numeric order when every name is a class index (``0``, ``1``, ... ``10``), else their sorted
  order (as Keras does). Images are resized (bilinear) to the model's input height x width,
  converted to its channels (1: grayscale, 3: RGB, 4: RGBA) and their 8-bit pixels 0..255 are
  mapped linearly onto the model's input range (``--input-range``, default 0,1: pixel / 255).
- ``samples.csv``: one row per sample; a header naming a ``label`` (or ``y``, ``class``,
  ``target``) column gives the labels; every other column is one input value, reshaped to the
  model's input shape. Values are used as they are (no scaling).
- ``my_prep.py:load``: the user's function, called with no arguments, returning ``x`` or
  ``(x, y)`` (or a dict with ``x`` and ``y``), already preprocessed. An exception raised in it
  (or while importing the file) is reported as the user's, with the traceback of their code.
"""
from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeprune.crash import stage
from edgeprune.errors import BadInput
from edgeprune.pipeline.data.eval_data import SUFFIXES, EvalData, _model_classes, _model_input_shape, check_arrays

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
LABEL_COLUMNS = ("label", "y", "class", "target")
FORMS = ("a .npz (x[, y]) or .npy file, a folder of images (PNG/JPEG/BMP; one sub-folder per class for labels), "
         "a .csv (one row per sample, optional 'label' column), or my_prep.py:load (a function returning x or (x, y))")
_FUNC = re.compile(r"^(?P<file>.+\.py)(?::(?P<func>[A-Za-z_][A-Za-z0-9_]*))?$")


class UserCodeError(BadInput):
    """The user's data function (or its file) raised: ``detail`` is the traceback of their code."""

    def __init__(self, message: str, hint: str | None = None, detail: str | None = None):
        super().__init__(message, hint)
        self.detail = detail


@dataclass(frozen=True)
class DataSpec:
    form: str  # npz, npy, images, csv, function
    path: Path
    func: str | None = None
    text: str = ""

    @property
    def name(self) -> str:
        return f"{self.path.name}:{self.func}" if self.form == "function" else self.path.name


def parse_spec(spec) -> DataSpec:
    """What kind of ``--data`` this is (no file is read beyond a stat). BadInput if it is none."""
    text = str(spec)
    m = _FUNC.match(text)
    if m and not Path(text).is_dir():
        path = Path(m.group("file"))
        if not path.is_file():
            raise BadInput(f"data function file {path} does not exist", "check the path, e.g. --data my_prep.py:load")
        return DataSpec("function", path, m.group("func") or "load", text)
    path = Path(text)
    if not path.exists():
        raise BadInput(f"data file {path} does not exist", f"check the path; --data takes {FORMS}")
    if path.is_dir():
        return DataSpec("images", path, None, text)
    suffix = path.suffix.lower()
    if suffix in SUFFIXES:
        return DataSpec(suffix.lstrip("."), path, None, text)
    if suffix == ".csv":
        return DataSpec("csv", path, None, text)
    raise BadInput(f"{path.name}: unsupported data format {suffix or '(no suffix)'}", f"--data takes {FORMS}")


@stage("data", what="spec")
def load_data(spec, model, *, input_range=(0.0, 1.0), classes: list[str] | str | None = None) -> EvalData:
    """Read ``--data`` in any of its forms and return checked :class:`EvalData`."""
    ds = spec if isinstance(spec, DataSpec) else parse_spec(spec)
    names = _class_list(classes)
    if names is not None and ds.form not in ("images", "csv"):
        raise BadInput(f"--classes applies to a folder of images or a CSV, not to {ds.form} data",
                       "drop --classes (labels in a .npz or from a function are class indices already)")
    if ds.form in ("npz", "npy"):
        from edgeprune.pipeline.data.eval_data import load_eval_data

        data = load_eval_data(ds.path, model)
        data.form = ds.form
        return data
    if ds.form == "images":
        x, y, notes = _read_images(ds.path, model, input_range, names)
    elif ds.form == "csv":
        x, y, notes = _read_csv(ds.path, model, names)
    else:
        x, y, notes = _call_function(ds)
    return check_arrays(ds.name, x, y, model, xkey="x", ykey="y", path=ds.path, notes=notes, form=ds.form,
                        spec=ds.name if ds.form == "function" else None)


def content_id(data: EvalData) -> str:
    """A fingerprint of the data as the model sees it (inputs and labels), for run.json."""
    h = hashlib.sha256()
    for start in range(0, len(data.x), 64):  # batch by batch: the same bytes as the whole array
        h.update(np.ascontiguousarray(data.x[start:start + 64], dtype=np.float32).tobytes())
    if data.y is not None:
        h.update(np.ascontiguousarray(data.y, dtype=np.int64).tobytes())
    return f"{data.form}:{h.hexdigest()}"


def _class_list(classes) -> list[str] | None:
    if classes is None:
        return None
    names = [c.strip() for c in classes.split(",")] if isinstance(classes, str) else [str(c).strip() for c in classes]
    if not names or any(not n for n in names):
        raise BadInput(f"--classes {classes!r} has an empty class name", "give the names in label order: --classes cat,dog,bird")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise BadInput(f"--classes names {', '.join(dup)} more than once", "give each class once, in label order")
    return names


# --------------------------------------------------------------------------- images
def _image_geometry(model) -> tuple[int, int, int, str]:
    shape = _model_input_shape(model)
    if len(shape) != 3 or shape[-1] not in (1, 3, 4):
        raise BadInput(f"a folder of images was given, but the model's input shape {shape} is not an image "
                       "(height, width, 1/3/4 channels)", "give a .npz/.npy, a .csv, or my_prep.py:load")
    h, w, c = shape
    return h, w, c, {1: "L", 3: "RGB", 4: "RGBA"}[c]


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _class_order(folder: Path, subdirs: list[Path], names: list[str] | None, model) -> tuple[dict[str, int], str]:
    found = [d.name for d in subdirs]
    if names is not None:
        unknown = [f for f in found if f not in names]
        if unknown:
            raise BadInput(f"{folder.name}: sub-folder(s) {', '.join(unknown[:5])} are not in --classes",
                           "list every class folder in --classes (in label order), or remove the folder")
        return {n: i for i, n in enumerate(names)}, "declared by --classes"
    if all(re.fullmatch(r"\d+", f) for f in found):
        return {f: int(f) for f in found}, "the folder names are the class indices"
    n_model = _model_classes(model)
    if n_model is not None and len(found) < n_model:
        raise BadInput(f"{folder.name} has {len(found)} class folders but the model has {n_model} classes: which "
                       "label each folder is cannot be known from the names",
                       "give the class names in label order (--classes a,b,c,...), or name the folders by class "
                       "index (0, 1, 2, ...)")
    return {f: i for i, f in enumerate(sorted(found))}, "sorted folder names (as keras image_dataset_from_directory)"


def _read_images(folder: Path, model, input_range, names) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    from PIL import Image, UnidentifiedImageError

    h, w, c, mode = _image_geometry(model)
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    top = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if subdirs and top:
        raise BadInput(f"{folder.name} holds {len(top)} image(s) at its top level and {len(subdirs)} sub-folders: "
                       "with class sub-folders every image must be in one", "move the top-level images into their "
                       "class folder, or give a folder of images without sub-folders (unlabelled)")
    notes: list[str] = []
    if subdirs:
        order, how = _class_order(folder, subdirs, names, model)
        files, labels = [], []
        for d in subdirs:
            imgs = _images_in(d)
            files += imgs
            labels += [order[d.name]] * len(imgs)
        y = np.asarray(labels, dtype=np.int64)
        mapping = ", ".join(f"{k}={v}" for k, v in sorted(order.items(), key=lambda kv: kv[1])[:12])
        notes.append(f"labels from {len(subdirs)} class folders ({how}): {mapping}"
                     + (", ..." if len(order) > 12 else ""))
    else:
        files, y = _images_in(folder), None
        notes.append("no class sub-folders: the images are unlabelled")
    if not files:
        raise BadInput(f"{folder.name} holds no images ({', '.join(IMAGE_SUFFIXES)})",
                       "put the images in the folder (one sub-folder per class for labels)")
    out = np.empty((len(files), h, w, c), np.uint8)
    resized = 0
    for i, p in enumerate(files):
        try:
            with Image.open(p) as im:
                if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                    raise BadInput(f"{p.relative_to(folder)} is a {im.mode} ({'16-bit' if 'I' in im.mode else 'float'}) "
                                   "image: its scaling to the input range would be a guess",
                                   "save the images as 8-bit PNG/JPEG, or give a .npz / my_prep.py:load")
                im = im.convert(mode)
                if im.size != (w, h):
                    im = im.resize((w, h), Image.Resampling.BILINEAR)
                    resized += 1
                a = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise BadInput(f"{p.relative_to(folder)} is not a readable image ({type(exc).__name__}: {exc})",
                           "re-save it as PNG/JPEG/BMP, or remove it from the folder") from None
        out[i] = a.reshape(h, w, c)
    lo, hi = float(input_range[0]), float(input_range[1])
    x = out.astype(np.float32) * np.float32((hi - lo) / 255.0)
    if lo != 0.0:
        x = x + np.float32(lo)
    notes.append(f"{len(files)} images read with Pillow as {mode} ({c} channel{'s' if c > 1 else ''}), "
                 f"{resized} resized (bilinear) to {w}x{h}; 8-bit pixels 0..255 mapped onto the input range "
                 f"[{lo:g}, {hi:g}]")
    return x, y, notes


# --------------------------------------------------------------------------- CSV
def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _read_csv(path: Path, model, names) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise BadInput(f"{path.name} is not a UTF-8 text file", "save it as a CSV (UTF-8 text)") from None
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    rows = [(i + 1, r) for i, r in enumerate(csv.reader(io.StringIO(text), dialect)) if any(c.strip() for c in r)]
    if not rows:
        raise BadInput(f"data file {path.name} is empty", "one row per sample, one column per input value")
    header = None
    if any(_number(c) is None for c in rows[0][1]):
        header = [c.strip() for c in rows[0][1]]
        rows = rows[1:]
    if not rows:
        raise BadInput(f"data file {path.name} has a header but no rows", "one row per sample")
    width = len(header) if header else len(rows[0][1])
    label_col = None
    if header:
        hits = [i for i, n in enumerate(header) if n.lower() in LABEL_COLUMNS]
        if len(hits) > 1:
            raise BadInput(f"{path.name}: more than one label column ({', '.join(header[i] for i in hits)})",
                           "keep one column named label")
        label_col = hits[0] if hits else None
    feats = [i for i in range(width) if i != label_col]
    x = np.empty((len(rows), len(feats)), np.float32)
    raw_y: list[str] = []
    for k, (line, r) in enumerate(rows):
        if len(r) != width:
            raise BadInput(f"{path.name} line {line}: {len(r)} values, the {'header' if header else 'first row'} has "
                           f"{width}", "give every row the same columns")
        for j, col in enumerate(feats):
            v = _number(r[col])
            if v is None:
                what = f"column {header[col]!r}" if header else f"column {col + 1}"
                raise BadInput(f"{path.name} line {line}, {what}: {r[col]!r} is not a number",
                               "every input value must be a number (labels go in a column named label)")
            x[k, j] = v
        if label_col is not None:
            raw_y.append(r[label_col].strip())
    notes = [f"{len(rows)} rows x {len(feats)} values read from {path.name}, used as they are (no scaling)"]
    y = None
    if label_col is not None:
        y = _csv_labels(path, header[label_col], raw_y, names)
        notes.append(f"labels from column {header[label_col]!r}")
    shape = _model_input_shape(model)
    size = int(np.prod(shape))
    if len(feats) != size:
        raise BadInput(f"{path.name}: each row has {len(feats)} input values, but the model's input {shape} takes {size}",
                       f"give {size} values per row (plus an optional label column)")
    return x.reshape(len(rows), *shape), y, notes


def _csv_labels(path: Path, col: str, raw: list[str], names) -> np.ndarray:
    nums = [_number(v) for v in raw]
    if all(v is not None for v in nums):
        return np.asarray(nums, dtype=np.float64)
    if names is None:
        bad = next(v for v, n in zip(raw, nums) if n is None)
        raise BadInput(f"{path.name}: label {bad!r} in column {col!r} is not a class index",
                       "use class indices 0..C-1, or give the class names in label order with --classes a,b,c")
    unknown = sorted({v for v in raw if v not in names})
    if unknown:
        raise BadInput(f"{path.name}: label(s) {', '.join(map(repr, unknown[:5]))} are not in --classes",
                       "list every class name in --classes, in label order")
    return np.asarray([names.index(v) for v in raw], dtype=np.int64)


# --------------------------------------------------------------------------- the user's function
def _user_traceback(exc: BaseException, user_file: Path) -> str:
    """The traceback from the first frame in the user's file on (edgeprune's frames dropped)."""
    target = user_file.resolve()
    tb = exc.__traceback__
    while tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve() != target:
        tb = tb.tb_next
    lines = traceback.format_exception(type(exc), exc, tb) if tb is not None else \
        traceback.format_exception_only(type(exc), exc)
    text = "".join(lines).rstrip()
    if tb is not None:
        text = text.replace("Traceback (most recent call last):", "your code's traceback (most recent call last):", 1)
    return text


def _call_function(ds: DataSpec):
    path = ds.path.resolve()
    modname = "edgeprune_user_data_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None or spec.loader is None:
        raise BadInput(f"{ds.path} cannot be imported as Python", "give a .py file defining the function")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))  # the user's file may import its neighbours
    try:
        try:
            spec.loader.exec_module(module)
        except (KeyboardInterrupt, UserCodeError):
            raise
        except BaseException as exc:  # their code: report it as theirs, whatever it raised (SystemExit too)
            raise UserCodeError(f"importing your data file {ds.path.name} raised {type(exc).__name__}: {exc}",
                                f"fix {ds.path.name} (edgeprune imports it, then calls {ds.func}())",
                                _user_traceback(exc, path)) from None
        fn = getattr(module, ds.func, None)
        if not callable(fn):
            found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                           and getattr(v, "__module__", None) == modname)
            raise BadInput(f"{ds.path.name} has no function {ds.func!r}"
                           + (f" (it defines {', '.join(found[:6])})" if found else ""),
                           f"name it: --data {ds.path.name}:FUNCTION")
        try:
            result = fn()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            raise UserCodeError(f"your data function {ds.name} raised {type(exc).__name__}: {exc}",
                                f"fix {ds.path.name} (edgeprune calls {ds.func}() with no arguments and expects "
                                "x or (x, y))", _user_traceback(exc, path)) from None
    finally:
        try:
            sys.path.remove(str(path.parent))
        except ValueError:
            pass
    return (*_unpack(ds, result), [f"inputs and labels returned by {ds.name}(), used as they are (no scaling)"])


def _unpack(ds: DataSpec, result):
    expect = f"{ds.func}() must return x (an array of samples) or (x, y), or a dict with 'x' (and 'y')"
    if isinstance(result, dict):
        if "x" not in result:
            raise BadInput(f"{ds.name} returned a dict without 'x' (keys: {', '.join(map(str, result)) or 'none'})", expect)
        x, y = result["x"], result.get("y")
    elif isinstance(result, tuple) and len(result) == 2:
        x, y = result
    elif result is None or isinstance(result, (str, bytes, tuple)):
        raise BadInput(f"{ds.name} returned {type(result).__name__}"
                       + (f" of {len(result)} items" if isinstance(result, tuple) else ""), expect)
    else:
        x, y = result, None
    try:
        x = np.asarray(x)
        y = None if y is None else np.asarray(y)
    except (ValueError, TypeError) as exc:
        raise BadInput(f"{ds.name} returned something that is not an array: {exc}", expect) from None
    return x, y
