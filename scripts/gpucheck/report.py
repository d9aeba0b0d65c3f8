"""The report: its sections' names, its header (the command, mode, device, versions, and how the numbers are
counted), and its tables read back: the rows that DIFFER, which fail the run."""

from __future__ import annotations

import os
import time

from gpucheck.device import version
from gpucheck.settings import Settings

SECTIONS = ("speed", "equality", "strategies", "lora")


def header(settings: Settings, device: dict, argv: list[str]) -> str:
    if device.get("cuda"):
        peak = f"{device['peak_tflops']} TFLOP/s dense bf16" if device["peak_tflops"] else "n/a (not in the table)"
        where = (f"{device['name']} ({device['memory_gb']:.0f} GiB, compute capability {device['capability']}, "
                 f"{device['count']} visible, CUDA {device['cuda_version']}); bf16 peak {peak}")
    else:
        where = "CPU (no CUDA device)"
    versions = ", ".join(f"{d} {version(d)}" for d in ("torch", "transformers", "lightning", "peft", "trl",
                                                        "bitsandbytes", "deepspeed", "liger-kernel", "flash-attn",
                                                        "triton"))
    mode = ("DRY RUN: CPU, tiny models, fp32, a step or two per row; CUDA-only rows skipped. The numbers only show "
            "that the code runs." if settings.dry_run else "GPU run")
    setup = os.environ.get("GPU_CHECK_SETUP")
    from packaging.version import Version

    old = Version(version("transformers")) < Version("5.23")  # lit_align's requirement (pyproject.toml)
    return "\n".join([
        "# lit_align GPU check", "",
        f"`python scripts/gpu_check.py {' '.join(argv)}`".replace(" `", "`"), "",
        f"- mode: {mode}",
        f"- device: {where}",
        f"- {versions}",
        *([f"- setup: {setup}"] if setup else []),
        *([f"- **warning**: transformers {version('transformers')} is older than lit_align's requirement (>= 5.23)"]
          if old else []),
        f"- started {time.strftime('%Y-%m-%d %H:%M:%S')}; {os.cpu_count()} CPU cores, {settings.threads} torch threads",
        "",
        "On a GPU both libraries keep fp32 weights and AdamW state and compute under bf16 autocast (bf16-mixed). "
        "Tokens count every real token of the sequences a step trains on (a pair: prompt + chosen and prompt + "
        "rejected, however the implementation computes them). Peak memory is torch.cuda.max_memory_allocated over "
        "the training steps (on CPU: peak resident memory); 'above the model' subtracts what was allocated when "
        "training started (the model, its reference, the data). MFU = tokens/s x FLOPs per token / the device's "
        "dense bf16 peak, with FLOPs per token = 6 N (forward 2 N, backward 4 N; N parameters, the tied LM head "
        "counted as a matmul on every token) + 2 N for a live reference's forward (DPO and prefix-DPO with a "
        "reference copy; TRL DPO), attention left out (at 1024 tokens about 5% of 6 N for these shapes). Rows that "
        "skip work (LM head on targets only, packed pairs, a shared context, a cached reference) are credited with "
        "the full count: their MFU is an effective one.",
    ])


def table_cells(report: str) -> list[list[str]]:
    """The cells of every markdown table row of the report."""
    return [[c.strip() for c in line.split("|")[1:-1]] for line in report.splitlines() if line.startswith("| ")]


def differing_rows(report: str) -> list[str]:
    """The first cells of the report's table rows whose result (the last cell) is DIFFERS."""
    return [r[0] for r in table_cells(report) if r and r[-1].startswith("DIFFERS")]
