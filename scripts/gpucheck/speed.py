"""Section 1, speed: bf16-mixed train steps of lit_align's objectives (lm_head targets vs all, packed vs padded,
shared context vs joined) beside TRL's SFTTrainer and DPOTrainer, one table per model: tokens/s, peak memory,
MFU. The rows are scripts/bench.py's (its cases, measuring and TRL settings)."""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import bench
from gpucheck.device import installed
from gpucheck.rows import Clock, Outcome, run_row
from gpucheck.settings import Settings
from gpucheck.workspace import Workspace


@dataclass
class SpeedRow:
    case: bench.Case
    library: str = "lit_align"      # lit_align | TRL
    label: str = "lit_align"        # the implementation column
    layout: str = "padded"          # padded | packed | shared context | joined
    data: str = "pairs"             # pairs | prefix
    needs: tuple[str, ...] = ()     # modules it needs (TRL rows also need CUDA)
    both: bool = False              # also on the second (larger) model


def speed_rows() -> list[SpeedRow]:
    C = bench.Case
    trl, liger = ("trl",), ("trl", "liger_kernel")
    return [
        SpeedRow(C("SFT", "lit_align"), both=True),
        SpeedRow(C("SFT", "lit_align", lm_head="all")),
        SpeedRow(C("SFT", "TRL"), "TRL", "TRL", needs=trl, both=True),
        SpeedRow(C("SFT", "TRL", extra={"use_liger_kernel": True}), "TRL", "TRL + Liger kernels", needs=liger),
        SpeedRow(C("IW-SFT", "lit_align")),
        SpeedRow(C("DPO", "lit_align"), both=True),
        SpeedRow(C("DPO", "lit_align", lm_head="all")),
        SpeedRow(C("DPO", "lit_align", packed=True), layout="packed", both=True),
        SpeedRow(C("DPO", "TRL", reference="live"), "TRL", "TRL", needs=trl, both=True),
        SpeedRow(C("DPO", "TRL", reference="live", extra={"use_liger_kernel": True}), "TRL", "TRL + Liger kernels",
                 needs=liger),
        SpeedRow(C("DPO (cached reference)", "lit_align", reference="cache")),
        SpeedRow(C("DPO (cached reference)", "lit_align", reference="cache", packed=True), layout="packed"),
        SpeedRow(C("prefix-DPO", "lit_align"), layout="shared context", data="prefix", both=True),
        SpeedRow(C("prefix-DPO", "lit_align", extra={"shared_context": False}), layout="joined", data="prefix"),
    ]


def row_name(r: SpeedRow) -> str:
    return f"{r.case.objective} | {r.label} | {row_head(r)} | {r.layout}"


def row_head(r: SpeedRow) -> str:
    return "TRL's fused head" if r.library == "TRL" else r.case.lm_head


def speed_section(settings: Settings, ws: Workspace, clock: Clock, log: str, device: dict, index: int,
                  budget: float) -> str:
    shape = settings.shapes[index]
    clock.deadline = time.monotonic() + budget
    rows = [r for r in speed_rows() if index == 0 or r.both]
    model_dir = ws.model(shape)
    params = model_params(model_dir)
    args = argparse.Namespace(device=settings.device, precision=settings.precision, batch=settings.batch,
                              max_length=settings.max_length, warmup=settings.warmup, steps=settings.steps,
                              optimizer="fused" if settings.cuda else "foreach")  # (fused: a CUDA kernel)
    results = []
    for r in rows:
        missing = [m for m in r.needs if not installed(m)]
        skip = ("no CUDA" if r.library == "TRL" and not settings.cuda else
                f"{', '.join(missing)} not installed" if missing else None)
        data, n = ws.pairs(r.data) if not skip else (None, 0)
        runner = bench.run_trl if r.library == "TRL" else bench.run_lit_align
        out = run_row(f"speed / {shape.name} / {row_name(r)}", clock, settings, log, runner, r.case, args, model_dir,
                      data, tempfile.mkdtemp(dir=ws.root), skip=skip)
        results.append((r, out))
    pairs_n = ws.data.get("pairs", (None, 0))[1]
    head = (f"### {shape.name}: {params / 1e6:.3g} M parameters (hidden {shape.hidden}, {shape.layers} layers, "
            f"{shape.heads} heads / {shape.kv_heads} key-value heads, intermediate {shape.intermediate}, vocabulary "
            f"{shape.vocab}, tied), {'bf16-mixed' if settings.precision == 'bf16' else 'fp32'}, batch "
            f"{settings.batch}, synthetic records up to {settings.max_length} tokens ({pairs_n} per row), "
            f"{settings.steps} timed steps after {settings.warmup}")
    return head + "\n\n" + speed_table(results, params, device.get("peak_tflops"))


def model_params(model_dir: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def speed_table(results: list[tuple[SpeedRow, Outcome]], params: int, peak: float | None) -> str:
    lines = ["| objective | implementation | lm_head | layout | reference | step (ms) | tokens/s | peak memory (MB) | "
             "above the model (MB) | padding | MFU | tokens/s vs TRL |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    trl = {r.case.objective: o.values for r, o in results if r.label == "TRL" and o.status == "ok"}
    for r, o in results:
        ref = r.case.reference if "DPO" in r.case.objective else "—"
        start = f"| {r.case.objective} | {r.label} | {row_head(r)} | {r.layout} | {ref} |"
        if o.status != "ok":
            lines.append(f"{start} {o.cell()} | | | | | | |")
            continue
        v = o.values
        mfu = f"{100 * bench.mfu(r.case, v, params, peak):.1f}%" if peak else "n/a"
        t = trl.get(r.case.objective)
        vs = f"{v['tokens_per_s'] / t['tokens_per_s']:.2f}x" if t and r.library != "TRL" else ""
        lines.append(f"{start} {v['step_s'] * 1e3:.0f} | {v['tokens_per_s']:.0f} | {v['peak_total_mb']:.0f} | "
                     f"{v['peak_mb']:.0f} | {100 * v['padding']:.0f}% | {mfu} | {vs} |")
    return "\n".join(lines)
