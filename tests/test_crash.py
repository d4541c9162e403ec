"""No traceback, ever (issue 24, item 1): a failure nobody anticipated, injected at each stage
(load, data, prune, convert, fidelity, device), ends as one `error:` line naming the stage and
the file/layer/device involved, a `fix:` line with the crash report's path, exit 1, and a crash
report holding the command, the stage, versions and the traceback. Nothing of the user's changes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeprune.cli import run_cli


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(3)
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inp)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(16, activation="relu", name="fc")(x)
    out = keras.layers.Dense(4, activation="softmax", name="head")(x)
    m = keras.Model(inp, out, name="tiny")
    path = tmp_path_factory.mktemp("crash-model") / "tiny.keras"
    m.save(path)
    return path


@pytest.fixture
def crash_dir(tmp_path, monkeypatch):
    d = tmp_path / "crashes"
    monkeypatch.setenv("EDGEPRUNE_CRASH_DIR", str(d))
    return d


def _boom(what):
    def boom(*a, **k):
        raise RuntimeError(f"injected {what} failure")
    return boom


def _check(code, err, crash_dir, stage_words, stage, what_in_line, command):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 1, err
    assert "Traceback" not in err, err
    err_lines = [ln for ln in lines if ln.startswith("error:")]
    assert len(err_lines) == 1, err
    line = err_lines[0]
    assert line.startswith(f"error: internal error while {stage_words}"), line
    assert what_in_line in line, line
    assert "RuntimeError: injected" in line
    fix = [ln for ln in lines if ln.strip().startswith("fix:")]
    assert len(fix) == 1 and "crash report" in fix[0], err
    reports = list(crash_dir.glob("edgeprune-crash-*.txt"))
    assert len(reports) == 1 and str(reports[0]) in fix[0]
    text = reports[0].read_text()
    assert f"stage: {stage}" in text and f"command: edgeprune {command}" in text
    assert "Traceback (most recent call last)" in text and "injected" in text
    assert "tensorflow " in text and "keras " in text  # versions


def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_load(model_file, crash_dir, tmp_path, monkeypatch, capsys):
    import edgeprune.pipeline.data.loading as loading

    monkeypatch.setattr(loading, "check_supported", _boom("load"))  # after Keras read the file: not the file's fault
    before = _snapshot(model_file.parent)
    out = tmp_path / "o.keras"
    code = run_cli(["prune", str(model_file), "--rate", "0.3", "--out", str(out)])
    _check(code, capsys.readouterr().err, crash_dir, "loading the model", "load", f"file {model_file}", "prune")
    assert not out.exists() and _snapshot(model_file.parent) == before


def test_data(model_file, crash_dir, tmp_path, monkeypatch, capsys):
    import edgeprune.pipeline.data.eval_data as data_mod

    data = tmp_path / "val.npz"
    np.savez(data, x=np.random.default_rng(0).random((60, 8, 8, 1), dtype=np.float32))
    monkeypatch.setattr(data_mod, "load_eval_data", _boom("data"))
    code = run_cli(["convert", str(model_file), "--quantize", "float32", "--data", str(data), "--out", str(tmp_path / "m.tflite")])
    _check(code, capsys.readouterr().err, crash_dir, "reading the data", "data", str(data), "convert")


def test_prune(model_file, crash_dir, tmp_path, monkeypatch, capsys):
    import edgeprune.pipeline.prune.surgery as surgery

    real = surgery._rebuild

    def rebuild(layer, changes):
        if layer.name == "fc":
            raise RuntimeError("injected prune failure")
        return real(layer, changes)

    monkeypatch.setattr(surgery, "_rebuild", rebuild)
    out = tmp_path / "o.keras"
    code = run_cli(["prune", str(model_file), "--rate", "0.3", "--criterion", "l1", "--out", str(out)])
    _check(code, capsys.readouterr().err, crash_dir, "pruning", "prune", "layer 'fc' (Dense)", "prune")
    assert not out.exists()


def test_convert(model_file, crash_dir, tmp_path, monkeypatch, capsys):
    import edgeprune.pipeline.convert.converter as conv

    monkeypatch.setattr(conv, "read_ops", _boom("convert"))  # after the converter ran: our bug, not the model
    out = tmp_path / "m.tflite"
    code = run_cli(["convert", str(model_file), "--quantize", "float32", "--out", str(out)])
    _check(code, capsys.readouterr().err, crash_dir, "converting", "convert", "'tiny'", "convert")
    assert not out.exists()


def test_fidelity(model_file, crash_dir, tmp_path, monkeypatch, capsys):
    import edgeprune.pipeline.convert.fidelity as fid

    monkeypatch.setattr(fid, "run_tflite", _boom("fidelity"))
    code = run_cli(["convert", str(model_file), "--quantize", "float32", "--out", str(tmp_path / "m.tflite")])
    _check(code, capsys.readouterr().err, crash_dir, "measuring fidelity", "fidelity", "fidelity", "convert")


def test_device(device_models, crash_dir, monkeypatch, capsys):
    from edgeprune.devices.local import LocalDevice

    monkeypatch.setattr(LocalDevice, "bench", _boom("device"))
    code = run_cli(["bench", str(device_models["small"]), "--device", "local", "--runs", "2"])
    _check(code, capsys.readouterr().err, crash_dir, "measuring on the device", "device", "'local'", "bench")


def test_real_entry_point_no_traceback(model_file, tmp_path):
    """Through the installed entry point (edgeprune.cli:main) in a fresh process."""
    crashes = tmp_path / "crashes"
    code = ("import edgeprune.pipeline.convert.converter as c\n"
            "def boom(*a, **k):\n    raise ZeroDivisionError('injected convert failure')\n"
            "c.tensor_details = boom\n"
            "import sys; from edgeprune.cli import main\n"
            f"sys.argv = ['edgeprune', 'convert', {str(model_file)!r}, '--quantize', 'int8', '--out', {str(tmp_path / 'm.tflite')!r}]\n"
            "main()\n")
    env = dict(os.environ, EDGEPRUNE_CRASH_DIR=str(crashes), TF_CPP_MIN_LOG_LEVEL="3")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    first = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert first == [ln for ln in p.stderr.splitlines() if "error:" in ln]
    assert first[0].startswith("error: internal error while converting (Functional 'tiny'): ZeroDivisionError: injected")
    assert len(list(crashes.glob("edgeprune-crash-*.txt"))) == 1
