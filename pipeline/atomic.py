"""The one way edgeprune writes a file: a temporary file in the same folder, fsync, rename.

A reader (or a ``--resume`` after a kill) sees the old file or the whole new one, never half.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def replace_atomic(path, write: Callable[[str], None], *, suffix: str = ".tmp") -> None:
    """Create ``path`` atomically: ``write(tmp_path)`` fills a temporary file next to it, which
    is then fsynced and renamed over ``path``. The temporary file never outlives a failure.
    ``suffix`` ends the temporary file's name (a writer that needs one: Keras wants ``.keras``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.resolve().parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path, data: bytes) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    replace_atomic(path, write)


def write_text_atomic(path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path, data) -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=1, sort_keys=False) + "\n").encode())


def copy_atomic(src, dst) -> None:
    replace_atomic(dst, lambda tmp: shutil.copyfile(src, tmp))
