"""How long ``edgeprune run`` takes on the bundled example with the local device, and where
the time goes: per candidate, prune / convert / fidelity / save / device measurement, so the
overhead beyond conversion is visible.

    python bench/pipeline_speed.py [--step 0.05] [--max-rate 0.9] [--runs 50]

Two runs in fresh temporary run dirs: ``default`` (what ``edgeprune run`` does: the fewest
device runs) and ``measure_all`` (every host-passing candidate measured, for the per-candidate
device time). The whole-run wall time is measured around
a child process (``python -m edgeprune run --json``), so it includes Python start-up and
TensorFlow's import (``load_s`` in the report covers that import, the model, data and reference
outputs).
Writes ``bench/results/pipeline_speed.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
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
STAGES = ("prune_s", "convert_s", "fidelity_s", "save_s", "device_s")


def one(name: str, step: float, max_rate: float, runs: int, measure_all: bool) -> dict:
    """``python -m edgeprune run --json`` in a child process, timed from outside (start-up,
    TensorFlow import and report writing included), in a fresh temporary run dir."""
    with tempfile.TemporaryDirectory(prefix="edgeprune-bench-") as tmp:
        argv = [sys.executable, "-m", "edgeprune", "run", "--json", "--out", str(Path(tmp) / "run"), "--step", str(step),
                "--max-rate", str(max_rate), "--runs", str(runs)] + (["--measure-all"] if measure_all else [])
        t0 = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if proc.returncode not in (0, 3):
        raise SystemExit(f"edgeprune run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    rep = json.loads(proc.stdout)
    exit_code = proc.returncode
    cands = []
    for c in rep["candidates"]:
        t = dict(c["timings"])
        t.setdefault("device_s", 0.0)
        cands.append({"index": c["index"], "rate": c["rate"], "size_bytes": c["size_bytes"],
                      "fidelity": c["fidelity"]["score"], "measured": c["measurement"] is not None,
                      **{k: round(t.get(k, 0.0), 3) for k in STAGES},
                      "total_s": round(sum(t.get(k, 0.0) for k in STAGES), 3)})
    tm = rep["timings"]
    accounted = sum(tm[k] for k in ("load_s", *STAGES))
    return {"name": name, "wall_s": round(wall, 2), "exit_code": exit_code, "chosen": rep["chosen"],
            "device_runs": rep["device_runs"], "timings": tm, "other_s": round(tm["total_s"] - accounted, 2),
            "candidates": cands}


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def markdown(payload: dict) -> str:
    lines = ["# edgeprune run: pipeline speed (bundled example, local device)", "",
             f"Machine: {payload['machine']}. Settings: step {payload['step']}, max rate {payload['max_rate']}, "
             f"{payload['runs']} timed runs per device measurement, int8, paoding, min fidelity 0.95 (default).", ""]
    for r in payload["runs_"]:
        ch = r["chosen"]
        tm = r["timings"]
        lines += [f"## {r['name']}", "",
                  f"- whole run: **{r['wall_s']:.1f} s** wall (load {tm['load_s']:.1f} s: TensorFlow import, model, "
                  f"data, reference outputs; prune {tm['prune_s']:.1f}, convert {tm['convert_s']:.1f}, fidelity "
                  f"{tm['fidelity_s']:.1f}, save {tm['save_s']:.1f}, device {tm['device_s']:.1f}; reports and rest "
                  f"{r['other_s']:.1f}; Python start-up and imports before the run {r['wall_s'] - tm['total_s']:.1f})",
                  f"- device runs: {r['device_runs']['made']} made, {r['device_runs']['not_measured']} candidates "
                  "not measured",
                  (f"- chosen: rate {ch['rate']:.2f}, {ch['size_bytes']:,} B, {ch['score_name']} {ch['fidelity']:.4f}, "
                   f"latency {ch['latency_ms']:.3f} ms" if ch else "- no candidate met every limit"),
                  "", "| # | rate | .tflite B | fidelity | prune s | convert s | fidelity s | save s | device s | total s |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for c in r["candidates"]:
            lines.append(f"| {c['index']} | {c['rate']:.2f} | {c['size_bytes']:,} | {c['fidelity']:.4f} | {c['prune_s']:.2f} "
                         f"| {c['convert_s']:.2f} | {c['fidelity_s']:.2f} | {c['save_s']:.2f} | "
                         f"{c['device_s']:.2f}{'' if c['measured'] else ' (not measured)'} | {c['total_s']:.2f} |")
        n = len(r["candidates"])
        conv = sum(c["convert_s"] for c in r["candidates"])
        other = sum(c["prune_s"] + c["fidelity_s"] + c["save_s"] for c in r["candidates"])
        lines += ["", f"Per candidate: convert {conv / n:.2f} s on average; prune + fidelity + save "
                      f"{other / n:.2f} s (overhead beyond conversion).", ""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--step", type=float, default=0.05)
    ap.add_argument("--max-rate", type=float, default=0.9)
    ap.add_argument("--runs", type=int, default=50)
    a = ap.parse_args(argv)
    results = [one("default", a.step, a.max_rate, a.runs, False), one("measure_all", a.step, a.max_rate, a.runs, True)]
    payload = {"benchmark": "pipeline_speed", "step": a.step, "max_rate": a.max_rate, "runs": a.runs,
               "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
                          f"TensorFlow {_version('tensorflow')}",
               "runs_": results}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pipeline_speed.json").write_text(json.dumps(payload, indent=1) + "\n")
    (RESULTS / "pipeline_speed.md").write_text(markdown(payload))
    sys.stdout.write(markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
