"""Per-token and per-sequence log-probabilities of the target tokens, always in fp32.

The full-vocabulary logits are only touched at target positions, a chunk of rows at a time, so the
fp32 copy of a whole (N, T, V) logits tensor is never materialised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

IGNORE = -100


@dataclass
class TokenLogps:
    logps: Tensor
    """(N, T) fp32: log p(labels[:, t] | tokens < t) at target positions, 0 elsewhere."""
    mask: Tensor
    """(N, T) bool: target positions."""
    correct: Tensor | None = None
    """(N, T) bool: argmax of the logits equals the target (only when asked for)."""

    @property
    def sequence(self) -> Tensor:
        """(N,) sum of target log-probs per row."""
        return self.logps.sum(-1)

    @property
    def tokens(self) -> Tensor:
        """(N,) number of target tokens per row."""
        return self.mask.sum(-1)


def gather_logps(logits: Tensor, labels: Tensor, with_accuracy: bool = False, chunk_rows: int = 4096) -> TokenLogps:
    """logits (N, T, V) any dtype, labels (N, T) with IGNORE where not a target -> TokenLogps.

    labels[:, t] is predicted by logits[:, t-1] (labels are not shifted; position 0 is never a target).
    """
    N, T, _ = logits.shape
    targets = labels[:, 1:]                                  # (N, T-1)
    mask = targets != IGNORE
    picked = logits[:, :-1][mask]                            # (M, V) only target positions, model dtype
    ids = targets[mask]                                      # (M,)
    out = torch.empty(ids.shape[0], dtype=torch.float32, device=logits.device)
    hit = torch.empty(ids.shape[0], dtype=torch.bool, device=logits.device) if with_accuracy else None
    for s in range(0, ids.shape[0], chunk_rows):
        rows = picked[s: s + chunk_rows].float()             # (chunk, V) fp32: the only fp32 vocab tensor
        out[s: s + chunk_rows] = rows.gather(-1, ids[s: s + chunk_rows, None]).squeeze(-1) - rows.logsumexp(-1)
        if hit is not None:
            hit[s: s + chunk_rows] = rows.argmax(-1) == ids[s: s + chunk_rows]
    full_mask = torch.zeros((N, T), dtype=torch.bool, device=logits.device)
    full_mask[:, 1:] = mask
    logps = torch.zeros((N, T), dtype=torch.float32, device=logits.device)
    logps[full_mask] = out
    correct = None
    if hit is not None:
        correct = torch.zeros((N, T), dtype=torch.bool, device=logits.device)
        correct[full_mask] = hit
    return TokenLogps(logps, full_mask, correct)


def forward_logps(model: torch.nn.Module, batch: dict, with_accuracy: bool = False) -> TokenLogps:
    """Run `model` on a padded batch (see collate.py) and return the target tokens' log-probs."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return gather_logps(logits, batch["labels"], with_accuracy=with_accuracy)
