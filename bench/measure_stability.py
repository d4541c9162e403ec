"""How repeatable is one ``edgeprune bench``? Fixed 50 runs (edgeprune's old default) against
time-based runs (benchmark_model's: warm up >= 0.5 s, time >= 1 s and >= 50 runs).

    python bench/measure_stability.py [MODEL.tflite] [--repeats 5] [--device local]

Runs ``python -m edgeprune bench MODEL --device DEVICE --json`` ``--repeats`` times per mode,
each a fresh child process exactly as a user types it, the two modes interleaved (fixed,
time-based, fixed, ...) so both see the same machine load. For each mode: p50, p90 and mean of
every call and their spread across the calls, max/min. Default model: the MLPerf Tiny ResNet-8
int8 (``../shared/models/mlperf-tiny/pretrainedResnet_quant.tflite``).
Writes ``bench/results/measure_stability.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = [ROOT.parent / "shared" / "models" / "mlperf-tiny" / "pretrainedResnet_quant.tflite",
              Path("/work/shared/models/mlperf-tiny/pretrainedResnet_quant.tflite")]
MODES = {
    "fixed 50 runs": ["--num-runs", "50", "--warmup-runs", "5", "--min-secs", "0", "--warmup-min-secs", "0"],
    "time-based": ["--num-runs", "50", "--warmup-runs", "5", "--min-secs", "1", "--warmup-min-secs", "0.5"],
}


def bench_once(model: Path, device: str, extra: list[str]) -> dict:
    argv = [sys.executable, "-m", "edgeprune", "bench", str(model), "--device", device, "--json", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    m = json.loads(proc.stdout)
    lat = m["latency_ms"]
    return {"p50": lat["p50"], "p90": lat["p90"], "p99": lat["p99"], "mean": lat["mean"], "iqr": lat["iqr"],
            "runs": m["runs"], "timed_s": m["timed_s"], "load_per_core": m["load_per_core"], "wall_s": round(wall, 2)}


def spread(values: list[float]) -> float:
    return max(values) / min(values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", type=Path)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="local")
    args = ap.parse_args()
    model = args.model or next((p for p in CANDIDATES if p.is_file()), None)
    if model is None or not model.is_file():
        raise SystemExit(f"model not found: {args.model or CANDIDATES[0]}")
    calls: dict[str, list[dict]] = {k: [] for k in MODES}
    for i in range(args.repeats):
        for mode, extra in MODES.items():
            calls[mode].append(bench_once(model, args.device, extra))
            print(f"{mode} #{i + 1}: {calls[mode][-1]}", flush=True)
    summary = {}
    for mode, rows in calls.items():
        summary[mode] = {k: {"min": min(r[k] for r in rows), "max": max(r[k] for r in rows),
                             "max_over_min": round(spread([r[k] for r in rows]), 4)} for k in ("p50", "p90", "mean")}
    payload = {"model": str(model), "device": args.device, "repeats": args.repeats, "modes": MODES, "calls": calls,
               "summary": summary, "machine": {"python": platform.python_version(), "machine": platform.machine(),
                                               "cpus": os.cpu_count()},
               "created_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    tb = summary["time-based"]
    lines = [
        "# Measurement stability: fixed 50 runs vs time-based",
        "",
        f"`edgeprune bench {model.name} --device {args.device} --json`, {args.repeats} calls per mode, each a fresh "
        f"process, the modes interleaved; {payload['machine']['cpus']} CPUs shared with other jobs "
        f"(load per core before each call in the table). Created {payload['created_at']} by "
        "`python bench/measure_stability.py`.",
        "",
        "- fixed 50 runs: `--num-runs 50 --warmup-runs 5 --min-secs 0 --warmup-min-secs 0` (edgeprune's old default)",
        "- time-based: `--num-runs 50 --warmup-runs 5 --min-secs 1 --warmup-min-secs 0.5` (the new default, as "
        "TFLite's benchmark_model)",
        "",
        "## Spread across the calls (max / min)",
        "",
        "| mode | p50 min..max (ms) | p50 max/min | p90 min..max (ms) | p90 max/min | mean max/min |",
        "|---|---|---|---|---|---|",
    ]
    for mode, s in summary.items():
        lines.append(f"| {mode} | {s['p50']['min']:.4f}..{s['p50']['max']:.4f} | {s['p50']['max_over_min']:.3f} "
                     f"| {s['p90']['min']:.4f}..{s['p90']['max']:.4f} | {s['p90']['max_over_min']:.3f} "
                     f"| {s['mean']['max_over_min']:.3f} |")
    lines += ["", f"Targets for time-based: p50 within 10% (max/min <= 1.10): "
              f"{'met' if tb['p50']['max_over_min'] <= 1.10 else 'MISSED'} ({tb['p50']['max_over_min']:.3f}); "
              f"p90 within 25% (<= 1.25): {'met' if tb['p90']['max_over_min'] <= 1.25 else 'MISSED'} "
              f"({tb['p90']['max_over_min']:.3f}).", "", "## Every call", "",
              "| mode | # | p50 ms | p90 ms | p99 ms | mean ms | IQR ms | timed runs | timed s | load/core |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for mode, rows in calls.items():
        for i, r in enumerate(rows, 1):
            lines.append(f"| {mode} | {i} | {r['p50']:.4f} | {r['p90']:.4f} | {r['p99']:.4f} | {r['mean']:.4f} "
                         f"| {r['iqr']:.4f} | {r['runs']} | {r['timed_s']:.3f} | {r['load_per_core']:.2f} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "measure_stability.json").write_text(json.dumps(payload, indent=1) + "\n")
    (RESULTS / "measure_stability.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
