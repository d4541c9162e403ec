"""The reports of ``edgeprune run``: ``report.json``, ``report.md`` and ``report.png``.

``report.json`` (format ``edgeprune-report/1``; keys are stable, new keys may be added):

- ``format``, ``edgeprune_version``, ``created_at``, ``run_dir``
- ``status``: ``"ok"`` or ``"no_candidate"``; ``exit_code``: 0 or 3
- ``model``: ``path``, ``name``, ``example`` (the bundled one?), ``sha256``, ``params``
- ``device``: ``name``, ``kind`` (local/ssh/mcu), ``description``, ``host``, ``profile`` (file),
  ``threads``, and ``latency`` / ``ram`` / ``flash``: how each figure was obtained (measured on
  the device, or estimated on the host for a microcontroller); ``arch`` (the board's, from its
  measurements) and ``emulated`` (null, or what emulates the board: its figures are emulated)
- ``settings``: ``quantize``, ``criterion``, ``step``, ``max_rate``, ``runs``, ``warmup``,
  ``measure_all``, ``seed``, ``input_range``
- ``data``: ``source`` (user/synthetic), ``label``, ``synthetic`` (bool), ``path``,
  ``n_samples`` (evaluation), ``labelled``, ``calibration`` (int8 calibration samples), ``notes``
- ``budgets``: ``flash_bytes`` / ``ram_bytes`` / ``latency_ms``, each ``{"value", "source"}``
  with source ``"option"`` (command line) or ``"profile"``; value null = no limit
- ``fidelity_threshold``: ``min_fidelity``, ``max_accuracy_drop`` (points), ``score_name``, ``metric``
- ``strategy``: how candidates were chosen for device runs (text)
- ``stop``: ``{"reason": "fidelity" | "max_rate" | "nothing to prune", "rate"}``
- ``chosen``: null, or ``index``, ``rate``, ``name``, ``tflite``, ``best`` ("best.tflite"),
  ``size_bytes``, ``flash_bytes``, ``params``, ``fidelity``, ``score_name``, ``accuracy``,
  ``accuracy_drop``, ``latency_ms`` (median), ``latency_is_estimate``, ``ram_bytes``, ``sha256``
- ``reasons``: when no candidate meets everything, one sentence per failing limit (which, by how much)
- ``device_runs``: ``made`` (new measurements this invocation), ``cached`` (served from
  ``measurements.json``), ``not_measured`` (candidates never sent to the device)
- ``resume``: ``resumed``, ``candidates_reused``, ``candidates_computed``
- ``timings``: seconds, this invocation: ``load_s`` (TensorFlow, model, data, reference outputs),
  ``prune_s``, ``convert_s``, ``fidelity_s``, ``save_s``, ``device_s``, ``total_s``
- ``candidates``: one per candidate, by rate: ``index``, ``rate``, ``name``, ``files``
  (keras/tflite/plan), ``params``, ``size_bytes``, ``flash_bytes``, ``sha256``, ``fidelity``
  (the fidelity stage's full result), ``checks`` (``fidelity``, ``flash`` and, once measured,
  ``ram``, ``latency``: each ``{"ok", "value", "limit", ...}``), ``meets_all``,
  ``measurement`` (null if not measured: then ``not_measured`` says why), ``measurement_cached``,
  ``reused`` (from an earlier, interrupted invocation), ``timings``, ``created_at``
- ``verdict``: what the fidelity verdict means (see ``pipeline/search/verdict.py``): ``judged_on``
  (``real``/``synthetic``), ``split`` (calibration/evaluation sizes, ``shared`` samples: 0),
  ``synthetic`` (classes reached, largest class share, the unpruned model's score on them,
  ``informative``), ``uncertainty`` (95 % Wilson interval of the chosen and first failing
  candidates' agreement), ``warnings`` (``[{"code", "message"}]``: ``synthetic_uninformative``,
  ``threshold_within_uncertainty``)
- ``notes``, ``files`` (``best_vela``: ``best_vela.tflite`` on an Ethos-U profile)
- ``ethos_u`` (device kind ``ethos-u`` only; :mod:`edgeprune.pipeline.convert.ethos_u_stage`): Vela's
  ``vela_version`` and ``config``, ``estimate`` (every figure is Vela's estimate), ``compiled``,
  ``best_vela``, ``fidelity`` (judged on the int8 .tflite, and why), ``host_run`` (what LiteRT
  said of Vela's output), ``npu_share_baseline`` / ``npu_share_drops``, ``curve`` (Vela latency,
  SRAM, flash and NPU share per candidate), ``chosen`` (its Vela figures, ``cpu_operators`` and
  ``per_layer`` cycles); candidates carry ``vela`` (that candidate's compilation)
- ``gate`` (with ``--baseline`` only; :mod:`edgeprune.pipeline.report.gate`): ``baseline``,
  ``baseline_created_at``, ``baseline_sha256``, ``tolerances``, ``compared``, ``regressed``,
  ``regressions``, ``checks`` (per figure: ``figure``, ``old``, ``new``, ``change``,
  ``tolerance``, ``allowance``, ``noise``, ``regressed``, ``compared``, ``note``, ``line``);
  ``exit_code`` is then 5 when a figure regressed

The JSON Schema of this format is ``configs/schema/report-1.json`` (``edgeprune schema``;
:mod:`edgeprune.pipeline.report.schema`).
"""
from __future__ import annotations

import json
from pathlib import Path

from edgeprune.devices.sizes import SIZE_UNITS_NOTE, format_size
from edgeprune.pipeline.atomic import replace_atomic, write_json_atomic, write_text_atomic
from edgeprune.pipeline.report.run_table import (  # cell texts shared with the terminal table
    accuracy_change_text,
    keep_units,
    latency_stat,
    print_kept,
    latency_text,
    ram_text,
    spread_text,
    verdict,
)
from edgeprune.pipeline.search.verdict import threshold_text

REPORT_FORMAT = "edgeprune-report/1"


def write_reports(run_dir: Path, report: dict) -> dict:
    """Write report.json, report.md and report.png into ``run_dir``; return their paths."""
    run_dir = Path(run_dir)
    files = {"json": run_dir / "report.json", "md": run_dir / "report.md", "png": run_dir / "report.png"}
    plot(report, files["png"])
    write_text_atomic(files["md"], markdown(report))
    write_json_atomic(files["json"], report)
    return files


# --------------------------------------------------------------------------- text
def summary_line(report: dict) -> str:
    ch = report.get("chosen")
    if ch:
        stat = latency_stat(report)
        lat = f"{ch['latency_ms']:.3f} ms" + (" (estimate)" if ch["latency_is_estimate"] else "")
        if not ch["latency_is_estimate"] and ch.get("latency_spread_ms") is not None:
            lat += " " + spread_text({"latency_ms": {"iqr": ch["latency_spread_ms"]}})
        drop = ("" if ch.get("accuracy_drop") is None
                else f" (accuracy change {accuracy_change_text({'accuracy_drop': ch['accuracy_drop']})} pt)")
        return (f"chosen: rate {ch['rate']:.2f}, {format_size(ch['size_bytes'])}, "
                f"{ch['score_name']} {ch['fidelity']:.4f}{drop}, latency {stat} {lat}, RAM {format_size(ch['ram_bytes'])}")
    return "no candidate meets every limit: " + "; ".join(report.get("reasons") or [])


def _md_facts(report: dict) -> list[str]:
    """report.md's first bullets: exit code, model, device, data, settings, budgets."""
    dev, b = report["device"], report["budgets"]
    lines: list[str] = []
    lines.append(f"- exit code: {report['exit_code']} ({report['status']})")
    lines.append(f"- model: `{report['model']['path']}` ({report['model']['params']:,} parameters)"
                 + (" (the bundled example)" if report["model"]["example"] else ""))
    lines.append(f"- device: {dev['name']} ({dev['kind']}" + (f", {dev['host']}" if dev.get("host") else "")
                 + f"): latency {dev['latency']}; RAM: {dev['ram']}; flash: {dev['flash']}")
    if dev.get("arch"):
        lines.append(f"- board architecture: {dev['arch']}" + (f", EMULATED with {dev['emulated']}: latency is the "
                     "emulator's, peak RSS includes the emulator" if dev.get("emulated") else ""))
    data = report["data"]
    lines.append(f"- data: {data['label']}, {data['n_samples']} evaluation samples"
                 + (", labelled" if data["labelled"] else "") + (f"; int8 calibration: {data['calibration']}"
                                                                  if data.get("calibration") else ""))
    s = report["settings"]
    timing = (f"at least {s['runs']} timed inferences and {s.get('min_secs', 0):g} s after at least {s['warmup']} "
              f"warm-up and {s.get('warmup_min_secs', 0):g} s, at most {s.get('max_secs', 150):g} s each"
              if "min_secs" in s else f"{s['runs']} timed inferences after {s['warmup']} warm-up")
    lines.append(f"- quantize {s['quantize']}, criterion {s['criterion']}, step {s['step']:g}, max rate {s['max_rate']:g}"
                 + (f", round to {s['round_to']}" if s.get("round_to") else "") + f"; device runs: {timing}")

    def bud(key, fmt):
        v = b[key]
        return "none" if v["value"] is None else f"{fmt(v['value'])} (from {v['source']})"

    lines.append(f"- budgets ({SIZE_UNITS_NOTE}): flash {bud('flash_bytes', format_size)}, "
                 f"RAM {bud('ram_bytes', format_size)}, "
                 f"latency {bud('latency_ms', lambda v: f'{v:g} ms')} ({latency_stat(report)})")
    return lines


def _md_candidates(report: dict, chosen_index) -> list[str]:
    """report.md's candidates table, what was not measured, the verdict, Vela's and the per-layer sections."""
    lines: list[str] = []
    stat = latency_stat(report)
    lines += ["", "## Candidates", "",
              f"Sizes in SI units (1 kB = 1000 B). Accuracy change: points against the original model "
              f"(negative = lost). Latency: {stat} ± half the interquartile range of the timed runs.", "",
              f"| # | rate | params | .tflite | flash | fidelity | accuracy change | latency {stat} | RAM | verdict |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for c in report["candidates"]:
        fr = c["fidelity"]
        score = "-" if fr.get("score") is None else f"{fr['score']:.4f}"
        scr, pre = c.get("screen") or {}, ""
        if scr.get("screened"):  # judged on its Keras model only; size predicted
            score, pre = f"~{scr['keras']['score']:.4f} (Keras)", "~"
        lines.append(f"| {c['index']} | {c['rate']:.2f} | {c['params']:,} | {pre}{format_size(c['size_bytes'])} | {pre}{format_size(c['flash_bytes'])} "
                     f"| {score} | {accuracy_change_text(fr)} | {latency_text(c, stat)} | {ram_text(c)} "
                     f"| {verdict(c, chosen_index)} |")
    nm = [c for c in report["candidates"] if c.get("not_measured")]
    if nm:
        lines += ["", "Not measured on the device:", ""]
        lines += [f"- rate {c['rate']:.2f}: {c['not_measured']}" for c in nm]
    from edgeprune.pipeline.search.verdict import markdown_lines

    lines += [""] + markdown_lines(report)
    from edgeprune.pipeline.convert.ethos_u_stage import markdown_lines as ethos_u_lines

    lines += ethos_u_lines(report)  # Vela's figures and per-layer cycles on an Ethos-U profile
    layers = (report.get("chosen") or {}).get("layers")
    if layers:  # issue 22: where the chosen model's parameters, MACs, latency and activations are
        lines += ["## Chosen model per layer", "",
                  f"Latency share: {layers[0].get('latency_share_from')}. Activation: bytes of the tensor the layer "
                  "writes (0: fused into its producer).", "",
                  "| layer | kind | width before | width | params | MACs | latency share | activation |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in layers:
            lines.append(f"| {r['layer']} | {r['kind']} | {r.get('width_before')} | {r.get('width')} | {r['params']:,} | "
                         f"{r['macs']:,} | {100 * r['latency_share']:.1f}% | {r['activation_bytes']:,} B |")
        lines.append("")
    return lines


def markdown(report: dict) -> str:
    dev, ft = report["device"], report["fidelity_threshold"]
    ch = report.get("chosen")
    chosen_index = ch["index"] if ch else None
    lines = [f"# edgeprune run: {report['model']['name']} on {dev['name']}", ""]
    if dev.get("load_warning"):
        lines += [f"> **warning:** {dev['load_warning']}", ""]
    lines.append(("**" + summary_line(report) + "**") if ch else ("**" + summary_line(report) + "**"))
    lines.append("")
    lines += _md_facts(report)
    lines.append(f"- fidelity threshold: {threshold_text(ft)} (against the original float Keras model)")
    stop = report["stop"]
    lines.append(f"- pruning stopped: {stop['reason']} at rate {stop['rate']:.2f}")
    pr = report.get("prediction") or {}
    sc = report.get("screen") or {}
    if sc.get("enabled"):
        m = sc["margin"]
        lines.append(f"- screening: {len(sc['screened'])} candidate(s) judged on their pruned Keras model only, not "
                     f"converted ({sc['conversions_saved']} conversions saved this invocation); margin {m['score']:.4f} "
                     f"(the largest float-to-int8 gap measured in this run + one sample); converted on demand by the "
                     f"device phase: {', '.join(sc['converted_on_demand']) or 'none'}")
    if pr.get("skipped"):
        over = "the flash budget" if all("RAM" not in k["reason"] and "latency" not in k["reason"]
                                         for k in pr["skipped"]) else "a budget (flash, RAM or latency)"
        lines.append(f"- prediction: {len(pr['skipped'])} candidates predicted over {over} were not "
                     f"converted ({pr.get('conversions_saved', 0)} conversions saved this invocation)")
    dr = report["device_runs"]
    lines.append(f"- device runs: {dr['made']} made, {dr['cached']} from the cache, "
                 f"{dr['not_measured']} candidates not measured")
    rs = report["resume"]
    if rs["resumed"]:
        lines.append(f"- resumed: {rs['candidates_reused']} candidates reused, {rs['candidates_computed']} computed")
    t = report["timings"]
    lines.append(f"- time: {t['total_s']:.1f} s total (load {t.get('load_s', 0.0):.1f}, prune {t['prune_s']:.1f}, "
                 + (f"Keras screening {t['keras_s']:.1f}, " if t.get("keras_s") is not None else "") + f"convert {t['convert_s']:.1f}, "
                 f"fidelity {t['fidelity_s']:.1f}, save {t['save_s']:.1f}, device {t['device_s']:.1f})")
    if report.get("reasons"):
        lines += ["", "## Why no candidate", ""] + [f"- {r}" for r in report["reasons"]]
    lines += _md_candidates(report, chosen_index)
    lines += ["## Strategy", "", report["strategy"], ""]
    if report.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    lines += ["![size, latency and fidelity against prune rate](report.png)", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- plot
def _plot_size(ax_s, report: dict) -> list:
    """The size panel; returns the sizes (kB) in candidate order."""
    cands, b, rates = report["candidates"], report["budgets"], [c["rate"] for c in report["candidates"]]
    # size
    sizes = [c["flash_bytes"] / 1e3 for c in cands]
    size_label = {"mcu": "model + runtime (host)", "ethos-u": "Vela's flash figure (+ runtime)"}.get(
        report["device"]["kind"], ".tflite size")
    ax_s.plot(rates, sizes, "o-", color="tab:blue", label=size_label)
    if b["flash_bytes"]["value"] is not None and b["flash_bytes"]["value"] <= 4 * max(sizes) * 1e3:
        ax_s.axhline(b["flash_bytes"]["value"] / 1e3, color="tab:red", ls="--",
                     label=f"flash budget {format_size(b['flash_bytes']['value'])}")
    elif b["flash_bytes"]["value"] is not None:
        ax_s.text(0.99, 0.95, f"flash budget {format_size(b['flash_bytes']['value'])} (off the scale)", ha="right", va="top",
                  transform=ax_s.transAxes, fontsize=8, color="tab:red")
    ax_s.set_ylabel("kB")
    ax_s.set_ylim(bottom=0)
    return sizes


def _plot_latency(ax_l, report: dict) -> None:
    cands, b = report["candidates"], report["budgets"]
    # latency
    meas = [(c["rate"], c["measurement"]["latency_ms"]["median"], c["measurement"].get("latency_is_estimate"))
            for c in cands if c.get("measurement")]
    if meas:
        est = any(e for _, _, e in meas)
        xs, ys = [m[0] for m in meas], [m[1] for m in meas]
        ax_l.plot(xs, ys, "s" + ("--" if est else "-"), color="tab:green", mfc="none" if est else "tab:green",
                  label="latency, ESTIMATE" if est else "latency (median, measured)")
        lb = b["latency_ms"]["value"]
        if lb is not None:
            ax_l.axhline(lb, color="tab:red", ls="--", label=f"latency budget {lb:g} ms")
        ax_l.set_ylim(bottom=0)
    else:
        ax_l.text(0.5, 0.5, "no candidate measured on the device", ha="center", va="center", transform=ax_l.transAxes)
    n_not = sum(1 for c in cands if c.get("measurement") is None)
    if n_not and meas:
        ax_l.text(0.01, 0.04, f"{n_not} candidate(s) not measured (see report.md)", transform=ax_l.transAxes,
                  fontsize=8, color="0.4")
    ax_l.set_ylabel("ms")


def _plot_fidelity(ax_f, report: dict) -> list:
    """The fidelity panel; returns the scores in candidate order (nan: not converted)."""
    cands, rates = report["candidates"], [c["rate"] for c in report["candidates"]]
    # fidelity
    ft = report["fidelity_threshold"]
    scores = [c["fidelity"]["score"] if c["fidelity"].get("score") is not None else float("nan") for c in cands]
    ax_f.plot(rates, scores, "o-", color="tab:purple", label=ft["score_name"])
    if ft.get("min_fidelity") is not None:
        ax_f.axhline(ft["min_fidelity"], color="tab:red", ls="--", label=f"threshold {ft['min_fidelity']:g}")
    if ft.get("max_accuracy_drop") is not None:
        accs = [c["fidelity"].get("accuracy") for c in cands if c["fidelity"].get("score") is not None]
        rates_acc = [c["rate"] for c in cands if c["fidelity"].get("score") is not None]
        if all(a is not None for a in accs):
            ax_f.plot(rates_acc, accs, "^-", color="tab:orange", label="accuracy")
            ref = cands[0]["fidelity"].get("reference_accuracy")
            if ref is not None:
                ax_f.axhline(ref - ft["max_accuracy_drop"] / 100, color="tab:orange", ls=":",
                             label=f"accuracy floor (drop {ft['max_accuracy_drop']:g} pt)")
    ax_f.set_ylabel("score" + (" (synthetic data)" if report["data"].get("synthetic") else ""))
    ax_f.set_xlabel("prune rate")
    return scores


def plot(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cands = report["candidates"]
    ch = report.get("chosen")
    fig, axes = plt.subplots(3, 1, figsize=(7.5, 8.5), sharex=True)
    ax_s, ax_l, ax_f = axes
    title = f"{report['model']['name']} on {report['device']['name']} ({report['settings']['quantize']})"
    fig.suptitle(title + (f": chosen rate {ch['rate']:.2f}" if ch else ": no candidate meets every limit"), fontsize=11)

    sizes = _plot_size(ax_s, report)
    _plot_latency(ax_l, report)
    scores = _plot_fidelity(ax_f, report)

    if ch:
        i = next(k for k, c in enumerate(cands) if c["index"] == ch["index"])
        for ax in axes:
            ax.axvline(ch["rate"], color="gold", lw=6, alpha=0.35, zorder=0)
        ax_s.plot([ch["rate"]], [sizes[i]], "*", ms=16, color="gold", mec="k", label="chosen")
        ax_f.plot([ch["rate"]], [scores[i]], "*", ms=16, color="gold", mec="k", label="chosen")
        ax_l.plot([ch["rate"]], [ch["latency_ms"]], "*", ms=16, color="gold", mec="k", label="chosen")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    try:
        replace_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"), suffix=".tmp.png")
    finally:
        plt.close(fig)
    return path


def load(path) -> dict:
    return json.loads(Path(path).read_text())


# --------------------------------------------------------------------------- terminal
def _left(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 60}:{s % 60:02d}" if s >= 60 else f"{s} s"


class RunProgress:
    """A ``progress`` callback for :func:`edgeprune.pipeline.search.run.run` drawing rich progress bars
    (host steps, device runs) on ``console`` (stderr), plus one log line per finished step."""

    def __init__(self, console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.console = console
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=False)
        self.host = None
        self.dev = None
        self.train = None  # the recovery-training bar, while one runs

    def __enter__(self):
        self.progress.__enter__()
        self.status = self.progress.add_task("starting", total=None)
        return self

    def __exit__(self, *exc):
        if self.status is not None:
            self.progress.remove_task(self.status)
            self.status = None
        self.progress.__exit__(*exc)

    def _status_done(self):
        if self.status is not None:
            self.progress.remove_task(self.status)
            self.status = None

    def __call__(self, event: str, **info) -> None:
        p = self.progress
        if event == "status" and self.status is not None:
            p.update(self.status, description=info["text"])
        elif event == "host_phase":
            self._status_done()
            self.host = p.add_task("prune + convert + fidelity", total=info["total"])
        elif event == "candidate_start" and self.host is not None:
            p.update(self.host, description=f"candidate {info['index']} (rate {info['rate']:.2f})")
        elif event == "train_start":
            self._status_done()
            self.train = p.add_task(f"training rate {info['rate']:.3g}: {info['samples']:,} samples, "
                                    f"{info['epochs']} epoch(s)", total=1000)
        elif event == "train" and self.train is not None:
            p.update(self.train, completed=int(1000 * info["fraction"]),
                     description=f"training rate {info['rate']:.3g}: epoch {info['epoch']}/{info['epochs']}, "
                                 f"loss {info['loss']:.4f}, {_left(info['left_s'])} left")
        elif event == "train_done" and self.train is not None:
            p.remove_task(self.train)
            self.train = None
            print_kept(p.console, f"  rate {info['rate']:.3g}: trained in {info['seconds']:.1f} s, loss {info['loss']:.4f}")
        elif event == "candidate":
            rec = info["record"]
            if self.host is None:
                self._status_done()
                self.host = p.add_task("prune + convert + fidelity", total=info["total"])
            p.advance(self.host)
            ck = rec["checks"]
            t = rec["timings"]
            tag = "reused" if info.get("reused") else (f"{t['prune_s'] + t['convert_s'] + t['fidelity_s'] + t['save_s']:.1f} s")
            if rec.get("recovery"):
                tag += f", trained {rec['recovery']['epochs']} epoch(s) on {rec['recovery']['samples']:,} samples"
            if rec.get("skipped"):
                print_kept(p.console, f"  rate {rec['rate']:.2f}: not converted: {rec['skipped']}")
                return
            if (rec.get("screen") or {}).get("screened"):
                from edgeprune.pipeline.report.run_table import screened_text

                print_kept(p.console, f"  rate {rec['rate']:.2f}: {screened_text(rec)}  [dim]({tag})[/dim]")
                return
            fails = [k for k in ("fidelity", "flash") if not ck[k]["ok"]]
            print_kept(p.console, f"  rate {rec['rate']:.2f}: {format_size(rec['size_bytes'])}, "
                       f"{rec['fidelity']['score_name']} {rec['fidelity']['score']:.4f}"
                       + (f"  [red]fails {', '.join(fails)}[/red]" if fails else "") + f"  [dim]({tag})[/dim]")
        elif event == "device_phase":
            if self.host is not None:
                p.update(self.host, description="prune + convert + fidelity: done",
                         completed=p.tasks[[t.id for t in p.tasks].index(self.host)].completed,
                         total=p.tasks[[t.id for t in p.tasks].index(self.host)].completed)
            self.dev = p.add_task("device runs", total=info["total"])
        elif event == "device_phase_done" and self.dev is not None:
            done = next(t.completed for t in p.tasks if t.id == self.dev)
            p.update(self.dev, description=f"device runs: {info['made']} made, {info['cached']} cached",
                     total=max(done, 1), completed=max(done, 1))
        elif event == "device_start" and self.dev is not None:
            p.update(self.dev, description=f"device run: rate {info['record']['rate']:.2f}")
        elif event == "device_done" and self.dev is not None:
            p.advance(self.dev)
            rec = info["record"]
            lat = latency_text(rec, latency_stat(info))
            ck = rec["checks"].get("latency") or {}
            tail = "  [green]meets all[/green]" if info["ok"] else (
                "  [yellow]within noise[/yellow]" if ck.get("within_noise") else
                "  [red]fails " + ", ".join(k for k, v in rec["checks"].items() if not v["ok"]) + "[/red]")
            again = " (measured twice: budget within the spread)" if ck.get("remeasured") else ""
            print_kept(p.console, f"  device {'cached' if info['cached'] else 'run'}: rate {rec['rate']:.2f}: {lat}, "
                       f"RAM {ram_text(rec)}{again}" + tail)


def candidates_table(report: dict, width=None):
    """The terminal table (see :mod:`edgeprune.pipeline.report.run_table`), laid out for ``width``."""
    from edgeprune.pipeline.report.run_table import candidates_table as table

    return table(report, width)


class _UnitConsole:
    """Prints through ``console`` with numbers kept on the line of their units (print_kept)."""

    def __init__(self, console):
        self._c = console

    def print(self, text="", **kw):
        print_kept(self._c, text)


def print_outcome(console, report: dict) -> None:
    console = _UnitConsole(console)
    b = report["budgets"]
    ft = report["fidelity_threshold"]

    def bud(k, f):
        v = b[k]["value"]
        return "none" if v is None else f(v) + f" ({b[k]['source']})"

    thr = threshold_text(ft, points="pt")
    if report["device"].get("load_warning"):
        console.print(f"[yellow]warning:[/yellow] {report['device']['load_warning']}", highlight=False)
    console.print(f"budgets: flash {bud('flash_bytes', format_size)}, RAM {bud('ram_bytes', format_size)}, "
                  f"latency {bud('latency_ms', lambda v: f'{latency_stat(report)} {v:g} ms')}; fidelity: {thr}"
                  + (" [yellow](synthetic data)[/yellow]" if report["data"].get("synthetic") else ""), highlight=False)
    obj = (report.get("settings") or {}).get("objective")
    if obj and obj.get("name") != "size":  # issue 22: say what the rate axis measures
        console.print(f"objective {obj['name']} ({obj.get('reason')}): rate = {obj['rate_measures']}", highlight=False)
    dr = report["device_runs"]
    console.print(f"device runs: {dr['made']} made, {dr['cached']} cached, {dr['not_measured']} candidates not measured"
                  + (" [yellow](latency is an ESTIMATE)[/yellow]" if report["device"]["kind"] in ("mcu", "ethos-u") else "")
                  + (f" [yellow]on an EMULATED {report['device'].get('arch') or ''} board ({report['device']['emulated']})[/yellow]"
                     if report["device"].get("emulated") else ""),
                  highlight=False)
    for n in report.get("notes") or []:
        console.print(f"[yellow]note:[/yellow] {n}", highlight=False)
    from edgeprune.pipeline.search.verdict import print_verdict

    print_verdict(console, report)  # what the fidelity was judged on; warnings
    from edgeprune.pipeline.convert.ethos_u_stage import outcome_lines

    for line in outcome_lines(report):  # Vela's figures on an Ethos-U profile
        console.print(line, highlight=False, markup=False)
    if report.get("chosen"):
        console.print(f"[bold green]{summary_line(report)}[/bold green]", highlight=False)
        console.print(f"wrote {Path(report['run_dir']) / 'best.tflite'} and report.json/.md/.png in {report['run_dir']}",
                      highlight=False)
    else:
        console.print("[bold red]no candidate meets every limit[/bold red]", highlight=False)
        for r in report.get("reasons") or []:
            console.print(f"  - {r}", highlight=False)
        console.print(f"report: {Path(report['run_dir']) / 'report.md'}", highlight=False)
