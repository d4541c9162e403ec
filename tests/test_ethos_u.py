"""Device kind ethos-u (issue 25): every model compiled by Arm's Vela (the real ethos-u-vela, run
as a child process), its figures labelled as Vela's estimate, CPU fallbacks counted and named,
NPU-share drops flagged, best_vela.tflite written, Vela missing or failing -> exit 4.

The models are built here (seeded Keras models converted to full int8 by edgeprune's converter),
not read from the MLPerf Tiny files beside the checkout.
"""
from __future__ import annotations

import json
import os
import types
from pathlib import Path

import pytest

from edgeprune.cli import run_cli
from edgeprune.devices.base import measure
from edgeprune.devices.ethos_u import ENV_VELA, compile_tflite
from edgeprune.devices.profile import list_profiles, load_profile
from edgeprune.errors import DeviceError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _build(kind: str, path: Path, quantize: str = "int8") -> Path:
    """'conv': conv-relu-conv-pool-dense (every op on the NPU); 'sqrt': the same with an element-wise
    SQRT after the first conv (TFLite SQRT: not an Ethos-U55 operator, so Vela leaves it to the CPU)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from edgeprune.pipeline.convert.converter import ConvertConfig, convert

    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inp)
    if kind == "sqrt":
        x = keras.layers.Lambda(lambda t: tf.sqrt(t))(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(4)(x)
    model = keras.Model(inp, out)
    calib = np.random.default_rng(0).random((32, 16, 16, 3)).astype("float32")
    res = convert(model, ConvertConfig(quantize=quantize, calibration=calib if quantize == "int8" else None))
    path.write_bytes(res.tflite)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("ethos-u-models")
    return {"conv": _build("conv", d / "conv.tflite"), "sqrt": _build("sqrt", d / "sqrt.tflite"),
            "float": _build("conv", d / "conv_float.tflite", quantize="float32")}


def _json_out(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def _error_lines(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


# --------------------------------------------------------------------------- profiles
def test_shipped_ethos_u_profiles():
    profiles = {p.name: p for p in list_profiles()}
    expect = {"ethos-u55-128": ("ethos-u55-128", "Ethos_U55_High_End_Embedded"),
              "ethos-u55-256": ("ethos-u55-256", "Ethos_U55_High_End_Embedded"),
              "ethos-u65-256": ("ethos-u65-256", "Ethos_U65_Embedded")}
    for name, (acc, system) in expect.items():
        p = profiles[name]
        assert p.kind == "ethos-u" and p.ethos_u.accelerator_config == acc
        assert p.ethos_u.system_config == system and p.ethos_u.memory_mode == "Shared_Sram"


def test_profile_needs_its_section(tmp_path, capsys):
    f = tmp_path / "npu.yaml"
    f.write_text("kind: ethos-u\nlimits: {flash_bytes: 2MB, ram_bytes: 1MB}\n")
    assert run_cli(["devices", "check", str(f)]) == 2
    assert "needs an 'ethos_u' section" in capsys.readouterr().err
    f.write_text("kind: ethos-u\nlimits: {flash_bytes: 2MB, ram_bytes: 1MB}\nethos_u: {accelerator_config: ethos-u99}\n")
    assert run_cli(["devices", "check", str(f)]) == 2


def test_devices_check(capsys):
    assert run_cli(["devices", "check", "ethos-u55-128", "--json"]) == 0
    info = _json_out(capsys)
    assert info["kind"] == "ethos-u" and info["vela_version"].startswith("5.")
    assert info["accelerator_config"] == "ethos-u55-128" and info["missing"] == []


# --------------------------------------------------------------------------- bench: Vela's figures
def test_bench_gives_velas_figures(models, capsys):
    assert run_cli(["bench", str(models["conv"]), "--device", "ethos-u55-128", "--json"]) == 0
    m = _json_out(capsys)
    v = m["extra"]["vela"]
    assert m["kind"] == "ethos-u" and m["measured"]["latency"] is False and m["runs"] == 0
    assert "ESTIMATE" in m["estimates"]["latency"] and "ethos-u-vela 5." in m["estimates"]["latency"]
    assert "Ethos_U55_High_End_Embedded" in m["estimates"]["latency"]
    # latency is Vela's cycles at its clock; RAM and flash are its SRAM and flash (runtime overheads 0)
    assert m["latency_ms"]["median"] == pytest.approx(v["cycles_total"] / v["core_clock_hz"] * 1e3, rel=1e-3)
    assert v["core_clock_hz"] == 500e6 and v["cycles_total"] > v["cycles_npu"] > 0
    assert m["ram_bytes"] == v["sram_bytes"] > 0 and m["flash_bytes"] == v["off_chip_flash_bytes"] > 0
    assert v["cpu_ops"] == 0 and v["npu_share"] == 1.0 and v["cpu_operators"] == []
    assert v["vela_ops"] == ["ethos-u"]  # the whole model is one NPU custom operator
    # per-layer cycles add up to the total
    assert sum(r["cycles"] for r in v["per_layer"]) == pytest.approx(v["cycles_total"], rel=0.01)
    assert {r["original_op"] for r in v["per_layer"]} >= {"Conv2D", "FullyConnected"}
    # the host cannot run Vela's output: said, with LiteRT's own reason
    assert v["host_run"]["ran"] is False and "ethos-u" in v["host_run"]["message"]


def test_bigger_npu_is_not_slower(models):
    m128 = measure("ethos-u55-128", models["conv"])
    m256 = measure("ethos-u55-256", models["conv"])
    assert m256.extra["vela"]["config"]["accelerator_config"] == "ethos-u55-256"
    assert m256.extra["vela"]["cycles_npu"] < m128.extra["vela"]["cycles_npu"]
    assert m256.latency_ms.median <= m128.latency_ms.median


def test_cpu_fallback_is_counted_and_named(models, capsys):
    assert run_cli(["bench", str(models["sqrt"]), "--device", "ethos-u55-128", "--json"]) == 0
    v = _json_out(capsys)["extra"]["vela"]
    assert v["cpu_ops"] == 1 and v["npu_ops"] >= 3
    assert v["npu_share"] == pytest.approx(v["npu_ops"] / (v["npu_ops"] + 1))
    (op,) = v["cpu_operators"]
    assert op["op"] == "SQRT" and "Sqrt" in op["name"] and op["reason"] == "Unsupported opType"
    # Vela's output: the NPU parts as ethos-u operators around the SQRT the Cortex-M runs
    assert v["vela_ops"] == ["ethos-u", "SQRT", "ethos-u"]
    assert [r["target"] for r in v["per_layer"]].count("CPU") == 1


def test_all_cpu_output_runs_on_the_host_and_is_identical(models):
    """A float32 model has nothing for the NPU: Vela's output is plain TFLite, and the host runs it
    and compares it with the input model (the check Vela's int8 output cannot get on the host)."""
    v = compile_tflite(load_profile("ethos-u55-128"), models["float"])
    assert v.npu_ops == 0 and v.cpu_ops > 0 and "ethos-u" not in v.vela_ops
    assert v.host_run["ran"] is True and v.host_run["identical"] is True


def test_npu_share_drop_is_flagged(models, tmp_path):
    """The host-phase step on two real compilations: candidate 1 (with the SQRT) has a smaller NPU
    share than candidate 0, so it is flagged and named in the notes."""
    from edgeprune.pipeline.search.candidate import Candidate
    from edgeprune.pipeline.convert.ethos_u_stage import compile_candidate

    for i, key in enumerate(("conv", "sqrt")):
        (tmp_path / f"cand-0{i}.tflite").write_bytes(models[key].read_bytes())
    run = types.SimpleNamespace(profile=load_profile("ethos-u55-128"), run_dir=tmp_path, notes=[],
                                emit=lambda *a, **k: None)
    recs = []
    for i in range(2):
        rec = Candidate(index=i, rate=0.1 * i, name=f"cand-0{i}", files={"tflite": f"cand-0{i}.tflite"}, params=0,
                        size_bytes=0, flash_bytes=0, sha256=None, fidelity={}, widths={}, prediction=None, timings={})
        compile_candidate(run, recs, rec)
        recs.append(rec)
    assert recs[0].vela["npu_share"] == 1.0 and recs[0].vela["npu_share_dropped"] is False
    assert recs[1].vela["npu_share"] < 1.0 and recs[1].vela["npu_share_dropped"] is True
    assert len(run.notes) == 1 and "SQRT" in run.notes[0]
    assert recs[1].flash_bytes == recs[1].vela["off_chip_flash_bytes"]
    for rec in recs:
        assert (tmp_path / rec.files["vela_tflite"]).read_bytes()[4:8] == b"TFL3"
        assert json.loads((tmp_path / rec.files["vela_json"]).read_text())["per_layer"]


# --------------------------------------------------------------------------- Vela missing or failing
def test_vela_missing_env(models, capsys, monkeypatch):
    monkeypatch.setenv(ENV_VELA, "/nonexistent/vela")
    assert run_cli(["devices", "check", "ethos-u55-128"]) == 4
    err = _error_lines(capsys)
    assert err[-2].startswith("error: ethos-u55-128: Vela not found: '/nonexistent/vela' ($EDGEPRUNE_VELA)")
    assert err[-1].strip().startswith("fix: pip install 'ethos-u-vela")
    assert run_cli(["bench", str(models["conv"]), "--device", "ethos-u55-128"]) == 4
    assert "Vela not found" in capsys.readouterr().err


def test_vela_missing_profile_fails_run_fast(tmp_path, capsys):
    f = tmp_path / "npu.yaml"
    f.write_text("kind: ethos-u\nlimits: {flash_bytes: 2MB, ram_bytes: 1MB}\n"
                 f"ethos_u: {{accelerator_config: ethos-u55-128, vela: {tmp_path / 'no-such-vela'}}}\n")
    out = tmp_path / "run"
    assert run_cli(["run", "--device", str(f), "--out", str(out), "--max-rate", "0.1"]) == 4
    err = capsys.readouterr().err
    assert "error: npu: Vela not found" in err and "fix:" in err and "Traceback" not in err
    assert not (out / "report.json").exists()  # refused before any candidate was made


def test_vela_failing_is_exit_4(models, tmp_path, capsys):
    """A real Vela failure: Dedicated_Sram puts the arena on the flash port of a U55 system, which Vela refuses."""
    f = tmp_path / "bad-mode.yaml"
    f.write_text("kind: ethos-u\nlimits: {flash_bytes: 2MB, ram_bytes: 1MB}\n"
                 "ethos_u: {accelerator_config: ethos-u55-128, system_config: Ethos_U55_High_End_Embedded, "
                 "memory_mode: Dedicated_Sram}\n")
    assert run_cli(["bench", str(models["conv"]), "--device", str(f)]) == 4
    err = capsys.readouterr().err
    assert "error: bad-mode: Vela failed on conv.tflite (exit 1)" in err and "arena_mem_area" in err
    assert "fix: check the profile's ethos_u settings" in err and "Traceback" not in err


def test_unknown_system_config_names_the_known_ones(tmp_path, capsys):
    f = tmp_path / "nosys.yaml"
    f.write_text("kind: ethos-u\nlimits: {flash_bytes: 2MB, ram_bytes: 1MB}\n"
                 "ethos_u: {accelerator_config: ethos-u55-128, system_config: Ethos_U55_Nope}\n")
    assert run_cli(["devices", "check", str(f)]) == 4
    err = capsys.readouterr().err
    assert "System_Config.Ethos_U55_Nope" in err and "Ethos_U55_High_End_Embedded" in err


# --------------------------------------------------------------------------- a run on the example
@pytest.mark.slow
def test_run_on_the_example(tmp_path, capsys):
    """Four data-free candidates of the bundled example on ethos-u55-128: every one compiled by Vela,
    a latency budget between the unpruned and the most pruned candidate's Vela latency, so the
    answer is a pruned one; best_vela.tflite is Vela's output of it."""
    out = tmp_path / "run"
    args = ["run", "--device", "ethos-u55-128", "--out", str(out), "--criterion", "paoding", "--no-compensate",
            "--allocation", "uniform", "--step", "0.1", "--max-rate", "0.3", "--min-fidelity", "0.5",
            "--latency-budget", "1.3", "--json", "--no-screen"]  # every candidate converted and compiled
    assert run_cli(args) == 0
    rep = json.loads(capsys.readouterr().out)
    e = rep["ethos_u"]
    cands = rep["candidates"]
    assert len(cands) == 4 and e["compiled"] == 4 and all(c["vela"] for c in cands)
    assert e["vela_version"].startswith("5.") and e["config"]["accelerator_config"] == "ethos-u55-128"
    assert "ESTIMATE" in e["estimate"] and "int8 .tflite" in e["fidelity"]
    lat = [p["inference_time_ms"] for p in e["curve"]]
    flash = [p["off_chip_flash_bytes"] for p in e["curve"]]
    assert lat == sorted(lat, reverse=True) and lat[0] > 1.3 > lat[-1]  # pruning pays on the NPU
    assert flash == sorted(flash, reverse=True)
    assert 1.4 < lat[0] < 1.8  # the unpruned example: ~1.6 ms, bound by reading weights from flash
    ch, vc = rep["chosen"], e["chosen"]
    assert ch["rate"] == vc["rate"] and vc["inference_time_ms"] < 1.3
    assert ch["latency_ms"] == pytest.approx(vc["inference_time_ms"]) and ch["latency_is_estimate"] is True
    assert ch["ram_bytes"] == vc["sram_bytes"]
    assert ch["flash_bytes"] == vc["off_chip_flash_bytes"] < cands[0]["flash_bytes"]
    assert vc["cpu_ops"] == 0 and vc["npu_share"] == 1.0 and e["npu_share_drops"] == []
    assert sum(r["cycles"] for r in vc["per_layer"]) == pytest.approx(vc["cycles_total"], rel=0.01)
    assert rep["device"]["kind"] == "ethos-u" and "Vela" in rep["device"]["latency"]
    best_vela = out / "best_vela.tflite"
    assert rep["files"]["best_vela"] == "best_vela.tflite" and e["best_vela"] == "best_vela.tflite"
    chosen = next(c for c in cands if c["index"] == ch["index"])
    assert best_vela.read_bytes() == (out / chosen["files"]["vela_tflite"]).read_bytes()
    import hashlib

    assert hashlib.sha256(best_vela.read_bytes()).hexdigest() == chosen["vela"]["vela_tflite_sha256"]
    assert best_vela.stat().st_size == vc["vela_tflite_bytes"]
    md = (out / "report.md").read_text()
    assert "## Ethos-U (Vela)" in md and "per-layer cycles" in md

    # --resume on another Ethos-U system: the candidates are reused and only recompiled by Vela
    args65 = [a if a != "ethos-u55-128" else "ethos-u65-256" for a in args] + ["--resume"]
    assert run_cli(args65) == 0
    rep65 = json.loads(capsys.readouterr().out)
    assert rep65["resume"]["candidates_reused"] == 4 and rep65["ethos_u"]["compiled"] == 4
    assert rep65["ethos_u"]["config"]["accelerator_config"] == "ethos-u65-256"
    assert [c["sha256"] for c in rep65["candidates"]] == [c["sha256"] for c in cands]
    assert all(c["vela"]["config"]["system_config"] == "Ethos_U65_Embedded" for c in rep65["candidates"])
    assert rep65["ethos_u"]["curve"] != e["curve"]  # another system, other figures
    # ... and on a device of another kind: the flash figure is the .tflite again, no Vela keys
    at = args.index("--latency-budget")
    args_local = [a if a != "ethos-u55-128" else "local" for a in args[:at] + args[at + 2:]]
    assert run_cli(args_local + ["--resume", "--runs", "3", "--warmup", "1", "--min-secs", "0",
                                 "--warmup-min-secs", "0"]) == 0
    rep_local = json.loads(capsys.readouterr().out)
    assert "ethos_u" not in rep_local and all("vela" not in c for c in rep_local["candidates"])
    assert all(c["flash_bytes"] == c["size_bytes"] for c in rep_local["candidates"])
    assert not (out / "best_vela.tflite").exists()
