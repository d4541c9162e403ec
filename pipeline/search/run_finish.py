"""The end of ``edgeprune run``: the reasons when no candidate fits, best.tflite and report.json,
built by :func:`finish` from the run's context, the host phase's and the device phase's results."""
from __future__ import annotations

import time
from typing import Optional

from edgeprune.errors import EXIT_NO_CANDIDATE, EXIT_OK
from edgeprune.devices.sizes import format_size
from edgeprune.pipeline.search.run_config import RunResult, _now
from edgeprune.pipeline.atomic import copy_atomic as _copy_atomic
from edgeprune.pipeline.search.candidate import ABSENT, Candidate


def _layer_rows(ctx, cand) -> Optional[list]:
    """Per layer of the chosen model: width before/after, params, MACs, predicted latency share,
    activation bytes (pipeline/search/resources.py, from the candidate's plan on the original graph)."""
    from edgeprune.pipeline.prune.graph import DependencyGraph
    from edgeprune.pipeline.prune.plan import Plan
    from edgeprune.pipeline.search.resources import ResourceModel

    rm = ctx.engine.resource_model or ResourceModel(DependencyGraph(ctx.model), ctx.config.prune.quantize)
    plan_file = cand.files.get("plan")
    state = Plan.load(ctx.run_dir / plan_file).to_state(rm.graph) if plan_file else None
    res = rm.evaluate(state, layers=True)
    lat = ctx.engine.objective.latency
    per = lat.ms_per_mac if lat is not None else 1.0
    per_dw = per if lat is None or lat.ms_per_dw_mac is None else lat.ms_per_dw_mac
    per_act = lat.ms_per_act_byte if lat is not None else 0.0
    costs = [(per_dw if r.kind in ("DepthwiseConv1D", "DepthwiseConv2D") else per) * r.macs
             + per_act * r.activation_bytes for r in res.layers]
    total = sum(costs) or 1.0
    how = (lat.label() if lat is not None else "share of the MACs (no latency model of this board in this run)")
    return [{"layer": r.name, "kind": r.kind, "width_before": r.width_before, "width": r.width, "params": r.params,
             "macs": r.macs, "latency_share": round(c / total, 4), "latency_share_from": how,
             "activation_bytes": r.activation_bytes} for r, c in zip(res.layers, costs)]


def layer_table(ctx, cand) -> Optional[list]:
    try:
        return _layer_rows(ctx, cand)
    except Exception as exc:  # noqa: BLE001 - the table is an extra; never lose the report for it
        ctx.notes.append(f"per-layer table not computed: {type(exc).__name__}: {exc}")
        return None


# --------------------------------------------------------------------------- reasons
def score_text(ctx, rec) -> str:
    fr = rec.fidelity
    s = f"{fr['score_name']} {fr['score']:.4f}"
    if ctx.max_drop is not None and fr.get("accuracy_drop") is not None:
        s += f", accuracy drop {fr['accuracy_drop']:.2f} points"
    return s


def threshold_text(ctx) -> str:
    parts = []
    if ctx.min_fidelity is not None:
        conf = ctx.config.budgets.confidence
        parts.append(f"{ctx.min_fidelity:g}" + (f" (lower bound at {conf:g} confidence)" if conf is not None else ""))
    if ctx.max_drop is not None:
        parts.append(f"a {ctx.max_drop:g}-point accuracy drop")
    return " / ".join(parts)


def _flash_reason(ctx, cands: list, fid_ok: list) -> str:
    fb = ctx.budgets.flash_bytes
    s = min(fid_ok + [r for r in cands if r.skipped and r.skip_kind == "flash"], key=lambda r: r.flash_bytes)
    what = {"mcu": "model + runtime", "ethos-u": "Vela flash figure"}.get(ctx.profile.kind, "model")
    if s.skipped:
        return (f"smallest {what}, ~{format_size(s.flash_bytes)} at rate {s.rate:.2f} (predicted, not "
                f"converted), is still over the {format_size(fb)} budget (by ~{format_size(s.flash_bytes - fb)})")
    return (f"smallest {what} within the fidelity threshold, {format_size(s.flash_bytes)} at rate "
            f"{s.rate:.2f}, is still over the {format_size(fb)} budget (by {format_size(s.flash_bytes - fb)})")


def _device_reasons(flash_ok: list) -> list[str]:
    out: list[str] = []
    measured = [r for r in flash_ok if r.measurement]
    for lim in ("latency", "ram"):
        checks = [r for r in measured if lim in r.checks]
        if checks and not any(r.checks[lim]["ok"] for r in checks):
            best = min(checks, key=lambda r: r.checks[lim]["value"])
            ck = best.checks[lim]
            est = " (estimate)" if ck.get("estimate") else ""
            if lim == "latency":
                out.append(f"fastest candidate measured {ck['value']:.2f} ms{est} at rate {best.rate:.2f}, "
                           f"over the {ck['limit']:g} ms latency budget by {ck['value'] - ck['limit']:.2f} ms")
            else:
                out.append(f"smallest RAM measured {format_size(ck['value'])}{est} at rate {best.rate:.2f}, "
                           f"over the {format_size(ck['limit'])} RAM budget by {format_size(ck['value'] - ck['limit'])}")
    return out or ["no host-passing candidate met the device budgets"]


def reasons(ctx, host) -> list[str]:
    """Why no candidate is the answer (exit 3): which limit failed, and by how much."""
    cands = host.candidates
    fid_ok = [r for r in cands if r.checks["fidelity"]["ok"]]
    if not fid_ok:
        return [f"the unpruned model (rate 0, {ctx.config.prune.quantize}) already misses the fidelity threshold "
                f"{threshold_text(ctx)}: {score_text(ctx, cands[0])}"]
    flash_ok = [r for r in fid_ok if r.checks["flash"]["ok"]]
    out = [_flash_reason(ctx, cands, fid_ok)] if not flash_ok else _device_reasons(flash_ok)
    skipped = [r for r in cands if r.skipped]
    if skipped:
        whats = sorted({r.skip_kind for r in skipped})
        out.append(f"{len(skipped)} candidate(s) (rates {skipped[0].rate:.2f} to {skipped[-1].rate:.2f}) were "
                   f"predicted over the {' or '.join(whats).replace('ram', 'RAM')} budget and not converted")
    if host.stop["reason"] == "fidelity":
        last = cands[-1]
        out.append(f"fidelity fell below {threshold_text(ctx)} at rate {last.rate:.2f} ({score_text(ctx, last)})")
    elif host.stop["reason"] == "rates":
        failing = [r for r in cands if r.checks and r.checks["fidelity"]["ok"] is False]
        if failing:
            out.append("of the --rate values, " + ", ".join(f"{r.rate:.2f} ({score_text(ctx, r)})" for r in failing)
                       + f" fell below {threshold_text(ctx)}")
    elif host.stop["reason"] == "max_rate":
        out.append(f"pruning stopped at --max-rate {ctx.config.search.max_rate:g} (a higher --max-rate may find a smaller model)")
    return out


def prediction_summary(ctx, host) -> dict:
    skipped = [r for r in host.candidates if r.skipped]
    return {"enabled": bool(ctx.config.search.predict), "method": "weight bytes of the pruned Keras model + the overhead of "
            "the first candidate's real conversion; skipped when still over the flash budget after the margin; "
            "also (issue 22) when the predicted RAM (peak activation memory + the overhead of the unpruned model's "
            "measured TFLite-Micro arena) or the board latency model's latency misses its budget by more than the "
            "model's error",
            "calibration": host.checks.predictor.check,
            "skipped": [{"index": r.index, "rate": r.rate, "reason": r.skipped} for r in skipped],
            "conversions_saved": len([r for r in skipped if not r.reused])}


# --------------------------------------------------------------------------- report sections
def _timings(ctx, host, device) -> dict:
    new = [r for r in host.candidates if not r.reused]
    tot = {k: round(sum(r.timings.get(k, 0.0) for r in new), 3) for k in ("prune_s", "convert_s", "fidelity_s", "save_s")}
    if any("keras_s" in r.timings for r in new):  # screening: the candidates judged on their Keras model
        tot["keras_s"] = round(sum(r.timings.get("keras_s", 0.0) for r in new), 3)
    tot["device_s"] = round(device.seconds, 3)
    tot["load_s"] = round(ctx.load_seconds, 3)  # TF import, model, data, reference outputs
    tot["load"] = dict(ctx.load_timings)  # model_s, data_s, reference_s, reference_cached
    if host.trainset is not None:
        tot["train_s"] = round(sum(r.timings.get("train_s", 0.0) for r in new), 3)
    tot["total_s"] = round(time.perf_counter() - ctx.t_start, 3)
    return tot


def _candidate_out(r: Candidate) -> dict:
    """A candidate as report.json lists it."""
    m = r.measurement
    return {
        "index": r.index, "rate": r.rate, "name": r.name, "files": r.files,
        "params": r.params, "size_bytes": r.size_bytes, "flash_bytes": r.flash_bytes,
        "sha256": r.sha256, "fidelity": r.fidelity, "checks": r.checks,
        "meets_all": r.meets_all and m is not None,
        "measurement": m, "measurement_cached": bool(r.measurement_cached),
        "not_measured": r.not_measured if m is None else None,
        "reused": r.reused, "timings": r.timings, "created_at": r.created_at,
        "made_by": r.made_by,
        "skipped": r.skipped, "prediction": r.prediction,
        "first_measurement": r.first_measurement,
        **({"screen": r.screen} if r.screen else {}),
        **({"vela": r.vela} if r.vela else {}),
        **({"recovery": r.recovery} if r.recovery is not ABSENT else {}),
    }


def _device_section(ctx, device, cand_out: list) -> dict:
    p = ctx.profile
    kind = p.kind
    return {"name": p.name, "kind": kind, "description": p.description, "host": p.host,
            "profile": p.source, "threads": p.threads,
            "boards": [b.name for b in ctx.all_boards()],
            "latency": ("estimated on the host (not measured on a board)" if kind == "mcu"
                        else "Vela's estimate (its performance model; not measured on a board)"
                        if kind == "ethos-u" else "measured on the device"),
            "ram": ("TFLite-Micro arena measured on the host + the profile's runtime overhead"
                    if kind == "mcu" else "Vela's SRAM (+ DRAM) used + the profile's runtime overhead"
                    if kind == "ethos-u" else "peak RSS of the benchmark process, measured on the device"),
            "flash": ("model file + the profile's runtime overhead" if kind == "mcu"
                      else "Vela's flash used (the compiled model's weights and command stream) + the "
                           "profile's runtime overhead" if kind == "ethos-u"
                      else "the .tflite file size"),
            "emulated": p.emulated, "arch": next((r["measurement"]["arch"] for r in cand_out
                                                  if r["measurement"] and r["measurement"].get("arch")), None),
            "max_load_per_core": p.max_load_per_core, "load_warning": device.load_warning}


def _settings(ctx, host) -> dict:
    c, engine = ctx.config, ctx.engine
    return {"quantize": c.prune.quantize, "criterion": engine.criterion, "step": c.search.step,
            "compensate": engine.compensate, "allocation": engine.allocation, "stages": engine.label,
            "objective": engine.objective.to_dict() if engine.objective is not None else None,
            "max_rate": c.search.max_rate, "rates": c.search.rates, "runs": c.measurement.runs, "warmup": c.measurement.warmup,
            "measure_all": c.search.measure_all, "seed": c.prune.seed,
            "input_range": list(c.model.input_range), "threads": c.measurement.threads,
            "min_secs": c.measurement.min_secs, "max_secs": c.measurement.max_secs,
            "warmup_min_secs": c.measurement.warmup_min_secs, "latency_stat": c.measurement.latency_stat,
            "round_to": ctx.round_to, "predict": c.search.predict,
            "jobs": host.jobs, "pool": host.pool, "screen": bool(host.screen is not None and host.screen.enabled)}


def _chosen_section(ctx, chosen: Candidate) -> dict:
    m = chosen.measurement
    out = {
        "index": chosen.index, "rate": chosen.rate, "name": chosen.name,
        "tflite": chosen.files["tflite"], "best": "best.tflite",
        "size_bytes": chosen.size_bytes, "flash_bytes": chosen.flash_bytes, "params": chosen.params,
        "fidelity": chosen.fidelity["score"], "score_name": chosen.fidelity["score_name"],
        "accuracy": chosen.fidelity.get("accuracy"), "accuracy_drop": chosen.fidelity.get("accuracy_drop"),
        "latency_ms": chosen.checks["latency"]["value"], "latency_stat": ctx.config.measurement.latency_stat,
        "latency_spread_ms": m["latency_ms"].get("iqr"),
        "latency_is_estimate": bool(m.get("latency_is_estimate")),
        "ram_bytes": m.get("ram_bytes"), "sha256": chosen.sha256,
    }
    out["layers"] = layer_table(ctx, chosen)
    return out


# --------------------------------------------------------------------------- report
def build_report(ctx, host, device, exit_code: int) -> dict:
    """``report.json`` (configs/schema/report-1.json) of a finished run."""
    from edgeprune import __version__
    from edgeprune.pipeline.report import run_report as rep
    from edgeprune.pipeline.search.device_phase import strategy_text

    d, chosen, cands = ctx.run_dir, device.chosen, host.candidates
    fr0 = cands[0].fidelity
    cand_out = [_candidate_out(r) for r in cands]
    return {
        "format": rep.REPORT_FORMAT,
        "edgeprune_version": __version__,
        "created_at": _now(),
        "status": "ok" if chosen is not None else "no_candidate",
        "exit_code": exit_code,
        "run_dir": str(d),
        "model": {"path": str(ctx.model_path), "name": ctx.model.name, "example": ctx.is_example,
                  "sha256": ctx.model_sha, "params": int(ctx.model.count_params())},
        "device": _device_section(ctx, device, cand_out),
        "settings": _settings(ctx, host),
        "prediction": prediction_summary(ctx, host),
        "screen": host.screen.summary(host.candidates) if host.screen is not None else None,
        "data": dict(ctx.data.to_dict(), calibration=ctx.calibration_note,
                     synthetic=ctx.data.source == "synthetic", split=ctx.split),
        "budgets": ctx.budgets.to_dict(),
        "fidelity_threshold": {"min_fidelity": ctx.min_fidelity, "max_accuracy_drop": ctx.max_drop,
                               "score_name": fr0["score_name"], "metric": fr0["metric"],
                               "confidence": ctx.config.budgets.confidence},
        "strategy": strategy_text(ctx.all_boards()),
        "stop": host.stop,
        "chosen": None,
        "reasons": [] if chosen is not None else reasons(ctx, host),
        "device_runs": {"made": device.runs, "cached": device.cached,
                        "not_measured": sum(1 for r in cand_out if r["measurement"] is None)},
        "resume": {"resumed": ctx.resumed, "candidates_reused": host.reused,
                   "candidates_computed": len(cands) - host.reused},
        "timings": _timings(ctx, host, device),
        "candidates": cand_out,
        "failed_candidates": list(host.failed_candidates),
        "notes": ctx.notes,
        "files": {"run": "run.json", "measurements": "measurements.json", "best": "best.tflite" if chosen else None,
                  "report_json": "report.json", "report_md": "report.md", "report_png": "report.png"},
    }


def finish(ctx, host, device) -> RunResult:
    """best.tflite (the answer, or none), report.json/.md/.png; the run's result."""
    from edgeprune.pipeline.report import run_report as rep
    from edgeprune.pipeline.search import verdict
    from edgeprune.pipeline.convert.ethos_u_stage import report_section, write_best

    d, chosen = ctx.run_dir, device.chosen
    best = d / "best.tflite"
    if chosen is not None:
        _copy_atomic(d / chosen.files["tflite"], best)
    elif best.exists():
        best.unlink()
    exit_code = EXIT_OK if chosen is not None else EXIT_NO_CANDIDATE
    report = build_report(ctx, host, device, exit_code)
    if chosen is not None:
        report["chosen"] = _chosen_section(ctx, chosen)
    if ctx.profile.kind == "ethos-u":
        report["ethos_u"] = report_section(ctx, host.candidates, chosen, report)  # and best_vela.tflite
    else:
        write_best(d, None)  # no stale best_vela.tflite from an earlier Ethos-U run of this dir
    if host.trainset is not None:
        report["settings"]["recover"] = ctx.recover.to_dict()
        trained = [r for r in host.candidates if r.recovery]
        report["data"]["train"] = dict(host.trainset.info, candidates_trained=len(trained),
                                       trained_from_rate=min((r.rate for r in trained), default=None))
    report["verdict"] = verdict.build(ctx, report)  # what the fidelity verdict means (issue 14)
    files = rep.write_reports(d, report)
    return RunResult(report=report, exit_code=exit_code, run_dir=d, files=files)
