"""The host phase of ``edgeprune run``: candidates are pruned progressively, converted and
checked on the host (fidelity, flash) before any device run; finished candidates are reused on
``--resume``."""
from __future__ import annotations

import hashlib
import json
import os
import time

from edgeprune.devices.sizes import format_size
from edgeprune.pipeline.run_config import CANDIDATE_FORMAT, SYNTHETIC_SAMPLES, _now
from edgeprune.pipeline.run_dir import _save_keras_atomic, write_json_atomic


FINE_FROM = 0.8  # above this rate the candidates are spaced step / 2


def rate_schedule(step: float, max_rate: float) -> list[float]:
    """0, step, 2*step, ... <= max_rate, and max_rate itself last (rounded, resume-stable).
    Above FINE_FROM the spacing halves: there a step of 0.05 removes a quarter or more of what
    is left, and one size/fidelity point was the difference between meeting a budget or not
    (bench/results/allocation.md)."""
    rates = [0.0]
    k = 1
    while True:
        r = round(k * step, 6)
        if r > FINE_FROM + 1e-9 and rates[-1] >= FINE_FROM - 1e-9:
            r = round(rates[-1] + step / 2, 6)
        if r > max_rate + 1e-9:
            break
        rates.append(r)
        k += 1
    if max_rate > 0 and rates[-1] < max_rate - 1e-9:
        rates.append(round(max_rate, 6))
    return rates


def fixed_rates(rates) -> list[float]:
    """``--rate`` values as the candidate list: the unpruned model first, then each rate once, ascending."""
    return [0.0] + sorted({round(float(r), 6) for r in rates if float(r) > 0})


def candidate_name(index: int, rate: float) -> str:
    r = f"{rate:.2f}" if abs(rate * 100 - round(rate * 100)) < 1e-6 else f"{rate:.4f}"
    return f"cand-{index:02d}-rate{r}"


from edgeprune.pipeline.verdict import AGREEMENT_METRICS, clears, lower_bound  # noqa: E402


class HostPhase:
    """Mixin of :class:`edgeprune.pipeline.run._Run`: host checks and the candidate loop."""

    # ---------------------------------------------------------------- checks
    def fidelity_ok(self, fr: dict) -> bool:
        ok = True
        if self.min_fidelity is not None:
            ok = ok and clears(fr, self.min_fidelity, self.c.confidence)
        if self.max_drop is not None:
            ok = ok and fr["accuracy_drop"] is not None and fr["accuracy_drop"] <= self.max_drop + 1e-9
        return ok

    def host_flash(self, size: int) -> int:
        if self.profile.kind == "mcu":
            return size + int(self.profile.mcu.runtime_flash_bytes)
        return size

    def host_checks(self, rec: dict) -> dict:
        fr = rec["fidelity"]
        flash = rec["flash_bytes"]
        fb = self.budgets["flash_bytes"]["value"]
        if rec.get("skipped") and rec.get("skip_what", "flash") != "flash":  # predicted over RAM / latency
            what = rec["skip_what"]
            return {"fidelity": {"ok": None, "value": None, "skipped": True},
                    "flash": {"ok": fb is None or flash <= fb, "value": flash, "limit": fb, "predicted": True},
                    what: {"ok": False, "value": rec["skip_value"], "limit": rec["skip_limit"], "predicted": True}}
        if rec.get("skipped"):  # never converted: fidelity unknown, flash predicted over the budget
            return {"fidelity": {"ok": None, "value": None, "skipped": True},
                    "flash": {"ok": False, "value": flash, "limit": fb, "predicted": True}}
        fid = {"ok": self.fidelity_ok(fr), "value": fr["score"], "accuracy_drop": fr.get("accuracy_drop"),
               "min": self.min_fidelity, "max_accuracy_drop": self.max_drop}
        if self.c.confidence is not None and fr.get("metric") in AGREEMENT_METRICS and fr["score"] is not None:
            fid["low"] = round(lower_bound(fr["score"], fr["n_samples"], self.c.confidence), 6)
            fid["confidence"] = self.c.confidence
        return {
            "fidelity": fid,
            "flash": {"ok": fb is None or flash <= fb, "value": flash, "limit": fb},
        }

    # ---------------------------------------------------------------- host phase
    def host_phase(self) -> None:
        from edgeprune.pipeline.plan import Plan
        from edgeprune.pipeline.prune import PruneConfig, Pruner

        c, d = self.c, self.run_dir
        lat = getattr(getattr(self, "objective", None), "latency", None)
        if lat is not None and lat.kind == "fit":  # the board's latency model, cached for the next runs
            from edgeprune.pipeline.latency_model import save

            save(lat, d)
        self.rates = fixed_rates(c.rates) if c.rates else rate_schedule(float(c.step), float(c.max_rate))
        self.candidates: list[dict] = []
        self.reused = 0
        self.predictor = self.make_predictor()
        if self.resumed:
            for i, r in enumerate(self.rates):
                path = d / f"{candidate_name(i, r)}.json"
                if not path.is_file():
                    break
                try:
                    rec = json.loads(path.read_text())
                except (OSError, ValueError):
                    break
                if rec.get("format") != CANDIDATE_FORMAT or abs(rec.get("rate", -1) - r) > 1e-9:
                    break
                if not all((d / f).is_file() for f in (rec.get("files") or {}).values()):
                    break
                if rec.get("skipped") and rec.get("skip_budget") != self.predictor.key():
                    break  # skipped under another flash budget: build and convert it now
                if rec.get("skipped") and rec.get("skip_what", "flash") != "flash" and \
                        rec.get("skip_resource_budget") != self.resource_budget_key():
                    break  # skipped under another RAM / latency budget
                if i == 0 and rec.get("arena_calibration"):
                    self.ram_calibrate(rec["arena_calibration"])
                rec["reused"] = True
                if i == 0 and rec.get("prediction"):
                    self.predictor.calibrate(self._prediction(rec["prediction"]), rec["size_bytes"])
                if not rec.get("skipped") and (rec.get("vela") or self.profile.kind == "ethos-u"):
                    self.vela_reused(rec, path)  # flash is Vela's figure only on an Ethos-U profile
                rec["checks"] = self.host_checks(rec)
                self.candidates.append(rec)
                self.emit("candidate", record=rec, total=len(self.rates), reused=True)
            self.reused = len(self.candidates)
        # --rate: the schedule's widths are the search's (they depend on --max-rate), so a fixed
        # rate gives the candidate the search gives at that rate
        pconf = PruneConfig(rate=float(c.max_rate) if c.rates else max(self.rates), criterion=self.criterion, step=float(c.step), round_to=self.round_to,
                            input_range=tuple(float(v) for v in c.input_range), seed=c.seed,
                            calibration=self.stage_calibration, compensate=self.compensate,
                            allocation=self.allocation_obj or self.allocation)
        if self.candidates:
            last = self.candidates[-1]
            pruner = Pruner(self.model, pconf, plan=Plan.load(d / last["files"]["plan"]))
        else:
            pruner = Pruner(self.model, pconf)
        self.prunable = bool(pruner.groups)
        if not self.prunable:
            self.notes.append(f"{pruner.graph.nothing_prunable_note()}: only the unpruned candidate is evaluated")
        self.failed_candidates: list[dict] = []
        self.plans_cached = 0
        self.prepare_recovery()
        self.stop = None
        self.lookahead = None  # --jobs > 1: candidates converted in worker processes (convert_pool)
        for i in range(len(self.candidates), len(self.rates)):
            if self.candidates and not self.candidates[-1].get("skipped") \
                    and not self.candidates[-1]["checks"]["fidelity"]["ok"] and not c.rates:
                break  # (--rate judges every rate it was given)
            if i > 0 and not self.prunable:
                break
            self.walk_s = 0.0
            if c.rates and i > 0:
                tw = time.perf_counter()
                pruner = self.advance_fixed(pruner, pconf, self.rates[i])
                self.walk_s = time.perf_counter() - tw  # counted in the candidate's prune_s
            self.lookahead = self.lookahead or self.start_pool(pruner)
            if self.lookahead is not None:
                self.lookahead.fill(i)
            rec = self.try_candidate(pruner, i, self.rates[i])
            if rec is None:  # failed (recorded with its reason): the search goes on
                continue
            self.candidates.append(rec)
            self.emit("candidate", record=rec, total=len(self.rates), reused=False)
        if self.lookahead is not None:
            self.lookahead.close()  # what a worker converted past the stop is discarded
        if c.rates:
            self.notes.append(f"--rate: only the rates given were built and judged ({len(self.rates) - 1}); "
                              f"{self.plans_cached} plan(s) replayed from the work cache (pipeline/work_cache.py)")
        last = self.candidates[-1]
        if c.rates:
            self.stop = {"reason": "rates", "rate": last["rate"]}
        elif not last.get("skipped") and not last["checks"]["fidelity"]["ok"]:
            self.stop = {"reason": "fidelity", "rate": last["rate"]}
        elif not self.prunable:
            self.stop = {"reason": "nothing to prune", "rate": 0.0}
        else:
            self.stop = {"reason": "max_rate", "rate": last["rate"]}

    def plan_key(self, rate: float) -> str:
        from edgeprune.pipeline.work_cache import plan_key

        return plan_key(self.fingerprint(), float(self.c.max_rate), rate)

    def advance_fixed(self, pruner, pconf, rate: float):
        """--rate: the pruner at ``rate``: the plan a run with the same content reached at that
        rate (pipeline/work_cache.py), replayed; else the search's schedule walked up to just
        below ``rate`` without building a candidate on the way (make_candidate does the last step)."""
        from edgeprune.pipeline.plan import Plan
        from edgeprune.pipeline.prune import Pruner
        from edgeprune.pipeline.work_cache import load_plan

        plan = load_plan(self.plan_key(rate)) if getattr(self, "recover", None) is None else None
        if isinstance(plan, Plan) and abs(plan.rate - rate) < 1e-9:
            self.plans_cached += 1
            return Pruner(self.model, pconf, plan=plan)
        for r in rate_schedule(float(self.c.step), rate):
            if pruner.rate + 1e-9 < r < rate - 1e-9:
                pruner.step_to(r)
        return pruner

    def vela_reused(self, rec: dict, path) -> None:
        """A reused candidate: compiled with Vela (again) when the profile is an Ethos-U one whose
        Vela configuration differs from the one it was compiled with; its flash figure follows the
        profile kind of THIS run."""
        from edgeprune.pipeline import ethos_u_stage

        if self.profile.kind != "ethos-u":
            rec.pop("vela", None)
            for k in ethos_u_stage.vela_files(rec["name"]):
                rec["files"].pop(k, None)
            rec["flash_bytes"] = self.host_flash(rec["size_bytes"])
        elif ethos_u_stage.needs_compile(self, rec):
            ethos_u_stage.compile_candidate(self, rec)
        else:
            return
        write_json_atomic(path, {k: v for k, v in rec.items() if k != "reused"})

    def try_candidate(self, pruner, i: int, rate: float) -> dict | None:
        """:meth:`make_candidate`, except that a PRUNED candidate that cannot be built,
        converted or loaded by the runtime is recorded as failed (``failed_candidates`` in
        the report, ``<name>.failed.json`` in the run dir) and None returned, so one bad
        candidate (e.g. a one-channel depthwise conv that XNNPACK refuses) does not lose the
        run. The unpruned candidate failing is the model's problem and is raised."""
        self.stage = "prune"
        try:
            return self.make_candidate(pruner, i, rate)
        except Exception as exc:  # noqa: BLE001 - recorded with its reason, never silent
            if i == 0:
                raise
            reason = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            name = candidate_name(i, rate)
            failed = {"index": i, "rate": rate, "name": name, "stage": self.stage,
                      "reason": str(reason).strip()[:500], "created_at": _now()}
            write_json_atomic(self.run_dir / f"{name}.failed.json", failed)
            self.failed_candidates.append(failed)
            self.notes.append(f"candidate {name} failed at the {self.stage} stage: {failed['reason'].splitlines()[0][:200]}; "
                              "recorded as failed, the search went on")
            self.emit("status", text=f"rate {rate:.2f}: failed at {self.stage} ({failed['reason'].splitlines()[0][:120]})")
            return None

    def convert_config(self):
        from edgeprune.pipeline import convert as conv

        c = self.c
        return conv.ConvertConfig(quantize=c.quantize, calibration=self.calibration,
                                  input_range=tuple(float(v) for v in c.input_range), num_calibration=SYNTHETIC_SAMPLES)

    def start_pool(self, pruner):
        """A :class:`~edgeprune.pipeline.convert_pool.Lookahead` when more than one job and more than
        one candidate to make; else None (serial). Without ``--jobs``: one job per core, once a
        candidate's conversion took :data:`~edgeprune.pipeline.convert_pool.AUTO_MIN_CONVERT_S` or
        more (a worker costs a TensorFlow import: small models convert faster serially)."""
        from edgeprune.pipeline.convert_pool import Lookahead, default_jobs, pool_size

        self.jobs = int(self.c.jobs) if getattr(self.c, "jobs", None) is not None else default_jobs()
        if self.c.rates:
            return None  # --rate: each candidate is its own jump along the schedule (advance_fixed)
        times = [r["timings"]["convert_s"] for r in self.candidates if "convert_s" in r.get("timings", {})]
        n = pool_size(getattr(self.c, "jobs", None), self.jobs, len(self.rates) - len(self.candidates),
                      self.prunable, times)
        if getattr(self, "trainset", None) is not None:
            n = 1  # recovery training changes the weights before conversion: serial (a worker would convert untrained)
        return Lookahead(self, pruner, n, self.convert_config()) if n > 1 else None

    def make_candidate(self, pruner, i: int, rate: float) -> dict:
        from edgeprune.pipeline import convert as conv
        from edgeprune.pipeline import fidelity as fid
        from edgeprune.pipeline.predict import predict

        c, d = self.c, self.run_dir
        name = candidate_name(i, rate)
        self.emit("candidate_start", index=i, rate=rate, total=len(self.rates))
        t0 = time.perf_counter()
        ahead = self.lookahead.take(i) if getattr(self, "lookahead", None) is not None else None
        if ahead is not None:  # pruned ahead and converting in a worker (convert_pool)
            km = ahead.km
        else:
            if rate > 0 and pruner.rate < rate - 1e-9:  # (a replayed plan is already there)
                pruner.step_to(rate)
            with conv.captured_output():
                km = pruner.build()
        pred = predict(km, c.quantize)
        reason = self.predictor.skip_reason(pred) if c.predict else None
        skip = None
        if reason is None and c.predict and i > 0:
            skip = self.resource_skip(km)
            reason = skip["reason"] if skip else None
        if reason is not None:
            if ahead is not None:
                ahead.discard()  # as serially: no conversion, no .keras
            return self.skipped_candidate(pruner if ahead is None else ahead, i, rate, name, km, pred, reason, t0,
                                          skip)
        t1 = time.perf_counter()
        trained, untrained_fr, train_s = None, None, 0.0
        if getattr(self, "trainset", None) is not None and i > 0 and self.recovering:
            trained = self.train_candidate(km, i, rate)  # past the untrained stop: every candidate is trained
            train_s = trained.seconds
        t1b = time.perf_counter()
        self.stage = "convert"
        cc = self.convert_config()
        res = ahead.result() if ahead is not None and ahead.pending is not None else conv.convert(km, cc)
        t2 = time.perf_counter()
        self.stage = "load and fidelity (LiteRT on the host)"
        fr = fid.evaluate(res.tflite, self.reference, self.data, self.fid_config)
        t3 = time.perf_counter()
        convert_s, fidelity_s = t2 - t1b, t3 - t2
        if getattr(self, "trainset", None) is not None and i > 0 and trained is None and not self.fidelity_ok(fr.to_dict()):
            # the first candidate that fails untrained: trained, converted and judged again; from here
            # on every candidate is trained before it is converted (bench/results/recover.md)
            self.recovering = True
            untrained_fr = fr.to_dict()
            trained = self.train_candidate(km, i, rate)
            train_s = trained.seconds
            self.stage = "convert"
            ta = time.perf_counter()
            res = conv.convert(km, cc)
            tb = time.perf_counter()
            self.stage = "load and fidelity (LiteRT on the host)"
            fr = fid.evaluate(res.tflite, self.reference, self.data, self.fid_config)
            t3 = time.perf_counter()
            convert_s += tb - ta
            fidelity_s += t3 - tb
        self.stage = "save"
        files = {"keras": f"{name}.keras", "tflite": f"{name}.tflite", "plan": f"{name}.plan.json"}
        if ahead is None:  # (the lookahead wrote it for its worker)
            with conv.captured_output():
                _save_keras_atomic(km, d / files["keras"])
        res.save(d / files["tflite"])
        plan = (pruner if ahead is None else ahead).plan()
        recovery = None
        if trained is not None:
            from edgeprune.pipeline.atomic import write_bytes_atomic

            files["trained"] = f"{name}.trained.bin"
            write_bytes_atomic(d / files["trained"], trained.weights)
            plan.trained = {"file": files["trained"], "sha256": trained.sha256, "epochs": trained.epochs,
                            "samples": trained.samples, "loss": trained.loss_per_epoch[-1],
                            "method": "distillation from the original model (pipeline/recover.py)",
                            **{k: v for k, v in self.recover.to_dict().items() if k != "epochs"}}
            recovery = dict(trained.to_dict(), file=files["trained"], untrained_fidelity=untrained_fr,
                            targets=self.trainset.kind, **{k: v for k, v in self.recover.to_dict().items()
                                                           if k not in ("epochs",)})
        plan.save(d / files["plan"])
        if not plan.trained:
            from edgeprune.pipeline.work_cache import store_plan

            store_plan(self.plan_key(rate), d / files["plan"])
        t4 = time.perf_counter()
        size = res.size_bytes
        rec = {
            "format": CANDIDATE_FORMAT,
            "index": i,
            "rate": rate,
            "name": name,
            "files": files,
            "params": int(km.count_params()),
            "size_bytes": size,
            "flash_bytes": self.host_flash(size),
            "sha256": hashlib.sha256(res.tflite).hexdigest(),
            "conversion": {k: v for k, v in res.to_dict().items() if k not in ("inputs", "outputs")},
            "fidelity": fr.to_dict(),
            "widths": plan.widths,
            "prediction": self.predicted(pred, size),
            "made_by": dict(self.stages_label),
            **({"recovery": recovery} if getattr(self, "trainset", None) is not None else {}),
            "timings": {"prune_s": round((t1 - t0 if ahead is None else ahead.prune_s) + getattr(self, "walk_s", 0.0), 4),
                        "convert_s": round(convert_s if ahead is None else res.seconds, 4),
                        "fidelity_s": round(fidelity_s, 4), "save_s": round(t4 - t3, 4),
                        **({"train_s": round(train_s, 4)} if trained is not None else {})},
            "created_at": _now(),
            "pid": os.getpid(),
            "device": None,
        }
        if self.profile.kind == "ethos-u":  # every candidate through Vela: its flash figure, NPU share
            from edgeprune.pipeline import ethos_u_stage

            self.stage = "compile with Vela"
            t5 = time.perf_counter()
            ethos_u_stage.compile_candidate(self, rec)
            rec["timings"]["vela_s"] = round(time.perf_counter() - t5, 4)
        if i == 0:
            cal = self.ram_calibration(km, d / files["tflite"])
            if cal is not None:
                rec["arena_calibration"] = cal
        rec["checks"] = self.host_checks(rec)
        write_json_atomic(d / f"{name}.json", rec)  # last: marks the candidate done
        rec["reused"] = False
        return rec

    # ---------------------------------------------------------------- recovery training
    def prepare_recovery(self) -> None:
        """--train-data: the training samples minus the evaluation samples, and the original
        model's outputs on them (pipeline/recover.py). Training starts at the first candidate
        that fails the fidelity check untrained (``recovering``; restored from reused candidates)."""
        self.trainset = None
        self.recovering = any(r.get("recovery") for r in self.candidates)
        if getattr(self, "recover", None) is None:
            return
        from edgeprune.pipeline.recover import prepare

        self.trainset = prepare(self.train_raw, self.data.x, self.model, self.run_dir, self.emit)
        info = self.trainset.info
        if info["overlap_removed"]:
            self.notes.append(f"--train-data: {info['overlap_removed']:,} of the {info['n_given']:,} training samples "
                              "are also evaluation samples (equal float32 bytes): removed from the training set, "
                              f"{info['n_samples']:,} train")

    def train_candidate(self, km, i: int, rate: float):
        from edgeprune.pipeline.recover import train

        self.stage = "recovery training"
        t0 = time.perf_counter()
        total = self.recover.epochs

        def progress(epoch, epochs, step, steps, loss):
            done = (epoch * steps + step) / (epochs * steps)
            el = time.perf_counter() - t0
            self.emit("train", index=i, rate=rate, epoch=epoch + 1, epochs=epochs, step=step, steps=steps,
                      loss=loss, fraction=done, elapsed_s=el, left_s=el * (1 - done) / max(done, 1e-9))

        self.emit("train_start", index=i, rate=rate, epochs=total, samples=self.trainset.n)
        res = train(km, self.trainset, self.recover, i, progress)
        self.emit("train_done", index=i, rate=rate, seconds=res.seconds, loss=res.loss_per_epoch[-1])
        return res

    # ---------------------------------------------------------------- prediction
    def make_predictor(self):
        from edgeprune.pipeline.predict import FlashPredictor

        runtime = int(self.profile.mcu.runtime_flash_bytes) if self.profile.kind == "mcu" else 0
        if self.profile.kind == "ethos-u":  # flash is Vela's figure (compressed weights): known only once compiled
            return FlashPredictor(None, 0)
        return FlashPredictor(self.budgets["flash_bytes"]["value"], runtime)

    @staticmethod
    def _prediction(d: dict):
        from edgeprune.pipeline.predict import Prediction

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
        return [self.budgets["ram_bytes"]["value"], self.budgets["latency_ms"]["value"]]

    def ram_calibration(self, km, tflite_path) -> dict | None:
        """On a microcontroller with a RAM budget: the unpruned model's TFLite-Micro arena measured
        on the host once, against its predicted peak activation memory (the RAM predictor's
        overhead and margin). None elsewhere."""
        if not self.c.predict or self.profile.kind != "mcu" or self.budgets["ram_bytes"]["value"] is None \
                or self.c.quantize != "int8":
            return None
        from edgeprune.devices.tflm import measure_arena
        from edgeprune.pipeline.resources import resources_of

        peak = resources_of(km, self.c.quantize).peak_activation_bytes
        if 1.5 * peak + int(self.profile.mcu.runtime_ram_bytes) <= self.budgets["ram_bytes"]["value"]:
            return None  # far within the budget: no candidate can be skipped for RAM, measure nothing more
        try:
            arena = measure_arena(tflite_path).arena_bytes
        except Exception as exc:  # noqa: BLE001 - the prediction is an extra: no skips without it
            self.notes.append(f"RAM prediction off: the unpruned arena could not be measured ({exc})")
            return None
        cal = {"peak_activation_bytes": peak, "arena_bytes": arena}
        self.ram_calibrate(cal)
        return cal

    def ram_calibrate(self, cal: dict) -> None:
        from edgeprune.pipeline.resources import RamPredictor

        self.ram_predictor = RamPredictor()
        self.ram_predictor.calibrate(cal["peak_activation_bytes"], cal["arena_bytes"])

    def resource_skip(self, km) -> dict | None:
        """A candidate predicted to miss the RAM or the latency budget by more than the model's
        error is not converted (the device still measures every candidate that can be the answer)."""
        from edgeprune.pipeline.resources import resources_of

        rb, lb = self.budgets["ram_bytes"]["value"], self.budgets["latency_ms"]["value"]
        rp = getattr(self, "ram_predictor", None)
        lat = getattr(getattr(self, "objective", None), "latency", None)
        if (rb is None or rp is None) and (lb is None or lat is None):
            return None
        res = resources_of(km, self.c.quantize)
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

    def skipped_candidate(self, pruner, i: int, rate: float, name: str, km, pred, reason: str, t0: float,
                          skip: dict | None = None) -> dict:
        """A candidate predicted over the flash budget: its plan is kept (so pruning can go on and
        --resume can continue from it) but it is neither converted nor evaluated."""
        d = self.run_dir
        files = {"plan": f"{name}.plan.json"}
        plan = pruner.plan()
        plan.save(d / files["plan"])
        flash = self.predictor.size(pred) + self.predictor.runtime_bytes
        rec = {
            "format": CANDIDATE_FORMAT, "index": i, "rate": rate, "name": name, "files": files,
            "params": int(km.count_params()), "size_bytes": pred.size_bytes, "flash_bytes": flash, "sha256": None,
            "skipped": reason, "skip_budget": self.predictor.key(),
            **({"skip_what": skip["what"], "skip_value": skip["value"], "skip_limit": skip["limit"],
                "skip_resource_budget": self.resource_budget_key()} if skip else {}),
            "prediction": pred.to_dict(),
            "fidelity": {"score": None, "score_name": None, "accuracy": None, "accuracy_drop": None, "metric": None,
                         "skipped": True},
            "widths": plan.widths,
            "timings": {"prune_s": round(time.perf_counter() - t0, 4), "convert_s": 0.0, "fidelity_s": 0.0,
                        "save_s": 0.0},
            "created_at": _now(), "pid": os.getpid(), "device": None,
        }
        rec["checks"] = self.host_checks(rec)
        write_json_atomic(d / f"{name}.json", rec)
        rec["reused"] = False
        return rec

