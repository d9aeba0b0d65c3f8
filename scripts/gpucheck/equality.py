"""Section 2, equality on the device: in fp32, lm_head targets vs all, packed vs padded DPO (sdpa, eager) and
shared-context vs joined prefix-DPO give the same loss and gradients; bf16 autocast log-probs against fp32, and
flash-attention against sdpa. FP32_EQUALITIES names the rows `--perturb` may break on purpose."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from gpucheck.device import installed
from gpucheck.rows import Clock, fmt, run_row
from gpucheck.settings import Settings
from gpucheck.workspace import Workspace


# fp32 on the device: losses within a relative 1e-4, gradients within 1e-3 of the largest gradient entry. bf16
# autocast against fp32 (the same weights): per-token log-probs within 0.05 nats on average and 0.5 at most
# (measured on CPU with random-init models of up to 8 layers: mean <= 0.01, max <= 0.03).
FP32_LOSS_TOL, FP32_GRAD_TOL = 1e-4, 1e-3
BF16_MEAN_TOL, BF16_MAX_TOL = 0.05, 0.5
PERTURBATION = 1e-2
"""--perturb: the relative change of the second run's loss, 100x the tolerance."""
FP32_EQUALITIES = ("lm_head targets vs all: SFT loss and gradients", "lm_head targets vs all: DPO loss and gradients",
                   "packed vs padded DPO, sdpa: loss and gradients", "packed vs padded DPO, eager: loss and gradients",
                   "shared-context vs joined prefix-DPO: loss and gradients")
"""The equality rows that run in fp32 (on CPU too): the rows `--perturb` may name."""


def _to(batch: dict, device: str) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _objective(cls, model_dir: Path, device: str, **kwargs):
    """The objective on `device`, its policy moved off the starting weights by seeded noise (the same in every
    call), so that policy and reference differ: DPO's loss is then not just log 2."""
    from lit_align.modeling.models import ModelSpec

    policy = kwargs.pop("policy", {})
    obj = cls(policy=ModelSpec(name=str(model_dir), **policy), **kwargs)
    obj.configure_model()
    obj = obj.to(device)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for p in obj.model.parameters():
            p.add_(torch.randn(p.shape, generator=g, device=device) * 0.02)
    return obj


def _batch(obj, data: Path, n: int, max_length: int, device: str) -> dict:
    """The first n records of `data` in the objective's batch layout."""
    from lit_align.data import AlignDataModule

    dm = AlignDataModule(train=str(data), batch_size=n, max_length=max_length, shuffle=False)
    dm.connect(obj.tokenizer, obj.layout)
    dm.setup("fit")
    return _to(next(iter(dm.eval_loader("train", n))), device)


def _loss_and_grads(obj, batch: dict) -> tuple[float, dict]:
    """The objective's loss (sum / count, as the base class normalises it) and its gradients, in fp32."""
    obj.model.zero_grad(set_to_none=True)
    loss_sum, count = obj.step(batch)["loss"]
    loss = loss_sum / count
    loss.backward()
    return float(loss), {n: p.grad.detach().clone() for n, p in obj.model.named_parameters() if p.grad is not None}


def _compare(a: tuple[float, dict], b: tuple[float, dict], perturb: float = 0.0) -> dict:
    (la, ga), (lb, gb) = a, b
    lb *= 1 + perturb  # (--perturb: a difference the comparison must catch)
    if ga.keys() != gb.keys() or not ga:
        raise RuntimeError(f"the two runs have gradients for different parameters ({len(ga)} vs {len(gb)})")
    scale = max(g.abs().max().item() for g in ga.values())
    grad = max((ga[n] - gb[n]).abs().max().item() for n in ga) / max(scale, 1e-30)
    loss = abs(la - lb) / max(abs(la), 1e-30)
    ok = loss <= FP32_LOSS_TOL and grad <= FP32_GRAD_TOL
    return {"measured": f"loss {la:.5f} vs {lb:.5f} (relative Δ {fmt(loss)}); gradients: max abs Δ / max abs g = "
                        f"{fmt(grad)}", "tolerance": f"loss {fmt(FP32_LOSS_TOL)}, gradients {fmt(FP32_GRAD_TOL)}",
            "result": "equal" if ok else "DIFFERS"}


def check_head(settings: Settings, model_dir: Path, data: Path, objective: str, perturb: float = 0.0) -> dict:
    """lm_head: targets (chunked, on target positions) vs all (the plain forward): the same loss and gradients."""
    from lit_align.modeling.logprobs import set_lm_head
    from lit_align.objectives import DPO, SFT

    obj = _objective(SFT if objective == "SFT" else DPO, model_dir, settings.device)
    batch = _batch(obj, data, settings.equality_batch, settings.max_length, settings.device)
    runs = []
    for head in ("targets", "all"):
        set_lm_head(obj.model, head)
        runs.append(_loss_and_grads(obj, batch))
    return _compare(*runs, perturb)


def check_packed(settings: Settings, model_dir: Path, data: Path, attention: str, perturb: float = 0.0) -> dict:
    """DPO on packed pairs (one row a pair, 4D mask) vs padded rows: the same loss and gradients."""
    from lit_align.objectives import DPO

    runs = []
    for packed in (False, True):
        obj = _objective(DPO, model_dir, settings.device, policy={"attn_implementation": attention}, packed=packed)
        runs.append(_loss_and_grads(obj, _batch(obj, data, settings.equality_batch, settings.max_length,
                                                settings.device)))
        del obj
    return _compare(*runs, perturb)


def check_prefix(settings: Settings, model_dir: Path, data: Path, perturb: float = 0.0) -> dict:
    """prefix-DPO with the shared context run once (its key/value cache serving both continuations) vs joined
    (context + continuation as one sequence per row): the same loss and gradients."""
    from lit_align.objectives import PrefixDPO

    runs = []
    for shared in (True, False):
        obj = _objective(PrefixDPO, model_dir, settings.device, shared_context=shared)
        runs.append(_loss_and_grads(obj, _batch(obj, data, settings.equality_batch, settings.max_length,
                                                settings.device)))
        del obj
    return _compare(*runs, perturb)


def check_bf16(settings: Settings, model_dir: Path, data: Path, attention: str | None = None) -> dict:
    """Per-token log-probs of the same fp32 weights under bf16 autocast (as bf16-mixed runs them) against fp32
    (attention None); or, with `attention` (flash_attention_2), that attention against sdpa, both under autocast."""
    from lit_align.modeling.logprobs import forward_logps
    from lit_align.objectives import SFT

    def logps(obj, autocast: bool) -> tuple[torch.Tensor, torch.Tensor]:
        batch = _batch(obj, data, settings.equality_batch, settings.max_length, settings.device)
        with torch.no_grad(), torch.autocast(settings.device, dtype=torch.bfloat16, enabled=autocast):
            out = forward_logps(obj.model, batch)
        return out.logps[out.mask], out.sequence

    if attention is None:
        obj = _objective(SFT, model_dir, settings.device)
        (a, seq_a), (b, seq_b) = logps(obj, False), logps(obj, True)
        what = "bf16 autocast vs fp32"
    else:
        (a, seq_a) = logps(_objective(SFT, model_dir, settings.device, policy={"attn_implementation": "sdpa"}), True)
        (b, seq_b) = logps(_objective(SFT, model_dir, settings.device, policy={"attn_implementation": attention}), True)
        what = f"{attention} vs sdpa, bf16 autocast"
    d = (a - b).abs()
    mean, worst = d.mean().item(), d.max().item()
    seq = ((seq_a - seq_b).abs() / seq_a.abs()).max().item()
    ok = mean <= BF16_MEAN_TOL and worst <= BF16_MAX_TOL
    return {"measured": f"{what}: per-token abs Δ log p: mean {fmt(mean)}, max {fmt(worst)} nats over {d.numel()} "
                        f"tokens (mean log p {a.mean().item():.2f}); per-sequence relative max {fmt(seq)}",
            "tolerance": f"mean {BF16_MEAN_TOL}, max {BF16_MAX_TOL}", "result": "equal" if ok else "DIFFERS"}


def equality_section(settings: Settings, ws: Workspace, clock: Clock, log: str, budget: float) -> str:
    clock.deadline = time.monotonic() + budget
    shape = settings.shapes[0]
    model_dir = ws.model(shape)
    pairs, prefix = ws.pairs("pairs")[0], ws.pairs("prefix")[0]
    flash = ("no CUDA" if not settings.cuda else None) or (None if installed("flash_attn") else
                                                           "flash-attn not installed")
    head_sft, head_dpo, packed_sdpa, packed_eager, shared_prefix = FP32_EQUALITIES
    checks = [
        (head_sft, check_head, (pairs, "SFT"), None),
        (head_dpo, check_head, (pairs, "DPO"), None),
        (packed_sdpa, check_packed, (pairs, "sdpa"), None),
        (packed_eager, check_packed, (pairs, "eager"), None),
        (shared_prefix, check_prefix, (prefix,), None),
        ("bf16 log-probs against fp32", check_bf16, (pairs,), None if settings.cuda else "no CUDA"),
        ("flash-attention 2 vs sdpa log-probs (bf16)", check_bf16, (pairs, "flash_attention_2"), flash),
    ]
    lines = [f"{shape.name} model, batch {settings.equality_batch}, records up to {settings.max_length} tokens, on "
             f"{settings.device}, fp32 unless the row says otherwise.", "",
             "| check | measured | tolerance | result |", "|---|---|---|---|"]
    for name, fn, a, skip in checks:
        if name == settings.perturb:
            a = (*a, PERTURBATION)
        o = run_row(f"equality / {name}", clock, settings, log, fn, settings, model_dir, *a, skip=skip)
        v = o.values
        lines.append(f"| {name} | {v.get('measured', '')} | {v.get('tolerance', '')} | {v.get('result', o.cell())} |")
    return "\n".join(lines)
