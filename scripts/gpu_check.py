"""The GPU check (issue 14): one command on one CUDA GPU writes a markdown report of lit_align's speed, its
equalities on CUDA, its strategies on one GPU and QLoRA, with TRL beside it, in under 8 minutes on an H200.

    bash scripts/gpu_check.sh                           # sets up .venv (bench extra + best-effort extras), runs this
    .venv/bin/python scripts/gpu_check.py --out gpu_check_report.md
    .venv/bin/python scripts/gpu_check.py --dry-run     # CPU, tiny models, fp32, seconds; CUDA-only rows skipped

No download: models are built from configs with random init (a Qwen2-0.5B-shaped and a Qwen2-1.5B-shaped one;
the built-in byte-level tokenizer) and the data is synthetic text of chosen lengths. Sections, each independent
(every row runs in a forked child process, with a time limit; a failure is recorded as the error's last line and
the rest still runs; a section's time budget caps its rows, and what is left when it is spent is marked skipped):

    speed       bf16-mixed train steps of SFT, IW-SFT, DPO (reference copy, reference cache), prefix-DPO:
                tokens/s, peak memory, MFU; lm_head targets vs all, packed vs padded, shared context vs joined;
                TRL's SFTTrainer / DPOTrainer (its fused Triton LM head on CUDA; Liger kernels if installed) in the
                same table. Rows are scripts/bench.py's (same measuring, same TRL settings).
    equality    on the device, fp32: lm_head targets vs all (losses, gradients), packed vs padded DPO (sdpa, eager),
                shared-context vs joined prefix-DPO; bf16 autocast log-probs against fp32; flash-attention vs sdpa
    strategies  one device: FSDP2 (ModelParallelStrategy), FSDP1, DeepSpeed ZeRO-2: batch 8 equals batch 4 x
                accumulation 2, step by step (SFT, whose per-step token counts vary)
    lora        LoRA and QLoRA (4-bit NF4, bitsandbytes): a few steps, the adapter exported at the end of fit
                (lit_align's ExportHF), reloaded with peft, and the reloaded model's logits against the trained one's

`--dry-run` runs every section's code on CPU with tiny sizes in fp32, a step or two per row, and reports the
CUDA-only rows (bf16, FSDP1, DeepSpeed, QLoRA, flash-attention, TRL) as skipped; tests/test_gpu_check.py runs it.

The exit status is 1 when any row's result is DIFFERS (an equality, a strategy, the LoRA reload), and the rows are
named on stderr: a report that says DIFFERS must not pass for a green run. `--dry-run --perturb NAME` moves the
second run's loss of the fp32 equality row NAME by 1% before the comparison, so that CI proves a difference fails.

This file is the command (its options, the order of the sections, the report file and the exit status); the parts
are in scripts/gpucheck/: settings.py (the model shapes, what a GPU run or a dry run decides), device.py (the
device, its bf16 peak, installed modules and versions), rows.py (a row in a forked child under its time limits:
Outcome, Clock, run_row), workspace.py (the shared models and synthetic data), one module per section (speed.py,
equality.py, strategies.py, lora.py) and report.py (the header, the rows that DIFFER).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

# The parent never touches CUDA (its forked children could not use it then): NVML answers is_available().
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402

# The parts (scripts/gpucheck/; those that run rows import bench, which sets the offline / quiet environment); their
# names are gpu_check's too, as the tests use them (listed in __all__).
from gpucheck.device import PEAK_BF16_TFLOPS, device_info, installed, peak_tflops, version  # noqa: E402
from gpucheck.equality import (BF16_MAX_TOL, BF16_MEAN_TOL, FP32_EQUALITIES, FP32_GRAD_TOL,  # noqa: E402
                               FP32_LOSS_TOL, PERTURBATION, check_bf16, check_head, check_packed, check_prefix,
                               equality_section)
from gpucheck.lora import lora_section, lora_train_export_reload  # noqa: E402
from gpucheck.report import SECTIONS, differing_rows, header, table_cells  # noqa: E402
from gpucheck.rows import Clock, Outcome, fmt, last_line, run_row  # noqa: E402
from gpucheck.settings import QWEN2_05B, QWEN2_15B, TINY_A, TINY_B, Settings, Shape, settings_for  # noqa: E402
from gpucheck.speed import (SpeedRow, model_params, row_head, row_name, speed_rows, speed_section,  # noqa: E402
                            speed_table)
from gpucheck.strategies import (STRATEGY_EPS, STRATEGY_LR, STRATEGY_TOL, make_strategy,  # noqa: E402
                                 strategies_section, strategy_losses)
from gpucheck.workspace import Workspace, synthetic_pairs  # noqa: E402

__all__ = [
    "PEAK_BF16_TFLOPS", "device_info", "installed", "peak_tflops", "version",
    "BF16_MAX_TOL", "BF16_MEAN_TOL", "FP32_EQUALITIES", "FP32_GRAD_TOL", "FP32_LOSS_TOL", "PERTURBATION", "check_bf16",
    "check_head", "check_packed", "check_prefix", "equality_section",
    "lora_section", "lora_train_export_reload",
    "SECTIONS", "differing_rows", "header", "table_cells",
    "Clock", "Outcome", "fmt", "last_line", "run_row",
    "QWEN2_05B", "QWEN2_15B", "TINY_A", "TINY_B", "Settings", "Shape", "settings_for",
    "SpeedRow", "model_params", "row_head", "row_name", "speed_rows", "speed_section", "speed_table",
    "STRATEGY_EPS", "STRATEGY_LR", "STRATEGY_TOL", "make_strategy", "strategies_section", "strategy_losses",
    "Workspace", "synthetic_pairs",
    "main",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="The GPU check: lit_align's speed (beside TRL), equalities, strategies "
                                "and QLoRA on one CUDA GPU, as a markdown report (module docstring: what each does).")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny models, fp32: check that the script runs")
    p.add_argument("--out", default="gpu_check_report.md", help="the markdown report")
    p.add_argument("--log", help="the rows' own output (default: the report's path with .log)")
    p.add_argument("--sections", nargs="*", default=list(SECTIONS), choices=SECTIONS)
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads per row")
    p.add_argument("--budget", type=float, default=465, help="seconds for the whole check: a section gets its own "
                   "budget or what is left of this, whichever is less")
    p.add_argument("--keep", action="store_true", help="keep the work directory (models, data)")
    p.add_argument("--perturb", choices=FP32_EQUALITIES, metavar="ROW", help="dry runs: move this fp32 equality "
                   "row's compared loss by 1%%, to see the row DIFFER and the run fail (one of: "
                   + "; ".join(FP32_EQUALITIES) + ")")
    args = p.parse_args(argv)
    if args.perturb and not args.dry_run:
        p.error("--perturb is for --dry-run only (it breaks a check on purpose)")
    argv = sys.argv[1:] if argv is None else argv
    settings = settings_for(args.dry_run, args.threads, args.perturb)
    out = Path(args.out)
    log = str(Path(args.log) if args.log else out.with_suffix(".log"))
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(log).write_text("")
    clock = Clock()
    clock.say(f"gpu_check: {'dry run (CPU)' if args.dry_run else 'GPU'}; rows' output in {log}")
    for module in ("lightning", "lit_align.objectives"):  # imported once here: each forked row then starts at once
        importlib.import_module(module)
    clock.deadline = time.monotonic() + 120
    probe = run_row("device", clock, settings, log, device_info)
    device = probe.values if probe.status == "ok" else {"cuda": False, "name": "unknown", "peak_tflops": None}
    parts, times = [header(settings, device, argv)], []

    def write(note: str = "") -> str:  # after every section, so that a run cut short still leaves its report
        report = "\n\n".join(parts + ([note] if note else [])) + "\n"
        out.write_text(report)
        return report

    if not args.dry_run and not device.get("cuda"):
        why = probe.cell() or "torch.cuda.is_available() is false"
        write(f"**No CUDA device** ({why}): nothing was run. `--dry-run` checks the script on CPU.")
        print(f"gpu_check: no CUDA device ({why}); use --dry-run to check the script on CPU", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="lit_align_gpu_check_"))
    ws = Workspace(settings, work)

    def section(title: str, budget_key: str, fn, *a) -> None:
        t0 = time.monotonic()
        budget = max(0, round(min(settings.budgets[budget_key], args.budget - clock.elapsed())))
        clock.say(f"== {title} (budget {budget} s)")
        try:
            body = fn(settings, ws, clock, log, *a, budget)
        except Exception:  # the section's own set-up failed (model, data): recorded, the others still run
            body = f"failed: {last_line(traceback.format_exc())}"
            clock.say(f"{title}: {body}")
        parts.append(body)
        times.append((title, time.monotonic() - t0, budget))
        write("*(the check is still running: later sections missing)*")

    try:
        if "speed" in args.sections:
            parts.append("## 1. Speed: train steps (lit_align and TRL side by side)")
            for i, shape in enumerate(settings.shapes):
                section(f"speed / {shape.name}", f"speed_{i}", speed_section, device, i)
        if "equality" in args.sections:
            parts.append("## 2. Equality on the device")
            section("equality", "equality", equality_section)
        if "strategies" in args.sections:
            parts.append("## 3. Strategies on one device: batch 8 = batch 4 x accumulation 2")
            section("strategies", "strategies", strategies_section)
        if "lora" in args.sections:
            parts.append("## 4. LoRA and QLoRA: train, export the adapter, reload")
            section("lora", "lora", lora_section)
    finally:
        if args.keep:
            clock.say(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    parts += ["## Time", "\n".join(["| section | wall (s) | budget (s) |", "|---|---:|---:|",
                                    *(f"| {t} | {s:.0f} | {b} |" for t, s, b in times),
                                    f"| total (from the start of gpu_check.py) | {clock.elapsed():.0f} | |"])]
    report = write()
    print("\n" + report, flush=True)
    clock.say(f"report written to {out}")
    differing = differing_rows(report)
    if differing:
        print(f"gpu_check: FAILED: {len(differing)} row(s) DIFFER: " + "; ".join(differing), file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
