"""scripts/gpu_check.py's parts: settings (model shapes, what each mode decides), device (the device, its bf16 peak,
installed modules, versions), rows (a row in a forked child: Outcome, Clock, run_row), workspace (the shared models
and synthetic data), one module per section (speed, equality, strategies, lora), report (the header, the rows that
DIFFER). gpu_check.py is the command and re-exports their names."""

import os

# The parent never touches CUDA (its forked children could not use it then): NVML answers is_available().
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
