"""Benchmark: recovery training (``edgeprune run --train-data ... --recover N``), judged on the
evaluation split AND on Fashion-MNIST test images no run saw.

Each row is ONE ``edgeprune run`` (a subprocess, the real CLI, local device, int8, default
engine: flow + compensation + global allocation, ``--max-rate 0.975``, step 0.05 so above 0.8
the candidates are 0.80, 0.825, ..., 0.975), with the 60,000 Fashion-MNIST TRAINING images of
the Debian package ``dataset-fashion-mnist`` as ``--train-data`` (uint8 + ``input_scale``
1/255 in an .npz written by the bench, labels included but unused: ``--label-weight 0``).

- the bundled example (``--data``: its bundled 1,000 images = test images 0-999);
- the Fashion-MNIST MLP and CNN of bench/prune_quality.py (seeded, cached under
  ~/.cache/edgeprune-bench; ``--data``: test images 0-999 as float32 .npz).

"Unseen": top-1 agreement of a candidate's .tflite with the original float Keras model on
test images 5000-9999 (the same "truth" images bench/samples_needed.py uses; never given to
any run, and not in the training split). "removed": 1 - params / the original's params.

    python bench/recover.py [--epochs 1 3] [--models example mlp cnn] [--max-rate 0.975]

Writes bench/results/recover.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from _common import RESULTS, fashion_mnist, machine, run_json, trained, unseen_agreement, write  # noqa: E402

TRUTH = slice(5000, 10000)
THRESHOLD = 0.95



def one_run(model_path, data_path, train_path, epochs, max_rate, out: Path) -> dict:
    cmd = ["--data", data_path, "--train-data", train_path,
           "--recover", epochs, "--max-rate", max_rate, "--out", out, "--force",
           "--runs", "3", "--warmup", "1", "--min-secs", "0", "--warmup-min-secs", "0"]
    if model_path is not None:
        cmd += ["--model", model_path]
    return run_json(cmd)


def summarize(name, res, epochs, x_truth, ref_pred, out: Path) -> dict:
    rep = res["report"]
    p0 = rep["model"]["params"]
    rows = []
    for c in rep["candidates"]:
        if not c.get("sha256"):
            continue
        un = unseen_agreement(out / c["files"]["tflite"], x_truth, ref_pred)
        rec = c.get("recovery")
        rows.append({"rate": c["rate"], "params": c["params"], "removed": round(1 - c["params"] / p0, 4),
                     "size_bytes": c["size_bytes"], "eval": c["fidelity"]["score"], "unseen": round(un, 4),
                     "trained": rec is not None,
                     "untrained_eval": (rec or {}).get("untrained_fidelity", {}) and rec["untrained_fidelity"]["score"],
                     "loss": (rec or {}).get("loss"), "train_s": (rec or {}).get("seconds"),
                     "s_per_epoch": (rec or {}).get("seconds_per_epoch")})
    ch = rep["chosen"]
    pick = next((r for r in rows if ch and abs(r["rate"] - ch["rate"]) < 1e-9), None)
    untrained_pick = max((r for r in rows if not r["trained"] and r["eval"] >= THRESHOLD), key=lambda r: r["rate"],
                         default=None)
    unseen_best = max((r for r in rows if r["unseen"] >= THRESHOLD and r["eval"] >= THRESHOLD),
                      key=lambda r: r["rate"], default=None)
    spe = [r["s_per_epoch"] for r in rows if r["s_per_epoch"]]
    return {"model": name, "epochs": epochs, "params": p0, "wall_s": res["wall_s"], "load_before": res["load_before"],
            "pick": pick, "untrained_pick": untrained_pick, "best_both": unseen_best, "candidates": rows,
            "trained_candidates": sum(r["trained"] for r in rows),
            "s_per_epoch_mean": round(float(np.mean(spe)), 2) if spe else None,
            "train_s": rep["timings"].get("train_s"), "prune_s": rep["timings"]["prune_s"],
            "train_data": rep["data"].get("train"), "stop": rep["stop"], "command": res["command"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--models", nargs="+", default=["example", "mlp", "cnn"])
    ap.add_argument("--max-rate", type=float, default=0.975)
    ap.add_argument("--render", action="store_true", help="only re-render the .md from the .json")
    ap.add_argument("--merge", nargs="*", help="row-*.json files (RECOVER_ROW_DIR) to merge into recover.json")
    args = ap.parse_args(argv)
    if args.merge:
        for f in args.merge:
            payload = merged(json.loads(Path(f).read_text()), args.max_rate)
            write("recover", payload, render(payload))
        return 0
    if args.render:
        payload = json.loads((RESULTS / "recover.json").read_text())
        (RESULTS / "recover.md").write_text(render(payload))
        return 0
    import keras

    from edgeprune.pipeline.example import example_data_path, example_model_path
    from edgeprune.pipeline.example.fashion_mnist import load_fashion_mnist

    t0 = time.perf_counter()
    data = fashion_mnist()
    xte, yte = data[2], data[3]
    x_truth = xte[TRUTH]
    rows = []
    with tempfile.TemporaryDirectory(prefix="recover-bench-") as tmpd:
        tmp = Path(tmpd)
        xtr, ytr = load_fashion_mnist("train")
        train_path = tmp / "fmnist_train_60000.npz"
        np.savez(train_path, x=xtr, y=ytr, input_scale=np.float32(1 / 255))
        del xtr, ytr
        for kind in args.models:
            if kind == "example":
                mp, dp, name = None, example_data_path(), "bundled example (fmnist_cnn)"
                model = keras.models.load_model(example_model_path(), compile=False)
            else:
                model, _ = trained(kind, data, epochs={"mlp": 10, "cnn": 3}[kind])
                mp = tmp / f"{kind}.keras"
                model.save(mp)
                dp = tmp / f"{kind}_test_1000.npz"
                np.savez(dp, x=xte[:1000], y=yte[:1000])
                name = f"Fashion-MNIST {kind} (bench/prune_quality.py)"
            ref_pred = model.predict(x_truth, batch_size=1000, verbose=0).argmax(1)
            for ep in args.epochs:
                out = tmp / f"run-{kind}-{ep}"
                res = one_run(mp, dp, train_path, ep, args.max_rate, out)
                row = summarize(name, res, ep, x_truth, ref_pred, out)
                rows.append(row)
                print(json.dumps({k: row[k] for k in ("model", "epochs", "wall_s", "pick", "best_both")}), flush=True)
                if os.environ.get("RECOVER_ROW_DIR"):  # a copy of each row (concurrent benches: merge with --merge)
                    Path(os.environ["RECOVER_ROW_DIR"], f"row-{kind}-{ep}.json").write_text(json.dumps(row))
                payload = merged(row, args.max_rate)
                write("recover", payload, render(payload))
    print(render(payload))
    return 0


READING = [
    "- Bundled example, 3 epochs: rate 0.975 = **97.5% of the parameters removed, 25.8 kB int8**, agreement 0.9550 "
    "on the evaluation split and **0.9512 on the 5,000 unseen test images**: the issue's target (>= 96% at >= 0.95 "
    "unseen) and aim (97%, under 30 kB) are met. With 1 epoch the eval split also accepts 0.975 (0.9513) but it "
    "agrees 0.9464 on the unseen images; the largest rate holding on both is 0.95 (95.1%, 47.0 kB): one epoch is "
    "NOT enough for the 96% target on unseen images.",
    "- The untrained pick in the same run (rate 0.90, 90.4% removed) agrees 0.9513 on the eval split but 0.9492 on "
    "the unseen images (within the sampling noise `run` warns about); the trained 0.925 and 0.95 candidates agree "
    "0.958-0.970 on both.",
    "- Policy (our choice): train only from the first candidate that fails untrained (here 0.925, untrained eval "
    "0.9387); the 20 candidates before it pass untrained, so training after every step would add about 20 x the "
    "per-candidate training time (ESTIMATE from the measured s / epoch, not a measured run) without changing the "
    "answer, since the search keeps the largest passing rate.",
    "- Time: the machine's 2 cores were shared with four other engineers' tests and benches (load average 10-24 "
    "on 2 cores at the starts of the runs), so the wall times and s / epoch here are many times an idle machine's "
    "(the issue's probe measured about 7 s per epoch of the 60,000 images on 2 idle cores for the rate-0.95 "
    "candidate). Training was 45% (1 epoch) and 76% (3 epochs) of the example's wall time; the rest is the "
    "untrained chain (pruning with the global allocation, conversions).",
    "- MLP (bench/prune_quality.py, 1 epoch): training moves the pick from 0.50 (untrained) to 0.70 (70% removed, "
    "unseen 0.9524); 0.75 fails even trained: this MLP has little slack (its first Dense holds most parameters). "
    "- CNN (bench/prune_quality.py, 1 epoch): training moves the pick from 0.825 (82.6% removed, untrained) to "
    "0.95 (95.1% removed, 16.7 kB int8, eval 0.9525, unseen 0.9558); 0.975 fails on the eval split even trained.",
    "- Not run before the deadline: the MLP and CNN with 3 epochs (the machine's load made each run 11-38 min).",
]
ORDER = {"example": 0, "mlp": 1, "cnn": 2}


def merged(row: dict, max_rate: float) -> dict:
    """recover.json with ``row`` replacing the row of the same model and epochs (benches of
    different models may run one after the other, or at once: each writes its rows)."""
    path = RESULTS / "recover.json"
    old = json.loads(path.read_text())["rows"] if path.exists() else []
    rows = [r for r in old if (r["model"], r["epochs"]) != (row["model"], row["epochs"])] + [row]
    key = lambda r: (next((v for k, v in ORDER.items() if k in r["model"]), 9), r["epochs"])  # noqa: E731
    return {"machine": machine(), "max_rate": max_rate, "threshold": THRESHOLD, "rows": sorted(rows, key=key),
            "unseen": "Fashion-MNIST test images 5000-9999"}


def _pct(v):
    return f"{100 * v:.1f}%" if v is not None else "-"


def render(payload: dict) -> str:
    L = ["# Recovery training: `edgeprune run --train-data ... --recover N`", "",
         "Generated by `python bench/recover.py` (one `edgeprune run` per row, a subprocess of the real CLI, local "
         "device, int8, default engine, `--max-rate %s`). `--train-data`: the 60,000 Fashion-MNIST training images "
         "(Debian package dataset-fashion-mnist). Fidelity = top-1 agreement of the .tflite with the original float "
         "model: **eval** on the run's evaluation split (800 of the 1,000 `--data` images, test 0-999), **unseen** on "
         "%s (no run saw them). *removed* = 1 - params / original params." % (payload["max_rate"], payload["unseen"]),
         "", f"Machine: {payload['machine']}. Two cores SHARED with other jobs: the 1-minute load average before each "
         "run is in the table; wall times are upper bounds for an idle 2-core machine.", "",
         "| model | epochs | pick (eval >= 0.95): rate | removed | int8 size | eval | unseen | largest rate with eval AND unseen >= 0.95: rate | removed | size | eval | unseen | untrained pick (same run): rate, removed, unseen | trained candidates | s / epoch | train s | wall s | load |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        p, b, u = r["pick"], r["best_both"], r["untrained_pick"]
        L.append("| " + " | ".join([
            r["model"], str(r["epochs"]),
            f"{p['rate']:.3f}" if p else "none", _pct(p and p["removed"]), f"{p['size_bytes'] / 1000:.1f} kB" if p else "-",
            f"{p['eval']:.4f}" if p else "-", f"{p['unseen']:.4f}" if p else "-",
            f"{b['rate']:.3f}" if b else "none", _pct(b and b["removed"]), f"{b['size_bytes'] / 1000:.1f} kB" if b else "-",
            f"{b['eval']:.4f}" if b else "-", f"{b['unseen']:.4f}" if b else "-",
            f"{u['rate']:.3f}, {_pct(u['removed'])}, {u['unseen']:.4f}" if u else "-",
            str(r["trained_candidates"]), str(r["s_per_epoch_mean"]), str(r["train_s"]), str(r["wall_s"]),
            str(r["load_before"])]) + " |")
    L += ["", "## Candidates per run (rate: removed, eval / unseen agreement, trained?)", ""]
    for r in payload["rows"]:
        L.append(f"- {r['model']}, {r['epochs']} epoch(s), stop {r['stop']}: " + "; ".join(
            f"{c['rate']:.3f}: {_pct(c['removed'])}, {c['eval']:.4f} / {c['unseen']:.4f}"
            + (f" (trained, untrained eval {c['untrained_eval']:.4f})" if c["trained"] and c["untrained_eval"] else
               " (trained)" if c["trained"] else "")
            for c in r["candidates"] if c["rate"] >= min(0.8, (r["untrained_pick"] or {"rate": 0})["rate"])))
    L += ["", "## Reading", ""] + READING
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main())
