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

`collate_prefix` (prefix-DPO's shared context) and `collate_packed` (whole examples one after another in a row,
a 4D attention mask keeping each inside itself: DPO's packed pairs, SFT's packed rows) are the other layouts.
`padded_length` is the row length an example asks of this layout (what the training sampler groups by,
data/samplers.py); `padding_fraction` measures what a batch wastes on padding.
"""

from __future__ import annotations

import torch

from lit_align.data.tokenize import Tokenized
from lit_align.errors import LitAlignError


def _unzip(items: list[tuple[int, Tokenized]]) -> tuple[list[int], list[Tokenized], int]:
    """(split index, example) items -> indices, examples, k continuations (the same for every example)."""
    indices = [i for i, _ in items]
    examples = [ex for _, ex in items]
    k = len(examples[0].continuations)
    if any(len(ex.continuations) != k for ex in examples):
        raise ValueError("every example of a batch must have the same number of continuations")
    return indices, examples, k


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


def packed_length(ex: Tokenized) -> int:
    """The row length an example takes in the packed layout: its context once plus all its continuations."""
    return len(ex.context) + sum(len(c) for c in ex.continuations)


def prompt_length(record) -> int:
    """A prompt record's context length (data/prompts.py PromptRecord): online objectives' group_by_length key."""
    return len(record.context)


def collate_prompts(items: list, pad_id: int, pad_to_multiple_of: int = 1) -> dict:
    """Prompt records [(index, PromptRecord)] -> {index (B,), records [PromptRecord]}: an online objective's batch,
    whose model inputs it builds itself from what it samples (objectives/grpo.py)."""
    return {"index": torch.tensor([i for i, _ in items], dtype=torch.long), "records": [r for _, r in items]}


def padding_fraction(batch: dict) -> float:
    """Share of padding among the model-input positions of a collated batch: 1 - real / all, over
    attention_mask (N, T), plus context_mask (B, C) in the shared-context layout, token_mask (B, T) in the
    packed one."""
    if "token_mask" in batch:
        return 1.0 - float(batch["token_mask"].float().mean())
    masks = [batch["attention_mask"]] + ([batch["context_mask"]] if "context_mask" in batch else [])
    return 1.0 - sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)


def collate(items: list[tuple[int, Tokenized]], pad_id: int, pad_to_multiple_of: int = 1) -> dict:
    indices, examples, k = _unzip(items)
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
    """Shared-context layout (layouts "prefix_pair", "prefix_pair_joined", "shared_ranked"): each example's context once, its continuations apart.

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
    indices, examples, k = _unzip(items)
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


def unpackable(lengths: list[int], capacity: int) -> tuple[bool, str] | None:
    """None when rows of `capacity` tokens can hold two of the examples of these `lengths` (the two shortest fit
    one row); else (whether `capacity` is below every length, why nothing is packed: every example would get a
    row of its own)."""
    shortest = sorted(lengths)[:2]
    if len(shortest) < 2 or sum(shortest) <= capacity:
        return None
    if shortest[0] > capacity:
        return True, f"is shorter than every example (the shortest takes {shortest[0]} tokens)"
    return False, f"holds no two examples (the two shortest take {shortest[0]} + {shortest[1]} tokens)"


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """A packing plan: the positions 0..n-1 of a batch's examples, grouped into rows of at most `capacity`
    tokens (an example longer than `capacity` gets a row of its own), chosen to waste the fewest token slots.

    Every row of a batch is padded to the longest one, so a batch of R rows costs R x T slots, T its longest
    row. For each row count R from the least that could hold the tokens, ceil(Σ lengths / capacity), up to n,
    the examples are dealt longest first to the row that holds the fewest tokens so far (LPT: balanced rows,
    so T is close to Σ lengths / R); the plan with the fewest slots R x T (then the fewest rows) whose longest
    row fits `capacity` wins. Deterministic: ties go to the earlier example and the lower row. Rows list
    their examples in batch order, and come in the order of their first example.
    """
    n, total = len(lengths), sum(lengths)
    capacity = max([capacity, *lengths])
    order = sorted(range(n), key=lambda i: (-lengths[i], i))                  # longest first, stable
    best: list[list[int]] | None = None
    for R in range(max(-(-total // capacity), 1), n + 1):
        rows, loads = [[] for _ in range(R)], [0] * R
        for i in order:
            r = min(range(R), key=lambda r: (loads[r], r))                    # the emptiest row
            rows[r].append(i)
            loads[r] += lengths[i]
        T = max(loads)
        if T <= capacity and (best is None or R * T < best_slots):
            best, best_slots = rows, R * T
        if best is not None and (R + 1) * max(lengths) >= best_slots:  # T >= the longest example: more rows
            break                                                             # cannot cost fewer slots
    return sorted((sorted(row) for row in best), key=lambda row: row[0])


def collate_packed(items: list[tuple[int, Tokenized]], pad_id: int, pad_to_multiple_of: int = 1,
                   row_length: int | None = None) -> dict:
    """Packed layout: each row holds whole examples one after another, each its context once, then its k
    continuations. A token attends only inside its own example: a continuation to its example's context and
    to itself (a 4D attention mask), and it takes the positions right after the context, so it is computed
    exactly as if it followed the context alone, in a row of its own.

    row_length None (layout "packed_pair", DPO(packed=true)): ONE row per example (a pair: the prompt once, then
        chosen and rejected; a pair's answers need no padding to a common length).
    row_length L (layout "packed_sft", SFT / IW-SFT(packed=true)): as many examples per row as `pack_rows` puts
        there, rows of at most L tokens (or the longest example, if longer). The batch still holds the B
        examples the sampler drew (so the examples per optimizer step and the resume position are those of
        the padded layout); only their arrangement into R <= B rows changes. Positions restart at 0 for each
        example: the batch is its examples' padded rows with the padding squeezed out.

        input_ids       (R, T) long
        attention_mask  (R, 1, T, T) bool  True where query t may attend to key s (padding queries: key 0
                                      only, since a query with nothing to attend to gives NaN); the model
                                      gets it in its attention's form (logprobs.attention_mask_for: eager
                                      attention adds the mask to the scores, so it needs a float one)
        position_ids    (R, T) long   per example: context 0..P-1; each continuation P, P+1, ...
        token_mask      (R, T) long   1 on real tokens
        target_row, target_pos, target_id, target_cont, target_example   (M,) long: target token `target_id`
                                      of continuation `target_cont` of example `target_example` is predicted by
                                      the hidden state at (`target_row`, `target_pos`) (a continuation's first
                                      token by its context's last). Listed example-major, then continuation,
                                      then token order
        cont_tokens     (B, k) long   target tokens per continuation
        weight, index, num_continuations, prefix_tokens, context_tokens: (B,) per example, as in `collate`
    """
    indices, examples, k = _unzip(items)
    lengths = [packed_length(ex) for ex in examples]
    plan = [[b] for b in range(len(examples))] if row_length is None else pack_rows(lengths, row_length)
    R, B = len(plan), len(examples)
    T = max(sum(lengths[b] for b in row) for row in plan)
    T = -(-T // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((R, T), pad_id, dtype=torch.long)
    position_ids = torch.zeros((R, T), dtype=torch.long)
    owner = torch.full((R, T), -1, dtype=torch.long)            # the example a token belongs to (-1: padding)
    part = torch.full((R, T), -1, dtype=torch.long)             # -1 context, j continuation j
    targets: list[list] = [[] for _ in range(B)]                # per example: (row, predictor, id, continuation)
    cont_tokens = torch.zeros((B, k), dtype=torch.long)
    for r, row in enumerate(plan):
        start = 0
        for b in row:
            ex = examples[b]
            P = len(ex.context)
            input_ids[r, start: start + P] = torch.tensor(ex.context, dtype=torch.long)
            position_ids[r, start: start + P] = torch.arange(P)
            owner[r, start: start + P] = b
            at = start + P
            for j, cont in enumerate(ex.continuations):
                n = len(cont)
                input_ids[r, at: at + n] = torch.tensor(cont, dtype=torch.long)
                position_ids[r, at: at + n] = torch.arange(P, P + n)
                owner[r, at: at + n], part[r, at: at + n] = b, j
                # token i is predicted at the position before it in its own sequence (context, continuation j)
                for i in range(0 if P else 1, n):  # without a context, token 0 has no prediction (as in `collate`)
                    targets[b].append((r, start + P - 1 if i == 0 else at + i - 1, cont[i], j))
                cont_tokens[b, j] = n if P else n - 1
                at += n
            if (cont_tokens[b] == 0).any():
                raise ValueError(f"{ex.where}: a continuation has no target token")
            start = at
    real = owner >= 0                                                         # (R, T)
    order = torch.arange(T)
    causal = order[None, :, None] >= order[None, None, :]                     # (1, T, T) key s <= query t
    same = owner[:, :, None] == owner[:, None, :]                             # (R, T, T) one example
    visible = (part[:, None, :] == -1) | (part[:, None, :] == part[:, :, None])   # key is context or own part
    mask = causal & same & visible & real[:, :, None] & real[:, None, :]
    mask[:, :, 0] |= ~real                                                    # padding queries see key 0
    target = torch.tensor([(*t, b) for b in range(B) for t in targets[b]], dtype=torch.long).reshape(-1, 5)
    return {
        "input_ids": input_ids,
        "attention_mask": mask[:, None],
        "position_ids": position_ids,
        "token_mask": real.long(),
        "target_row": target[:, 0], "target_pos": target[:, 1], "target_id": target[:, 2], "target_cont": target[:, 3],
        "target_example": target[:, 4],
        "cont_tokens": cont_tokens,
        **_example_fields(indices, examples, k),
    }
