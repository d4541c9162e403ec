"""Small .tflite files for the device tests, built with tf.lite.TFLiteConverter directly."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build(kind: str, path: Path) -> Path:
    """kind 'small' (~0.4 ms, 64x64x3 convs) or 'big' (~5-10 ms per inference on one x86 core)."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    if kind == "small":
        inp = tf.keras.Input((64, 64, 3))
        x = tf.keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inp)
        x = tf.keras.layers.DepthwiseConv2D(3, padding="same")(x)
        x = tf.keras.layers.MaxPooling2D()(x)
    else:
        inp = tf.keras.Input((128, 128, 16))
        x = tf.keras.layers.Conv2D(64, 3, padding="same", activation="relu")(inp)
        x = tf.keras.layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    out = tf.keras.layers.Dense(10)(x)
    model = tf.keras.Model(inp, out)
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return path
