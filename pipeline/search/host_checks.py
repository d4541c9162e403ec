"""The host checks of ``edgeprune run`` (fidelity threshold, flash budget) and the predictions that
skip candidates before they are converted: flash (issue 15), RAM and latency (issue 22)."""
from __future__ import annotations

from typing import Optional

from edgeprune.devices.sizes import format_size
from edgeprune.pipeline.search.verdict import AGREEMENT_METRICS, clears, lower_bound


class HostChecks:
    """The thresholds and budgets of one run applied on the host, with the run's predictors: the
    flash predictor (calibrated on the first converted candidate) and, on a microcontroller with a
    RAM budget, the RAM predictor (calibrated on the unpruned model's measured arena)."""

    def __init__(self, ctx):
        from edgeprune.pipeline.search.predict import FlashPredictor

        self.ctx = ctx
        self.profile = ctx.profile
        self.budgets = ctx.budgets
        self.min_fidelity, self.max_drop = ctx.min_fidelity, ctx.max_drop
        self.confidence = ctx.config.budgets.confidence  # --confidence: the agreement's lower bound is judged
        self.latency = ctx.engine.objective.latency if ctx.engine.objective is not None else None
        runtime = int(self.profile.mcu.runtime_flash_bytes) if self.profile.kind == "mcu" else 0
        if self.profile.kind == "ethos-u":  # flash is Vela's figure (compressed weights): known only once compiled
            self.predictor = FlashPredictor(None, 0)
        else:
            self.predictor = FlashPredictor(self.budgets.flash_bytes, runtime)
        self.ram_predictor = None

    # ---------------------------------------------------------------- checks
    def fidelity_ok(self, fr: dict) -> bool:
        ok = True
        if self.min_fidelity is not None:
            ok = ok and clears(fr, self.min_fidelity, self.confidence)
        if self.max_drop is not None:
            ok = ok and fr["accuracy_drop"] is not None and fr["accuracy_drop"] <= self.max_drop + 1e-9
        return ok

    def host_flash(self, size: int) -> int:
        if self.profile.kind == "mcu":
            return size + int(self.profile.mcu.runtime_flash_bytes)
        return size

    def checks(self, rec) -> dict:
        """A :class:`~edgeprune.pipeline.search.candidate.Candidate`'s host checks (``checks`` of its .json
        and of report.json)."""
        fr = rec.fidelity
        flash = rec.flash_bytes
        fb = self.budgets.flash_bytes
        if rec.skipped and rec.skip_kind != "flash":  # predicted over RAM / latency
            what = rec.skip_what
            return {"fidelity": {"ok": None, "value": None, "skipped": True},
                    "flash": {"ok": fb is None or flash <= fb, "value": flash, "limit": fb, "predicted": True},
                    what: {"ok": False, "value": rec.skip_value, "limit": rec.skip_limit, "predicted": True}}
        if rec.screened:  # judged on its Keras model only: neither a pass nor a fail until converted
            s = rec.screen
            return {"fidelity": {"ok": None, "value": None, "screened": True, "keras": s["keras"]["score"],
                                 "keras_accuracy_drop": s["keras"].get("accuracy_drop"), "margin": s["margin"],
                                 "margin_points": s.get("margin_points"), "min": self.min_fidelity,
                                 "max_accuracy_drop": self.max_drop},
                    "flash": {"ok": fb is None or flash <= fb, "value": flash, "limit": fb, "predicted": True}}
        if rec.skipped:  # never converted: fidelity unknown, flash predicted over the budget
            return {"fidelity": {"ok": None, "value": None, "skipped": True},
                    "flash": {"ok": False, "value": flash, "limit": fb, "predicted": True}}
        fid = {"ok": self.fidelity_ok(fr), "value": fr["score"], "accuracy_drop": fr.get("accuracy_drop"),
               "min": self.min_fidelity, "max_accuracy_drop": self.max_drop}
        if self.confidence is not None and fr.get("metric") in AGREEMENT_METRICS and fr["score"] is not None:
            fid["low"] = round(lower_bound(fr["score"], fr["n_samples"], self.confidence), 6)
            fid["confidence"] = self.confidence
        return {
            "fidelity": fid,
            "flash": {"ok": fb is None or flash <= fb, "value": flash, "limit": fb},
        }

    # ---------------------------------------------------------------- flash prediction
    @staticmethod
    def prediction_of(d: dict):
        from edgeprune.pipeline.search.predict import Prediction

        return Prediction(params=d["params"], weight_bytes=d["weight_bytes"], macs=d["macs"])

    def predicted(self, pred, real_size: int) -> dict:
        """The prediction of a converted candidate; the first one calibrates the predictor."""
        if not self.predictor.ready:
            self.predictor.calibrate(pred, real_size)
        if self.predictor.ready:
            self.predictor.size(pred)
        out = pred.to_dict()
        out["real_size_bytes"] = real_size
        if self.predictor.check is not None:
            out["calibration"] = self.predictor.check
        return out

    # ---------------------------------------------------------------- RAM / latency prediction (issue 22)
    def resource_budget_key(self) -> list:
        return [self.budgets.ram_bytes, self.budgets.latency_ms]

    def ram_calibration(self, km, tflite_path) -> Optional[dict]:
        """On a microcontroller with a RAM budget: the unpruned model's TFLite-Micro arena measured
        on the host once, against its predicted peak activation memory (the RAM predictor's
        overhead and margin). None elsewhere."""
        c = self.ctx.config
        if not c.search.predict or self.profile.kind != "mcu" or self.budgets.ram_bytes is None or c.prune.quantize != "int8":
            return None
        from edgeprune.devices.tflm import measure_arena
        from edgeprune.pipeline.search.resources import resources_of

        peak = resources_of(km, c.prune.quantize).peak_activation_bytes
        if 1.5 * peak + int(self.profile.mcu.runtime_ram_bytes) <= self.budgets.ram_bytes:
            return None  # far within the budget: no candidate can be skipped for RAM, measure nothing more
        try:
            arena = measure_arena(tflite_path).arena_bytes
        except Exception as exc:  # noqa: BLE001 - the prediction is an extra: no skips without it
            self.ctx.notes.append(f"RAM prediction off: the unpruned arena could not be measured ({exc})")
            return None
        cal = {"peak_activation_bytes": peak, "arena_bytes": arena}
        self.ram_calibrate(cal)
        return cal

    def ram_calibrate(self, cal: dict) -> None:
        from edgeprune.pipeline.search.resources import RamPredictor

        self.ram_predictor = RamPredictor()
        self.ram_predictor.calibrate(cal["peak_activation_bytes"], cal["arena_bytes"])

    def resource_skip(self, km) -> Optional[dict]:
        """A candidate predicted to miss the RAM or the latency budget by more than the model's
        error is not converted (the device still measures every candidate that can be the answer)."""
        from edgeprune.pipeline.search.resources import resources_of

        rb, lb = self.budgets.ram_bytes, self.budgets.latency_ms
        rp, lat = self.ram_predictor, self.latency
        if (rb is None or rp is None) and (lb is None or lat is None):
            return None
        res = resources_of(km, self.ctx.config.prune.quantize)
        if rb is not None and rp is not None:
            ram = rp.arena(res.peak_activation_bytes) + int(self.profile.mcu.runtime_ram_bytes)
            low = ram * (1 - rp.margin)
            if low > rb:
                return {"what": "ram", "value": int(ram), "limit": rb,
                        "reason": f"predicted RAM {format_size(ram)} (at least {format_size(low)} with the "
                                  f"{100 * rp.margin:.0f}% margin) is over the {format_size(rb)} RAM budget"}
        if lb is not None and lat is not None:
            ms = lat.predict(res)
            margin = max(0.10, lat.error or 0.0)
            if ms * (1 - margin) > lb:
                return {"what": "latency", "value": round(ms, 6), "limit": lb,
                        "reason": f"predicted latency {ms:.4g} ms (at least {ms * (1 - margin):.4g} ms with the "
                                  f"{100 * margin:.0f}% margin of the {lat.kind} model) is over the {lb:g} ms budget"}
        return None
