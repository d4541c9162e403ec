"""Loading Keras models (``.keras`` and Keras 2/3 ``.h5``) with clear errors."""
from __future__ import annotations

import zipfile
from pathlib import Path

from edgeprune.crash import stage
from edgeprune.errors import BadInput, UnsupportedModel

SUFFIXES = (".keras", ".h5", ".hdf5")


@stage("load", what="path")
def load_model(path: str | Path):
    """Load a Sequential or functional Keras model for inference (``compile=False``).

    Keras 2 ``.h5`` files whose layer configs carry keys Keras 3 refuses (such as
    ``DepthwiseConv2D(groups=1)``) are loaded through tolerant layer classes and then
    rebuilt with the standard classes. Raises :class:`BadInput` naming the problem.
    """
    import keras

    from edgeprune.pipeline.data import _keras_compat as compat

    path = Path(path)
    if not path.exists():
        raise BadInput(f"model file {path} does not exist", "check the path (a .keras or .h5 Keras model)")
    if path.is_dir():
        raise BadInput(
            f"{path} is a folder, not a Keras model file",
            "export a .keras file (model.save('model.keras')); SavedModel folders are not supported",
        )
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise BadInput(f"{path.name}: unsupported model format {suffix or '(no suffix)'}", "give a .keras or .h5 file")
    if path.stat().st_size == 0:
        raise BadInput(f"model file {path} is empty", "re-export the model")
    if suffix == ".keras" and not zipfile.is_zipfile(path):
        raise BadInput(f"{path} is not a valid .keras file (not a zip archive): corrupt or truncated", "re-export the model")
    if suffix in (".h5", ".hdf5"):
        _check_hdf5(path)

    custom: dict = {}
    for _ in range(4):
        try:
            model = keras.models.load_model(path, compile=False, custom_objects=custom or None, safe_mode=True)
            break
        except compat.LegacyConfigError as exc:  # a Keras 2 key whose value changes the computation
            config = _model_config(path)
            names = compat.layers_with_key(config, exc.cls, exc.key) if config else []
            where = f" (layer {', '.join(repr(n) for n in names)})" if names else ""
            raise UnsupportedModel(f"{path.name}: {exc}{where}",
                                   "re-save the model with Keras 3 or without that option") from None
        except (TypeError, ValueError) as exc:  # Keras raises either for an unknown config key
            found = compat.parse_unrecognized(exc)
            if found and not custom:
                custom = compat.legacy_custom_objects()
                continue
            if found:
                raise _unknown_keys(path, *found) from None
            raise _explain(path, exc) from None
        except Exception as exc:  # keras raises many kinds; each becomes one clear message
            raise _explain(path, exc) from None
    else:  # pragma: no cover - the loop always breaks or raises
        raise BadInput(f"could not load {path}")

    check_supported(model, path.name)
    if compat.has_legacy_layers(model):
        model = compat.to_standard_classes(model)
    return model


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``"1,5000,4"`` -> (1, 5000, 4): the model input's full shape, batch first."""
    parts = [p.strip() for p in str(text).replace("x", ",").split(",") if p.strip()]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) < 2 or any(d < 1 for d in dims):
        raise BadInput(f"--input-shape {text!r} is not a shape", "give positive integers, batch first, e.g. --input-shape 1,5000,4")
    return dims


def with_input_shape(model, shape: tuple[int, ...]):
    """``model`` rebuilt on a fixed input shape (batch first; the batch stays variable in
    the Keras model, the converter uses ``shape[0]``). Known dimensions must match; the
    variable (None) ones take the given sizes. Same weights, same computation."""
    import keras

    if len(model.inputs) != 1:
        raise BadInput(f"--input-shape is for single-input models; this one has {len(model.inputs)} inputs")
    declared = tuple(model.inputs[0].shape)
    if len(shape) != len(declared):
        raise BadInput(
            f"--input-shape {','.join(map(str, shape))} has {len(shape)} dimensions, the model's input "
            f"{_fmt_shape(declared)} has {len(declared)}",
            f"give {len(declared)} numbers, batch first, e.g. {_example(declared)}",
        )
    clash = [i for i, (d, s) in enumerate(zip(declared[1:], shape[1:]), start=1) if d is not None and d != s]
    if clash:
        raise BadInput(
            f"--input-shape {','.join(map(str, shape))} changes fixed dimension(s) of the model's input {_fmt_shape(declared)}",
            f"only the variable (None) dimensions can be set, e.g. {_example(declared)}",
        )
    if all(d is not None for d in declared[1:]):
        return model
    inp = keras.Input(shape=tuple(shape[1:]), dtype=model.inputs[0].dtype, name=model.inputs[0].name)
    try:
        new = keras.models.clone_model(model, input_tensors=inp)
        new.set_weights(model.get_weights())
    except Exception as exc:  # e.g. a Flatten/Reshape that cannot take this length
        raise BadInput(f"the model does not build on input shape {shape}: {type(exc).__name__}: {str(exc)[:300]}",
                       "check the sizes of the variable dimensions") from None
    return new


def _fmt_shape(shape) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def _example(declared) -> str:
    return "--input-shape " + ",".join(["1"] + [str(d) if d is not None else "500" for d in declared[1:]])


def check_supported(model, label: str = "model") -> None:
    """Reject subclassed models: their computation is Python code, not a graph."""
    import keras

    if not isinstance(model, keras.Model):
        raise UnsupportedModel(f"{label}: not a Keras model (got {type(model).__name__})")
    if type(model).__name__ not in ("Functional", "Sequential") and not isinstance(
        model, (keras.Sequential,)
    ):
        try:
            from keras.src.models.functional import Functional  # noqa: PLC0415
        except Exception:  # pragma: no cover
            Functional = ()  # type: ignore[assignment]
        if not (Functional and isinstance(model, Functional)):
            raise UnsupportedModel(
                f"{label}: subclassed model {type(model).__name__} has no inspectable graph",
                "rebuild it as a Sequential or functional keras.Model (keras.Model(inputs, outputs))",
            )
    if not model.built or not model.inputs:
        raise UnsupportedModel(f"{label}: the model is not built (no input shape)", "build it with an Input layer")


def _check_hdf5(path: Path) -> None:
    with open(path, "rb") as fh:
        magic = fh.read(8)
    if magic != b"\x89HDF\r\n\x1a\n":
        raise BadInput(f"{path} is not an HDF5 file: corrupt, truncated or mislabelled", "re-export the model")
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "model_config" not in f.attrs:
                raise BadInput(
                    f"{path.name} holds weights only (no model_config)",
                    "save the whole model (model.save), not model.save_weights",
                )
    except OSError as exc:
        raise BadInput(f"{path} cannot be read as HDF5: {exc}", "re-export the model") from None


def _model_config(path: Path):
    import json

    try:
        if path.suffix.lower() == ".keras":
            with zipfile.ZipFile(path) as z:
                return json.loads(z.read("config.json"))
        import h5py

        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
            return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except Exception:  # noqa: BLE001 - only used to name the layer in an error message
        return None


def _unknown_keys(path: Path, cls: str, kwargs_text: str) -> UnsupportedModel:
    """A layer config key Keras 3 does not know (and edgeprune cannot drop exactly):
    name the key(s), the class and the layers that carry them."""
    import ast

    from edgeprune.pipeline.data import _keras_compat as compat

    try:
        keys = list(ast.literal_eval(kwargs_text))
    except (ValueError, SyntaxError):
        keys = [kwargs_text]
    config = _model_config(path)
    names = sorted({n for k in keys for n in compat.layers_with_key(config, cls, k)}) if config else []
    where = f"layer {', '.join(repr(n) for n in names)} ({cls})" if names else f"a {cls} layer"
    return UnsupportedModel(
        f"{path.name}: {where} has the Keras 2 option(s) {', '.join(map(str, keys))}, which Keras 3 does not know "
        "and edgeprune cannot drop without changing the computation",
        "re-save the model with Keras 3 (keras.models.load_model in Keras 2, then model.save('model.keras') "
        "with a Keras 3 install), or remove the option from that layer's config",
    )


def _explain(path: Path, exc: Exception) -> BadInput:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "Could not locate class" in str(exc) or "Unknown layer" in str(exc):
        import re

        cls = re.search(r"Could not locate class '([^']+)'", str(exc))
        reg = re.search(r"'registered_name': '([^']+)'", str(exc)[cls.end():] if cls else "")
        what = (f"layer class {cls.group(1)!r}" + (f" (registered as {reg.group(1)!r})" if reg else "")
                + ", a custom or subclassed class Keras cannot rebuild without its code") if cls else \
            f"a custom or subclassed layer/model Keras cannot rebuild ({text[:300]})"
        return UnsupportedModel(
            f"{path.name}: uses {what}",
            "pass --plugin FILE.py that defines the class with @keras.saving.register_keras_serializable (and its "
            "handler, edgeprune.register_handler, to prune it), or rebuild the model from standard layers",
        )
    return BadInput(f"could not load {path.name}: {type(exc).__name__}: {text[:400]}", "check that the file is a Keras model")
