"""Benchmark: ``edgeprune run --confidence P`` (issue 23): does the pick hold on images no run saw?

Each row is ONE ``edgeprune run`` (a subprocess, the real CLI, the bundled example, local device,
int8, default engine) with and without ``--confidence``. The run judges fidelity on its
evaluation split (800 of the bundled 1,000 images = Fashion-MNIST test images 0-999); "unseen"
is the top-1 agreement of each candidate's .tflite with the original float Keras model on
Fashion-MNIST test images 1000-9999 (9,000 images no run saw; Debian ``dataset-fashion-mnist``).

    python bench/confidence.py [--levels 0.95 0.99]

Writes bench/results/confidence.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


from _common import fashion_mnist, machine, run_json, unseen_agreement, write  # noqa: E402

UNSEEN = slice(1000, 10000)
THRESHOLD = 0.95



def one_run(confidence, out: Path) -> dict:
    cmd = ["--out", out, "--force",
           "--runs", "3", "--warmup", "1", "--min-secs", "0", "--warmup-min-secs", "0"]
    if confidence is not None:
        cmd += ["--confidence", str(confidence)]
    return run_json(cmd)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", type=float, nargs="+", default=[0.95])
    a = ap.parse_args(argv)
    import keras

    from edgeprune.pipeline.example import example_model_path

    _, _, xte, _ = fashion_mnist()
    x = xte[UNSEEN]
    ref = keras.models.load_model(example_model_path(), compile=False).predict(x, batch_size=1024, verbose=0).argmax(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for level in [None] + list(a.levels):
            out = Path(tmp) / f"run-{level}"
            res = one_run(level, out)
            rep = res["report"]
            cands = []
            for c in rep["candidates"]:
                if not c.get("files", {}).get("tflite"):
                    continue
                f = c["checks"]["fidelity"]
                cands.append({"rate": c["rate"], "size_bytes": c["size_bytes"], "eval": f["value"], "low": f.get("low"),
                              "ok": f["ok"], "unseen": round(unseen_agreement(out / c["files"]["tflite"], x, ref), 4)})
            ch = rep["chosen"]
            pick = next((c for c in cands if ch is not None and abs(c["rate"] - ch["rate"]) < 1e-9), None)
            rows.append({"confidence": level, "exit": res["exit"], "wall_s": res["wall_s"], "load_before": res["load_before"],
                         "command": res["command"], "pick": pick, "candidates": cands,
                         "holds_unseen": None if pick is None else pick["unseen"] >= THRESHOLD})
            print(json.dumps(rows[-1]["pick"]), flush=True)
    payload = {"machine": machine(), "threshold": THRESHOLD, "unseen": "Fashion-MNIST test images 1000-9999", "rows": rows}
    L = ["# `--confidence`: the pick holds on images no run saw", "",
         "Bundled example, local device, int8, default engine, threshold 0.95; one `edgeprune run` per row "
         "(bench/confidence.py). **eval**: agreement on the run's 800 evaluation images; **low**: the one-sided "
         "Wilson lower bound at the row's confidence (what the run held to the threshold); **unseen**: agreement of "
         "the same .tflite with the float Keras model on Fashion-MNIST test images 1000-9999 (9,000 images no run "
         "saw). Machine shared with other jobs: wall times are upper bounds.", "",
         "| --confidence | exit | pick rate | .tflite | eval | low | unseen | holds on unseen (>= 0.95) | wall s |",
         "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r["pick"]
        L.append("| %s | %d | %s | %s | %s | %s | %s | %s | %.0f |" % (
            "off" if r["confidence"] is None else f"{r['confidence']:g}", r["exit"],
            f"{p['rate']:.3f}" if p else "-", f"{p['size_bytes']:,} B" if p else "-",
            f"{p['eval']:.4f}" if p else "-", f"{p['low']:.4f}" if p and p["low"] is not None else "-",
            f"{p['unseen']:.4f}" if p else "-", {True: "yes", False: "**no**", None: "-"}[r["holds_unseen"]], r["wall_s"]))
    L += ["", "## Every candidate (rate: eval / low / unseen)", ""]
    for r in rows:
        L.append("- confidence %s: " % ("off" if r["confidence"] is None else f"{r['confidence']:g}") + "; ".join(
            f"{c['rate']:.3f}: {c['eval']:.4f} / {c['low'] if c['low'] is not None else '-'} / {c['unseen']:.4f}"
            for c in r["candidates"]))
    write("confidence", payload, "\n".join(L) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
