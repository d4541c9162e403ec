"""No traceback, ever: stages name themselves, and an unexpected exception becomes a crash report.

* :class:`stage` marks what edgeprune is doing (``load``, ``prune``, ``convert``, ``fidelity``,
  ``device``) and on what (the file, the layer, the device): a context manager, or a decorator
  whose ``what`` names the argument to report. An exception that is not one of edgeprune's own
  (``EdgepruneError``: the user's to fix, already with a message and a fix) is tagged with the
  INNERMOST stage it passed through.
* :func:`report_crash` (called by the CLI's entry point for any such exception) writes a crash
  report file (the command, the stage, versions, the traceback) and returns its path; the
  screen gets one ``error:`` line naming the stage and what was involved, a ``fix:`` line with
  the report's path, and exit code 1, which is reserved for this.

Crash reports go to ``$EDGEPRUNE_CRASH_DIR``, else ``$XDG_CACHE_HOME/edgeprune/crashes`` (default
``~/.cache/edgeprune/crashes``), else the system temp dir. They hold no environment variables
and no file contents: the command line, versions and the traceback only.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Optional, Union

from edgeprune.errors import EdgepruneError

EXIT_CRASH = 1
_ATTR = "_edgeprune_stage"
VERSIONED = ("tensorflow", "keras", "ai-edge-litert", "tflite-micro", "numpy", "paramiko", "typer", "labgrid")


class stage(contextlib.ContextDecorator):
    """``with stage("convert", "model fmnist_cnn"):`` or ``@stage("load", what="path")``."""

    def __init__(self, name: str, what: Union[str, Callable, None] = None):
        self.name = name
        self.what = what

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is not None:
            tag(exc, self.name, self.what if isinstance(self.what, str) or self.what is None else None)
        return False

    def __call__(self, fn):
        if self.what is None or (isinstance(self.what, str) and not _is_param(fn, self.what)):
            return super().__call__(fn)
        sig = inspect.signature(fn)
        what = self.what

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except BaseException as exc:
                detail = None
                try:
                    bound = sig.bind_partial(*args, **kwargs)
                    detail = what(**bound.arguments) if callable(what) else bound.arguments.get(what)
                    detail = _describe(detail)
                except Exception:
                    pass
                tag(exc, self.name, detail)
                raise

        return wrapper


def _is_param(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _describe(obj) -> Optional[str]:
    if obj is None:
        return None
    if isinstance(obj, (str, os.PathLike)):
        return f"file {os.fspath(obj)}"
    name = getattr(obj, "name", None)
    if isinstance(name, str):  # a Keras model or layer, a device profile
        return f"{type(obj).__name__} {name!r}"
    return str(obj)[:200]


def tag(exc: BaseException, name: str, what: Optional[str]) -> None:
    """Tag ``exc`` with the innermost stage (the first to see it); edgeprune's own errors and
    interrupts are not crashes and stay untagged."""
    if isinstance(exc, (EdgepruneError, KeyboardInterrupt, SystemExit, GeneratorExit)):
        return
    if getattr(exc, _ATTR, None) is None:
        try:
            setattr(exc, _ATTR, (name, what))
        except (AttributeError, TypeError):
            pass


def stage_of(exc: BaseException) -> tuple[Optional[str], Optional[str]]:
    return getattr(exc, _ATTR, None) or (None, None)


def crash_dir() -> Path:
    env = os.environ.get("EDGEPRUNE_CRASH_DIR")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "edgeprune" / "crashes"


def _versions() -> list[str]:
    from importlib import metadata

    out = [f"python {platform.python_version()} ({sys.executable})", f"platform {platform.platform()}"]
    for dist in ("edgeprune", *VERSIONED):
        try:
            out.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            out.append(f"{dist} (not installed)")
    return out


def report_crash(exc: BaseException, argv: list[str]) -> Optional[Path]:
    """Write the crash report for ``exc`` and return its path (None if no folder was writable)."""
    name, what = stage_of(exc)
    text = "\n".join([
        "edgeprune crash report",
        f"time: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}",
        "command: edgeprune " + " ".join(argv),
        f"cwd: {os.getcwd()}",
        f"stage: {name or 'unknown'}" + (f" ({what})" if what else ""),
        f"exception: {type(exc).__module__}.{type(exc).__qualname__}: {exc}",
        "",
        "versions:",
        *("  " + v for v in _versions()),
        "",
        "traceback:",
        "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    ])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for folder in (crash_dir(), Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"edgeprune-crash-{stamp}-{os.getpid()}.txt"
            path.write_text(text)
            return path
        except OSError:
            continue
    return None


def crash_lines(exc: BaseException, path: Optional[Path]) -> tuple[str, str]:
    """The ``error:`` and ``fix:`` lines for a crash."""
    name, what = stage_of(exc)
    where = f" while {_GERUND.get(name, name)}" if name else ""
    if what:
        where += f" ({what})"
    msg = " ".join(str(exc).split())
    if len(msg) > 300:
        msg = msg[:297] + "..."
    error = f"internal error{where}: {type(exc).__name__}: {msg}" if msg else f"internal error{where}: {type(exc).__name__}"
    if path is not None:
        fix = (f"this is a bug in edgeprune, not a mistake in your input; nothing of yours was changed. Please report it "
               f"with the crash report {path} (the command, versions and traceback)")
    else:
        fix = "this is a bug in edgeprune; no crash report could be written (no writable folder): set EDGEPRUNE_CRASH_DIR"
    if name in ("prune", "convert"):
        fix += "; meanwhile, another --criterion, --quantize float32, or a lower --max-rate may avoid it"
    return error, fix


_GERUND = {"load": "loading the model", "data": "reading the data", "prune": "pruning", "convert": "converting",
           "fidelity": "measuring fidelity", "device": "measuring on the device", "report": "writing the report"}
