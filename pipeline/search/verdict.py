"""How much the fidelity verdict of ``edgeprune run`` means: what it was judged on (real
samples, or synthetic inputs and how informative they were), its statistical uncertainty, and
the warnings a person or a CI job should see (``report.json`` ``verdict``).

- Real samples: the top-1 agreement of a candidate is a proportion over the evaluation
  samples; its 95 % Wilson score interval is reported for the chosen candidate and for the
  first one that failed. When the threshold lies inside the chosen candidate's interval the
  pick is within sampling noise: warning ``threshold_within_uncertainty``.
- Synthetic inputs (no ``--data``): the classes the ORIGINAL model assigns them (how many of
  its classes they reach, the largest class's share) and the unpruned converted model's own
  score on them. Reaching fewer than half the classes, or one class holding most (> 50 %) of
  them, means agreement on them says little about real inputs: warning
  ``synthetic_uninformative``.
"""
from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054
AGREEMENT_METRICS = ("top1", "binary")  # scores that are a proportion of agreeing samples
HOW_TO = ("give real samples (a few hundred if you can) with --data: a .npz/.npy, a folder of images (one sub-folder per class), "
          "a .csv (one row per sample), or my_prep.py:load (see README, 'Bring your own samples')")


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion k/n (95 % by default)."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def lower_bound(score: float, n: int, confidence: float) -> float:
    """The one-sided lower confidence bound of an agreement proportion: with probability
    ``confidence`` the true agreement (on samples like these) is at least this. The Wilson
    score bound, z = the standard normal quantile of ``confidence`` (1.645 at 0.95)."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(float(confidence))
    k = int(round(float(score) * int(n)))
    return wilson(k, int(n), z)[0]


def clears(fr: dict, threshold: float, confidence: float | None) -> bool:
    """Does a fidelity result (``score``, ``n_samples``, ``metric``) clear ``threshold``? Without
    ``confidence`` its score must; with it, its lower bound (:func:`lower_bound`) must. The bound
    only exists for an agreement (a proportion); other scores are judged on the score."""
    if fr.get("score") is None:
        return False
    if confidence is None or fr.get("metric") not in AGREEMENT_METRICS:
        return fr["score"] >= threshold - 1e-12
    return lower_bound(fr["score"], fr["n_samples"], confidence) >= threshold - 1e-12


def threshold_text(ft: dict, points: str = "points") -> str:
    """``report.json`` ``fidelity_threshold`` as one line ("top-1 agreement >= 0.95 and accuracy drop <= 1
    points"), saying when ``--confidence`` holds the lower bound, not the score, to it."""
    parts = []
    if ft.get("min_fidelity") is not None:
        parts.append(f"{ft['score_name']} >= {ft['min_fidelity']:g}" + (
            f" (its lower bound at {ft['confidence']:g} confidence)" if ft.get("confidence") is not None else ""))
    if ft.get("max_accuracy_drop") is not None:
        parts.append(f"accuracy drop <= {ft['max_accuracy_drop']:g} {points}")
    return " and ".join(parts)


def samples_for(p: float, half_width: float = 0.01, z: float = Z95) -> int:
    """Samples for a +-half_width (normal approximation) interval around a proportion p."""
    p = min(max(p, 0.01), 0.99)
    return int(math.ceil(z * z * p * (1 - p) / half_width ** 2))


def class_coverage(reference: np.ndarray) -> dict | None:
    """Which of the model's classes ``reference`` (its outputs, N x C) falls in; None if not a classifier."""
    ref = np.asarray(reference)
    if ref.ndim != 2 or len(ref) == 0:
        return None
    if ref.shape[1] == 1:  # one sigmoid unit: two classes, split at 0.5
        counts = np.bincount((ref[:, 0] > 0.5).astype(int), minlength=2)
    else:
        counts = np.bincount(ref.argmax(axis=1), minlength=ref.shape[1])
    top = int(counts.argmax())
    return {"classes": int(len(counts)), "classes_reached": int((counts > 0).sum()), "largest_class": top,
            "largest_class_share": round(float(counts[top] / counts.sum()), 4)}


def _interval_row(c: dict, threshold: float) -> dict:
    fr = c["fidelity"]
    n = int(fr["n_samples"])
    k = int(round(fr["score"] * n))
    lo, hi = wilson(k, n)
    return {"rate": c["rate"], "score": fr["score"], "n": n, "agreeing": k, "low": round(lo, 4), "high": round(hi, 4),
            "threshold_inside": bool(lo <= threshold <= hi)}


def build(run, report: dict) -> dict:
    """``report.json`` ``verdict`` for a finished run (``run``: the _Run; ``report``: its report so far)."""
    data, ft, cands = report["data"], report["fidelity_threshold"], report["candidates"]
    synthetic = bool(data.get("synthetic"))
    out: dict = {"judged_on": "synthetic" if synthetic else "real", "split": getattr(run, "split", None),
                 "synthetic": None, "uncertainty": None, "warnings": []}
    quantize = report["settings"]["quantize"]
    if synthetic:
        lo, hi = report["settings"]["input_range"]
        # classes only mean something for a classifier's verdict (not for an autoencoder's outputs)
        cov = class_coverage(run.reference) if ft.get("metric") in AGREEMENT_METRICS else None
        syn = {"n_samples": data["n_samples"], "distribution": f"uniform in [{lo:g}, {hi:g}] (seed 1)",
               "unpruned_score": cands[0]["fidelity"]["score"], "unpruned_quantize": quantize,
               "score_name": ft["score_name"], "informative": None}
        if cov is not None:
            syn.update(cov)
            syn["informative"] = cov["classes_reached"] * 2 >= cov["classes"] and cov["largest_class_share"] <= 0.5
            if not syn["informative"]:
                out["warnings"].append({"code": "synthetic_uninformative", "message": (
                    f"the verdict says little: fidelity was judged on {data['n_samples']} synthetic inputs that reach "
                    f"{cov['classes_reached']} of the model's {cov['classes']} classes (class {cov['largest_class']} "
                    f"holds {100 * cov['largest_class_share']:.0f}% of them), where the unpruned {quantize} model "
                    f"scores {syn['unpruned_score']:.4f}; {HOW_TO}")})
        out["synthetic"] = syn
    thr = ft.get("min_fidelity")
    if ft.get("metric") in AGREEMENT_METRICS and thr is not None:
        unc = {"method": "Wilson score interval, 95%", "threshold": thr, "chosen": None, "first_failing": None}
        ch = report.get("chosen")
        if ch is not None:
            row = _interval_row(next(c for c in cands if c["index"] == ch["index"]), thr)
            if ft.get("confidence") is not None:  # --confidence: the bound the pick was held to
                row["confidence"] = ft["confidence"]
                row["lower_bound"] = round(lower_bound(row["score"], row["n"], ft["confidence"]), 4)
            unc["chosen"] = row
            if row["threshold_inside"]:
                need = samples_for(row["score"])
                out["warnings"].append({"code": "threshold_within_uncertainty", "message": (
                    f"the pick is within sampling noise: rate {row['rate']:.2f} agrees on {row['agreeing']} of "
                    f"{row['n']} samples ({row['score']:.4f}), 95% interval [{row['low']:.3f}, {row['high']:.3f}] "
                    f"contains the threshold {thr:g}; more samples (about {need:,} for +-0.01) or a margin above the "
                    "threshold would settle it")})
        if report["stop"]["reason"] == "fidelity":
            unc["first_failing"] = _interval_row(cands[-1], thr)
        out["uncertainty"] = unc
    elif ft.get("metric") not in AGREEMENT_METRICS:
        out["uncertainty"] = {"method": None, "note": f"no interval for the {ft.get('score_name')} score (not a proportion)"}
    return out


def judged_on_text(report: dict) -> str:
    v, data = report.get("verdict") or {}, report["data"]
    syn = v.get("synthetic")
    if v.get("judged_on") == "synthetic":
        s = f"fidelity judged on {data['n_samples']} SYNTHETIC inputs ({syn['distribution']}), not on real samples"
        if syn.get("classes") is not None:
            s += (f": they reach {syn['classes_reached']} of {syn['classes']} classes (largest class "
                  f"{100 * syn['largest_class_share']:.0f}%)")
        return s + f"; the unpruned {syn['unpruned_quantize']} model scores {syn['unpruned_score']:.4f} on them"
    sp = v.get("split") or {}
    s = f"fidelity judged on {data['n_samples']} real samples ({data['label']})"
    if sp.get("calibration_source") == "user":
        s += f"; {sp['calibration']} other samples held out for calibration, {sp['shared']} shared"
    unc = (v.get("uncertainty") or {}).get("chosen")
    if unc:
        s += (f"; chosen rate {unc['rate']:.2f}: agreement {unc['score']:.4f}, 95% interval "
              f"[{unc['low']:.3f}, {unc['high']:.3f}]")
        if unc.get("lower_bound") is not None:
            s += f"; held to --confidence {unc['confidence']:g}: lower bound {unc['lower_bound']:.4f}"
    return s


def print_verdict(console, report: dict, warnings_only: bool = False) -> None:
    if not report.get("verdict"):
        return
    if not warnings_only:
        console.print(judged_on_text(report), highlight=False, markup=False)
    from rich.markup import escape

    for w in report["verdict"]["warnings"]:
        console.print(f"[bold yellow]warning:[/bold yellow] {escape(w['message'])}", highlight=False)


def markdown_lines(report: dict) -> list[str]:
    if not report.get("verdict"):
        return []
    lines = ["## Fidelity verdict", "", judged_on_text(report) + ".", ""]
    lines += [f"- **warning** ({w['code']}): {w['message']}" for w in report["verdict"]["warnings"]]
    return lines + ([""] if report["verdict"]["warnings"] else [])
