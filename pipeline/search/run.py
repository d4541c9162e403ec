"""``edgeprune run``: find the largest prune rate whose converted model fits the board.

One entry point, :func:`run` (``RunConfig`` in, ``RunResult`` out); the CLI only renders. The
stages pass typed results: :func:`~edgeprune.pipeline.search.run_setup.setup` returns the run's
``RunContext``, the host phase a ``HostResult``, the device phase a ``DeviceResult``, and
:func:`~edgeprune.pipeline.search.run_finish.finish` builds the report from them.

The search
----------
1. **Host phase** (cheap, no device). Candidate 0 is the unpruned model (rate 0). Pruning
   then goes progressively in steps of ``search.step`` (each step continues from the previous
   candidate's state, as the criterion requires) up to ``search.max_rate``. Every candidate is
   built, converted to TFLite and checked on the host: its fidelity against the original
   float Keras model (on the evaluation data) and its size against the flash budget (the
   .tflite file on a Linux board; file + runtime overhead on a microcontroller). Pruning
   stops after the first candidate whose fidelity falls below the threshold, or at
   ``max_rate``. Each candidate's ``.keras``, ``.tflite``, ``.plan.json`` and metrics
   ``.json`` are written atomically before the next one starts (the ``.json`` is written
   last: it marks the candidate done). Screening (``search.screen``, host_screen.py): a
   candidate whose pruned Keras model clears the threshold by more than the run's measured
   float-to-int8 gap is not converted (its plan is kept); the device phase converts it if it
   reaches it, so the answer is always judged on its .tflite.
2. **Device phase** (slow, shared). Only candidates that passed every host check can be
   the answer. Latency and memory fall as the rate rises, so the host-passing candidates
   are measured from the LARGEST rate down: the first one that meets the RAM and latency
   budgets is the answer (usually one device run). When one misses a device budget, the
   next smaller rate is measured only if the miss is within measurement noise
   (``NOISE_TOLERANCE``); a clear miss means every smaller rate (a bigger model) misses too,
   so they are not measured. Measurements are cached by the .tflite's sha256 (plus device
   and run settings) in ``measurements.json``: the same file is never measured twice, across
   candidates and across ``--resume``. ``search.measure_all`` measures every host-passing candidate
   (for the latency curve), still through the cache.

The answer is the largest rate whose candidate meets every budget and the fidelity
threshold; :data:`EXIT_NO_CANDIDATE` (3) when there is none, with the reason (which limit
failed, and by how much).

The run directory
-----------------
``run.json`` (the configuration and its fingerprint), per candidate ``cand-XX-rateR.keras``,
``.tflite``, ``.plan.json`` and ``.json``, ``measurements.json``, and at the end
``best.tflite``, ``report.json``, ``report.md`` and ``report.png``.

- ``output.resume`` continues a run with the same fingerprint (model, data, quantization,
  criterion, step, seed, input range): finished candidates and cached measurements are
  reused (budgets, thresholds, ``max_rate``, the device and its run settings may change).
- Without ``resume``, a directory holding a run with the SAME fingerprint is started over
  (its edgeprune files are removed); one holding a DIFFERENT configuration is refused
  (bad input) unless ``output.force``; a non-empty folder that is not a run directory is
  always refused (nothing of the user's is ever deleted).
"""
from __future__ import annotations

import time
from typing import Optional

from edgeprune.pipeline.search.device_phase import DevicePhase, check_reachable
from edgeprune.pipeline.search.host_phase import HostPhase, rate_schedule
from edgeprune.pipeline.search.reference_cache import reference_outputs
from edgeprune.pipeline.search.run_config import Progress, RunConfig, RunResult
from edgeprune.pipeline.search.run_dir import open_run_dir
from edgeprune.pipeline.search.run_finish import finish
from edgeprune.pipeline.search.run_setup import load, setup

__all__ = ["RunConfig", "RunResult", "run"]


# --------------------------------------------------------------------------- the run
def run(config: RunConfig, progress: Optional[Progress] = None) -> RunResult:
    """The whole search (see the module docstring). Raises BadInput (exit 2) / DeviceError
    (exit 4); returns a RunResult whose ``exit_code`` is 0 (a candidate meets everything) or 3."""
    ctx = setup(config, progress)  # 1. validate; device profile, budgets, thresholds, paths
    ctx.boards = check_reachable(ctx)  # 2. every board answers (exit 4 before any work)
    t0 = time.perf_counter()
    load(ctx)  # 3. TensorFlow, the model, the data split, the engine
    open_run_dir(ctx)  # 4. fresh, resumed or refused
    reference_outputs(ctx)  # 5. the original model's outputs (cached for --resume)
    ctx.load_seconds = time.perf_counter() - t0
    ctx.emit("host_phase", total=len(rate_schedule(float(config.search.step), float(config.search.max_rate))))
    host = HostPhase(ctx).run()  # 6. candidates: prune, convert, host checks
    device = DevicePhase(ctx, host).run()  # 7. measure from the largest host-passing rate down
    return finish(ctx, host, device)  # 8. best.tflite and the report
