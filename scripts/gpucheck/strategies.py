"""Section 3, strategies on one device: with no strategy, FSDP2, DeepSpeed ZeRO-2 and FSDP1, batch 8 equals
batch 4 x accumulation 2 step by step (SFT's train/loss), and the same as without a strategy; a run with lr x 2
shows the size of the difference a wrong normalisation would make."""

from __future__ import annotations

import csv
import tempfile
import time
from pathlib import Path

from gpucheck.device import installed
from gpucheck.rows import Clock, Outcome, fmt, run_row
from gpucheck.settings import Settings
from gpucheck.workspace import Workspace


STRATEGY_TOL = 1e-4  # per-step train/loss, fp32
# AdamW's step hardly changes when every gradient is scaled by one factor; with eps = 1 (far above |g|) the step is
# ~lr * gradient, so a wrong normalisation (a factor on the gradient) shows in the next steps' losses.
STRATEGY_LR, STRATEGY_EPS = 0.3, 1.0


def strategy_losses(settings: Settings, strategy: str, batch: int, accumulate: int, lr_scale: float,
                    work: str) -> dict:
    """SFT on builtin:sft for a few steps with `strategy` on one device: the logged train/loss per optimizer step
    (CSVLogger), and whether lit_align refuses the strategy for training (DeepSpeed: then bypassed, here only)."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from lit_align.data import AlignDataModule
    from lit_align.errors import LitAlignError
    from lit_align.modeling.models import ModelSpec
    from lit_align.objectives import SFT, OptimSpec
    from lit_align.objectives import base

    strat = make_strategy(strategy)
    refused = None
    try:
        base.check_strategy(strat)
    except LitAlignError as e:
        refused = str(e).split(":")[0]
        base.UNVERIFIED_STRATEGIES.clear()  # this child only: run it anyway, to see whether the refusal is needed
    obj = SFT(policy=ModelSpec(name=settings.strategy_model),
              optim=OptimSpec(lr=STRATEGY_LR * lr_scale, eps=STRATEGY_EPS, schedule="constant"))
    dm = AlignDataModule(train={"path": "builtin:sft", "limit": 8 * settings.strategy_steps}, batch_size=batch,
                         max_length=64, shuffle=False)
    dm.connect(obj.tokenizer, obj.layout)
    trainer = L.Trainer(accelerator=settings.device, devices=1, strategy=strat, precision="32-true",
                        max_steps=settings.strategy_steps, accumulate_grad_batches=accumulate,
                        logger=CSVLogger(work, name="run"), log_every_n_steps=1, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0)
    trainer.fit(obj, datamodule=dm)
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        losses = {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}
    if sorted(losses) != list(range(settings.strategy_steps)):
        raise RuntimeError(f"train/loss logged at steps {sorted(losses)}, not 0..{settings.strategy_steps - 1}")
    return {"losses": [losses[s] for s in sorted(losses)], "refused": refused,
            "result": " ".join(f"{x:.4f}" for x in losses.values())}


def make_strategy(name: str):
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

    from lit_align.modeling.models import fsdp_auto_wrap_policy

    if name == "none":
        return "auto"
    if name == "FSDP2":
        return ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1, save_distributed_checkpoint=False)
    if name == "FSDP1":
        return FSDPStrategy(sharding_strategy="FULL_SHARD", auto_wrap_policy=fsdp_auto_wrap_policy)
    if name == "DeepSpeed ZeRO-2":
        return DeepSpeedStrategy(stage=2)
    raise ValueError(name)


def strategies_section(settings: Settings, ws: Workspace, clock: Clock, log: str, budget: float) -> str:
    clock.deadline = time.monotonic() + budget
    gpu_only = None if settings.cuda else "no CUDA"
    deepspeed = gpu_only or (None if installed("deepspeed") else "deepspeed not installed")
    plan = [("none (one device)", "none", None), ("FSDP2 (ModelParallelStrategy)", "FSDP2", None),
            ("DeepSpeed ZeRO-2", "DeepSpeed ZeRO-2", deepspeed), ("FSDP1 (FSDPStrategy)", "FSDP1", gpu_only)]

    def run(name, strategy, batch, accumulate, lr_scale=1.0, skip=None) -> Outcome:
        label = f"strategies / {name} / batch {batch} x accumulation {accumulate}" + (
            f" / lr x {lr_scale:g}" if lr_scale != 1 else "")
        return run_row(label, clock, settings, log, strategy_losses, settings, strategy, batch, accumulate, lr_scale,
                       tempfile.mkdtemp(dir=ws.root), skip=skip)

    plain = run(plan[0][0], "none", 8, 1)
    lines = [f"SFT of {settings.strategy_model} on builtin:sft (token counts vary from step to step), fp32, "
             f"{settings.strategy_steps} optimizer steps, AdamW with lr {STRATEGY_LR} and eps {STRATEGY_EPS} (eps "
             "far above the gradients makes each step ~lr x gradient: Adam alone would hide a constant factor on the "
             f"gradient). Same examples in the same order. Tolerance: {fmt(STRATEGY_TOL)} on every step's train/loss.",
             "", "| strategy | lit_align for training | train/loss per step (batch 8) | max abs Δ, batch 8 vs 4 x 2 | "
             "max abs Δ vs no strategy, batch 8 | result |", "|---|---|---|---|---|---|"]
    for name, strategy, skip in plan:
        skip = skip or (None if plain.status == "ok" else "the run without a strategy did not run")
        eight = plain if strategy == "none" else run(name, strategy, 8, 1, skip=skip)
        four = run(name, strategy, 4, 2, skip=skip if eight.status == "ok" else "its batch-8 run did not run")
        if eight.status != "ok" or four.status != "ok":
            bad = eight if eight.status != "ok" else four
            refused = "refused by lit_align (normalisation unverified)" if strategy == "DeepSpeed ZeRO-2" else ""
            lines.append(f"| {name} | {refused} | {bad.cell()} | | | |")
            continue
        a, b = eight.values["losses"], four.values["losses"]
        accum = max(abs(x - y) for x, y in zip(a, b))
        # (plain is ok here: every other strategy's batch-8 run is skipped when it is not)
        base = max(abs(x - y) for x, y in zip(a, plain.values["losses"]))
        refused = eight.values["refused"]
        allowed = f"refused ({refused}); bypassed in this check" if refused else "allowed"
        ok = accum <= STRATEGY_TOL and base <= STRATEGY_TOL
        if ok:
            result = "equal" + ("; lit_align's refusal could be lifted for one GPU" if refused else "")
        else:
            result = "DIFFERS" + ("; the refusal stands (normalisation wrong under it)" if refused else "")
        lines.append(f"| {name} | {allowed} | {eight.values['result']} | {fmt(accum)} | "
                     f"{'—' if strategy == 'none' else fmt(base)} | {result} |")
    # the check's power: what a factor 2 on the gradient (e.g. a sum over 2 micro-batches not divided by 2) does
    doubled = run(plan[0][0], "none", 8, 1, lr_scale=2.0)
    if doubled.status == "ok" and plain.status == "ok":
        d = max(abs(x - y) for x, y in zip(doubled.values["losses"], plain.values["losses"]))
        lines += ["", "Sensitivity: the same run with lr x 2 (what a factor 2 on the gradient does) differs from it "
                      f"by max abs Δ {fmt(d)} ({d / STRATEGY_TOL:.0f}x the tolerance)."]
    else:
        lines += ["", f"Sensitivity run (lr x 2): {doubled.cell() or plain.cell()}"]
    return "\n".join(lines)
