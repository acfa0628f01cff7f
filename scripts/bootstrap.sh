#!/usr/bin/env bash
# Set up .venv with vlcurate and its test tools. CPU-only machines: torch 2.13.0 goes in first and the
# rest is installed against a constraints file that pins it, so pip never swaps in a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/pip install -q "torch==2.13.0"
fi
.venv/bin/pip install -q -c constraints.txt -e ".[dev]"
echo "vlcurate installed in .venv ($(.venv/bin/vlcurate version))"
