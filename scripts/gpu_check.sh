#!/usr/bin/env bash
# The GPU check (issue 14) in one command, on a machine with one CUDA GPU:
#   bash scripts/gpu_check.sh                        # report: gpu_check_report.md (and gpu_check_report.log)
#   bash scripts/gpu_check.sh --out /tmp/report.md   # any flag of scripts/gpu_check.py (--help lists them)
#   bash scripts/gpu_check.sh --dry-run              # CPU, tiny models: checks that the script runs (CI does)
# 1. sets up .venv with the bench extra (TRL) through scripts/setup.sh (CUDA torch where nvidia-smi sees a GPU);
# 2. on a GPU run, tries bitsandbytes (QLoRA), deepspeed (ZeRO-2) and liger-kernel (TRL's Liger rows), each on its
#    own and never fatal: what does not install, the report marks "not installed";
# 3. runs scripts/gpu_check.py (about 7.5 minutes on an H200, set-up not counted).
# GPU_CHECK_PYTHON=/path/to/python skips 1-2 and runs with that Python (its torch, lightning, transformers, peft;
# lit_align from this checkout), e.g. on a machine that cannot reach a package registry. If set-up fails, a
# python3 that already has torch + lightning + transformers + peft is used instead, and the report says so.
set -uo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
export PIP_DEFAULT_TIMEOUT="${PIP_DEFAULT_TIMEOUT:-20}" PIP_RETRIES="${PIP_RETRIES:-1}"  # no registry: fail fast
dry=false
for a in "$@"; do [ "$a" = "--dry-run" ] && dry=true; done

python="${GPU_CHECK_PYTHON:-}"
setup_note=""
if [ -n "$python" ]; then
  setup_note="GPU_CHECK_PYTHON=$python, no set-up"
elif bash scripts/setup.sh bench; then
  python=.venv/bin/python
  setup_note="scripts/setup.sh bench"
  if ! $dry; then
    pip=("$python" -m pip install -q --disable-pip-version-check)
    for pkg in bitsandbytes deepspeed liger-kernel; do
      if [ "$pkg" = deepspeed ]; then  # an sdist: built against the installed torch, not in an isolated build env
        timeout 120 "${pip[@]}" setuptools wheel >/dev/null 2>&1
        install=("${pip[@]}" --no-build-isolation deepspeed)
      else
        install=("${pip[@]}" "$pkg")
      fi
      if timeout 300 "${install[@]}" >/dev/null 2>&1; then
        echo "gpu_check: $pkg installed"
        setup_note="$setup_note, $pkg"
      else
        echo "gpu_check: $pkg did not install (its rows will say 'not installed')"
      fi
    done
  fi
elif python3 -c "import torch, lightning, transformers, peft" 2>/dev/null; then
  python=python3
  setup_note="scripts/setup.sh bench FAILED; ran with $(command -v python3) and the packages it has"
  echo "gpu_check: set-up failed; falling back to $(command -v python3)"
else
  echo "gpu_check: set-up failed and no python3 with torch + lightning + transformers + peft: nothing to run" >&2
  exit 1
fi
echo "gpu_check: set-up took $((SECONDS - start)) s"
GPU_CHECK_SETUP="$setup_note ($((SECONDS - start)) s)" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" \
  exec "$python" scripts/gpu_check.py "$@"
