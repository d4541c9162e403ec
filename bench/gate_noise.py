"""How often would the regression gate fail a job on noise alone?

Measures ONE .tflite (the bundled example's int8 model, unpruned and at rate 0.10) K times on
the local device with the board runner (real LiteRT, child process), then gates every ordered
pair of measurements of the same file against each other: any latency "regression" there is a
false alarm. Compared: the gate's rule (tolerance + the noise of both medians, 1.58 IQR/sqrt(runs) each) against the
tolerance alone, at the default 10 %. A real slowdown must still be caught: the same pairs with
the candidate's latency scaled by 1.5 and 2.0 (its spread scaled with it) give the detection rate.

    python bench/gate_noise.py [--k 8] [--runs 20]

Writes bench/results/gate_noise.md and .json. On this machine 2 cores are shared by other jobs,
so the noise is larger than on a quiet board: that is the point of the measurement.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

RESULTS = Path(__file__).resolve().parent / "results"


def _models(tmp: Path) -> dict[str, Path]:
    out = tmp / "run"
    cmd = [sys.executable, "-m", "edgeprune", "run", "--max-rate", "0.1", "--step", "0.1", "--runs", "5",
           "--out", str(out), "--measure-all", "--json"]
    rep = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    return {f"rate {c['rate']:.2f} ({c['size_bytes']:,} B)": out / c["files"]["tflite"] for c in rep["candidates"]}


def _report(measurement: dict, factor: float = 1.0) -> dict:
    m = copy.deepcopy(measurement)
    for k, v in list(m["latency_ms"].items()):
        if isinstance(v, (int, float)):
            m["latency_ms"][k] = v * factor
    return {"chosen": {"index": 0, "flash_bytes": 1, "ram_bytes": m.get("ram_bytes"), "fidelity": 1.0,
                       "score_name": "s", "latency_ms": m["latency_ms"]["median"],
                       "latency_is_estimate": False},
            "candidates": [{"index": 0, "measurement": m}]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    from edgeprune.devices.base import BenchConfig, measure
    from edgeprune.devices.profile import load_profile
    from edgeprune.pipeline.report import gate

    prof = load_profile("local")
    tol = gate.parse_max_regression(None)
    no_spread = gate.parse_max_regression(None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        models = _models(Path(tmp))
        for label, path in models.items():
            ms = [measure(prof, path, BenchConfig(runs=args.runs, warmup=2)).to_dict() for _ in range(args.k)]
            pairs = list(itertools.permutations(range(args.k), 2))
            row = {"model": label, "k": args.k, "runs": args.runs,
                   "median_ms": sorted(m["latency_ms"]["median"] for m in ms),
                   "spread_ms": [round(gate.latency_spread(m)[0], 5) for m in ms],
                   "noise_ms": [round(gate.median_noise(m)[0], 5) for m in ms],
                   "spread_kind": gate.latency_spread(ms[0])[1]}
            for name, factor in (("false_alarm", 1.0), ("detect_1.5x", 1.5), ("detect_2x", 2.0)):
                with_spread = tol_only = 0
                for i, j in pairs:
                    old, new = _report(ms[i]), _report(ms[j], factor)
                    with_spread += bool(gate.compare(old, gate.figures_of_report(new), tol).regressions)
                    for r in (old, new):  # the same pair without any spread: tolerance only
                        m = r["candidates"][0]["measurement"]["latency_ms"]
                        for k in ("iqr", "p25", "p75", "p90", "std"):
                            m.pop(k, None)
                    tol_only += bool(gate.compare(old, gate.figures_of_report(new), no_spread).regressions)
                row[name] = {"pairs": len(pairs), "gate": with_spread, "tolerance_only": tol_only}
            rows.append(row)
        seconds = time.perf_counter() - t0
    # cost of the gate and the CI outputs on a real-size report (the golden one)
    from edgeprune.pipeline.report import ci_outputs

    golden = json.loads((Path(__file__).resolve().parents[1] / "tests" / "data" / "report-1.golden.json").read_text())
    t = time.perf_counter()
    for _ in range(50):
        ci_outputs.run_summary(golden)
        ci_outputs.metrics_text(ci_outputs.metrics_for_report(golden))
    outputs_ms = (time.perf_counter() - t) / 50 * 1000
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)", "device": "local",
              "seconds": round(seconds, 1), "rows": rows, "ci_outputs_ms": round(outputs_ms, 3),
              "tolerance": "latency=10% (default)"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gate_noise.json").write_text(json.dumps(result, indent=1))
    lines = ["# Regression gate: false alarms on noise, detection of real slowdowns", "",
             f"`python bench/gate_noise.py --k {args.k} --runs {args.runs}`; {result['machine']}; device `local` "
             "(board runner in a child process, ai-edge-litert). Each model measured "
             f"{args.k} times ({args.runs} timed inferences each); every ordered pair of measurements of the SAME file "
             "gated against each other (any latency regression is a false alarm), then the same pairs with the "
             "candidate's latency scaled x1.5 / x2 (a real slowdown). `gate` = tolerance 10 % + the noise of both medians "
             "(1.58 IQR/sqrt(runs) each; what edgeprune does); `tolerance only` = 10 % without it.", "",
             "| model | medians (ms, sorted) | p90 - median (ms) | notch 1.58 IQR/sqrt(n) (ms) | false alarms: gate | false alarms: tolerance only "
             "| 1.5x caught: gate | 2x caught: gate | 2x caught: tolerance only |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fa, d15, d2 = r["false_alarm"], r["detect_1.5x"], r["detect_2x"]
        lines.append(f"| {r['model']} | {', '.join(f'{v:.4f}' for v in r['median_ms'])} "
                     f"| {min(r['spread_ms']):.4f}-{max(r['spread_ms']):.4f} "
                     f"| {min(r['noise_ms']):.4f}-{max(r['noise_ms']):.4f} "
                     f"| {fa['gate']}/{fa['pairs']} | {fa['tolerance_only']}/{fa['pairs']} "
                     f"| {d15['gate']}/{d15['pairs']} | {d2['gate']}/{d2['pairs']} | {d2['tolerance_only']}/{d2['pairs']} |")
    lines += ["", f"CI outputs of a gated report (Markdown summary + metrics, the golden report-1): {outputs_ms:.2f} ms. "
              f"Benchmark wall time {seconds:.0f} s.", ""]
    (RESULTS / "gate_noise.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
