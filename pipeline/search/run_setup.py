"""First stages of ``edgeprune run``: validate the configuration, resolve the device and budgets
(:func:`setup` returns the run's :class:`RunContext`), load the model and the data (with the
calibration split held out from the evaluation) and choose the engine (:func:`load`)."""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from edgeprune.devices.base import file_sha256
from edgeprune.errors import BadInput
from edgeprune.pipeline.search.run_config import (OBJECTIVES, DEFAULT_MIN_FIDELITY, QUANTIZE_CHOICES,
                                           SYNTHETIC_SAMPLES, Budgets, Progress, RequestedBudgets, RunConfig,
                                           _parse_budget)
from edgeprune.pipeline.search.run_dir import _prepare_dir


# --------------------------------------------------------------------------- validation
MAX_CANDIDATES = 200  # rate 0 + at most this many pruned candidates (--step 0.005 up to 0.9 is 181)


def _validate(config: RunConfig) -> RequestedBudgets:
    """Checks that need neither TensorFlow nor the device (fast bad-input errors); returns the
    budgets given as options, parsed (the only place they are parsed)."""
    if not (0.0 < float(config.search.step) <= 1.0):
        raise BadInput(f"--step {config.search.step:g} must be in (0, 1]", "e.g. --step 0.05 (5% of the channels per step)")
    if not (0.0 <= float(config.search.max_rate) < 1.0):
        raise BadInput(f"--max-rate {config.search.max_rate:g} must be in [0, 1)", "e.g. --max-rate 0.9")
    for r in config.search.rates or ():
        if not (0.0 < float(r) <= float(config.search.max_rate)):
            raise BadInput(f"--rate {float(r):g} must be in (0, --max-rate {float(config.search.max_rate):g}]",
                           "give the rate a report chose (e.g. --rate 0.9), or raise --max-rate to the search's")
    n_candidates = int(float(config.search.max_rate) / float(config.search.step) + 1e-9) + 2
    if n_candidates > MAX_CANDIDATES + 1:
        smallest = float(config.search.max_rate) / MAX_CANDIDATES
        raise BadInput(f"--step {config.search.step:g} up to --max-rate {config.search.max_rate:g} makes {n_candidates - 1:,} "
                       f"candidates; a run takes at most {MAX_CANDIDATES}",
                       f"use --step {smallest:.3g} or larger (e.g. 0.05), or a lower --max-rate")
    parsed = {}
    for value, what in ((config.budgets.flash, "--budget"), (config.budgets.ram, "--ram-budget")):
        parsed[what] = _parse_budget(value, what)
        if value is not None and parsed[what] == 0:
            raise BadInput(f"{what} {value!r} is zero bytes: no model fits", f"give the real limit, e.g. {what} 2MB")
    if config.prune.quantize not in QUANTIZE_CHOICES:
        raise BadInput(f"unknown --quantize {config.prune.quantize!r}", f"use one of: {', '.join(QUANTIZE_CHOICES)}")
    if config.budgets.latency_ms is not None and not float(config.budgets.latency_ms) > 0:
        raise BadInput(f"--latency-budget {config.budgets.latency_ms:g} ms must be positive", "e.g. --latency-budget 20")
    conf = config.budgets.confidence
    if conf is not None and not (0.5 <= float(conf) < 1.0):
        raise BadInput(f"--confidence {conf:g} must be in [0.5, 1)",
                       "it is the probability the pick's agreement clears --min-fidelity, e.g. --confidence 0.95")
    if conf is not None and config.budgets.min_fidelity is None and config.budgets.max_accuracy_drop is not None:
        raise BadInput("--confidence applies to --min-fidelity (an agreement), not to --max-accuracy-drop",
                       "add --min-fidelity (e.g. 0.95), or leave --confidence out")
    if config.budgets.min_fidelity is not None and not (0.0 < float(config.budgets.min_fidelity) <= 1.0):
        raise BadInput(f"--min-fidelity {config.budgets.min_fidelity:g} must be in (0, 1]",
                       "it is the top-1 agreement (classifiers) or cosine similarity, e.g. 0.95")
    if config.budgets.max_accuracy_drop is not None and not (0.0 <= float(config.budgets.max_accuracy_drop) <= 100.0):
        raise BadInput(f"--max-accuracy-drop {config.budgets.max_accuracy_drop:g} must be in [0, 100] points", "e.g. 1.0")
    if config.search.jobs is not None and int(config.search.jobs) < 1:
        raise BadInput(f"--jobs must be at least 1, got {config.search.jobs}", "e.g. --jobs 2 (or leave it out: one per core)")
    if config.measurement.runs < 1:
        raise BadInput(f"--runs must be at least 1, got {config.measurement.runs}", "e.g. --runs 50")
    if config.measurement.warmup < 0:
        raise BadInput(f"--warmup must be 0 or more, got {config.measurement.warmup}", "e.g. --warmup 5")
    config.measurement.bench()  # --min-secs / --max-secs / --warmup-min-secs / --num-threads (BadInput)
    from edgeprune.pipeline.search.noise import LATENCY_STATS

    if config.measurement.latency_stat not in LATENCY_STATS:
        raise BadInput(f"unknown --latency-stat {config.measurement.latency_stat!r}", f"use one of: {', '.join(LATENCY_STATS)}")
    objective = config.prune.objective or "auto"
    if objective not in OBJECTIVES:  # (checked before TensorFlow starts)
        raise BadInput(f"unknown --objective {objective!r}", f"use one of: {', '.join(OBJECTIVES)}")
    if config.prune.round_to is not None and config.prune.round_to < 1:
        raise BadInput(f"--round-to {config.prune.round_to} must be a positive integer", "e.g. --round-to 4 (SIMD width)")
    lo, hi = config.model.input_range
    if not float(lo) < float(hi):
        raise BadInput(f"input range {config.model.input_range} is empty", "give LO < HI, e.g. 0,1")
    if config.model.path is not None:
        p = Path(config.model.path)
        if not p.exists():
            raise BadInput(f"model file {p} does not exist", "check the path (a .keras or .h5 Keras model), or leave "
                           "--model out to use the bundled example")
    _validate_recover(config)
    if config.data.path is not None:
        from edgeprune.pipeline.data.datasources import parse_spec

        ds = parse_spec(config.data.path)  # any of the four forms; BadInput when it is none
        if ds.path.is_file() and not os.access(ds.path, os.R_OK):
            raise BadInput(f"data file {ds.path} is not readable", "check its permissions")
    latency = float(config.budgets.latency_ms) if config.budgets.latency_ms is not None else None
    return RequestedBudgets(parsed["--budget"], parsed["--ram-budget"], latency)


def recover_config(config: RunConfig):
    """The :class:`~edgeprune.pipeline.prune.recover.RecoverConfig` of a run, or None without --train-data."""
    if config.recover.train_data is None:
        return None
    from edgeprune.pipeline.prune.recover import RecoverConfig

    return RecoverConfig(epochs=int(config.recover.epochs if config.recover.epochs is not None else 1),
                         temperature=float(config.recover.temperature), label_weight=float(config.recover.label_weight),
                         seed=int(config.prune.seed))


def _validate_recover(config: RunConfig) -> None:
    if config.recover.train_data is None:
        if config.recover.epochs is not None:
            raise BadInput("--recover needs --train-data (the samples the pruned candidates are trained on)",
                           "add --train-data train.npz (any form --data takes; labels optional), or drop --recover")
        return
    recover_config(config).validate()
    from edgeprune.pipeline.data.datasources import parse_spec

    try:
        ds = parse_spec(config.recover.train_data)
    except BadInput as exc:
        raise BadInput(f"--train-data: {exc.message}", (exc.hint or "").replace("--data takes", "--train-data takes")
                       or None) from None
    if ds.path.is_file() and not os.access(ds.path, os.R_OK):
        raise BadInput(f"--train-data file {ds.path} is not readable", "check its permissions")


# --------------------------------------------------------------------------- the context
@dataclass
class Engine:
    """What makes the candidates (resolved by :func:`resolve_engine` once the data is loaded)."""
    criterion: str
    compensate: bool
    allocation: str  # "global" or "uniform"
    allocation_obj: Any  # a GlobalGreedy for a non-size objective, else None (the registry's)
    objective: Any  # pipeline.prune.allocation.objective.Objective
    calibration: Any  # what the data-aware stages read (held-out split, synthetic or None)
    label: dict  # report.json settings.stages and each candidate's made_by
    resource_model: Any = None  # pipeline.resources.ResourceModel (global allocation only)
    resources0: Any = None  # the unpruned model's resources (global allocation only)


@dataclass
class RunContext:
    """Everything the stages after setup read: written by :func:`setup`, :func:`load`, the run
    directory and the reference outputs, in that order; read by the host and device phases and
    :func:`~edgeprune.pipeline.search.run_finish.finish`."""
    config: RunConfig
    emit: Progress
    profile: Any  # devices.profile.Profile
    extra_profiles: list
    round_to: Optional[int]
    budgets: Budgets
    min_fidelity: Optional[float]
    max_drop: Optional[float]
    model_path: Path
    is_example: bool
    data_path: Optional[Path]
    run_dir: Path
    notes: list = field(default_factory=list)
    t_start: float = field(default_factory=time.perf_counter)
    boards: list = field(default_factory=list)  # one profile per board (check_reachable)
    # load()
    model: Any = None
    model_sha: str = ""
    plugins: dict = field(default_factory=dict)  # {file name: sha256} of the --plugin files imported
    data: Any = None  # the evaluation split (pipeline.data.eval_data.EvalData)
    calibration: Any = None  # the held-out calibration inputs (None: synthetic)
    split: Optional[dict] = None
    data_id: str = ""
    calibration_held_out: bool = False
    calibration_note: Optional[str] = None
    engine: Optional[Engine] = None
    recover: Any = None  # pipeline.prune.recover.RecoverConfig with --train-data
    train_raw: Any = None
    train_id: Optional[str] = None
    fid_config: Any = None
    load_timings: dict = field(default_factory=dict)
    load_seconds: float = 0.0
    # the run directory (run_dir.open_run_dir) and the reference outputs (reference_cache)
    resumed: bool = False
    cache: dict = field(default_factory=dict)
    cache_path: Optional[Path] = None
    reference: Any = None
    reference_cached: bool = False

    def all_boards(self) -> list:
        return self.boards or [self.profile]


# --------------------------------------------------------------------------- setup (no TensorFlow)
def _load_profiles(c: RunConfig):
    from edgeprune.devices.profile import load_profile

    search = [c.device.devices_dir] if c.device.devices_dir else None
    profile = load_profile(c.device.name, search_dirs=search, host=c.device.host, user=c.device.user, port=c.device.port)
    if c.device.trust_new_host:
        if profile.connection is None:
            raise BadInput(f"--trust-new-host applies to SSH devices; {profile.name!r} is kind {profile.kind!r}",
                           "drop --trust-new-host, or pick an SSH device (edgeprune devices list)")
        profile = profile.model_copy(update={"connection": profile.connection.model_copy(
            update={"trust_new_host": True})})
    extra_profiles = []
    if c.device.extra and any(v is not None for v in (c.device.host, c.device.user, c.device.port)):
        raise BadInput("--host/--user/--port apply to one device; several --device were given",
                       "put each board's connection in its profile")
    for name in c.device.extra:
        extra = load_profile(name, search_dirs=search)
        if c.device.trust_new_host and extra.connection is not None:
            extra = extra.model_copy(update={"connection": extra.connection.model_copy(update={"trust_new_host": True})})
        extra_profiles.append(extra)
    return profile, extra_profiles


def setup(config: RunConfig, progress: Optional[Progress] = None) -> RunContext:
    """Validate, load the device profile(s), resolve the budgets, thresholds and paths (no TensorFlow)."""
    c = config
    requested = _validate(c)
    profile, extra_profiles = _load_profiles(c)
    if c.budgets.min_fidelity is None and c.budgets.max_accuracy_drop is None:
        min_fidelity: Optional[float] = DEFAULT_MIN_FIDELITY
    else:
        min_fidelity = float(c.budgets.min_fidelity) if c.budgets.min_fidelity is not None else None
    from edgeprune.pipeline.example import example_data_path, example_model_path

    example = example_model_path()
    model_path = Path(c.model.path) if c.model.path is not None else example
    is_example = model_path.resolve() == example.resolve()
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_path.stem)
    dev = re.sub(r"[^A-Za-z0-9_.-]+", "_", profile.name)
    run_dir = Path(c.output.out) if c.output.out is not None else Path("edgeprune-runs") / f"{name}-{dev}-{c.prune.quantize}"
    if run_dir.exists() and not run_dir.is_dir():
        raise BadInput(f"--out {run_dir} is a file, not a folder", "choose a folder for the run")
    _prepare_dir(run_dir)
    return RunContext(
        config=c, emit=progress or (lambda *a, **k: None), profile=profile, extra_profiles=extra_profiles,
        round_to=c.prune.round_to if c.prune.round_to is not None else profile.round_to,
        budgets=requested.with_profile(profile.limits), min_fidelity=min_fidelity,
        max_drop=float(c.budgets.max_accuracy_drop) if c.budgets.max_accuracy_drop is not None else None,
        model_path=model_path, is_example=is_example,
        data_path=Path(c.data.path) if c.data.path is not None else (example_data_path() if is_example else None),
        run_dir=run_dir)


# --------------------------------------------------------------------------- the engine
def resolve_engine(ctx: RunContext) -> Engine:
    """Which criterion and compensation make the candidates. With real data (the example's
    or --data, 50 samples or more) the default is the data-aware combination measured best
    in bench/results/fidelity_engine.md (flow + compensation); without data PAODING
    (data-free), uncompensated. Data-aware stages only ever read the calibration split."""
    from edgeprune.pipeline.prune.allocation import ALLOCATIONS, get_allocation
    from edgeprune.pipeline.prune.criteria import DATA_AWARE

    c = ctx.config
    if c.prune.allocation != "auto" and c.prune.allocation not in ALLOCATIONS:
        raise BadInput(f"unknown --allocation {c.prune.allocation!r}", f"use one of: {', '.join(ALLOCATIONS)}")
    held_out = ctx.data_path is not None and ctx.data.source != "synthetic" and ctx.calibration_held_out
    criterion = c.prune.criterion if c.prune.criterion != "auto" else ("flow" if held_out else "paoding")
    compensate = bool(c.prune.compensate) if c.prune.compensate is not None else held_out
    calibration = ctx.calibration if held_out else None
    # widths: the global greedy with real data (bench/results/fidelity_engine.md), else uniform
    allocation = c.prune.allocation if c.prune.allocation != "auto" else ("global" if held_out else "uniform")
    engine = Engine(criterion=criterion, compensate=compensate, allocation=allocation, allocation_obj=None,
                    objective=None, calibration=calibration, label={})
    resolve_objective(ctx, engine)
    needs = compensate or criterion in DATA_AWARE or allocation == "global"
    if needs and engine.calibration is None:
        from edgeprune.pipeline.data.eval_data import synthetic_data

        engine.calibration = synthetic_data(ctx.model, 64, tuple(c.model.input_range), seed=2).x
        ctx.notes.append(f"{criterion}{' + compensation' if compensate else ''}: calibrated on 64 "
                         f"SYNTHETIC inputs uniform in {list(c.model.input_range)} (no held-out calibration data)")
    engine.label = {"criterion": criterion,
                    "compensation": ("ridge least-squares refit on the calibration split + 8 shifted copies (inputs with spatial axes; "
                                     "none when the refit's memory cap holds fewer samples than the split)") if compensate else "none",
                    "allocation": (engine.allocation_obj or get_allocation(allocation)).label,
                    "rate": (engine.objective.rate_measures if allocation == "global"
                             else "fraction of each prunable layer's channels removed"),
                    "calibration": ("held-out calibration split" if held_out else
                                    "synthetic inputs" if needs else "none")}
    return engine


def resolve_objective(ctx: RunContext, engine: Engine) -> None:
    """``--objective``: what the global allocation pays for (pipeline/prune/allocation/objective.py).
    ``auto`` compares the unpruned model's predicted resources with the budgets."""
    from edgeprune.pipeline.prune.allocation import GlobalGreedy
    from edgeprune.pipeline.prune.allocation.objective import Objective, resolve

    c, profile = ctx.config, ctx.profile
    requested = c.prune.objective or "auto"
    if engine.allocation != "global":
        engine.objective = Objective("size", {"size": 1.0}, requested,
                                     f"--allocation {engine.allocation}: the objective applies to the global allocation only",
                                     c.prune.quantize)
        if requested not in ("auto", "size"):
            ctx.notes.append(f"--objective {requested} applies to the global allocation; "
                             f"--allocation {engine.allocation} ignores it")
        return
    from edgeprune.pipeline.prune.graph import DependencyGraph
    from edgeprune.pipeline.search.latency_model import model_for_run
    from edgeprune.pipeline.search.resources import ResourceModel

    engine.resource_model = ResourceModel(DependencyGraph(ctx.model), c.prune.quantize)
    res0 = engine.resources0 = engine.resource_model.evaluate(None, layers=True)
    mcu = profile.kind == "mcu"
    # the MAC estimate of a microcontroller costs nothing; a board's fitted model costs device runs
    # (model_for_run builds it only when a latency budget is set): auto needs it to know whether the
    # unpruned model misses that budget
    latency_model = model_for_run(ctx, res0) if requested in ("latency", "auto") else None
    predicted = {"flash": res0.weight_bytes + (int(profile.mcu.runtime_flash_bytes) if mcu else 0),
                 "ram": (res0.peak_activation_bytes + int(profile.mcu.runtime_ram_bytes)) if mcu else None,
                 "latency": latency_model.predict(res0) if latency_model is not None else None}
    budgets = {"flash": ctx.budgets.flash_bytes, "ram": ctx.budgets.ram_bytes, "latency": ctx.budgets.latency_ms}
    engine.objective = resolve(requested, res0=res0, predicted=predicted, budgets=budgets, quantize=c.prune.quantize,
                               latency=latency_model)
    if not engine.objective.is_size:
        engine.allocation_obj = GlobalGreedy(objective=engine.objective)


# --------------------------------------------------------------------------- load (TensorFlow)
def load_train_data(ctx: RunContext) -> None:
    """--train-data: read and check it as --data (any form); the overlap with the evaluation split
    is removed later (recover.prepare, once the run directory is open)."""
    c = ctx.config
    ctx.recover = recover_config(c)
    if ctx.recover is None:
        return
    from edgeprune.pipeline.data.datasources import content_id, load_data

    ctx.emit("status", text=f"loading --train-data {Path(c.recover.train_data).name}")
    try:
        train = load_data(c.recover.train_data, ctx.model, input_range=tuple(c.model.input_range), classes=c.data.classes)
    except BadInput as exc:  # the same checks and messages as --data, naming the option
        exc.message = f"--train-data: {exc.message}"
        if exc.hint:
            exc.hint = exc.hint.replace("--data takes", "--train-data takes")
        raise
    if ctx.recover.label_weight > 0 and train.y is None:
        raise BadInput(f"--label-weight {ctx.recover.label_weight:g} needs labelled --train-data, and "
                       f"{Path(c.recover.train_data).name} has no labels",
                       "give labels with the training samples (an .npz with x and y, class folders, a label column), "
                       "or --label-weight 0 (distillation only)")
    ctx.train_raw = train
    ctx.train_id = ("file:" + file_sha256(Path(c.recover.train_data)) if train.form in ("npz", "npy") else content_id(train))


def _load_model(ctx: RunContext) -> None:
    from edgeprune.pipeline.data.loading import load_model

    from edgeprune.pipeline.data.plugins import load_plugins, plugin_paths

    c = ctx.config
    ctx.plugins = load_plugins(plugin_paths(c.model.plugins))  # the user's layers and handlers, first
    ctx.emit("status", text=f"loading {ctx.model_path.name}")
    ctx.model = load_model(ctx.model_path)
    if c.model.input_shape:
        from edgeprune.pipeline.data.loading import with_input_shape

        if c.model.input_shape[0] != 1:
            raise BadInput(f"--input-shape {','.join(map(str, c.model.input_shape))}: run measures one sample per inference",
                           "give batch 1, e.g. --input-shape 1," + ",".join(map(str, c.model.input_shape[1:])))
        ctx.model = with_input_shape(ctx.model, tuple(c.model.input_shape))
    ctx.model_sha = file_sha256(ctx.model_path)


def _load_data(ctx: RunContext) -> None:
    """The evaluation data and the calibration split held out from it (synthetic without data)."""
    from edgeprune.pipeline.data.eval_data import synthetic_data

    c = ctx.config
    if ctx.data_path is not None:
        from edgeprune.pipeline.data.datasources import content_id, load_data
        from edgeprune.pipeline.data.split import split

        data = load_data(ctx.data_path, ctx.model, input_range=tuple(c.model.input_range), classes=c.data.classes)
        sp = split(data)  # calibration and evaluation never share a sample
        ctx.calibration = sp.calibration  # the held-out part (int8 calibration; compensation/flow may use it)
        ctx.split = sp.info
        ctx.data = sp.evaluation
        # data-aware stages (flow, compensation) by default only with 50 samples or more, as before
        ctx.calibration_held_out = sp.calibration is not None and data.n >= 50
        if sp.calibration is not None:
            cal_note = f"{sp.info['calibration']} of the {data.n} samples, held out from the evaluation"
        else:
            cal_note = "synthetic inputs in the input range (too few distinct samples to hold any out)"
        ctx.data_id = "file:" + file_sha256(ctx.data_path) if data.form in ("npz", "npy") else content_id(data)
    else:
        ctx.data = synthetic_data(ctx.model, SYNTHETIC_SAMPLES, tuple(c.model.input_range), seed=1)
        ctx.calibration = None
        ctx.split = {"method": "no --data: synthetic inputs", "n_samples": SYNTHETIC_SAMPLES,
                     "calibration": SYNTHETIC_SAMPLES, "evaluation": SYNTHETIC_SAMPLES, "shared": 0,
                     "calibration_source": "synthetic"}
        cal_note = f"{SYNTHETIC_SAMPLES} synthetic samples uniform in {list(c.model.input_range)} (seed 0)"
        ctx.data_id = f"synthetic:{SYNTHETIC_SAMPLES}:seed1:{list(c.model.input_range)}"
        ctx.notes.append("no --data: fidelity is measured on SYNTHETIC (data-free) inputs, not on real samples")
    ctx.calibration_note = cal_note if c.prune.quantize == "int8" else None


def load(ctx: RunContext) -> None:
    """TensorFlow, the model, the data and its split, the engine and --train-data."""
    from edgeprune.pipeline.convert import converter as conv

    t_import = time.perf_counter()
    conv.quiet_import_tensorflow()
    t_import = time.perf_counter() - t_import
    from edgeprune.pipeline.convert import fidelity as fid
    from edgeprune.pipeline.prune.criteria import CRITERIA

    c = ctx.config
    if c.prune.criterion not in CRITERIA and c.prune.criterion != "auto":
        raise BadInput(f"unknown --criterion {c.prune.criterion!r}", f"use one of: {', '.join(CRITERIA)}")
    t0 = time.perf_counter()
    _load_model(ctx)
    t1 = time.perf_counter()
    _load_data(ctx)
    if ctx.max_drop is not None and ctx.data.y is None:
        raise BadInput("--max-accuracy-drop needs labelled data", "pass --data with labels (an .npz with x and y), "
                       "or use --min-fidelity")
    ctx.engine = resolve_engine(ctx)
    load_train_data(ctx)
    ctx.fid_config = fid.FidelityConfig()
    # the reference outputs come after the run directory is open (reference_cache: cached for --resume)
    ctx.load_timings = {"tensorflow_import_s": round(t_import, 3), "model_s": round(t1 - t0, 3),
                        "data_s": round(time.perf_counter() - t1, 3)}
