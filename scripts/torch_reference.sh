#!/usr/bin/env bash
# The PyTorch reference of docs/benchmarks.md (scripts/torch_reference.py) in a venv of its own, made on first
# use, so that torch never enters glide-jax's environment. Arguments go to the script, e.g.
#   bash scripts/torch_reference.sh --preset=mnist --batch=32 --sample_batch=16 --steps=3
# TORCH_VENV: where the venv lives (default .torch-venv, gitignored). TORCH_PIP_ARGS: what pip installs
# (default torch==2.13.0, the version docs/benchmarks.md measured; from PyPI this is a CUDA build on Linux, so
# off this project's machines use TORCH_PIP_ARGS="torch --index-url https://download.pytorch.org/whl/cpu").
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${TORCH_VENV:-.torch-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  # shellcheck disable=SC2086  # TORCH_PIP_ARGS is a list of pip arguments.
  "$venv/bin/python" -m pip install -q ${TORCH_PIP_ARGS:-torch==2.13.0} numpy
fi
exec "$venv/bin/python" scripts/torch_reference.py "$@"
