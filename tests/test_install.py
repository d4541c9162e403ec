"""The installed tool (issue 9): every module edgeprune imports is declared in pyproject.toml
(the typer release that stopped installing click broke a tool that imported click), and the
console script that `pip install .` puts next to this Python answers `-h`, `--help` and runs
the README's headline command on the bundled example.
"""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ci_guard import skip_or_fail

ROOT = Path(__file__).resolve().parents[1]
# import name -> distribution name, where they differ
DIST = {"yaml": "pyyaml", "ai_edge_litert": "ai-edge-litert", "tflite_micro": "tflite-micro", "PIL": "pillow",
        "junitparser": "junitparser", "jsonschema": "jsonschema"}
# Imported only on the board (the runner tries each runtime): not dependencies of the host tool.
BOARD_ONLY = {"devices/board_runner.py": {"tflite_runtime", "ai_edge_litert", "tensorflow", "pkg_resources"}}


def _declared() -> set[str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = set()
    for req in meta["dependencies"]:
        names.add(re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].strip().lower())
    return names


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def _package_files() -> list[Path]:
    """The modules of every package pyproject.toml installs (pipeline/'s rooms and their sub-packages
    included)."""
    files = []
    for pkg in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]:
        files += sorted(ROOT.joinpath(*pkg.split(".")[1:]).glob("*.py"))
    return files


def test_every_import_is_declared_in_pyproject():
    declared = _declared()
    stdlib = set(sys.stdlib_module_names)
    missing = {}
    for f in _package_files():
        rel = str(f.relative_to(ROOT))
        for mod in _imports(f) - stdlib - {"edgeprune", "__future__"} - BOARD_ONLY.get(rel, set()):
            if DIST.get(mod, mod).lower().replace("_", "-") not in {d.replace("_", "-") for d in declared}:
                missing.setdefault(mod, []).append(rel)
    assert missing == {}, f"imported but not declared in pyproject.toml: {missing}"
    assert "click" not in declared  # typer vendors its own; we import only typer


def test_constraints_pin_every_declared_dependency():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    for dep in _declared():
        assert dep.replace("_", "-") in pins, f"{dep} is declared but not pinned in constraints.txt"


def test_every_subpackage_is_installed():
    """A new folder with an __init__.py that pyproject does not list is missing from the wheel."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(meta["packages"])
    skip = {"tests", "bench", "build", "examples", ".venv", ".git"}
    found = set()
    for init in ROOT.rglob("__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if rel.parts and (rel.parts[0] in skip or rel.parts[0].startswith(".")):
            continue
        found.add(".".join(("edgeprune",) + rel.parts))
    assert found - listed == set(), f"packages missing from pyproject [tool.setuptools] packages: {found - listed}"


def _console_script() -> Path:
    script = Path(sys.executable).parent / "edgeprune"
    if not script.exists():
        skip_or_fail(f"no edgeprune console script next to {sys.executable}: the package is not installed into "
                     "this Python (a development checkout; .ci/setup installs it)")
    return script


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_installed_script_help(flag):
    proc = subprocess.run([str(_console_script()), flag], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Usage: edgeprune" in proc.stdout and "run" in proc.stdout and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_installed_script_runs_the_headline_command(tmp_path):
    """README's quick start: `edgeprune run` with no option (bundled example, local device)."""
    proc = subprocess.run([str(_console_script()), "run", "--json"], capture_output=True, text=True, timeout=1500,
                          cwd=tmp_path, env=dict(os.environ, COLUMNS="100"))
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["status"] == "ok" and report["chosen"]["rate"] > 0
    run_dir = tmp_path / "edgeprune-runs" / "fmnist_cnn-local-int8"
    assert (run_dir / "best.tflite").stat().st_size == report["chosen"]["size_bytes"]
