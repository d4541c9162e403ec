"""``--plugin FILE.py``: a model with the user's OWN layer class loads, prunes, converts and runs
from the command line once a plugin file registers the class and its handler; without it the
error says how; a plugin that is missing or raises is exit 2 naming the file (and its line), never
a traceback. Everything through the real CLI in fresh processes (the plugin's class must not
leak into this test process)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PLUGIN = textwrap.dedent('''
    """A user's plugin: their own layer (scale * (x @ W + b)) and its channel rule."""
    import keras

    import edgeprune
    from edgeprune.pipeline.prune.handlers import LayerHandler


    @keras.saving.register_keras_serializable(package="plugin_test")
    class ScaledDense(keras.layers.Layer):
        def __init__(self, units, scale=1.5, **kwargs):
            super().__init__(**kwargs)
            self.units, self.scale = int(units), float(scale)

        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")
            self.bias = self.add_weight(shape=(self.units,), name="bias", initializer="zeros")

        def call(self, x):
            return self.scale * (keras.ops.matmul(x, self.kernel) + self.bias)

        def get_config(self):
            return {**super().get_config(), "units": self.units, "scale": self.scale}


    class ScaledDenseHandler(LayerHandler):
        width_key = "units"

        def visit(self, graph, info, ins, cfg):
            g = graph.new_group(cfg["units"], info.name)
            graph.add_ref(info.name, 0, 0, ins[0], "consumer")
            graph.add_ref(info.name, 0, 1, (g,), "producer")
            graph.add_ref(info.name, 1, 0, (g,), "producer")
            graph.set_layout(info.name, (g,))


    edgeprune.register_handler(ScaledDense, ScaledDenseHandler())
''')

BUILD = textwrap.dedent('''
    import sys, numpy as np, keras
    from edgeprune.pipeline.data.plugins import load_plugins
    load_plugins([sys.argv[1]])
    ScaledDense = keras.saving.get_registered_object("plugin_test>ScaledDense")
    rng = np.random.default_rng(0)
    inp = keras.Input((6,))
    x = keras.layers.Dense(16, activation="relu", name="d1")(inp)
    x = ScaledDense(12, name="mine")(x)
    x = keras.layers.ReLU(name="act")(x)
    model = keras.Model(inp, keras.layers.Dense(3, name="head")(x))
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([rng.normal(0, 0.6, tuple(w.shape)).astype(np.float32) for w in layer.weights])
    model.save(sys.argv[2])
''')


def _cli(*args, cwd, env_extra=None, timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "EDGEPRUNE_PLUGINS"}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", COLUMNS="200", **(env_extra or {}))
    p = subprocess.run([sys.executable, "-m", "edgeprune", *map(str, args)], capture_output=True, text=True,
                       cwd=cwd, env=env, timeout=timeout)
    assert "Traceback" not in p.stdout + p.stderr, (p.stdout + p.stderr)[-3000:]
    return p


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    d = tmp_path_factory.mktemp("plugin")
    (d / "layers.py").write_text(PLUGIN)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run([sys.executable, "-c", BUILD, str(d / "layers.py"), str(d / "mine.keras")], check=True, env=env,
                   capture_output=True, timeout=300)
    return d


def _error_and_fix(p, code=2):
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == code, p.stderr[-2000:]
    assert lines and lines[0].startswith("error: "), p.stderr[-2000:]
    assert any(ln.strip().startswith("fix:") for ln in lines[1:3]), p.stderr[-2000:]
    return lines[0], "\n".join(lines[1:3])


def test_without_the_plugin_the_error_says_how(made):
    first, fix = _error_and_fix(_cli("prune", made / "mine.keras", "--out", made / "p.keras", cwd=made))
    assert "mine.keras" in first and "ScaledDense" in first
    assert "--plugin" in fix


def test_prune_with_the_plugin_narrows_the_users_layer(made):
    p = _cli("prune", made / "mine.keras", "--plugin", made / "layers.py", "--rate", "0.5", "--criterion", "l1",
             "--out", made / "p.keras", "--json", cwd=made)
    assert p.returncode == 0, p.stderr[-2000:]
    summary = json.loads(p.stdout)
    text = json.dumps(summary)
    assert "mine" in text
    # the pruned file loads (with the plugin) and the user's layer lost half of its 12 units
    check = ("import sys, keras; from edgeprune.pipeline.data.plugins import load_plugins; load_plugins([sys.argv[1]]); "
             "m = keras.models.load_model(sys.argv[2]); print(m.get_layer('mine').units, m.get_layer('d1').units)")
    out = subprocess.run([sys.executable, "-c", check, str(made / "layers.py"), str(made / "p.keras")], capture_output=True,
                         text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=300, check=True).stdout.split()
    assert [int(v) for v in out[-2:]] == [6, 8]


def test_convert_with_the_plugin_from_the_environment(made):
    p = _cli("convert", made / "mine.keras", "--quantize", "float32", "--out", made / "m.tflite", cwd=made,
             env_extra={"EDGEPRUNE_PLUGINS": str(made / "layers.py")})
    assert p.returncode == 0, p.stderr[-2000:]
    assert (made / "m.tflite").stat().st_size > 1000


@pytest.mark.slow
def test_run_with_the_plugin_and_conversion_workers(made):
    """`run` with --jobs 2: the conversion workers import the plugin too; run.json's fingerprint
    holds the plugin's sha256, so a changed plugin is a different run (--resume refuses it)."""
    import hashlib

    out = made / "run"
    args = ["run", "--model", made / "mine.keras", "--plugin", made / "layers.py", "--criterion", "l1", "--no-compensate",
            "--allocation", "uniform", "--step", "0.25", "--max-rate", "0.5", "--min-fidelity", "0.01", "--jobs", "2",
            "--runs", "3", "--min-secs", "0", "--warmup-min-secs", "0", "--out", out]
    p = _cli(*args, cwd=made)
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["chosen"]["rate"] == pytest.approx(0.5)
    fp = json.loads((out / "run.json").read_text())["fingerprint"]
    assert fp["plugins"] == {"layers.py": hashlib.sha256((made / "layers.py").read_bytes()).hexdigest()}
    (made / "layers.py").write_text(PLUGIN + "\n# changed\n")
    try:
        first, _ = _error_and_fix(_cli(*args, "--resume", cwd=made))
        assert "plugins" in first
    finally:
        (made / "layers.py").write_text(PLUGIN)


@pytest.mark.parametrize("body,expect", [
    ("import keras\nraise RuntimeError('boom in the plugin')\n", "failed on import (line 2): RuntimeError: boom in the plugin"),
    ("def broken(:\n", "failed on import (line 1): SyntaxError"),
    ("import sys\nsys.exit(3)\n", "failed on import (line 2): SystemExit: 3"),
])
def test_a_plugin_that_raises_is_bad_input(made, tmp_path, body, expect):
    bad = tmp_path / "bad.py"
    bad.write_text(body)
    first, fix = _error_and_fix(_cli("prune", made / "mine.keras", "--plugin", bad, "--out", tmp_path / "p.keras", cwd=tmp_path))
    assert str(bad) in first and expect in first, first
    assert "fix the plugin" in fix
    assert not (tmp_path / "p.keras").exists()


@pytest.mark.parametrize("name,expect", [("missing.py", "file does not exist"), ("notes.txt", "not a Python file")])
def test_a_plugin_path_that_is_not_a_python_file(made, tmp_path, name, expect):
    (tmp_path / "notes.txt").write_text("notes")
    first, _ = _error_and_fix(_cli("convert", made / "mine.keras", "--plugin", tmp_path / name, "--out", tmp_path / "m.tflite",
                                   cwd=tmp_path))
    assert expect in first and name in first
    assert (tmp_path / "notes.txt").read_text() == "notes"


def test_a_plugin_is_imported_once_per_process(tmp_path):
    """Two --plugin values naming the same file import it once (its registrations run once)."""
    from edgeprune.pipeline.data import plugins

    f = tmp_path / "count.py"
    f.write_text("import builtins\nbuiltins._edgeprune_plugin_count = getattr(builtins, '_edgeprune_plugin_count', 0) + 1\n")
    import builtins

    try:
        got = plugins.load_plugins([f, Path(str(f))])
        assert list(got) == ["count.py"] and builtins._edgeprune_plugin_count == 1
        assert str(f.resolve()) in plugins.loaded()
    finally:
        plugins._LOADED.pop(str(f.resolve()), None)
        del builtins._edgeprune_plugin_count
