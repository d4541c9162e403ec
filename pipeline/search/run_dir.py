"""The run directory: atomic writes, preparing and clearing it, the fingerprint and ``--resume``.

``run.json`` holds the configuration and its fingerprint; a directory holding the SAME
fingerprint is resumed (``resume=True``) or started over, a DIFFERENT one is refused unless
``force=True``, and a non-empty folder that is not a run directory is always refused.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from edgeprune.errors import BadInput
from edgeprune.pipeline.search.run_config import RUN_FORMAT, _now


from edgeprune.pipeline.atomic import copy_atomic as _copy_atomic  # noqa: E402,F401
from edgeprune.pipeline.atomic import replace_atomic, write_bytes_atomic, write_json_atomic  # noqa: E402,F401


def _save_keras_atomic(model, path: Path) -> None:
    replace_atomic(path, model.save, suffix=".tmp.keras")  # Keras saves only to a .keras name


def _prepare_dir(path: Path) -> None:
    """Create the run dir and prove it is writable (a probe file), else BadInput."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise BadInput(f"output dir {path} is not writable: {exc.strerror or exc}",
                       "choose another --out (a folder you can write to)") from None


# --------------------------------------------------------------------------- the run dir
_OUR_FILES = re.compile(r"^(cand-\d+-rate[0-9.]+(_vela\.tflite|\.(keras|tflite|json|plan\.json|failed\.json|vela\.json|trained\.bin))"
                        r"|best\.tflite|best_vela\.tflite|report\.(json|md|png)"
                        r"|measurements\.json|run\.json|reference\.npz|train-reference\.npy|latency-model\.json"
                        r"|\..*\.tmp.*|\.write-probe-.*)$")


_TMP_FILES = re.compile(r"^(\..*\.tmp.*|\.write-probe-.*)$")


def _clear_run_dir(path: Path) -> None:
    for f in path.iterdir():
        if f.is_file() and _OUR_FILES.match(f.name):
            f.unlink()


def _clean_tmp(path: Path) -> None:
    for f in path.iterdir():
        if f.is_file() and f.name.startswith(".") and (".tmp" in f.name or f.name.startswith(".write-probe-")):
            f.unlink(missing_ok=True)



def fingerprint(ctx) -> dict:
    """What a run directory's results depend on (``run.json``; ``--resume`` needs it equal)."""
    c, engine = ctx.config, ctx.engine
    fp = {"model_sha256": ctx.model_sha, "data": ctx.data_id, "quantize": c.prune.quantize, "criterion": engine.criterion,
          "compensate": engine.compensate,
          **({"allocation": engine.allocation} if engine.allocation != "uniform" else {}),
          "step": round(float(c.search.step), 6), "seed": c.prune.seed, "input_range": [float(v) for v in c.model.input_range],
          **({"input_shape": list(c.model.input_shape)} if c.model.input_shape else {}),
          **({"plugins": dict(ctx.plugins)} if ctx.plugins else {})}  # only then: older run dirs keep theirs
    obj = engine.objective
    if obj is not None and not obj.is_size:  # only then: size runs keep their fingerprint
        fp["objective"] = {"name": obj.name, "weights": {k: round(v, 6) for k, v in obj.weights.items()}}
    if ctx.round_to is not None:  # only then: older run dirs keep their fingerprint
        fp["round_to"] = int(ctx.round_to)
    if ctx.recover is not None:  # only with --train-data
        fp["recover"] = dict(ctx.recover.to_dict(), train_data=ctx.train_id)
    return fp


# --------------------------------------------------------------------------- the refusal's wording
# fingerprint key -> (the setting in words, with its option; what an absent key means)
_SETTINGS = {
    "model_sha256": ("model file (--model)", None), "data": ("evaluation data (--data)", None),
    "quantize": ("quantization (--quantize)", None), "criterion": ("channel criterion (--criterion)", None),
    "compensate": ("compensation (--compensate/--no-compensate)", None),
    "allocation": ("channel allocation (--allocation)", "uniform"), "step": ("rate step (--step)", None),
    "seed": ("seed (--seed)", None), "input_range": ("input range (--input-range)", None),
    "input_shape": ("input shape (--input-shape)", "the model's"), "plugins": ("plugins (--plugin)", "none"),
    "objective": ("pruning objective (--objective)", "size"), "round_to": ("channel rounding (--round-to)", "not set"),
    "recover": ("fine-tuning (--train-data)", "none"),
}
_RESOURCES = {"size": "parameters", "ram": "RAM", "macs": "MACs", "latency": "latency"}


def _short(v) -> str:
    """A value as a firmware engineer reads it: no Python reprs."""
    if v is None:
        return "not set"
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, str):
        if v.startswith("synthetic:"):  # the data id without --data
            return "synthetic inputs"
        kind, _, digest = v.partition(":")
        if digest and re.fullmatch(r"[0-9a-f]{64}", digest):  # a content id: form + sha256
            return f"{kind} sha256 {digest[:12]}"
        return f"sha256 {v[:12]}" if re.fullmatch(r"[0-9a-f]{64}", v) else v
    if isinstance(v, (list, tuple)):
        return ", ".join(_short(x) for x in v)
    if isinstance(v, dict):
        return ", ".join(f"{k}={_short(x)}" for k, x in v.items())
    return str(v)


def _objective_words(obj) -> str:
    if not isinstance(obj, dict):
        return _short(obj)
    weights = obj.get("weights") or {}
    parts = " + ".join(f"{_RESOURCES.get(r, r)} {_short(float(w))}" for r, w in weights.items())
    return f"{obj.get('name', '?')} ({parts})" if parts else str(obj.get("name", "?"))


def _value_words(key: str, v, missing: bool, other) -> str:
    if missing:
        default = _SETTINGS.get(key, (key, None))[1]
        return default if default is not None else "not set"
    if key == "objective":
        return _objective_words(v)
    if key == "input_range" and isinstance(v, list) and len(v) == 2:
        return f"{_short(float(v[0]))} to {_short(float(v[1]))}"
    if key == "input_shape" and isinstance(v, list):
        return "x".join(_short(x) for x in v)
    if isinstance(v, dict) and isinstance(other, dict):  # only the entries that differ
        return _short({k: v.get(k) for k in {**v, **other} if v.get(k) != other.get(k)})
    return _short(v)


def fingerprint_diffs(old_fp: dict, fp: dict) -> list[str]:
    """Each setting that differs between a run directory's fingerprint and this run's, in words:
    ``"pruning objective (--objective): size there, auto (latency 0.5 + parameters 0.5) now"``."""
    out = []
    for k in [*fp, *(k for k in old_fp if k not in fp)]:  # a key only the old run had differs too
        if old_fp.get(k) == fp.get(k) and (k in old_fp) == (k in fp):
            continue
        name = _SETTINGS.get(k, (k.replace("_", " "), None))[0]
        there = _value_words(k, old_fp.get(k), k not in old_fp, fp.get(k))
        now = _value_words(k, fp.get(k), k not in fp, old_fp.get(k))
        why = ""
        if k == "objective" and any(isinstance(v, dict) and v.get("name") == "auto" for v in (old_fp.get(k), fp.get(k))):
            why = " (auto prunes for the budgets the unpruned model is predicted to miss)"
        out.append(f"{name}: {there} there, {now} now{why}")
    return out or ["its fingerprint's format"]


def _only_objective_from_size(old_fp: dict, fp: dict) -> bool:
    """The runs differ only in the objective, and the old one pruned for size (no objective key):
    ``--objective size`` gives the old fingerprint back (auto follows the budgets)."""
    rest = {k for k in {**old_fp, **fp} if k != "objective" and old_fp.get(k) != fp.get(k)}
    return not rest and "objective" not in old_fp and "objective" in fp


def _check_existing(ctx, run_json: Path, fp: dict) -> None:
    """A run.json is there: resume, start over (same fingerprint) or refuse / --force (another)."""
    c, d = ctx.config, ctx.run_dir
    try:
        old = json.loads(run_json.read_text())
        old_fp = old["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        if not c.output.force:
            raise BadInput(f"{run_json} is unreadable or not an edgeprune run",
                           "pass --force to start over there, or choose another --out") from None
        old_fp = None
    if old_fp == fp:
        if c.output.resume:
            ctx.resumed = True
        else:
            ctx.notes.append(f"{d} held a run of the same configuration: started over "
                             "(pass --resume to reuse its candidates)")
            _clear_run_dir(d)
        return
    if not c.output.force:
        diffs = fingerprint_diffs(old_fp, fp) if isinstance(old_fp, dict) else ["its configuration is unreadable"]
        fix = "pass --force to discard it and start over, or choose another --out"
        if isinstance(old_fp, dict) and _only_objective_from_size(old_fp, fp):
            fix = "pass --objective size to reuse it as it was pruned, --force to discard it and start over, or choose another --out"
        raise BadInput(f"--out {d} holds a run of a different configuration: {'; '.join(diffs)}", fix)
    ctx.notes.append(f"--force: discarded the run of a different configuration in {d}")
    _clear_run_dir(d)


def open_run_dir(ctx) -> None:
    """Fresh, resumed or refused (see the module docstring); writes run.json, reads the cache."""
    c, d = ctx.config, ctx.run_dir
    run_json = d / "run.json"
    fp = fingerprint(ctx)
    ctx.resumed = False
    if run_json.exists():
        _check_existing(ctx, run_json, fp)
    else:
        # No run.json: nothing here is edgeprune's (run.json is written before any output), so
        # even files NAMED like ours (report.md, best.tflite, ...) are the user's: never overwritten.
        others = [f.name for f in d.iterdir() if not _TMP_FILES.match(f.name)]
        if others:
            raise BadInput(f"--out {d} is not empty and is not an edgeprune run directory "
                           f"(holds {', '.join(sorted(others)[:3])}{'...' if len(others) > 3 else ''})",
                           "choose a new or empty folder for --out")
        if c.output.resume:
            ctx.notes.append(f"--resume: nothing to resume in {d}; started a new run")
        _clear_run_dir(d)
    _clean_tmp(d)
    write_json_atomic(run_json, {"format": RUN_FORMAT, "fingerprint": fp, "config": config_dict(ctx),
                                 "updated_at": _now()})
    ctx.cache_path = d / "measurements.json"
    try:
        ctx.cache = json.loads(ctx.cache_path.read_text()) if ctx.cache_path.exists() else {}
    except (OSError, ValueError):
        ctx.cache = {}
        ctx.notes.append("measurements.json was unreadable: device measurements start afresh")


def config_dict(ctx) -> dict:
    """``run.json`` ``config``."""
    c, engine = ctx.config, ctx.engine
    return {
        "model": str(ctx.model_path), "example": ctx.is_example, "device": ctx.profile.name,
        "data": str(ctx.data_path) if ctx.data_path else None, "quantize": c.prune.quantize, "criterion": engine.criterion,
        "compensate": engine.compensate, "step": c.search.step, "max_rate": c.search.max_rate, "budgets": ctx.budgets.values(),
        "min_fidelity": ctx.min_fidelity, "max_accuracy_drop": ctx.max_drop,
        "confidence": c.budgets.confidence, "runs": c.measurement.runs, "warmup": c.measurement.warmup,
        "measure_all": c.search.measure_all, "input_range": list(c.model.input_range), "seed": c.prune.seed,
        "input_shape": list(c.model.input_shape) if c.model.input_shape else None,
        "threads": c.measurement.threads, "min_secs": c.measurement.min_secs, "max_secs": c.measurement.max_secs, "warmup_min_secs": c.measurement.warmup_min_secs,
        "latency_stat": c.measurement.latency_stat, "round_to": ctx.round_to, "predict": c.search.predict,
        "screen": c.search.screen,
    }
