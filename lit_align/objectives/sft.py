"""Supervised fine-tuning on completions (the prompt is masked).

    L(θ) = - Σ_i Σ_{t ∈ completion_i} log π_θ(y_t | x_i, y_<t)  /  Σ_i |completion_i|

a mean over the target tokens of the whole optimizer step: all accumulated micro-batches on all devices
(see objectives/base.py), so batch 8 and batch 4 x accumulation 2 give the same gradient. Prompt and
shared-prefix tokens are context only; the end token is a target for full answers, absent for partial
ones. Log-probs are computed in fp32 (logprobs.py).

Metrics: {split}/loss (mean NLL per target token), {split}/token_accuracy (greedy next token = target),
{split}/logps (mean log-prob per sequence).
"""

from __future__ import annotations

from lit_align.logprobs import forward_logps
from lit_align.losses import nll
from lit_align.models import ModelSpec
from lit_align.objectives.base import Objective, OptimSpec, Sums


class SFT(Objective):
    kind = "sft"

    def __init__(self, policy: ModelSpec | None = None, optim: OptimSpec | None = None):
        """
        Args:
            policy: the model to train (hub name, local path, or builtin:tiny / builtin:small), dtype, LoRA.
            optim: AdamW and the learning-rate schedule.
        """
        super().__init__(policy, optim)

    def step(self, batch: dict) -> Sums:
        out = forward_logps(self.model, batch, with_accuracy=True)
        loss_sum, tokens = nll(out.logps, out.mask)
        n_tokens = tokens.sum()
        return {
            "loss": (loss_sum.sum(), n_tokens),
            "token_accuracy": ((out.correct & out.mask).sum(), n_tokens),
            "logps": (out.sequence.detach().sum(), out.sequence.shape[0]),
        }
