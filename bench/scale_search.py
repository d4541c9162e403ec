"""Benchmark (issue 23, must-show 2): a full search of an ImageNet backbone through the real CLI.

MobileNetV2-224 (random weights, seed 0, built by bench/scale.py), 1,000 seeded random 224x224x3
images (uint8 with input_scale 1/255, bench/scale.py), the default engine with data (flow +
compensation + global allocation, which takes table rounds on a model this size), local device,
int8, ``--step 0.05 --max-rate 0.9 --min-fidelity 0.01`` (random weights: fidelity means nothing
here, so the search runs to the end), ``--runs 3 --warmup 1``. ONE ``edgeprune run`` as a child
process with an empty work cache:

- wall seconds, CPU seconds (user + system) and the peak RSS of the child (its rusage);
- the report's phase timings and every candidate's prune seconds, parameters and screening.

    python bench/scale_search.py

Writes bench/results/scale_search.{json,md}. Needs ~4 GB of memory and ~15 min on 2 cores.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, timed_run, write  # noqa: E402
import scale  # noqa: E402

ARGS = ["--step", "0.05", "--max-rate", "0.9", "--min-fidelity", "0.01", "--runs", "3", "--warmup", "1", "--json"]


def main() -> int:
    model = scale.imagenet_model("mobilenetv2")
    data = scale.data_file("img", (224, 224, 3), 1000)
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, EDGEPRUNE_CACHE_DIR=str(Path(tmp) / "cache"))
        cmd = [sys.executable, "-m", "edgeprune", "run", "--model", str(model), "--data", str(data),
               "--out", str(Path(tmp) / "out"), *ARGS]
        run = timed_run("mobilenetv2 search", cmd, env)
    rep = run["report"]
    t = rep["timings"]
    cands = [{"rate": c["rate"], "params": c.get("params"), "prune_s": (c.get("timings") or {}).get("prune_s"),
              "keras_s": (c.get("timings") or {}).get("keras_s"), "size_bytes": c.get("size_bytes"),
              "converted": bool(c.get("sha256")), "made_by": (c.get("made_by") or {}).get("allocation")}
             for c in rep["candidates"]]
    row = {"command": "edgeprune run --model mobilenetv2_224.keras --data img224_1000.npz " + " ".join(ARGS),
           **{k: run[k] for k in ("exit", "wall_s", "cpu_s", "peak_rss_gb", "load_before")},
           "timings": {k: t.get(k) for k in ("load_s", "prune_s", "keras_s", "convert_s", "fidelity_s", "device_s",
                                             "total_s")},
           "chosen_rate": (rep.get("chosen") or {}).get("rate"), "candidates": cands}
    out = {"machine": machine(), "row": row}
    lines = ["# A full search of MobileNetV2-224 through the CLI (issue 23, must-show 2)", "",
             f"Machine: {out['machine']}. Load before the run: {row['load_before']}. One run, empty work cache.", "",
             f"`{row['command']}`", "",
             "| exit | wall | CPU | peak RSS | load | prune | Keras screening | convert | fidelity | device |",
             "|---|---|---|---|---|---|---|---|---|---|",
             f"| {row['exit']} | {row['wall_s']} s | {row['cpu_s']} s | {row['peak_rss_gb']} GB | "
             + " | ".join(f"{row['timings'].get(k)} s" for k in ("load_s", "prune_s", "keras_s", "convert_s",
                                                                   "fidelity_s", "device_s")) + " |", "",
             "Must show: <= 10 min (600 s) wall on 2 cores, peak RSS < 4 GB.", "",
             "| rate | parameters | prune s (this step) | Keras screening s | converted |", "|---|---|---|---|---|"]
    lines += [f"| {c['rate']} | {c['params']:,} | {c['prune_s']} | {c['keras_s']} | "
              f"{'yes' if c['converted'] else 'no (screened)'} |" for c in cands]
    lines += ["", f"Allocation: {cands[-1]['made_by']}.", "",
              "Peak RSS: the child's `ru_maxrss` (KiB) x 1024 bytes, in GB of 1e9 bytes."]
    write("scale_search", out, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
