"""``edgeprune run`` on an Ethos-U profile (kind ``ethos-u``): every candidate through Vela.

Vela compiles in about a second, on the host, so EVERY converted candidate is compiled in the
host phase (:func:`compile_candidate`): its ``<name>_vela.tflite`` and ``<name>.vela.json``
(Vela's figures, its CPU fallbacks and per-layer cycles) are written beside its .tflite, its
flash figure is Vela's (so the flash budget is checked on what the board stores), and a
candidate whose NPU share (Vela's NPU operators / all operators) fell below candidate 0's is
flagged. The device phase then takes latency and SRAM from the same compilation (the
:mod:`edgeprune.devices.ethos_u` backend, cached in-process by the .tflite's sha256). At the
end ``best_vela.tflite`` (the model the board runs) is written beside ``best.tflite`` and
``report.json`` gets an ``ethos_u`` section (:func:`report_section`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from edgeprune.devices.sizes import format_size
from edgeprune.pipeline.atomic import copy_atomic, write_json_atomic

BEST_VELA = "best_vela.tflite"


def vela_files(name: str) -> dict:
    return {"vela_tflite": f"{name}_vela.tflite", "vela_json": f"{name}.vela.json"}


def compile_candidate(ctx, candidates: list, rec) -> None:
    """Compile one converted candidate (a :class:`~edgeprune.pipeline.search.candidate.Candidate`) with Vela;
    set its ``vela``, its files and its flash figure.

    Raises DeviceError when Vela fails (the unpruned candidate: exit 4; a pruned one is recorded
    as failed by the host phase and the search goes on)."""
    from edgeprune.devices.ethos_u import compile_tflite

    prof, d = ctx.profile, ctx.run_dir
    files = vela_files(rec.name)
    v = compile_tflite(prof, d / rec.files["tflite"], d / files["vela_tflite"], model_sha256=rec.sha256)
    write_json_atomic(d / files["vela_json"], v.to_dict())
    rec.files.update(files)
    summary = v.summary()
    summary.pop("vela_ops", None)
    summary["flash_bytes"] = v.on_chip_flash_bytes + v.off_chip_flash_bytes + int(prof.ethos_u.runtime_flash_bytes)
    summary["ram_bytes"] = v.sram_bytes + v.dram_bytes + int(prof.ethos_u.runtime_ram_bytes)
    base = candidates[0].vela if rec.index > 0 and candidates else None
    summary["npu_share_dropped"] = bool(base is not None and summary["npu_share"] < base["npu_share"] - 1e-9)
    rec.vela = summary
    rec.flash_bytes = summary["flash_bytes"]
    if rec.index == 0 and summary["npu_ops"] == 0:
        ctx.notes.append("Vela put no operator of the unpruned model on the NPU: Ethos-U runs int8 (and int16) "
                         "operators only, so every figure is the CPU's; convert with --quantize int8")
    if summary["npu_share_dropped"]:
        names = ", ".join(f"{o['op']} ({o['name']})" for o in summary["cpu_operators"][:5])
        ctx.notes.append(f"rate {rec.rate:.2f}: Vela put {summary['npu_ops']} of {summary['npu_ops'] + summary['cpu_ops']} "
                         f"operators on the NPU ({100 * summary['npu_share']:.1f} %), fewer than the unpruned model's "
                         f"{100 * base['npu_share']:.1f} %; on the CPU: {names}")
        ctx.emit("status", text=f"rate {rec.rate:.2f}: NPU share dropped to {100 * summary['npu_share']:.1f} %")


def needs_compile(ctx, rec) -> bool:
    """A reused candidate (``--resume``) compiled under another Vela configuration, or never."""
    from edgeprune.devices.ethos_u import config_key

    v = rec.vela
    if rec.skipped:
        return False
    if v is None or v.get("key") != config_key(ctx.profile):
        return True
    return not all((ctx.run_dir / f).is_file() for f in vela_files(rec.name).values())


def measurement_extra(m) -> dict:
    """What the run's measurement cache keeps of a Vela measurement (no per-layer rows)."""
    v = dict(m.extra.get("vela") or {})
    keep = ("vela_version", "config", "inference_time_ms", "cycles_total", "cycles_npu", "sram_bytes", "dram_bytes",
            "on_chip_flash_bytes", "off_chip_flash_bytes", "cpu_ops", "npu_ops", "npu_share", "estimate")
    return {k: v.get(k) for k in keep}


def write_best(run_dir: Path, chosen) -> Optional[str]:
    """``best_vela.tflite``: the chosen Candidate's Vela output (removed when there is none)."""
    d = run_dir
    best = d / BEST_VELA
    if chosen is not None and chosen.files.get("vela_tflite"):
        copy_atomic(d / chosen.files["vela_tflite"], best)
        return BEST_VELA
    if best.exists():
        best.unlink()
    return None


def report_section(ctx, candidates: list, run_chosen, report: dict) -> dict:
    """``report.json``'s ``ethos_u``: Vela's version and configuration, the chosen candidate's
    figures and per-layer cycles, NPU-share drops, what fidelity was judged on."""
    from edgeprune.devices.ethos_u import ESTIMATE_LABEL, FIDELITY_NOTE, config_of, vela_version

    prof = ctx.profile
    chosen = report.get("chosen")
    cands = [r.to_json() for r in candidates if r.vela]
    best_file = write_best(ctx.run_dir, run_chosen)
    section = {
        "estimate": ESTIMATE_LABEL,
        "vela_version": vela_version(prof),
        "config": config_of(prof),
        "core": prof.ethos_u.core,
        "runtime_flash_bytes": int(prof.ethos_u.runtime_flash_bytes),
        "runtime_ram_bytes": int(prof.ethos_u.runtime_ram_bytes),
        "compiled": len(cands),
        "best_vela": best_file,
        "fidelity": FIDELITY_NOTE,
        "host_run": (cands[0]["vela"].get("host_run") if cands else None),
        "npu_share_baseline": cands[0]["vela"]["npu_share"] if cands and cands[0]["index"] == 0 else None,
        "npu_share_drops": [{"index": r["index"], "rate": r["rate"], "npu_share": r["vela"]["npu_share"],
                             "cpu_operators": r["vela"]["cpu_operators"]}
                            for r in cands if r["vela"].get("npu_share_dropped")],
        "curve": [{"index": r["index"], "rate": r["rate"], "inference_time_ms": r["vela"]["inference_time_ms"],
                   "sram_bytes": r["vela"]["sram_bytes"], "off_chip_flash_bytes": r["vela"]["off_chip_flash_bytes"],
                   "npu_share": r["vela"]["npu_share"]} for r in cands],
        "chosen": None,
    }
    if chosen is not None and run_chosen is not None and run_chosen.vela:
        import json

        v = json.loads((ctx.run_dir / run_chosen.files["vela_json"]).read_text())
        section["chosen"] = {
            "index": chosen["index"], "rate": chosen["rate"], "vela_tflite": run_chosen.files["vela_tflite"],
            "vela_tflite_bytes": v["vela_tflite_bytes"], "inference_time_ms": v["inference_time_ms"],
            "cycles_total": v["cycles_total"], "cycles_npu": v["cycles_npu"], "sram_bytes": v["sram_bytes"],
            "dram_bytes": v["dram_bytes"], "on_chip_flash_bytes": v["on_chip_flash_bytes"],
            "off_chip_flash_bytes": v["off_chip_flash_bytes"], "cpu_ops": v["cpu_ops"], "npu_ops": v["npu_ops"],
            "npu_share": v["npu_share"], "cpu_operators": v["cpu_operators"], "per_layer": v["per_layer"],
        }
    report["files"]["best_vela"] = best_file
    return section


def outcome_lines(report: dict) -> list[str]:
    """Lines for the terminal after a run on an Ethos-U profile."""
    e = report.get("ethos_u")
    if not e:
        return []
    c = e["config"]
    out = [f"Vela {e['vela_version']} ({c['accelerator_config']}, {c['system_config']}, {c['memory_mode']}): "
           f"figures are Vela's ESTIMATE; {e['compiled']} candidates compiled"]
    ch = e.get("chosen")
    if ch:
        total = ch["npu_ops"] + ch["cpu_ops"]
        out.append(f"chosen rate {ch['rate']:.2f} on the NPU: {ch['inference_time_ms']:.3f} ms ({ch['cycles_total']:,} cycles), "
                   f"SRAM {format_size(ch['sram_bytes'])}, off-chip flash {format_size(ch['off_chip_flash_bytes'])}, "
                   f"{ch['npu_ops']} of {total} operators on the NPU"
                   + (f", on the CPU: {', '.join(o['op'] for o in ch['cpu_operators'])}" if ch["cpu_operators"] else ""))
        out.append(f"wrote {Path(report['run_dir']) / e['best_vela']} (Vela's output, the model the board runs)")
    for drop in e.get("npu_share_drops") or []:
        out.append(f"warning: rate {drop['rate']:.2f} has fewer operators on the NPU ({100 * drop['npu_share']:.1f} %) "
                   f"than the unpruned model ({100 * (e['npu_share_baseline'] or 0):.1f} %)")
    return out


def markdown_lines(report: dict) -> list[str]:
    e = report.get("ethos_u")
    if not e:
        return []
    c = e["config"]
    lines = ["## Ethos-U (Vela)", "",
             f"ethos-u-vela {e['vela_version']}, {c['accelerator_config']}, system config {c['system_config']}, "
             f"memory mode {c['memory_mode']} ({c['config_file']}, optimise {c['optimise']}). Latency, SRAM and flash "
             f"are Vela's estimates, not measured on a board. {e['fidelity'][0].upper() + e['fidelity'][1:]}.", "",
             "| rate | Vela latency (ms) | SRAM | off-chip flash | NPU share |", "|---|---|---|---|---|"]
    for p in e["curve"]:
        lines.append(f"| {p['rate']:.2f} | {p['inference_time_ms']:.3f} | {format_size(p['sram_bytes'])} | "
                     f"{format_size(p['off_chip_flash_bytes'])} | {100 * p['npu_share']:.1f} % |")
    ch = e.get("chosen")
    if ch:
        lines += ["", f"Chosen (rate {ch['rate']:.2f}), `{e['best_vela']}`: per-layer cycles (Vela's per-layer CSV)", "",
                  "| operator | NPU op | target | cycles | % of cycles | MACs | name |", "|---|---|---|---|---|---|---|"]
        for row in ch["per_layer"]:
            if row["cycles"] or row["target"] != "NPU":
                lines.append(f"| {row['original_op']} | {row['op']} | {row['target']} | {row['cycles']:,} | "
                             f"{row['cycles_pct']:.1f} | {row['macs']:,} | {row['name'][:60]} |")
    for drop in e.get("npu_share_drops") or []:
        lines.append(f"\n- NPU share dropped at rate {drop['rate']:.2f}: {100 * drop['npu_share']:.1f} %")
    return lines + [""]
