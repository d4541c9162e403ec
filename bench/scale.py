"""Scale: wall time per stage and peak memory of ``edgeprune run`` (and ``convert``) from the
bundled example up to ImageNet-size models, with 100 and 1,000 samples, serial vs ``--jobs 2``.

    python bench/scale.py [--quick] [--only mnv2,resnet50,...] [--default-engine]

Models: the bundled example (Fashion-MNIST CNN), the MLPerf Tiny models
(../shared/models/mlperf-tiny), MobileNetV2-224 and ResNet-50-224 (``keras.applications`` with
``weights=None``: random weights built here, seeded, no download; timing and memory only).

Data: the example runs on its own labelled images (all 1,000, or the first 100); every other
model on seeded random inputs of its input shape (ImageNet models: uint8 224x224x3 images with
``input_scale`` = 1/255 in an ``.npz``; MLPerf Tiny: a float32 ``.npy``, memory-mapped by
edgeprune), so the fidelity figures mean nothing here and ``--min-fidelity 0.01`` keeps the search
from stopping early. ImageNet and MLPerf runs use ``--criterion paoding --no-compensate``: this
benchmark is about the data passes and conversion, not about the data-aware pruning stages (one
optional row, ``--default-engine``, shows what flow + compensation cost on MobileNetV2-224).

Each row is one child process (``python -m edgeprune ...``) timed from outside. Memory: the
child's peak RSS from GNU ``/usr/bin/time`` (its ``wait4``) (the largest single process of its tree: the ``run`` process
itself, or a conversion worker), and the peak of the SUM of the RSS of the whole process tree
(main + conversion workers), sampled from /proc every 0.2 s. Stage times come from the run's
report.json (``timings``; with ``--jobs 2`` ``convert_s`` is the workers' conversion time, which
overlaps the main process's pruning and fidelity). One run per row.

Writes ``bench/results/scale.json`` (after every row) and ``bench/results/scale.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MLPERF_DIR = ROOT.parent / "shared" / "models" / "mlperf-tiny"
MLPERF = {"resnet8": "pretrainedResnet.h5", "vww": "vww_96.h5", "ad01": "ad01.h5", "kws": "str_ww_ref_model.h5"}
WORK = Path(os.environ.get("EDGEPRUNE_BENCH_CACHE", Path.home() / ".cache" / "edgeprune-bench")) / "scale"
TIME = "/usr/bin/time"  # GNU time (Debian package "time")
STAGES = ("prune_s", "convert_s", "fidelity_s", "save_s", "device_s")


# --------------------------------------------------------------------------- inputs
def imagenet_model(kind: str) -> Path:
    path = WORK / f"{kind}_224.keras"
    if not path.exists():
        import keras

        keras.utils.set_random_seed(0)
        build = {"mobilenetv2": keras.applications.MobileNetV2, "resnet50": keras.applications.ResNet50}[kind]
        WORK.mkdir(parents=True, exist_ok=True)
        build(weights=None, input_shape=(224, 224, 3)).save(path)
    return path


def data_file(key: str, shape: tuple[int, ...], n: int) -> Path:
    WORK.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    if shape == (224, 224, 3):
        path = WORK / f"img224_{n}.npz"
        if not path.exists():
            np.savez(path, x=rng.integers(0, 256, (n, *shape), dtype=np.uint8), input_scale=np.float32(1 / 255))
        return path
    path = WORK / f"{key}_{n}.npy"
    if not path.exists():
        np.save(path, rng.uniform(0, 1, (n, *shape)).astype(np.float32))
    return path


def example_data(n: int) -> Path:
    from edgeprune.pipeline.example import example_data_path

    src = example_data_path()
    if n >= 1000:
        return src
    path = WORK / f"example_{n}.npz"
    if not path.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        with np.load(src) as z:
            np.savez(path, **{k: (z[k][:n] if z[k].ndim else z[k]) for k in z.files})
    return path


def input_shape(path: Path) -> tuple[int, ...]:
    from edgeprune.pipeline.data.loading import load_model

    return tuple(int(d) for d in load_model(path).inputs[0].shape[1:])


# --------------------------------------------------------------------------- measuring a child
def _tree_rss(root: int) -> int:
    """Sum of VmRSS over ``root`` and its descendants (bytes)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/statm") as fh:
                rss[int(d)] = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
    total, todo = 0, [root]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, []))
    return total


def measure(argv: list[str]) -> dict:
    """Run ``argv``; wall seconds, exit code, stdout, peak RSS (wait4) and peak tree RSS."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    # /usr/bin/time reports the child's ru_maxrss from its own wait4: measured from a fresh, small
    # parent (a child forked from this process would inherit this process's RSS high-water mark)
    fd, rss_file = tempfile.mkstemp(prefix="edgeprune-scale-rss-")
    os.close(fd)
    t0 = time.perf_counter()
    proc = subprocess.Popen([TIME, "-f", "%M", "-o", rss_file, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env)
    peak_tree = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak_tree[0] = max(peak_tree[0], _tree_rss(proc.pid))
            done.wait(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out_chunks: list[bytes] = []
    err_chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()), daemon=True)
    reader.start()
    out_chunks.append(proc.stdout.read())
    proc.wait()
    wall = time.perf_counter() - t0
    done.set()
    th.join()
    reader.join()
    text = Path(rss_file).read_text().strip().splitlines()
    os.unlink(rss_file)
    peak_kb = int(text[-1]) if text and text[-1].strip().isdigit() else 0
    return {"wall_s": round(wall, 2), "exit_code": proc.returncode, "stdout": b"".join(out_chunks).decode(),
            "stderr": b"".join(err_chunks).decode()[-3000:], "peak_rss_bytes": peak_kb * 1024,
            "peak_tree_rss_bytes": int(peak_tree[0])}


def run_row(name: str, model: Path | None, data: Path, n: int, jobs: int, step: float, max_rate: float,
            engine: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="edgeprune-scale-") as tmp:
        argv = [sys.executable, "-m", "edgeprune", "run", "--json", "--out", str(Path(tmp) / "run"), "--data", str(data),
                "--step", str(step), "--max-rate", str(max_rate), "--min-fidelity", "0.01", "--runs", "5",
                "--warmup", "1", "--jobs", str(jobs), *engine] + (["--model", str(model)] if model else [])
        m = measure(argv)
    row = {"kind": "run", "model": name, "samples": n, "jobs": jobs, "step": step, "max_rate": max_rate,
           "engine": " ".join(engine) or "default", **{k: m[k] for k in ("wall_s", "exit_code", "peak_rss_bytes",
                                                                          "peak_tree_rss_bytes")}}
    if m["exit_code"] not in (0, 3):
        row["error"] = m["stderr"][-1500:]
        return row
    rep = json.loads(m["stdout"])
    t = rep["timings"]
    row.update({"timings": {k: t.get(k) for k in ("load_s", *STAGES, "total_s")}, "load": t.get("load", {}),
                "candidates": len(rep["candidates"]), "rates": [c["rate"] for c in rep["candidates"]],
                "sha256": [c["sha256"] for c in rep["candidates"]], "eval_samples": rep["data"]["n_samples"],
                "stop": rep.get("stop"), "reasons": rep.get("reasons"),
                "scores": [c["fidelity"]["score"] for c in rep["candidates"]]})
    return row


def convert_row(name: str, model: Path, samples: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="edgeprune-scale-") as tmp:
        argv = [sys.executable, "-m", "edgeprune", "convert", str(model), "--samples", str(samples), "--json",
                "-o", str(Path(tmp) / "m.tflite")]
        m = measure(argv)
    row = {"kind": "convert", "model": name, "samples": samples, **{k: m[k] for k in (
        "wall_s", "exit_code", "peak_rss_bytes", "peak_tree_rss_bytes")}}
    if m["exit_code"] != 0:
        row["error"] = m["stderr"][-1500:]
    else:
        rep = json.loads(m["stdout"])
        row["convert_s"] = rep["conversion"]["seconds"]
        row["size_bytes"] = rep["conversion"]["size_bytes"]
    return row


KERAS_OUTPUTS_CHILD = r"""
import os, resource, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
from edgeprune.pipeline.data.loading import load_model
from edgeprune.pipeline.convert.fidelity import keras_outputs
from edgeprune.pipeline.data.batching import batch_size_for
model = load_model(sys.argv[1]); n = int(sys.argv[3])
x = np.random.default_rng(0).uniform(0, 1, (n, 224, 224, 3)).astype(np.float32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if sys.argv[2] == "eager-256":  # the former keras_outputs: eager calls on batches of 256
    for s in range(0, n, 256):
        y = np.asarray(model(x[s:s + 256], training=False))
else:
    y = keras_outputs(model, x)
print(time.perf_counter() - t0, before * 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
      batch_size_for(model))
"""


def keras_outputs_row(name: str, model: Path, how: str, n: int) -> dict:
    m = measure([sys.executable, "-c", KERAS_OUTPUTS_CHILD, str(model), how, str(n)])
    row = {"kind": "keras_outputs", "model": name, "how": how, "samples": n, "exit_code": m["exit_code"]}
    if m["exit_code"] == 0:
        secs, before, after, b = m["stdout"].split()
        row.update({"seconds": round(float(secs), 2), "rss_before_bytes": int(before), "peak_rss_bytes": int(after),
                    "batch": int(b) if how != "eager-256" else min(n, 256)})
    else:
        row["error"] = m["stderr"][-1500:]
    return row


# --------------------------------------------------------------------------- report
def gb(b) -> str:
    return f"{b / 1e9:.2f}" if b else "-"


def render(res: dict) -> str:
    rows = res["rows"]
    lines = ["# Scale: ImageNet-size models and real-size data sets", "",
             f"Machine: {res['machine']}. **The 2 cores were shared with other agents' work while this ran**, so "
             "wall times carry that noise; each row is ONE run. Peak RSS: `wait4` (GNU time's) = the largest single process "
             "(the `run` process or one conversion worker); tree = the peak of the sum over the process tree "
             "(main + workers), sampled every 0.2 s. Fidelity figures are meaningless here (random weights / "
             "random inputs except for the example): `--min-fidelity 0.01` so that the search does not stop at the first candidates (see the notes for where it still did).", "",
             f"Started {res['started']}, finished {res.get('finished', '(still running)')}"
             + (f" ({res['parts']} parts of the benchmark ran side by side)" if res.get("parts", 1) > 1 else "") + ".", ""]
    lines += [f"{n}" for n in res.get("notes", [])] + ([""] if res.get("notes") else [])
    runs = [r for r in rows if r["kind"] == "run"]
    if runs:
        lines += ["## `edgeprune run`", "",
                  "| model | samples (eval) | engine | jobs | candidates | wall s | load s (TF / model / data / reference) "
                  "| prune s | convert s | fidelity s | save s | device s | peak RSS GB (wait4) | peak RSS GB (tree) | exit |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in runs:
            if "timings" not in r:
                lines.append(f"| {r['model']} | {r['samples']} | {r['engine']} | {r['jobs']} | - | {r['wall_s']} | "
                             f"failed: {r.get('error', '')[:200].splitlines()[-1] if r.get('error') else ''} | | | | | | "
                             f"{gb(r['peak_rss_bytes'])} | {gb(r['peak_tree_rss_bytes'])} | {r['exit_code']} |")
                continue
            t, ld = r["timings"], r.get("load", {})
            load = (f"{t['load_s']:.1f} ({ld.get('tensorflow_import_s', 0):.1f} / {ld.get('model_s', 0):.1f} / "
                    f"{ld.get('data_s', 0):.1f} / {ld.get('reference_s', 0):.1f})")
            lines.append(f"| {r['model']} | {r['samples']} ({r['eval_samples']}) | {r['engine']} | {r['jobs']} | "
                         f"{r['candidates']} (rates {', '.join(f'{x:g}' for x in r['rates'])}) | {r['wall_s']:.1f} | {load} | "
                         + " | ".join(f"{(t.get(k) or 0):.1f}" for k in STAGES)
                         + f" | {gb(r['peak_rss_bytes'])} | {gb(r['peak_tree_rss_bytes'])} | {r['exit_code']} |")
        lines += [""]
        ratios = []
        for j, r in enumerate(runs):
            if r["jobs"] == 2 and "timings" in r:  # against the serial row measured just before it
                s = next((q for q in reversed(runs[:j]) if q["model"] == r["model"] and q["samples"] == r["samples"]
                          and q["jobs"] == 1 and q["engine"] == r["engine"] and "timings" in q), None)
                if s:
                    same = "same .tflite bytes (sha256)" if s["sha256"] == r["sha256"] else "DIFFERENT .tflite bytes"
                    ratios.append(f"- {r['model']}, {r['samples']} samples: `--jobs 2` wall {r['wall_s']:.1f} s / serial "
                                  f"{s['wall_s']:.1f} s = **{r['wall_s'] / s['wall_s']:.2f}**; {same}")
        if ratios:
            lines += ["### `--jobs 2` against serial (same benchmark run)", "", *ratios, ""]
    conv = [r for r in rows if r["kind"] == "convert"]
    if conv:
        lines += ["## `edgeprune convert` (int8, synthetic calibration and evaluation of `--samples` each)", "",
                  "| model | --samples | wall s | conversion s | peak RSS GB (wait4) | exit |", "|---|---|---|---|---|---|"]
        for r in conv:
            lines.append(f"| {r['model']} | {r['samples']} | {r['wall_s']:.1f} | {r.get('convert_s', '-')} | "
                         f"{gb(r['peak_rss_bytes'])} | {r['exit_code']} |")
        by = {r["samples"]: r["peak_rss_bytes"] for r in conv if r["model"] == "MobileNetV2-224" and r["exit_code"] == 0}
        if 20 in by and 500 in by:
            lines += ["", f"MobileNetV2-224: peak RSS with `--samples 500` / with `--samples 20` = "
                          f"**{by[500] / by[20]:.3f}** ({gb(by[500])} GB / {gb(by[20])} GB)."]
        lines += [""]
    ko = [r for r in rows if r["kind"] == "keras_outputs"]
    if ko:
        lines += ["## Reference outputs: eager batches of 256 (before) against `keras_outputs` now", "",
                  "Child process, random inputs held in memory; peak RSS of the process (TensorFlow and the model "
                  "included; `before` = after loading them and the inputs).", "",
                  "| model | how | samples | batch | seconds | RSS before GB | peak RSS GB |", "|---|---|---|---|---|---|---|"]
        for r in ko:
            lines.append(f"| {r['model']} | {r['how']} | {r['samples']} | {r.get('batch', '-')} | {r.get('seconds', '-')} | "
                         f"{gb(r.get('rss_before_bytes'))} | {gb(r.get('peak_rss_bytes'))} |")
        lines += [""]
    lines += checks(rows)
    return "\n".join(lines) + "\n"


def checks(rows: list[dict]) -> list[str]:
    """The issue's targets, read from the rows above."""
    out = ["## Targets (issue 17)", ""]
    ok = lambda r: r.get("exit_code") in (0, 3) and "error" not in r  # noqa: E731
    m = [r for r in rows if r["kind"] == "run" and r["model"] == "MobileNetV2-224" and r["samples"] == 1000 and ok(r)]
    for r in m:
        out.append(f"- `run` MobileNetV2-224, 1,000 samples, `--jobs {r['jobs']}`: peak RSS {gb(r['peak_rss_bytes'])} GB "
                   f"(largest process), {gb(r['peak_tree_rss_bytes'])} GB (whole tree): "
                   + ("under 4 GB" if r["peak_rss_bytes"] < 4e9 else "NOT under 4 GB") + ".")
    if not m:
        out.append("- `run` MobileNetV2-224 with 1,000 samples: not measured.")
    rn = [r for r in rows if r["kind"] == "run" and r["model"] == "ResNet-50-224" and r["samples"] == 1000]
    for r in rn:
        out.append(f"- `run` ResNet-50-224, 1,000 samples, `--jobs {r['jobs']}`: "
                   + (f"completed (exit {r['exit_code']}) in {r['wall_s']:.0f} s, peak RSS {gb(r['peak_rss_bytes'])} GB."
                      if ok(r) else f"FAILED (exit {r['exit_code']})."))
    if not rn:
        out.append("- `run` ResNet-50-224 with 1,000 samples: not measured.")
    by = {r["samples"]: r["peak_rss_bytes"] for r in rows if r["kind"] == "convert" and r["model"] == "MobileNetV2-224" and ok(r)}
    if 20 in by and 500 in by:
        d = by[500] / by[20] - 1
        out.append(f"- `convert` MobileNetV2-224 peak RSS, `--samples 500` against `--samples 20`: {100 * d:+.1f} % "
                   + ("(within 25 %)." if abs(d) <= 0.25 else "(NOT within 25 %)."))
    for j, r in enumerate(rows):
        if r["kind"] == "run" and r["model"] == "MobileNetV2-224" and r["jobs"] == 2 and ok(r):
            s = next((q for q in reversed(rows[:j]) if q["kind"] == "run" and q["model"] == r["model"]
                      and q["samples"] == r["samples"] and q["jobs"] == 1 and q["engine"] == r["engine"] and ok(q)), None)
            if s:
                out.append(f"- `--jobs 2` / serial wall time, MobileNetV2-224 with {r['samples']} samples: "
                           f"{r['wall_s'] / s['wall_s']:.2f}.")
    return out + [""]


def save(res: dict, name: str = "scale") -> None:
    """Write ``<name>.json``; scale.md is rendered from every ``scale*.json`` (parts run in parallel)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(res, indent=1) + "\n")
    parts = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("scale*.json"))]
    merged = dict(parts[0], rows=[r for p in parts for r in p["rows"]])
    merged["started"] = min(p["started"] for p in parts)
    merged["finished"] = max((p.get("finished") or "(still running)") for p in parts)
    merged["parts"] = len(parts)
    merged["notes"] = [n for p in parts for n in p.get("notes", [])]
    (RESULTS / "scale.md").write_text(render(merged))


# --------------------------------------------------------------------------- main
def plan(args) -> list[tuple]:
    mnv2, r50 = imagenet_model("mobilenetv2"), imagenet_model("resnet50")
    fast = ["--criterion", "paoding", "--no-compensate", "--allocation", "uniform"]  # the data-free engine
    img = {n: data_file("img224", (224, 224, 3), n) for n in (100, 1000)}
    todo: list[tuple] = [
        ("convert", "MobileNetV2-224", mnv2, 20),
        ("convert", "MobileNetV2-224", mnv2, 500),
        ("run", "MobileNetV2-224", mnv2, img[1000], 1000, 1, 0.1, 0.3, fast),
        ("run", "MobileNetV2-224", mnv2, img[1000], 1000, 2, 0.1, 0.3, fast),
        ("run", "ResNet-50-224", r50, img[1000], 1000, 1, 0.15, 0.3, fast),
        ("run", "MobileNetV2-224", mnv2, img[100], 100, 1, 0.1, 0.3, fast),
        ("run", "MobileNetV2-224", mnv2, img[100], 100, 2, 0.1, 0.3, fast),
        ("run", "ResNet-50-224", r50, img[100], 100, 1, 0.15, 0.3, fast),
        ("run", "ResNet-50-224", r50, img[1000], 1000, 2, 0.15, 0.3, fast),
    ]
    for n in (100, 1000):
        for jobs in (1, 2):
            todo.append(("run", "example (Fashion-MNIST CNN)", None, example_data(n), n, jobs, 0.1, 0.3, []))
    for key, fname in MLPERF.items():
        path = MLPERF_DIR / fname
        if not path.exists():
            continue
        shape = input_shape(path)
        for n in (100, 1000):
            for jobs in ((1, 2) if n == 1000 else (1,)):
                todo.append(("run", f"MLPerf Tiny {key}", path, data_file(key, shape, n), n, jobs, 0.2, 0.4, fast))
    todo += [("keras_outputs", "MobileNetV2-224", mnv2, "eager-256", 64),
             ("keras_outputs", "MobileNetV2-224", mnv2, "keras_outputs", 64)]
    if args.default_engine:
        todo.append(("run", "MobileNetV2-224", mnv2, img[100], 100, 1, 0.1, 0.3, []))
    if args.samples:
        todo = [t for t in todo if t[0] == "run" and t[4] == args.samples]
    if args.only:
        keep = [s.strip().lower() for s in args.only.split(",")]
        todo = [t for t in todo if any(k in t[1].lower() or k == t[0] for k in keep)]
    return todo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated model name parts (e.g. mobilenet,resnet)")
    ap.add_argument("--samples", type=int, help="only the runs with this many samples")
    ap.add_argument("--part", default="scale", help="results file name (scale_<x>.json for a part run in parallel)")
    ap.add_argument("--default-engine", action="store_true", help="add a MobileNetV2-224 run with flow + compensation")
    args = ap.parse_args()
    res = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                      f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM, Python "
                      f"{platform.python_version()}",
           "started": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": []}
    for item in plan(args):
        print("...", item[:2], item[3:6] if item[0] == "run" else item[3:], file=sys.stderr, flush=True)
        if item[0] == "convert":
            row = convert_row(item[1], item[2], item[3])
        elif item[0] == "keras_outputs":
            row = keras_outputs_row(item[1], item[2], item[3], item[4])
        else:
            row = run_row(*item[1:])
        print("   ", {k: v for k, v in row.items() if k not in ("sha256", "error")}, file=sys.stderr, flush=True)
        res["rows"].append(row)
        save(res, args.part)
    res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    save(res, args.part)


if __name__ == "__main__":
    main()
