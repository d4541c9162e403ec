"""Benchmark: accuracy kept by each criterion, with no retraining, on Fashion-MNIST.

Trains (seeded, cached under ~/.cache/edgeprune-bench) an MLP (Flatten, Dense 256,
Dense 128, Dense 10) and a CNN (Conv 32, pool, Conv 64, pool, Dense 128, Dense 10) on the
60k training images of the Debian package ``dataset-fashion-mnist``, then prunes each at
rates 0/25/50/75 % with paoding, l1 and random, and the MLP also at the hidden widths the
published PAODING toolkit was measured at (113/51 and 191/93), and reports test accuracy
on the 10k test images, parameters and wall time per prune. Two speed rows: the whole
progressive prune of the MLP to 113/51, and one 5 % step on a Dense 2048-2048-10 MLP.

    python bench/prune_quality.py [--epochs-mlp 10 --epochs-cnn 3]

Writes bench/results/prune_quality.{json,md}.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import accuracy, build, fashion_mnist, machine, trained, write  # noqa: E402

# The bar, from the issue (PAODING toolkit on such an MLP, test accuracy 0.877, no retraining)
REFERENCE = [
    ("PAODING pair-wise (published)", "113/51", "0.65"),
    ("PAODING stochastic (published, 2 min)", "113/51", "0.75"),
    ("L1 (published comparison)", "113/51", "0.68"),
    ("PAODING (published)", "191/93", "0.82-0.83"),
    ("L1 (published comparison)", "191/93", "0.86"),
]
CRITERIA = [("paoding", {}), ("l1", {}), ("random", {"seed": 0}), ("paoding", {"alpha": 1.0, "beta": 0.0})]


def label(crit, kw):
    return crit if crit != "paoding" or not kw else f"paoding(alpha={kw['alpha']:g},beta={kw['beta']:g})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs-mlp", type=int, default=10)
    ap.add_argument("--epochs-cnn", type=int, default=3)
    ap.add_argument("--rates", default="0,0.25,0.5,0.75")
    ap.add_argument("--combos", action="store_true",
                    help="only the criterion x compensation x allocation grid (bench/results/prune_combos.md)")
    ap.add_argument("--combo-models", default="example,mlp,cnn")
    ap.add_argument("--combo-criteria", default="paoding,l1,random,flow,taylor")
    args = ap.parse_args(argv)
    if args.combos:
        return combos(args)

    from edgeprune.pipeline.prune.pruner import Pruner, PruneConfig, prune

    data = fashion_mnist()
    xte, yte = data[2], data[3]
    rows, width_rows, speed = [], [], []
    models = {}
    for kind, epochs in (("mlp", args.epochs_mlp), ("cnn", args.epochs_cnn)):
        model, train_s = trained(kind, data, epochs=epochs)
        base = accuracy(model, xte, yte)
        models[kind] = (model, base, train_s, epochs)
        print(f"{kind}: test accuracy {base:.4f} (trained {epochs} epochs, {train_s:.0f} s; 0 = cached)", flush=True)
        for crit, kw in CRITERIA:
            for rate in [float(r) for r in args.rates.split(",")]:
                r = prune(model, rate, crit, **kw)
                acc = accuracy(r.model, xte, yte)
                widths = "/".join(str(l.after) for l in r.layers if l.method and not l.method.startswith("frozen"))
                rows.append({"model": kind, "criterion": label(crit, kw), "rate": rate, "accuracy": round(acc, 4),
                             "accuracy_unpruned": round(base, 4), "params": r.params_after,
                             "params_unpruned": r.params_before, "widths": widths, "prune_seconds": round(r.seconds, 3)})
                print(rows[-1], flush=True)

    mlp, mlp_base, _, _ = models["mlp"]
    for widths in ((113, 51), (191, 93)):
        for crit, kw in CRITERIA:
            r = prune(mlp, 0.6, crit, widths={mlp.layers[1].name: widths[0], mlp.layers[2].name: widths[1]}, **kw)
            acc = accuracy(r.model, xte, yte)
            width_rows.append({"widths": f"{widths[0]}/{widths[1]}", "criterion": label(crit, kw), "accuracy": round(acc, 4),
                               "accuracy_unpruned": round(mlp_base, 4), "params": r.params_after,
                               "prune_seconds": round(r.seconds, 3)})
            print(width_rows[-1], flush=True)
            if crit == "paoding" and not kw and widths == (113, 51):
                speed.append({"what": "progressive paoding prune of the MLP 256/128 -> 113/51 (12 steps of 5%)",
                              "seconds": round(r.seconds, 3)})

    # one step on a Dense 2048 -> 2048 -> 10 MLP (untrained, seeded init: timing only)
    import keras

    keras.utils.set_random_seed(0)
    big = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(2048, activation="relu"),
                            keras.layers.Dense(2048, activation="relu"), keras.layers.Dense(10, activation="softmax")])
    for crit in ("paoding", "l1"):
        p = Pruner(big, PruneConfig(rate=0.05, criterion=crit, step=0.05))
        t0 = time.perf_counter()
        p.step_to(0.05)
        step_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        p.build()
        build_s = time.perf_counter() - t0
        speed.append({"what": f"one 5% {crit} step on Dense 784-2048-2048-10 (seeded init, timing only)",
                      "seconds": round(step_s, 3), "rebuild_seconds": round(build_s, 3)})
        print(speed[-1], flush=True)

    payload = {"machine": machine(), "training": {k: {"epochs": v[3], "test_accuracy": v[1]} for k, v in models.items()},
               "rates": rows, "published_widths": width_rows, "speed": speed, "reference_published": REFERENCE,
               "notes": "accuracy on the 10,000 Fashion-MNIST test images, no retraining or fine-tuning after pruning; "
                        "each timing is one run (wall clock, perf_counter) on this machine"}
    md = [f"# Pruning quality on Fashion-MNIST (no retraining)\n",
          f"Machine: {payload['machine']}. One run per row; accuracy on the 10k test split.\n",
          "## Rates (per-layer uniform)\n", "| model | criterion | rate | accuracy | unpruned | params | widths | prune s |",
          "|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['model']} | {r['criterion']} | {r['rate']:.2f} | {r['accuracy']:.4f} | {r['accuracy_unpruned']:.4f} | "
           f"{r['params']:,} | {r['widths']} | {r['prune_seconds']:.2f} |" for r in rows]
    md += ["\n## MLP at the widths the published PAODING toolkit was measured at\n",
           "| widths | criterion | accuracy | unpruned | params | prune s |", "|---|---|---|---|---|---|"]
    md += [f"| {r['widths']} | {r['criterion']} | {r['accuracy']:.4f} | {r['accuracy_unpruned']:.4f} | {r['params']:,} | "
           f"{r['prune_seconds']:.2f} |" for r in width_rows]
    md += ["\nPublished bar (from the issue; their MLP's unpruned accuracy 0.877):\n", "| method | widths | accuracy |", "|---|---|---|"]
    md += [f"| {a} | {b} | {c} |" for a, b, c in REFERENCE]
    md += ["\n## Speed\n", "| what | seconds |", "|---|---|"]
    md += [f"| {s['what']} | {s['seconds']:.3f} |" for s in speed]
    write("prune_quality", payload, "\n".join(md) + "\n")
    print("wrote bench/results/prune_quality.{json,md}")
    return 0


def combos(args) -> int:
    """Every combination (criterion x compensation x allocation) at the same sizes."""
    import numpy as np

    from _combos import combo_markdown, combo_rows

    from edgeprune.pipeline.example import example_data_path, example_model_path
    from edgeprune.pipeline.data.loading import load_model

    wanted = args.combo_models.split(",")
    models = {}
    if "example" in wanted:
        d = np.load(example_data_path())
        x = d["x"].astype("float32")
        x = x[..., None] if x.ndim == 3 else x
        cal = np.arange(len(x))[::5]
        rest = np.setdiff1d(np.arange(len(x)), cal)
        models["example"] = (load_model(example_model_path()), x[cal], x[rest], d["y"][rest] if "y" in d else None)
    data = fashion_mnist()
    for kind, epochs in (("mlp", args.epochs_mlp), ("cnn", args.epochs_cnn)):
        if kind in wanted:
            m, _ = trained(kind, data, epochs=epochs)
            models[kind] = (m, data[0][:200], data[2][:2000], data[3][:2000])
    models = {k: models[k] for k in wanted if k in models}
    rows = combo_rows(models, criteria=args.combo_criteria.split(","), log=lambda r: print(r, flush=True))
    payload = {"machine": machine(), "rows": rows,
               "notes": "Keras float models; agreement = top-1 agreement with the unpruned model on evaluation images "
                        "never used for calibration (example: its 800 non-calibration images; mlp/cnn: the first 2,000 "
                        "test images, calibration 200 training images); progressive 5% steps; one run per row"}
    md = ["# Every combination: criterion x compensation x allocation (no retraining)\n",
          f"Machine: {payload['machine']}. One run per row. {payload['notes']}. `agr @N%` = agreement at the first "
          "step with at least N% of the parameters removed (the same sizes for every row; `-` = the run stopped "
          "before, agreement already 0.03 under 0.95). Uniform: the rate is the fraction of each layer's channels; "
          "global: the fraction of the prunable parameters.\n"]
    md += combo_markdown(rows)
    write("prune_combos", payload, "\n".join(md) + "\n")
    print("wrote bench/results/prune_combos.{json,md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
