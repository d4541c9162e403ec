"""Train the bundled example: a Fashion-MNIST CNN (seeded, a few minutes on 2 CPU cores).

    python -m edgeprune.pipeline.example.train [--epochs 6] [--seed 0] [--out-dir DIR]

Reads Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` and writes, next to
this file by default:

- ``fmnist_cnn.keras``: Conv2D(32) -> MaxPool -> Conv2D(64) -> MaxPool -> Flatten(7x7x64)
  -> Dense(256) -> Dense(10, softmax); input 28x28x1 float32 in [0, 1]; ~824 k params, so
  its float32 .tflite is ~3.3 MB and a 2 MB budget forces real pruning. Only standard
  layers (no Rescaling, no Dropout) so the pruning engine sees a plain graph.
- ``fmnist_test_1000.npz``: the first 1,000 images of the official test split, ``x`` uint8
  (1000, 28, 28, 1), ``y`` uint8 (1000,), and ``input_scale`` = 1/255: the model's input
  is ``x * input_scale`` (``load_eval_data`` applies a scale the file itself declares; it
  never rescales uint8 data silently).
- ``example.json``: how it was trained and how well it does (seed, epochs, test accuracy
  on the full 10,000 test images and on the shipped 1,000, training seconds, versions,
  and the float32/int8 .tflite sizes and accuracies measured with ai-edge-litert).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

HERE = Path(__file__).resolve().parent
MODEL_FILE = "fmnist_cnn.keras"
DATA_FILE = "fmnist_test_1000.npz"
META_FILE = "example.json"
INPUT_SCALE = 1.0 / 255.0
N_TEST_SUBSET = 1000


def build_model():
    import keras
    from keras import layers

    inputs = keras.Input(shape=(28, 28, 1), name="image")
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(256, activation="relu", name="fc1")(x)
    outputs = layers.Dense(10, activation="softmax", name="logits")(x)
    return keras.Model(inputs, outputs, name="fmnist_cnn")


def train(epochs: int = 6, seed: int = 0, batch_size: int = 128, out_dir: Path = HERE) -> dict:
    import keras
    import tensorflow as tf

    from edgeprune.pipeline.example.fashion_mnist import CLASS_NAMES, load_fashion_mnist

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()

    x_train_u8, y_train = load_fashion_mnist("train")
    x_test_u8, y_test = load_fashion_mnist("test")
    x_train = (x_train_u8[..., None].astype(np.float32)) * np.float32(INPUT_SCALE)
    x_test = (x_test_u8[..., None].astype(np.float32)) * np.float32(INPUT_SCALE)

    model = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    t0 = time.perf_counter()
    model.fit(x_train, y_train.astype(np.int32), epochs=epochs, batch_size=batch_size, shuffle=True, verbose=2)
    train_seconds = time.perf_counter() - t0

    probs = model.predict(x_test, batch_size=500, verbose=0)
    pred = probs.argmax(axis=1)
    acc_full = float((pred == y_test).mean())
    acc_subset = float((pred[:N_TEST_SUBSET] == y_test[:N_TEST_SUBSET]).mean())

    # Ship the weights without the optimizer state (a fresh, uncompiled copy).
    export = build_model()
    export.set_weights(model.get_weights())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    export.save(out_dir / MODEL_FILE)
    np.savez_compressed(
        out_dir / DATA_FILE,
        x=x_test_u8[:N_TEST_SUBSET, :, :, None],
        y=y_test[:N_TEST_SUBSET],
        input_scale=np.float32(INPUT_SCALE),
    )
    meta = {
        "name": "fmnist_cnn",
        "description": "Fashion-MNIST CNN: Conv2D(32)-MaxPool-Conv2D(64)-MaxPool-Flatten-Dense(256)-Dense(10, softmax)",
        "model_file": MODEL_FILE,
        "data_file": DATA_FILE,
        "input_shape": [28, 28, 1],
        "input_dtype": "float32",
        "input_range": [0.0, 1.0],
        "input_scale": INPUT_SCALE,
        "preprocessing": "model input = uint8 pixel * input_scale (= x / 255); the .npz stores uint8 x and its input_scale",
        "classes": list(CLASS_NAMES),
        "params": int(export.count_params()),
        "test_accuracy": round(acc_full, 4),
        "test_subset_accuracy": round(acc_subset, 4),
        "test_subset": f"first {N_TEST_SUBSET} images of the official test split (t10k)",
        "seed": seed,
        "training": {
            "data": "Fashion-MNIST train split (60,000 images) from Debian package dataset-fashion-mnist",
            "epochs": epochs,
            "batch_size": batch_size,
            "optimizer": "Adam(lr=1e-3)",
            "loss": "sparse_categorical_crossentropy",
            "seconds": round(train_seconds, 1),
            "command": f"python -m edgeprune.pipeline.example.train --epochs {epochs} --seed {seed}",
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
    }
    meta["tflite"] = describe_tflite(out_dir, seed)
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def describe_tflite(out_dir: Path = HERE, seed: int = 0) -> dict:
    """Convert the saved example to float32 and int8 TFLite and measure both on the shipped
    test subset with ai-edge-litert (int8 calibrated on 200 seeded training images)."""
    from edgeprune.pipeline.convert.converter import ConvertConfig, convert
    from edgeprune.pipeline.data.eval_data import load_eval_data
    from edgeprune.pipeline.example.fashion_mnist import load_fashion_mnist
    from edgeprune.pipeline.convert.fidelity import evaluate, keras_outputs
    from edgeprune.pipeline.data.loading import load_model

    model = load_model(Path(out_dir) / MODEL_FILE)
    data = load_eval_data(Path(out_dir) / DATA_FILE, model)
    reference = keras_outputs(model, data.x)
    x_train, _ = load_fashion_mnist("train")
    idx = np.sort(np.random.default_rng(seed).choice(len(x_train), 200, replace=False))
    calibration = x_train[idx][..., None].astype(np.float32) * np.float32(INPUT_SCALE)
    facts: dict = {"calibration": "int8: 200 seeded training images"}
    for mode, cal in (("float32", None), ("int8", calibration)):
        result = convert(model, ConvertConfig(quantize=mode, calibration=cal))
        fid = evaluate(result.tflite, reference, data)
        facts[mode] = {
            "size_bytes": result.size_bytes,
            "ops": result.ops,
            "test_subset_accuracy": round(float(fid.accuracy), 4),
            "keras_test_subset_accuracy": round(float(fid.reference_accuracy), 4),
            "top1_agreement": round(float(fid.agreement), 4),
        }
    return facts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out-dir", type=Path, default=HERE)
    parser.add_argument("--describe-only", action="store_true", help="Only refresh the tflite facts in example.json.")
    args = parser.parse_args(argv)
    if args.describe_only:
        path = args.out_dir / META_FILE
        meta = json.loads(path.read_text())
        meta["tflite"] = describe_tflite(args.out_dir, meta.get("seed", args.seed))
        path.write_text(json.dumps(meta, indent=2) + "\n")
        print(json.dumps(meta["tflite"]))
        return
    meta = train(args.epochs, args.seed, args.batch_size, args.out_dir)
    print(json.dumps({k: meta[k] for k in ("params", "test_accuracy", "test_subset_accuracy")} | {"seconds": meta["training"]["seconds"]}))


if __name__ == "__main__":
    main()
