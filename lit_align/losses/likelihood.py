"""Likelihood losses on target tokens: SFT's NLL, IW-SFT's weighted NLL, DPO's optional NLL term. Pure tensors.

Each returns per-row values; objectives/base.py divides the summed loss by the global count over the optimizer
step (every accumulated micro-batch, every device).
"""

from __future__ import annotations

from torch import Tensor


def nll(token_logps: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Negative log-likelihood of the target tokens of each row.

    token_logps (N, T) fp32, mask (N, T) bool -> (sum of -log p per row (N,), target tokens per row (N,)).
    The SFT loss is sum(nll) / sum(tokens) over the whole optimizer step: a mean over target tokens.
    """
    return -(token_logps * mask).sum(-1), mask.sum(-1)


def chosen_nll(chosen_logps: Tensor, chosen_tokens: Tensor) -> Tensor:
    """Per-pair NLL of the chosen continuation, a mean over its tokens: -log π(y_w|x) / |y_w|, (B,).

    The optional NLL term of DPO (as in RPO, Pang et al. 2024): added per pair, α · chosen_nll.
    """
    return -chosen_logps / chosen_tokens.clamp(min=1)


def weighted_nll(token_logps: Tensor, mask: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Importance-weighted NLL of each row: w_i · Σ_t -log p(y_it), and the row's target-token count n_i.

    token_logps (N, T) fp32, mask (N, T) bool, weights (N,) constants (no gradient flows into them)
    -> ((N,) weighted sums, (N,) tokens). The IW-SFT loss is Σ_i w_i·nll_i / Σ_i n_i over the optimizer step:
    the count is the plain token count, so w ≡ 1 is exactly SFT (objectives/iw_sft.py says why).
    """
    loss_sum, tokens = nll(token_logps, mask)
    return weights.detach().to(loss_sum.dtype) * loss_sum, tokens
