#!/usr/bin/env bash
# Separate Python environments the board runner is tested under (issue 4): one with
# tflite-runtime (the old standalone package, numpy<2) and one with ai-edge-litert.
# Idempotent and fast when already there. Override the folder with EDGEPRUNE_VENVS.
set -euo pipefail
ROOT=${EDGEPRUNE_VENVS:-/opt/edgeprune-venvs}
PY=${PYTHON:-python3}
mk() {  # mk NAME IMPORT PACKAGES...
  local name=$1 mod=$2; shift 2
  local venv="$ROOT/$name"
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import $mod, numpy" >/dev/null 2>&1; then return 0; fi
  mkdir -p "$ROOT"
  "$PY" -m venv --clear "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "$@"
  "$venv/bin/python" -c "import $mod, numpy"
}
mk tflite-runtime tflite_runtime.interpreter "tflite-runtime==2.14.0" "numpy<2"
mk litert ai_edge_litert.interpreter ai-edge-litert numpy
