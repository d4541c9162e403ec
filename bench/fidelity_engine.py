"""Benchmark: how far each criterion x compensation combination prunes at a fixed fidelity.

For the bundled example (Fashion-MNIST CNN, its 1,000 images: every 5th held out as the
calibration split, the other 800 for evaluation, as ``edgeprune run`` splits them) and the
bench MLP and CNN of bench/prune_quality.py (calibration: 200 TRAINING images; evaluation:
the first 2,000 test images), every combination prunes progressively in 5 % steps
(per-layer uniform widths) and each step's Keras float model is compared with the unpruned
one: top-1 agreement on the evaluation images. Reported: agreement at equal sizes (rates
0.3/0.5/0.7), the largest rate (and % of parameters removed) with agreement >= 0.95, and the
mean seconds per step (criterion + compensation + rebuild). No retraining. One run per row.

    python bench/fidelity_engine.py

Writes bench/results/fidelity_engine.{json,md}.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import fashion_mnist, machine, trained, write  # noqa: E402

COMBOS = [("paoding", False), ("l1", False), ("flow", False), ("taylor", False),
          ("paoding", True), ("l1", True), ("flow", True), ("taylor", True)]
SHOW = (0.3, 0.5, 0.7)
THRESHOLD = 0.95


def main(argv=None) -> int:
    import numpy as np

    from edgeprune.pipeline.prune.calib import outputs
    from edgeprune.pipeline.example import example_data_path, example_model_path
    from edgeprune.pipeline.data.loading import load_model
    from edgeprune.pipeline.prune.pruner import PruneConfig, Pruner

    models = {}
    ex = load_model(example_model_path())
    d = np.load(example_data_path())
    x = d["x"].astype("float32")
    x = x[..., None] if x.ndim == 3 else x
    cal = np.arange(len(x))[::5]
    models["example"] = (ex, x[cal], x[np.setdiff1d(np.arange(len(x)), cal)])
    data = fashion_mnist()
    for kind, epochs in (("mlp", 10), ("cnn", 3)):
        m, _ = trained(kind, data, epochs=epochs)
        models[kind] = (m, data[0][:200], data[2][:2000])

    rows = []
    for key, (model, xc, xe) in models.items():
        ref = outputs(model, xe).argmax(1)
        p0 = model.count_params()
        for crit, comp in COMBOS:
            p = Pruner(model, PruneConfig(rate=0.9, criterion=crit, step=0.05, calibration=xc, compensate=comp))
            at, best, secs, steps = {}, (0.0, 0.0, 1.0), 0.0, 0
            for k in range(1, 19):
                r = round(0.05 * k, 2)
                t0 = time.perf_counter()
                p.step_to(r)
                km = p.build()
                secs += time.perf_counter() - t0
                steps += 1
                ag = float((outputs(km, xe).argmax(1) == ref).mean())
                if r in SHOW:
                    at[r] = ag
                if ag >= THRESHOLD:
                    best = (r, 1 - km.count_params() / p0, ag)
                elif r >= max(SHOW) or r > best[0] + 0.1:
                    break
            rows.append({"model": key, "criterion": crit, "compensate": comp, "agreement_at": at,
                         "best_rate": best[0], "params_removed": round(best[1], 4), "agreement_best": round(best[2], 4),
                         "seconds_per_step": round(secs / steps, 3)})
            print(rows[-1], flush=True)
    payload = {"machine": machine(), "threshold": THRESHOLD, "rows": rows,
               "notes": "Keras float models, top-1 agreement with the unpruned model on evaluation images never used "
                        "for calibration; progressive 5% steps, per-layer uniform widths; one run per row"}
    md = ["# Fidelity engine: criterion x compensation (no retraining)\n",
          f"Machine: {payload['machine']}. One run per row. Agreement = top-1 agreement of the pruned Keras float "
          "model with the unpruned one on evaluation images (example: its 800 non-calibration images; mlp/cnn: "
          "2,000 Fashion-MNIST test images); calibration: example every 5th image (200), mlp/cnn 200 training "
          "images. `max rate` = largest 5%-step rate with agreement >= 0.95 (pruning stops after the first "
          "miss: a step is tried at most 0.10 past the last passing rate), `removed` = share of the parameters removed there.\n",
          "| model | criterion | compensation | agr @0.3 | agr @0.5 | agr @0.7 | max rate | removed | agr there | s/step |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a = [f"{r['agreement_at'][s]:.4f}" if s in r["agreement_at"] else "-" for s in SHOW]
        md.append(f"| {r['model']} | {r['criterion']} | {'ridge refit' if r['compensate'] else 'none'} | {a[0]} | {a[1]} | "
                  f"{a[2]} | {r['best_rate']:.2f} | {100 * r['params_removed']:.1f}% | {r['agreement_best']:.4f} | "
                  f"{r['seconds_per_step']:.2f} |")
    write("fidelity_engine", payload, "\n".join(md) + "\n")
    print("wrote bench/results/fidelity_engine.{json,md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
