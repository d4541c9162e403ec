"""The ``edgeprune`` command line.

Commands stay thin: they parse options, call one stage of ``edgeprune.pipeline`` or
``edgeprune.devices`` and render its result object. Every failure the user can fix is an
:class:`~edgeprune.errors.EdgepruneError`, printed as one message (no traceback) with its
exit code; see ``errors.py`` for the codes.
"""
from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from edgeprune import __version__
from edgeprune.errors import EXIT_BAD_INPUT, EdgepruneError
from edgeprune.pipeline import choices

EXIT_CODES_HELP = (
    "Exit codes: 0 success; 2 bad input; 3 (run) no candidate meets every limit; "
    "4 device unreachable or unusable; 5 (run/bench with --baseline) a figure regressed against the baseline."
)

# typer's usage errors (bad option, missing argument, value not a number, ...) share one
# base class. typer >= 0.2x vendors click privately and older releases re-export click's:
# both expose it as a base of the public ``typer.BadParameter``, so no private import and
# no dependency on a package pyproject does not declare.
_UsageErrorBase = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
CONTEXT = {"help_option_names": ["-h", "--help"]}


def _choice_enum(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A typer choice enum of ``values`` (one list each, in edgeprune.pipeline.choices); a value
    that is a Python keyword gets a trailing underscore as its member name (``global_``)."""
    import keyword

    return Enum(name, [(f"{v}_" if keyword.iskeyword(v) else v, v) for v in values], type=str)


Quantize = _choice_enum("Quantize", choices.QUANTIZE)
Criterion = _choice_enum("Criterion", choices.CRITERIA)
Allocation = _choice_enum("Allocation", choices.ALLOCATIONS)
LatencyStat = _choice_enum("LatencyStat", choices.LATENCY_STATS)
Metric = _choice_enum("Metric", choices.METRICS)


app = typer.Typer(
    name="edgeprune",
    context_settings=CONTEXT,
    help="Prune a Keras model structurally, convert it to TFLite and measure it on the "
    "board it must fit. " + EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

out = Console()  # results: tables, JSON
err = Console(stderr=True)  # progress, warnings, errors


def _version(value: bool) -> None:
    if value:
        out.print(f"edgeprune {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """edgeprune: structural pruning + TFLite + on-device measurement."""


# --------------------------------------------------------------------------- prune
@app.command()
def prune(
    model: Annotated[Path, typer.Argument(help="Keras model: .keras, or a Keras 2/3 .h5 file.")],
    rate: Annotated[float, typer.Option(help="Fraction of each prunable layer's channels to remove (0 <= rate < 1).")] = 0.5,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Where to write the pruned model (.keras).")] = Path("pruned.keras"),
    criterion: Annotated[Criterion, typer.Option(help="Importance criterion: paoding (data-free, default), l1, random.")] = Criterion.paoding,
    step: _Step = 0.05,
    round_to: _RoundTo = None,
    input_range: _input_range_option("PAODING's interval bounds") = "0,1",
    seed: _Seed = 0,
    plan_path: Annotated[Optional[Path], typer.Option("--plan", help="Also write the replayable plan (JSON) here.")] = None,
    plugin: _Plugins = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the per-layer result as JSON.")] = False,
) -> None:
    """Prune MODEL structurally and write the smaller model, printing a per-layer table."""
    from edgeprune.pipeline.convert.converter import quiet_import_tensorflow

    quiet_import_tensorflow()
    from edgeprune.pipeline.prune import pruner as prune_stage
    from edgeprune.pipeline.data.loading import load_model

    lo, hi = _parse_range(input_range)
    out_path = Path(out_path)
    _check_out_suffix(out_path, KERAS_SUFFIXES, "the pruned model")
    _check_writable(out_path)
    if plan_path is not None:
        _check_out_suffix(Path(plan_path), (".json",), "the plan")
        _check_writable(Path(plan_path))
    if not 0.0 <= rate < 1.0:
        raise EdgepruneError(f"--rate {rate:g} must be in [0, 1)", "e.g. --rate 0.5 removes half of each layer's channels")
    if not 0.0 < step <= 1.0:
        raise EdgepruneError(f"--step {step:g} must be in (0, 1]", "e.g. --step 0.05")
    _load_plugins(plugin)
    keras_model = load_model(model)
    result = prune_stage.prune(
        keras_model,
        rate=rate,
        criterion=criterion.value,
        step=step,
        round_to=round_to,
        input_range=(lo, hi),
        seed=seed,
    )
    result.model.save(out_path)
    if plan_path is not None:
        result.plan.save(plan_path)
    if as_json:
        import json

        out.print_json(json.dumps(result.summary()))
    else:
        from edgeprune.pipeline.report.report_render import prune_table

        out.print(prune_table(result))
        out.print(
            f"params {result.params_before:,} -> {result.params_after:,} "
            f"({100 * (1 - result.params_after / max(result.params_before, 1)):.1f}% fewer), "
            f"{result.seconds:.2f} s; wrote {out_path}"
        )
    for note in result.notes:
        err.print(f"[yellow]note:[/yellow] {note}")


def _load_plugins(files) -> None:
    from edgeprune.pipeline.data.plugins import load_plugins, plugin_paths

    load_plugins(plugin_paths(files))


INPUT_RANGE_LIMIT = 1e6  # beyond this, interval bounds and synthetic inputs overflow float32


def _parse_range(text: str) -> tuple[float, float]:
    """``--input-range LO,HI`` for run, prune and convert alike (one message for each fault)."""
    import math

    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise EdgepruneError(f"--input-range {text!r} is not 'LO,HI'", "e.g. --input-range 0,1 or -1,1") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or max(abs(lo), abs(hi)) > INPUT_RANGE_LIMIT:
        raise EdgepruneError(f"--input-range {text!r}: LO and HI must be finite numbers within "
                             f"+-{INPUT_RANGE_LIMIT:g}",
                             "give the range of the model's real inputs, e.g. --input-range 0,1 or -32768,32767")
    if not lo < hi:
        raise EdgepruneError(f"--input-range {text!r}: LO must be below HI", "e.g. --input-range 0,1")
    return lo, hi


KERAS_SUFFIXES = (".keras", ".h5")


def _check_out_suffix(path: Path, suffixes: tuple[str, ...], what: str) -> None:
    if path.suffix.lower() not in suffixes:
        raise EdgepruneError(f"--out {path}: {what} is written as {' or '.join(suffixes)}, not "
                             f"{path.suffix or '(no suffix)'!s}",
                             f"name the output file with {suffixes[0]}, e.g. --out {path.with_suffix(suffixes[0]).name}")


def _check_writable(path: Path) -> None:
    _check_name_length(path, "--out")
    parent = path.resolve().parent
    if not parent.exists():
        raise EdgepruneError(f"output folder {parent} does not exist", "create it or choose another --out")
    import os

    if not os.access(parent, os.W_OK):
        raise EdgepruneError(f"output folder {parent} is not writable", "choose another --out")


def _check_name_length(path: Path, what: str) -> None:
    """A path the file system cannot hold (a name over NAME_MAX, a path over PATH_MAX)."""
    import os

    text = os.fsencode(str(path))
    too_long = len(text) >= 4096 or any(len(part) > 255 for part in text.split(b"/"))
    if too_long:
        short = str(path) if len(str(path)) <= 60 else str(path)[:40] + "..." + str(path)[-15:]
        raise EdgepruneError(f"{what} {short}: the path is too long for the file system "
                             f"({len(text)} bytes; at most 255 per name and 4095 in all)",
                             "choose a shorter file or folder name")


DATA_HELP = ("Samples: a .npz (x[, y]) or .npy; a folder of images (PNG/JPEG/BMP, one sub-folder per class for "
             "labels); a .csv (one row per sample, optional 'label' column); or my_prep.py:load (your function "
             "returning x or (x, y)). 1/5 (at most 200) is held out for int8 calibration, never evaluated on.")
# --------------------------------------------------------------------------- options shared by run, bench, convert, prune
# Declared once: each command takes the alias (the factories where the help names the command's default).
_Quantize = Annotated[Quantize, typer.Option("--quantize", "-q", help="int8 (full integer, int8 in/out; the default), float16, float32, or dynamic (int8 weights).")]
_InputShape = Annotated[Optional[str], typer.Option("--input-shape", help="Fix a variable-length input: the full input shape, batch first (run: batch 1), e.g. 1,5000,4.")]
_Threads = Annotated[Optional[int], typer.Option("--num-threads", "--threads", help="Interpreter threads on the device (default: the profile's).")]
_RoundTo = Annotated[Optional[int], typer.Option("--round-to", help="Keep every pruned width a multiple of N (SIMD width). run: default the profile's round_to, if any.")]
_Step = Annotated[float, typer.Option(help="Prune-rate step between candidates (each builds on the last).")]
_Seed = Annotated[int, typer.Option(help="Seed (random criterion).")]
_Plugins = Annotated[Optional[list[Path]], typer.Option("--plugin", metavar="FILE.py", help="A Python file imported before the model is loaded, to register your own layer classes (keras.saving.register_keras_serializable) and their handlers (edgeprune.register_handler). Repeatable; also $EDGEPRUNE_PLUGINS.")]


def _data_option(without: str):
    """``--data`` (any form); ``without``: what the command does without it."""
    return Annotated[Optional[Path], typer.Option("--data", help=DATA_HELP + " " + without)]


def _input_range_option(what: str):
    """``--input-range LO,HI`` (checked by :func:`_parse_range`); ``what``: what the command uses it for."""
    return Annotated[str, typer.Option("--input-range", help=f"Model input range 'LO,HI' ({what}).")]


_Classes = Annotated[Optional[str], typer.Option("--classes", help="Class names in label order, 'a,b,c': for a folder "
                                                  "of images (sub-folder names) or CSV labels given as names. Default: "
                                                  "folder names that are numbers are the labels, else sorted names.")]


# --------------------------------------------------------------------------- convert
@app.command()
def convert(
    model: Annotated[Path, typer.Argument(help="Keras model: .keras, or a Keras 2/3 .h5 file.")],
    quantize: _Quantize = Quantize.int8,
    data: _data_option("Without it: synthetic (data-free).") = None,
    input_range: _input_range_option("synthetic calibration/evaluation data") = "0,1",
    classes: _Classes = None,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Where to write the .tflite.")] = Path("model.tflite"),
    samples: Annotated[int, typer.Option("--samples", help="Synthetic samples for calibration and evaluation when no --data.")] = 100,
    input_shape: _InputShape = None,
    metric: Annotated[Metric, typer.Option(help="Fidelity metric: auto, top1 (classifier), binary (one sigmoid output: agreement of output > 0.5), relerr (1 - relative L2 error) or regression (cosine).")] = Metric.auto,
    plugin: _Plugins = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Convert MODEL to TFLite and print its size, ops, quantisation and fidelity (measured on the .tflite)."""
    from edgeprune.pipeline.convert import converter as conv
    from edgeprune.pipeline.convert import fidelity as fid
    from edgeprune.pipeline.data.eval_data import synthetic_data
    from edgeprune.pipeline.data.loading import load_model

    lo, hi = _parse_range(input_range)
    if samples < 1:
        raise EdgepruneError(f"--samples must be >= 1, got {samples}", "e.g. --samples 100")
    conv.quiet_import_tensorflow()
    fid_config = fid.FidelityConfig(metric=metric.value)
    config = conv.ConvertConfig(quantize=quantize.value, input_range=(lo, hi), num_calibration=samples)
    out_path = Path(out_path)
    _check_out_suffix(out_path, (".tflite",), "the converted model")
    _check_writable(out_path)
    _load_plugins(plugin)
    keras_model = load_model(model)
    if input_shape is not None:
        from edgeprune.pipeline.data.loading import parse_input_shape, with_input_shape

        shape = parse_input_shape(input_shape)
        keras_model = with_input_shape(keras_model, shape)
        config.batch_size = shape[0]
    if data is not None:  # any form of --data; calibration and evaluation never share a sample
        from edgeprune.pipeline.data.datasources import load_data
        from edgeprune.pipeline.data.split import split

        sp = split(load_data(data, keras_model, input_range=(lo, hi), classes=classes))
        eval_data, config.calibration, split_info = sp.evaluation, sp.calibration, sp.info
        if sp.calibration is not None:  # --samples is for synthetic data: calibrate on the whole held-out part
            config.num_calibration = len(sp.calibration)
        if quantize is Quantize.int8 and sp.calibration is not None:
            eval_data.notes.append(f"int8 calibrated on {sp.info['calibration']} of the {sp.info['n_samples']} samples, "
                                   f"evaluated on the other {sp.info['evaluation']} ({sp.info['shared']} shared)")
    else:  # seed 1: evaluation samples differ from the synthetic calibration samples (seed 0)
        eval_data = synthetic_data(keras_model, samples, (lo, hi), seed=1)
        split_info = None
    result = conv.convert(keras_model, config)
    result.save(out_path)
    reference = fid.keras_outputs(keras_model, eval_data.x)
    fidelity = fid.evaluate(result.tflite, reference, eval_data, fid_config)
    arena = _measure_arena(out_path) if result.quantize == "int8" else None

    if as_json:
        import json

        payload = {
            "model": str(model),
            "out": str(out_path),
            "conversion": result.to_dict(),
            "data": dict(eval_data.to_dict(), split=split_info),
            "fidelity": fidelity.to_dict(),
            "arena": arena,
        }
        out.print_json(json.dumps(payload))
    else:
        _print_conversion(result, out_path, eval_data, fidelity, arena)
    for note in result.notes + fidelity.notes:
        err.print(f"[yellow]note:[/yellow] {note}", highlight=False)


def _measure_arena(tflite_path: Path) -> dict | None:
    """TFLite-Micro arena size via edgeprune.devices.tflm when that module exists; never fails
    the command (a crash or error there is reported as a note)."""
    import importlib
    import importlib.util

    try:
        if importlib.util.find_spec("edgeprune.devices.tflm") is None:
            return None
        tflm = importlib.import_module("edgeprune.devices.tflm")
    except Exception:
        return None
    measure = getattr(tflm, "measure_arena", None)
    if measure is None:
        return None
    try:
        value = measure(tflite_path)
    except EdgepruneError as exc:
        return {"arena_bytes": None, "error": exc.message}
    except Exception as exc:  # the measurement is advisory: report, do not crash
        return {"arena_bytes": None, "error": f"{type(exc).__name__}: {exc}"}
    if isinstance(value, (int, float)):
        return {"arena_bytes": int(value)}
    if isinstance(value, dict):
        return dict(value)
    if hasattr(value, "to_dict"):
        return value.to_dict()
    found = next((getattr(value, k) for k in ("arena_bytes", "arena_size", "bytes") if hasattr(value, k)), None)
    return {"arena_bytes": found, "detail": str(value)}


def _print_conversion(result, out_path: Path, eval_data, fidelity, arena: dict | None) -> None:
    from rich.table import Table

    from edgeprune.devices.sizes import format_size

    out.print(
        f"[bold]{out_path}[/bold]: {result.quantize}, {format_size(result.size_bytes)} "
        f"(SI: 1 kB = 1000 B), converted in {result.seconds:.2f} s",
        highlight=False,
    )
    out.print("ops: " + ", ".join(f"{op} x{n}" for op, n in result.op_counts.items()), highlight=False)
    if result.calibration_source:
        label = "user data" if result.calibration_source == "user" else "synthetic (data-free)"
        out.print(f"int8 calibration: {result.calibration_samples} samples, {label}", highlight=False)
    table = Table(title="input / output tensors", title_justify="left")
    for col in ("", "name", "shape", "dtype", "scale", "zero point"):
        table.add_column(col)
    for kind, tensors in (("input", result.inputs), ("output", result.outputs)):
        for t in tensors:
            q = t.quantized
            table.add_row(kind, t.name, "x".join(map(str, t.shape)), t.dtype,
                          f"{t.scale:.6g}" if q else "-", str(t.zero_point) if q else "-")
    out.print(table)
    fr = fidelity
    line = f"fidelity on {fr.n_samples} samples, {eval_data.label}: {fr.score_name} {fr.score:.4f}"
    if fr.metric in ("top1", "binary") and fr.accuracy is not None:
        line += (f"; accuracy {100 * fr.accuracy:.2f}% vs Keras {100 * fr.reference_accuracy:.2f}% "
                 f"(drop {fr.accuracy_drop:+.2f} points)")
    line += f"; rel. L2 error {fr.rel_l2:.3g}, max abs diff {fr.max_abs_diff:.3g}"
    out.print(line, highlight=False)
    if arena is not None:
        if arena.get("arena_bytes") is not None:
            out.print(f"TFLite-Micro arena: {format_size(int(arena['arena_bytes']))}", highlight=False)
        else:
            out.print(f"TFLite-Micro arena: not measured ({arena.get('error') or arena.get('detail')})", highlight=False)


# --------------------------------------------------------------------------- devices
devices_app = typer.Typer(help="Device profiles: list them, check that a board can be measured.",
                          no_args_is_help=True, context_settings=CONTEXT)
app.add_typer(devices_app, name="devices")

_DevicesDir = Annotated[Optional[Path], typer.Option("--devices-dir", help="Extra folder of device profiles (.yaml); also $EDGEPRUNE_DEVICES_DIR.")]
_Host = Annotated[Optional[str], typer.Option("--host", help="Override the SSH host (also $EDGEPRUNE_DEVICE_HOST).")]
_User = Annotated[Optional[str], typer.Option("--user", help="Override the SSH user (also $EDGEPRUNE_DEVICE_USER).")]
_Port = Annotated[Optional[int], typer.Option("--port", min=1, max=65535, help="Override the SSH port, 1-65535 (also $EDGEPRUNE_DEVICE_PORT).")]
_TrustNew = Annotated[bool, typer.Option("--trust-new-host", help="Accept and record an UNKNOWN host key (a changed key is always refused).")]
_Baseline = Annotated[Optional[Path], typer.Option("--baseline", help="Regression gate: compare with this report.json (e.g. main's): size, RAM, latency (beyond its measured spread), fidelity. Exit 5 on a regression.")]
_MaxRegression = Annotated[Optional[str], typer.Option("--max-regression", help="Tolerances of the --baseline gate, FIGURE=VALUE[,...]: relative '10%' or absolute (bytes, ms, score). Default: size=0,ram=5%,latency=10%,fidelity=0.005.")]
_Junit = Annotated[Optional[Path], typer.Option("--junit", help="Write JUnit XML here: one test case per check (each budget, fidelity, each regression figure).")]
_Metrics = Annotated[Optional[Path], typer.Option("--metrics", help="Write a GitLab metrics report here ('name value' lines: size, RAM, latency, fidelity, changes).")]


def _device_profile(device: str, devices_dir, host, user, port, trust_new_host: bool):
    from edgeprune.devices.profile import load_profile

    prof = load_profile(device, search_dirs=[devices_dir] if devices_dir else None, host=host, user=user, port=port)
    if trust_new_host:
        if prof.connection is None:
            raise EdgepruneError(f"--trust-new-host applies to SSH devices; {prof.name!r} is kind {prof.kind!r}",
                                 "drop --trust-new-host, or pick an SSH device (edgeprune devices list)")
        prof = prof.model_copy(update={"connection": prof.connection.model_copy(update={"trust_new_host": True})})
    return prof


@devices_app.command("list")
def devices_list(
    devices_dir: _DevicesDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the profiles as JSON.")] = False,
) -> None:
    """List the device profiles: name, kind, host and limits."""
    from edgeprune.devices.profile import list_profiles

    profiles = list_profiles([devices_dir] if devices_dir else None)
    if as_json:
        import json

        out.print_json(json.dumps([dict(p.model_dump(mode="json"), source=p.source) for p in profiles]))
    else:
        from edgeprune.devices.render import devices_table

        out.print(devices_table(profiles))


@devices_app.command("check")
def devices_check(
    device: Annotated[str, typer.Argument(help="Device name (edgeprune devices list) or path to a .yaml profile.")],
    host: _Host = None,
    user: _User = None,
    port: _Port = None,
    trust_new_host: _TrustNew = False,
    devices_dir: _DevicesDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Connect to DEVICE and report its Python, runtime, architecture, free memory and disk, and what is missing."""
    from edgeprune.devices.base import check_device
    from edgeprune.errors import DeviceError

    prof = _device_profile(device, devices_dir, host, user, port, trust_new_host)
    info = check_device(prof)
    if as_json:
        import json

        out.print_json(json.dumps(info))
    else:
        from edgeprune.devices.render import check_table

        out.print(check_table(prof, info))
    missing = info.get("missing") or []
    if missing:
        raise DeviceError(f"{prof.name}: missing " + "; ".join(m["what"] for m in missing),
                          "; ".join(m["fix"] for m in missing))
    err.print(f"[green]{prof.name}: ready[/green]", highlight=False)


# --------------------------------------------------------------------------- bench
# Measurement options: TFLite benchmark_model's names (kebab-case); --runs/--warmup/--threads are aliases.
_NumRuns = Annotated[int, typer.Option("--num-runs", "--runs", help="Timed inferences: at least this many (and at least --min-secs).")]
_WarmupRuns = Annotated[int, typer.Option("--warmup-runs", "--warmup", help="Untimed inferences before timing: at least this many (and at least --warmup-min-secs).")]
_MinSecs = Annotated[float, typer.Option("--min-secs", help="Time inferences for at least this many seconds (0: a fixed --num-runs).")]
_MaxSecs = Annotated[float, typer.Option("--max-secs", help="Stop warm-up and timing after this many seconds each, even short of --num-runs / --min-secs.")]
_WarmupMinSecs = Annotated[float, typer.Option("--warmup-min-secs", help="Warm up for at least this many seconds (0: --warmup-runs only).")]


@app.command()
def bench(
    model: Annotated[Path, typer.Argument(help="The .tflite to measure.")],
    device: Annotated[str, typer.Option("--device", "-d", help="Device name (edgeprune devices list) or path to a .yaml profile.")],
    runs: _NumRuns = 50,
    warmup: _WarmupRuns = 5,
    threads: _Threads = None,
    min_secs: _MinSecs = 1.0,
    max_secs: _MaxSecs = 150.0,
    warmup_min_secs: _WarmupMinSecs = 0.5,
    inputs: Annotated[Optional[Path], typer.Option("--inputs", help="Inputs (.npy) for the output checksum; default a seeded pattern.")] = None,
    timeout: Annotated[Optional[float], typer.Option(help="Seconds the run may take on the device (default: the profile's).")] = None,
    host: _Host = None,
    user: _User = None,
    port: _Port = None,
    trust_new_host: _TrustNew = False,
    devices_dir: _DevicesDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the measurement as JSON.")] = False,
    baseline: _Baseline = None,
    max_regression: _MaxRegression = None,
    junit: _Junit = None,
    metrics: _Metrics = None,
) -> None:
    """Measure MODEL on DEVICE: latency, load time, peak memory (or, on a microcontroller, arena, flash and an estimate)."""
    from edgeprune.devices.base import measure

    prof = _device_profile(device, devices_dir, host, user, port, trust_new_host)
    gate_base, tolerances = _gate_setup(baseline, max_regression, junit, metrics)
    if gate_base is not None:
        from edgeprune.pipeline.report.gate import check_same_target, tflite_quantization

        check_same_target(gate_base, prof.name, prof.kind, tflite_quantization(model))
    arr = None
    if inputs is not None:
        import numpy as np

        try:
            arr = np.load(inputs, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise EdgepruneError(f"cannot read --inputs {inputs}: {exc}", "pass a .npy file") from None
        if hasattr(arr, "files"):
            arr = [arr[k] for k in arr.files]
    config = _measurement(runs, warmup, threads, min_secs, max_secs, warmup_min_secs).bench(inputs=arr, timeout=timeout)
    m = measure(prof, model, config)
    if as_json:
        out.print_json(m.to_json())
    else:
        from edgeprune.devices.render import bench_table

        out.print(bench_table(m))
    if gate_base is not None or junit is not None or metrics is not None:
        _bench_gate(model, prof, m, gate_base, tolerances, junit, metrics, as_json)


def _gate_setup(baseline, max_regression, junit, metrics):
    """Read --baseline and --max-regression, check --junit/--metrics can be written: before any work."""
    for path, what in ((junit, "--junit"), (metrics, "--metrics")):
        if path is not None:
            _check_name_length(Path(path), what)
            parent = Path(path).resolve().parent
            if not parent.is_dir():
                raise EdgepruneError(f"{what} {path}: folder {parent} does not exist", f"create it or choose another {what}")
    if baseline is None:
        if max_regression is not None:
            raise EdgepruneError("--max-regression needs --baseline (the report to compare with)",
                                 "add --baseline PATH/report.json, or drop --max-regression")
        return None, None
    from edgeprune.pipeline.report.gate import load_baseline, parse_max_regression

    tolerances = parse_max_regression(max_regression)
    return load_baseline(baseline), tolerances


def _print_gate(gate, to_stdout: bool) -> None:
    if to_stdout:
        head = ("[bold red]REGRESSION[/bold red] in " + ", ".join(c.figure for c in gate.regressions)
                if gate.regressions else "[green]no regression[/green]")
        out.print(f"gate against {gate.baseline}: {head}" if gate.compared else f"gate: {gate.note}", highlight=False)
        for c in gate.checks:
            out.print(f"  {c.line()}", highlight=False, markup=False)
    for line in gate.lines():
        err.print(f"regression: {line}", highlight=False, markup=False, soft_wrap=True)


def _bench_gate(model, prof, m, gate_base, tolerances, junit, metrics, as_json) -> None:
    from edgeprune.errors import EXIT_REGRESSION
    from edgeprune.pipeline.report import ci_outputs
    from edgeprune.pipeline.report.gate import bench_figures, compare

    md = m.to_dict()
    gate = None
    if gate_base is not None:
        gate_base = dict(gate_base)
        gate = compare(gate_base, bench_figures(md, model), tolerances)
        _print_gate(gate, to_stdout=not as_json)
    ci_outputs.write_bench_outputs(f"edgeprune bench {Path(model).name} on {prof.name}", prof.name,
                                   gate.to_dict() if gate else None, md, junit, metrics)
    if gate is not None and gate.regressions:
        raise typer.Exit(EXIT_REGRESSION)


# --------------------------------------------------------------------------- run
RUN_EXIT_HELP = (
    "Exit codes: 0 a candidate meets every budget and the fidelity threshold (best.tflite written); "
    "2 bad input (unknown device, unreadable budget, bad step, missing model or data, output dir not writable, "
    "a run dir of another configuration); 3 no candidate meets every limit (report says which and by how much); "
    "4 the device could not be reached or used; "
    "5 with --baseline: a figure (size, RAM, latency, fidelity) regressed beyond its tolerance (one line per figure)."
)


def _input_shape(text: Optional[str]):
    if text is None:
        return None
    from edgeprune.pipeline.data.loading import parse_input_shape

    return parse_input_shape(text)


def _measurement(runs, warmup, threads, min_secs, max_secs, warmup_min_secs, latency_stat: str = "p50"):
    """The measurement option group of ``run`` and ``bench`` (one mapping to BenchConfig)."""
    from edgeprune.pipeline.search.run_config import MeasurementOptions

    return MeasurementOptions(runs=runs, warmup=warmup, threads=threads, min_secs=min_secs, max_secs=max_secs,
                              warmup_min_secs=warmup_min_secs, latency_stat=latency_stat)


@app.command(epilog=RUN_EXIT_HELP)
def run(
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Keras model (.keras/.h5). Default: the bundled Fashion-MNIST example.")] = None,
    device: Annotated[Optional[list[str]], typer.Option("--device", "-d", help="Device profile name (edgeprune devices list) or a .yaml path. Repeat it for several equal boards measured in parallel (a board farm). Default: local.")] = None,
    budget: Annotated[Optional[str], typer.Option("--budget", help="Flash / model-file budget: '2MB' (10^6), '512KiB' (2^10), bytes. Default: the profile's.")] = None,
    ram_budget: Annotated[Optional[str], typer.Option("--ram-budget", help="RAM budget, same units. Default: the profile's.")] = None,
    latency_budget: Annotated[Optional[float], typer.Option("--latency-budget", help="Latency budget in ms, checked on --latency-stat (p50 by default). Default: the profile's, if any.")] = None,
    min_fidelity: Annotated[Optional[float], typer.Option("--min-fidelity", help="Minimum fidelity score vs the original model: top-1 agreement (classifiers) or cosine similarity. Default 0.95 unless --max-accuracy-drop is given.")] = None,
    max_accuracy_drop: Annotated[Optional[float], typer.Option("--max-accuracy-drop", help="Maximum accuracy drop in points (needs labelled --data).")] = None,
    confidence: Annotated[Optional[float], typer.Option("--confidence", help="Make the pick hold with this probability (e.g. 0.95): the one-sided Wilson lower bound of each candidate's agreement, not the agreement itself, must clear --min-fidelity. Off by default.")] = None,
    data: _data_option("Default: the example's 1000 labelled images for the example model, else synthetic (labelled as such).") = None,
    classes: _Classes = None,
    quantize: _Quantize = Quantize.int8,
    criterion: Annotated[Optional[Criterion], typer.Option(help="Importance criterion: flow (one forward pass on the calibration split; the default with data), taylor, paoding (data-free; the default without data), l1, random.")] = None,
    compensate: Annotated[Optional[bool], typer.Option("--compensate/--no-compensate", help="Refit the pruned layers' consumers by least squares on the calibration split (default: on with data).")] = None,
    allocation: Annotated[Optional[Allocation], typer.Option(help="How widths are chosen: global (greedy on the calibration split, least fidelity loss per parameter saved; the rate is the fraction of prunable parameters removed; the default with data) or uniform (every layer loses the rate of its channels; the default without data).")] = None,
    objective: Annotated[Optional[str], typer.Option("--objective", help="What the global allocation pays for: auto (the budgets the unpruned model is predicted to miss, weighted by how far; size when it misses none), size (prunable parameters), ram (peak activation memory), latency (the board's latency model), macs. The rate is the fraction of that resource removed.")] = None,
    step: _Step = 0.05,
    max_rate: Annotated[float, typer.Option("--max-rate", help="Largest prune rate tried.")] = 0.9,
    rate: Annotated[Optional[list[float]], typer.Option("--rate", help="Fixed-rate path (no search): build, judge, measure and gate only these rates (repeatable), e.g. the rate main's report chose. With the search's --step/--max-rate the candidate is the one the search builds; plans are reused across runs by content.")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory. Default ./edgeprune-runs/<model>-<device>-<quantize>.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in --out without redoing finished candidates.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Discard a run of a DIFFERENT configuration in --out and start over.")] = False,
    runs: _NumRuns = 50,
    warmup: _WarmupRuns = 5,
    threads: _Threads = None,
    min_secs: _MinSecs = 1.0,
    max_secs: _MaxSecs = 150.0,
    warmup_min_secs: _WarmupMinSecs = 0.5,
    latency_stat: Annotated[LatencyStat, typer.Option("--latency-stat", help="Statistic of the timed runs the latency budget is checked on.")] = LatencyStat.p50,
    round_to: _RoundTo = None,
    predict: Annotated[bool, typer.Option("--predict/--no-predict", help="Skip converting candidates whose predicted size cannot fit the flash budget.")] = True,
    screen: Annotated[bool, typer.Option("--screen/--no-screen", help="Judge every candidate first on its pruned Keras model; convert and judge on the .tflite only those within the run's measured float-to-int8 gap of the fidelity threshold, and those the device phase needs (the answer is always judged on its .tflite). Not used with --rate, --train-data or --jobs N > 1.")] = True,
    measure_all: Annotated[bool, typer.Option("--measure-all", help="Measure every candidate that passes the host checks (for the latency curve), not just the fewest needed.")] = False,
    input_range: _input_range_option("PAODING bounds, synthetic data") = "0,1",
    seed: _Seed = 0,
    input_shape: _InputShape = None,
    plugin: _Plugins = None,
    jobs: Annotated[Optional[int], typer.Option("--jobs", "-j", help="Worker processes converting candidates ahead of the search (same results as 1). Default: one per core once a conversion takes 5 s or more.")] = None,
    train_data: Annotated[Optional[Path], typer.Option("--train-data", help="Training samples (any form --data takes; labels optional): from the first candidate that fails the fidelity check untrained on, every candidate is distilled from the original model before it is converted and judged. Samples equal to an evaluation sample are removed.")] = None,
    recover: Annotated[Optional[int], typer.Option("--recover", help="Epochs of recovery training per trained candidate (needs --train-data; default 1 with it).")] = None,
    temperature: Annotated[float, typer.Option("--temperature", help="Distillation temperature of --train-data training.")] = 4.0,
    label_weight: Annotated[float, typer.Option("--label-weight", help="Weight of the label loss in --train-data training (labelled samples), 0 = distillation only.")] = 0.0,
    host: _Host = None,
    user: _User = None,
    port: _Port = None,
    trust_new_host: _TrustNew = False,
    devices_dir: _DevicesDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print report.json to stdout instead of the table.")] = False,
    baseline: _Baseline = None,
    max_regression: _MaxRegression = None,
    junit: _Junit = None,
    metrics: _Metrics = None,
) -> None:
    """Find the largest prune rate whose converted model meets every budget and the fidelity threshold.

    Candidates (rate 0, step, 2*step, ...) are pruned progressively, converted and checked on the
    host (size, fidelity); only those that can still be the answer are measured on the device,
    largest rate first. Writes every candidate, best.tflite and report.json/.md/.png to --out.
    """
    from edgeprune.pipeline.search.run import RunConfig
    from edgeprune.pipeline.search.run import run as run_search
    from edgeprune.pipeline.report.run_report import RunProgress, candidates_table, print_outcome

    lo, hi = _parse_range(input_range)
    devices = list(device or ["local"])
    gate_base, tolerances = _gate_setup(baseline, max_regression, junit, metrics)
    if gate_base is not None:  # refuse another device / quantization before the search, not after
        from edgeprune.pipeline.report.gate import check_same_target

        prof = _device_profile(devices[0], devices_dir, host, user, port, False)
        check_same_target(gate_base, prof.name, prof.kind, quantize.value)
    from edgeprune.pipeline.search import run_config as rc

    config = RunConfig(
        model=rc.ModelOptions(path=model, input_range=(lo, hi), input_shape=_input_shape(input_shape), plugins=list(plugin or [])),
        data=rc.DataOptions(path=data, classes=classes),
        device=rc.DeviceOptions(name=devices[0], extra=devices[1:], host=host, user=user, port=port,
                                devices_dir=devices_dir, trust_new_host=trust_new_host),
        budgets=rc.BudgetOptions(flash=budget, ram=ram_budget, latency_ms=latency_budget, min_fidelity=min_fidelity,
                                 max_accuracy_drop=max_accuracy_drop, confidence=confidence),
        prune=rc.PruneOptions(quantize=quantize.value, criterion=criterion.value if criterion else "auto",
                              compensate=compensate, allocation=allocation.value if allocation else "auto",
                              objective=objective or "auto", round_to=round_to, seed=seed),
        search=rc.SearchOptions(step=step, max_rate=max_rate, rates=rate or None, predict=predict,
                                screen=screen, measure_all=measure_all, jobs=jobs),
        measurement=_measurement(runs, warmup, threads, min_secs, max_secs, warmup_min_secs,
                                 latency_stat=latency_stat.value),
        output=rc.OutputOptions(out=out_dir, resume=resume, force=force),
        recover=rc.RecoverOptions(train_data=train_data, epochs=recover, temperature=temperature,
                                  label_weight=label_weight))
    with RunProgress(err) as progress:
        result = run_search(config, progress=progress)
    gate = None
    if gate_base is not None:
        from edgeprune.pipeline.report.gate import gate_run

        gate = gate_run(result, gate_base, tolerances)  # report.json gets "gate"; exit 5 on a regression
    if junit is not None or metrics is not None or os.environ.get("GITHUB_STEP_SUMMARY"):
        from edgeprune.pipeline.report.ci_outputs import write_run_outputs

        write_run_outputs(result.report, junit, metrics)
    if as_json:
        from edgeprune.pipeline.search.verdict import print_verdict

        print_verdict(err, result.report, warnings_only=True)  # warnings reach the screen with --json too
        sys.stdout.write(result.to_json() + "\n")
        sys.stdout.flush()
    else:
        from edgeprune.pipeline.report.run_table import print_kept

        print_kept(out, candidates_table(result.report, out.width))
        print_outcome(out, result.report)
    if gate is not None:
        _print_gate(gate, to_stdout=not as_json)
    raise typer.Exit(result.exit_code)


# --------------------------------------------------------------------------- schema
@app.command()
def schema(
    path_only: Annotated[bool, typer.Option("--path", help="Print the schema file's path instead of the schema.")] = False,
) -> None:
    """Print the JSON Schema of report.json (the current format, edgeprune-report/N)."""
    from edgeprune.pipeline.report.schema import schema_path

    p = schema_path()
    sys.stdout.write(f"{p}\n" if path_only else p.read_text())
    sys.stdout.flush()


# --------------------------------------------------------------------------- entry
def run_cli(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (used by ``main`` and by the tests).

    Every failure ends here as one ``error:`` line (and a ``fix:`` line) on stderr with its
    exit code: typer's usage errors are 2 like our own bad-input errors; no traceback.
    """
    command = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    from edgeprune.devices import interrupt
    from edgeprune.errors import Terminated

    try:
        with interrupt.sigterm_as_interrupt():  # SIGTERM (a cancelled CI job) unwinds like Ctrl-C: boards cleaned up
            rv = command.main(args=args, prog_name="edgeprune", standalone_mode=False)
    except typer.Exit as exc:
        return _interrupted(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        return _interrupted(130)
    except Terminated:
        return _interrupted(130)
    except _UsageErrorBase as exc:
        return _usage_error(exc, args)
    except EdgepruneError as exc:
        err.print(f"[bold red]error:[/bold red] {exc.message}", highlight=False, soft_wrap=True, markup=True)
        if exc.hint:
            err.print(f"  [bold]fix:[/bold] {exc.hint}", highlight=False, soft_wrap=True)
        if getattr(exc, "detail", None):  # the traceback of the user's own code (a --data function)
            err.print(exc.detail, highlight=False, soft_wrap=True, markup=False)
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except OSError as exc:  # a path the file system refuses, a full disk: the user's to fix, no traceback
        import errno

        fixes = {errno.ENAMETOOLONG: "choose a shorter file or folder name",
                 errno.ENOSPC: "free some disk space, or choose another --out",
                 errno.EACCES: "check the permissions, or choose another path",
                 errno.EROFS: "choose a writable --out"}
        if exc.errno not in fixes:
            return _crash(exc, args)
        where = f" ({exc.filename})" if exc.filename and len(str(exc.filename)) <= 200 else ""
        err.print(f"error: {exc.strerror or exc}{where}", highlight=False, markup=False, soft_wrap=True)
        err.print(f"  fix: {fixes[exc.errno]}", highlight=False, markup=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    except Exception as exc:  # a bug: one error line naming the stage, a crash report, exit 1; never a traceback
        return _crash(exc, args)
    return _interrupted(rv) if isinstance(rv, int) else 0


def _crash(exc: BaseException, args: list[str]) -> int:
    from edgeprune import crash

    path = crash.report_crash(exc, args)
    error, fix = crash.crash_lines(exc, path)
    err.print(f"error: {error}", highlight=False, markup=False, soft_wrap=True)
    err.print(f"  fix: {fix}", highlight=False, markup=False, soft_wrap=True)
    return crash.EXIT_CRASH


def _interrupted(code: int) -> int:
    """typer turns Ctrl-C into exit 130; a SIGTERM (a cancelled CI job) is 143 (128 + 15)."""
    from edgeprune.devices import interrupt

    if code == 130:
        err.print("terminated (SIGTERM)" if interrupt.terminated() else "interrupted", highlight=False)
        return 143 if interrupt.terminated() else 130
    return code


def _usage_error(exc: Exception, args: list[str]) -> int:
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:  # `edgeprune` alone: the help
        err.print(ctx.get_help(), highlight=False, markup=False)
        return EXIT_BAD_INPUT
    message = exc.format_message().strip() if hasattr(exc, "format_message") else str(exc)
    message = " ".join(message.split())  # one line, whatever typer wrapped
    where = ctx.command_path if ctx is not None else "edgeprune"
    err.print(f"error: {message}", highlight=False, markup=False, soft_wrap=True)
    err.print(f"  fix: see '{where} -h' for the options", highlight=False, markup=False, soft_wrap=True)
    code = getattr(exc, "exit_code", EXIT_BAD_INPUT)
    return EXIT_BAD_INPUT if code in (1, 2) else code


def main() -> None:
    try:
        code = run_cli()
    except BaseException as exc:  # last resort (the error printing itself failed): still no traceback
        if isinstance(exc, KeyboardInterrupt):
            sys.exit(130)
        if isinstance(exc, SystemExit):
            raise
        sys.stderr.write(f"error: internal error: {type(exc).__name__}: {exc}\n  fix: this is a bug in edgeprune; please report it\n")
        sys.exit(1)
    sys.exit(code)
