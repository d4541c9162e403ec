"""Benchmark: how few real samples are enough for ``edgeprune run``'s fidelity verdict.

For each model, ``run`` (the real machinery: prune, int8 conversion calibrated on the held-out
part of the samples, LiteRT fidelity, local device) is given 16, 32, 64, 128, 256 samples
drawn (seeded, without replacement) from a pool of 1,000 labelled Fashion-MNIST test images,
several draws per size, and once all 1,000. Budgets are the local profile's (no flash or
latency limit binds), so the pick is the largest rate whose top-1 agreement on the
evaluation part of the samples is >= 0.95: purely the fidelity verdict.

"Real agreement" of a pick: top-1 agreement of the picked .tflite with the original float
Keras model on 5,000 OTHER Fashion-MNIST test images (indices 5000-9999, never given to a
run). The "ideal" rate is the largest rate whose real agreement (all-samples run's
candidates) is >= 0.95.

Models: the bundled example (pool = its bundled 1,000 images, test 0-999) and, unless
--example-only, the Fashion-MNIST MLP and CNN of bench/prune_quality.py (seeded, cached
under ~/.cache/edgeprune-bench; pool = test 0-999).

    python bench/samples_needed.py [--draws 5] [--max-rate 0.6] [--example-only]

Writes bench/results/samples_needed.{json,md}.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from _common import fashion_mnist, machine, trained, write  # noqa: E402

SIZES = (16, 32, 64, 128, 256)
THRESHOLD = 0.95
TRUTH = slice(5000, 10000)


def one_run(model_path: Path, data_path: Path, out: Path, max_rate: float) -> dict:
    from edgeprune.pipeline.search.run import RunConfig, run

    # paoding, uncompensated: the pruning does not depend on the samples, so the picks differ only by the verdict
    # (and the int8 calibration); the data-aware default (flow + compensation, 50+ samples) would mix both effects
    from edgeprune.pipeline.search import run_config as rc

    cfg = RunConfig(model=rc.ModelOptions(path=model_path), data=rc.DataOptions(path=data_path),
                    search=rc.SearchOptions(step=0.05, max_rate=max_rate), output=rc.OutputOptions(out=out),
                    measurement=rc.MeasurementOptions(runs=3, warmup=1), budgets=rc.BudgetOptions(min_fidelity=THRESHOLD),
                    prune=rc.PruneOptions(criterion="paoding", compensate=False))
    t0 = time.perf_counter()
    res = run(cfg)
    return {"report": res.report, "seconds": time.perf_counter() - t0}


def real_agreement(tflite: Path, x_truth: np.ndarray, ref_pred: np.ndarray) -> float:
    from edgeprune.pipeline.convert.fidelity import run_tflite

    out, _ = run_tflite(tflite, x_truth)
    return float((out.argmax(1) == ref_pred).mean())


def bench_model(name: str, model_path: Path, pool_x: np.ndarray, pool_y: np.ndarray, input_scale: float | None,
                x_truth: np.ndarray, draws: int, max_rate: float, tmp: Path) -> dict:
    from edgeprune.pipeline.convert.fidelity import keras_outputs
    from edgeprune.pipeline.data.loading import load_model

    model = load_model(model_path)
    ref_pred = keras_outputs(model, x_truth).argmax(1)
    rows = []

    def go(tag: str, idx: np.ndarray, seed) -> dict:
        p = tmp / f"{name}-{tag}-{seed}.npz"
        extra = {"input_scale": np.float32(input_scale)} if input_scale is not None else {}
        np.savez(p, x=pool_x[idx], y=pool_y[idx], **extra)
        r = one_run(model_path, p, tmp / f"run-{name}-{tag}-{seed}", max_rate)
        rep = r["report"]
        ch = rep["chosen"]
        run_dir = Path(rep["run_dir"])
        row = {"model": name, "samples": len(idx), "seed": seed, "n_eval": rep["data"]["n_samples"],
               "n_calibration": rep["data"]["split"]["calibration"], "seconds": round(r["seconds"], 1),
               "pick": ch["rate"] if ch else None, "reported": ch["fidelity"] if ch else None,
               "interval": ([rep["verdict"]["uncertainty"]["chosen"][k] for k in ("low", "high")]
                            if ch and rep["verdict"]["uncertainty"].get("chosen") else None),
               "warned": any(w["code"] == "threshold_within_uncertainty" for w in rep["verdict"]["warnings"]),
               "real": real_agreement(run_dir / ch["tflite"], x_truth, ref_pred) if ch else None}
        if tag == "all":  # the real curve: every candidate of the all-samples run on the 5,000 other images
            row["curve"] = [{"rate": c["rate"], "reported": c["fidelity"]["score"],
                             "real": round(real_agreement(run_dir / c["files"]["tflite"], x_truth, ref_pred), 4)}
                            for c in rep["candidates"]]
        print(f"  {name} n={len(idx)} seed={seed}: pick {row['pick']} reported {row['reported']} real "
              f"{row['real']:.4f} warned={row['warned']} ({row['seconds']} s)", flush=True)
        return row

    rows.append(go("all", np.arange(len(pool_x)), "all"))
    for n in SIZES:
        for seed in range(draws):
            idx = np.sort(np.random.default_rng(1000 * n + seed).choice(len(pool_x), n, replace=False))
            rows.append(go(str(n), idx, seed))
    return {"rows": rows}


def summarize(name: str, res: dict, max_rate: float) -> list[str]:
    rows = res["rows"]
    allr = rows[0]
    curve = allr["curve"]
    ok = [c["rate"] for c in curve if c["real"] >= THRESHOLD]
    ideal = max(ok) if ok else None
    # the real curve is only known up to where the all-samples run stopped
    lines = [f"### {name}", "",
             f"All 1,000 samples (200 calibrate, 800 judge): pick **{allr['pick']:.2f}**, reported agreement "
             f"{allr['reported']:.4f} (95% interval {allr['interval'][0]:.3f}-{allr['interval'][1]:.3f}), "
             f"real agreement on 5,000 other images **{allr['real']:.4f}**"
             + (" (threshold inside the interval: `run` warned)" if allr["warned"] else "") + ".",
             "",
             "Real curve of the all-samples run (agreement on 5,000 other images): "
             + ", ".join(f"{c['rate']:.2f}: {c['real']:.4f}" for c in curve)
             + (f"; largest rate really >= {THRESHOLD}: **{ideal:.2f}**" if ideal is not None else ""), "",
             "| samples | judged on | draws | picks | = all-samples pick | pick - all (mean) | real agreement at pick "
             "(min / median) | picks really < 0.95 | `run` warned |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n in SIZES:
        rs = [r for r in rows if r["samples"] == n and r["seed"] != "all"]
        picks = [r["pick"] if r["pick"] is not None else float("nan") for r in rs]
        reals = [r["real"] for r in rs if r["real"] is not None]
        same = sum(1 for p in picks if abs(p - allr["pick"]) < 1e-9)
        below = sum(1 for v in reals if v < THRESHOLD)
        lines.append(f"| {n} | {rs[0]['n_eval']} | {len(rs)} | {', '.join(f'{p:.2f}' for p in picks)} | {same}/{len(rs)} "
                     f"| {np.nanmean(np.array(picks) - allr['pick']):+.3f} | {min(reals):.4f} / {np.median(reals):.4f} "
                     f"| {below}/{len(reals)} | {sum(r['warned'] for r in rs)}/{len(rs)} |")
    lines.append(f"| all (1000) | {allr['n_eval']} | 1 | {allr['pick']:.2f} | - | - | {allr['real']:.4f} | "
                 f"{int(allr['real'] < THRESHOLD)}/1 | {int(allr['warned'])}/1 |")
    lines.append("")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--max-rate", type=float, default=0.6)
    ap.add_argument("--example-only", action="store_true")
    ap.add_argument("--render", action="store_true", help="only re-render the .md from bench/results/samples_needed.json")
    args = ap.parse_args(argv)
    if args.render:
        import json

        from _common import RESULTS

        payload = json.loads((RESULTS / "samples_needed.json").read_text())
        (RESULTS / "samples_needed.md").write_text(render(payload))
        return 0

    from edgeprune.pipeline.example import example_data_path, example_model_path

    t0 = time.perf_counter()
    data = fashion_mnist()
    xte, yte = data[2], data[3]
    x_truth = xte[TRUTH]
    results = {}
    with tempfile.TemporaryDirectory(prefix="samples-needed-") as tmpd:
        tmp = Path(tmpd)
        z = np.load(example_data_path())
        results["bundled example (fmnist_cnn)"] = bench_model(
            "example", example_model_path(), z["x"], z["y"], float(z["input_scale"]), x_truth, args.draws,
            args.max_rate, tmp)
        if not args.example_only:
            for kind, epochs in (("mlp", 10), ("cnn", 3)):
                model, _ = trained(kind, data, epochs=epochs)
                mp = tmp / f"{kind}.keras"
                model.save(mp)
                results[f"Fashion-MNIST {kind} (bench/prune_quality.py)"] = bench_model(
                    kind, mp, xte[:1000], yte[:1000], None, x_truth, max(2, args.draws - 2), args.max_rate, tmp)
    total = time.perf_counter() - t0
    payload = {"machine": machine(), "threshold": THRESHOLD, "sizes": SIZES, "draws": args.draws,
               "max_rate": args.max_rate, "criterion": "paoding", "compensate": False, "results": results,
               "total_s": round(total, 1)}
    md = render(payload)
    write("samples_needed", payload, md)
    print(md)
    return 0


def render(payload: dict) -> str:
    max_rate, results = payload["max_rate"], payload["results"]
    md = ["# How many real samples does the fidelity verdict need?", "",
          f"Machine: {payload['machine']}. Total {payload['total_s'] / 60:.1f} min for "
          f"{sum(len(r['rows']) for r in results.values())} runs.", "",
          "`edgeprune run` (int8, `--criterion paoding`, no compensation, step 0.05, max rate "
          f"{max_rate:g}, threshold top-1 agreement >= {THRESHOLD}, local device, no binding budget) given N "
          "labelled samples drawn from 1,000 Fashion-MNIST test images (seeded draws without replacement). 1/5 of "
          "the N (at least 1, at most 200) calibrates int8, the rest judges: 'judged on' is that count. "
          "Real agreement: the picked .tflite against the float Keras model on 5,000 other test images "
          "(indices 5000-9999) never given to `run`. `run` warned: the threshold lay inside the 95% Wilson "
          "interval of the chosen candidate's agreement (`threshold_within_uncertainty`).", ""]
    for name, res in results.items():
        md += summarize(name, res, max_rate)
    md += ["## Reading", "", *reading(results), ""]
    return "\n".join(md)


def reading(results: dict) -> list[str]:
    rows = [r for res in results.values() for r in res["rows"]]
    miss = [r for r in rows if r["real"] is not None and r["real"] < THRESHOLD]
    unwarned = [r for r in miss if not r["warned"]]
    width = {n: np.median([r["interval"][1] - r["interval"][0] for r in rows if r["samples"] == n and r["interval"]])
             for n in (*SIZES, 1000)}
    return [
        f"- Over all {len(rows)} runs, {len(miss)} picks really agree below {THRESHOLD} on the 5,000 unseen images; "
        f"`run` warned on {len(miss) - len(unwarned)} of them ({len(unwarned)} real misses without the warning). "
        f"It warned on {sum(r['warned'] for r in rows)} runs in all: on these models the agreement curve runs close "
        "to the threshold for several steps, so most picks ARE within noise.",
        "- Median width of the 95% interval of the chosen candidate's agreement: "
        + ", ".join(f"{n if n != 1000 else 'all 1,000'} samples: {width[n]:.3f}" for n in width)
        + ". A 0.05-step of pruning changes the agreement by about 0.005-0.03 here, so with 16-64 samples the "
        "verdict cannot tell neighbouring rates apart: the picks scatter from 0.00 to 0.45 (0.60 once).",
        "- With 256 samples the picks of the MLP match the all-samples pick 3 of 3 times; the example's and the "
        "CNN's still scatter by one to three steps; with 1,000 (800 judging) the interval is about +-0.015, and the "
        "CNN's all-samples pick (0.25, reported 0.960) really agrees 0.948: even 800 samples are not enough when "
        "the real curve crosses the threshold by less than the interval. The warning said so.",
        "- So: give as many samples as you have (hundreds, not dozens), keep a margin above the threshold "
        "when `run` warns, and treat a pick made on fewer than ~100 samples as a guess (the warning is then "
        "always on).",
    ]


if __name__ == "__main__":
    sys.exit(main())
