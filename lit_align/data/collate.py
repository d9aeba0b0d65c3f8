"""Pad tokenized examples into a batch.

Batch layout (every objective reads the same keys):
    input_ids       (N, T) long   N = B * k rows, continuation-major: rows [j*B:(j+1)*B] hold continuation j
                                  of the B examples (k=1 SFT; k=2 chosen then rejected)
    attention_mask  (N, T) long   1 on real tokens, 0 on padding (right padding)
    labels          (N, T) long   the token id where it is a loss target, else -100 (not shifted:
                                  labels[t] is predicted by the logits at t-1)
    weight          (B,)  float   the record's `weight` (1.0 if it has none)
    index           (B,)  long    position of the example in its split (keys caches and weights)
    num_continuations  int        k
    prefix_tokens   (B,)  long    shared-prefix tokens in each example's context
    context_tokens  (B,)  long

`padded_length` is the row length an example asks of this layout (what the training sampler groups by,
data/samplers.py); `padding_fraction` measures what a batch wastes on padding.
"""

from __future__ import annotations

import torch

from lit_align.data.tokenize import Tokenized
from lit_align.errors import LitAlignError


def _example_fields(indices: list[int], examples: list[Tokenized], k: int) -> dict:
    """Per-example entries shared by every batch layout."""
    return {
        "weight": torch.tensor([1.0 if ex.weight is None else ex.weight for ex in examples]),
        "index": torch.tensor(indices, dtype=torch.long),
        "num_continuations": k,
        "prefix_tokens": torch.tensor([ex.prefix_len for ex in examples], dtype=torch.long),
        "context_tokens": torch.tensor([len(ex.context) for ex in examples], dtype=torch.long),
    }


def padded_length(ex: Tokenized) -> int:
    """The padded row length an example causes: its context plus its longest continuation (its rows share
    one padded length in a batch). Right for `collate_prefix` too: its context and continuation widths
    grow with the same two terms."""
    return len(ex.context) + max(len(c) for c in ex.continuations)


def padding_fraction(batch: dict) -> float:
    """Share of padding among the model-input positions of a collated batch: 1 - real / all, over
    attention_mask (N, T), plus context_mask (B, C) in the shared-context layout."""
    masks = [batch["attention_mask"]] + ([batch["context_mask"]] if "context_mask" in batch else [])
    return 1.0 - sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)


def collate(items: list[tuple[int, Tokenized]], pad_id: int, pad_to_multiple_of: int = 1) -> dict:
    indices = [i for i, _ in items]
    examples = [ex for _, ex in items]
    k = len(examples[0].continuations)
    if any(len(ex.continuations) != k for ex in examples):
        raise ValueError("every example of a batch must have the same number of continuations")
    rows = [(ex.context, ex.continuations[j]) for j in range(k) for ex in examples]
    T = max(len(ctx) + len(cont) for ctx, cont in rows)
    T = -(-T // pad_to_multiple_of) * pad_to_multiple_of
    N = len(rows)
    input_ids = torch.full((N, T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((N, T), dtype=torch.long)
    labels = torch.full((N, T), -100, dtype=torch.long)
    for r, (ctx, cont) in enumerate(rows):
        ids = torch.tensor(ctx + cont, dtype=torch.long)
        input_ids[r, : len(ids)] = ids
        attention_mask[r, : len(ids)] = 1
        first = max(len(ctx), 1)  # position 0 has no prediction
        if first >= len(ids):  # tokenize.py drops such examples; a row that trains on nothing is a bug
            ex = examples[r % len(examples)]
            raise ValueError(f"{ex.where}: continuation {r // len(examples)} has no target token")
        labels[r, first: len(ids)] = ids[first:]
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        **_example_fields(indices, examples, k),
    }


def collate_prefix(items: list[tuple[int, Tokenized]], pad_id: int, pad_to_multiple_of: int = 1) -> dict:
    """Shared-context layout (kind "prefix_pair"): each example's context once, its continuations apart.

        context_ids     (B, C) long   prompt + shared prefix, LEFT-padded (so every context ends at C-1
                                      and continuations follow it directly)
        context_mask    (B, C) long   1 on real context tokens
        input_ids       (N, L) long   continuation tokens only, N = k * B rows continuation-major (as in
                                      `collate`), right-padded
        attention_mask  (N, L) long   1 on real continuation tokens
        labels          (N, L) long   the continuation token ids, -100 on padding. All are targets: token 0
                                      is predicted by the context's last logit, token t by the logit at t-1
        weight, index, num_continuations, prefix_tokens, context_tokens: as in `collate`
    """
    indices = [i for i, _ in items]
    examples = [ex for _, ex in items]
    k = len(examples[0].continuations)
    if any(len(ex.continuations) != k for ex in examples):
        raise ValueError("every example of a batch must have the same number of continuations")
    for ex in examples:
        if not ex.context:
            raise LitAlignError(f"{ex.where}: prefix-DPO's shared-context layout needs a non-empty context "
                                "(a prompt or a prefix)")
    B = len(examples)
    C = max(len(ex.context) for ex in examples)
    C = -(-C // pad_to_multiple_of) * pad_to_multiple_of
    context_ids = torch.full((B, C), pad_id, dtype=torch.long)
    context_mask = torch.zeros((B, C), dtype=torch.long)
    for b, ex in enumerate(examples):
        context_ids[b, C - len(ex.context):] = torch.tensor(ex.context, dtype=torch.long)
        context_mask[b, C - len(ex.context):] = 1
    rows = [ex.continuations[j] for j in range(k) for ex in examples]
    L = -(-max(len(r) for r in rows) // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((k * B, L), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((k * B, L), dtype=torch.long)
    labels = torch.full((k * B, L), -100, dtype=torch.long)
    for r, cont in enumerate(rows):
        ids = torch.tensor(cont, dtype=torch.long)
        input_ids[r, : len(ids)] = ids
        attention_mask[r, : len(ids)] = 1
        labels[r, : len(ids)] = ids
    return {
        "context_ids": context_ids,
        "context_mask": context_mask,
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        **_example_fields(indices, examples, k),
    }
