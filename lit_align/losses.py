"""Loss functions as pure tensor functions: per-example values in, per-example losses out. No Lightning.

Reductions (over tokens, examples, devices and accumulated micro-batches) happen in objectives/base.py,
which divides the summed loss by the global count of what it is averaged over.
"""

from __future__ import annotations

from torch import Tensor


def nll(token_logps: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Negative log-likelihood of the target tokens of each row.

    token_logps (N, T) fp32, mask (N, T) bool -> (sum of -log p per row (N,), target tokens per row (N,)).
    The SFT loss is sum(nll) / sum(tokens) over the whole optimizer step: a mean over target tokens.
    """
    return -(token_logps * mask).sum(-1), mask.sum(-1)
