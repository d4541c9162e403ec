"""Candidates converted in a small pool of worker processes (``edgeprune run --jobs N``).

TFLite conversion dominates the host phase (MobileNetV2-224: ~8 s a candidate). With ``--jobs``
above 1 (without ``--jobs``: one per core, once a candidate's conversion took
:data:`AUTO_MIN_CONVERT_S` or more; a small model converts in a second or two and a worker's
TensorFlow import would cost more than it saves, measured in bench/results/scale.md), :class:`Lookahead` prunes the next candidates ahead of the search in the main process
(pruning is progressive, so it stays sequential there), writes each one's ``.keras`` and hands
it to a worker, which loads it and converts it; the main process meanwhile checks fidelity of
the candidate before. Every worker is a separate process (``spawn``) that imports TensorFlow
once (the pool's initializer) and converts many candidates.

Identical to serial conversion: a worker converts the model loaded from the very ``.keras`` the
serial search writes, with the same :class:`~edgeprune.pipeline.convert.converter.ConvertConfig` and the
same float32 calibration samples (written once to a temporary ``.npy``, memory-mapped by the
workers), so the ``.tflite`` bytes are the same (tests/test_scale.py checks it). The decisions
are taken in the main process in candidate order, exactly as serially: the search stops at the
first fidelity failure, and candidates a worker converted past that stop are discarded (their
files deleted), never reported.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


AUTO_MIN_CONVERT_S = 5.0  # without --jobs, the pool starts once a conversion took this long


def default_jobs() -> int:
    """One worker per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def pool_size(requested: int | None, cores: int, todo: int, prunable: bool, convert_seconds: list[float]) -> int:
    """Workers to start now (0 or 1: stay serial). ``requested``: ``--jobs`` (None: one per core,
    once a conversion so far took :data:`AUTO_MIN_CONVERT_S` or more); ``todo``: candidates left."""
    jobs = int(requested) if requested is not None else int(cores)
    if jobs <= 1 or todo <= 1 or not prunable:
        return 0
    if requested is None and max(convert_seconds, default=0.0) < AUTO_MIN_CONVERT_S:
        return 0
    return min(jobs, todo)


# --------------------------------------------------------------------------- worker side
def _init_worker(plugin_files=()) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from edgeprune.pipeline.convert import converter as conv
    from edgeprune.pipeline.data.plugins import load_plugins

    conv.quiet_import_tensorflow()  # once per worker process
    load_plugins(plugin_files)  # the parent's --plugin files: the candidates may hold the user's layers


def _convert_job(keras_path: str, config, calibration_path: str | None):
    """In a worker: load the candidate's .keras and convert it (the ConvertResult is returned)."""
    import resource

    from edgeprune.pipeline.convert import converter as conv
    from edgeprune.pipeline.data.loading import load_model

    with conv.captured_output():
        model = load_model(Path(keras_path))
    if calibration_path is not None:
        config = dataclasses.replace(config, calibration=np.load(calibration_path, mmap_mode="r"))
    result = conv.convert(model, config)
    result.notes = list(result.notes)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return result, {"pid": os.getpid(), "peak_rss_bytes": int(peak)}


# --------------------------------------------------------------------------- main side
@dataclass
class Prepared:
    """A candidate pruned ahead: its Keras model, plan, pruning time and pending conversion."""

    index: int
    km: Any = None
    saved_plan: Any = None
    step_log: Any = None  # the allocation's rows of its step (Pruner.step_log)
    prune_s: float = 0.0
    error: BaseException | None = None  # pruning/building failed: raised when the search reaches it
    pending: Any = None  # multiprocessing AsyncResult
    keras_path: Path | None = None
    worker: dict | None = None

    def result(self):
        result, self.worker = self.pending.get()
        return result

    def plan(self):
        """The pruning plan at this candidate (the pruner itself is ahead)."""
        return self.saved_plan

    def discard(self) -> None:
        """Not converted after all (predicted over the flash budget): its .keras is removed and
        the worker's result, if any, ignored."""
        if self.keras_path is not None:
            self.keras_path.unlink(missing_ok=True)
        self.pending = None


class Lookahead:
    """Prunes up to ``jobs`` candidates ahead of the search and converts them in the pool."""

    def __init__(self, host, pruner, jobs: int, config):
        """``host``: the :class:`~edgeprune.pipeline.search.host_phase.HostPhase` it works ahead of."""
        import multiprocessing as mp

        self.host, self.pruner, self.jobs = host, pruner, int(jobs)
        self.config = dataclasses.replace(config, calibration=None)
        self.tmp = Path(tempfile.mkdtemp(prefix="edgeprune-pool-"))
        self.calibration_path: str | None = None
        if config.calibration is not None:  # the float32 samples the serial conversion reads
            path = self.tmp / "calibration.npy"
            cal = config.calibration
            out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=tuple(cal.shape))
            for start in range(0, len(cal), 64):
                out[start:start + 64] = np.asarray(cal[start:start + 64], dtype=np.float32)
            out.flush()
            del out
            self.calibration_path = str(path)
        from edgeprune.pipeline.data.plugins import loaded as loaded_plugins

        self.pool = mp.get_context("spawn").Pool(processes=self.jobs, initializer=_init_worker,
                                                 initargs=(tuple(loaded_plugins()),))
        self.ready: dict[int, Prepared] = {}
        self.next: int | None = None
        self.worker_peaks: dict[int, int] = {}

    def fill(self, i: int) -> None:
        """Candidates ``i`` .. ``i + jobs - 1`` pruned and submitted (those not yet)."""
        from edgeprune.pipeline.convert import converter as conv
        from edgeprune.pipeline.search.candidate import candidate_name
        from edgeprune.pipeline.search.run_dir import _save_keras_atomic

        r = self.host
        if self.next is None:
            self.next = i
        while self.next < min(len(r.rates), i + self.jobs):
            k, rate = self.next, r.rates[self.next]
            if k > 0 and not r.prunable:
                return
            self.next += 1
            p = Prepared(index=k)
            t0 = time.perf_counter()
            try:
                if rate > 0:
                    self.pruner.step_to(rate)
                with conv.captured_output():
                    p.km = self.pruner.build()
                p.saved_plan = self.pruner.plan()
                p.step_log = self.pruner.step_log if rate > 0 else None
                p.prune_s = time.perf_counter() - t0
                if not self._predicted_skip(p.km):  # else the search will skip it: no conversion
                    p.keras_path = r.ctx.run_dir / f"{candidate_name(k, rate)}.keras"
                    with conv.captured_output():
                        _save_keras_atomic(p.km, p.keras_path)
                    p.pending = self.pool.apply_async(_convert_job, (str(p.keras_path), self.config,
                                                                     self.calibration_path))
            except Exception as exc:  # noqa: BLE001 - raised in order, when the search reaches candidate k
                p.error = exc
            self.ready[k] = p

    def _predicted_skip(self, km) -> bool:
        """The flash predictor (issue 15), once calibrated, already says the search will skip
        this candidate. The search decides again when it reaches it; if it converts after all,
        it converts in the main process."""
        config, predictor = self.host.ctx.config, self.host.checks.predictor
        if not config.search.predict or not predictor.ready:
            return False
        from edgeprune.pipeline.search.predict import predict

        return predictor.skip_reason(predict(km, config.prune.quantize)) is not None

    def take(self, i: int) -> Prepared:
        p = self.ready.pop(i)
        if p.error is not None:
            raise p.error
        return p

    def close(self) -> None:
        """Stop the workers; candidates prepared past the stop are discarded (files deleted)."""
        for p in self.ready.values():
            if p.keras_path is not None:
                p.keras_path.unlink(missing_ok=True)
        self.ready.clear()
        self.pool.terminate()
        self.pool.join()
        shutil.rmtree(self.tmp, ignore_errors=True)
