"""The bundled example: a Fashion-MNIST CNN and 1,000 labelled test images.

Files (package data, written by ``python -m edgeprune.pipeline.example.train``):
``fmnist_cnn.keras`` (input 28x28x1 float32 in [0, 1], 10 classes),
``fmnist_test_1000.npz`` (``x`` uint8 (1000, 28, 28, 1), ``y`` uint8, ``input_scale`` =
1/255: the model's input is ``x * input_scale``; :func:`edgeprune.pipeline.data.eval_data.load_eval_data`
applies it), and ``example.json`` (training facts and test accuracy).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MODEL_FILE = "fmnist_cnn.keras"
DATA_FILE = "fmnist_test_1000.npz"
META_FILE = "example.json"


def _existing(name: str) -> Path:
    path = HERE / name
    if not path.is_file():
        from edgeprune.errors import BadInput

        raise BadInput(
            f"the bundled example file {name} is missing from {HERE}",
            "reinstall edgeprune, or regenerate it: python -m edgeprune.pipeline.example.train",
        )
    return path


def example_model_path() -> Path:
    """Path of the bundled Keras model (``fmnist_cnn.keras``)."""
    return _existing(MODEL_FILE)


def example_data_path() -> Path:
    """Path of the bundled labelled test subset (``fmnist_test_1000.npz``)."""
    return _existing(DATA_FILE)


def example_metadata() -> dict[str, Any]:
    """The example's metadata (``example.json``): input range, preprocessing, accuracy, seed..."""
    return json.loads(_existing(META_FILE).read_text())
