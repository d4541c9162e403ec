"""Residual branch removal as a move of the global allocation, on MLPerf Tiny ResNet-8.

Flow criterion + compensation + global greedy, with and without whole residual branches as
candidate moves (pipeline/prune/branches.py), at the same parameter rates. No CIFAR-10 images exist
on this machine (the MLPerf folder's calibration_samples.npz holds keyword-spotting
spectrograms, not images). The inputs are real photo patches instead: random square crops
(32 px to 256 px, resized to 32x32, half mirrored) of matplotlib's bundled sample photo
grace_hopper.jpg, in the model's 0..255 input range (on them the original predicts 10
classes, mean top-1 probability 0.66; uniform noise gives one class for every input, useless
as an agreement test). Calibration: 128 crops (seed 1); evaluation: 512 other crops (seed 2).
Agreement = top-1 agreement of the pruned Keras float model with the original; KL = mean
KL(original || pruned) on the evaluation crops. Not CIFAR-10: a proxy, labelled so.
One run per row, no retraining. Writes bench/results/branch_removal.{json,md}.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
MODEL = ROOT.parent.parent / "shared" / "models" / "mlperf-tiny" / "pretrainedResnet.h5"
RATES = (0.2, 0.4, 0.5, 0.6, 0.7)
PHOTO = "matplotlib/mpl-data/sample_data/grace_hopper.jpg"


def crops(n: int, seed: int) -> np.ndarray:
    import matplotlib
    from PIL import Image

    img = np.asarray(Image.open(Path(matplotlib.__file__).parent / "mpl-data/sample_data/grace_hopper.jpg").convert("RGB"))
    rng = np.random.default_rng(seed)
    h, w, _ = img.shape
    out = []
    for _ in range(n):
        s = int(rng.integers(32, min(h, w) // 2))
        y, x = int(rng.integers(0, h - s)), int(rng.integers(0, w - s))
        a = np.asarray(Image.fromarray(img[y:y + s, x:x + s]).resize((32, 32), Image.BILINEAR), dtype=np.float32)
        out.append(a[:, ::-1] if rng.random() < 0.5 else a)
    return np.stack(out)


def main() -> None:
    import keras

    from _common import machine, write
    from edgeprune.pipeline.prune.allocation import GlobalGreedy
    from edgeprune.pipeline.prune.calib import outputs
    from edgeprune.pipeline.prune.pruner import PruneConfig, Pruner

    path = MODEL if MODEL.exists() else Path("/work/shared/models/mlperf-tiny/pretrainedResnet.h5")
    model = keras.models.load_model(path, compile=False)
    from edgeprune.pipeline.prune.calib import output_loss

    xc, xe = crops(128, 1), crops(512, 2)
    yref = outputs(model, xe)
    ref = yref.argmax(1)
    p0 = model.count_params()
    rows = []
    for branches in (False, True):
        alloc = GlobalGreedy(branches=branches)
        p = Pruner(model, PruneConfig(rate=0.95, criterion="flow", calibration=xc, compensate=True, allocation=alloc))
        t0 = time.perf_counter()
        for r in RATES:
            p.step_to(r)
            km = p.build()
            y = outputs(km, xe)
            ag = float((y.argmax(1) == ref).mean())
            rows.append({"branches": branches, "rate": r, "params": int(km.count_params()),
                         "removed": round(1 - km.count_params() / p0, 4), "agreement": round(ag, 4),
                         "kl": round(output_loss(y, yref), 5),
                         "removed_branches": [list(k) for k in (getattr(p.state, "branches", None) or [])],
                         "seconds": round(time.perf_counter() - t0, 1)})
            print(rows[-1], flush=True)
        rows[-1]["branch_log"] = [e for e in alloc.log if "branch" in e]
    by = {(r["branches"], r["rate"]): r for r in rows}
    md = ["# Residual branch removal on MLPerf Tiny ResNet-8 (global greedy, flow + compensation)", "",
          __doc__.split("\n\n", 1)[1].strip(), "",
          "| parameter rate | params (channels only / + branches) | agreement, channels only | agreement, + branches "
          "| KL, channels only | KL, + branches | branches removed |",
          "|---|---|---|---|---|---|---|"]
    for r in RATES:
        a, b = by[(False, r)], by[(True, r)]
        md.append(f"| {r:.2f} | {a['params']:,} / {b['params']:,} | {a['agreement']:.4f} | {b['agreement']:.4f} | "
                  f"{a['kl']:.4f} | {b['kl']:.4f} | "
                  f"{', '.join(f'{x[0]}[{x[1]}]' for x in b['removed_branches']) or '-'} |")
    write("branch_removal", {"machine": machine(), "rows": rows}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
