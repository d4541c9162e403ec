"""Rich tables for the device commands (kept out of cli.py so the commands stay thin)."""
from __future__ import annotations

from rich.table import Table

from edgeprune.devices.sizes import SIZE_UNITS_NOTE, format_size


def _kind(name: str, kind: str) -> str:
    """'pi4 (ssh)', but just 'local' for the local profile: never the same word twice."""
    return name if name == kind else f"{name} ({kind})"


def latency_cell(lat, stat: str = "p50") -> str:
    """'0.082 ms ±0.0002': the statistic and half the interquartile range (the spread)."""
    v = lat.stat(stat) if hasattr(lat, "stat") else lat[("median" if stat == "p50" else stat)]
    iqr = lat.iqr if hasattr(lat, "iqr") else (lat.get("iqr") or 0.0)
    return f"{v:.3f} ms ±{iqr / 2:.3g}"


def devices_table(profiles) -> Table:
    t = Table(title=f"device profiles ({SIZE_UNITS_NOTE})", title_justify="left")
    for col in ("name", "kind", "host", "threads", "flash", "RAM", "latency limit"):
        t.add_column(col)
    for p in profiles:
        host = "-"
        if p.kind == "labgrid":
            spec = p.labgrid
            host = f"labgrid {spec.coordinator} " + (spec.place or ",".join(f"{k}={v}" for k, v in spec.tags.items()))
        elif p.connection is not None:
            c = p.connection
            host = (c.host or f"(ssh_config {c.ssh_config_alias})") + (f":{c.port}" if c.port and c.port != 22 else "")
            if c.user:
                host = f"{c.user}@{host}"
        elif p.kind == "local":
            host = "this machine"
        elif p.kind == "ethos-u":
            e = p.ethos_u
            host = f"Vela {e.accelerator_config} {e.system_config} {e.memory_mode}"
        t.add_row(p.name, p.kind, host, str(p.threads or "-"), format_size(p.limits.flash_bytes), format_size(p.limits.ram_bytes),
                  f"{p.limits.latency_ms:g} ms" if p.limits.latency_ms else "-")
    return t


def bench_table(m) -> Table:
    est = not m.measured.get("latency", False)
    title = f"{_kind(m.device, m.kind)}: " + ("ESTIMATE, not measured on the board" if est else "measured on the device")
    if m.extra.get("emulated"):
        title += ", EMULATED"
    t = Table(title=title + f"; {SIZE_UNITS_NOTE}", title_justify="left")
    t.add_column("")
    t.add_column("value")
    lat = m.latency_ms
    if est:
        t.add_row("latency (estimate)", f"{lat.median:.3f} ms")
        t.add_row("method", m.estimates.get("latency", ""))
    else:
        t.add_row("latency p50 / p90 / p99", f"{lat.p50:.3f} / {lat.p90:.3f} / {lat.p99:.3f} ms")
        t.add_row("spread: IQR / MAD", f"{lat.iqr:.4f} / {lat.mad:.4f} ms (p25 {lat.p25:.3f}, p75 {lat.p75:.3f})")
        t.add_row("latency min / max, mean ± std", f"{lat.min:.3f} / {lat.max:.3f} ms, {lat.mean:.3f} ± {lat.std:.3f} ms")
        timed = f" in {m.timed_s:.2f} s" if m.timed_s is not None else ""
        warm = f"{m.warmup} in {m.warmup_s:.2f} s" if m.warmup_s is not None else f"{m.warmup}"
        t.add_row("timed runs", f"{m.runs}{timed} (warm-up {warm}), threads {m.threads or 'default'}")
        st = m.settings or {}
        if st:
            t.add_row("asked for", f"at least {st['num_runs']} runs and {st['min_secs']:g} s (warm-up {st['warmup_runs']} "
                      f"runs and {st['warmup_min_secs']:g} s), at most {st['max_secs']:g} s"
                      + ("; CAPPED by max-secs" if m.capped else ""))
        if m.load_per_core is not None:
            t.add_row("load before measuring", f"{m.loadavg_1m:.2f} (1-min average), {m.load_per_core:.2f} per core")
        t.add_row("load / first inference", f"{m.load_ms:.1f} ms / {m.first_inference_ms:.2f} ms")
        t.add_row("peak RSS", format_size(m.peak_rss_bytes))
    if m.kind == "mcu":
        arena = m.extra.get("arena", {})
        t.add_row("MACs", f"{m.extra.get('macs', 0):,}")
        t.add_row("TFLM arena (measured on host)", format_size(arena.get("arena_bytes")))
        t.add_row("RAM (arena + runtime)", format_size(m.ram_bytes))
        t.add_row("flash (model + runtime)", format_size(m.flash_bytes))
    if m.kind == "ethos-u":
        v = m.extra.get("vela", {})
        c = v.get("config", {})
        t.add_row("Vela", f"ethos-u-vela {v.get('vela_version')}: {c.get('accelerator_config')}, system "
                  f"{c.get('system_config')}, memory mode {c.get('memory_mode')} ({c.get('config_file')})")
        t.add_row("cycles (total / NPU)", f"{v.get('cycles_total', 0):,} / {v.get('cycles_npu', 0):,} at "
                  f"{v.get('core_clock_hz', 0) / 1e6:g} MHz")
        t.add_row("SRAM used (Vela)", format_size(v.get("sram_bytes")))
        if v.get("dram_bytes"):
            t.add_row("DRAM used (Vela)", format_size(v.get("dram_bytes")))
        t.add_row("flash used (Vela)", f"off-chip {format_size(v.get('off_chip_flash_bytes'))}, on-chip "
                  f"{format_size(v.get('on_chip_flash_bytes'))}")
        t.add_row("RAM / flash (+ runtime)", f"{format_size(m.ram_bytes)} / {format_size(m.flash_bytes)}")
        total = (v.get("cpu_ops") or 0) + (v.get("npu_ops") or 0)
        t.add_row("operators on the NPU", f"{v.get('npu_ops')} of {total} ({100 * (v.get('npu_share') or 0):.1f} %)")
        for op in v.get("cpu_operators") or []:
            t.add_row("  on the CPU", f"{op['op']} {op['name']}" + (f" ({op['reason']})" if op.get("reason") else ""))
        layers = sorted(v.get("per_layer") or [], key=lambda r: -r["cycles"])[:5]
        for row in layers:
            t.add_row(f"  {row['original_op']} / {row['op']}", f"{row['cycles']:,} cycles ({row['cycles_pct']:.1f} %) "
                      f"{row['name'][:50]}")
        t.add_row("Vela output", f"{format_size(v.get('vela_tflite_bytes'))} (ops: {', '.join(v.get('vela_ops') or [])})")
    t.add_row("model", f"{format_size(m.model_bytes)} sha256 {m.model_sha256[:16]}…")
    t.add_row("runtime", f"{m.runtime} {m.runtime_version or ''}".strip())
    if m.arch or m.python_version:
        t.add_row("arch / Python", f"{m.arch or '-'} / {m.python_version or '-'}")
    if m.output_checksum:
        t.add_row("output sha256", m.output_checksum[:32] + "…")
    if m.wall_s is not None:
        t.add_row("wall time", f"{m.wall_s:.2f} s")
    if m.extra.get("emulated"):
        t.add_row("emulated", m.extra["emulated"])
    return t


def check_table(profile, info: dict) -> Table:
    t = Table(title=f"{_kind(profile.name, profile.kind)}" + (", EMULATED" if info.get("emulated") else "")
              + f" ({SIZE_UNITS_NOTE})", title_justify="left")
    t.add_column("")
    t.add_column("value")
    if info.get("kind") == "ethos-u":
        t.add_row("Vela", f"ethos-u-vela {info.get('vela_version')} ({info.get('vela')}, {info.get('vela_source')})")
        t.add_row("accelerator", str(info.get("accelerator_config")))
        t.add_row("system config / memory mode", f"{info.get('system_config')} / {info.get('memory_mode')} "
                  f"({info.get('config_file')})")
        for m in info.get("missing") or []:
            t.add_row("MISSING", f"{m['what']}: {m['fix']}")
        t.add_row("note", info.get("note", ""))
        return t
    if info.get("kind") == "mcu":
        t.add_row("tflite-micro (host)", str(info.get("tflite_micro_version") or "MISSING"))
        t.add_row("core / clock", f"{info.get('core') or '-'} / {info['clock_hz']:,} Hz, {info['cycles_per_mac']:g} cycles/MAC")
        t.add_row("note", info.get("note", ""))
        return t
    t.add_row("Python", f"{info.get('python_version')} ({info.get('python')})")
    t.add_row("numpy", str(info.get("numpy_version") or "MISSING"))
    t.add_row("runtime", f"{info.get('runtime')} {info.get('runtime_version')}" if info.get("runtime") else "MISSING")
    for name, r in (info.get("runtimes") or {}).items():
        t.add_row(f"  {name}", r.get("version") if r.get("ok") else f"no ({r.get('error')})")
    t.add_row("architecture", f"{info.get('arch')} ({info.get('system')}, {info.get('cpu_count')} CPUs)")
    if info.get("load_per_core") is not None:
        t.add_row("load (1-min average)", f"{info['loadavg_1m']:.2f}, {info['load_per_core']:.2f} per core")
    mem = info.get("memory") or {}
    if mem:
        t.add_row("memory available / total", f"{format_size(mem.get('MemAvailable'))} / {format_size(mem.get('MemTotal'))}")
    t.add_row("disk free (work dir)", format_size(info.get("disk_free_bytes")))
    if info.get("wall_s") is not None:
        t.add_row("check took", f"{info['wall_s']:.2f} s")
    if info.get("emulated"):
        t.add_row("emulated", info["emulated"])
    return t
