"""Rich tables for the device commands (kept out of cli.py so the commands stay thin)."""
from __future__ import annotations

from rich.table import Table

from edgeprune.devices.sizes import format_size


def _size(n) -> str:
    return "-" if n is None else f"{_short(n)} ({n:,} B)"


def _short(n) -> str:
    """2 MiB for 2097152, 2 MB for 2000000: binary units when the figure is a multiple of 1 KiB."""
    binary = bool(n) and (n % 2**20 == 0 or (n < 2**20 and n % 1024 == 0))
    return format_size(n, binary=binary)


def devices_table(profiles) -> Table:
    t = Table(title="device profiles", title_justify="left")
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
        t.add_row(p.name, p.kind, host, str(p.threads or "-"), _short(p.limits.flash_bytes), _short(p.limits.ram_bytes),
                  f"{p.limits.latency_ms:g} ms" if p.limits.latency_ms else "-")
    return t


def bench_table(m) -> Table:
    est = not m.measured.get("latency", False)
    title = f"{m.device} ({m.kind}): " + ("ESTIMATE, not measured on the board" if est else "measured on the device")
    if m.extra.get("emulated"):
        title += ", EMULATED"
    t = Table(title=title, title_justify="left")
    t.add_column("")
    t.add_column("value")
    lat = m.latency_ms
    if est:
        t.add_row("latency (estimate)", f"{lat.median:.3f} ms")
        t.add_row("method", m.estimates.get("latency", ""))
    else:
        t.add_row("latency median", f"{lat.median:.3f} ms")
        t.add_row("latency p90 / mean ± std", f"{lat.p90:.3f} / {lat.mean:.3f} ± {lat.std:.3f} ms")
        t.add_row("latency min / max", f"{lat.min:.3f} / {lat.max:.3f} ms")
        t.add_row("runs (after warm-up)", f"{m.runs} (warm-up {m.warmup}), threads {m.threads or 'default'}")
        t.add_row("load / first inference", f"{m.load_ms:.1f} ms / {m.first_inference_ms:.2f} ms")
        t.add_row("peak RSS", _size(m.peak_rss_bytes))
    if m.kind == "mcu":
        arena = m.extra.get("arena", {})
        t.add_row("MACs", f"{m.extra.get('macs', 0):,}")
        t.add_row("TFLM arena (measured on host)", _size(arena.get("arena_bytes")))
        t.add_row("RAM (arena + runtime)", _size(m.ram_bytes))
        t.add_row("flash (model + runtime)", _size(m.flash_bytes))
    t.add_row("model", f"{_size(m.model_bytes)} sha256 {m.model_sha256[:16]}…")
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
    t = Table(title=f"{profile.name} ({profile.kind})" + (", EMULATED" if info.get("emulated") else ""), title_justify="left")
    t.add_column("")
    t.add_column("value")
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
    mem = info.get("memory") or {}
    if mem:
        t.add_row("memory available / total", f"{_size(mem.get('MemAvailable'))} / {_size(mem.get('MemTotal'))}")
    t.add_row("disk free (work dir)", _size(info.get("disk_free_bytes")))
    if info.get("wall_s") is not None:
        t.add_row("check took", f"{info['wall_s']:.2f} s")
    if info.get("emulated"):
        t.add_row("emulated", info["emulated"])
    return t
