"""TFLite-Micro arena measurement and the microcontroller backend (estimate, labelled)."""
from __future__ import annotations

import json

import pytest

from conftest import mlperf_path
from edgeprune.cli import run_cli
from edgeprune.devices.base import BenchConfig, measure
from edgeprune.devices.mcu import count_macs
from edgeprune.devices.tflm import measure_arena, try_arena
from edgeprune.errors import BadInput


def _mlperf():
    """The stand-in of MLPerf Tiny's pretrainedResnet_quant.tflite (ResNet-8, full int8)."""
    return mlperf_path("pretrainedResnet_quant.tflite")


def test_arena_of_mlperf_resnet():
    r = measure_arena(_mlperf())
    # the arena is the architecture's (tensor sizes and lifetimes): MLPerf Tiny's own file needs 55,984 B
    assert abs(r.arena_bytes - 55_984) < 0.05 * 55_984, r.arena_bytes
    assert r.arena_bytes >= r.reported_total_bytes
    assert try_arena(_mlperf(), r.arena_bytes).ok  # the result really works


@pytest.mark.slow
def test_too_small_arena_is_survived():
    a = try_arena(_mlperf(), 2000)
    assert not a.ok and "allocate" in a.message.lower()
    r = measure_arena(_mlperf(), start_bytes=1000)  # starts far too small, grows, then verifies
    assert r.arena_bytes == measure_arena(_mlperf()).arena_bytes
    assert r.attempts[0] == (1000, False)


def test_arena_float_model(device_models):
    r = measure_arena(device_models["small"])
    assert r.arena_bytes > 64 * 64 * 16 * 4  # at least one float activation map


def test_arena_rejects_non_tflite(tmp_path):
    p = tmp_path / "x.tflite"
    p.write_bytes(b"not a model at all")
    with pytest.raises(BadInput):
        measure_arena(p)


def test_macs_resnet8():
    macs = count_macs(_mlperf())
    assert macs.total == 12_534_410  # MLPerf Tiny ResNet-8 (the same count as MLPerf's own int8 file)
    assert macs.by_op["CONV_2D"] == 12_500_992 and macs.by_op["FULLY_CONNECTED"] == 640


def test_mcu_backend_reports_arena_and_estimate():
    m = measure("stm32h7", _mlperf(), BenchConfig())
    arena = m.extra["arena"]["arena_bytes"]
    assert m.ram_bytes == arena + 16 * 1024
    assert m.flash_bytes == m.model_bytes + 120 * 1024
    assert m.measured["latency"] is False and m.is_estimate
    assert "ESTIMATE" in m.estimates["latency"] and "cycles_per_mac" in m.estimates["latency"]
    assert m.latency_ms.median == pytest.approx(m.extra["macs"] * 2.0 / 480e6 * 1000)


def test_cli_bench_mcu_json(capsys):
    assert run_cli(["bench", str(_mlperf()), "--device", "nrf52840", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["kind"] == "mcu" and d["measured"]["latency"] is False and "ESTIMATE" in d["estimates"]["latency"]
    assert run_cli(["bench", str(_mlperf()), "--device", "esp32-s3"]) == 0
    assert "ESTIMATE" in capsys.readouterr().out
