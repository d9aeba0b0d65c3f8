"""The one optimizer and learning-rate schedule of lit_align: AdamW (weight decay on weight matrices only) with a linear
warmup, then cosine or linear decay to a floor, or constant. The objectives (objectives/base.py, from OptimSpec) and
the built-in pretraining (pretrain.py, from its recipe) both build it here.
"""

from __future__ import annotations

import math

import torch

# OptimSpec.implementation -> torch.optim.AdamW keywords. Measured on CPU (torch 2.13, fp32, tests/test_packing.py and
# docs/performance.md): foreach equals for_loop bit for bit, also on FSDP2's DTensor parameters, and
# the step of a 152k x 192 embedding plus 1.2 M other weights takes 158 ms and 115 MB of temporaries against
# for_loop's 204 ms and 222 MB (torch's own CPU default; on CUDA torch already defaults to foreach); fused takes
# 41 ms and no temporaries, but rounds differently (parameters within ~1e-7 after 5 steps, not bit for bit).
OPTIMIZER_IMPLEMENTATIONS = {"foreach": {"foreach": True}, "fused": {"fused": True}, "for_loop": {"foreach": False}}


def lr_lambda(step: int, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
    if schedule == "cosine":  # (this association of the products is the organism's recipe's: its bits depend on it)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return min_ratio + (1 - min_ratio) * (1 - progress)


def adamw_with_schedule(parameters, *, lr: float, total: int, warmup: int, schedule: str, min_ratio: float,
                        weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                        implementation: str = "foreach"):
    """AdamW over the trainable `parameters` (weight decay on those with 2 or more dimensions) and its per-step
    LambdaLR schedule over `total` optimizer steps: (optimizer, scheduler)."""
    params = [p for p in parameters if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **OPTIMIZER_IMPLEMENTATIONS[implementation])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, total, warmup, schedule, min_ratio))
    return optimizer, scheduler
