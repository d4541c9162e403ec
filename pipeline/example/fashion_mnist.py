"""Read Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (IDX files, gzip).

``load_fashion_mnist("train")`` -> ``(x uint8 (60000, 28, 28), y uint8 (60000,))``;
``load_fashion_mnist("test")`` -> 10,000 images. No network access is ever attempted.
"""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from edgeprune.errors import BadInput

DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "EDGEPRUNE_FASHION_MNIST_DIR"
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_PREFIX = {"train": "train", "test": "t10k", "t10k": "t10k"}


def data_dir() -> Path:
    """The folder holding the IDX files (``$EDGEPRUNE_FASHION_MNIST_DIR`` overrides the default)."""
    return Path(os.environ.get(ENV_VAR) or DEFAULT_DIR)


def _read_idx(path: Path, expected_ndim: int) -> np.ndarray:
    if not path.exists():
        raise BadInput(
            f"Fashion-MNIST file {path} is missing",
            f"install the Debian package: sudo apt-get install {DEBIAN_PACKAGE} "
            f"(or point ${ENV_VAR} at a folder with the four *-ubyte.gz files)",
        )
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise BadInput(f"{path} cannot be read: {exc}", f"reinstall {DEBIAN_PACKAGE}") from None
    if len(raw) < 4:
        raise BadInput(f"{path} is truncated (no IDX header)", f"reinstall {DEBIAN_PACKAGE}")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or ndim != expected_ndim:
        raise BadInput(f"{path} is not an unsigned-byte IDX file with {expected_ndim} dims", f"reinstall {DEBIAN_PACKAGE}")
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise BadInput(f"{path} is truncated: {body.size} bytes for shape {dims}", f"reinstall {DEBIAN_PACKAGE}")
    return body.reshape(dims).copy()


def load_fashion_mnist(split: str = "train", directory: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images uint8 (N, 28, 28), labels uint8 (N,))`` for ``split`` "train" or "test"."""
    if split not in _PREFIX:
        raise BadInput(f"unknown Fashion-MNIST split {split!r}", "use 'train' or 'test'")
    folder = Path(directory) if directory is not None else data_dir()
    prefix = _PREFIX[split]
    x = _read_idx(folder / f"{prefix}-images-idx3-ubyte.gz", 3)
    y = _read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", 1)
    if len(x) != len(y):
        raise BadInput(f"Fashion-MNIST {split}: {len(x)} images but {len(y)} labels", f"reinstall {DEBIAN_PACKAGE}")
    return x, y
