"""The device phase of ``edgeprune run``: measure host-passing candidates from the largest rate
down, through the sha256-keyed measurement cache; stop at the first that meets every budget.
:func:`check_reachable` runs before the host phase; :class:`DevicePhase` takes the run's context
and the :class:`~edgeprune.pipeline.search.host_phase.HostResult` and returns a :class:`DeviceResult`."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Optional

from edgeprune.errors import BadInput
from edgeprune.pipeline.search.candidate import Candidate
from edgeprune.pipeline.search.run_config import NOISE_TOLERANCE, _now
from edgeprune.pipeline.search.run_dir import write_json_atomic


class LoadFailure:
    """The board's runtime cannot load THIS candidate (a BadInput from the board runner): the
    candidate is recorded as failed and the search goes on."""

    def __init__(self, exc: BadInput):
        self.exc = exc


@dataclass
class DeviceResult:
    """What the device phase hands on to the report."""
    chosen: Optional[Candidate]  # the answer (None: no candidate meets everything)
    runs: int = 0  # device runs made
    cached: int = 0  # measurements taken from the cache
    seconds: float = 0.0  # wall time (boards in parallel overlap)
    load_warning: Optional[str] = None


def check_reachable(ctx) -> list:
    """Fail fast (exit 4) when a board cannot be reached, before the host phase: SSH boards
    connect (and authenticate, host key checked; no lock taken), labgrid profiles ask their
    coordinator for the place(s). Returns the boards: one profile per board."""
    from edgeprune.devices.farm import board_pool

    profiles = [ctx.profile] + list(ctx.extra_profiles)
    for p in profiles:
        if p.kind == "labgrid":
            from edgeprune.devices.labgrid import check_coordinator

            ctx.emit("status", text=f"asking the labgrid coordinator {p.labgrid.coordinator} for {p.name}")
            check_coordinator(p)
    for p in profiles:
        if p.kind == "ethos-u":  # Vela missing, not starting, or without the profile's sections: exit 4 now
            from edgeprune.devices.ethos_u import check_vela
            from edgeprune.errors import DeviceError

            ctx.emit("status", text=f"checking Vela for {p.name}")
            info = check_vela(p)
            if info["missing"]:
                raise DeviceError(f"{p.name}: Vela's config has no " + "; ".join(m["what"] for m in info["missing"]),
                                  "; ".join(m["fix"] for m in info["missing"]))
    boards = board_pool(profiles)
    for b in boards:
        if b.kind != "ssh":
            continue
        from edgeprune.devices.base import with_retries
        from edgeprune.devices.ssh_client import connect_client, resolve_settings

        ctx.emit("status", text=f"connecting to {b.name}")
        with_retries(b, lambda b=b: connect_client(resolve_settings(b), name=b.name).close())
    return boards


def strategy_text(boards: list) -> str:
    from edgeprune.pipeline.search.device_farm import PARALLEL_STRATEGY
    from edgeprune.pipeline.search.run_config import STRATEGY

    if len(boards) < 2:
        return STRATEGY
    return STRATEGY + PARALLEL_STRATEGY.format(n=len(boards), names=", ".join(b.name for b in boards))


def device_key(config, sha: str, board) -> str:
    """The measurement cache's key: the .tflite's sha256, the board and the run settings."""
    conn = board.connection
    if board.kind == "labgrid":
        from edgeprune.devices.farm import board_id

        where = board_id(board)
    else:
        where = f"{conn.host or conn.ssh_config_alias}:{conn.port or 22}" if conn is not None else board.kind
    cfg = config.measurement.bench()
    threads = cfg.threads if cfg.threads is not None else board.threads
    return f"{sha}|{board.name}|{where}|{cfg.key()}|threads={threads}"


def measurement_entry(m) -> dict:
    """A measurement as the cache (and report.json's ``measurement``) keeps it."""
    import dataclasses

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
    if m.kind == "labgrid":
        entry["labgrid"] = m.extra.get("labgrid")
    if m.kind == "ethos-u":
        from edgeprune.pipeline.convert.ethos_u_stage import measurement_extra

        entry["vela"] = measurement_extra(m)
    return entry


def _ok(r) -> bool:
    return r.meets_all


class DevicePhase:
    """Measurement and device checks of the host-passing candidates.

    With several boards (``ctx.boards``) :mod:`edgeprune.pipeline.search.device_farm` runs
    ``measure_noise_aware`` for different candidates in worker threads, one per board: the
    cache, the counters and the progress events are then guarded by ``self.lock``."""

    def __init__(self, ctx, host):
        self.ctx, self.host = ctx, host
        self.config = ctx.config
        self.boards = ctx.all_boards()
        self.latency_budget, self.ram_budget = ctx.budgets.latency_ms, ctx.budgets.ram_bytes
        self.lock = threading.RLock()
        self.result = DeviceResult(chosen=None)
        self.skip: Optional[str] = None  # why the candidates left are not measured
        self.decided: set = set()

    def _cached(self, sha: str, suffix: str = "") -> Optional[dict]:
        """The cached measurement of this .tflite on any board of the run (one type of board)."""
        for b in self.boards:
            key = device_key(self.config, sha, b) + suffix
            if key in self.ctx.cache:
                return self.ctx.cache[key]
        return None

    def cached_noise_aware(self, r: Candidate):
        """``measure_noise_aware`` when everything it needs is cached (no board needed), else None."""
        from edgeprune.pipeline.search.noise import straddles

        m = self._cached(r.sha256)
        if m is None:
            return None
        if straddles(m, self.config.measurement.latency_stat, self.latency_budget) and \
                self._cached(r.sha256, "|again") is None:
            return None
        return self.measure_noise_aware(r)

    def measure(self, rec: Candidate, *, again: bool = False, board=None) -> tuple[dict, bool]:
        """Measure (or take from the cache) one candidate; ``again``: the re-measurement of a
        candidate whose first measurement put the budget within its noise band."""
        from edgeprune.devices.base import measure

        board = board if board is not None else self.ctx.profile
        suffix = "|again" if again else ""
        with self.lock:
            hit = self._cached(rec.sha256, suffix)
            if hit is not None:
                return hit, True
            self.ctx.emit("device_start", record=rec.to_json(), board=board.name)
        path, config = self.ctx.run_dir / rec.files["tflite"], self.config.measurement.bench()
        if len(self.boards) > 1:
            from edgeprune.pipeline.search.device_farm import measure_on

            m = measure_on(board, path, config)  # abortable from the main thread (Ctrl-C)
        else:
            m = measure(board, path, config)
        entry = measurement_entry(m)
        with self.lock:
            self.ctx.cache[device_key(self.config, rec.sha256, board) + suffix] = entry
            write_json_atomic(self.ctx.cache_path, self.ctx.cache)
            self.result.runs += 1
        return entry, False

    def device_checks(self, m: dict, *, remeasured: bool = False) -> dict:
        from edgeprune.pipeline.search.noise import latency_check

        rb, lb = self.ram_budget, self.latency_budget
        ram = m.get("ram_bytes")
        return {
            "ram": {"ok": True if (rb is None or ram is None) else ram <= rb, "value": ram, "limit": rb,
                    "estimate": not m["measured"].get("ram", False)},
            "latency": latency_check(m, self.config.measurement.latency_stat, lb, remeasured=remeasured),
        }

    def measure_noise_aware(self, r: Candidate, board=None) -> tuple[dict, bool]:
        """Measure; when the budget lies within the noise band, measure once more and decide on that."""
        from edgeprune.pipeline.search.noise import load_warning, straddles

        m, cached = self.measure(r, board=board)
        remeasured = False
        if straddles(m, self.config.measurement.latency_stat, self.latency_budget):
            r.first_measurement = m
            m, cached2 = self.measure(r, again=True, board=board)
            cached = cached and cached2
            remeasured = True
        r.checks.update(self.device_checks(m, remeasured=remeasured))
        warning = load_warning(m, self.ctx.profile.max_load_per_core, r.rate)
        if warning and not self.result.load_warning:
            self.result.load_warning = warning
        return m, cached

    def measure_on_board(self, board, r: Candidate):
        """One candidate's (noise-aware) measurement on ``board``; a worker thread's job when
        boards run in parallel. A candidate the board's runtime cannot load: LoadFailure."""
        try:
            return self.measure_noise_aware(r, board)
        except BadInput as exc:
            return LoadFailure(exc)

    # ---------------------------------------------------------------- the phase
    def run(self) -> DeviceResult:
        cands, config = self.host.candidates, self.config
        # screened candidates (judged on Keras only) are converted when the search reaches them
        host_pass = [r for r in cands if _ok(r) or r.screened]
        for r in cands:
            r.measurement = None
            if r.screened:
                r.not_measured = None
            elif r.skipped:
                r.not_measured = "not converted: " + r.skipped
            elif not r.checks["fidelity"]["ok"]:
                r.not_measured = "fails the fidelity threshold (host check)"
            elif not r.checks["flash"]["ok"]:
                r.not_measured = "over the flash budget (host check)"
        order = sorted(host_pass, key=lambda r: -r.rate)
        self.ctx.emit("device_phase", total=len(order))
        t_phase = time.perf_counter()
        order = self.in_segments(order)
        # wall time (boards in parallel overlap); on-demand conversions are in their candidates' timings
        self.result.seconds = time.perf_counter() - t_phase - self.host.screen.on_demand_s
        ch = self.result.chosen
        for r in order:
            if r.screened:
                r.not_measured = self.host.screen.text(r) + " (" + (
                    self.skip or f"rate {ch.rate:.2f}, a larger rate, already meets every budget") + ")"
            elif id(r) not in self.decided and r.measurement is None and r.not_measured is None and self.skip is not None:
                r.not_measured = self.skip
        self.ctx.emit("device_phase_done", made=self.result.runs, cached=self.result.cached)
        if config.search.measure_all and order:
            passing = [r for r in order if _ok(r)]
            self.result.chosen = passing[0] if passing else None
        return self.result

    def in_segments(self, order: list) -> list:
        """Measure ``order`` (largest rate first) in runs of converted candidates; a screened
        candidate is converted from its plan and judged on its .tflite when the search reaches it
        (pipeline/search/host_screen.py); one that fails a host check is not measured. With
        --measure-all every screened candidate is converted first. Returns ``order`` with the
        converted records in place of the screened ones."""
        from edgeprune.pipeline.search.device_farm import run_in_rate_order

        measure_all = self.config.search.measure_all
        order = [self.convert_screened(r) if measure_all and r.screened else r for r in order]
        i = 0
        while i < len(order):
            if order[i].screened:  # reached: convert it, judge it on its .tflite
                order[i] = self.convert_screened(order[i])
                if not _ok(order[i]):
                    i += 1
                    continue
            j = i + 1  # a run of converted candidates from here to the next screened one
            while j < len(order) and not order[j].screened:
                j += 1
            seg = [r for r in order[i:j] if _ok(r)]
            i = j
            run_in_rate_order(seg, self.boards, lookup=self.cached_noise_aware, measure=self.measure_on_board,
                              store=lambda board, r, res: res, decide=self.decide, keep=self.keep,
                              emit=lambda *a, **k: None, look_ahead=len(seg) if measure_all else None)
            if self.skip is not None or (self.result.chosen is not None and not measure_all):
                break
        return order

    def convert_screened(self, r: Candidate) -> Candidate:
        """A screened candidate converted and judged on its .tflite (its host checks set); a
        conversion that fails is recorded on the candidate, which is then not measured."""
        host = self.host
        try:
            new = host.convert_screened(r)
        except Exception as exc:  # noqa: BLE001 - recorded with its reason, never silent
            msg = (getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}").strip().splitlines()[0][:300]
            r.not_measured = f"screened on Keras, but its conversion failed: {msg}"
            r.checks["fidelity"]["ok"] = False
            r.screen = dict(r.screen, screened=False, converted=f"failed: {msg}")
            self.ctx.notes.append(f"candidate {r.name} (screened) failed when converted on demand: {msg}")
            return r
        if not new.checks["fidelity"]["ok"]:
            new.not_measured = "fails the fidelity threshold on its .tflite (host check; converted after screening)"
        elif not new.checks["flash"]["ok"]:
            new.not_measured = "over the flash budget (host check; converted after screening)"
        return new

    def apply(self, r: Candidate, res, spent: float) -> bool:
        """Record a measurement (or a load failure) in the candidate; True when it meets everything."""
        if isinstance(res, LoadFailure):  # the board's runtime cannot load THIS candidate: record it, go on
            msg = res.exc.message
            r.not_measured = f"the device runtime cannot load it: {msg[:300]}"
            r.checks["load"] = {"ok": False, "value": msg[:300], "limit": None}
            self.ctx.notes.append(f"candidate {r.name} could not be loaded on the device ({msg[:160]}); "
                                  "recorded as failed, the search went on")
            return False
        m, cached = res
        self.result.cached += int(cached)
        r.measurement = m
        r.measurement_cached = cached
        r.timings["device_s"] = round(spent, 4) if not cached else 0.0
        ok = _ok(r)
        self.ctx.emit("device_done", record=r.to_json(), cached=cached, ok=ok, latency_stat=self.config.measurement.latency_stat)
        # keep the candidate's metrics file up to date with its measurement
        write_json_atomic(self.ctx.run_dir / f"{r.name}.json", dict(r.to_json(), device=m))
        return ok

    def decide(self, r: Candidate, res, _cached, spent: float) -> bool:
        """After one candidate's measurement: whether the next smaller rate is still measured."""
        self.decided.add(id(r))
        ok = self.apply(r, res, spent)
        if isinstance(res, LoadFailure):
            return True
        if ok:
            self.result.chosen = self.result.chosen or r
            if not self.config.search.measure_all:
                self.skip = f"not measured: rate {r.rate:.2f} (a larger rate) already meets every budget"
                return False
            return True
        if self.config.search.measure_all:
            return True
        misses = []
        for lim in ("latency", "ram"):
            ck = r.checks[lim]
            if not ck["ok"] and ck["limit"]:
                misses.append((lim, ck["value"] / ck["limit"] - 1.0))
        clear = [(lim, m_) for lim, m_ in misses if m_ > NOISE_TOLERANCE[lim]]
        if clear:
            lim, m_ = clear[0]
            self.skip = (f"not measured: rate {r.rate:.2f} (a smaller model) already missed the {lim} budget "
                         f"by {100 * m_:.0f}%; {lim} only grows as the rate falls")
            return False
        return True

    def keep(self, r: Candidate, res, spent: float) -> None:
        """Measured on another board while the answer was found: kept, the answer unchanged."""
        self.apply(r, res, spent)
        self.ctx.notes.append(f"rate {r.rate:.2f} was measured on a parallel board while the search was "
                              f"deciding; its measurement is kept but does not change the answer")
