#!/usr/bin/env bash
# Create .venv and install anomaly_seg_ros with its test tools (and Ray). Idempotent and quiet on re-runs.
#
# torch is installed first and on its own, so that a machine without an NVIDIA GPU gets the
# CPU build (torch==2.13.0+cpu, ~200 MB) rather than the default Linux wheel with several GB
# of CUDA libraries. It is looked up in the configured package indexes first and then in the
# PyTorch CPU index. With a GPU (nvidia-smi works) the default CUDA build is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=2.13.0
STAMP="$VENV/.installed"

if [ -f "$STAMP" ] && [ "$STAMP" -nt setup.py ] && [ "$STAMP" -nt scripts/setup.sh ]; then
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip_install() { "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@"; }

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    pip_install "torch==${TORCH_VERSION}"
  elif ! pip_install "torch==${TORCH_VERSION}+cpu" 2>/dev/null; then
    pip_install "torch==${TORCH_VERSION}+cpu" --extra-index-url https://download.pytorch.org/whl/cpu
  fi
fi

# the ray extra too: the test suite starts a local Ray cluster (test/test_parallel_replay.py)
pip_install -e ".[test,ray]"
touch "$STAMP"
