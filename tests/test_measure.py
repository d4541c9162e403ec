"""Time-based measurement (TFLite benchmark_model's rules) in the board runner, BenchConfig,
every backend (local, ssh over the real loopback sshd, mcu) and ``edgeprune bench``."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

import sshd as sshd_helper
from edgeprune.cli import run_cli
from edgeprune.devices.base import RUNNER_PATH, BenchConfig, measure, run_timeout
from edgeprune.devices.profile import load_profile
from edgeprune.errors import BadInput


def _runner(model, *args):
    proc = subprocess.run([sys.executable, str(RUNNER_PATH), str(model), *map(str, args)], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    rep = json.loads(proc.stdout.strip().splitlines()[-1])
    return proc.returncode, rep


def _check_stats(lat, n):
    assert 0 < lat["min"] <= lat["p25"] <= lat["p50"] <= lat["p75"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert lat["median"] == lat["p50"]
    assert lat["iqr"] == pytest.approx(lat["p75"] - lat["p25"])
    assert 0 <= lat["mad"] <= lat["max"] - lat["min"]
    assert lat["n"] == n


def test_runner_time_based(device_models):
    t0 = time.perf_counter()
    code, rep = _runner(device_models["small"], "--num-runs", 5, "--warmup-runs", 2, "--min-secs", 0.4,
                        "--warmup-min-secs", 0.2, "--num-threads", 1)
    wall = time.perf_counter() - t0
    assert code == 0 and rep["ok"], rep
    assert rep["timed_s"] >= 0.4 and rep["warmup_s"] >= 0.2 and wall >= 0.6
    # ~0.1-1 ms per inference: 0.4 s of timing is many more than the 5 asked for
    assert rep["runs"] > 5 and rep["warmup"] > 2 and not rep["capped"]
    _check_stats(rep["latency_ms"], rep["runs"])
    assert rep["requested"] == {"num_runs": 5, "warmup_runs": 2, "min_secs": 0.4, "max_secs": 150.0,
                                "warmup_min_secs": 0.2}
    assert rep["loadavg_1m"] >= 0 and rep["load_per_core"] == pytest.approx(rep["loadavg_1m"] / rep["cpu_count"])


def test_runner_fixed_count_and_old_names(device_models):
    code, rep = _runner(device_models["small"], "--runs", 7, "--warmup", 3, "--threads", 1, "--min-secs", 0,
                        "--warmup-min-secs", 0)
    assert code == 0, rep
    assert rep["runs"] == 7 and rep["warmup"] == 3 and rep["threads"] == 1
    _check_stats(rep["latency_ms"], 7)
    assert rep["timed_s"] < 1.0


def test_runner_max_secs_caps(device_models):
    code, rep = _runner(device_models["big"], "--num-runs", 10**9, "--warmup-runs", 0, "--min-secs", 0,
                        "--warmup-min-secs", 0, "--max-secs", 0.3)
    assert code == 0, rep
    assert rep["capped"] is True and 1 <= rep["runs"] < 10**9
    assert 0.3 <= rep["timed_s"] < 0.3 + 0.5  # stops after the inference that crosses max-secs
    code, rep = _runner(device_models["small"], "--min-secs", 2, "--max-secs", 0.2, "--warmup-min-secs", 0)
    assert rep["capped"] is True and rep["timed_s"] < 1.0  # max-secs beats min-secs
    code, rep = _runner(device_models["small"], "--min-secs", -1)
    assert code == 3 and rep["error"]["kind"] == "bad_args"


def test_benchconfig_validates_and_timeout_fits():
    with pytest.raises(BadInput, match="max-secs"):
        BenchConfig(min_secs=5, max_secs=2)
    with pytest.raises(BadInput, match="min-secs"):
        BenchConfig(min_secs=-1)
    with pytest.raises(BadInput, match="num-runs"):
        BenchConfig(runs=0)
    prof = load_profile("local")
    assert run_timeout(BenchConfig(), prof) >= 2 * 150 + 60  # warm-up and timing may each take max-secs
    assert run_timeout(BenchConfig(timeout=7), prof) == 7
    assert BenchConfig().time_based and not BenchConfig(min_secs=0, warmup_min_secs=0).time_based


def test_local_backend_time_based(device_models):
    m = measure("local", device_models["small"], BenchConfig(runs=3, warmup=1, min_secs=0.3, warmup_min_secs=0.1))
    assert m.timed_s >= 0.3 and m.warmup_s >= 0.1 and m.runs > 3
    assert m.settings == {"num_runs": 3, "warmup_runs": 1, "min_secs": 0.3, "max_secs": 150.0, "warmup_min_secs": 0.1}
    lat = m.latency_ms
    assert lat.p50 == lat.median and lat.p50 <= lat.p90 <= lat.p99 and lat.iqr >= 0
    assert lat.stat("p90") == lat.p90 and lat.stat("p50") == lat.median
    assert m.load_per_core is not None and m.load_per_core >= 0


def test_mcu_backend_estimate_has_no_timing(device_models):
    m = measure("stm32h7", device_models["small"], BenchConfig())
    assert m.runs == 0 and m.timed_s is None and m.latency_ms.iqr == 0.0
    assert m.latency_ms.p50 == m.latency_ms.p90 == m.latency_ms.p99 == m.latency_ms.median > 0


def test_cli_bench_new_names_and_aliases(device_models, capsys):
    model = str(device_models["small"])
    assert run_cli(["bench", model, "-d", "local", "--num-runs", "4", "--warmup-runs", "1", "--num-threads", "1",
                    "--min-secs", "0.2", "--warmup-min-secs", "0", "--max-secs", "5", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["runs"] > 4 and d["timed_s"] >= 0.2 and d["threads"] == 1
    assert d["settings"]["max_secs"] == 5 and d["settings"]["warmup_min_secs"] == 0
    assert run_cli(["bench", model, "-d", "local", "--runs", "6", "--warmup", "2", "--threads", "1",
                    "--min-secs", "0", "--warmup-min-secs", "0", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["runs"] == 6 and d["warmup"] == 2
    assert run_cli(["bench", model, "-d", "local", "--min-secs", "0.2", "--warmup-min-secs", "0.1"]) == 0
    text = capsys.readouterr().out
    assert "p50 / p90 / p99" in text and "IQR / MAD" in text and "load before measuring" in text
    assert "kB" in text and "MB" in text and "KiB" not in text and "MiB" not in text and "local (local)" not in text
    assert run_cli(["bench", model, "-d", "local", "--max-secs", "0"]) == 2
    assert "max-secs" in capsys.readouterr().err


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from sshd_helper.serve(tmp_path_factory, "sshd")


@pytest.mark.ssh
@pytest.mark.slow
def test_ssh_backend_time_based(server, tmp_path, device_models):
    for p in server.remote_tmp.iterdir():
        shutil.rmtree(p, ignore_errors=True)
    board = server.profile_yaml(tmp_path / "board.yaml")
    m = measure(load_profile(board), device_models["small"],
                BenchConfig(runs=3, warmup=1, min_secs=0.3, warmup_min_secs=0.1, max_secs=10))
    assert m.kind == "ssh" and m.measured["latency"]
    assert m.timed_s >= 0.3 and m.warmup_s >= 0.1 and m.runs > 3 and m.settings["max_secs"] == 10
    assert m.latency_ms.p50 <= m.latency_ms.p90 <= m.latency_ms.p99 and m.load_per_core is not None
