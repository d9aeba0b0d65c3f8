"""Per-token and per-sequence log-probabilities of the target tokens, always in fp32.

The full-vocabulary logits are only touched at target positions, a chunk of rows at a time, so the
fp32 copy of a whole (N, T, V) logits tensor is never materialised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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


# -- per-example sequence log-probs, the currency of preference objectives and references -------------


@dataclass
class SeqLogps:
    """Sequence log-probs of the k continuations of B examples, example-major whatever the batch layout."""

    logps: Tensor
    """(B, k) fp32: sum of the target tokens' log-probs of continuation j of example i."""
    tokens: Tensor
    """(B, k) long: number of target tokens of continuation j of example i."""


LogpsFn = Callable[[torch.nn.Module, dict], SeqLogps]
"""model, batch -> SeqLogps: how an objective's batch layout becomes sequence log-probs."""


def sequence_logps(model: torch.nn.Module, batch: dict) -> SeqLogps:
    """Per-continuation log-probs for the padded layout of collate.py (rows continuation-major)."""
    out = forward_logps(model, batch)
    k = batch["num_continuations"]
    return SeqLogps(out.sequence.view(k, -1).T, out.tokens.view(k, -1).T)  # (k*B,) -> (B, k)


def _pick_logps(rows: Tensor, ids: Tensor, chunk_rows: int = 4096) -> Tensor:
    """rows (M, V) logits any dtype, ids (M,) -> log softmax(rows)[ids] (M,) fp32, a chunk at a time."""
    out = torch.empty(ids.shape[0], dtype=torch.float32, device=rows.device)
    for s in range(0, ids.shape[0], chunk_rows):
        chunk = rows[s: s + chunk_rows].float()               # (chunk, V) fp32
        out[s: s + chunk_rows] = chunk.gather(-1, ids[s: s + chunk_rows, None]).squeeze(-1) - chunk.logsumexp(-1)
    return out


def _continuation_logps(context_last: Tensor, logits: Tensor, labels: Tensor) -> Tensor:
    """Token log-probs of continuations that follow a context.

    context_last (N, V): the context's last logit (predicts continuation token 0); logits (N, L, V): the
    continuation's own logits (position t predicts token t+1); labels (N, L): token ids, IGNORE on padding.
    Returns (N, L) fp32, 0 on padding.
    """
    mask = labels != IGNORE                                  # (N, L)
    logps = torch.zeros(labels.shape, dtype=torch.float32, device=labels.device)
    logps[:, 0][mask[:, 0]] = _pick_logps(context_last[mask[:, 0]], labels[:, 0][mask[:, 0]])
    rest = mask[:, 1:]                                       # (N, L-1)
    logps[:, 1:][rest] = _pick_logps(logits[:, :-1][rest], labels[:, 1:][rest])
    return logps


def _context_positions(context_mask: Tensor) -> Tensor:
    """Left-padded (B, C) mask -> position ids 0.. on the real tokens (0 on padding)."""
    return (context_mask.cumsum(-1) - 1).clamp(min=0)


def shared_context_logps(model: torch.nn.Module, batch: dict) -> SeqLogps:
    """Per-continuation log-probs for the shared-context layout of `collate_prefix`: the context (prompt +
    shared prefix) of each example runs ONCE, its key/value cache serves all k continuations.

    1. contexts (B, C), left-padded, explicit position ids, use_cache=True; only the last logit is kept
       (it predicts every continuation's first token);
    2. the cache is repeated to the continuation-major rows [ctx_0..ctx_{B-1}] * k;
    3. continuations (k*B, L), right-padded, run with past_key_values, the concatenated attention mask
       [context mask, continuation mask] and positions continuing after each context.
    Gradients flow through the cache into the context's computation. Equal to running context +
    continuation as one sequence per row (`joined_context_logps`) up to float rounding.
    """
    ctx_ids, ctx_mask = batch["context_ids"], batch["context_mask"]      # (B, C)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]   # (N, L), N = k*B
    k, B = batch["num_continuations"], ctx_ids.shape[0]
    out = model(input_ids=ctx_ids, attention_mask=ctx_mask, position_ids=_context_positions(ctx_mask),
                use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    if cache is None:
        raise RuntimeError("the model returned no key/value cache (gradient checkpointing turns use_cache off); "
                           "use PrefixDPO(shared_context=false) with gradient checkpointing")
    rows = torch.arange(B, device=ids.device).repeat(k)                  # (N,) example of each row
    cache.batch_select_indices(rows)                                     # (B, ...) -> (N, ...) per layer
    n_ctx = ctx_mask.sum(-1)[rows]                                       # (N,)
    positions = n_ctx[:, None] + torch.arange(ids.shape[1], device=ids.device)          # (N, L)
    logits = model(input_ids=ids, attention_mask=torch.cat([ctx_mask[rows], mask], 1), position_ids=positions,
                   past_key_values=cache, use_cache=True).logits                          # (N, L, V)
    logps = _continuation_logps(out.logits[:, -1][rows], logits, labels)                 # (N, L)
    tokens = (labels != IGNORE).sum(-1)
    return SeqLogps(logps.sum(-1).view(k, B).T, tokens.view(k, B).T)


def joined_context_logps(model: torch.nn.Module, batch: dict) -> SeqLogps:
    """The same numbers as `shared_context_logps` from the same batch, computed naively: each row runs its
    context + continuation as one sequence (the context k times). For gradient checkpointing and tests."""
    ctx_ids, ctx_mask = batch["context_ids"], batch["context_mask"]      # (B, C)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]   # (N, L)
    k, B = batch["num_continuations"], ctx_ids.shape[0]
    rows = torch.arange(B, device=ids.device).repeat(k)
    full_mask = torch.cat([ctx_mask[rows], mask], 1)                     # (N, C+L)
    positions = _context_positions(full_mask)
    logits = model(input_ids=torch.cat([ctx_ids[rows], ids], 1), attention_mask=full_mask,
                   position_ids=positions, use_cache=False).logits       # (N, C+L, V)
    C = ctx_ids.shape[1]
    logps = _continuation_logps(logits[:, C - 1], logits[:, C:], labels)  # (N, L)
    tokens = (labels != IGNORE).sum(-1)
    return SeqLogps(logps.sum(-1).view(k, B).T, tokens.view(k, B).T)
