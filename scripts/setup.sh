#!/usr/bin/env bash
# Create .venv and install lit_align into it (editable). Usage: bash scripts/setup.sh [dev|bench]
# Machines without an NVIDIA GPU get the CPU build of torch first (no multi-GB CUDA download); with a GPU,
# pip's ordinary torch (CUDA) is installed. Re-running is cheap: installed packages are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found: installing torch with CUDA"
    "${pip[@]}" "torch>=2.4"
  else
    echo "setup: no GPU: installing the CPU build of torch"
    # a local CPU wheel if pip's find-links has one (then its dependencies from the usual index),
    # else PyTorch's CPU index
    if "${pip[@]}" --no-index --no-deps "torch==2.13.0" 2>/dev/null; then
      "${pip[@]}" "torch==2.13.0"
    else
      "${pip[@]}" "torch>=2.4" --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple
    fi
  fi
fi
"${pip[@]}" -e ".${extra:+[$extra]}" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import lit_align, torch; print(f'setup: lit_align {lit_align.__version__}, torch {torch.__version__} in .venv')"
