#!/usr/bin/env python3
"""edgeprune board runner: benchmark one .tflite on this machine and print JSON on stdout.

Self-contained on purpose: it is copied to the board by SFTP and run there with the board's
Python (3.7 or newer), so it needs only the standard library, numpy and ONE of
ai_edge_litert, tflite_runtime or tensorflow (tried in that order; ``--accept`` narrows or
reorders the list). Nothing from edgeprune is imported.

  python3 board_runner.py MODEL.tflite [--num-runs 50] [--warmup-runs 5] [--num-threads N]
                          [--min-secs 1] [--max-secs 150] [--warmup-min-secs 0.5]
                          [--inputs inputs.npz|inputs.npy] [--seed 0]
  python3 board_runner.py --check        # what this board has (Python, runtimes, memory, disk)

Timing follows TFLite's benchmark_model: warm up for at least ``--warmup-runs`` inferences AND
``--warmup-min-secs`` seconds, then time inferences until at least ``--num-runs`` have run AND
``--min-secs`` seconds have passed; both phases stop at ``--max-secs`` (at least one timed
run). ``--min-secs 0 --warmup-min-secs 0`` gives a fixed count. ``--runs``, ``--warmup`` and
``--threads`` are accepted as aliases. The system load average is read before warming up.

The last line of stdout is one JSON object: {"ok": true, ...} or
{"ok": false, "error": {"kind": ..., "message": ...}} (exit code 3 on error).
Error kinds: no_numpy, no_runtime, bad_args, bad_model, allocate, bad_inputs, invoke,
disk_full, internal.
"""
import argparse
import hashlib
import json
import os
import platform
import sys
import time

RUNNER_VERSION = 2
RUNTIMES = ("ai_edge_litert", "tflite_runtime", "tensorflow")


class RunnerError(Exception):
    def __init__(self, kind, message):
        Exception.__init__(self, message)
        self.kind = kind
        self.message = message


def emit(obj):
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def _dist_version(dist):
    try:
        from importlib import metadata  # Python 3.8+
        return metadata.version(dist)
    except Exception:
        pass
    try:
        import pkg_resources
        return pkg_resources.get_distribution(dist).version
    except Exception:
        return None


def load_runtime(name):
    """Return (Interpreter class, version) for one runtime name; raise ImportError if absent."""
    if name == "ai_edge_litert":
        from ai_edge_litert.interpreter import Interpreter
        import ai_edge_litert
        version = getattr(ai_edge_litert, "__version__", None) or _dist_version("ai-edge-litert")
        return Interpreter, version
    if name == "tflite_runtime":
        from tflite_runtime.interpreter import Interpreter
        import tflite_runtime
        version = getattr(tflite_runtime, "__version__", None) or _dist_version("tflite-runtime")
        return Interpreter, version
    if name == "tensorflow":
        import tensorflow as tf
        return tf.lite.Interpreter, tf.__version__
    raise ImportError("unknown runtime " + name)


def pick_runtime(accept):
    tried = []
    for name in accept:
        try:
            cls, version = load_runtime(name)
            return name, cls, version
        except Exception as exc:  # ImportError, or a broken install raising something else
            tried.append("%s (%s: %s)" % (name, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else ""))
    raise RunnerError("no_runtime", "none of %s importable with %s: %s"
                      % (", ".join(accept), sys.executable, "; ".join(tried)))


def peak_rss():
    """(peak RSS bytes, ru_maxrss bytes, VmHWM bytes); any may be None."""
    ru = None
    try:
        import resource
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        ru = int(r) if sys.platform == "darwin" else int(r) * 1024  # KiB on Linux, bytes on macOS
    except Exception:
        pass
    hwm = None
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
    except Exception:
        pass
    # VmHWM is this process's own high-water mark. ru_maxrss is not: Linux carries the
    # parent's maximum across fork+exec, so a runner started by a big parent (a host
    # with TensorFlow loaded) would report the parent's RSS. Use ru_maxrss only where
    # /proc is missing.
    return (hwm if hwm is not None else ru), ru, hwm


def meminfo():
    out = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable", "MemFree"):
                    out[key] = int(rest.split()[0]) * 1024
    except Exception:
        pass
    return out


def disk_free(path):
    try:
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize
    except Exception:
        return None


def stats(samples):
    """Order statistics of the timed samples (ms): p50 (= median), p90, p99, min, max, mean,
    std, and the spread: IQR (p75 - p25) and MAD (median absolute deviation from p50)."""
    import numpy as np
    a = np.asarray(samples, dtype=np.float64)
    p25, p50, p75, p90, p99 = (float(v) for v in np.percentile(a, [25, 50, 75, 90, 99]))
    return {
        "median": p50,
        "p50": p50,
        "p25": p25,
        "p75": p75,
        "p90": p90,
        "p99": p99,
        "mean": float(a.mean()),
        "std": float(a.std()),
        "min": float(a.min()),
        "max": float(a.max()),
        "iqr": p75 - p25,
        "mad": float(np.median(np.abs(a - p50))),
        "n": int(a.size),
    }


def load_average():
    """(1-minute load average, CPU count, load per core); None where the OS does not say."""
    cpus = os.cpu_count()
    try:
        load1 = float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None, cpus, None
    return load1, cpus, (load1 / cpus if cpus else None)


def timed_loop(invoke, min_runs, min_secs, max_secs, record):
    """Call ``invoke`` until ``min_runs`` calls AND ``min_secs`` seconds, stopping at ``max_secs``
    (always at least one call). With ``record`` returns the per-call ms; returns (samples, calls, s)."""
    perf = time.perf_counter
    samples = []
    append = samples.append
    calls = 0
    start = perf()
    elapsed = 0.0
    while True:
        if calls >= min_runs and elapsed >= min_secs:
            break
        if calls >= 1 and elapsed >= max_secs:
            break
        t0 = perf()
        invoke()
        t1 = perf()
        if record:
            append((t1 - t0) * 1000.0)
        calls += 1
        elapsed = t1 - start
    return samples, calls, perf() - start


def _quantize(x, detail, np):
    dtype = detail["dtype"]
    q = detail.get("quantization") or (0.0, 0)
    scale, zero = q[0], q[1]
    if np.issubdtype(dtype, np.integer) and np.issubdtype(x.dtype, np.floating):
        if not scale:
            raise RunnerError("bad_inputs", "input %r is %s without quantization parameters; float inputs given"
                              % (detail.get("name"), np.dtype(dtype).name))
        info = np.iinfo(dtype)
        x = np.clip(np.round(x / scale + zero), info.min, info.max)
    return x.astype(dtype)


def make_inputs(details, path, seed, np):
    """One array per model input: from ``path`` (.npy: input 0; .npz: arr_0, arr_1, ...) or seeded."""
    arrays = []
    given = None
    if path:
        try:
            loaded = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise RunnerError("bad_inputs", "cannot read inputs %s: %s" % (path, exc))
        if hasattr(loaded, "files"):
            given = [loaded["arr_%d" % i] if ("arr_%d" % i) in loaded.files else None for i in range(len(details))]
        else:
            given = [loaded] + [None] * (len(details) - 1)
    rng = np.random.RandomState(seed)
    for i, d in enumerate(details):
        shape = tuple(int(s) for s in d["shape"])
        dtype = np.dtype(d["dtype"])
        x = given[i] if given is not None else None
        if x is not None:
            x = np.asarray(x)
            if x.shape != shape:
                if x.shape == shape[1:]:
                    x = x[None, ...]
                elif len(x.shape) == len(shape) and x.shape[1:] == shape[1:] and x.shape[0] >= shape[0]:
                    x = x[: shape[0]]
                else:
                    raise RunnerError("bad_inputs", "input %d (%s) has shape %s, the model wants %s"
                                      % (i, d.get("name"), list(x.shape), list(shape)))
            x = _quantize(x, d, np)
        elif np.issubdtype(dtype, np.floating):
            x = rng.uniform(0.0, 1.0, size=shape).astype(dtype)
        elif dtype == np.bool_:
            x = rng.randint(0, 2, size=shape).astype(dtype)
        else:
            info = np.iinfo(dtype)
            x = rng.randint(max(info.min, -128), min(info.max, 127) + 1, size=shape).astype(dtype)
        arrays.append(x)
    return arrays


def checksum(outputs, np):
    h = hashlib.sha256()
    for o in outputs:
        o = np.ascontiguousarray(o)
        h.update(str(o.dtype).encode())
        h.update(str(list(o.shape)).encode())
        h.update(o.tobytes())
    return h.hexdigest()


def check(args):
    info = {
        "ok": True,
        "mode": "check",
        "runner_version": RUNNER_VERSION,
        "python_version": platform.python_version(),
        "python": sys.executable,
        "arch": platform.machine(),
        "system": platform.system(),
        "cpu_count": os.cpu_count(),
        "loadavg_1m": load_average()[0],
        "load_per_core": load_average()[2],
        "memory": meminfo(),
        "disk_free_bytes": disk_free(os.getcwd()),
        "cwd": os.getcwd(),
        "runtimes": {},
        "missing": [],
    }
    try:
        import numpy as np
        info["numpy_version"] = np.__version__
    except Exception as exc:
        info["numpy_version"] = None
        info["missing"].append({"what": "numpy", "error": str(exc),
                                "fix": "pip install numpy (or apt install python3-numpy)"})
    for name in args.accept:
        try:
            if name == "tensorflow":  # importing all of TensorFlow takes seconds: look, don't import
                import importlib.util
                if importlib.util.find_spec("tensorflow") is None:
                    raise ImportError("No module named 'tensorflow'")
                version = _dist_version("tensorflow") or _dist_version("tensorflow-cpu") or "unknown"
            else:
                _, version = load_runtime(name)
            info["runtimes"][name] = {"ok": True, "version": version}
        except Exception as exc:
            info["runtimes"][name] = {"ok": False, "error": "%s: %s" % (type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")}
    usable = [n for n in args.accept if info["runtimes"][n]["ok"]]
    info["runtime"] = usable[0] if usable else None
    info["runtime_version"] = info["runtimes"][usable[0]]["version"] if usable else None
    if not usable:
        info["missing"].append({"what": "a TFLite runtime (%s)" % " or ".join(args.accept),
                                "fix": "pip install ai-edge-litert (or tflite-runtime) for %s" % sys.executable})
    if sys.version_info < (3, 7):
        info["missing"].append({"what": "Python 3.7+", "fix": "install python3 >= 3.7"})
    return info


def bench(args):
    try:
        import numpy as np
    except Exception as exc:
        raise RunnerError("no_numpy", "numpy is not importable with %s: %s" % (sys.executable, exc))
    name, Interpreter, version = pick_runtime(args.accept)
    if not os.path.isfile(args.model):
        raise RunnerError("bad_args", "model file %s not found" % args.model)

    t0 = time.perf_counter()
    try:
        kwargs = {"model_path": args.model}
        if args.threads:
            kwargs["num_threads"] = args.threads
        interp = Interpreter(**kwargs)
    except Exception as exc:
        raise RunnerError("bad_model", "%s: %s" % (type(exc).__name__, exc))
    try:
        interp.allocate_tensors()
    except Exception as exc:
        raise RunnerError("allocate", "%s: %s" % (type(exc).__name__, exc))
    load_ms = (time.perf_counter() - t0) * 1000.0

    in_details = interp.get_input_details()
    out_details = interp.get_output_details()
    inputs = make_inputs(in_details, args.inputs, args.seed, np)
    for d, x in zip(in_details, inputs):
        interp.set_tensor(d["index"], x)

    def invoke():
        try:
            interp.invoke()
        except Exception as exc:
            raise RunnerError("invoke", "%s: %s" % (type(exc).__name__, exc))

    t0 = time.perf_counter()
    invoke()
    first_ms = (time.perf_counter() - t0) * 1000.0
    outputs = [interp.get_tensor(d["index"]) for d in out_details]
    digest = checksum(outputs, np)

    load1, cpus, per_core = load_average()
    _, warm_calls, warm_s = timed_loop(invoke, args.warmup, args.warmup_min_secs, args.max_secs, False)
    samples, calls, timed_s = timed_loop(interp.invoke, args.runs, args.min_secs, args.max_secs, True)

    rss, ru, hwm = peak_rss()
    return {
        "ok": True,
        "mode": "bench",
        "runner_version": RUNNER_VERSION,
        "runtime": name,
        "runtime_version": version,
        "arch": platform.machine(),
        "python_version": platform.python_version(),
        "numpy_version": np.__version__,
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "runs": calls,
        "warmup": warm_calls,
        "requested": {"num_runs": args.runs, "warmup_runs": args.warmup, "min_secs": args.min_secs,
                      "max_secs": args.max_secs, "warmup_min_secs": args.warmup_min_secs},
        "timed_s": timed_s,
        "warmup_s": warm_s,
        "capped": calls < args.runs or timed_s < args.min_secs,
        "loadavg_1m": load1,
        "load_per_core": per_core,
        "latency_ms": stats(samples),
        "load_ms": load_ms,
        "first_inference_ms": first_ms,
        "peak_rss_bytes": rss,
        "ru_maxrss_bytes": ru,
        "vmhwm_bytes": hwm,
        "output_checksum": digest,
        "inputs": [{"shape": [int(s) for s in d["shape"]], "dtype": np.dtype(d["dtype"]).name} for d in in_details],
        "outputs": [{"shape": [int(s) for s in o.shape], "dtype": str(o.dtype)} for o in outputs],
    }


def parse_args(argv):
    p = argparse.ArgumentParser(description="edgeprune board runner")
    p.add_argument("model", nargs="?")
    p.add_argument("--num-runs", "--runs", dest="runs", type=int, default=50)
    p.add_argument("--warmup-runs", "--warmup", dest="warmup", type=int, default=5)
    p.add_argument("--num-threads", "--threads", dest="threads", type=int, default=None)
    p.add_argument("--min-secs", dest="min_secs", type=float, default=1.0)
    p.add_argument("--max-secs", dest="max_secs", type=float, default=150.0)
    p.add_argument("--warmup-min-secs", dest="warmup_min_secs", type=float, default=0.5)
    p.add_argument("--inputs", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--accept", default=",".join(RUNTIMES))
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    args.accept = [a for a in args.accept.split(",") if a]
    bad = [a for a in args.accept if a not in RUNTIMES]
    if bad:
        raise RunnerError("bad_args", "unknown runtime(s) %s; known: %s" % (", ".join(bad), ", ".join(RUNTIMES)))
    if not args.check:
        if not args.model:
            raise RunnerError("bad_args", "no model path given")
        if args.runs < 1 or args.warmup < 0 or (args.threads is not None and args.threads < 1):
            raise RunnerError("bad_args", "num-runs must be >= 1, warmup-runs >= 0, num-threads >= 1")
        if args.min_secs < 0 or args.warmup_min_secs < 0 or not args.max_secs > 0:
            raise RunnerError("bad_args", "min-secs and warmup-min-secs must be >= 0, max-secs > 0")
    return args


def main(argv=None):
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        result = check(args) if args.check else bench(args)
        emit(result)
        return 0
    except RunnerError as exc:
        emit({"ok": False, "error": {"kind": exc.kind, "message": exc.message}})
        return 3
    except SystemExit:
        raise
    except BaseException as exc:  # report, never a bare traceback only
        kind = "internal"
        if isinstance(exc, (IOError, OSError)) and getattr(exc, "errno", None) == 28:
            kind = "disk_full"
        emit({"ok": False, "error": {"kind": kind, "message": "%s: %s" % (type(exc).__name__, exc)}})
        return 3


if __name__ == "__main__":
    sys.exit(main())
