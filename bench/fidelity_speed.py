"""Benchmark: what the data-aware stages cost per candidate on the bundled example.

Per progressive 5 % step on the example (Fashion-MNIST CNN, calibration = its 200 held-out
images), the seconds of ``Pruner.step_to`` + rebuild for: l1 uncompensated (the weight-only
baseline), flow uncompensated, flow + compensation, each with NumPy's BLAS limited to one thread
during the fits (the code's default) and with it unlimited (the first helper's code), and the
global allocation (flow + compensation). ``extra`` = mean seconds per step minus the l1
baseline's. Steps 0.05..0.50; one run per row, wall clock, on this shared 2-core machine (the
load average is recorded: other agents ran beside it).

    python bench/fidelity_speed.py

Writes bench/results/fidelity_speed.{json,md}.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, write  # noqa: E402

RATES = [round(0.05 * k, 2) for k in range(1, 11)]


def main(argv=None) -> int:
    import numpy as np

    from edgeprune.pipeline.prune import compensate
    from edgeprune.pipeline.example import example_data_path, example_model_path
    from edgeprune.pipeline.data.loading import load_model
    from edgeprune.pipeline.prune.pruner import PruneConfig, Pruner

    model = load_model(example_model_path())
    x = np.load(example_data_path())["x"].astype("float32")
    x = x[..., None] if x.ndim == 3 else x
    cal = x[::5]
    rows = []
    limited = compensate.single_thread_blas
    for label, crit, comp, alloc, blas1 in (
            ("l1, no compensation (baseline)", "l1", False, "uniform", True),
            ("flow, no compensation", "flow", False, "uniform", True),
            ("flow + compensation, BLAS unlimited", "flow", True, "uniform", False),
            ("flow + compensation, BLAS 1 thread in the fits", "flow", True, "uniform", True),
            ("flow + compensation + global allocation", "flow", True, "global", True)):
        compensate.single_thread_blas = limited if blas1 else contextlib.nullcontext
        p = Pruner(model, PruneConfig(rate=0.5, criterion=crit, calibration=cal, compensate=comp, allocation=alloc))
        per = []
        for r in RATES:
            t0 = time.perf_counter()
            p.step_to(r)
            p.build()
            per.append(time.perf_counter() - t0)
        rows.append({"what": label, "mean_s": round(float(np.mean(per)), 3), "max_s": round(float(np.max(per)), 3),
                     "total_s": round(float(np.sum(per)), 2), "load_avg": round(os.getloadavg()[0], 2)})
        print(rows[-1], flush=True)
    compensate.single_thread_blas = limited
    base = rows[0]["mean_s"]
    for r in rows:
        r["extra_s"] = round(r["mean_s"] - base, 3)
    payload = {"machine": machine(), "rates": RATES, "rows": rows}
    md = ["# Data-aware stages: seconds per candidate on the example\n",
          f"Machine: {payload['machine']}. One run per row: progressive steps {RATES[0]}..{RATES[-1]} on the bundled "
          "example, calibration = its 200 held-out images; seconds = `Pruner.step_to` + rebuild (wall clock). "
          "`extra` = mean minus the l1 baseline's. The machine was shared (load average per row). Target: flow + "
          "compensation add <= 1 s per candidate; global allocation <= 60 s per run (its total here covers 10 of "
          "the run's candidates).\n",
          "| what | mean s/step | max s/step | extra s/step | total s | load avg |", "|---|---|---|---|---|---|"]
    md += [f"| {r['what']} | {r['mean_s']:.3f} | {r['max_s']:.3f} | {r['extra_s']:+.3f} | {r['total_s']:.2f} | "
           f"{r['load_avg']:.1f} |" for r in rows]
    write("fidelity_speed", payload, "\n".join(md) + "\n")
    print("wrote bench/results/fidelity_speed.{json,md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
