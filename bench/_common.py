"""Shared pieces of the benchmarks: seeded Fashion-MNIST models, cached between runs."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = Path(os.environ.get("EDGEPRUNE_BENCH_CACHE", Path.home() / ".cache" / "edgeprune-bench"))


def fashion_mnist():
    from edgeprune.pipeline.example.fashion_mnist import load_fashion_mnist

    xtr, ytr = load_fashion_mnist("train")
    xte, yte = load_fashion_mnist("test")
    f = lambda x: (x.astype("float32") / 255.0)[..., None]  # noqa: E731
    return f(xtr), ytr.astype("int64"), f(xte), yte.astype("int64")


def build(kind: str, seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    L = keras.layers
    if kind == "mlp":
        return keras.Sequential([keras.Input((28, 28, 1)), L.Flatten(), L.Dense(256, activation="relu"),
                                 L.Dense(128, activation="relu"), L.Dense(10, activation="softmax")], name="fmnist_mlp")
    if kind == "cnn":
        return keras.Sequential([keras.Input((28, 28, 1)), L.Conv2D(32, 3, activation="relu"), L.MaxPooling2D(),
                                 L.Conv2D(64, 3, activation="relu"), L.MaxPooling2D(), L.Flatten(),
                                 L.Dense(128, activation="relu"), L.Dense(10, activation="softmax")], name="fmnist_cnn_bench")
    raise ValueError(kind)


def trained(kind: str, data, *, epochs: int, seed: int = 0):
    """Train (seeded) or load the cached model; returns (model, seconds spent training)."""
    import keras

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{kind}_e{epochs}_s{seed}.keras"
    if path.exists():
        return keras.models.load_model(path, compile=False), 0.0
    xtr, ytr, _, _ = data
    model = build(kind, seed)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    t0 = time.perf_counter()
    model.fit(xtr, ytr, epochs=epochs, batch_size=128, verbose=0, shuffle=True)
    secs = time.perf_counter() - t0
    model.save(path)
    return model, secs


def accuracy(model, x, y) -> float:
    p = model.predict(x, batch_size=1024, verbose=0)
    return float((p.argmax(1) == y).mean())


def machine() -> dict:
    import tensorflow as tf

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "machine": platform.machine(),
            "cpus": os.cpu_count(), "processor": platform.processor() or "unknown"}


def write(name: str, payload: dict, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)


def unseen_agreement(tflite, x, ref_pred) -> float:
    """Top-1 agreement of a .tflite with the original model's predicted classes ``ref_pred`` on ``x``."""
    from edgeprune.pipeline.convert.fidelity import run_tflite

    out, _ = run_tflite(tflite, x)
    return float((out.reshape(len(out), -1).argmax(1) == ref_pred).mean())


def run_json(args: list, env=None) -> dict:
    """One ``edgeprune run ... --json`` in a subprocess (the real CLI): its report, exit code (0 or 3;
    anything else stops the bench), wall seconds and the 1-minute load average before it."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "edgeprune", "run", *map(str, args), "--json"]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode not in (0, 3):
        raise SystemExit(f"run failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return {"report": json.loads(p.stdout), "wall_s": round(wall, 1), "load_before": round(load, 2),
            "exit": p.returncode, "command": "edgeprune run " + " ".join(map(str, args))}


def code_version() -> str:
    """The git commit of the imported ``edgeprune`` (+ "-dirty" when its pipeline/ has uncommitted
    changes; "unknown" outside a git checkout): which code a bench row ran."""
    import subprocess

    import edgeprune

    d = Path(edgeprune.__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(d), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(d), "status", "--porcelain", "--", "pipeline"], capture_output=True,
                               text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("-dirty" if dirty else "")) if head else "unknown"


def timed_run(name: str, cmd: list, env=None) -> dict:
    """One child run of ``cmd`` (an ``edgeprune run ... --json``): its report, exit code (0 or 3;
    anything else stops the bench), wall seconds, CPU seconds (user + system, from the children's
    rusage), the peak RSS (GB of 1e9 bytes) and the 1-minute load average before it."""
    import resource
    import subprocess

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode not in (0, 3):
        raise SystemExit(f"{name} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return {"report": json.loads(p.stdout), "exit": p.returncode, "wall_s": round(wall, 1),
            "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1),
            # (the largest child waited for so far: this run's when it is the bench's only or biggest one)
            "peak_rss_gb": round(after.ru_maxrss * 1024 / 1e9, 2), "load_before": round(load, 2)}
