"""The host phase of ``edgeprune run``: candidates are pruned progressively, converted and
checked on the host (fidelity, flash) before any device run; finished candidates are reused on
``--resume``. :class:`HostPhase` takes the run's context and returns a :class:`HostResult`."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from edgeprune.pipeline.search.candidate import ABSENT, Candidate, candidate_name
from edgeprune.pipeline.search.host_checks import HostChecks
from edgeprune.pipeline.search.run_config import SYNTHETIC_SAMPLES, _now
from edgeprune.pipeline.search.run_dir import _save_keras_atomic, write_json_atomic


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


def plan_key(ctx, rate: float) -> str:
    """The work cache's key of the plan this run reaches at ``rate`` (pipeline/search/work_cache.py)."""
    from edgeprune.pipeline.search.run_dir import fingerprint
    from edgeprune.pipeline.search.work_cache import plan_key as key

    return key(fingerprint(ctx), float(ctx.config.search.max_rate), rate)


def advance_fixed(ctx, pruner, pconf, rate: float):
    """--rate: (the pruner at ``rate``, whether its plan was replayed). The plan a run with the same
    content reached at that rate (pipeline/search/work_cache.py) is replayed; else the search's schedule is
    walked up to just below ``rate`` without building a candidate (make_candidate does the last step)."""
    from edgeprune.pipeline.prune.pruner import Pruner
    from edgeprune.pipeline.search.work_cache import load_plan

    plan = load_plan(plan_key(ctx, rate)) if ctx.config.recover.train_data is None else None
    if plan is not None and abs(plan.rate - rate) < 1e-9:
        return Pruner(ctx.model, pconf, plan=plan), True
    for r in rate_schedule(float(ctx.config.search.step), rate):
        if pruner.rate + 1e-9 < r < rate - 1e-9:
            pruner.step_to(r)
    return pruner, False


@dataclass
class HostResult:
    """What the host phase hands on: the candidates in rate order (reused and new), the failed
    ones, why pruning stopped, and what the report says about the phase."""
    candidates: list  # of Candidate
    failed_candidates: list
    stop: dict
    reused: int
    rates: list
    checks: HostChecks
    trainset: Any = None  # pipeline.prune.recover.TrainSet with --train-data
    jobs: int = 1
    pool: bool = False  # whether conversion workers were used
    screen: Any = None  # pipeline.search.host_screen.Screen
    # a screened candidate -> its converted record (judged on its .tflite); the device phase calls
    # it when the search reaches one (None: no screening)
    convert_screened: Optional[Callable[[Any], Any]] = None


@dataclass
class _Made:
    """A candidate's model, converted: what ``make_candidate`` has before it writes the record."""
    km: Any
    res: Any  # pipeline.convert.converter result
    fr: Any  # pipeline.convert.fidelity result
    trained: Any = None
    untrained_fr: Optional[dict] = None
    timings: dict = field(default_factory=dict)


def reuse_finished(ctx, checks: HostChecks, rates: list) -> list:
    """``--resume``: the finished candidates of the run directory, in rate order, up to the
    first one missing, unreadable or made under another budget."""
    d, candidates = ctx.run_dir, []
    for i, r in enumerate(rates):
        path = d / f"{candidate_name(i, r)}.json"
        if not path.is_file():
            break
        try:
            rec = Candidate.from_json(json.loads(path.read_text()))
        except (OSError, ValueError):
            break
        if abs(rec.rate - r) > 1e-9:
            break
        if not all((d / f).is_file() for f in rec.files.values()):
            break
        if rec.skipped and rec.skip_budget != checks.predictor.key():
            break  # skipped under another flash budget: build and convert it now
        if rec.skipped and rec.skip_kind != "flash" and rec.skip_resource_budget != checks.resource_budget_key():
            break  # skipped under another RAM / latency budget
        if i == 0 and rec.arena_calibration:
            checks.ram_calibrate(rec.arena_calibration)
        rec.reused = True
        if i == 0 and rec.prediction:
            checks.predictor.calibrate(checks.prediction_of(rec.prediction), rec.size_bytes)
        if not rec.skipped and not rec.screened and (rec.vela or ctx.profile.kind == "ethos-u"):
            _vela_reused(ctx, checks, candidates, rec, path)  # flash is Vela's figure only on an Ethos-U profile
        rec.checks = checks.checks(rec)
        candidates.append(rec)
        ctx.emit("candidate", record=rec.to_json(), total=len(rates), reused=True)
    return candidates


def _vela_reused(ctx, checks: HostChecks, candidates: list, rec: Candidate, path) -> None:
    """A reused candidate: compiled with Vela (again) when the profile is an Ethos-U one whose
    Vela configuration differs from the one it was compiled with; its flash figure follows the
    profile kind of THIS run."""
    from edgeprune.pipeline.convert import ethos_u_stage

    if ctx.profile.kind != "ethos-u":
        rec.vela = None
        for k in ethos_u_stage.vela_files(rec.name):
            rec.files.pop(k, None)
        rec.flash_bytes = checks.host_flash(rec.size_bytes)
    elif ethos_u_stage.needs_compile(ctx, rec):
        ethos_u_stage.compile_candidate(ctx, candidates, rec)
    else:
        return
    write_json_atomic(path, rec.to_json())


class Recovery:
    """--train-data: the training samples minus the evaluation samples, and the original
    model's outputs on them (pipeline/prune/recover.py). Training starts at the first candidate
    that fails the fidelity check untrained (``recovering``; restored from reused candidates)."""

    def __init__(self, ctx, candidates: list):
        self.ctx = ctx
        self.trainset = None
        self.recovering = any(r.recovery for r in candidates)
        if ctx.recover is None:
            return
        from edgeprune.pipeline.prune.recover import prepare

        self.trainset = prepare(ctx.train_raw, ctx.data.x, ctx.model, ctx.run_dir, ctx.emit)
        info = self.trainset.info
        if info["overlap_removed"]:
            ctx.notes.append(f"--train-data: {info['overlap_removed']:,} of the {info['n_given']:,} training samples "
                             "are also evaluation samples (equal float32 bytes): removed from the training set, "
                             f"{info['n_samples']:,} train")

    def train(self, km, i: int, rate: float):
        from edgeprune.pipeline.prune.recover import train

        emit = self.ctx.emit
        t0 = time.perf_counter()
        total = self.ctx.recover.epochs

        def progress(epoch, epochs, step, steps, loss):
            done = (epoch * steps + step) / (epochs * steps)
            el = time.perf_counter() - t0
            emit("train", index=i, rate=rate, epoch=epoch + 1, epochs=epochs, step=step, steps=steps,
                 loss=loss, fraction=done, elapsed_s=el, left_s=el * (1 - done) / max(done, 1e-9))

        emit("train_start", index=i, rate=rate, epochs=total, samples=self.trainset.n)
        res = train(km, self.trainset, self.ctx.recover, i, progress)
        emit("train_done", index=i, rate=rate, seconds=res.seconds, loss=res.loss_per_epoch[-1])
        return res

    def record(self, run_dir, plan, files: dict, made) -> dict:
        """A trained candidate: its weights file, recorded in the plan; returns its ``recovery``."""
        from edgeprune.pipeline.atomic import write_bytes_atomic

        trained, recover = made.trained, self.ctx.recover
        files["trained"] = f"{files['tflite'][:-len('.tflite')]}.trained.bin"
        write_bytes_atomic(run_dir / files["trained"], trained.weights)
        plan.trained = {"file": files["trained"], "sha256": trained.sha256, "epochs": trained.epochs,
                        "samples": trained.samples, "loss": trained.loss_per_epoch[-1],
                        "method": "distillation from the original model (pipeline/prune/recover.py)",
                        **{k: v for k, v in recover.to_dict().items() if k != "epochs"}}
        return dict(trained.to_dict(), file=files["trained"], untrained_fidelity=made.untrained_fr,
                    targets=self.trainset.kind, **{k: v for k, v in recover.to_dict().items() if k not in ("epochs",)})


def skipped_candidate(host, pruner, i: int, rate: float, name: str, km, pred, reason: str | None, t0: float,
                      skip: dict | None = None, screen: dict | None = None) -> Candidate:
    """A candidate predicted over the flash budget (``reason``), or screened on its Keras model
    (``screen``): its plan is kept (so pruning can go on and --resume, or the device phase,
    can continue from it) but it is not converted."""
    d, checks = host.ctx.run_dir, host.checks
    files = {"plan": f"{name}.plan.json"}
    plan = pruner.plan()
    plan.save(d / files["plan"])
    if screen is not None:  # a plan the --rate path can replay, as a converted candidate's
        from edgeprune.pipeline.search.work_cache import store_plan

        store_plan(plan_key(host.ctx, rate), d / files["plan"])
    flash = checks.predictor.size(pred) + checks.predictor.runtime_bytes
    size = pred.size_bytes if screen is None else checks.predictor.size(pred)
    rec = Candidate(
        index=i, rate=rate, name=name, files=files, params=int(km.count_params()), size_bytes=size,
        flash_bytes=flash, sha256=None, skipped=reason, skip_budget=checks.predictor.key() if reason else None,
        prediction=pred.to_dict(), screen=screen, made_by=dict(host.ctx.engine.label) if screen else None,
        fidelity={"score": None, "score_name": None, "accuracy": None, "accuracy_drop": None, "metric": None,
                  **({"skipped": True} if screen is None else {"screened": True})},
        widths=plan.widths, allocation_log=pruner.step_log,
        timings={"prune_s": round(time.perf_counter() - t0 - (screen or {}).get("keras_s", 0.0), 4), "convert_s": 0.0,
                 "fidelity_s": 0.0, "save_s": 0.0, **({"keras_s": screen["keras_s"]} if screen else {})},
        created_at=_now(), pid=os.getpid(), device=None)
    if skip:
        rec.skip_what, rec.skip_value, rec.skip_limit = skip["what"], skip["value"], skip["limit"]
        rec.skip_resource_budget = checks.resource_budget_key()
    rec.checks = checks.checks(rec)
    write_json_atomic(d / f"{name}.json", rec.to_json())
    return rec


class HostPhase:
    """The candidate loop: reuse finished candidates (``--resume``), then prune, convert and check
    one candidate at a time until one fails the fidelity threshold or ``max_rate`` is reached."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.checks = HostChecks(ctx)
        if ctx.engine.objective is not None:  # auto's RAM target reads the RAM predictor once calibrated
            ctx.engine.objective.ram_source = self.checks
        search = ctx.config.search
        self.fixed = bool(search.rates)  # --rate: only these rates, no search
        self.rates = fixed_rates(search.rates) if self.fixed else rate_schedule(float(search.step), float(search.max_rate))
        self.plans_cached = 0  # --rate: plans replayed from the work cache
        self.walk_s = 0.0  # --rate: the schedule walked below the candidate's rate (counted in its prune_s)
        self.candidates: list[dict] = []
        self.failed_candidates: list[dict] = []
        self.prunable = True
        self.lookahead = None  # --jobs > 1: candidates converted in worker processes (convert_pool)
        self.pool_used = False
        self.jobs = 1
        self.recovery: Optional[Recovery] = None  # --train-data (pipeline/prune/recover.py), made by run()
        self.stage = "prune"  # what a failing candidate failed at
        from edgeprune.pipeline.search.host_screen import Screen

        # screening (pipeline/search/host_screen.py): not with --rate nor --train-data; --jobs N > 1 asks for
        # conversion workers converting every candidate ahead, so it converts every candidate (no screening)
        pooled = search.jobs is not None and int(search.jobs) > 1
        self.screen = Screen(ctx, self.checks, search.screen and not self.fixed and ctx.recover is None and not pooled)
        if search.screen and pooled and not self.fixed and ctx.recover is None:
            ctx.notes.append(f"--jobs {search.jobs}: every candidate is converted (in worker processes ahead of the search), "
                             "no screening on the Keras model (pipeline/search/host_screen.py)")
        self.pconf = None

    # ---------------------------------------------------------------- the phase
    def run(self) -> HostResult:
        from edgeprune.pipeline.prune.plan import Plan
        from edgeprune.pipeline.prune.pruner import PruneConfig, Pruner

        ctx, c, d, engine = self.ctx, self.ctx.config, self.ctx.run_dir, self.ctx.engine
        lat = engine.objective.latency
        if lat is not None and lat.kind == "fit":  # the board's latency model, cached for the next runs
            from edgeprune.pipeline.search.latency_model import save

            save(lat, d)
        if ctx.resumed:
            self.candidates = reuse_finished(ctx, self.checks, self.rates)
            self.screen.restore(self.candidates)
        # --rate: the schedule's widths are the search's (they depend on --max-rate), so a fixed
        # rate gives the candidate the search gives at that rate
        pconf = PruneConfig(rate=float(c.search.max_rate) if self.fixed else max(self.rates), criterion=engine.criterion, step=float(c.search.step), round_to=ctx.round_to,
                            input_range=tuple(float(v) for v in c.model.input_range), seed=c.prune.seed,
                            calibration=engine.calibration, compensate=engine.compensate,
                            allocation=engine.allocation_obj or engine.allocation)
        self.pconf = pconf
        self.recovery = Recovery(ctx, self.candidates)
        self.screen.rejudge(self)  # --resume: screened candidates that no longer clear (thresholds, --no-screen)
        reused = sum(1 for r in self.candidates if r.reused)
        if self.candidates:
            last = self.candidates[-1]
            pruner = Pruner(ctx.model, pconf, plan=Plan.load(d / last.files["plan"]))
        else:
            pruner = Pruner(ctx.model, pconf)
        self.prunable = bool(pruner.groups)
        if not self.prunable:
            ctx.notes.append(f"{pruner.graph.nothing_prunable_note()}: only the unpruned candidate is evaluated")
        self.candidate_loop(pruner, pconf)
        capped = getattr(pconf.allocation, "samples_capped", None)
        if capped:
            from edgeprune.pipeline.prune.allocation.greedy import ROUND_BUDGET_BYTES

            ctx.notes.append(f"global allocation: each greedy round used the first {capped[0]:,} of the {capped[1]:,} "
                             "calibration samples (every consumer's input on a round's samples is held within "
                             f"{ROUND_BUDGET_BYTES // 2**20} MB)")
        return HostResult(candidates=self.candidates, failed_candidates=self.failed_candidates, stop=self.stop_reason(),
                          reused=reused, rates=self.rates, checks=self.checks, trainset=self.recovery.trainset,
                          jobs=self.jobs, pool=self.pool_used, screen=self.screen,
                          convert_screened=functools.partial(self.screen.convert, self) if self.screen else None)

    def candidate_loop(self, pruner, pconf) -> None:
        for i in range(len(self.candidates), len(self.rates)):
            if self.candidates and self.candidates[-1].checks["fidelity"]["ok"] is False and not self.fixed:
                break  # (--rate judges every rate it was given)
            if i > 0 and not self.prunable:
                break
            self.walk_s = 0.0
            if self.fixed and i > 0:
                tw = time.perf_counter()
                pruner, replayed = advance_fixed(self.ctx, pruner, pconf, self.rates[i])
                self.plans_cached += replayed
                self.walk_s = time.perf_counter() - tw
            self.lookahead = self.lookahead or self.start_pool(pruner)
            if self.lookahead is not None:
                self.pool_used = True
                self.lookahead.fill(i)
            rec = self.try_candidate(pruner, i, self.rates[i])
            if rec is None:  # failed (recorded with its reason): the search goes on
                continue
            self.candidates.append(rec)
            self.ctx.emit("candidate", record=rec.to_json(), total=len(self.rates), reused=False)
        if self.lookahead is not None:
            self.lookahead.close()  # what a worker converted past the stop is discarded
        if self.fixed:
            self.ctx.notes.append(f"--rate: only the rates given were built and judged ({len(self.rates) - 1}); "
                                  f"{self.plans_cached} plan(s) replayed from the work cache (pipeline/search/work_cache.py)")

    def stop_reason(self) -> dict:
        last = self.candidates[-1]
        if self.fixed:
            return {"reason": "rates", "rate": last.rate}
        if last.checks["fidelity"]["ok"] is False:
            return {"reason": "fidelity", "rate": last.rate}
        if not self.prunable:
            return {"reason": "nothing to prune", "rate": 0.0}
        return {"reason": "max_rate", "rate": last.rate}

    def try_candidate(self, pruner, i: int, rate: float) -> Candidate | None:
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
            write_json_atomic(self.ctx.run_dir / f"{name}.failed.json", failed)
            self.failed_candidates.append(failed)
            self.ctx.notes.append(f"candidate {name} failed at the {self.stage} stage: "
                                  f"{failed['reason'].splitlines()[0][:200]}; recorded as failed, the search went on")
            self.ctx.emit("status", text=f"rate {rate:.2f}: failed at {self.stage} ({failed['reason'].splitlines()[0][:120]})")
            return None

    def convert_config(self):
        from edgeprune.pipeline.convert import converter as conv

        c = self.ctx.config
        return conv.ConvertConfig(quantize=c.prune.quantize, calibration=self.ctx.calibration,
                                  input_range=tuple(float(v) for v in c.model.input_range), num_calibration=SYNTHETIC_SAMPLES)

    def start_pool(self, pruner):
        """A :class:`~edgeprune.pipeline.convert.convert_pool.Lookahead` when more than one job and more than
        one candidate to make; else None (serial). Without ``--jobs``: one job per core, once a
        candidate's conversion took :data:`~edgeprune.pipeline.convert.convert_pool.AUTO_MIN_CONVERT_S` or
        more (a worker costs a TensorFlow import: small models convert faster serially)."""
        from edgeprune.pipeline.convert.convert_pool import Lookahead, default_jobs, pool_size

        jobs = self.ctx.config.search.jobs
        self.jobs = int(jobs) if jobs is not None else default_jobs()
        if self.fixed or self.screen.enabled:
            return None  # --rate: each candidate is its own jump along the schedule (advance_fixed); screening: few conversions
        times = [r.timings["convert_s"] for r in self.candidates if "convert_s" in r.timings]
        n = pool_size(jobs, self.jobs, len(self.rates) - len(self.candidates), self.prunable, times)
        if self.recovery.trainset is not None:
            n = 1  # recovery training changes the weights before conversion: serial (a worker would convert untrained)
        return Lookahead(self, pruner, n, self.convert_config()) if n > 1 else None

    # ---------------------------------------------------------------- one candidate
    def make_candidate(self, pruner, i: int, rate: float) -> Candidate:
        from edgeprune.pipeline.convert import converter as conv
        from edgeprune.pipeline.search.predict import predict

        c = self.ctx.config
        name = candidate_name(i, rate)
        self.ctx.emit("candidate_start", index=i, rate=rate, total=len(self.rates))
        t0 = time.perf_counter()
        ahead = self.lookahead.take(i) if self.lookahead is not None else None
        if ahead is not None:  # pruned ahead and converting in a worker (convert_pool)
            km = ahead.km
        else:
            if rate > 0 and pruner.rate < rate - 1e-9:  # (a replayed plan is already there)
                pruner.step_to(rate)  # (the allocation's label is settled at its first step: table rounds)
                self.ctx.engine.label["allocation"] = getattr(pruner.config.allocation, "label", "") or self.ctx.engine.label["allocation"]
            with conv.captured_output():
                # the model the step ended with, unless it may be trained or outlive the next step (lookahead, --train-data)
                reuse = self.lookahead is None and self.recovery.trainset is None
                km = pruner.current_model() if reuse else pruner.build()
        pred = predict(km, c.prune.quantize)
        reason = self.checks.predictor.skip_reason(pred) if c.search.predict else None
        skip = None
        if reason is None and c.search.predict and i > 0:
            skip = self.checks.resource_skip(km)
            reason = skip["reason"] if skip else None
        if reason is not None:
            if ahead is not None:
                ahead.discard()  # as serially: no conversion, no .keras
            return skipped_candidate(self, pruner if ahead is None else ahead, i, rate, name, km, pred, reason, t0,
                                          skip)
        screen = self.screen.judge(km, i)  # on the pruned Keras model first (pipeline/search/host_screen.py)
        if screen is not None and screen["screened"]:
            return skipped_candidate(self, pruner, i, rate, name, km, pred, None, t0, screen=screen)
        made = self.convert_and_judge(km, ahead, i, rate)
        prune_end = made.timings.pop("_prune_end")
        made.timings["prune_s"] = (prune_end - t0 if ahead is None else ahead.prune_s) + self.walk_s
        if screen is not None:  # (the Keras judgement ran between pruning and converting)
            made.timings["prune_s"] -= screen["keras_s"]
        rec = self.save_candidate(pruner, ahead, made, i, rate, name, pred, screen)
        if screen is not None:
            self.screen.observe(screen["keras"], rec.fidelity)
        return rec

    def convert_and_judge(self, km, ahead, i: int, rate: float) -> _Made:
        """Convert (or take the worker's conversion) and judge fidelity; with --train-data, train
        first (once recovering) or train and judge again (the first candidate failing untrained)."""
        from edgeprune.pipeline.convert import converter as conv
        from edgeprune.pipeline.convert import fidelity as fid

        ctx = self.ctx
        t1 = time.perf_counter()
        trained, untrained_fr, train_s = None, None, 0.0
        recovery = self.recovery
        if recovery.trainset is not None and i > 0 and recovery.recovering:
            trained = self.train_candidate(km, i, rate)  # past the untrained stop: every candidate is trained
            train_s = trained.seconds
        t1b = time.perf_counter()
        self.stage = "convert"
        cc = self.convert_config()
        res = ahead.result() if ahead is not None and ahead.pending is not None else conv.convert(km, cc)
        t2 = time.perf_counter()
        self.stage = "load and fidelity (LiteRT on the host)"
        fr = fid.evaluate(res.tflite, ctx.reference, ctx.data, ctx.fid_config)
        t3 = time.perf_counter()
        convert_s, fidelity_s = t2 - t1b, t3 - t2
        if recovery.trainset is not None and i > 0 and trained is None and not self.checks.fidelity_ok(fr.to_dict()):
            # the first candidate that fails untrained: trained, converted and judged again; from here
            # on every candidate is trained before it is converted (bench/results/recover.md)
            recovery.recovering = True
            untrained_fr = fr.to_dict()
            trained = self.train_candidate(km, i, rate)
            train_s = trained.seconds
            self.stage = "convert"
            ta = time.perf_counter()
            res = conv.convert(km, cc)
            tb = time.perf_counter()
            self.stage = "load and fidelity (LiteRT on the host)"
            fr = fid.evaluate(res.tflite, ctx.reference, ctx.data, ctx.fid_config)
            t3 = time.perf_counter()
            convert_s += tb - ta
            fidelity_s += t3 - tb
        return _Made(km=km, res=res, fr=fr, trained=trained, untrained_fr=untrained_fr,
                     timings={"_prune_end": t1, "convert_s": convert_s, "fidelity_s": fidelity_s, "train_s": train_s,
                              "_judged": t3})

    def save_candidate(self, pruner, ahead, made: _Made, i: int, rate: float, name: str, pred,
                       screen: dict | None = None) -> Candidate:
        """Write the candidate's files (.keras, .tflite, .plan.json, then its .json last) and return its record."""
        from edgeprune.pipeline.convert import converter as conv

        ctx, d = self.ctx, self.ctx.run_dir
        km, res, trained, tm = made.km, made.res, made.trained, made.timings
        self.stage = "save"
        files = {"keras": f"{name}.keras", "tflite": f"{name}.tflite", "plan": f"{name}.plan.json"}
        if ahead is None:  # (the lookahead wrote it for its worker)
            with conv.captured_output():
                _save_keras_atomic(km, d / files["keras"])
        res.save(d / files["tflite"])
        plan = (pruner if ahead is None else ahead).plan()
        recovery = self.recovery.record(ctx.run_dir, plan, files, made) if trained is not None else None
        plan.save(d / files["plan"])
        if not plan.trained:
            from edgeprune.pipeline.search.work_cache import store_plan

            store_plan(plan_key(ctx, rate), d / files["plan"])
        t4 = time.perf_counter()
        size = res.size_bytes
        rec = Candidate(
            index=i, rate=rate, name=name, files=files, params=int(km.count_params()), size_bytes=size,
            flash_bytes=self.checks.host_flash(size), sha256=hashlib.sha256(res.tflite).hexdigest(),
            conversion={k: v for k, v in res.to_dict().items() if k not in ("inputs", "outputs")},
            fidelity=made.fr.to_dict(), widths=plan.widths, prediction=self.checks.predicted(pred, size),
            allocation_log=(pruner if ahead is None else ahead).step_log,
            made_by=dict(ctx.engine.label), recovery=recovery if self.recovery.trainset is not None else ABSENT,
            timings={"prune_s": round(tm["prune_s"], 4),
                     "convert_s": round(tm["convert_s"] if ahead is None else res.seconds, 4),
                     "fidelity_s": round(tm["fidelity_s"], 4), "save_s": round(t4 - tm["_judged"], 4),
                     **({"train_s": round(tm["train_s"], 4)} if trained is not None else {}),
                     **({"replay_s": tm["replay_s"]} if "replay_s" in tm else {}),
                     **({"keras_s": screen["keras_s"]} if screen is not None else {})},
            created_at=_now(), pid=os.getpid(), device=None, screen=screen)
        if ctx.profile.kind == "ethos-u":  # every candidate through Vela: its flash figure, NPU share
            from edgeprune.pipeline.convert import ethos_u_stage

            self.stage = "compile with Vela"
            t5 = time.perf_counter()
            ethos_u_stage.compile_candidate(ctx, self.candidates, rec)
            rec.timings["vela_s"] = round(time.perf_counter() - t5, 4)
        if i == 0:
            rec.arena_calibration = self.checks.ram_calibration(km, d / files["tflite"])
        rec.checks = self.checks.checks(rec)
        write_json_atomic(d / f"{name}.json", rec.to_json())  # last: marks the candidate done
        return rec

    def train_candidate(self, km, i: int, rate: float):
        self.stage = "recovery training"
        return self.recovery.train(km, i, rate)
