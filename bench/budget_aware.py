"""Budget-aware allocation (issue 22): prune for the budget that binds.

One ``edgeprune run`` per row (default engine: flow + compensation + global allocation on the
bundled example's calibration split), on the nRF52840 microcontroller profile (flash and RAM
computed on the host with TFLite-Micro, latency a MAC-based estimate):

- ``--ram-budget 35kB`` (the issue's headline) and a RAM budget at 50 % of the unpruned
  model's TFLite-Micro arena plus the profile's runtime RAM;
- per budget: ``--allocation uniform``, ``--objective size`` (the parameter-driven global
  allocation, today's default), ``--objective auto`` (the new default: here the RAM budget is
  the one the unpruned model misses, so the allocation pays per byte of peak activation memory).

Per row: exit code, chosen rate (and what it measures), .tflite size, RAM (arena + runtime),
agreement on the run's evaluation split (800 of the bundled 1,000 images) AND on 5,000
Fashion-MNIST test images the run never saw (test images 5,000-9,999; the bundled 1,000 are
test images 0-999), widths, wall time.

    python bench/budget_aware.py [--rows ram35,ram50,ram40kB,ram30kB] [--variants uniform,size,size-np,auto,ram]
                                 [--tag=-SUFFIX] [--keep DIR]

A row named ``ramNNkB`` runs ``--ram-budget NNkB``. ``--tag`` suffixes the rows' files and labels
(a row of another version of the code next to the row of before); each row records the git
commit of the code it ran and the load average before and after it. ``--render`` rebuilds the
.md/.json from the row files; ``--plot KEPT`` adds KEPT's ram35 runs to the fidelity-vs-RAM curves.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from _common import code_version, fashion_mnist, machine, write  # noqa: E402

UNSEEN = slice(5000, 10000)
ARENA0 = 36_640  # the unpruned example's TFLite-Micro arena, measured by the ram35 rows (unpruned_arena_bytes)


def unseen_agreement(tflite: Path, keras_model, x: np.ndarray) -> float:
    from edgeprune.pipeline.convert.fidelity import run_tflite

    ref = keras_model.predict(x, batch_size=1000, verbose=0).argmax(1)
    out, _ = run_tflite(tflite, x)
    return float((out.argmax(1) == ref).mean())


def one_row(label: str, ram_budget, variant: str, out: Path, x_unseen, keras_model) -> dict:
    from edgeprune.pipeline.search.run import RunConfig, run

    from edgeprune.pipeline.search import run_config as rc

    if variant == "uniform":
        prune, search = rc.PruneOptions(allocation="uniform"), rc.SearchOptions()
    elif variant == "size-np":  # --objective size --no-predict
        prune, search = rc.PruneOptions(objective="size"), rc.SearchOptions(predict=False)
    else:
        prune, search = rc.PruneOptions(objective=variant), rc.SearchOptions()
    cfg = RunConfig(device=rc.DeviceOptions(name="nrf52840"), budgets=rc.BudgetOptions(ram=ram_budget),
                    output=rc.OutputOptions(out=out, force=True), prune=prune, search=search)
    t0 = time.perf_counter()
    res = run(cfg)
    secs = time.perf_counter() - t0
    return row_of(label, ram_budget, variant, out, res.report, res.exit_code, secs, x_unseen, keras_model)


def row_of(label, ram_budget, variant, out: Path, rep: dict, exit_code: int, secs: float, x_unseen, keras_model) -> dict:
    ch = rep.get("chosen")
    row = {"budget": label, "ram_budget": ram_budget, "variant": variant, "exit": exit_code,
           "seconds": round(secs, 1) if secs is not None else None, "objective": rep["settings"].get("objective"),
           "rate_measures": rep["settings"]["stages"].get("rate"), "reasons": rep.get("reasons"),
           "reconstructed": bool(rep.get("reconstructed"))}
    if ch:
        import json

        cand = json.loads((out / f"{ch['name']}.json").read_text())
        row.update(rate=ch["rate"], size_bytes=ch["size_bytes"], ram_bytes=ch["ram_bytes"],
                   latency_ms=ch.get("latency_ms"), latency_is_estimate=ch.get("latency_is_estimate"),
                   agreement_eval=ch["fidelity"]["score"] if isinstance(ch["fidelity"], dict) else ch["fidelity"],
                   widths={k: v[1] for k, v in (cand.get("widths") or {}).items()},
                   layers=ch.get("layers"),
                   agreement_unseen=unseen_agreement(out / ch["tflite"], keras_model, x_unseen))
    return row


def reconstruct(d: Path) -> dict:
    """The report's figures of a finished run whose report.json was lost (the bench process died
    after the run): the chosen candidate is the one whose .tflite is best.tflite, its RAM the
    device measurement of that file (measurements.json); everything else from the run's records."""
    import hashlib
    import json

    sha = hashlib.sha256((d / "best.tflite").read_bytes()).hexdigest()
    cands = [json.loads(p.read_text()) for p in sorted(d.glob("cand-*-rate*.json"))
             if not p.name.endswith((".plan.json", ".failed.json"))]
    ch = next(c for c in cands if c.get("sha256") == sha)
    meas = next(v for k, v in json.loads((d / "measurements.json").read_text()).items() if k.startswith(sha))
    run = json.loads((d / "run.json").read_text())
    budget = (run.get("config") or {}).get("ram_budget")
    return {"exit_code": 0, "reasons": [], "budgets": {"ram_bytes": {"value": 35000 if budget in ("35kB", 35000) else budget}},
            "timings": {"total_s": None}, "reconstructed": True,
            "settings": {"objective": None, "stages": ch.get("made_by") or {}},
            "chosen": {"index": ch["index"], "rate": ch["rate"], "name": ch["name"], "tflite": ch["files"]["tflite"],
                       "size_bytes": ch["size_bytes"], "ram_bytes": meas["ram_bytes"], "fidelity": ch["fidelity"]["score"],
                       "layers": None}}


def arena0(out: Path) -> int:
    """The unpruned example's measured TFLite-Micro arena (converted as a run converts it)."""
    import json

    from edgeprune.devices.tflm import measure_arena

    rec = json.loads((out / "cand-00-rate0.00.json").read_text())
    return measure_arena(out / rec["files"]["tflite"]).arena_bytes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="ram35,ram50")
    ap.add_argument("--variants", default="uniform,size,auto")
    ap.add_argument("--render", action="store_true", help="merge the rows written so far into budget_aware.md/.json")
    ap.add_argument("--from-dir", type=Path, help="make the row of --rows/--variants from a finished run directory")
    ap.add_argument("--plot", type=Path, help="kept run folder (--keep): write the fidelity-vs-RAM curves and plot of its ram35 rows")
    ap.add_argument("--latency-error", type=Path, help="kept run folder: the local latency model's build time and "
                    "error against every converted candidate measured on the local device")
    ap.add_argument("--keep", type=Path, help="keep the run directories under this folder (default: a temporary one)")
    ap.add_argument("--tag", default="", help="suffix of the rows' file names and labels (e.g. -ramonly: a row of "
                    "another version of the code next to the row of before)")
    args = ap.parse_args(argv)
    import json

    from _common import RESULTS

    rows_dir = RESULTS / "budget_aware.rows"
    if args.from_dir is not None:
        import keras

        from edgeprune.pipeline.example import example_model_path

        rp = args.from_dir / "report.json"
        rep = json.loads(rp.read_text()) if rp.is_file() else reconstruct(args.from_dir)
        km = keras.models.load_model(example_model_path(), compile=False)
        x_unseen = fashion_mnist()[2][UNSEEN]
        budget = rep["budgets"]["ram_bytes"]["value"]
        row = row_of(args.rows, "35kB" if budget == 35000 or args.rows == "ram35" else budget, args.variants, args.from_dir, rep,
                     rep["exit_code"], rep["timings"]["total_s"], x_unseen, km)
        row["unpruned_arena_bytes"] = arena0(args.from_dir)
        rows_dir.mkdir(parents=True, exist_ok=True)
        (rows_dir / f"{args.rows}-{args.variants}.json").write_text(json.dumps(row, indent=1) + "\n")
        return 0
    if args.latency_error is not None:
        out = latency_error([args.latency_error / "ram35" / v for v in ("uniform", "auto", "size")
                             if (args.latency_error / "ram35" / v).is_dir()])
        (RESULTS / "budget_aware.latency.json").write_text(json.dumps(out, indent=1) + "\n")
        print({k: out[k] for k in ("build_s", "median_abs_error", "n")})
        return 0
    if args.plot is not None:
        cpath = RESULTS / "budget_aware.curves.json"  # the curves written before, replaced where KEPT has the run
        curves = json.loads(cpath.read_text()) if cpath.is_file() else {}
        curves.update({v: curve(args.plot / "ram35" / v) for v in ("uniform", "size-np", "auto", "auto-ramonly")
                       if (args.plot / "ram35" / v / "measurements.json").is_file()})
        (RESULTS / "budget_aware.curves.json").write_text(json.dumps(curves, indent=1) + "\n")
        plot(curves, 35_000, 0.95, RESULTS / "budget_aware_ram35.png")
        return 0
    if args.render:
        rows = [json.loads(p.read_text()) for p in sorted(rows_dir.glob("*.json"))]
        order = {"ram35": 0, "ram50": 1, "ram40kB": 2, "ram30kB": 3}
        vorder = {"uniform": 0, "size": 1, "size-np": 2, "auto": 3, "ram": 4}
        rows.sort(key=lambda r: (order.get(r["budget"], 9), vorder.get(r["variant"], 9), r.get("tag") or ""))
        budgets = {}
        for r in rows:
            if r.get("unpruned_arena_bytes"):
                rb = str(r["ram_budget"])
                b = int(float(rb[:-2]) * 1000) if rb.endswith("kB") else int(rb)
                budgets[r["budget"]] = (r["unpruned_arena_bytes"], b)
        payload = {"machine": machine(), "rows": rows, "unseen": "Fashion-MNIST test images 5000-9999",
                   "budgets": {k: {"unpruned_arena_bytes": a, "ram_budget_bytes": b} for k, (a, b) in budgets.items()}}
        write("budget_aware", payload, render(payload))
        return 0
    import keras

    from edgeprune.pipeline.example import example_model_path

    _, _, xte, _ = fashion_mnist()
    x_unseen = xte[UNSEEN]
    km = keras.models.load_model(example_model_path(), compile=False)
    rows = []
    import contextlib

    keep = contextlib.nullcontext(str(args.keep)) if args.keep else tempfile.TemporaryDirectory(prefix="edgeprune-bench-budget-")
    with keep as tmp:
        tmp = Path(tmp)
        rows_dir.mkdir(parents=True, exist_ok=True)
        for name in args.rows.split(","):
            for v in args.variants.split(","):
                a = None
                if name == "ram35":
                    budget = "35kB"
                elif name.endswith("kB"):  # e.g. ram40kB: --ram-budget 40kB
                    budget = name[3:]
                else:  # 50 % of the unpruned arena (measured) + the profile's 16 KiB runtime RAM
                    a = ARENA0 if ARENA0 else None
                    budget = 16 * 1024 + a // 2
                out = tmp / name / (v + args.tag)
                print(f"row {name} {v}{args.tag} (RAM budget {budget})", flush=True)
                load0 = os.getloadavg()[0]
                row = one_row(name, budget, v, out, x_unseen, km)
                row["unpruned_arena_bytes"] = a if a else arena0(out)
                row.update(tag=args.tag, code=code_version(), load=[round(load0, 2), round(os.getloadavg()[0], 2)])
                rows.append(row)
                (rows_dir / f"{name}-{v}{args.tag}.json").write_text(json.dumps(row, indent=1) + "\n")
                row["command"] = command_of(name, budget, v)
                print("   ", {k: row.get(k) for k in ("exit", "rate", "size_bytes", "ram_bytes",
                                                     "agreement_eval", "agreement_unseen")}, flush=True)
    return 0


def curve(d: Path) -> dict:
    """Fidelity against RAM of every converted candidate of a kept run directory: the predicted
    RAM (peak activation memory + the TFLite-Micro overhead calibrated on candidate 0, 8 B less
    per output channel removed, + the profile's runtime RAM) and, where the run measured it, the
    RAM measured (TFLM arena on the host + runtime)."""
    import json

    from edgeprune.pipeline.data.loading import load_model
    from edgeprune.pipeline.search.resources import RamPredictor, resources_of

    meas = json.loads((d / "measurements.json").read_text()) if (d / "measurements.json").is_file() else {}
    cands = sorted((json.loads(p.read_text()) for p in d.glob("cand-*-rate*.json")
                    if not p.name.endswith((".plan.json", ".failed.json"))), key=lambda c: c["index"])
    pts, pred, ch0 = [], None, None
    for c in cands:
        if c.get("skipped") or not (c.get("files") or {}).get("keras") or not (d / c["files"]["keras"]).is_file():
            continue
        res = resources_of(load_model(d / c["files"]["keras"]), "int8")
        if c["index"] == 0:
            ch0 = res.quant_channels
            cal = c.get("arena_calibration")
            if not cal:  # --no-predict: the run did not calibrate; measure the unpruned arena here
                from edgeprune.devices.tflm import measure_arena

                cal = {"peak_activation_bytes": res.peak_activation_bytes,
                       "arena_bytes": measure_arena(d / c["files"]["tflite"]).arena_bytes}
            if cal:
                pred = RamPredictor()
                pred.calibrate(cal["peak_activation_bytes"], cal["arena_bytes"])
        m = next((v for k, v in meas.items() if k.startswith(c.get("sha256") or "-")), None)
        pts.append({"rate": c["rate"], "fidelity": c["fidelity"]["score"], "size_bytes": c["size_bytes"],
                    "peak_activation_bytes": res.peak_activation_bytes,
                    "ram_predicted": (res.peak_activation_bytes + pred.overhead_of(res.quant_channels, ch0) + 16384)
                    if pred is not None else None,
                    "ram_measured": (m or {}).get("ram_bytes")})
    return {"points": pts}


def plot(curves: dict, budget: int, min_fid: float, path: Path) -> None:
    """Fidelity against the binding resource (RAM) per allocation: the plot the issue asks for."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    marks = {"uniform": "s", "size": "^", "size-np": "^", "auto": "o", "auto-ramonly": "D"}
    colors = {"uniform": "tab:blue", "size": "tab:orange", "size-np": "tab:orange", "auto": "tab:green",
              "auto-ramonly": "tab:purple"}
    for v, cv in curves.items():
        pts = [p for p in cv["points"] if p.get("ram_predicted") is not None]
        if not pts:
            continue
        label = {"uniform": "--allocation uniform", "size": "global, --objective size (parameter-driven)",
                 "size-np": "global, --objective size --no-predict (parameter-driven)",
                 "auto": "global, --objective auto, 9eff99e (RAM + params until met)",
                 "auto-ramonly": "global, --objective auto, 715fcf8 (RAM only until met)"}.get(v, v)
        ax.plot([p["ram_predicted"] / 1000 for p in pts], [p["fidelity"] for p in pts], marker=marks.get(v, "x"),
                color=colors.get(v), label=label + " (predicted RAM)")
        ms = [p for p in pts if p.get("ram_measured")]
        if ms:
            ax.scatter([p["ram_measured"] / 1000 for p in ms], [p["fidelity"] for p in ms], marker="*", s=140,
                       zorder=5, color=colors.get(v), edgecolors="black", label=f"{v}: RAM measured (TFLM arena + runtime)")
    ax.axvline(budget / 1000, color="red", ls="--", lw=1, label=f"RAM budget {budget / 1000:g} kB")
    ax.axhline(min_fid, color="grey", ls=":", lw=1, label=f"--min-fidelity {min_fid}")
    ax.set_xlabel("RAM (kB): TFLite-Micro arena + 16 KiB runtime")
    ax.set_ylabel("top-1 agreement with the original (eval split, int8)")
    ax.set_title("Bundled example, nrf52840: fidelity against the binding resource")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def latency_error(run_dirs: list, threads: int = 1) -> dict:
    """The latency model of the local device for the bundled example (pipeline/search/latency_model.py,
    built as a run builds it: five uniform prunes measured), its build time, and its error
    against the measured p50 of every converted candidate of the kept run directories (each
    .tflite measured on the local device as a run measures, resources from its .keras)."""
    import json
    import keras

    from edgeprune.devices.base import BenchConfig, measure
    from edgeprune.devices.profile import load_profile
    from edgeprune.pipeline.example import example_model_path
    from edgeprune.pipeline.search.latency_model import architecture_id, build, error_against
    from edgeprune.pipeline.data.loading import load_model
    from edgeprune.pipeline.search.resources import resources_of

    prof = load_profile("local")
    km = keras.models.load_model(example_model_path(), compile=False)
    key = {"board": "local", "kind": prof.kind, "host": None, "threads": threads, "quantize": "int8",
           "architecture": architecture_id(km)}
    t0 = time.perf_counter()
    lm = build(km, prof, key)
    build_s = time.perf_counter() - t0
    bc = BenchConfig(runs=50, warmup=5, threads=threads, min_secs=1.0, warmup_min_secs=0.5, max_secs=60)
    rows = []
    for d in run_dirs:
        for p in sorted(Path(d).glob("cand-*-rate*.json")):
            if p.name.endswith((".plan.json", ".failed.json")):
                continue
            c = json.loads(p.read_text())
            f = c.get("files") or {}
            if c.get("skipped") or not f.get("keras") or not (Path(d) / f["tflite"]).is_file():
                continue
            res = resources_of(load_model(Path(d) / f["keras"]), "int8")
            lat = measure(prof, Path(d) / f["tflite"], bc).latency_ms
            rows.append({"run": Path(d).name, "candidate": c["name"], "macs": res.macs,
                         "predicted_ms": round(lm.predict(res), 5), "measured_p50_ms": round(float(lat.p50), 5)})
    pairs = [(r["predicted_ms"], r["measured_p50_ms"]) for r in rows]
    return {"model": lm.describe(), "build_s": round(build_s, 2), "candidates": rows,
            "median_abs_error": error_against(lm, pairs), "n": len(rows)}


def command_of(name, budget, variant) -> str:
    b = budget if isinstance(budget, str) else str(int(budget))
    opt = ("--allocation uniform" if variant == "uniform" else "--objective size --no-predict" if variant == "size-np"
           else f"--objective {variant}")
    return f"edgeprune run --device nrf52840 --ram-budget {b} {opt}"


def extra_sections() -> list:
    """The plot and the latency model's error, when `--plot` / `--latency-error` wrote them."""
    import json

    from _common import RESULTS

    out = []
    cpath = RESULTS / "budget_aware.curves.json"
    if (RESULTS / "budget_aware_ram35.png").is_file() and cpath.is_file():
        curves = json.loads(cpath.read_text())
        out += ["", "## Fidelity against the binding resource (RAM), `--ram-budget 35kB`", "",
                "`python bench/budget_aware.py --plot KEPT` (the kept run directories of the rows above): every "
                "converted candidate's agreement on the evaluation split against its predicted RAM (peak activation "
                "memory + the TFLite-Micro overhead calibrated on candidate 0, 8 B less per channel removed, + 16 KiB "
                "runtime); stars: RAM measured by the run (TFLM arena on the host + runtime). Points in "
                "budget_aware.curves.json.", "", "![fidelity vs RAM](budget_aware_ram35.png)", "",
                "| allocation | rate | .tflite | predicted RAM | measured RAM | agreement eval |", "|---|---|---|---|---|---|"]
        for v, cv in curves.items():
            for q in cv["points"]:
                out.append(f"| {v} | {q['rate']:.2f} | {q['size_bytes']:,} B | "
                           f"{q['ram_predicted']:,} B | " + (f"{q['ram_measured']:,} B" if q.get("ram_measured") else "-")
                           + f" | {q['fidelity']:.4f} |")
    lpath = RESULTS / "budget_aware.latency.json"
    if lpath.is_file():
        L = json.loads(lpath.read_text())
        m = L["model"]
        out += ["", "## Latency model on the local device (the bundled example)", "",
                "`python bench/budget_aware.py --latency-error KEPT`: the fit a run builds "
                "(pipeline/search/latency_model.py: five uniform prunes converted and measured, "
                f"{m['label']}), built in {L['build_s']:.1f} s (loaded machine), against the measured p50 of "
                f"{L['n']} converted candidates of the kept runs (50+ timed runs each, 1 thread): median absolute "
                f"error {100 * L['median_abs_error']:.1f} %.", "",
                "| run | candidate | MACs | predicted | measured p50 | error |", "|---|---|---|---|---|---|"]
        for r in L["candidates"]:
            e = abs(r["predicted_ms"] - r["measured_p50_ms"]) / r["measured_p50_ms"]
            out.append(f"| {r['run']} | {r['candidate']} | {r['macs']:,} | {r['predicted_ms']:.4f} ms | "
                       f"{r['measured_p50_ms']:.4f} ms | {100 * e:.1f} % |")
    return out


def lat(r) -> str:
    if r.get("latency_ms") is None:
        return "n/a"
    return f"{r['latency_ms']:.3g} ms" + (" (estimate)" if r.get("latency_is_estimate") else "")


def secs(r) -> str:
    if r.get("seconds") is None:
        return "n/a"
    return f"{r['seconds']:.0f} s" + (f" (load {r['load'][0]:.1f}-{r['load'][1]:.1f})" if r.get("load") else "")


def vl(r) -> str:
    """A row's variant and tag (the tag names another version of the code)."""
    return r["variant"] + (r.get("tag") or "")


def render(p: dict) -> str:
    lines = ["# Budget-aware allocation: prune for the budget that binds (issue 22)", "",
             "`python bench/budget_aware.py`: one `edgeprune run` per row on the bundled example (Fashion-MNIST CNN, "
             "its 1,000 images: 800 evaluation, 200 calibration), `--device nrf52840` (TFLite-Micro arena measured on "
             "the host + 16 KiB runtime RAM; latency is a MAC-based ESTIMATE), default engine (flow + compensation), "
             "int8. `unseen` = top-1 agreement of the chosen .tflite with the original Keras model on "
             f"{p['unseen']} (never seen by the run). Machine: {p['machine']}.", ""]
    for k, v in p.get("budgets", {}).items():
        if k == "ram50":
            lines.append(f"- `{k}`: unpruned arena {v['unpruned_arena_bytes']:,} B measured; RAM budget = 16,384 B runtime "
                         f"+ 50 % of the arena = {v['ram_budget_bytes']:,} B")
        else:
            lines.append(f"- `{k}`: `--ram-budget {k[3:] if k.endswith('kB') else '35kB'}` ({v['ram_budget_bytes']:,} B); the unpruned arena measured {v['unpruned_arena_bytes']:,} B "
                         f"(+ 16,384 B runtime = {v['unpruned_arena_bytes'] + 16384:,} B)")
    if any(r.get("tag") for r in p["rows"]):
        lines += ["", "Rows tagged `[-ramonly, code ...]` ran the experimental `auto` of commit 715fcf8 (while a budget is "
                  "predicted missed only its resource drives the allocation; 31749e5 differs from it in a docstring only), "
                  "reverted in ae25650; untagged `auto` rows ran `auto` "
                  "as it is (RAM and parameters 0.5/0.5 while missed, the parameters after). See the Reading."]
    lines += ["", "| RAM budget | allocation / objective | exit | rate (of what) | .tflite | RAM | latency p50 | agreement eval | agreement unseen | widths conv1/conv2/fc1 | time |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in p["rows"]:
        rm = r.get("rate_measures") or ""
        what = "channels" if r["variant"] == "uniform" else (
            "peak act. + params" if "peak" in rm and "parameters" in rm else "params" if "parameters" in rm else "peak act.")
        var = ("--allocation uniform" if r["variant"] == "uniform" else "global, --objective size --no-predict"
               if r["variant"] == "size-np" else f"global, --objective {r['variant']}") + (
            f" [{r['tag']}, code {r.get('code')}]" if r.get("tag") else "")
        if r.get("rate") is None:
            lines.append(f"| {r['ram_budget']} | {var} | {r['exit']} | - | - | - | - | - | - | - | {secs(r)} |")
            continue
        w = r["widths"]
        lines.append(f"| {r['ram_budget']} | {var} | {r['exit']} | {r['rate']:.2f} ({what}) | {r['size_bytes']:,} B | "
                     f"{r['ram_bytes']:,} B | {lat(r)} | {r['agreement_eval']:.4f} | {r['agreement_unseen']:.4f} | "
                     f"{w.get('conv1')}/{w.get('conv2')}/{w.get('fc1')} | {secs(r)} |")
    lines += ["", "Commands (one run per row; the bundled example and its images, so no --model or --data):", ""]
    for r in p["rows"]:
        lines.append(f"- {r['budget']} {vl(r)}: `{r.get('command') or command_of(r['budget'], r['ram_budget'], r['variant'])}`")
    lines += ["", "Reasons of the rows that exit 3:", ""]
    for r in p["rows"]:
        if r["exit"] != 0:
            lines.append(f"- {r['budget']} {vl(r)}: " + "; ".join(r.get("reasons") or []))
    lines += ["", "What each row's rate measures (report.json `settings.objective.rate_measures`):", ""]
    for r in p["rows"]:
        lines.append(f"- {r['budget']} {vl(r)}: {r['rate_measures']}")
    for r in p["rows"]:
        if r.get("layers"):
            lines += ["", f"Chosen model per layer, {r['budget']} `{vl(r)}` (report.json `chosen.layers`):", "",
                      "| layer | width before | width | params | MACs | latency share | activation |", "|---|---|---|---|---|---|---|"]
            for x in r["layers"]:
                lines.append(f"| {x['layer']} | {x.get('width_before')} | {x.get('width')} | {x['params']:,} | {x['macs']:,} | "
                             f"{100 * x['latency_share']:.1f}% | {x['activation_bytes']:,} B |")
    lines += extra_sections()
    lines += ["", READING, "", NOT_MEASURED]
    return "\n".join(lines) + "\n"


READING = """## Reading

Which rows count toward the issue's "exits 0 on at least two budgets where the parameter-driven
allocation exits 3": `ram35` (35,000 B) and `ram40kB` (40,000 B), two budgets 5 kB apart that bind
at different widths (auto's conv1 14 at 35 kB, 19 at 40 kB). `ram50` (34,704 B) is 296 B below
35 kB: not counted as independent. `ram30kB`: nothing meets it (below).
Untagged `auto` rows ran `auto` as it is on this branch (objective.py unchanged since 9eff99e;
the ram35/ram50 rows of earlier sessions, the ram40kB/ram30kB rows of this session). Rows tagged
`-ramonly` ran an experiment, commit 715fcf8, reverted in ae25650 (below). `size` and `uniform`
do not depend on it. The bench records code and load per row from the `-ramonly` rows on.

- `ram40kB` (this session, `--ram-budget 40kB`, load average 3-10): `--objective size` exit 3,
  every candidate from rate 0.05 on predicted over 40 kB (the parameter-driven widths do not
  depend on the budget: its smallest RAM, measured with `--no-predict` in the ram35 size-np row,
  is 46.3 kB at rate 0.90). `--objective auto` exit 0: rate 0.60, 139,576 B, RAM 38,528 B,
  agreement 0.9525 eval / 0.9536 unseen, conv1/conv2/fc1 19/32/80. `--allocation uniform` exit
  0: rate 0.55, 176,800 B, RAM 33,888 B, 0.95125 / 0.9530 (the same model as at 35 kB: uniform's
  0.60 fell to 0.9475). So 40 kB is the second budget where the resource-driven allocation exits
  0 and the parameter-driven one exits 3, with a file 21 % smaller than uniform's.
- `ram35`: `size` exit 3 (smallest RAM 46.3 kB at rate 0.90 with `--no-predict`); `auto` exit 0,
  rate 0.65, 173,368 B, RAM 33,760 B, 0.95125 / 0.9518, 14/34/96 (1.9 % smaller than uniform's
  176,800 B at the same eval agreement).
- `ram30kB` (this session, load 7-9): nothing meets it. `uniform` exit 3 (candidates 0.05-0.55
  predicted over 30 kB, fidelity 0.9475 at 0.60); `size` exit 3 (every candidate predicted over);
  `auto` exit 3 (load 4.9-6.0): smallest RAM measured 30.2 kB at rate 0.65, 192 B over the
  budget, at an agreement still >= 0.95; its 0.70 fell to 0.9375. The closest of the four.
- The experiment (commit 715fcf8, `-ramonly` rows; the brief's hypothesis from the MobileNet row):
  while a budget is predicted missed, only the missed resource drives a chunk's saving (the
  parameters at 1/1000 of their weight), the parameters after, instead of 0.5 RAM + 0.5
  parameters while missed. Same rate axis. Results, one run each:
  35 kB: exit 0, rate 0.65, 163,320 B, RAM 32,752 B, 0.95625 / 0.9554, 13/32/96 (better than
  `auto`: 173,368 B at 0.95125); 34,704 B: exit 0, rate 0.60, 254,800 B, RAM 33,104 B, 0.95625 /
  0.9582, 13/36/136 (its 0.65, 13/30/112, 177,752 B, measured 0.9475; `auto`: 173,368 B);
  40 kB: exit 0, rate 0.55, 229,272 B, RAM 37,968 B, 0.96125 / 0.9594, 18/34/128 (its 0.60,
  18/34/72, 133,848 B, measured 0.9425; `auto`: 139,576 B); 30 kB: exit 3 (smallest RAM 32.6 kB
  at rate 0.50, fidelity 0.9475 at 0.55). MobileNet-style net: exit 3, but 0.8775 at the first
  candidate within the budget against `auto`'s 0.8087 (bench/budget_aware_nets.md).
  So: a smaller file at one budget, larger files (+47 %, +64 %) at two, exit 3 where `auto` exits
  3. The differences come from single candidates 1 % around the 0.95 threshold (8 of 800 images)
  on a 0.05 rate grid where one step is 77-95 kB of file: one run per row does not separate the
  two objectives on the example. Reverted (ae25650): the brief's condition for the change was
  `--objective ram` beating `auto` on the MobileNet-style net, and it did not (0.7475 against
  0.8087), and the direct test is mixed. The plot (35 kB) shows both `auto` curves: within the
  budget the experiment's lies above (0.97 at 34,720 B predicted against 0.96125 at 34,008 B),
  above the budget not everywhere (0.97125 at 36,238 B against 0.975 at 36,304 B).
- Both versions narrow fc1 first (256 -> 200 at rates 0.05-0.10, identical candidates to 0.15 at
  40 kB). Not the prune-ahead gap noted in objective.py: a CLI run with 715fcf8 and `--jobs 1`
  (`edgeprune run --device nrf52840 --ram-budget 40kB --jobs 1`, not a bench row) made the same
  widths at every rate to 0.30 and the same answer (rate 0.55, 229,272 B, 0.96125). Likely
  (inferred, the greedy's chunk log is not kept): fc1's channels each carry 8 B of the predicted
  arena (the per-channel overhead) and, refitted, cost almost no loss at rate 0.
- `--objective ram` is NOT RAM-only: it pays RAM and parameters 1:1 (objective.py `TIE` = 1.0),
  the same balance as `auto` while missed; its MobileNet row (budget_aware_nets.md) reached the
  RAM budget at 0.7475 agreement, below `auto` (0.8087) and the experiment (0.8775).
- The channel-aware RAM prediction against the measured RAM of the chosen candidates:
  auto 33,720 / 33,760 B, uniform 33,832 / 33,888 B, size-np at 0.90 46,284 / 46,304 B (ram35).
- Earlier attempts at `auto` (previous sessions, ram35): the weighted objective without
  switching: rate 0.65, 268,040 B, 0.95875 / 0.9586; switching with a 5 % target margin: rate
  0.60, 268,416 B, 0.9575 / 0.9594. Then a 2 % margin and, for `auto` only, a loss change below
  5 % of the current loss counted as 5 % of it (greedy.py NOISE_REL): `auto` as it is.
- Wall times were taken on a 2-core machine shared with a CI run and other sessions (load
  averages in the time column where recorded; 7-11 in the earlier sessions): they say nothing
  about the tool's speed."""


NOT_MEASURED = """## Compute-bound nets (bench/budget_aware_nets.md), and what is left of issue 22

- DS-CNN-style net (conv 5x5/2 + 4 depthwise-separable blocks of 64, BatchNorm; seeded, 2 epochs
  on 20,000 training images, test accuracy 0.848), `bench/budget_aware_nets.py --nets dscnn`:
  RAM budget 33,048 B (16 KiB + 50 % of its 33,328 B arena) on nrf52840: `--objective size` and
  `auto` both exit 3 (fidelity fell below 0.95 at rate 0.55 / 0.40 before the RAM was met: every
  layer holds 14x14x64, so halving the arena means halving every block, with no retraining);
  `--latency-budget` at 40 % of the unpruned p50 measured on the local device (0.0766 ms ->
  0.03062 ms): `size` and `latency` both exit 3 (size: fastest 0.07 ms at rate 0.40; latency:
  candidates 0.05-0.50 predicted over the budget, fidelity 0.849 at 0.55). Its local latency
  model: 6.5 s to build, leave-one-out error 14 %. The unpruned p50 measured 0.105 ms and
  0.0766 ms in two runs 5 minutes apart: the loaded machine's noise is of the budget's order.
  No budget where the resource-driven allocation exits 0 and the parameter-driven one exits 3
  was found on this net.
- MobileNet-style net (8 depthwise-separable blocks, BatchNorm, input upsampled to 56x56:
  7.93 M MACs, peak activation 150,528 B; seeded, 2 epochs, test accuracy 0.8428),
  `python bench/budget_aware_nets.py --nets mobilenet --rows ram50 --variants auto,size`: RAM
  budget 98,088 B (16 KiB + 50 % of its 163,408 B arena) on nrf52840: `--objective auto` exit 3
  (stem 16 -> 8 and b1_pw 32 -> 18 by rate 0.50, still predicted 111 kB; the first candidate
  predicted within the budget, rate 0.60, measured 0.8088 agreement: its parameter term had
  also narrowed b3-b8); `--objective size` exit 3 (stem and b1_pw kept whole: every candidate
  predicted at 180 kB). This session: `--objective ram` exit 3 (first candidate within the
  budget, rate 0.50, 0.7475) and the reverted experiment 715fcf8 exit 3 (RAM only until met:
  stem 16 -> 7, b1_pw 32 -> 17, b3_pw 48 -> 44, the rest whole; first candidate within the
  budget, rate 0.25, 0.8775). None meets it at 0.95 without retraining; details in
  bench/budget_aware_nets.md.
- NOT run: the MobileNet `--latency-budget` rows (local device and emulated Pi; ~19 min per
  MobileNet row on the loaded machine), the `auto` row on the local device (`auto` does not
  build a board latency model, so there it is `size`), the latency model's error on the
  emulated Pi. (The example's 50 %-of-arena row: run, above.)
- Latency model error on the local device: 13.2 % median over 14 candidates of the example
  (aim 10 %: not met; the example's 0.015-0.05 ms inferences are mostly interpreter overhead
  and the machine was loaded: the unpruned model measured 0.0518 and 0.0435 ms in the same
  script). Build time 8.7 s (aim <= 30 s: met)."""


if __name__ == "__main__":
    raise SystemExit(main())
