"""The device phase of ``edgeprune run``: measure host-passing candidates from the largest rate
down, through the sha256-keyed measurement cache; stop at the first that meets every budget."""
from __future__ import annotations

import time
from typing import Optional

from edgeprune.errors import BadInput
from edgeprune.pipeline.run_config import NOISE_TOLERANCE, _now
from edgeprune.pipeline.run_dir import write_json_atomic


class DevicePhase:
    """Mixin of :class:`edgeprune.pipeline.run._Run`: reachability, measurement, device checks."""

    def device_key(self, sha: str) -> str:
        from edgeprune.pipeline.run_setup import bench_config

        p = self.profile
        conn = p.connection
        where = f"{conn.host or conn.ssh_config_alias}:{conn.port or 22}" if conn is not None else p.kind
        cfg = bench_config(self.c)
        threads = cfg.threads if cfg.threads is not None else p.threads
        return f"{sha}|{p.name}|{where}|{cfg.key()}|threads={threads}"

    def check_reachable(self) -> None:
        """Fail fast (exit 4) when an SSH board cannot be reached, before the host phase."""
        if self.profile.kind != "ssh":
            return
        from edgeprune.devices.base import open_device, with_retries

        self.emit("status", text=f"connecting to {self.profile.name}")

        def once():
            with open_device(self.profile):
                return True

        with_retries(self.profile, once)

    def measure(self, rec: dict, *, again: bool = False) -> tuple[dict, bool]:
        """Measure (or take from the cache) one candidate; ``again``: the re-measurement of a
        candidate whose first measurement put the budget within its noise band."""
        import dataclasses

        from edgeprune.devices.base import measure
        from edgeprune.pipeline.run_setup import bench_config

        key = self.device_key(rec["sha256"]) + ("|again" if again else "")
        if key in self.cache:
            return self.cache[key], True
        self.emit("device_start", record=rec)
        m = measure(self.profile, self.run_dir / rec["files"]["tflite"], bench_config(self.c))
        entry = {
            "device": m.device, "kind": m.kind, "sha256": m.model_sha256,
            "latency_ms": dataclasses.asdict(m.latency_ms),
            "timed_s": m.timed_s, "warmup_s": m.warmup_s, "capped": m.capped, "settings": m.settings,
            "load_per_core": m.load_per_core, "loadavg_1m": m.loadavg_1m,
            "latency_is_estimate": m.is_estimate,
            "ram_bytes": m.ram_bytes, "peak_rss_bytes": m.peak_rss_bytes, "flash_bytes": m.flash_bytes,
            "load_ms": m.load_ms, "first_inference_ms": m.first_inference_ms,
            "runs": m.runs, "warmup": m.warmup, "threads": m.threads,
            "runtime": m.runtime, "runtime_version": m.runtime_version, "arch": m.arch,
            "emulated": m.extra.get("emulated"), "python_version": m.python_version, "measured": m.measured, "estimates": m.estimates,
            "wall_s": round(m.wall_s or 0.0, 3), "measured_at": _now(),
        }
        if m.kind == "mcu":
            entry["arena_bytes"] = (m.extra.get("arena") or {}).get("arena_bytes")
            entry["macs"] = m.extra.get("macs")
        self.cache[key] = entry
        write_json_atomic(self.cache_path, self.cache)
        self.device_runs += 1
        return entry, False

    def device_checks(self, m: dict, *, remeasured: bool = False) -> dict:
        from edgeprune.pipeline.noise import latency_check

        rb, lb = self.budgets["ram_bytes"]["value"], self.budgets["latency_ms"]["value"]
        ram = m.get("ram_bytes")
        return {
            "ram": {"ok": True if (rb is None or ram is None) else ram <= rb, "value": ram, "limit": rb,
                    "estimate": not m["measured"].get("ram", False)},
            "latency": latency_check(m, self.c.latency_stat, lb, remeasured=remeasured),
        }

    def measure_noise_aware(self, r: dict) -> tuple[dict, bool]:
        """Measure; when the budget lies within the noise band, measure once more and decide on that."""
        from edgeprune.pipeline.noise import load_warning, straddles

        m, cached = self.measure(r)
        remeasured = False
        if straddles(m, self.c.latency_stat, self.budgets["latency_ms"]["value"]):
            r["first_measurement"] = m
            m, cached2 = self.measure(r, again=True)
            cached = cached and cached2
            remeasured = True
        r["checks"].update(self.device_checks(m, remeasured=remeasured))
        warning = load_warning(m, self.profile.max_load_per_core, r["rate"])
        if warning and not getattr(self, "load_warning", None):
            self.load_warning = warning
        return m, cached

    def device_phase(self) -> None:
        self.device_runs = 0
        self.device_cached = 0
        self.device_seconds = 0.0
        self.load_warning = None
        host_pass = [r for r in self.candidates if all(v["ok"] for v in r["checks"].values())]
        for r in self.candidates:
            r["measurement"] = None
            if r.get("skipped"):
                r["not_measured"] = "not converted: " + r["skipped"]
            elif not r["checks"]["fidelity"]["ok"]:
                r["not_measured"] = "fails the fidelity threshold (host check)"
            elif not r["checks"]["flash"]["ok"]:
                r["not_measured"] = "over the flash budget (host check)"
        order = sorted(host_pass, key=lambda r: -r["rate"])
        self.emit("device_phase", total=len(order))
        skip: Optional[str] = None
        chosen = None
        for r in order:
            if skip is not None:
                r["not_measured"] = skip
                continue
            t0 = time.perf_counter()
            try:
                m, cached = self.measure_noise_aware(r)
            except BadInput as exc:  # the board's runtime cannot load THIS candidate: record it, go on
                self.device_seconds += time.perf_counter() - t0
                r["not_measured"] = f"the device runtime cannot load it: {exc.message[:300]}"
                r["checks"]["load"] = {"ok": False, "value": exc.message[:300], "limit": None}
                self.notes.append(f"candidate {r['name']} could not be loaded on the device ({exc.message[:160]}); "
                                  "recorded as failed, the search went on")
                continue
            spent = time.perf_counter() - t0
            self.device_seconds += spent
            self.device_cached += int(cached)
            r["measurement"] = m
            r["measurement_cached"] = cached
            r["timings"]["device_s"] = round(spent, 4) if not cached else 0.0
            ok = all(v["ok"] for v in r["checks"].values())
            self.emit("device_done", record=r, cached=cached, ok=ok, latency_stat=self.c.latency_stat)
            # keep the candidate's metrics file up to date with its measurement
            disk = {k: v for k, v in r.items() if k not in ("reused",)}
            write_json_atomic(self.run_dir / f"{r['name']}.json", dict(disk, device=m))
            if ok:
                chosen = chosen or r
                if not self.c.measure_all:
                    skip = f"not measured: rate {r['rate']:.2f} (a larger rate) already meets every budget"
                continue
            if self.c.measure_all:
                continue
            misses = []
            for lim in ("latency", "ram"):
                ck = r["checks"][lim]
                if not ck["ok"] and ck["limit"]:
                    misses.append((lim, ck["value"] / ck["limit"] - 1.0))
            clear = [(lim, m_) for lim, m_ in misses if m_ > NOISE_TOLERANCE[lim]]
            if clear:
                lim, m_ = clear[0]
                skip = (f"not measured: rate {r['rate']:.2f} (a smaller model) already missed the {lim} budget by "
                        f"{100 * m_:.0f}%; {lim} only grows as the rate falls")
        self.emit("device_phase_done", made=self.device_runs, cached=self.device_cached)
        if self.c.measure_all and order:
            passing = [r for r in order if all(v["ok"] for v in r["checks"].values())]
            chosen = passing[0] if passing else None
        self.chosen = chosen
