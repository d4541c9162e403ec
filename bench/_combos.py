"""Every pruning combination (criterion x compensation x allocation) at the same sizes.

Each combination prunes progressively (5 % steps of its rate: channels per layer for the
uniform allocation, prunable parameters for the global one) and every step's Keras float model
is compared with the unpruned one: top-1 agreement on evaluation images never used for
calibration (and test accuracy where labels exist). Reported per row: agreement at the first
step with >= 50 / 75 / 85 % of the parameters removed (same sizes for every row), the most
parameters removed with agreement >= 0.95, and the seconds per step. No retraining; one run
per row. A run stops once agreement is 0.03 under the threshold.
"""
from __future__ import annotations

import time

import numpy as np

SIZES = (0.50, 0.75, 0.85)
THRESHOLD = 0.95
CRITERIA = ("paoding", "l1", "random", "flow", "taylor")


def combo_rows(models: dict, criteria=CRITERIA, log=print) -> list[dict]:
    """``models``: name -> (model, calibration x, evaluation x, evaluation labels or None)."""
    from edgeprune.pipeline.prune.calib import outputs
    from edgeprune.pipeline.prune.pruner import PruneConfig, Pruner

    rows = []
    for key, (model, xc, xe, ye) in models.items():
        ref = outputs(model, xe).argmax(1)
        p0 = model.count_params()
        for alloc in ("uniform", "global"):
            for comp in (False, True):
                for crit in criteria:
                    p = Pruner(model, PruneConfig(rate=0.95, criterion=crit, step=0.05, calibration=xc,
                                                  compensate=comp, allocation=alloc, seed=0))
                    at, best, secs, steps, t_all = {}, (0.0, 0.0, 1.0, None), 0.0, 0, time.perf_counter()
                    for k in range(1, 20):
                        r = round(0.05 * k, 2)
                        t0 = time.perf_counter()
                        p.step_to(r)
                        km = p.build()
                        secs += time.perf_counter() - t0
                        steps += 1
                        pred = outputs(km, xe).argmax(1)
                        ag = float((pred == ref).mean())
                        acc = float((pred == ye).mean()) if ye is not None else None
                        removed = 1 - km.count_params() / p0
                        for s in SIZES:
                            if s not in at and removed >= s:
                                at[s] = (ag, round(removed, 4))
                        if ag >= THRESHOLD:
                            best = (r, removed, ag, acc)
                        elif ag < THRESHOLD - 0.03:
                            break
                    rows.append({"model": key, "criterion": crit, "compensate": comp, "allocation": alloc,
                                 "agreement_at": {str(s): v for s, v in at.items()}, "best_rate": best[0],
                                 "params_removed": round(best[1], 4), "agreement_best": round(best[2], 4),
                                 "accuracy_best": None if best[3] is None else round(best[3], 4),
                                 "seconds_per_step": round(secs / steps, 3),
                                 "seconds_total": round(time.perf_counter() - t_all, 1)})
                    log(rows[-1])
    return rows


def combo_markdown(rows: list[dict]) -> list[str]:
    md = ["| model | allocation | compensation | criterion | agr @50% | agr @75% | agr @85% | max removed (agr >= 0.95) "
          "| agr there | acc there | s/step |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a = [f"{r['agreement_at'][str(s)][0]:.4f}" if str(s) in r["agreement_at"] else "-" for s in SIZES]
        acc = "-" if r["accuracy_best"] is None else f"{r['accuracy_best']:.4f}"
        md.append(f"| {r['model']} | {r['allocation']} | {'ridge refit' if r['compensate'] else 'none'} | {r['criterion']} | "
                  f"{a[0]} | {a[1]} | {a[2]} | {100 * r['params_removed']:.1f}% (rate {r['best_rate']:.2f}) | "
                  f"{r['agreement_best']:.4f} | {acc} | {r['seconds_per_step']:.2f} |")
    return md
