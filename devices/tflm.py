"""TFLite-Micro tensor arena size, measured on the host with the tflite-micro interpreter.

``measure_arena(path)`` runs the TFLM Python interpreter in a CHILD process (a too-small arena
or an unsupported model can abort the process; a child's crash is just a failed attempt):

1. try a generous arena, growing x4 until the model allocates and one inference runs; the
   RecordingMicroAllocator then reports "Arena allocation total N bytes" (print_allocations,
   on the child's stderr);
2. verify N itself works; if not (alignment slack), binary-search between N and the size
   that worked. The result is the smallest arena verified to run the model.

A model TFLM cannot run (an op it has no kernel for, a type it does not support) raises
:class:`~edgeprune.errors.UnsupportedModel` with TFLM's own message.

Run as ``python -m edgeprune.devices.tflm MODEL ARENA_BYTES`` it is the child.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from edgeprune.errors import BadInput, UnsupportedModel

__all__ = ["ArenaResult", "measure_arena", "try_arena"]

_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")
_HEAD = re.compile(r"Arena allocation head (\d+) bytes")
_TAIL = re.compile(r"Arena allocation tail (\d+) bytes")
_ALLOC_FAIL = ("Failed to allocate", "Failed starting model allocation", "failed to allocate", "Arena size is too small",
               "missing:")

MAX_ARENA = 512 * 1024 * 1024


@dataclass
class Attempt:
    arena_size: int
    ok: bool
    reported_total: Optional[int] = None
    head: Optional[int] = None
    tail: Optional[int] = None
    returncode: Optional[int] = None
    message: str = ""
    seconds: float = 0.0

    @property
    def allocation_failure(self) -> bool:
        return any(s in self.message for s in _ALLOC_FAIL)


@dataclass
class ArenaResult:
    """``arena_bytes``: smallest arena verified to run the model (what to reserve on the MCU)."""

    arena_bytes: int
    reported_total_bytes: int  # what TFLM's RecordingMicroAllocator said it used
    head_bytes: Optional[int]
    tail_bytes: Optional[int]
    tflm_version: Optional[str]
    attempts: list = field(default_factory=list)  # (arena_size, ok) pairs, in order
    seconds: float = 0.0
    method: str = "tflite-micro RecordingMicroAllocator on the host, verified by re-running with that arena"

    def to_dict(self) -> dict:
        import dataclasses

        return dataclasses.asdict(self)


def try_arena(tflite_path, arena_size: int, timeout: float = 60) -> Attempt:
    """Run the model once in a child TFLM interpreter with ``arena_size``; never raises on failure."""
    t0 = time.perf_counter()
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        proc = subprocess.run([sys.executable, "-m", "edgeprune.devices.tflm", os.fspath(tflite_path), str(int(arena_size))],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return Attempt(arena_size, False, message=f"timed out after {timeout:g} s", seconds=time.perf_counter() - t0)
    a = Attempt(arena_size, False, returncode=proc.returncode, seconds=time.perf_counter() - t0)
    report = None
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            try:
                report = json.loads(line)
            except ValueError:
                pass
    err = proc.stderr
    for rx, attr in ((_TOTAL, "reported_total"), (_HEAD, "head"), (_TAIL, "tail")):
        m = rx.search(err)
        if m:
            setattr(a, attr, int(m.group(1)))
    a.ok = proc.returncode == 0 and bool(report and report.get("ok"))
    if not a.ok:
        lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("[RecordingMicroAllocator]")
                 and not ln.startswith("Traceback") and not ln.startswith("  ")]
        msg = "; ".join(lines[-6:])
        if report and report.get("error"):
            msg = (msg + "; " if msg else "") + report["error"]
        if proc.returncode and proc.returncode < 0:
            msg = (msg + "; " if msg else "") + f"child killed by signal {-proc.returncode}"
        a.message = msg or f"exit {proc.returncode}"
    return a


def _tflm_version() -> Optional[str]:
    try:
        from importlib import metadata

        return metadata.version("tflite-micro")
    except Exception:
        return None


def measure_arena(tflite_path, timeout: float = 60, *, start_bytes: Optional[int] = None,
                  max_bytes: int = MAX_ARENA) -> ArenaResult:
    """Smallest TFLite-Micro tensor arena that runs ``tflite_path`` (int8 or float models).

    ``timeout`` bounds each child run. Raises BadInput for a missing file and UnsupportedModel
    when TFLM cannot run the model at any arena size.
    """
    path = Path(tflite_path)
    if not path.is_file():
        raise BadInput(f"model {path} does not exist", "pass the path of a .tflite file")
    with open(path, "rb") as f:
        if f.read(8)[4:8] != b"TFL3":
            raise BadInput(f"{path} is not a TFLite flatbuffer (no TFL3 identifier)", "pass a .tflite file")
    t0 = time.perf_counter()
    model_size = path.stat().st_size
    size = int(start_bytes or max(64 * 1024, 4 * model_size))
    attempts: list[Attempt] = []
    ok: Optional[Attempt] = None
    while True:
        a = try_arena(path, size, timeout)
        attempts.append(a)
        if a.ok:
            ok = a
            break
        crashed = a.returncode is not None and a.returncode < 0
        if not a.allocation_failure and not crashed:
            raise UnsupportedModel(f"TFLite-Micro cannot run {path.name}: {a.message}",
                                   "TFLM supports int8 (and float) builtin ops only: use full-integer quantization "
                                   "and ops TFLM has kernels for")
        if size >= max_bytes:
            raise UnsupportedModel(f"TFLite-Micro could not run {path.name} even with a {size}-byte arena: {a.message}",
                                   "check the model is a valid .tflite with ops TFLM supports")
        size = min(size * 4, max_bytes)
    reported = ok.reported_total or ok.arena_size
    lo_fail = max([x.arena_size for x in attempts if not x.ok and x.arena_size < ok.arena_size] or [0])
    best = ok.arena_size
    if reported < best:
        a = try_arena(path, reported, timeout)
        attempts.append(a)
        if a.ok:
            best = reported
        else:
            lo = max(reported, lo_fail)
            hi = best  # works
            while hi - lo > 64:
                mid = (lo + hi) // 2
                a = try_arena(path, mid, timeout)
                attempts.append(a)
                if a.ok:
                    hi = mid
                else:
                    lo = mid
            best = hi
    return ArenaResult(
        arena_bytes=int(best),
        reported_total_bytes=int(reported),
        head_bytes=ok.head,
        tail_bytes=ok.tail,
        tflm_version=_tflm_version(),
        attempts=[(x.arena_size, x.ok) for x in attempts],
        seconds=time.perf_counter() - t0,
    )


def _child(model_path: str, arena_size: int) -> int:
    """Child: allocate, run once on zeros, print the allocations (stderr) and JSON (stdout)."""
    import numpy as np
    from tflite_micro import runtime

    data = Path(model_path).read_bytes()
    try:
        interp = runtime.Interpreter.from_bytes(data, arena_size=arena_size)
        i = 0
        while True:
            try:
                d = interp.get_input_details(i)
            except Exception:
                break
            interp.set_input(np.zeros(d["shape"], dtype=d["dtype"]), i)
            i += 1
            if i > 64:
                break
        interp.invoke()
        sys.stdout.flush()
        interp.print_allocations()
    except Exception as exc:  # the C++ side's messages are already on stderr
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    print(json.dumps({"ok": True, "arena_size": arena_size}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], int(sys.argv[2])))
