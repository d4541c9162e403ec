"""The board runner and the local backend (same code path as a board)."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ci_guard import skip_or_fail
from edgeprune.cli import run_cli
from edgeprune.devices.base import RUNNER_PATH, BenchConfig, measure
from edgeprune.devices.profile import load_profile
from edgeprune.errors import BadInput, DeviceError

ROOT = Path(__file__).resolve().parents[1]
VENVS = Path(os.environ.get("EDGEPRUNE_VENVS", "/opt/edgeprune-venvs"))


@pytest.fixture(scope="session")
def board_venvs():
    """Pythons with ONLY tflite_runtime / ONLY ai_edge_litert (made by .ci/board-venvs.sh)."""
    pys = {"tflite_runtime": VENVS / "tflite-runtime" / "bin" / "python", "ai_edge_litert": VENVS / "litert" / "bin" / "python"}
    if not all(p.exists() for p in pys.values()):
        try:
            subprocess.run(["bash", str(ROOT / ".ci" / "board-venvs.sh")], check=True, timeout=900)
        except Exception as exc:  # pragma: no cover - depends on the machine
            skip_or_fail(f"board-runner venvs not available (bash .ci/board-venvs.sh): {exc}")
    return pys


def test_runner_is_python37_syntax():
    ast.parse(RUNNER_PATH.read_text(), feature_version=(3, 7))


def _run(py, *args):
    proc = subprocess.run([str(py), str(RUNNER_PATH), *map(str, args)], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("runtime", ["tflite_runtime", "ai_edge_litert"])
def test_runner_under_each_runtime(board_venvs, device_models, runtime):
    code, rep = _run(board_venvs[runtime], device_models["small"], "--runs", 10, "--warmup", 2, "--threads", 1)
    assert code == 0 and rep["ok"], rep
    assert rep["runtime"] == runtime and rep["runtime_version"]
    lat = rep["latency_ms"]
    assert 0 < lat["min"] <= lat["median"] <= lat["p90"] <= lat["max"]
    assert rep["peak_rss_bytes"] > 10 * 2**20 and rep["arch"] and rep["python_version"]
    assert len(rep["output_checksum"]) == 64


def test_runner_no_runtime_is_clear_json(board_venvs, device_models):
    code, rep = _run(board_venvs["tflite_runtime"], device_models["small"], "--accept", "ai_edge_litert")
    assert code == 3 and rep["error"]["kind"] == "no_runtime"


def test_runner_check_mode(board_venvs):
    code, rep = _run(board_venvs["tflite_runtime"], "--check")
    assert code == 0 and rep["runtime"] == "tflite_runtime" and not rep["missing"]
    code, rep = _run(board_venvs["tflite_runtime"], "--check", "--accept", "ai_edge_litert")
    assert rep["runtime"] is None and rep["missing"] and "ai-edge-litert" in rep["missing"][0]["fix"]


def test_checksum_deterministic_and_input_sensitive(device_models):
    m1 = measure("local", device_models["small"], BenchConfig(runs=3, warmup=1))
    m2 = measure("local", device_models["small"], BenchConfig(runs=3, warmup=1))
    assert m1.output_checksum == m2.output_checksum
    x = np.ones((1, 64, 64, 3), np.float32)
    m3 = measure("local", device_models["small"], BenchConfig(runs=3, warmup=1, inputs=x))
    m4 = measure("local", device_models["small"], BenchConfig(runs=3, warmup=1, inputs=x))
    assert m3.output_checksum == m4.output_checksum != m1.output_checksum


def test_local_measurement(device_models):
    m = measure("local", device_models["small"], BenchConfig(runs=20, warmup=3))
    d = m.to_dict()
    for key in ("latency_ms", "runs", "warmup", "threads", "load_ms", "first_inference_ms", "peak_rss_bytes",
                "runtime", "runtime_version", "arch", "python_version", "output_checksum", "model_bytes",
                "model_sha256", "device", "kind", "measured", "estimates"):
        assert key in d
    assert m.runs >= 20 and m.warmup >= 3 and m.threads == 1 and m.measured["latency"] is True
    assert m.runtime == "ai_edge_litert" and m.model_bytes == device_models["small"].stat().st_size


def test_local_profile_with_other_python(tmp_path, board_venvs, device_models):
    p = tmp_path / "tfrt.yaml"
    p.write_text(f"kind: local\nruntime: {{python: {board_venvs['tflite_runtime']}}}\nthreads: 1\n"
                 "limits: {flash_bytes: 1MB, ram_bytes: 1GB}\n")
    m = measure(load_profile(p), device_models["small"], BenchConfig(runs=5))
    assert m.runtime == "tflite_runtime"
    p.write_text(p.read_text().replace("python:", "accept: [tensorflow], python:"))
    with pytest.raises(DeviceError) as exc:
        measure(load_profile(p), device_models["small"], BenchConfig(runs=5))
    assert "no TFLite runtime" in exc.value.message and "pip install" in exc.value.hint


def test_bad_model_and_args(tmp_path, device_models):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\0" * 4 + b"TFL3" + os.urandom(200))
    with pytest.raises((BadInput, DeviceError)):
        measure("local", bad, BenchConfig(runs=2))
    with pytest.raises(BadInput):
        measure("local", tmp_path / "missing.tflite")
    with pytest.raises(BadInput):
        BenchConfig(runs=0)


def test_cli_bench_local(device_models, capsys):
    assert run_cli(["bench", str(device_models["small"]), "--device", "local", "--runs", "5", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["device"] == "local" and d["runs"] >= 5 and d["latency_ms"]["median"] > 0
    assert run_cli(["bench", str(device_models["small"]), "-d", "local", "--runs", "5"]) == 0
    assert "latency p50 / p90 / p99" in capsys.readouterr().out
    assert run_cli(["devices", "check", "local"]) == 0
    assert run_cli(["bench", str(device_models["small"]), "-d", "local", "--runs", "0"]) == 2


@pytest.mark.parametrize("sig", ["INT", "TERM"])
def test_interrupted_local_bench_leaves_no_process(tmp_path, device_models, sig):
    """Ctrl-C / SIGTERM of `bench --device local` while the board runner runs under a
    runtime.python wrapper (its child outlives a plain kill of the wrapper): the whole process
    group is ended and waited for before edgeprune exits (issue 20)."""
    import signal
    import time

    log = tmp_path / "runs.log"
    wrapper = tmp_path / "py.sh"
    wrapper.write_text("#!/bin/sh\n"
                       f"trap 'sleep 1; echo dead >> {log}; exit 143' TERM\n"
                       f"echo start >> {log}\n"  # after the trap: the test interrupts once it reads it
                       f"{sys.executable} \"$@\" &\nwait $!\nrc=$?\n"
                       f"echo end >> {log}\nexit $rc\n")
    wrapper.chmod(0o755)
    prof = tmp_path / "wrapped.yaml"
    prof.write_text(f"kind: local\nruntime:\n  python: {wrapper}\nthreads: 1\n"
                    "limits:\n  flash_bytes: 100MB\n  ram_bytes: 2GiB\n")

    def runner_procs():
        out = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
                    state = next(ln.split()[1] for ln in (d / "status").read_text().splitlines() if ln.startswith("State:"))
                except (OSError, StopIteration):
                    continue
                # (only this test's: its work dirs are under its own TMPDIR; other edgeprune runs may be measuring)
                if state != "Z" and (str(wrapper) in cmd or ("board_runner.py" in cmd and f"{tmp}/edgeprune-local-" in cmd)):
                    out.append(cmd)
        return out

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TMPDIR=str(tmp))
    p = subprocess.Popen([sys.executable, "-m", "edgeprune", "bench", str(device_models["small"]), "--device", str(prof),
                          "--runs", "100000", "--min-secs", "30", "--max-secs", "60", "--warmup", "1",
                          "--warmup-min-secs", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         stdin=subprocess.DEVNULL, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not any("board_runner.py" in c and str(wrapper) not in c for c in runner_procs()):
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.05)
    time.sleep(1.5)
    p.send_signal(getattr(signal, "SIG" + sig))
    out, err = p.communicate(timeout=120)
    assert p.returncode == (130 if sig == "INT" else 143), err
    assert "Traceback" not in err
    assert runner_procs() == []  # nothing of the measurement outlives edgeprune
    assert log.read_text().split() == ["start", "dead"]  # the wrapper was ended (TERM) and waited for
    time.sleep(1.0)
    assert log.read_text().split() == ["start", "dead"] and runner_procs() == []
