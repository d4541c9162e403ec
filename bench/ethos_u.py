"""Vela latency, SRAM and flash against the prune rate on Arm Ethos-U profiles (issue 25).

For the bundled example (default engine, its 1,000 labelled images) and the MLPerf Tiny models
(read from ../shared/models/mlperf-tiny: ResNet-8, VWW MobileNetV1-0.25, the ad01 autoencoder,
the DS-CNN keyword spotter; data-free engine, synthetic inputs) this runs

    edgeprune run --device ethos-u55-128 --min-fidelity 0.01 --step S --max-rate M --json

(so that the search does not stop at the first fidelity failure: fidelity is not what this bench
is about), which compiles every candidate with Vela, then ``--resume`` of the same run directory
with ``--device ethos-u55-256`` and ``--device ethos-u65-256``: the candidates are reused and only
recompiled by Vela for the other system. The figures are each report's ``ethos_u.curve`` and
candidates' ``vela``: Vela's ESTIMATES (its performance model), not measured on a board.

Writes bench/results/ethos_u.md and .json. One run per row.

    python bench/ethos_u.py [--models example,resnet8,vww,ad01,kws] [--profiles ethos-u55-128,...]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _common import machine, write  # noqa: E402

MLPERF_DIR = Path(os.environ.get("EDGEPRUNE_MLPERF_DIR", ROOT.parent / "shared" / "models" / "mlperf-tiny"))
MODELS = {
    # name: (model file or None for the example, engine options, step, max rate, note)
    "example": (None, [], 0.05, 0.9, "Fashion-MNIST CNN, default engine (flow + compensation + global), its 1,000 labelled images"),
    "resnet8": ("pretrainedResnet.h5", ["--criterion", "paoding", "--no-compensate", "--allocation", "uniform"], 0.1, 0.9,
                "MLPerf Tiny ResNet-8 (CIFAR-10), data-free engine, synthetic inputs"),
    "vww": ("vww_96.h5", ["--criterion", "paoding", "--no-compensate", "--allocation", "uniform"], 0.1, 0.9,
            "MLPerf Tiny visual wake words MobileNetV1-0.25 96x96, data-free engine, synthetic inputs"),
    "ad01": ("ad01.h5", ["--criterion", "paoding", "--no-compensate", "--allocation", "uniform"], 0.1, 0.9,
             "MLPerf Tiny anomaly-detection autoencoder (Dense), data-free engine, synthetic inputs"),
    "kws": ("str_ww_ref_model.h5", ["--criterion", "paoding", "--no-compensate", "--allocation", "uniform"], 0.1, 0.9,
            "MLPerf Tiny DS-CNN streaming wake word, data-free engine, synthetic inputs"),
}
PROFILES = ["ethos-u55-128", "ethos-u55-256", "ethos-u65-256"]


def run(argv: list[str]) -> tuple[dict | None, float, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "edgeprune", *argv], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode not in (0, 3):
        return None, wall, p.stderr[-2000:]
    return json.loads(p.stdout), wall, ""


def bench_model(name: str, profiles: list[str], work: Path) -> dict:
    model, engine, step, max_rate, note = MODELS[name]
    out = work / name
    row: dict = {"model": name, "note": note, "step": step, "max_rate": max_rate, "engine": " ".join(engine) or "default",
                 "profiles": {}}
    for i, prof in enumerate(profiles):
        argv = ["run", "--device", prof, "--out", str(out), "--json", "--min-fidelity", "0.01",
                "--step", str(step), "--max-rate", str(max_rate), *engine]
        if model is not None:
            argv += ["--model", str(MLPERF_DIR / model)]
        argv.append("--resume")  # the first profile makes the candidates (or reuses --work's), the others reuse them
        rep, wall, err = run(argv)
        if rep is None:
            row["profiles"][prof] = {"error": err}
            print(f"{name} {prof}: FAILED\n{err}", file=sys.stderr)
            continue
        e = rep["ethos_u"]
        cands = []
        for c in rep["candidates"]:
            v = c.get("vela")
            if not v:
                continue
            cands.append({"rate": c["rate"], "params": c["params"], "tflite_bytes": c["size_bytes"],
                          "fidelity": c["fidelity"]["score"], "latency_ms": v["inference_time_ms"],
                          "cycles_total": v["cycles_total"], "cycles_npu": v["cycles_npu"],
                          "sram_bytes": v["sram_bytes"], "off_chip_flash_bytes": v["off_chip_flash_bytes"],
                          "cpu_ops": v["cpu_ops"], "npu_ops": v["npu_ops"], "npu_share": v["npu_share"],
                          "cpu_operators": [o["op"] for o in v["cpu_operators"]],
                          "npu_share_dropped": v["npu_share_dropped"],
                          "vela_s": c["timings"].get("vela_s")})
        row["profiles"][prof] = {
            "wall_s": round(wall, 1), "vela_version": e["vela_version"], "config": e["config"],
            "candidates": cands, "reused": rep["resume"]["candidates_reused"],
            "synthetic": rep["data"]["synthetic"], "host_run": e["host_run"],
        }
        print(f"{name} {prof}: {len(cands)} candidates, {wall:.0f} s", file=sys.stderr)
    return row


def direct_model(name: str, profiles: list[str]) -> dict:
    """The same engine (PAODING, uniform widths, no compensation) through edgeprune's Pruner and
    converter in one process, every rate to --max-rate, each compiled by Vela: for a model whose
    `edgeprune run` stops early on synthetic fidelity (ResNet-8: every synthetic input lands in one
    class and the first pruned step flips it, agreement 0.0)."""
    from edgeprune.devices.ethos_u import compile_tflite
    from edgeprune.devices.profile import load_profile
    from edgeprune.pipeline.convert.converter import ConvertConfig, captured_output, convert
    from edgeprune.pipeline.search.host_phase import rate_schedule
    from edgeprune.pipeline.data.loading import load_model
    from edgeprune.pipeline.prune.pruner import PruneConfig, Pruner

    model_file, _engine, step, max_rate, note = MODELS[name]
    model = load_model(MLPERF_DIR / model_file)
    rates = rate_schedule(step, max_rate)
    pruner = Pruner(model, PruneConfig(rate=max(rates), criterion="paoding", step=step))
    row: dict = {"model": name, "note": note + "; made DIRECTLY (Pruner + converter in the bench process, the run's "
                 "engine: paoding, uniform, no compensation), see direct_model()", "step": step, "max_rate": max_rate,
                 "engine": "--criterion paoding --no-compensate --allocation uniform (direct)", "profiles": {}}
    made = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgeprune-ethos-u-direct-") as tmp:
        for r in rates:
            if r > 0:
                pruner.step_to(r)
            with captured_output():
                km = pruner.build()
            res = convert(km, ConvertConfig(quantize="int8", num_calibration=200))
            path = Path(tmp) / f"rate{r:.4f}.tflite"
            res.save(path)
            made.append((r, int(km.count_params()), res.size_bytes, path))
        for prof in profiles:
            p = load_profile(prof)
            cands = []
            for r, params, size, path in made:
                v = compile_tflite(p, path)
                cands.append({"rate": r, "params": params, "tflite_bytes": size, "fidelity": None,
                              "latency_ms": v.inference_time_ms, "cycles_total": v.cycles_total,
                              "cycles_npu": v.cycles_npu, "sram_bytes": v.sram_bytes,
                              "off_chip_flash_bytes": v.off_chip_flash_bytes, "cpu_ops": v.cpu_ops,
                              "npu_ops": v.npu_ops, "npu_share": v.npu_share,
                              "cpu_operators": [o["op"] for o in v.cpu_operators],
                              "npu_share_dropped": v.npu_share < cands[0]["npu_share"] - 1e-9 if cands else False,
                              "vela_s": v.seconds})
            row["profiles"][prof] = {"wall_s": round(time.perf_counter() - t0, 1), "vela_version": v.vela_version,
                                     "config": v.config, "candidates": cands, "reused": 0, "synthetic": True,
                                     "host_run": v.host_run}
            print(f"{name} {prof} (direct): {len(cands)} candidates", file=sys.stderr)
    return row


def kb(b: int) -> str:
    return f"{b / 1000:.1f}"


def markdown(payload: dict) -> str:
    m = payload["machine"]
    lines = ["# Ethos-U: Vela latency, SRAM and flash against the prune rate", "",
             f"Machine: {m['machine']}, {m['cpus']} cores (shared with other agents' work), Python {m['python']}, "
             f"TensorFlow {m['tensorflow']}; ethos-u-vela {payload.get('vela_version')}. "
             f"Started {payload['started']}, finished {payload['finished']}. `python bench/ethos_u.py`.", "",
             "**Every latency, SRAM and flash figure here is Vela's ESTIMATE** (Vela's performance model for the "
             "profile's system config and memory mode: cycles of the NPU and of its memories at the NPU clock), "
             "not a measurement on a board. Each model's candidates were made ONCE (one `edgeprune run` on "
             "ethos-u55-128) and then compiled by Vela for each profile (`--resume` with another `--device`). "
             "The MLPerf Tiny models are read from `../shared/models/mlperf-tiny` (bench only; the tests build "
             "their own models); they have no real data here, so their fidelity column is agreement on synthetic "
             "inputs (labelled so by edgeprune, uninformative for these models) and `--min-fidelity 0.01` keeps the "
             "search going to `--max-rate`: the curves show what pruning is worth on the NPU, not which rate to ship. "
             "The example uses its real labelled images.", "",
             "Profiles: ethos-u55-128 and ethos-u55-256 = Vela system config Ethos_U55_High_End_Embedded (NPU 500 MHz, "
             "SRAM 4 GB/s, off-chip flash 0.5 GB/s), ethos-u65-256 = Ethos_U65_Embedded (NPU 500 MHz, SRAM 8 GB/s, "
             "off-chip flash 0.5 GB/s); memory mode Shared_Sram (weights in flash, arena in SRAM); Vela's shipped "
             "Arm/vela.ini.", ""]
    ran = sorted({p for row in payload["rows"] for p in row["profiles"]})
    lines += [f"Profiles run in this result: {', '.join(ran)}."] + [f"- {n}" for n in payload.get("notes", [])] + [""]
    summary = ["## Summary: unpruned against the largest rate", "",
               "| model | profile | rate | Vela latency ms | speed-up | SRAM kB | off-chip flash kB | NPU share |",
               "|---|---|---|---|---|---|---|---|"]
    for row in payload["rows"]:
        for prof, r in row["profiles"].items():
            if "error" in r or not r["candidates"]:
                continue
            c0, cn = r["candidates"][0], r["candidates"][-1]
            summary.append(f"| {row['model']} | {prof} | 0.00 -> {cn['rate']:.2f} | {c0['latency_ms']:.3f} -> "
                           f"{cn['latency_ms']:.3f} | {c0['latency_ms'] / cn['latency_ms']:.1f}x | "
                           f"{kb(c0['sram_bytes'])} -> {kb(cn['sram_bytes'])} | {kb(c0['off_chip_flash_bytes'])} -> "
                           f"{kb(cn['off_chip_flash_bytes'])} | {100 * c0['npu_share']:.0f} % -> {100 * cn['npu_share']:.0f} % |")
    lines += summary + [""]
    for row in payload["rows"]:
        lines += [f"## {row['model']}", "", f"{row['note']}; step {row['step']:g}, max rate {row['max_rate']:g}, "
                  f"engine: {row['engine']}.", ""]
        profs = [p for p, r in row["profiles"].items() if "error" not in r]
        for p, r in row["profiles"].items():
            if "error" in r:
                lines += [f"- {p}: FAILED: `{r['error'].strip().splitlines()[-1][:300]}`", ""]
        if not profs:
            continue
        base = row["profiles"][profs[0]]
        head = "| rate | params | .tflite kB | fidelity |" + "".join(
            f" {p} ms | {p} SRAM kB | {p} flash kB |" for p in profs) + " NPU ops (CPU ops) |"
        lines += [head, "|" + "---|" * (4 + 3 * len(profs) + 1)]
        for i, c in enumerate(base["candidates"]):
            cells = [f"{c['rate']:.3f}".rstrip("0").rstrip(".") if c["rate"] else "0", f"{c['params']:,}",
                     kb(c["tflite_bytes"]), "-" if c["fidelity"] is None else f"{c['fidelity']:.4f}"]
            for p in profs:
                cc = row["profiles"][p]["candidates"][i]
                cells += [f"{cc['latency_ms']:.3f}", kb(cc["sram_bytes"]), kb(cc["off_chip_flash_bytes"])]
            ops = f"{c['npu_ops']} ({c['cpu_ops']}" + (f": {', '.join(sorted(set(c['cpu_operators'])))}" if c["cpu_operators"] else "") + ")"
            if c["npu_share_dropped"]:
                ops += " **NPU share dropped**"
            cells.append(ops)
            lines.append("| " + " | ".join(cells) + " |")
        walls = ", ".join(f"{p} {row['profiles'][p]['wall_s']:.0f} s ({row['profiles'][p]['reused']} candidates reused)"
                          for p in profs)
        vs = [c["vela_s"] for p in profs for c in row["profiles"][p]["candidates"] if c.get("vela_s")]
        lines += ["", f"Wall time of each `edgeprune run`: {walls} (a run that reuses the candidates only recompiles "
                  f"them with Vela)." + (f" One Vela compilation: {min(vs):.2f}-{max(vs):.2f} s." if vs else ""),
                  f"Host run of Vela's output: {base['host_run']['message'] if base.get('host_run') else '-'}", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--profiles", default=",".join(PROFILES))
    ap.add_argument("--name", default="ethos_u")
    ap.add_argument("--direct", default="", help="models made by direct_model() instead of `edgeprune run`")
    ap.add_argument("--work", type=Path, help="keep the run directories here (a later call reuses their candidates)")
    ap.add_argument("--note", action="append", default=[], help="a note for the results (with --merge)")
    ap.add_argument("--merge", help="only merge the rows of these results (comma-separated names, e.g. two parts run "
                                    "side by side) into --name")
    args = ap.parse_args()
    if args.merge:
        parts = [json.loads((ROOT / "bench" / "results" / f"{n}.json").read_text()) for n in args.merge.split(",")]
        payload = dict(parts[0], rows=[r for p in parts for r in p["rows"]],
                       started=min(p["started"] for p in parts), finished=max(p["finished"] for p in parts),
                       parts=args.merge.split(","), notes=args.note)
        write(args.name, payload, markdown(payload))
        return
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    rows: list = []
    mach = machine()

    def save() -> None:  # after every model: a bench stopped early keeps what it measured
        versions = {r["vela_version"] for row in rows for r in row["profiles"].values() if "vela_version" in r}
        payload = {"machine": mach, "started": started,
                   "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                   "vela_version": ", ".join(sorted(versions)), "rows": rows}
        write(args.name, payload, markdown(payload))

    with tempfile.TemporaryDirectory(prefix="edgeprune-ethos-u-bench-") as tmp:
        work = args.work or Path(tmp)
        for name in args.models.split(","):
            if MODELS[name][0] is not None and not (MLPERF_DIR / MODELS[name][0]).exists():
                print(f"{name}: {MLPERF_DIR / MODELS[name][0]} absent, skipped", file=sys.stderr)
                continue
            if name in args.direct.split(","):
                rows.append(direct_model(name, args.profiles.split(",")))
            else:
                rows.append(bench_model(name, args.profiles.split(","), work))
            save()


if __name__ == "__main__":
    main()
