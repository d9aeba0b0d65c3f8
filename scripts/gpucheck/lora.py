"""Section 4, LoRA and QLoRA: a few SFT steps of an adapter (QLoRA: on a 4-bit NF4 base), exported by
lit_align's ExportHF at the end of fit, reloaded with peft, and the reloaded model's logits against the trained
one's."""

from __future__ import annotations

import csv
import tempfile
import time
from pathlib import Path

import torch

from gpucheck.device import installed
from gpucheck.equality import _to
from gpucheck.rows import Clock, fmt, run_row
from gpucheck.settings import Settings
from gpucheck.workspace import Workspace


def lora_train_export_reload(settings: Settings, model_dir: Path, data: Path, quantize: bool, work: str) -> dict:
    """A few SFT steps of a LoRA adapter (on 4-bit NF4 weights with `quantize`), exported at the end of fit by
    lit_align's ExportHF, reloaded onto a freshly loaded base with peft: the reloaded logits against the trained
    model's, on the same batch."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lit_align.callbacks.export import ExportHF
    from lit_align.data import AlignDataModule
    from lit_align.modeling.models import LoraSpec, ModelSpec, quantization_kwargs
    from lit_align.objectives import SFT, OptimSpec

    spec = ModelSpec(name=str(model_dir), quantization="4bit" if quantize else None, gradient_checkpointing=quantize,
                     lora=LoraSpec(r=16, alpha=32, dropout=0.0))
    obj = SFT(policy=spec, optim=OptimSpec(lr=1e-3, schedule="constant"))
    dm = AlignDataModule(train=str(data), batch_size=4, max_length=settings.max_length, shuffle=False)
    dm.connect(obj.tokenizer, obj.layout)
    out = Path(work) / "adapter"
    steps = 4 if settings.cuda else 2
    autocast = dict(device_type=settings.device, dtype=torch.bfloat16, enabled=settings.cuda)

    def logits(model, batch: dict) -> torch.Tensor:  # (B, T, V) fp32 on CPU, eval mode, as bf16-mixed computes them
        with torch.no_grad(), torch.autocast(**autocast):
            return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float().cpu()

    class TrainedLogits(L.Callback):
        """The trained model's logits on the first batch, taken on its device before fit's teardown moves it."""

        def on_train_end(self, trainer, module):
            module.model.eval()
            self.batch = _to(next(iter(trainer.datamodule.eval_loader("train", 4))), module.device)
            self.logits = logits(module.model, self.batch)

    trained_logits = TrainedLogits()
    trainer = L.Trainer(accelerator=settings.device, devices=1, precision="bf16-mixed" if settings.cuda else "32-true",
                        max_steps=steps, logger=CSVLogger(work, name="run"), log_every_n_steps=1,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0,
                        callbacks=[trained_logits, ExportHF(dirpath=str(out))])
    trainer.fit(obj, datamodule=dm)
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    files = sorted(p.name for p in out.iterdir())
    if "adapter_config.json" not in files:
        raise RuntimeError(f"no adapter_config.json in the export ({files})")
    trained = sum(p.abs().sum().item() for n, p in obj.model.named_parameters() if "lora_B" in n)
    # the base as lit_align loads it (4-bit: quantized onto the GPU by from_pretrained, not moved after)
    kwargs = quantization_kwargs(spec) if quantize else {}
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **kwargs)
    reloaded = PeftModel.from_pretrained(base, out)
    reloaded = (reloaded if quantize else reloaded.to(settings.device)).eval()
    a = trained_logits.logits
    b = logits(reloaded, _to(trained_logits.batch, settings.device))
    diff = ((a - b).abs().max() / a.abs().max()).item()
    size = sum(p.stat().st_size for p in out.iterdir()) / 2 ** 20
    ok = diff <= 1e-3 and trained > 0 and len(losses) == steps
    return {"steps": len(losses), "losses": f"{losses[0]:.4f} → {losses[-1]:.4f}" if losses else "none logged",
            "export": f"{', '.join(files)} ({size:.1f} MB)",
            "reload": f"max abs Δ logits / max abs logit = {fmt(diff)}",
            "result": ("equal" if ok else "DIFFERS") + ("" if trained > 0 else " (lora_B still zero: nothing trained)")}


def lora_section(settings: Settings, ws: Workspace, clock: Clock, log: str, budget: float) -> str:
    clock.deadline = time.monotonic() + budget
    shape = settings.shapes[0]
    model_dir, data = ws.model(shape), ws.pairs("pairs")[0]
    qlora_skip = "no CUDA" if not settings.cuda else (None if installed("bitsandbytes") else
                                                      "bitsandbytes not installed")
    precision = "bf16-mixed" if settings.cuda else "fp32"
    plan = [(f"LoRA r 16, {precision} (no quantization)", False, None),
            ("QLoRA: 4-bit NF4 base (bitsandbytes), LoRA r 16, bf16-mixed, gradient checkpointing", True, qlora_skip)]
    lines = [f"SFT on {shape.name}, batch 4; the adapter is written by lit_align's ExportHF at the end of fit, "
             "reloaded onto a newly loaded base (quantized the same way) with peft.PeftModel.from_pretrained, and its "
             "logits compared with the trained model's (tolerance 1e-3 of the largest logit).", "",
             "| run | steps | train/loss first → last | export | reload | result |", "|---|---|---|---|---|---|"]
    for name, quantize, skip in plan:
        o = run_row(f"lora / {name}", clock, settings, log, lora_train_export_reload, settings, model_dir, data,
                    quantize, tempfile.mkdtemp(dir=ws.root), skip=skip)
        v = o.values
        if o.status != "ok":
            lines.append(f"| {name} | {o.cell()} | | | | |")
        else:
            lines.append(f"| {name} | {v['steps']} | {v['losses']} | {v['export']} | {v['reload']} | {v['result']} |")
    return "\n".join(lines)
