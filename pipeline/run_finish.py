"""The end of ``edgeprune run``: the reasons when no candidate fits, best.tflite and report.json."""
from __future__ import annotations

import time
from typing import Optional

from edgeprune.errors import EXIT_NO_CANDIDATE, EXIT_OK
from edgeprune.devices.sizes import format_size
from edgeprune.pipeline.run_config import STRATEGY, RunResult, _now
from edgeprune.pipeline.atomic import copy_atomic as _copy_atomic


def _layer_rows(run, cand) -> Optional[list]:
    """Per layer of the chosen model: width before/after, params, MACs, predicted latency share,
    activation bytes (pipeline/resources.py, from the candidate's plan on the original graph)."""
    from edgeprune.pipeline.graph import DependencyGraph
    from edgeprune.pipeline.plan import Plan
    from edgeprune.pipeline.resources import ResourceModel

    rm = getattr(run, "resource_model", None) or ResourceModel(DependencyGraph(run.model), run.c.quantize)
    plan_file = (cand.get("files") or {}).get("plan")
    state = Plan.load(run.run_dir / plan_file).to_state(rm.graph) if plan_file else None
    res = rm.evaluate(state, layers=True)
    lat = getattr(getattr(run, "objective", None), "latency", None)
    per = lat.ms_per_mac if lat is not None else 1.0
    per_act = lat.ms_per_act_byte if lat is not None else 0.0
    costs = [per * r.macs + per_act * r.activation_bytes for r in res.layers]
    total = sum(costs) or 1.0
    how = (lat.label() if lat is not None else "share of the MACs (no latency model of this board in this run)")
    return [{"layer": r.name, "kind": r.kind, "width_before": r.width_before, "width": r.width, "params": r.params,
             "macs": r.macs, "latency_share": round(c / total, 4), "latency_share_from": how,
             "activation_bytes": r.activation_bytes} for r, c in zip(res.layers, costs)]


class FinishStage:
    """Mixin of :class:`edgeprune.pipeline.run._Run`: reasons for exit 3 and the report."""

    def layer_table(self, cand) -> Optional[list]:
        try:
            return _layer_rows(self, cand)
        except Exception as exc:  # noqa: BLE001 - the table is an extra; never lose the report for it
            self.notes.append(f"per-layer table not computed: {type(exc).__name__}: {exc}")
            return None


    # ---------------------------------------------------------------- reasons
    def score_text(self, rec: dict) -> str:
        fr = rec["fidelity"]
        s = f"{fr['score_name']} {fr['score']:.4f}"
        if self.max_drop is not None and fr.get("accuracy_drop") is not None:
            s += f", accuracy drop {fr['accuracy_drop']:.2f} points"
        return s

    def threshold_text(self) -> str:
        parts = []
        if self.min_fidelity is not None:
            parts.append(f"{self.min_fidelity:g}" + (f" (lower bound at {self.c.confidence:g} confidence)"
                                                      if self.c.confidence is not None else ""))
        if self.max_drop is not None:
            parts.append(f"a {self.max_drop:g}-point accuracy drop")
        return " / ".join(parts)

    def reasons(self) -> list[str]:
        out: list[str] = []
        cands = self.candidates
        fid_ok = [r for r in cands if r["checks"]["fidelity"]["ok"]]
        fb = self.budgets["flash_bytes"]["value"]
        if not fid_ok:
            r0 = cands[0]
            out.append(f"the unpruned model (rate 0, {self.c.quantize}) already misses the fidelity threshold "
                       f"{self.threshold_text()}: {self.score_text(r0)}")
            return out
        flash_ok = [r for r in fid_ok if r["checks"]["flash"]["ok"]]
        if not flash_ok:
            s = min(fid_ok + [r for r in cands if r.get("skipped") and r.get("skip_what", "flash") == "flash"],
                    key=lambda r: r["flash_bytes"])
            what = {"mcu": "model + runtime", "ethos-u": "Vela flash figure"}.get(self.profile.kind, "model")
            if s.get("skipped"):
                out.append(f"smallest {what}, ~{format_size(s['flash_bytes'])} at rate {s['rate']:.2f} (predicted, not "
                           f"converted), is still over the {format_size(fb)} budget (by ~{format_size(s['flash_bytes'] - fb)})")
            else:
                out.append(f"smallest {what} within the fidelity threshold, {format_size(s['flash_bytes'])} at rate "
                           f"{s['rate']:.2f}, is still over the {format_size(fb)} budget "
                           f"(by {format_size(s['flash_bytes'] - fb)})")
        else:
            measured = [r for r in flash_ok if r.get("measurement")]
            for lim, unit in (("latency", "ms"), ("ram", "B")):
                checks = [r for r in measured if lim in r["checks"]]
                if checks and not any(r["checks"][lim]["ok"] for r in checks):
                    best = min(checks, key=lambda r: r["checks"][lim]["value"])
                    ck = best["checks"][lim]
                    est = " (estimate)" if ck.get("estimate") else ""
                    if lim == "latency":
                        out.append(f"fastest candidate measured {ck['value']:.2f} ms{est} at rate {best['rate']:.2f}, "
                                   f"over the {ck['limit']:g} ms latency budget by {ck['value'] - ck['limit']:.2f} ms")
                    else:
                        out.append(f"smallest RAM measured {format_size(ck['value'])}{est} at rate {best['rate']:.2f}, "
                                   f"over the {format_size(ck['limit'])} RAM budget by {format_size(ck['value'] - ck['limit'])}")
            if not out:
                out.append("no host-passing candidate met the device budgets")
        skipped = [r for r in cands if r.get("skipped")]
        if skipped:
            whats = sorted({r.get("skip_what", "flash") for r in skipped})
            out.append(f"{len(skipped)} candidate(s) (rates {skipped[0]['rate']:.2f} to {skipped[-1]['rate']:.2f}) were "
                       f"predicted over the {' or '.join(whats).replace('ram', 'RAM')} budget and not converted")
        if self.stop["reason"] == "fidelity":
            last = cands[-1]
            out.append(f"fidelity fell below {self.threshold_text()} at rate {last['rate']:.2f} ({self.score_text(last)})")
        elif self.stop["reason"] == "rates":
            failing = [r for r in cands if r.get("checks") and r["checks"]["fidelity"]["ok"] is False]
            if failing:
                out.append("of the --rate values, " + ", ".join(f"{r['rate']:.2f} ({self.score_text(r)})" for r in failing)
                           + f" fell below {self.threshold_text()}")
        elif self.stop["reason"] == "max_rate":
            out.append(f"pruning stopped at --max-rate {self.c.max_rate:g} (a higher --max-rate may find a smaller model)")
        return out

    def prediction_summary(self) -> dict:
        skipped = [r for r in self.candidates if r.get("skipped")]
        pr = getattr(self, "predictor", None)
        return {"enabled": bool(self.c.predict), "method": "weight bytes of the pruned Keras model + the overhead of "
                "the first candidate's real conversion; skipped when still over the flash budget after the margin; "
                "also (issue 22) when the predicted RAM (peak activation memory + the overhead of the unpruned model's "
                "measured TFLite-Micro arena) or the board latency model's latency misses its budget by more than the "
                "model's error",
                "calibration": pr.check if pr is not None else None,
                "skipped": [{"index": r["index"], "rate": r["rate"], "reason": r["skipped"]} for r in skipped],
                "conversions_saved": len([r for r in skipped if not r.get("reused")])}

    # ---------------------------------------------------------------- report
    def finish(self) -> RunResult:
        from edgeprune import __version__
        from edgeprune.pipeline import report as rep

        d = self.run_dir
        chosen = self.chosen
        best = d / "best.tflite"
        if chosen is not None:
            _copy_atomic(d / chosen["files"]["tflite"], best)
        elif best.exists():
            best.unlink()
        exit_code = EXIT_OK if chosen is not None else EXIT_NO_CANDIDATE
        p = self.profile
        kind = p.kind
        tot = {k: round(sum(r["timings"].get(k, 0.0) for r in self.candidates if not r.get("reused")), 3)
               for k in ("prune_s", "convert_s", "fidelity_s", "save_s")}
        tot["device_s"] = round(self.device_seconds, 3)
        tot["load_s"] = round(getattr(self, "load_seconds", 0.0), 3)  # TF import, model, data, reference outputs
        tot["load"] = dict(getattr(self, "load_timings", {}))  # model_s, data_s, reference_s, reference_cached
        if getattr(self, "trainset", None) is not None:
            tot["train_s"] = round(sum(r["timings"].get("train_s", 0.0) for r in self.candidates
                                       if not r.get("reused")), 3)
        tot["total_s"] = round(time.perf_counter() - self.t_start, 3)
        fr0 = self.candidates[0]["fidelity"]
        cand_out = []
        for r in self.candidates:
            m = r.get("measurement")
            cand_out.append({
                "index": r["index"], "rate": r["rate"], "name": r["name"], "files": r["files"],
                "params": r["params"], "size_bytes": r["size_bytes"], "flash_bytes": r["flash_bytes"],
                "sha256": r["sha256"], "fidelity": r["fidelity"], "checks": r["checks"],
                "meets_all": all(v["ok"] for v in r["checks"].values()) and m is not None,
                "measurement": m, "measurement_cached": bool(r.get("measurement_cached")),
                "not_measured": r.get("not_measured") if m is None else None,
                "reused": bool(r.get("reused")), "timings": r["timings"], "created_at": r.get("created_at"),
                "made_by": r.get("made_by"),
                "skipped": r.get("skipped"), "prediction": r.get("prediction"),
                "first_measurement": r.get("first_measurement"),
                **({"vela": r["vela"]} if r.get("vela") else {}),
                **({"recovery": r.get("recovery")} if "recovery" in r else {}),
            })
        report = {
            "format": rep.REPORT_FORMAT,
            "edgeprune_version": __version__,
            "created_at": _now(),
            "status": "ok" if chosen is not None else "no_candidate",
            "exit_code": exit_code,
            "run_dir": str(d),
            "model": {"path": str(self.model_path), "name": self.model.name, "example": self.is_example,
                      "sha256": self.model_sha, "params": int(self.model.count_params())},
            "device": {"name": p.name, "kind": kind, "description": p.description, "host": p.host,
                       "profile": p.source, "threads": p.threads,
                       "boards": [b.name for b in getattr(self, "boards", None) or [p]],
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
                       "max_load_per_core": p.max_load_per_core, "load_warning": getattr(self, "load_warning", None)},
            "settings": {"quantize": self.c.quantize, "criterion": self.criterion, "step": self.c.step,
                         "compensate": self.compensate, "allocation": self.allocation, "stages": self.stages_label,
                         "objective": self.objective.to_dict() if getattr(self, "objective", None) is not None else None,
                         "max_rate": self.c.max_rate, "rates": self.c.rates, "runs": self.c.runs, "warmup": self.c.warmup,
                         "measure_all": self.c.measure_all, "seed": self.c.seed,
                         "input_range": list(self.c.input_range), "threads": self.c.threads,
                         "min_secs": self.c.min_secs, "max_secs": self.c.max_secs,
                         "warmup_min_secs": self.c.warmup_min_secs, "latency_stat": self.c.latency_stat,
                         "round_to": self.round_to, "predict": self.c.predict,
                         "jobs": getattr(self, "jobs", 1), "pool": getattr(self, "lookahead", None) is not None},
            "prediction": self.prediction_summary(),
            "data": dict(self.data.to_dict(), calibration=self.calibration_note,
                         synthetic=self.data.source == "synthetic", split=getattr(self, "split", None)),
            "budgets": self.budgets,
            "fidelity_threshold": {"min_fidelity": self.min_fidelity, "max_accuracy_drop": self.max_drop,
                                   "score_name": fr0["score_name"], "metric": fr0["metric"],
                                   "confidence": self.c.confidence},
            "strategy": self.strategy_text() if hasattr(self, "strategy_text") else STRATEGY,
            "stop": self.stop,
            "chosen": None,
            "reasons": [] if chosen is not None else self.reasons(),
            "device_runs": {"made": self.device_runs, "cached": self.device_cached,
                            "not_measured": sum(1 for r in cand_out if r["measurement"] is None)},
            "resume": {"resumed": self.resumed, "candidates_reused": self.reused,
                       "candidates_computed": len(self.candidates) - self.reused},
            "timings": tot,
            "candidates": cand_out,
            "failed_candidates": list(getattr(self, "failed_candidates", [])),
            "notes": self.notes,
            "files": {"run": "run.json", "measurements": "measurements.json", "best": "best.tflite" if chosen else None,
                      "report_json": "report.json", "report_md": "report.md", "report_png": "report.png"},
        }
        if chosen is not None:
            m = chosen["measurement"]
            report["chosen"] = {
                "index": chosen["index"], "rate": chosen["rate"], "name": chosen["name"],
                "tflite": chosen["files"]["tflite"], "best": "best.tflite",
                "size_bytes": chosen["size_bytes"], "flash_bytes": chosen["flash_bytes"], "params": chosen["params"],
                "fidelity": chosen["fidelity"]["score"], "score_name": chosen["fidelity"]["score_name"],
                "accuracy": chosen["fidelity"].get("accuracy"), "accuracy_drop": chosen["fidelity"].get("accuracy_drop"),
                "latency_ms": chosen["checks"]["latency"]["value"], "latency_stat": self.c.latency_stat,
                "latency_spread_ms": m["latency_ms"].get("iqr"),
                "latency_is_estimate": bool(m.get("latency_is_estimate")),
                "ram_bytes": m.get("ram_bytes"), "sha256": chosen["sha256"],
            }
            report["chosen"]["layers"] = self.layer_table(chosen)
        from edgeprune.pipeline.ethos_u_stage import report_section, write_best

        if kind == "ethos-u":
            report["ethos_u"] = report_section(self, report)  # and best_vela.tflite beside best.tflite
        else:
            write_best(self, None)  # no stale best_vela.tflite from an earlier Ethos-U run of this dir
        if getattr(self, "trainset", None) is not None:
            report["settings"]["recover"] = self.recover.to_dict()
            trained = [r for r in self.candidates if r.get("recovery")]
            report["data"]["train"] = dict(self.trainset.info, candidates_trained=len(trained),
                                           trained_from_rate=min((r["rate"] for r in trained), default=None))
        from edgeprune.pipeline import verdict

        report["verdict"] = verdict.build(self, report)  # what the fidelity verdict means (issue 14)
        files = rep.write_reports(d, report)
        return RunResult(report=report, exit_code=exit_code, run_dir=d, files=files)
