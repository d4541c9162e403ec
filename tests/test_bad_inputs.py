"""Bad inputs through the REAL entry point (``python -m edgeprune``, a new process each):
every case exits with its code (2 for bad input), the first line on stderr is ``error: ...``
naming the problem, there is never a ``Traceback``, and the user's files are unchanged
(sha256 of every file in the case's folder before and after).

One table; each row: id, argv (``{M}`` the bundled example model, ``{T}`` the case's folder,
other ``{...}`` files made by ``_materials``), expected exit code, a text the first line must hold.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeprune.pipeline.example import example_model_path

LONG = "x" * 300  # a file name over NAME_MAX (255)

CASES = [
    # ---- usage errors (typer): one line, exit 2
    ("unknown-option", ["run", "--bogus"], 2, "No such option: --bogus"),
    ("step-not-a-number", ["run", "--step", "abc"], 2, "Invalid value for '--step'"),
    ("prune-no-model", ["prune"], 2, "Missing argument 'model'"),
    ("bench-no-device", ["bench", "x.tflite"], 2, "Missing option '--device'"),
    ("quantize-choice", ["run", "--quantize", "int4"], 2, "'int4' is not one of 'int8'"),
    ("criterion-choice", ["run", "--criterion", "magic"], 2, "'magic' is not one of"),
    ("metric-choice", ["convert", "{M}", "--metric", "xx"], 2, "'xx' is not one of 'auto'"),
    ("port-too-big", ["run", "--port", "70000"], 2, "'--port'"),
    ("port-zero", ["run", "--port", "0"], 2, "'--port'"),
    ("runs-not-a-number", ["bench", "x.tflite", "-d", "local", "--runs", "many"], 2, "'--runs'"),
    ("unknown-command", ["frobnicate"], 2, "No such command 'frobnicate'"),
    ("devices-check-no-name", ["devices", "check"], 2, "Missing argument 'device'"),
    ("devices-list-unknown-option", ["devices", "list", "--bogus"], 2, "No such option: --bogus"),
    ("schema-unknown-option", ["schema", "--bogus"], 2, "No such option: --bogus"),
    ("latency-not-a-number", ["run", "--latency-budget", "fast"], 2, "'--latency-budget'"),
    # ---- run: options out of range (checked before TensorFlow starts)
    ("step-tiny", ["run", "--step", "1e-9", "--out", "{T}/o"], 2, "candidates; a run takes at most 200"),
    ("step-zero", ["run", "--step", "0", "--out", "{T}/o"], 2, "--step 0 must be in (0, 1]"),
    ("step-above-one", ["run", "--step", "1.5", "--out", "{T}/o"], 2, "--step 1.5 must be in (0, 1]"),
    ("max-rate-one", ["run", "--max-rate", "1", "--out", "{T}/o"], 2, "--max-rate 1 must be in [0, 1)"),
    ("budget-zero", ["run", "--budget", "0", "--out", "{T}/o"], 2, "--budget '0' is zero bytes"),
    ("budget-parsecs", ["run", "--budget", "2 parsecs", "--out", "{T}/o"], 2, "unknown unit 'parsecs'"),
    ("budget-negative", ["run", "--budget", "-5MB", "--out", "{T}/o"], 2, "--budget"),
    ("ram-budget-zero", ["run", "--ram-budget", "0B", "--out", "{T}/o"], 2, "--ram-budget '0B' is zero bytes"),
    ("latency-negative", ["run", "--latency-budget", "-3", "--out", "{T}/o"], 2, "--latency-budget -3 ms must be positive"),
    ("min-fidelity-above-one", ["run", "--min-fidelity", "1.5", "--out", "{T}/o"], 2, "--min-fidelity 1.5"),
    ("accuracy-drop-huge", ["run", "--max-accuracy-drop", "200", "--out", "{T}/o"], 2, "--max-accuracy-drop 200"),
    ("runs-zero", ["run", "--runs", "0", "--out", "{T}/o"], 2, "--runs must be at least 1"),
    # ---- --input-range: the same message in run, prune and convert
    ("range-inf-run", ["run", "--input-range", "0,inf", "--out", "{T}/o"], 2, "must be finite numbers within"),
    ("range-huge-run", ["run", "--input-range", "0,1e300", "--out", "{T}/o"], 2, "must be finite numbers within"),
    ("range-inf-prune", ["prune", "{M}", "--input-range", "0,inf", "--out", "{T}/p.keras"], 2,
     "must be finite numbers within"),
    ("range-nan-convert", ["convert", "{M}", "--input-range", "nan,1", "--out", "{T}/m.tflite"], 2,
     "must be finite numbers within"),
    ("range-reversed", ["run", "--input-range", "1,0", "--out", "{T}/o"], 2, "LO must be below HI"),
    ("range-garbage", ["run", "--input-range", "abc", "--out", "{T}/o"], 2, "is not 'LO,HI'"),
    # ---- devices
    ("unknown-device", ["run", "--device", "no-such-board", "--out", "{T}/o"], 2, "unknown device 'no-such-board'"),
    ("trust-new-host-local", ["run", "--trust-new-host", "--out", "{T}/o"], 2, "--trust-new-host applies to SSH"),
    ("host-on-local", ["run", "--host", "10.0.0.1", "--out", "{T}/o"], 2, "apply to SSH devices"),
    ("check-unknown-device", ["devices", "check", "no-such-board"], 2, "unknown device 'no-such-board'"),
    ("devices-dir-missing", ["devices", "list", "--devices-dir", "{T}/no-such-folder"], 2, "does not exist"),
    ("devices-dir-is-a-file", ["run", "--devices-dir", "{notes.txt}", "--out", "{T}/o"], 2, "is not a folder"),
    ("bench-missing-tflite", ["bench", "{T}/missing.tflite", "--device", "local"], 2, "missing.tflite"),
    # ---- model files
    ("model-missing", ["run", "--model", "{T}/missing.keras", "--out", "{T}/o"], 2, "does not exist"),
    ("model-name-too-long", ["run", "--model", "{T}/" + LONG + ".keras", "--out", "{T}/o"], 2, "too long"),
    ("out-name-too-long", ["run", "--out", "{T}/" + LONG], 2, "too long"),
    ("prune-out-too-long", ["prune", "{M}", "--out", "{T}/" + LONG + ".keras"], 2, "too long"),
    ("model-corrupt", ["run", "--model", "{corrupt.keras}", "--out", "{T}/o"], 2, "not a valid .keras file"),
    ("model-empty", ["run", "--model", "{empty.h5}", "--out", "{T}/o"], 2, "is empty"),
    ("model-wrong-suffix", ["prune", "{model.txt}", "--out", "{T}/p.keras"], 2, "unsupported model format .txt"),
    # ---- data files
    ("data-missing", ["run", "--data", "{T}/missing.npz", "--out", "{T}/o"], 2, "data file"),
    ("data-corrupt", ["run", "--data", "{corrupt.npz}", "--out", "{T}/o"], 2, "not a valid .npz"),
    ("labels-out-of-range", ["run", "--data", "{labels999.npz}", "--out", "{T}/o"], 2,
     "go up to 999 (1 of 60 samples), but the model has 10 output classes"),
    ("data-nan", ["run", "--data", "{nan.npz}", "--out", "{T}/o"], 2, "NaN or infinity"),
    ("data-wrong-shape", ["run", "--data", "{shape.npz}", "--out", "{T}/o"], 2, "shape"),
    # ---- outputs: never overwrite the user's files
    ("out-holds-our-names", ["run", "--out", "{ours}"], 2, "is not an edgeprune run directory"),
    ("out-holds-user-files", ["run", "--out", "{thesis}"], 2, "is not an edgeprune run directory"),
    ("out-is-a-file", ["run", "--out", "{notes.txt}"], 2, "is a file, not a folder"),
    ("prune-out-suffix", ["prune", "{corrupt.keras}", "--out", "{T}/pruned.txt"], 2,
     "the pruned model is written as .keras or .h5, not .txt"),  # checked before the (corrupt) model is read
    ("prune-plan-suffix", ["prune", "{M}", "--out", "{T}/p.keras", "--plan", "{T}/plan.txt"], 2, "the plan is written as .json"),
    ("prune-rate", ["prune", "{M}", "--rate", "1.5", "--out", "{T}/p.keras"], 2, "--rate 1.5 must be in [0, 1)"),
    ("convert-out-suffix", ["convert", "{M}", "--out", "{T}/model.bin"], 2, "written as .tflite, not .bin"),
    ("convert-samples-zero", ["convert", "{M}", "--samples", "0", "--out", "{T}/m.tflite"], 2, "--samples must be >= 1"),
]


def _materials(t: Path) -> dict[str, str]:
    """The files the table refers to, in the case's folder (the user's files)."""
    (t / "corrupt.keras").write_bytes(b"PK\x03\x04 not really a zip")
    (t / "empty.h5").write_bytes(b"")
    (t / "model.txt").write_text("a model, honestly")
    (t / "corrupt.npz").write_bytes(b"this is not a zip archive at all")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(60, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, size=60)
    y[7] = 999
    np.savez(t / "labels999.npz", x=x, y=y)
    xn = x.copy()
    xn[3, 0, 0, 0] = np.nan
    np.savez(t / "nan.npz", x=xn)
    np.savez(t / "shape.npz", x=rng.uniform(0, 1, size=(20, 32, 32, 3)).astype(np.float32))
    ours = t / "ours"
    ours.mkdir()
    for name in ("report.md", "best.tflite", "report.json", "cand-00-rate0.00.tflite"):
        (ours / name).write_text(f"the user's own {name}")
    thesis = t / "thesis"
    thesis.mkdir()
    (thesis / "thesis.tex").write_text("mine")
    (t / "notes.txt").write_text("notes")
    files = {p.name: str(p) for p in t.iterdir()}
    files.update(M=str(example_model_path()), T=str(t))
    return files


def _checksums(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("case_id,argv,code,first", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_clean(case_id, argv, code, first, tmp_path):
    files = _materials(tmp_path)
    args = [re.sub(r"\{([^{}]+)\}", lambda m: files[m.group(1)], a) for a in argv]
    before = _checksums(tmp_path)
    env = dict(os.environ, COLUMNS="200", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-m", "edgeprune", *args], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env=env)
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out[-3000:]
    assert proc.returncode == code, out[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines and lines[0].startswith("error: "), out[-3000:]
    assert first in lines[0], lines[0]
    assert any(ln.strip().startswith("fix:") for ln in lines[1:3]), "no fix line after the error"
    after = _checksums(tmp_path)
    changed = [k for k in before if after.get(k) != before[k]]
    assert changed == [], f"user files changed: {changed}"
    assert not (tmp_path / "o" / "report.json").exists()


def _cli_commands() -> set[tuple[str, ...]]:
    """Every command of the real CLI, sub-commands as (group, name): read from the typer app."""
    import typer.main

    from edgeprune.cli import app

    found: set[tuple[str, ...]] = set()

    def walk(cmd, prefix: tuple[str, ...]) -> None:
        for name, sub in cmd.commands.items():
            if hasattr(sub, "commands"):
                walk(sub, prefix + (name,))
            else:
                found.add(prefix + (name,))

    walk(typer.main.get_command(app), ())
    return found


def test_every_command_of_the_cli_has_a_case():
    """A command added to the CLI without a bad-input row here fails this test (ids stay unique:
    they name the cases in the report)."""
    commands = _cli_commands()
    assert {("run",), ("prune",), ("convert",), ("bench",), ("devices", "check")} <= commands
    covered = {tuple(argv[:len(c)]) for _, argv, _, _ in CASES for c in commands}
    assert sorted(commands - covered) == []
    assert len({c[0] for c in CASES}) == len(CASES)
