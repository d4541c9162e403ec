"""Screening (issue 23 item 1): a pruned candidate is judged first on its pruned Keras model, with
the same metric as the .tflite fidelity check (pipeline/convert/fidelity.py ``score_outputs``); only
the candidates that can change the answer are converted to int8 and judged on their .tflite.

The margin is the float-to-int8 gap measured in the run itself: the largest
``keras score - .tflite score`` (and, with ``--max-accuracy-drop``, the largest ``.tflite drop -
Keras drop``) among the candidates converted so far (candidate 0 is always converted; its Keras
score is the reference itself), plus one evaluation sample's worth (1/n; 100/n points), the
finest step an agreement can take. A candidate whose Keras score still clears the fidelity
threshold after the margin is subtracted is **screened**: its plan is saved, it is not converted
(no .tflite) and it is neither a pass nor a pick until converted. The others are converted and
judged on the .tflite as without screening; the first .tflite failure stops the search.

A first look decides most candidates on a quarter of the samples (at least 100; a seeded, fixed
subset): when the metric is an agreement and only ``--min-fidelity`` is asked for, a candidate
whose Wilson lower bound at 99.9 % on that subset, less the margin, still clears the threshold is
screened on it (its record says on how many samples). Any other candidate is judged on the rest of
the samples too, and so on all of them, as without the first look. The look is not tried when even
the previous candidate's score (agreement falls as the rate rises) would not clear on it.

The device phase converts, on demand and largest rate first, the screened candidates it reaches
(:meth:`Screen.convert`): each from its saved plan, judged on its .tflite, and only then measured;
one that fails on its .tflite is recorded as failing and the next lower rate is tried. So the
answer is always a converted candidate judged on the .tflite it ships.

Not used with ``--rate`` (every given rate is judged on its .tflite) or ``--train-data`` (a candidate
is trained only once it fails untrained, which needs its .tflite), nor with ``--no-screen``. While
screening, the conversion look-ahead (pipeline/convert/convert_pool.py) is off: most candidates are
not converted at all; an explicit ``--jobs N`` > 1 asks for it, and then every candidate is converted
(no screening, a note says so).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Optional

import numpy as np

MARGIN_ENV = "EDGEPRUNE_SCREEN_MARGIN"  # a fixed margin instead of the measured one (tests: a screened candidate failing)
# The first look (module doc): its share of the samples, its least size, its bound's confidence.
FIRST_LOOK_SHARE = 4
FIRST_LOOK_MIN = 100
FIRST_LOOK_CONFIDENCE = 0.999


def _rows(x, idx: np.ndarray):
    """Samples ``idx`` of an array or a lazy sample array, as a lazy subset: nothing is read (or
    copied) until a batch is run."""
    from edgeprune.pipeline.data.batching import Samples

    return (Samples(x) if isinstance(x, np.ndarray) else x).take(idx)


class Screen:
    """The screening state of one run: the measured gap, and what was screened or converted."""

    def __init__(self, ctx, checks, enabled: bool):
        self.ctx, self.checks = ctx, checks
        self.enabled = bool(enabled)
        self.gap = 0.0  # largest keras - tflite score among converted candidates
        self.gap_points = 0.0  # largest tflite - keras accuracy drop (points)
        self.observed = 0
        self.on_demand: list = []  # names converted on demand by the device phase
        self.on_demand_s = 0.0
        self.keras_s = 0.0
        self.looks = {"tried": 0, "screened": 0}  # the first look: candidates it was tried on, and screened
        self.last_score = 1.0  # the last candidate's Keras score (the next one's likely best)

    # ---------------------------------------------------------------- the margin
    @property
    def allowance(self) -> float:
        return 1.0 / max(len(self.ctx.data.x), 1)

    def margin(self) -> dict:
        forced = os.environ.get(MARGIN_ENV)  # tests and diagnosis only: the margin as given (report says so)
        if forced:
            return {"score": float(forced), "points": 100 * float(forced), "forced": MARGIN_ENV}
        return {"score": round(self.gap + self.allowance, 6), "points": round(self.gap_points + 100 * self.allowance, 6)}

    def threshold_key(self) -> list:
        return [self.checks.min_fidelity, self.checks.max_drop, self.checks.confidence]

    def observe(self, keras: dict, fr: dict) -> None:
        """A converted candidate's Keras and .tflite scores: the gap between them."""
        if keras.get("score") is None or fr.get("score") is None or self.partial(keras):
            return  # (a first look's score is not on the .tflite's samples)
        self.observed += 1
        self.gap = max(self.gap, float(keras["score"]) - float(fr["score"]))
        if keras.get("accuracy_drop") is not None and fr.get("accuracy_drop") is not None:
            self.gap_points = max(self.gap_points, float(fr["accuracy_drop"]) - float(keras["accuracy_drop"]))

    def restore(self, candidates: list) -> None:
        """--resume: the gap of the reused converted candidates."""
        for r in candidates:
            if r.screen and not r.screened and r.sha256:
                self.observe(r.screen["keras"], r.fidelity)

    # ---------------------------------------------------------------- judging on Keras
    def first_look(self) -> Optional[np.ndarray]:
        """The sample indices of the first look (module doc), or None when it does not apply."""
        from edgeprune.pipeline.convert import fidelity as fid
        from edgeprune.pipeline.search.verdict import AGREEMENT_METRICS

        n = len(self.ctx.data.x)
        k = max(FIRST_LOOK_MIN, n // FIRST_LOOK_SHARE)
        if k >= n or self.checks.max_drop is not None or self.checks.min_fidelity is None:
            return None
        if fid.choose_metric(np.asarray(self.ctx.reference), self.ctx.data.y, self.ctx.fid_config.metric) not in AGREEMENT_METRICS:
            return None
        return np.sort(np.random.default_rng(0).permutation(n)[:k])

    def _score(self, out: np.ndarray, idx: Optional[np.ndarray] = None) -> dict:
        from edgeprune.pipeline.convert import fidelity as fid

        ctx, ref, data, cfg = self.ctx, np.asarray(self.ctx.reference), self.ctx.data, self.ctx.fid_config
        if idx is not None:  # the first look: the same metric on its samples
            ref = ref[idx]
            data = dataclasses.replace(data, x=out, y=None if data.y is None else np.asarray(data.y)[idx])
            cfg = dataclasses.replace(cfg, metric=fid.choose_metric(np.asarray(ctx.reference), ctx.data.y, cfg.metric))
        d = fid.score_outputs(out, ref, data, cfg).to_dict()
        return {k: d[k] for k in ("metric", "score", "score_name", "accuracy", "accuracy_drop", "n_samples")}

    def _may_clear(self, idx: np.ndarray) -> bool:
        """Would the first look clear at the previous candidate's score? (If not, it is not tried.)"""
        from edgeprune.pipeline.search.verdict import AGREEMENT_METRICS

        return self.clears({"metric": AGREEMENT_METRICS[0], "score": self.last_score, "n_samples": len(idx),
                            "accuracy_drop": None})

    def keras_fidelity(self, km=None, look: bool = False) -> dict:
        """The fidelity of a pruned Keras model (None: the original, i.e. the reference itself).
        With ``look``, the first look's score when it screens the candidate (module doc)."""
        from edgeprune.pipeline.convert import fidelity as fid

        ctx = self.ctx
        t0 = time.perf_counter()
        log = logging.getLogger("tensorflow")
        level = log.level
        log.setLevel(logging.ERROR)  # each candidate is a new model: TF warns that its tf.function retraces
        try:
            if km is None:
                return self._score(np.asarray(ctx.reference))
            idx = self.first_look() if look else None
            if idx is None or not self._may_clear(idx):
                keras = self._score(fid.keras_outputs(km, ctx.data.x))
            else:
                x = ctx.data.x
                first = fid.keras_outputs(km, _rows(x, idx))
                keras = self._score(first, idx)
                self.looks["tried"] += 1
                if self.clears(keras):
                    self.looks["screened"] += 1
                else:
                    rest = np.setdiff1d(np.arange(len(x)), idx)
                    out = np.empty((len(x), *first.shape[1:]), np.float32)
                    out[idx] = first
                    out[rest] = fid.keras_outputs(km, _rows(x, rest))
                    keras = self._score(out)
            self.last_score = float(keras["score"])
            return keras
        finally:
            log.setLevel(level)
            self.keras_s += time.perf_counter() - t0

    def judge(self, km, i: int) -> Optional[dict]:
        """Candidate ``i``'s ``screen`` record (None: screening off): its Keras score (candidate 0's
        is the reference itself) and whether it is screened (not to be converted)."""
        if not self.enabled:
            return None
        t0 = time.perf_counter()
        keras = self.keras_fidelity(km if i > 0 else None, look=self.active(i))
        out = self.record(keras, self.active(i) and self.clears(keras))
        out["keras_s"] = round(time.perf_counter() - t0, 4)
        return out

    def active(self, i: int) -> bool:
        return self.enabled and i > 0 and self.observed > 0

    def partial(self, keras: dict) -> bool:
        """Was this Keras score taken on the first look only (fewer than all samples)?"""
        return int(keras.get("n_samples") or len(self.ctx.data.x)) < len(self.ctx.data.x)

    def clears(self, keras: dict) -> bool:
        """Does the Keras score clear the fidelity threshold with the margin to spare? A first
        look's score counts by its lower bound (module doc)."""
        from edgeprune.pipeline.search.verdict import lower_bound

        m = self.margin()
        score = keras["score"]
        if self.partial(keras):
            if self.first_look() is None:  # --resume under checks a first look cannot decide (--max-accuracy-drop)
                return False
            score = lower_bound(score, int(keras["n_samples"]), FIRST_LOOK_CONFIDENCE)
        shifted = dict(keras, n_samples=len(self.ctx.data.x), score=score - m["score"],
                       accuracy_drop=None if keras.get("accuracy_drop") is None else keras["accuracy_drop"] + m["points"])
        return self.checks.fidelity_ok(shifted)

    def record(self, keras: dict, screened: bool) -> dict:
        """A candidate's ``screen`` (its .json and report.json)."""
        m = self.margin()
        return {"keras": keras, "margin": m["score"], "margin_points": m["points"] if keras.get("accuracy_drop") is not None else None,
                "gap_measured_on": self.observed, "threshold_key": self.threshold_key(), "screened": screened,
                "converted": None if screened else "searched"}

    def text(self, rec) -> str:
        s = rec.screen
        k, parts = s["keras"], []
        if self.checks.min_fidelity is not None and self.partial(k):
            from edgeprune.pipeline.search.verdict import lower_bound

            low = lower_bound(k["score"], int(k["n_samples"]), FIRST_LOOK_CONFIDENCE)
            parts.append(f"{k['score']:.4f} on {k['n_samples']} of {len(self.ctx.data.x)} samples, "
                         f"99.9 % lower bound {low:.4f} >= {self.checks.min_fidelity:g} + margin {s['margin']:.4f}")
        elif self.checks.min_fidelity is not None:
            parts.append(f"{k['score']:.4f} >= {self.checks.min_fidelity:g} + margin {s['margin']:.4f}")
        if self.checks.max_drop is not None and k.get("accuracy_drop") is not None:
            parts.append(f"accuracy drop {k['accuracy_drop']:.2f} + margin {s['margin_points']:.2f} <= {self.checks.max_drop:g} points")
        return "screened on Keras: " + " and ".join(parts) + "; not converted"

    # ---------------------------------------------------------------- converting on demand
    def rejudge(self, host) -> None:
        """--resume: a reused screened candidate is judged again on its Keras score against THIS
        run's thresholds and margin; one that no longer clears them (or any, with --no-screen) is
        converted now and judged on its .tflite, as the search would have. One whose conversion
        fails ends the reuse there: the search builds it again (and records the failure)."""
        for k, rec in enumerate(list(host.candidates)):
            if rec.screened and not (self.enabled and self.clears(rec.screen["keras"])):
                try:
                    self.convert(host, rec, "on resume (no longer clears the threshold with the margin)")
                except Exception:  # noqa: BLE001 - the search makes it again, through try_candidate
                    del host.candidates[k:]
                    return

    def convert(self, host, rec, why: str = "on demand (device phase)"):
        """A screened candidate converted from its saved plan and judged on its .tflite (the
        device phase reached it); returns its converted record (replacing ``rec`` in the list)."""
        from edgeprune.pipeline.convert import converter as conv
        from edgeprune.pipeline.prune.plan import Plan
        from edgeprune.pipeline.prune.pruner import Pruner
        from edgeprune.pipeline.search.predict import predict

        ctx = self.ctx
        ctx.emit("status", text=f"rate {rec.rate:.2f}: screened on Keras; converting it now ({why})")
        t0 = time.perf_counter()
        pruner = Pruner(ctx.model, host.pconf, plan=Plan.load(ctx.run_dir / rec.files["plan"]))
        pruner.step_log = rec.allocation_log  # the chunks of the step that made the plan (kept in the record)
        with conv.captured_output():
            km = pruner.build()
        made = host.convert_and_judge(km, None, rec.index, rec.rate)
        # the step's pruning when it was screened (a replay of its plan is not a prune) + that replay
        replay = made.timings.pop("_prune_end") - t0
        made.timings["prune_s"] = round(float(rec.timings.get("prune_s", 0.0)) + replay, 4)
        made.timings["replay_s"] = round(replay, 4)
        screen = dict(rec.screen, screened=False, converted=why)
        new = host.save_candidate(pruner, None, made, rec.index, rec.rate, rec.name,
                                  predict(km, ctx.config.prune.quantize), screen)
        self.observe(screen["keras"], new.fidelity)
        host.candidates[host.candidates.index(rec)] = new
        self.on_demand.append(new.name)
        self.on_demand_s += time.perf_counter() - t0
        return new

    def summary(self, candidates: list) -> Optional[dict]:
        """``report.json`` ``screen``."""
        if not self.enabled:
            return None
        new = [r for r in candidates if not r.reused]
        return {"enabled": True, "method": " ".join(__doc__.split("\n\n")[1:3]).replace("\n", " "),
                "margin": self.margin(), "gap": round(self.gap, 6), "gap_points": round(self.gap_points, 6),
                "allowance": round(self.allowance, 6),
                "screened": [{"index": r.index, "rate": r.rate, "keras_score": r.screen["keras"]["score"],
                              "keras_samples": r.screen["keras"].get("n_samples"),
                              "margin": r.screen["margin"]} for r in candidates if r.screened],
                "converted_on_demand": list(self.on_demand), "on_demand_s": round(self.on_demand_s, 3),
                "conversions_saved": len([r for r in new if r.screened]),
                "first_look": {"samples": None if self.first_look() is None else len(self.first_look()), **self.looks},
                "keras_s": round(self.keras_s, 3)}
