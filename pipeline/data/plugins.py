"""``--plugin FILE.py`` (repeatable; also ``$EDGEPRUNE_PLUGINS``): the user's own Python, imported
before the model is loaded.

A model with a layer class of the user's own can neither be loaded (Keras needs the class) nor
pruned (edgeprune needs its handler) from the command line without it. A plugin file registers
both, the way the Python API would::

    import keras, edgeprune

    @keras.saving.register_keras_serializable(package="mine")
    class ScaledDense(keras.layers.Layer): ...

    edgeprune.register_handler(ScaledDense, ScaledDenseHandler())

Each file is imported once per process, under its own module name; conversion workers import
the same files (pipeline/convert/convert_pool.py). A file that is missing, not ``.py`` or that
raises on import is bad input (exit 2) naming the file and what it raised. The run's fingerprint
holds each plugin's sha256, so ``--resume`` and the work cache never mix runs made with different
plugin code.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Iterable, Optional

from edgeprune.errors import BadInput

ENV = "EDGEPRUNE_PLUGINS"
_LOADED: dict[str, str] = {}  # resolved path -> sha256 of the file, in load order


def plugin_paths(given: Optional[Iterable] = None, env: Optional[dict] = None) -> list[Path]:
    """``--plugin`` values first, then the ``$EDGEPRUNE_PLUGINS`` entries (``os.pathsep``-separated)."""
    paths = [Path(p).expanduser() for p in (given or ())]
    text = (env if env is not None else os.environ).get(ENV, "")
    paths += [Path(p.strip()).expanduser() for p in text.split(os.pathsep) if p.strip()]
    return paths


def load_plugins(paths: Iterable) -> dict[str, str]:
    """Import each plugin file (once per process); return {file name: sha256} of the given ones."""
    done: dict[str, str] = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise BadInput(f"--plugin {path}: " + ("is not a file" if path.exists() else "file does not exist"),
                           "give the path of a Python file (.py) that registers your layers and handlers")
        if path.suffix != ".py":
            raise BadInput(f"--plugin {path}: not a Python file (.py)", "give the path of a .py file")
        key = str(path.resolve())
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        if key not in _LOADED:
            _import(path, f"edgeprune_plugin_{len(_LOADED)}_{_identifier(path.stem)}")
            _LOADED[key] = sha
        done[path.name] = _LOADED[key]
    return done


def loaded() -> list[str]:
    """The plugin files this process imported, in order (what conversion workers import too)."""
    return list(_LOADED)


def _identifier(stem: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in stem)


def _import(path: Path, name: str) -> None:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise BadInput(f"--plugin {path}: cannot be imported as a Python module", "give the path of a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:  # the user's code: whatever it raises (SystemExit too) is named, never a traceback
        sys.modules.pop(name, None)
        if isinstance(exc, KeyboardInterrupt):
            raise
        line = _line_in(exc, path)
        raise BadInput(f"--plugin {path} failed on import{line}: {type(exc).__name__}: {exc}",
                       "fix the plugin: it is imported before the model is loaded") from None


def _line_in(exc: BaseException, path: Path) -> str:
    """`` (line N)``: the plugin's own line the exception came from, when the traceback names it."""
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f" (line {exc.lineno})"
    tb, line = exc.__traceback__, None
    while tb is not None:
        if os.path.abspath(tb.tb_frame.f_code.co_filename) == os.path.abspath(path):
            line = tb.tb_lineno
        tb = tb.tb_next
    return f" (line {line})" if line else ""
