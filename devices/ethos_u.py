"""Backend ``ethos-u``: a microcontroller with an Arm Ethos-U NPU, through Arm's Vela compiler.

On such a board the model that ships is not the converted .tflite but the one Vela rewrote for
the NPU (NPU subgraphs replaced by ``ethos-u`` custom operators that carry the command stream
and the compressed weights). So every model is compiled by Vela with the profile's settings
(``ethos_u`` section: accelerator, system config, memory mode, Vela .ini), and

* latency = Vela's ``inference_time`` (its performance estimator: cycles of the NPU and of the
  memories / the NPU clock), an ESTIMATE: nothing runs on a board;
* RAM = Vela's SRAM (+ DRAM) used + the profile's ``runtime_ram_bytes``;
* flash = Vela's on- and off-chip flash used + the profile's ``runtime_flash_bytes``;
* operators Vela leaves to the CPU (the Cortex-M runs them with TFLite-Micro) are counted (Vela's
  own "CPU operators = N" figure) and named (the built-in operators left in Vela's output, with
  Vela's reason);
* per-layer cycles come from Vela's per-layer CSV (``--verbose-performance``).

Vela runs as a child process (``python -m ethosu.vela`` of the installed ``ethos-u-vela``, or the
executable named by the profile's ``ethos_u.vela`` / ``$EDGEPRUNE_VELA``): its C++ core can abort,
it prints its report to stdout and keeps global state, and a child's crash is just a failed
compilation. Vela missing or failing is a :class:`~edgeprune.errors.DeviceError` (exit 4).

The arithmetic does not change: Vela maps the int8 operators onto the NPU with the same
quantisation, so fidelity is judged on the converted int8 .tflite. The host cannot run Vela's
output (LiteRT has no kernel for the ``ethos-u`` custom operator): :func:`host_run_check` tries
and records what happened; when the output has no NPU operator left it runs it and compares
its outputs with the input model's.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from edgeprune.errors import BadInput, DeviceError
from edgeprune.devices.base import BenchConfig, Device, LatencyStats, Measurement, file_sha256, register
from edgeprune.devices.profile import Profile
from edgeprune.devices.sizes import format_size

__all__ = ["VelaResult", "vela_command", "vela_version", "check_vela", "compile_tflite", "measurement_from_vela",
           "host_run_check", "ENV_VELA", "ESTIMATE_LABEL", "FIDELITY_NOTE"]

ENV_VELA = "EDGEPRUNE_VELA"
KIB = 1024
ESTIMATE_LABEL = "ESTIMATE by Vela's performance model (not measured on a board)"
FIDELITY_NOTE = ("fidelity is judged on the converted int8 .tflite: Vela maps its int8 operators onto the NPU with "
                 "the same quantisation and does not change the arithmetic; the Vela output itself cannot run on the "
                 "host (LiteRT has no kernel for its ethos-u custom operator, which only the NPU driver executes)")
INSTALL_FIX = ("pip install 'ethos-u-vela>=5.2,<6' into the Python that runs edgeprune (it is a dependency: "
               "pip install -c constraints.txt .), or point the profile's ethos_u.vela (or $EDGEPRUNE_VELA) "
               "at a working vela executable")

_CPU_LINE = re.compile(r"^CPU operators = (\d+)")
_NPU_LINE = re.compile(r"^NPU operators = (\d+)")
_WARN = re.compile(r"^Warning \(supported operators\) operator: (\S+), ofm: '(.*)'$")


# --------------------------------------------------------------------------- the Vela command
def vela_command(profile: Profile) -> tuple[list[str], str]:
    """The argv prefix that runs Vela, and where it came from (env, profile or the installed module).

    Raises DeviceError (exit 4) when there is none: the named executable does not exist, or
    ``ethos-u-vela`` is not installed.
    """
    spec = profile.ethos_u
    named = os.environ.get(ENV_VELA) or (spec.vela if spec is not None else None)
    if named:
        src = f"${ENV_VELA}" if os.environ.get(ENV_VELA) else "the profile's ethos_u.vela"
        path = shutil.which(os.path.expanduser(named))
        if path is None:
            raise DeviceError(f"{profile.name}: Vela not found: {named!r} ({src}) is not an executable",
                              INSTALL_FIX)
        return [path], src
    if importlib.util.find_spec("ethosu") is not None and importlib.util.find_spec("ethosu.vela") is not None:
        return [sys.executable, "-m", "ethosu.vela"], "the installed ethos-u-vela package"
    path = shutil.which("vela")
    if path is not None:
        return [path], "vela on PATH"
    raise DeviceError(f"{profile.name}: Vela (the Ethos-U compiler, package ethos-u-vela) is not installed", INSTALL_FIX)


def _run(argv: list[str], timeout: float, what: str, name: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.setdefault("PYTHONHASHSEED", "0")
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except FileNotFoundError:
        raise DeviceError(f"{name}: Vela not found ({argv[0]!r} does not exist)", INSTALL_FIX) from None
    except PermissionError:
        raise DeviceError(f"{name}: Vela cannot be started ({argv[0]!r} is not executable)", INSTALL_FIX) from None
    except subprocess.TimeoutExpired:
        raise DeviceError(f"{name}: Vela took longer than {timeout:g} s {what}",
                          "raise the profile's ethos_u.timeout_s, or check the model") from None


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1][:400] if lines else "(no output)"


_VERSIONS: dict = {}


def vela_version(profile: Profile) -> str:
    argv, _ = vela_command(profile)
    key = tuple(argv)
    if key not in _VERSIONS:
        res = _run(argv + ["--version"], 120, "to print its version", profile.name)
        text = (res.stdout or "").strip()
        if res.returncode != 0 or not re.match(r"^\d+\.\d+", text):
            raise DeviceError(f"{profile.name}: Vela does not start ({' '.join(argv)} --version exited {res.returncode}: "
                              f"{_last_line(res.stderr or res.stdout)})", INSTALL_FIX)
        _VERSIONS[key] = text.splitlines()[0]
    return _VERSIONS[key]


def _config_file_arg(spec) -> str:
    """Vela's --config argument: a file of the user's (expanded), or a name of Vela's shipped ones."""
    p = Path(os.path.expanduser(spec.config_file))
    return str(p) if p.is_file() else spec.config_file


def check_vela(profile: Profile) -> dict:
    """Vela starts, and its config file has the profile's system config and memory mode.

    Raises DeviceError (exit 4) when Vela is missing or does not start; a system config or
    memory mode the .ini lacks is a DeviceError too (Vela would refuse every model)."""
    spec = profile.ethos_u
    argv, source = vela_command(profile)
    version = vela_version(profile)
    cfg = _config_file_arg(spec)
    res = _run(argv + ["--list-configs", cfg], 120, "to list its configurations", profile.name)
    if res.returncode != 0:
        raise DeviceError(f"{profile.name}: Vela cannot read its config file {spec.config_file!r}: "
                          f"{_last_line(res.stderr or res.stdout)}",
                          "set ethos_u.config_file to a Vela .ini (`vela --list-config-files` lists the shipped ones)")
    sections = {ln.strip() for ln in res.stdout.splitlines()}
    missing = []
    for kind, value in (("System_Config", spec.system_config), ("Memory_Mode", spec.memory_mode)):
        if f"{kind}.{value}" not in sections:
            known = sorted(s.split(".", 1)[1] for s in sections if s.startswith(kind + "."))
            missing.append({"what": f"{kind}.{value} in {spec.config_file}",
                            "fix": f"set ethos_u.{kind.lower()} to one of: {', '.join(known)}"})
    return {"ok": not missing, "mode": "check", "kind": "ethos-u", "vela_version": version, "vela": " ".join(argv),
            "vela_source": source, "accelerator_config": spec.accelerator_config,
            "system_config": spec.system_config, "memory_mode": spec.memory_mode, "config_file": spec.config_file,
            "optimise": spec.optimise, "core": spec.core,
            "note": "nothing to connect to: every model is compiled by Vela on the host; flash, SRAM and latency are "
                    "Vela's estimates", "missing": missing}


# --------------------------------------------------------------------------- compiling
@dataclass
class VelaResult:
    """One Vela compilation of one .tflite: Vela's summary figures, its CPU fallbacks, per-layer cycles."""

    vela_version: str
    config: dict  # accelerator_config, system_config, memory_mode, config_file, optimise, arena_cache_size
    key: str  # what makes two compilations the same (version + config)
    input_sha256: str
    inference_time_ms: float
    inferences_per_second: float
    core_clock_hz: float
    sram_bytes: int
    dram_bytes: int
    on_chip_flash_bytes: int
    off_chip_flash_bytes: int
    weights_storage_area: str
    feature_map_storage_area: str
    cycles_npu: int
    cycles_total: int
    nn_macs: int
    original_weights_bytes: int
    npu_encoded_weights_bytes: int
    cpu_ops: int  # Vela's "CPU operators = N"
    npu_ops: int  # Vela's "NPU operators = M"
    npu_share: float  # npu_ops / (cpu_ops + npu_ops)
    cpu_operators: list = field(default_factory=list)  # [{"op", "name", "reason"}] left for the CPU
    vela_ops: list = field(default_factory=list)  # the operators of Vela's output, in order
    per_layer: list = field(default_factory=list)  # rows of Vela's per-layer CSV
    vela_tflite_bytes: int = 0
    vela_tflite_sha256: str = ""
    host_run: dict = field(default_factory=dict)  # host_run_check(): can LiteRT on the host run the output?
    seconds: float = 0.0
    command: list = field(default_factory=list)
    estimate: str = ESTIMATE_LABEL

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self) -> dict:
        """The figures without the per-layer rows (for every candidate of a run)."""
        d = self.to_dict()
        d.pop("per_layer")
        d.pop("command")
        return d

    def config_text(self) -> str:
        c = self.config
        return (f"ethos-u-vela {self.vela_version}, {c['accelerator_config']}, system {c['system_config']}, "
                f"memory mode {c['memory_mode']}, {c['config_file']}, optimise {c['optimise']}")


def config_of(profile: Profile) -> dict:
    s = profile.ethos_u
    return {"accelerator_config": s.accelerator_config, "system_config": s.system_config,
            "memory_mode": s.memory_mode, "config_file": s.config_file, "optimise": s.optimise,
            "arena_cache_size": s.arena_cache_size}


def config_key(profile: Profile) -> str:
    """Vela's version and the options that change its output (a user .ini by its content)."""
    cfg = config_of(profile)
    p = Path(os.path.expanduser(cfg["config_file"]))
    if p.is_file():
        cfg["config_file"] = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    return f"vela={vela_version(profile)}|" + "|".join(f"{k}={v}" for k, v in sorted(cfg.items()))


def _num(row: dict, key: str, default: float = 0.0) -> float:
    try:
        return float(row.get(key, default) or default)
    except ValueError:
        return default


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


_PER_LAYER_FIELDS = {"Original Operator": "original_op", "NNG Operator": "op", "Target": "target",
                     "Op Cycles": "cycles", "Network% (cycles)": "cycles_pct", "NPU": "npu_cycles",
                     "SRAM AC": "sram_access_cycles", "DRAM AC": "dram_access_cycles",
                     "OnFlash AC": "on_chip_flash_access_cycles", "OffFlash AC": "off_chip_flash_access_cycles",
                     "MAC Count": "macs", "Util% (MAC)": "mac_util_pct", "Staging Usage": "staging_bytes",
                     "Name": "name"}


def _per_layer(rows: list[dict]) -> list[dict]:
    out = []
    for row in rows:
        d = {}
        for src, dst in _PER_LAYER_FIELDS.items():
            v = row.get(src)
            if dst in ("original_op", "op", "target", "name"):
                d[dst] = v
            elif dst.endswith("_pct"):
                d[dst] = round(_num(row, src), 3)
            else:
                d[dst] = int(round(_num(row, src)))
        out.append(d)
    return out


_CACHE: dict = {}  # (input sha256, config key) -> (VelaResult, Vela's .tflite bytes), for this process
_CACHE_MAX = 64


def _operator_counts(stdout: str, name: str) -> tuple[int, int]:
    """Vela's 'CPU operators = N' and 'NPU operators = M' lines (DeviceError without them)."""
    cpu_ops = npu_ops = None
    for line in stdout.splitlines():
        if (m := _CPU_LINE.match(line.strip())):
            cpu_ops = int(m.group(1))
        elif (m := _NPU_LINE.match(line.strip())):
            npu_ops = int(m.group(1))
    if cpu_ops is None or npu_ops is None:
        raise DeviceError(f"{name}: Vela's report has no 'CPU operators = N' / 'NPU operators = M' lines",
                          "use ethos-u-vela 5.x (the version edgeprune was tested with: 5.2.0)")
    return cpu_ops, npu_ops


def compile_tflite(profile: Profile, tflite_path, vela_out: Optional[Path] = None, *, timeout: Optional[float] = None,
                   model_sha256: Optional[str] = None) -> VelaResult:
    """Compile ``tflite_path`` with Vela as the profile says; copy Vela's .tflite to ``vela_out``.

    A compilation is done once per (model sha256, Vela version and configuration) in this process.
    Raises DeviceError (exit 4) when Vela is missing or fails on the model.
    """
    tflite_path = Path(tflite_path)
    sha = model_sha256 or file_sha256(tflite_path)
    key = config_key(profile)
    hit = _CACHE.get((sha, key))
    if hit is not None:
        result, data = hit
        if vela_out is not None:
            _write(Path(vela_out), data)
        return result
    spec = profile.ethos_u
    argv, _ = vela_command(profile)
    with tempfile.TemporaryDirectory(prefix="edgeprune-vela-run-") as tmp:
        tmp = Path(tmp)
        model = tmp / "model.tflite"  # a fixed, short name: Vela names its outputs after the input
        shutil.copyfile(tflite_path, model)
        out_dir = tmp / "out"
        args = [str(model), "--output-dir", str(out_dir), "--accelerator-config", spec.accelerator_config,
                "--config", _config_file_arg(spec), "--system-config", spec.system_config,
                "--memory-mode", spec.memory_mode, "--optimise", spec.optimise, "--verbose-performance"]
        if spec.arena_cache_size is not None:
            args += ["--arena-cache-size", str(int(spec.arena_cache_size))]
        t0 = time.perf_counter()
        res = _run(argv + args, timeout or spec.timeout_s, f"to compile {tflite_path.name}", profile.name)
        seconds = time.perf_counter() - t0
        if res.returncode != 0:
            raise DeviceError(f"{profile.name}: Vela failed on {tflite_path.name} (exit {res.returncode}): "
                              f"{_last_line(res.stderr or res.stdout)}",
                              f"check the profile's ethos_u settings ({spec.accelerator_config}, system "
                              f"{spec.system_config}, memory mode {spec.memory_mode}) and that the model is a "
                              f"full-int8 .tflite (--quantize int8); run `{' '.join(argv)} {tflite_path}` to see "
                              f"Vela's whole message")
        summaries = sorted(out_dir.glob("model_summary_*.csv"))
        vela_tfl = out_dir / "model_vela.tflite"
        if not summaries or not vela_tfl.is_file():
            raise DeviceError(f"{profile.name}: Vela wrote no summary or no model for {tflite_path.name} "
                              f"(found: {', '.join(p.name for p in out_dir.glob('*')) or 'nothing'})",
                              "check that this Vela writes <name>_summary_<system>.csv and <name>_vela.tflite "
                              "(ethos-u-vela 5.x does)")
        srow = _read_csv(summaries[0])[0]
        per_layer_csv = out_dir / "model_per-layer.csv"
        per_layer = _per_layer(_read_csv(per_layer_csv)) if per_layer_csv.is_file() else []
        cpu_ops, npu_ops = _operator_counts(res.stdout, profile.name)
        reasons = _reasons(res.stdout + "\n" + res.stderr)  # (its C++ core writes them to either)
        vela_ops, cpu_named = _output_ops(vela_tfl)
        for op in cpu_named:
            op["reason"] = reasons.get(op["name"])
        data = vela_tfl.read_bytes()
        total = cpu_ops + npu_ops
        result = VelaResult(
            vela_version=vela_version(profile), config=config_of(profile), key=key, input_sha256=sha,
            inference_time_ms=_num(srow, "inference_time") * 1000.0,
            inferences_per_second=_num(srow, "inferences_per_second"),
            core_clock_hz=_num(srow, "core_clock"),
            sram_bytes=int(round(_num(srow, "sram_memory_used") * KIB)),
            dram_bytes=int(round(_num(srow, "dram_memory_used") * KIB)),
            on_chip_flash_bytes=int(round(_num(srow, "on_chip_flash_memory_used") * KIB)),
            off_chip_flash_bytes=int(round(_num(srow, "off_chip_flash_memory_used") * KIB)),
            weights_storage_area=srow.get("weights_storage_area", ""),
            feature_map_storage_area=srow.get("feature_map_storage_area", ""),
            cycles_npu=int(_num(srow, "cycles_npu")), cycles_total=int(_num(srow, "cycles_total")),
            nn_macs=int(_num(srow, "nn_macs")),
            original_weights_bytes=int(_num(srow, "total_original_weights")),
            npu_encoded_weights_bytes=int(_num(srow, "total_npu_encoded_weights")),
            cpu_ops=cpu_ops, npu_ops=npu_ops, npu_share=round(npu_ops / total, 6) if total else 0.0,
            cpu_operators=cpu_named, vela_ops=vela_ops, per_layer=per_layer,
            vela_tflite_bytes=vela_tfl.stat().st_size, vela_tflite_sha256=file_sha256(vela_tfl),
            host_run=host_run_check(vela_tfl, tflite_path), seconds=round(seconds, 3),
            command=["vela", tflite_path.name] + [a if a != str(out_dir) else "OUT" for a in args[1:]],
        )
    _CACHE[(sha, key)] = (result, data)
    while len(_CACHE) > _CACHE_MAX:  # a run compiles each candidate once; keep memory bounded
        _CACHE.pop(next(iter(_CACHE)))
    if vela_out is not None:
        _write(Path(vela_out), data)
    return result


def _write(dst: Path, data: bytes) -> None:
    from edgeprune.pipeline.atomic import replace_atomic

    replace_atomic(dst, lambda tmp: Path(tmp).write_bytes(data))


def _reasons(text: str) -> dict:
    """Vela's 'Warning (supported operators) operator: OP, ofm: NAME' + 'Reason: ...' pairs, by NAME."""
    out: dict = {}
    lines = (text or "").splitlines()
    for i, line in enumerate(lines):
        m = _WARN.match(line.strip())
        if m:
            nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
            out[m.group(2)] = nxt.removeprefix("Reason: ") if nxt.startswith("Reason:") else None
    return out


def _output_ops(vela_tflite: Path) -> tuple[list[str], list[dict]]:
    """The operators of Vela's output (``ethos-u`` for each NPU part) and the built-in ones left for
    the CPU, each with its output tensor's name; read with the LiteRT interpreter (no allocation)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(vela_tflite))
    tensors = {t["index"]: t["name"] for t in interp.get_tensor_details()}
    ops, cpu = [], []
    for op in interp._get_ops_details():
        name = op["op_name"]
        ops.append(name)
        if name != "ethos-u":
            outs = [int(i) for i in op["outputs"]]
            cpu.append({"op": name, "name": tensors.get(outs[0], "") if outs else ""})
    return ops, cpu


def host_run_check(vela_tflite: Path, tflite_path: Path, samples: int = 4) -> dict:
    """Can LiteRT on the host run Vela's output? With an ``ethos-u`` operator it cannot (no kernel):
    the message is recorded. Without one (every operator on the CPU) it runs it and the input model
    on the same seeded inputs and says whether the outputs are identical."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from edgeprune.pipeline.convert.xnnpack import xnnpack_requant_hazard

    for path in (vela_tflite, tflite_path):  # XNNPACK would abort the process preparing it
        hazard = xnnpack_requant_hazard(Path(path).read_bytes())
        if hazard is not None:
            return {"ran": False, "identical": None,
                    "message": f"not run on the host: {hazard.op} '{hazard.tensor}' output scale {hazard.output_scale:.3g} "
                               f"(requantization scale {hazard.requant_scale:.4g}) would abort ai-edge-litert's XNNPACK"}
    try:
        vi = Interpreter(model_path=str(vela_tflite))
        vi.allocate_tensors()
    except Exception as exc:  # noqa: BLE001 - the expected outcome with an NPU operator
        msg = " ".join(str(exc).split())[:300]
        return {"ran": False, "identical": None, "message": msg}
    ti = Interpreter(model_path=str(tflite_path))
    ti.allocate_tensors()
    rng = np.random.default_rng(0)
    same = True
    for _ in range(samples):
        feeds = []
        for d in ti.get_input_details():
            dt = np.dtype(d["dtype"])
            if np.issubdtype(dt, np.integer):
                info = np.iinfo(dt)
                feeds.append(rng.integers(info.min, info.max + 1, size=d["shape"], dtype=dt))
            else:
                feeds.append(rng.random(size=d["shape"]).astype(dt))
        outs = []
        for it in (ti, vi):
            for d, x in zip(it.get_input_details(), feeds):
                it.set_tensor(d["index"], x)
            it.invoke()
            outs.append([it.get_tensor(d["index"]).copy() for d in it.get_output_details()])
        same = same and all(np.array_equal(a, b) for a, b in zip(outs[0], outs[1]))
    return {"ran": True, "identical": bool(same),
            "message": f"LiteRT ran Vela's output (no NPU operator) and the input model on {samples} seeded inputs: "
                       + ("identical outputs" if same else "DIFFERENT outputs")}


# --------------------------------------------------------------------------- the measurement
def measurement_from_vela(profile: Profile, tflite_path: Path, v: VelaResult) -> Measurement:
    spec = profile.ethos_u
    ms = v.inference_time_ms
    model_bytes = Path(tflite_path).stat().st_size
    ram = v.sram_bytes + v.dram_bytes + int(spec.runtime_ram_bytes)
    flash = v.on_chip_flash_bytes + v.off_chip_flash_bytes + int(spec.runtime_flash_bytes)
    cfg = v.config_text()
    return Measurement(
        device=profile.name, kind="ethos-u",
        latency_ms=LatencyStats(median=ms, p90=ms, mean=ms, std=0.0, min=ms, max=ms),
        runs=0, warmup=0, threads=1, load_ms=None, first_inference_ms=None, peak_rss_bytes=None,
        runtime="ethos-u-vela", runtime_version=v.vela_version, arch=spec.accelerator_config, python_version=None,
        output_checksum=None, model_bytes=model_bytes, model_sha256=v.input_sha256,
        ram_bytes=ram, flash_bytes=flash,
        measured={"latency": False, "load": False, "first_inference": False, "ram": False, "flash": False,
                  "output": False},
        estimates={
            "latency": f"{ESTIMATE_LABEL}: inference_time {ms:.4f} ms = {v.cycles_total:,} cycles at "
                       f"{v.core_clock_hz / 1e6:g} MHz ({cfg})",
            "ram": f"Vela's SRAM used ({format_size(v.sram_bytes)})"
                   + (f" + DRAM used ({format_size(v.dram_bytes)})" if v.dram_bytes else "")
                   + f" + profile runtime_ram_bytes ({format_size(spec.runtime_ram_bytes)}) ({cfg})",
            "flash": f"Vela's flash used (off-chip {format_size(v.off_chip_flash_bytes)}, on-chip "
                     f"{format_size(v.on_chip_flash_bytes)}) + profile runtime_flash_bytes "
                     f"({format_size(spec.runtime_flash_bytes)}) ({cfg})",
        },
        extra={"vela": v.to_dict(), "estimate": True},
        settings={},
    )


@register("ethos-u")
class EthosUDevice(Device):
    """No transport: put/run/get are not available; bench() compiles with Vela and reads its estimate."""

    def put(self, local_path, remote_name):
        raise BadInput(f"{self.profile.name} is an Ethos-U microcontroller: nothing to copy files to",
                       "use `edgeprune bench` (it compiles with Vela on the host)")

    def run(self, argv, timeout):
        raise BadInput(f"{self.profile.name} is an Ethos-U microcontroller: nothing to run commands on",
                       "use `edgeprune bench` (it compiles with Vela on the host)")

    def get(self, remote_name):
        raise BadInput(f"{self.profile.name} is an Ethos-U microcontroller: nothing to read from", "use `edgeprune bench`")

    def check(self) -> dict:
        return check_vela(self.profile)

    def bench(self, tflite_path: Path, config: BenchConfig) -> Measurement:
        v = compile_tflite(self.profile, tflite_path, timeout=config.timeout)
        return measurement_from_vela(self.profile, tflite_path, v)
