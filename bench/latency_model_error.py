"""The board latency model's error (issue 22): predicted vs measured latency of the candidates of a
real ``edgeprune run --objective latency`` on the bundled example, the DS-CNN-style and the
MobileNet-style net of bench/budget_aware_nets.py (trained there, cached in ~/.cache/edgeprune-bench).

One run per net:

    edgeprune run --model M --data D --device DEV --num-threads 1 --objective latency
                  --latency-budget 1000 --min-fidelity 0.01 --max-rate R --step S --measure-all

The latency budget is far above any candidate (nothing is predicted over it, so every candidate is
converted), ``--min-fidelity 0.01`` lets the host phase go to ``--max-rate``, and ``--measure-all``
measures every converted candidate on the device (the run's own measurement: 50+ timed runs,
>= 1 s). The run builds the latency model as every latency run does (pipeline/search/latency_model.py:
five uniform prunes converted and measured on the device, a fit of ``a + b MACs + c activation
bytes``) and writes it to ``latency-model.json`` with its build time. Each candidate's prediction is
that model applied to the candidate's .keras (resources_of), its measured latency is the p50 in
report.json. The candidates are allocation prunes (non-uniform widths), not the fit's uniform
prunes: held out. The rate-0 candidate is the fit's first model (measured again): reported, not
counted in the held-out median.

``--forms`` also fits alternative model forms on the same fit points (the run's five uniform
prunes) and reports their error on the same candidates (see FORMS).

    python bench/latency_model_error.py [--nets example,dscnn,mobilenet] [--device local]
        [--max-rate 0.6] [--step 0.05] [--objective latency|size] [--keep DIR] [--tag=-SUFFIX]
    python bench/latency_model_error.py --nets ... --noise-from DIR     # each candidate measured again
    python bench/latency_model_error.py --nets ... --emulated-from DIR  # the emulated Pi 4 (tests/boards)
    python bench/latency_model_error.py --nets ... --build-trials 3     # 1- vs 2-pass builds
    python bench/latency_model_error.py --render [--forms]

Does not read ../shared; the emulated board is the one .ci/aarch64-board.sh builds (tests/boards/emulated.py).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from _common import RESULTS, code_version, fashion_mnist, machine, write  # noqa: E402

ROWS = RESULTS / "latency_model_error.rows"


def run_net(net: str, device: str, out: Path, max_rate: float, step: float, data_path: Path,
            objective: str = "latency") -> dict:
    cmd = [sys.executable, "-m", "edgeprune", "run", "--device", device, "--num-threads", "1",
           "--objective", objective, "--latency-budget", "1000", "--min-fidelity", "0.01",
           "--max-rate", str(max_rate), "--step", str(step), "--measure-all", "--out", str(out), "--force"]
    if net != "example":
        import budget_aware_nets as ban

        model_path, _ = ban.trained(net, fashion_mnist())
        cmd[4:4] = ["--model", str(model_path), "--data", str(data_path)]
    load0 = os.getloadavg()
    code = code_version()  # the code the run imports (the row is written after it)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    secs = time.perf_counter() - t0
    shown = " ".join(Path(c).name if c.startswith("/") else c for c in cmd[3:])
    return {"net": net, "device": device, "command": "edgeprune " + shown, "exit": p.returncode, "code": code,
            "seconds": round(secs, 1), "load_before": [round(v, 2) for v in load0],
            "load_after": [round(v, 2) for v in os.getloadavg()], "stderr_tail": p.stderr[-800:] if p.returncode not in (0, 3) else None}


def collect(out: Path, with_measurement: bool = True) -> dict:
    """The run's latency model and, per measured candidate, its resources and measured p50."""
    from edgeprune.pipeline.data.loading import load_model
    from edgeprune.pipeline.search.resources import resources_of

    lm = json.loads((out / "latency-model.json").read_text())
    rep = json.loads((out / "report.json").read_text())
    cands = []
    for c in rep["candidates"]:
        m = c.get("measurement")
        f = c.get("files") or {}
        if not f.get("keras") or not f.get("tflite") or (with_measurement and not m):
            continue
        res = resources_of(load_model(out / f["keras"]), "int8")
        lat = m["latency_ms"] if m else {}
        layers = [{"name": l.name, "kind": l.kind, "width": l.width, "macs": int(l.macs),
                   "act": int(l.activation_bytes)} for l in res.layers]
        cands.append({"candidate": c["name"], "rate": c["rate"], "macs": int(res.macs),
                      "act_bytes": int(sum(l.activation_bytes for l in res.layers)),
                      "tflite": f["tflite"], "measured_p50_ms": lat.get("p50"), "iqr_ms": lat.get("iqr"),
                      "runs": m.get("runs") if m else None, "layers": layers})
    return {"latency_model": lm, "candidates": cands, "report_settings": rep.get("settings", {}).get("measurement")}


def model_path_of(net: str) -> Path:
    if net == "example":
        from edgeprune.pipeline.example import example_model_path

        return Path(example_model_path())
    import budget_aware_nets as ban

    return ban.trained(net, fashion_mnist())[0]


def build_local(net: str, passes: int = 1) -> dict:
    """The local device's latency model of ``net``, built as a latency run builds it (timed): for
    runs that do not build one (``--objective size``)."""
    import keras

    from edgeprune.devices.profile import load_profile
    from edgeprune.pipeline.search.latency_model import architecture_id, build

    km = keras.models.load_model(model_path_of(net), compile=False)
    prof = load_profile("local")
    key = {"board": "local", "kind": prof.kind, "host": None, "threads": 1, "quantize": "int8",
           "architecture": architecture_id(km)}
    t0 = time.perf_counter()
    lm = build(km, prof, key, passes=passes)
    lm.build_s = round(time.perf_counter() - t0, 2)
    return lm.describe()


def build_trials(net: str, n: int) -> dict:
    """The local latency model of ``net`` built ``n`` times with one measuring pass (as runs build it)
    and ``n`` times with two passes (lowest p50 of two), alternately; each scored (held-out median)
    on the measured candidates of every local row of ``net``: does the two-pass build lower the error?"""
    rows = [json.loads(p.read_text()) for p in sorted(ROWS.glob(f"{net}*.json")) if "emulated" not in p.name]
    out = {"net": net, "rows": [r.get("tag") or r["command"].split("--objective ")[1].split()[0] for r in rows],
           "trials": []}
    for i in range(n):
        for passes in (1, 2):
            load0 = os.getloadavg()[0]
            lm = build_local(net, passes)
            errs = []
            for r in rows:
                r2 = dict(r, latency_model=lm, candidates=[dict(c) for c in r["candidates"]])
                errs.append(score(r2)["held_out"]["median"])
            out["trials"].append({"passes": passes, "build_s": lm["build_s"], "load": [round(load0, 2), round(os.getloadavg()[0], 2)],
                                  "label": lm["label"], "held_out_median_per_row": errs,
                                  "points_ms": [p["measured_ms"] for p in lm["points"]]})
            print(net, passes, lm["build_s"], errs, flush=True)
    return out


def remeasure(net: str, run_dir: Path, prof, noise: bool = False) -> dict:
    """The candidates of a kept run, measured again on another board (``prof``), with that board's
    latency model built as a run builds it (pipeline/search/latency_model.build, timed). ``noise``:
    every candidate measured a second time after the first pass (a new process on the board each
    time, as every measurement): the board's noise floor."""
    import keras

    from edgeprune.devices.base import BenchConfig, measure
    from edgeprune.pipeline.search.latency_model import architecture_id, build

    if net == "example":
        from edgeprune.pipeline.example import example_model_path

        model_path = example_model_path()
    else:
        import budget_aware_nets as ban

        model_path, _ = ban.trained(net, fashion_mnist())
    km = keras.models.load_model(model_path, compile=False)
    key = {"board": prof.name, "kind": prof.kind, "host": None, "threads": 1, "quantize": "int8",
           "architecture": architecture_id(km)}
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    lm = build(km, prof, key)
    lm.build_s = round(time.perf_counter() - t0, 2)
    row = collect(run_dir, with_measurement=False)
    bc = BenchConfig(runs=50, warmup=5, threads=1, min_secs=1.0, warmup_min_secs=0.5, max_secs=150)
    for c in row["candidates"]:
        meas = measure(prof, run_dir / c["tflite"], bc)
        c.update(measured_p50_ms=float(meas.latency_ms.p50), iqr_ms=meas.latency_ms.iqr, runs=meas.runs)
    if noise:
        l0 = os.getloadavg()[0]
        for c in row["candidates"]:
            c["remeasured_p50_ms"] = float(measure(prof, run_dir / c["tflite"], bc).latency_ms.p50)
        row["remeasure_load"] = [round(l0, 2), round(os.getloadavg()[0], 2)]
    row.update(latency_model=lm.describe(), load_before=[round(v, 2) for v in load0],
               load_after=[round(v, 2) for v in os.getloadavg()], seconds=round(time.perf_counter() - t0, 1),
               net=net, exit=None, command=f"candidates of the local run ({run_dir.name}) measured again on {prof.name}")
    return row


def feats(layers: list, act_bytes: float, form: str) -> list:
    """A model's features for a model form (per-layer figures: name, kind, macs, act)."""
    macs = sum(l["macs"] for l in layers)
    dw = sum(l["macs"] for l in layers if l["kind"] == "DepthwiseConv2D")
    if form == "a + b MACs + c act (the run's)":
        return [1.0, macs, act_bytes]
    if form == "a + b MACs":
        return [1.0, macs]
    if form == "a + b dw MACs + c other MACs":
        return [1.0, dw, macs - dw]
    if form == "a + b dw MACs + c other MACs + d act":
        return [1.0, dw, macs - dw, act_bytes]
    if form == "a + b other MACs + c act":
        return [1.0, macs - dw, act_bytes]
    raise ValueError(form)


FORMS = ("a + b MACs + c act (the run's)", "a + b MACs", "a + b dw MACs + c other MACs",
         "a + b dw MACs + c other MACs + d act", "a + b other MACs + c act")


def fit_point_layers(net: str, rates) -> list:
    """Per-layer resources of the fit's uniform prunes (as latency_model.build makes them, host only)."""
    import keras

    from edgeprune.pipeline.prune.pruner import PruneConfig, Pruner
    from edgeprune.pipeline.search.resources import resources_of

    if net == "example":
        from edgeprune.pipeline.example import example_model_path

        model_path = example_model_path()
    else:
        import budget_aware_nets as ban

        model_path, _ = ban.trained(net, fashion_mnist())
    km = keras.models.load_model(model_path, compile=False)
    pruner = Pruner(km, PruneConfig(rate=max(rates), criterion="l1", step=0.05, round_to=None))
    out = []
    for rate in rates:
        if rate > 0:
            pruner.step_to(rate)
        res = resources_of(pruner.build(), "int8")
        out.append([{"name": l.name, "kind": l.kind, "width": l.width, "macs": int(l.macs), "act": int(l.activation_bytes)}
                    for l in res.layers])
    return out


def forms(row: dict) -> dict:
    """Each form fitted (non-negative least squares, as latency_model.fit) on the run's five fit
    points, its median absolute error on the held-out candidates."""
    from edgeprune.pipeline.search.latency_model import _nnls

    pts = row["latency_model"]["points"]
    lay = fit_point_layers(row["net"], [p["rate"] for p in pts])
    held = [c for c in row["candidates"] if c["rate"] > 0]
    out = {}
    for form in FORMS:
        X = np.array([feats(l, p["act_bytes"], form) for l, p in zip(lay, pts)], dtype=np.float64)
        y = np.array([p["measured_ms"] for p in pts])
        scale = np.maximum(X.max(axis=0), 1e-12)
        coef = _nnls(X / scale, y) / scale
        pred = [float(np.array(feats(c["layers"], c["act_bytes"], form)) @ coef) for c in held]
        out[form] = dict(errors(list(zip(pred, [c["measured_p50_ms"] for c in held]))), coef=coef.tolist())
    return out


def remeasure_local(row: dict, run_dir: Path) -> None:
    """The noise floor: every candidate of a local row measured again (as the run measures: 50+
    timed runs, >= 1 s, 1 thread); the median relative difference of the two measurements is what
    no model can get under on this loaded machine."""
    from edgeprune.devices.base import BenchConfig, measure

    bc = BenchConfig(runs=50, warmup=5, threads=1, min_secs=1.0, warmup_min_secs=0.5, max_secs=150)
    load0 = os.getloadavg()
    for c in row["candidates"]:
        c["remeasured_p50_ms"] = float(measure("local", run_dir / c.get("tflite", c["candidate"] + ".tflite"), bc).latency_ms.p50)
    row["remeasure_load"] = [round(load0[0], 2), round(os.getloadavg()[0], 2)]


def errors(points_pred_meas) -> dict:
    errs = [abs(p - m) / m for p, m in points_pred_meas]
    return {"median": float(np.median(errs)) if errs else None, "max": float(np.max(errs)) if errs else None,
            "n": len(errs)}


def score(row: dict) -> dict:
    """Predictions of the run's model (its stored coefficients) and the held-out error."""
    lm = row["latency_model"]
    for c in row["candidates"]:
        dw = sum(l["macs"] for l in c["layers"] if l["kind"] in ("DepthwiseConv1D", "DepthwiseConv2D"))
        per_dw = lm["ms_per_mac"] if lm.get("ms_per_dw_mac") is None else lm["ms_per_dw_mac"]
        c["predicted_ms"] = (lm["intercept_ms"] + lm["ms_per_mac"] * (c["macs"] - dw) + per_dw * dw
                             + lm["ms_per_act_byte"] * c["act_bytes"])
        c["error"] = abs(c["predicted_ms"] - c["measured_p50_ms"]) / c["measured_p50_ms"]
    held = [c for c in row["candidates"] if c["rate"] > 0]
    rem = [(c["remeasured_p50_ms"], c["measured_p50_ms"]) for c in row["candidates"] if c.get("remeasured_p50_ms")]
    groups: dict = {}  # candidates with the same MACs and activation bytes are the same widths: one model
    for c in held:
        groups.setdefault((c["macs"], c["act_bytes"]), []).append(c)
    distinct = [(g[0]["predicted_ms"], float(np.median([c["measured_p50_ms"] for c in g]))) for g in groups.values()]
    big = max(groups.values(), key=len) if groups else []
    spread = None
    if len(big) >= 3:  # one model measured several times (as several candidates): the board's noise
        ms = np.array([c["measured_p50_ms"] for c in big])
        spread = {"n": len(big), "macs": big[0]["macs"], "min_ms": float(ms.min()), "max_ms": float(ms.max()),
                  "median_abs_dev": float(np.median(np.abs(ms - np.median(ms)) / np.median(ms)))}
    two = [(c["predicted_ms"], (c["measured_p50_ms"] + c["remeasured_p50_ms"]) / 2) for c in held
           if c.get("remeasured_p50_ms")]
    return {"noise_floor": errors(rem) if rem else None, "distinct_held_out": errors(distinct),
            "held_out_vs_mean_of_two": errors(two) if two else None,
            "same_model_spread": spread, "held_out": errors([(c["predicted_ms"], c["measured_p50_ms"]) for c in held]),
            "all": errors([(c["predicted_ms"], c["measured_p50_ms"]) for c in row["candidates"]])}


def objective_of(r: dict) -> str:
    c = r.get("command", "")
    obj = c.split("--objective ")[1].split()[0] if "--objective " in c else "latency (the local run's candidates)"
    return f"{obj}, {str(r.get('code', '?')).split()[0]}" + (f" ({r['tag']})" if r.get("tag") else "")


def render(rows: list) -> str:
    lines = ["# Latency model error (issue 22)", "",
             "`python bench/latency_model_error.py`: see the script's docstring. One real "
             "`edgeprune run --objective latency --measure-all` per net; the run's latency model "
             "(latency-model.json: five uniform prunes measured on the device, fit `a + b MACs + c activation bytes`) "
             "predicts every measured candidate (allocation prunes, non-uniform widths: held out from the fit). "
             "Measured = the run's p50 (50+ timed runs, >= 1 s, 1 thread). The machine was loaded "
             "(2 cores shared with other sessions): load averages per row.", "",
             "| net | run (objective, code) | device | build | fit | held-out candidates | median abs error | max | distinct models (median of their measurements): n, median error | rate-0 error | noise floor (measured again vs measured, median) | load (1/5/15 min, before -> after) | run time |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lm = r["latency_model"]
        z = [c for c in r["candidates"] if c["rate"] == 0]
        e = r["score"]["held_out"]
        lines.append(
            f"| {r['net']} | {objective_of(r)} | {r['device_label']} | {lm.get('build_s', float('nan')):.1f} s | {lm['label'].split(': ', 1)[-1]} | "
            f"{e['n']} | **{100 * e['median']:.1f} %** | {100 * e['max']:.1f} % | "
            f"{r['score']['distinct_held_out']['n']}, {100 * r['score']['distinct_held_out']['median']:.1f} % | "
            + (f"{100 * z[0]['error']:.1f} %" if z else "-")
            + (f" | {100 * r['score']['noise_floor']['median']:.1f} % (load {r['remeasure_load'][0]:.1f}-{r['remeasure_load'][1]:.1f})"
               + (f"; held-out error against the mean of both measurements: **{100 * r['score']['held_out_vs_mean_of_two']['median']:.1f} %**"
                  if r["score"].get("held_out_vs_mean_of_two") else "")
               if r["score"].get("noise_floor") else " | not measured")
            + f" | {'/'.join(f'{v:.1f}' for v in r['load_before'])} -> {'/'.join(f'{v:.1f}' for v in r['load_after'])} | {r['seconds']:.0f} s |")
    sp = [r for r in rows if r["score"].get("same_model_spread")]
    if sp:
        lines += ["", "One model measured as several candidates (the allocation stopped narrowing: same widths), "
                  "its p50s: the board's own noise, no model can predict under it:", ""]
        for r in sp:
            x = r["score"]["same_model_spread"]
            lines.append(f"- {r['net']} on {r['device_label']}: {x['n']} measurements of the {x['macs']:,}-MAC model, "
                         f"{x['min_ms']:.4g}-{x['max_ms']:.4g} ms, median absolute deviation from their median "
                         f"{100 * x['median_abs_dev']:.1f} %")
    tp = RESULTS / "latency_model_error.trials.json"
    if tp.is_file():
        lines += ["", "## Fit points measured once or twice (`--build-trials 3`)", "",
                  "The local latency model built 3 times as runs build it (one pass: each fit point measured once, "
                  "20+ runs, >= 0.3 s) and 3 times with two passes (each point's lowest p50 of two), alternately; "
                  "each scored on the measured candidates of the net's local rows above (held-out median absolute "
                  "error per row; the candidates' measurements are the rows', not repeated).", "",
                  "| net | passes | build | load | held-out median error per row | median over builds |", "|---|---|---|---|---|---|"]
        for t in json.loads(tp.read_text()):
            for passes in (1, 2):
                tr = [x for x in t["trials"] if x["passes"] == passes]
                per = "; ".join(", ".join(f"{100 * x['held_out_median_per_row'][j]:.1f}" for x in tr) + f" % ({name})"
                                for j, name in enumerate(t["rows"]))
                allm = [e for x in tr for e in x["held_out_median_per_row"]]
                builds = ", ".join(f"{x['build_s']:.1f}" for x in tr)
                loads = ", ".join(f"{x['load'][0]:.1f}" for x in tr)
                lines.append(f"| {t['net']} | {passes} | {builds} s | {loads} | {per} | {100 * float(np.median(allm)):.1f} % |")
    lines += ["", READING]
    for r in rows:
        lm = r["latency_model"]
        lines += ["", f"## {r['net']} on {r['device_label']}", "", f"`{r['command']}` (exit {r['exit']}, code {r['code']})", "",
                  "Fit points (uniform prunes, measured by the run's latency-model build):", "",
                  "| rate | MACs | activation bytes | measured | fitted |", "|---|---|---|---|---|"]
        for p in lm["points"]:
            lines.append(f"| {p['rate']:.2f} | {p['macs']:,} | {p['act_bytes']:,} | {p['measured_ms']:.4g} ms | {p['predicted_ms']:.4g} ms |")
        lines += ["", "Candidates (the run's, measured by the run):", "",
                  "| candidate | MACs | activation bytes | predicted | measured p50 (IQR) | error |", "|---|---|---|---|---|---|"]
        for c in r["candidates"]:
            iqr = f" ({c['iqr_ms']:.3g})" if c.get("iqr_ms") is not None else ""
            lines.append(f"| {c['candidate']} | {c['macs']:,} | {c['act_bytes']:,} | {c['predicted_ms']:.4g} ms | "
                         f"{c['measured_p50_ms']:.4g} ms{iqr} | {100 * c['error']:.1f} % |")
        if r.get("forms"):
            lines += ["", "Other model forms, fitted on the same five fit points, error on the same held-out candidates:", "",
                      "| form | median abs error | max |", "|---|---|---|"]
            for name, e in r["forms"].items():
                lines.append(f"| {name} | {100 * e['median']:.1f} % | {100 * e['max']:.1f} % |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nets", default="example,dscnn,mobilenet")
    ap.add_argument("--device", default="local", help="profile name or .yaml path")
    ap.add_argument("--device-label", default=None, help="how the tables name the device (e.g. 'emulated Pi (qemu-user)')")
    ap.add_argument("--max-rate", type=float, default=0.6)
    ap.add_argument("--step", type=float, default=0.05)
    ap.add_argument("--keep", type=Path)
    ap.add_argument("--tag", default="")
    ap.add_argument("--objective", default="latency", help="the runs' --objective (size: the parameter-driven "
                    "allocation's candidates; the bench then builds the latency model itself)")
    ap.add_argument("--render", action="store_true")
    ap.add_argument("--noise-from", type=Path, help="kept folder (--keep): measure every candidate of the local rows "
                    "again (the noise floor: measured vs measured)")
    ap.add_argument("--forms", action="store_true", help="also fit the alternative model forms (FORMS) on each row's "
                    "fit points and report their held-out error")
    ap.add_argument("--emulated-from", type=Path, help="kept folder of a local run of this script (--keep): measure "
                    "its candidates again on the emulated Raspberry Pi 4 (tests/boards, qemu-user aarch64 over "
                    "loopback SSH) with that board's own latency model; rows tagged -emulated")
    ap.add_argument("--noise", action="store_true", help="with --emulated-from: measure every candidate twice "
                    "(the emulated board's noise floor)")
    ap.add_argument("--build-trials", type=int, default=0, help="build the local latency model N times with one "
                    "and N times with two measuring passes, score each on the nets' local rows (latency_model_error.trials.json)")
    args = ap.parse_args(argv)
    ROWS.mkdir(parents=True, exist_ok=True)
    if args.build_trials:
        res = [build_trials(net, args.build_trials) for net in args.nets.split(",")]
        (RESULTS / "latency_model_error.trials.json").write_text(json.dumps(res, indent=1) + "\n")
    elif args.emulated_from is not None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        import tempfile

        import sshd as sshd_helper
        from boards import emulated

        from edgeprune.devices.profile import load_profile

        why = sshd_helper.available() or emulated.available()
        if why:
            print(why, file=sys.stderr)
            return 2
        tmp = Path(tempfile.mkdtemp(prefix="ep-latm-pi4-"))
        srv = sshd_helper.SshServer.start(tmp / "sshd")
        try:
            prof = load_profile(emulated.write_profile(srv, tmp / "pi4-emulated.yaml", accept="[ai_edge_litert]"))
            for net in args.nets.split(","):
                r = remeasure(net, args.emulated_from / net, prof, noise=args.noise)
                r.update(device=prof.name, device_label="emulated Pi 4 (" + emulated.EMULATION + ")", code=code_version())
                r["score"] = score(r)
                (ROWS / f"{net}-emulated{args.tag}.json").write_text(json.dumps(r) + "\n")
                print(net, "emulated", r["score"], "build", r["latency_model"].get("build_s"), flush=True)
        finally:
            srv.stop()
    elif args.noise_from is not None:
        for net in args.nets.split(","):
            f = ROWS / f"{net}.json"
            r = json.loads(f.read_text())
            remeasure_local(r, args.noise_from / net)
            f.write_text(json.dumps(r) + "\n")
            print(net, "noise floor", score(r)["noise_floor"], flush=True)
    elif not args.render:
        import contextlib
        import tempfile

        keep = contextlib.nullcontext(str(args.keep)) if args.keep else tempfile.TemporaryDirectory(prefix="ep-latm-")
        with keep as tmp:
            tmp = Path(tmp)
            tmp.mkdir(parents=True, exist_ok=True)
            data_path = tmp / "fmnist_test0-999.npz"
            _, _, xte, yte = fashion_mnist()
            np.savez(data_path, x=xte[:1000], y=yte[:1000])
            for net in args.nets.split(","):
                out = tmp / f"{net}{args.tag}"
                r = run_net(net, args.device, out, args.max_rate, args.step, data_path, args.objective)
                if r["exit"] not in (0, 3) or not (out / "report.json").is_file():
                    print(net, "run failed", r, flush=True)
                    continue
                if not (out / "latency-model.json").is_file():  # --objective size: the bench builds it
                    (out / "latency-model.json").write_text(json.dumps(build_local(net)) + "\n")
                    r["latency_model_built_by"] = "the bench, after the run (latency_model.build on the local device)"
                r.update(collect(out))
                r["device_label"] = args.device_label or args.device
                r["score"] = score(r)
                (ROWS / f"{net}{args.tag}.json").write_text(json.dumps(r) + "\n")
                print(net, r["score"], "build", r["latency_model"].get("build_s"), flush=True)
    rows = [json.loads(p.read_text()) for p in sorted(ROWS.glob("*.json"))]
    for r in rows:
        r["score"] = score(r)
        if args.forms:
            r["forms"] = forms(r)
    slim = [dict(r, candidates=[{k: v for k, v in c.items() if k != "layers"} for c in r["candidates"]]) for r in rows]
    write("latency_model_error", {"machine": machine(), "rows": slim}, render(rows))
    return 0


READING = """## Reading

- Local device, 1 thread (x86-64, XNNPACK int8): the issue's aim (<= 10 % median over >= 10
  candidates) is met by the example (10.3 %, 12 held-out; fresh builds at load ~2: 8.6-9.2 %)
  and by the MobileNet-style net's `--objective size` candidates (12 distinct models) with a
  model built at load ~2 (2.3-2.6 % over 3 builds, `--build-trials`). The MobileNet
  `--objective latency` row has 12 held-out candidates but only 5 distinct models: from rate
  0.25 the latency allocation returns the same widths (438,560 MACs; the fit's intercept,
  0.084 ms, is half the unpruned model's latency: a fixed cost pruning does not touch, the 56 x 56
  bilinear upsample, the quantize ops and the dispatch of ~30 ops). DS-CNN: 11.8 % with the
  run's model; the same fit points with a depthwise-MACs term (this branch's form): 9.7 %; a
  whole run with this branch's code (the DS-CNN row of code 31ce5dc, load 2-3): 9.2 % over 12
  distinct models (old form on its fit points: 11.0 %). Its noise floor there is 0.2 %: the 9.2 %
  is the model's own; it under-predicts the allocation's mid-range candidates by 7-19 % (rates
  0.15-0.55; not explained here: the fit points are uniform prunes, the candidates are not).
- Why the error is what it is: on this shared 2-core machine at load 4-7 a .tflite measured
  twice differs by a median 5-11 % (noise floor column; 0.2 % at load 3, the DS-CNN rerun); a model fitted at one load and candidates measured at
  another are off by the load's factor: the `--objective size` MobileNet run's own build (load
  burst: its unpruned fit point measured 0.232 ms, the same model as that run's candidate 0.169 ms)
  gives 41.6 %, fresh builds at load ~2 on the same candidates 2.3-2.6 %; fresh builds at load ~2 on the
  DS-CNN candidates measured at load ~7: 17-20 %. Measuring each fit point twice (lowest p50) did
  not lower the error at the load of the trials (table above): not adopted (the option stays in
  `latency_model.build(passes=)` for the bench).
- Model form: depthwise MACs cost far more per MAC than conv / dense MACs on XNNPACK (DS-CNN
  fit: 0.085 ms/depthwise MMAC vs 0.0028 ms/MMAC; MobileNet: 0.065 vs 0): one rate for all MACs
  (`a + b MACs`) is worst on both nets (16.1 %, 3.2 %); the activation-bytes term stood in for
  the depthwise cost (both scale linearly in width on uniform prunes, so a fit cannot separate
  them) but also charges the pointwise outputs. The branch fits `a + b conv MACs + d depthwise
  MACs` for nets with depthwise ops (DS-CNN 11.8 -> 9.7 %, MobileNet latency row 1.5 -> 0.6 %,
  held out), `a + b MACs + c activation bytes` as before otherwise (the example: unchanged).
- Emulated Pi 4 (qemu-user, aarch64; EMULATED, not a Pi's latency): 23.1 % (example) and
  32.5 % (MobileNet; 25.7 % over its 5 distinct models), far over 10 %. No model form helps
  (32.5-36.9 %): the emulated board's measurements are the noise: the same model measured 8 times
  (as 8 candidates) gave p50s of 14.5-23.8 ms (median absolute deviation 11 %), IQRs are 20-45 %
  of the p50, and the fit points are not monotone (rate 0.90 measured 20.4 ms, rate 0.75 12.2 ms).
  The emulator shares the 2 cores with the other sessions; its build costs 38-40 s (emulated).
- Emulated Pi 4 on a QUIET machine (load 0-2.5, nothing else running; rows tagged "quiet machine"):
  the same local candidates measured twice more, each pass with its own fresh latency model (build
  16-22 s). Example: 14.4 % (pass 1), 8.1 % (pass 2); MobileNet-style: 8.6 % and 6.1 % held out
  (5 distinct models: 16.1 % and 21.4 %). In pass 2 every candidate was measured a second time:
  the emulator's noise floor is then **23.1 %** on the example (the same .tflite 19.31 ms in one
  process, 15.64 ms in the next) and 9.1 % on the MobileNet-style net, although each measurement's
  IQR is 1-10 % of its p50: the emulated board's speed changes from one process to the next (qemu
  translation, memory layout), not within one. Against the MEAN of the two measurements of each
  candidate the example's held-out error is **9.7 %** (12 candidates) and the MobileNet-style net's
  3.6 % (12): within the issue's 10 % aim once the board's per-process noise is averaged out. The model
  form is not what limits the emulated rows; a single emulated measurement is."""


if __name__ == "__main__":
    raise SystemExit(main())
