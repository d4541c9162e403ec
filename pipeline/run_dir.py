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
from edgeprune.pipeline.run_config import RUN_FORMAT, _now


from edgeprune.pipeline.atomic import copy_atomic as _copy_atomic  # noqa: E402,F401
from edgeprune.pipeline.atomic import write_bytes_atomic, write_json_atomic  # noqa: E402,F401


def _save_keras_atomic(model, path: Path) -> None:
    tmp = path.parent / f".{path.stem}.{os.getpid()}.tmp.keras"
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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



class RunDirStage:
    """Mixin of :class:`edgeprune.pipeline.run._Run`: opens the run directory (fresh, resumed or refused)."""

    def fingerprint(self) -> dict:
        c = self.c
        fp = {"model_sha256": self.model_sha, "data": self.data_id, "quantize": c.quantize, "criterion": self.criterion,
              "compensate": self.compensate,
              **({"allocation": self.allocation} if getattr(self, "allocation", "uniform") != "uniform" else {}),
              "step": round(float(c.step), 6), "seed": c.seed, "input_range": [float(v) for v in c.input_range],
              **({"input_shape": list(c.input_shape)} if c.input_shape else {})}
        obj = getattr(self, "objective", None)
        if obj is not None and not obj.is_size:  # only then: size runs keep their fingerprint
            fp["objective"] = {"name": obj.name, "weights": {k: round(v, 6) for k, v in obj.weights.items()}}
        if getattr(self, "round_to", None) is not None:  # only then: older run dirs keep their fingerprint
            fp["round_to"] = int(self.round_to)
        if getattr(self, "recover", None) is not None:  # only with --train-data
            fp["recover"] = dict(self.recover.to_dict(), train_data=self.train_id)
        return fp

    def open_run_dir(self) -> None:
        c, d = self.c, self.run_dir
        run_json = d / "run.json"
        fp = self.fingerprint()
        self.resumed = False
        if run_json.exists():
            try:
                old = json.loads(run_json.read_text())
                old_fp = old["fingerprint"]
            except (OSError, ValueError, KeyError, TypeError):
                if not c.force:
                    raise BadInput(f"{run_json} is unreadable or not an edgeprune run",
                                   "pass --force to start over there, or choose another --out") from None
                old_fp = None
            if old_fp == fp:
                if c.resume:
                    self.resumed = True
                else:
                    self.notes.append(f"{d} held a run of the same configuration: started over "
                                      "(pass --resume to reuse its candidates)")
                    _clear_run_dir(d)
            else:
                if not c.force:
                    diffs = [f"{k}: {old_fp.get(k)!r} there, {fp[k]!r} now" for k in fp if old_fp.get(k) != fp[k]] \
                        if isinstance(old_fp, dict) else ["unreadable"]
                    raise BadInput(f"--out {d} holds a run of a different configuration ({'; '.join(diffs)})",
                                   "pass --force to discard it and start over, or choose another --out")
                self.notes.append(f"--force: discarded the run of a different configuration in {d}")
                _clear_run_dir(d)
        else:
            # No run.json: nothing here is edgeprune's (run.json is written before any output), so
            # even files NAMED like ours (report.md, best.tflite, ...) are the user's: never overwritten.
            others = [f.name for f in d.iterdir() if not _TMP_FILES.match(f.name)]
            if others:
                raise BadInput(f"--out {d} is not empty and is not an edgeprune run directory "
                               f"(holds {', '.join(sorted(others)[:3])}{'...' if len(others) > 3 else ''})",
                               "choose a new or empty folder for --out")
            if c.resume:
                self.notes.append(f"--resume: nothing to resume in {d}; started a new run")
            _clear_run_dir(d)
        _clean_tmp(d)
        write_json_atomic(run_json, {"format": RUN_FORMAT, "fingerprint": fp, "config": self.config_dict(),
                                     "updated_at": _now()})
        self.cache_path = d / "measurements.json"
        try:
            self.cache = json.loads(self.cache_path.read_text()) if self.cache_path.exists() else {}
        except (OSError, ValueError):
            self.cache = {}
            self.notes.append("measurements.json was unreadable: device measurements start afresh")

    def config_dict(self) -> dict:
        c = self.c
        return {
            "model": str(self.model_path), "example": self.is_example, "device": self.profile.name,
            "data": str(self.data_path) if self.data_path else None, "quantize": c.quantize, "criterion": self.criterion,
            "compensate": self.compensate, "step": c.step, "max_rate": c.max_rate, "budgets": {k: v["value"] for k, v in self.budgets.items()},
            "min_fidelity": self.min_fidelity, "max_accuracy_drop": self.max_drop, "confidence": c.confidence, "runs": c.runs, "warmup": c.warmup,
            "measure_all": c.measure_all, "input_range": list(c.input_range), "seed": c.seed,
            "input_shape": list(c.input_shape) if c.input_shape else None,
            "threads": c.threads, "min_secs": c.min_secs, "max_secs": c.max_secs, "warmup_min_secs": c.warmup_min_secs,
            "latency_stat": c.latency_stat, "round_to": getattr(self, "round_to", None), "predict": c.predict,
        }
