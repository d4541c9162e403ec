"""First stages of ``edgeprune run``: validate the configuration, resolve the device and budgets,
load the model and the data (with the calibration split held out from the evaluation)."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from edgeprune.devices.base import file_sha256
from edgeprune.errors import BadInput
from edgeprune.pipeline.run_config import (OBJECTIVES, DEFAULT_MIN_FIDELITY, QUANTIZE_CHOICES,
                                           SYNTHETIC_SAMPLES, RunConfig, _parse_budget)
from edgeprune.pipeline.run_dir import _prepare_dir


# --------------------------------------------------------------------------- validation
MAX_CANDIDATES = 200  # rate 0 + at most this many pruned candidates (--step 0.005 up to 0.9 is 181)


def bench_config(config: RunConfig):
    """The device measurement settings of a run (time-based, as benchmark_model)."""
    from edgeprune.devices.base import BenchConfig

    return BenchConfig(runs=config.runs, warmup=config.warmup, threads=config.threads, min_secs=config.min_secs,
                       max_secs=config.max_secs, warmup_min_secs=config.warmup_min_secs)


def _validate(config: RunConfig) -> None:
    """Checks that need neither TensorFlow nor the device (fast bad-input errors)."""
    if not (0.0 < float(config.step) <= 1.0):
        raise BadInput(f"--step {config.step:g} must be in (0, 1]", "e.g. --step 0.05 (5% of the channels per step)")
    if not (0.0 <= float(config.max_rate) < 1.0):
        raise BadInput(f"--max-rate {config.max_rate:g} must be in [0, 1)", "e.g. --max-rate 0.9")
    n_candidates = int(float(config.max_rate) / float(config.step) + 1e-9) + 2
    if n_candidates > MAX_CANDIDATES + 1:
        smallest = float(config.max_rate) / MAX_CANDIDATES
        raise BadInput(f"--step {config.step:g} up to --max-rate {config.max_rate:g} makes {n_candidates - 1:,} "
                       f"candidates; a run takes at most {MAX_CANDIDATES}",
                       f"use --step {smallest:.3g} or larger (e.g. 0.05), or a lower --max-rate")
    for value, what in ((config.budget, "--budget"), (config.ram_budget, "--ram-budget")):
        if value is not None and _parse_budget(value, what) == 0:
            raise BadInput(f"{what} {value!r} is zero bytes: no model fits", f"give the real limit, e.g. {what} 2MB")
    if config.quantize not in QUANTIZE_CHOICES:
        raise BadInput(f"unknown --quantize {config.quantize!r}", f"use one of: {', '.join(QUANTIZE_CHOICES)}")
    if config.latency_budget is not None and not float(config.latency_budget) > 0:
        raise BadInput(f"--latency-budget {config.latency_budget:g} ms must be positive", "e.g. --latency-budget 20")
    if config.min_fidelity is not None and not (0.0 < float(config.min_fidelity) <= 1.0):
        raise BadInput(f"--min-fidelity {config.min_fidelity:g} must be in (0, 1]",
                       "it is the top-1 agreement (classifiers) or cosine similarity, e.g. 0.95")
    if config.max_accuracy_drop is not None and not (0.0 <= float(config.max_accuracy_drop) <= 100.0):
        raise BadInput(f"--max-accuracy-drop {config.max_accuracy_drop:g} must be in [0, 100] points", "e.g. 1.0")
    if getattr(config, "jobs", None) is not None and int(config.jobs) < 1:
        raise BadInput(f"--jobs must be at least 1, got {config.jobs}", "e.g. --jobs 2 (or leave it out: one per core)")
    if config.runs < 1:
        raise BadInput(f"--runs must be at least 1, got {config.runs}", "e.g. --runs 50")
    if config.warmup < 0:
        raise BadInput(f"--warmup must be 0 or more, got {config.warmup}", "e.g. --warmup 5")
    bench_config(config)  # --min-secs / --max-secs / --warmup-min-secs / --num-threads (BadInput)
    from edgeprune.pipeline.noise import LATENCY_STATS

    if config.latency_stat not in LATENCY_STATS:
        raise BadInput(f"unknown --latency-stat {config.latency_stat!r}", f"use one of: {', '.join(LATENCY_STATS)}")
    objective = getattr(config, "objective", None) or "auto"
    if objective not in OBJECTIVES:  # (checked before TensorFlow starts)
        raise BadInput(f"unknown --objective {objective!r}", f"use one of: {', '.join(OBJECTIVES)}")
    if config.round_to is not None and config.round_to < 1:
        raise BadInput(f"--round-to {config.round_to} must be a positive integer", "e.g. --round-to 4 (SIMD width)")
    lo, hi = config.input_range
    if not float(lo) < float(hi):
        raise BadInput(f"input range {config.input_range} is empty", "give LO < HI, e.g. 0,1")
    if config.model is not None:
        p = Path(config.model)
        if not p.exists():
            raise BadInput(f"model file {p} does not exist", "check the path (a .keras or .h5 Keras model), or leave "
                           "--model out to use the bundled example")
    _validate_recover(config)
    if config.data is not None:
        from edgeprune.pipeline.datasources import parse_spec

        ds = parse_spec(config.data)  # any of the four forms; BadInput when it is none
        if ds.path.is_file() and not os.access(ds.path, os.R_OK):
            raise BadInput(f"data file {ds.path} is not readable", "check its permissions")


def recover_config(config: RunConfig):
    """The :class:`~edgeprune.pipeline.recover.RecoverConfig` of a run, or None without --train-data."""
    if getattr(config, "train_data", None) is None:
        return None
    from edgeprune.pipeline.recover import RecoverConfig

    return RecoverConfig(epochs=int(config.recover if config.recover is not None else 1),
                         temperature=float(config.temperature), label_weight=float(config.label_weight),
                         seed=int(config.seed))


def _validate_recover(config: RunConfig) -> None:
    if getattr(config, "train_data", None) is None:
        if getattr(config, "recover", None) is not None:
            raise BadInput("--recover needs --train-data (the samples the pruned candidates are trained on)",
                           "add --train-data train.npz (any form --data takes; labels optional), or drop --recover")
        return
    recover_config(config).validate()
    from edgeprune.pipeline.datasources import parse_spec

    try:
        ds = parse_spec(config.train_data)
    except BadInput as exc:
        raise BadInput(f"--train-data: {exc.message}", (exc.hint or "").replace("--data takes", "--train-data takes")
                       or None) from None
    if ds.path.is_file() and not os.access(ds.path, os.R_OK):
        raise BadInput(f"--train-data file {ds.path} is not readable", "check its permissions")


class SetupStage:
    """Mixin of :class:`edgeprune.pipeline.run._Run`: ``setup`` (no TensorFlow) and ``load``."""

    def resolve_stages(self) -> None:
        """Which criterion and compensation make the candidates. With real data (the example's
        or --data, 50 samples or more) the default is the data-aware combination measured best
        in bench/results/fidelity_engine.md (flow + compensation); without data PAODING
        (data-free), uncompensated. Data-aware stages only ever read the calibration split."""
        from edgeprune.pipeline.allocation import ALLOCATIONS, get_allocation
        from edgeprune.pipeline.criteria import DATA_AWARE

        c = self.c
        if c.allocation != "auto" and c.allocation not in ALLOCATIONS:
            raise BadInput(f"unknown --allocation {c.allocation!r}", f"use one of: {', '.join(ALLOCATIONS)}")
        held_out = self.data_path is not None and self.data.source != "synthetic" and \
            getattr(self, "calibration_held_out", False)
        self.criterion = c.criterion if c.criterion != "auto" else ("flow" if held_out else "paoding")
        self.compensate = bool(c.compensate) if c.compensate is not None else held_out
        self.stage_calibration = self.calibration if held_out else None
        # widths: the global greedy with real data (bench/results/fidelity_engine.md), else uniform
        self.allocation = c.allocation if c.allocation != "auto" else ("global" if held_out else "uniform")
        self.resolve_objective()
        needs = self.compensate or self.criterion in DATA_AWARE or self.allocation == "global"
        if needs and self.stage_calibration is None:
            from edgeprune.pipeline.data import synthetic_data

            self.stage_calibration = synthetic_data(self.model, 64, tuple(c.input_range), seed=2).x
            self.notes.append(f"{self.criterion}{' + compensation' if self.compensate else ''}: calibrated on 64 "
                              f"SYNTHETIC inputs uniform in {list(c.input_range)} (no held-out calibration data)")
        self.stages_label = {"criterion": self.criterion,
                             "compensation": "ridge least-squares refit on the calibration split + 8 shifted copies (inputs with spatial axes)" if self.compensate else "none",
                             "allocation": (self.allocation_obj or get_allocation(self.allocation)).label,
                             "rate": (self.objective.rate_measures if self.allocation == "global"
                                      else "fraction of each prunable layer's channels removed"),
                             "calibration": ("held-out calibration split" if held_out else
                                             "synthetic inputs" if needs else "none")}

    def resolve_objective(self) -> None:
        """``--objective``: what the global allocation pays for (pipeline/allocation/objective.py).
        ``auto`` compares the unpruned model's predicted resources with the budgets."""
        from edgeprune.pipeline.allocation import GlobalGreedy
        from edgeprune.pipeline.allocation.objective import Objective, resolve

        c = self.c
        requested = getattr(c, "objective", None) or "auto"
        self.resources0 = None
        self.allocation_obj = None
        if self.allocation != "global":
            self.objective = Objective("size", {"size": 1.0}, requested,
                                       f"--allocation {self.allocation}: the objective applies to the global allocation only",
                                       c.quantize)
            if requested not in ("auto", "size"):
                self.notes.append(f"--objective {requested} applies to the global allocation; "
                                  f"--allocation {self.allocation} ignores it")
            return
        from edgeprune.pipeline.graph import DependencyGraph
        from edgeprune.pipeline.resources import ResourceModel

        self.resource_model = ResourceModel(DependencyGraph(self.model), c.quantize)
        res0 = self.resources0 = self.resource_model.evaluate(None, layers=True)
        mcu = self.profile.kind == "mcu"
        # the MAC estimate of a microcontroller costs nothing; a board's fitted model costs device runs:
        # built for --objective latency only (auto on such a board weighs flash and RAM)
        latency_model = self.latency_model_for(res0) if requested == "latency" or (requested == "auto" and mcu) else None
        predicted = {"flash": res0.weight_bytes + (int(self.profile.mcu.runtime_flash_bytes) if mcu else 0),
                     "ram": (res0.peak_activation_bytes + int(self.profile.mcu.runtime_ram_bytes)) if mcu else None,
                     "latency": latency_model.predict(res0) if latency_model is not None else None}
        budgets = {"flash": self.budgets["flash_bytes"]["value"], "ram": self.budgets["ram_bytes"]["value"],
                   "latency": self.budgets["latency_ms"]["value"]}
        self.objective = resolve(requested, res0=res0, predicted=predicted, budgets=budgets, quantize=c.quantize,
                                 latency=latency_model, ram_source=self)
        if not self.objective.is_size:
            self.allocation_obj = GlobalGreedy(objective=self.objective)

    def latency_model_for(self, res0):
        """The board's latency model (pipeline/latency_model.py), or None when there is none."""
        from edgeprune.pipeline.latency_model import model_for_run

        return model_for_run(self, res0)

    def setup(self) -> None:
        c = self.c
        _validate(c)
        from edgeprune.devices.profile import load_profile

        self.profile = load_profile(c.device, search_dirs=[c.devices_dir] if c.devices_dir else None,
                                    host=c.host, user=c.user, port=c.port)
        if c.trust_new_host:
            if self.profile.connection is None:
                raise BadInput(f"--trust-new-host applies to SSH devices; {self.profile.name!r} is kind {self.profile.kind!r}",
                               "drop --trust-new-host, or pick an SSH device (edgeprune devices list)")
            self.profile = self.profile.model_copy(update={"connection": self.profile.connection.model_copy(
                update={"trust_new_host": True})})
        self.round_to = c.round_to if c.round_to is not None else self.profile.round_to
        self.latency_stat = c.latency_stat
        self.extra_profiles = []
        if c.extra_devices and any(v is not None for v in (c.host, c.user, c.port)):
            raise BadInput("--host/--user/--port apply to one device; several --device were given",
                           "put each board's connection in its profile")
        for name in c.extra_devices:
            extra = load_profile(name, search_dirs=[c.devices_dir] if c.devices_dir else None)
            if c.trust_new_host and extra.connection is not None:
                extra = extra.model_copy(update={"connection": extra.connection.model_copy(update={"trust_new_host": True})})
            self.extra_profiles.append(extra)
        lim = self.profile.limits
        self.budgets = {
            "flash_bytes": self._budget(_parse_budget(c.budget, "--budget"), lim.flash_bytes),
            "ram_bytes": self._budget(_parse_budget(c.ram_budget, "--ram-budget"), lim.ram_bytes),
            "latency_ms": self._budget(float(c.latency_budget) if c.latency_budget is not None else None, lim.latency_ms),
        }
        if c.min_fidelity is None and c.max_accuracy_drop is None:
            self.min_fidelity: Optional[float] = DEFAULT_MIN_FIDELITY
        else:
            self.min_fidelity = float(c.min_fidelity) if c.min_fidelity is not None else None
        self.max_drop = float(c.max_accuracy_drop) if c.max_accuracy_drop is not None else None

        from edgeprune.pipeline.example import example_data_path, example_model_path

        example = example_model_path()
        self.model_path = Path(c.model) if c.model is not None else example
        self.is_example = self.model_path.resolve() == example.resolve()
        self.data_path = Path(c.data) if c.data is not None else (example_data_path() if self.is_example else None)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.model_path.stem)
        dev = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.profile.name)
        self.run_dir = Path(c.out) if c.out is not None else Path("edgeprune-runs") / f"{name}-{dev}-{c.quantize}"
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise BadInput(f"--out {self.run_dir} is a file, not a folder", "choose a folder for the run")
        _prepare_dir(self.run_dir)

    def load_train_data(self) -> None:
        """--train-data: read and check it as --data (any form); the overlap with the evaluation split
        is removed later (recover.prepare, once the run directory is open)."""
        c = self.c
        self.recover = recover_config(c)
        self.train_raw = None
        self.train_id = None
        if self.recover is None:
            return
        from edgeprune.pipeline.datasources import content_id, load_data

        self.emit("status", text=f"loading --train-data {Path(c.train_data).name}")
        try:
            train = load_data(c.train_data, self.model, input_range=tuple(c.input_range),
                              classes=getattr(c, "classes", None))
        except BadInput as exc:  # the same checks and messages as --data, naming the option
            exc.message = f"--train-data: {exc.message}"
            if exc.hint:
                exc.hint = exc.hint.replace("--data takes", "--train-data takes")
            raise
        if self.recover.label_weight > 0 and train.y is None:
            raise BadInput(f"--label-weight {self.recover.label_weight:g} needs labelled --train-data, and "
                           f"{Path(c.train_data).name} has no labels",
                           "give labels with the training samples (an .npz with x and y, class folders, a label column), "
                           "or --label-weight 0 (distillation only)")
        self.train_raw = train
        self.train_id = ("file:" + file_sha256(Path(c.train_data)) if train.form in ("npz", "npy")
                         else content_id(train))

    def _budget(self, option, profile_value) -> dict:
        if option is not None:
            return {"value": option, "source": "option"}
        return {"value": profile_value, "source": "profile" if profile_value is not None else None}

    # ---------------------------------------------------------------- load (TF)
    def load(self) -> None:
        import time

        from edgeprune.pipeline import convert as conv

        t_import = time.perf_counter()
        conv.quiet_import_tensorflow()
        t_import = time.perf_counter() - t_import
        from edgeprune.pipeline import fidelity as fid
        from edgeprune.pipeline.data import synthetic_data
        from edgeprune.pipeline.importance import CRITERIA
        from edgeprune.pipeline.loading import load_model

        c = self.c
        if c.criterion not in CRITERIA and c.criterion != "auto":
            raise BadInput(f"unknown --criterion {c.criterion!r}", f"use one of: {', '.join(CRITERIA)}")
        t0 = time.perf_counter()
        self.emit("status", text=f"loading {self.model_path.name}")
        self.model = load_model(self.model_path)
        if c.input_shape:
            from edgeprune.pipeline.loading import with_input_shape

            if c.input_shape[0] != 1:
                raise BadInput(f"--input-shape {','.join(map(str, c.input_shape))}: run measures one sample per inference",
                               "give batch 1, e.g. --input-shape 1," + ",".join(map(str, c.input_shape[1:])))
            self.model = with_input_shape(self.model, tuple(c.input_shape))
        self.model_sha = file_sha256(self.model_path)
        t1 = time.perf_counter()
        if self.data_path is not None:
            from edgeprune.pipeline.datasources import content_id, load_data
            from edgeprune.pipeline.split import split

            data = load_data(self.data_path, self.model, input_range=tuple(c.input_range),
                             classes=getattr(c, "classes", None))
            sp = split(data)  # calibration and evaluation never share a sample
            self.calibration = sp.calibration  # the held-out part (int8 calibration; compensation/flow may use it)
            self.split = sp.info
            self.data = sp.evaluation
            # data-aware stages (flow, compensation) by default only with 50 samples or more, as before
            self.calibration_held_out = sp.calibration is not None and data.n >= 50
            if sp.calibration is not None:
                cal_note = f"{sp.info['calibration']} of the {data.n} samples, held out from the evaluation"
            else:
                cal_note = "synthetic inputs in the input range (too few distinct samples to hold any out)"
            self.data_id = ("file:" + file_sha256(self.data_path) if data.form in ("npz", "npy")
                            else content_id(data))
        else:
            self.data = synthetic_data(self.model, SYNTHETIC_SAMPLES, tuple(c.input_range), seed=1)
            self.calibration = None
            self.split = {"method": "no --data: synthetic inputs", "n_samples": SYNTHETIC_SAMPLES,
                          "calibration": SYNTHETIC_SAMPLES, "evaluation": SYNTHETIC_SAMPLES, "shared": 0,
                          "calibration_source": "synthetic"}
            cal_note = f"{SYNTHETIC_SAMPLES} synthetic samples uniform in {list(c.input_range)} (seed 0)"
            self.data_id = f"synthetic:{SYNTHETIC_SAMPLES}:seed1:{list(c.input_range)}"
            self.notes.append("no --data: fidelity is measured on SYNTHETIC (data-free) inputs, not on real samples")
        self.calibration_note = cal_note if c.quantize == "int8" else None
        if self.max_drop is not None and self.data.y is None:
            raise BadInput("--max-accuracy-drop needs labelled data", "pass --data with labels (an .npz with x and y), "
                           "or use --min-fidelity")
        self.resolve_stages()
        self.load_train_data()
        self.fid_config = fid.FidelityConfig()
        # the reference outputs come after the run directory is open (reference_cache: cached for --resume)
        self.load_timings = {"tensorflow_import_s": round(t_import, 3), "model_s": round(t1 - t0, 3), "data_s": round(time.perf_counter() - t1, 3)}
