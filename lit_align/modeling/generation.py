"""Generate answers to prompts with a policy (optionally steered).

    texts = generate(model, tokenizer, ["Which one would you like?"], max_new_tokens=12)      # greedy
    with vector.apply(model, 4.0, layers=[1]) as steer:                                         # CAA on top
        texts = generate(model, tokenizer, prompts, steering=steer)

Prompts are rendered exactly as the data module renders a record's prompt for training (data/tokenize.py: the
chat template with its generation prompt when the tokenizer has one, else plain text), left-padded into
batches, and decoded greedily (or sampled with a seed) up to `max_new_tokens` or the end token. With `steering`
(steering/vectors.py), the vector is added from the first generated token on (CAA's "after the prompt").
`generate_ids` does the same from token ids (data/prompts.py reads them from a data file). Either leaves the
model's train/eval flags and the torch RNG as it found them, and touches no gradient.

The generated text is scored by scorers.py (`{split}/gen/<scorer>`).
"""

from __future__ import annotations

import torch

from lit_align.data.records import Example
from lit_align.data.tokenize import Tokenizer, TokenizeSpec


@torch.no_grad()
def generate_ids(model: torch.nn.Module, contexts: list[list[int]], pad_id: int, end_id: int | None,
                 max_new_tokens: int = 16, batch_size: int = 32, steering=None, do_sample: bool = False,
                 seed: int = 0, synced_gpus: bool = False) -> list[list[int]]:
    """The generated token ids after each context, up to and including the end token (when it came).
    `synced_gpus`: every rank keeps stepping until all are done (FSDP: each forward gathers sharded weights,
    so every rank must run the same number of them)."""
    device = next(model.parameters()).device
    modes = [(m, m.training) for m in model.modules()]
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    model.eval()
    out: list[list[int]] = []
    try:
        for start in range(0, len(contexts), batch_size):
            rows = contexts[start: start + batch_size]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), pad_id, dtype=torch.long)          # (B, T), left padding: every
            mask = torch.zeros((len(rows), width), dtype=torch.long)                 # prompt ends where generation starts
            for i, r in enumerate(rows):
                ids[i, width - len(r):] = torch.tensor(r)
                mask[i, width - len(r):] = 1
            if steering is not None:
                steering.set_prompt_lengths(mask.sum(-1))
            if do_sample:
                torch.manual_seed(seed + start)
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                                 do_sample=do_sample, pad_token_id=pad_id, eos_token_id=end_id,
                                 synced_gpus=synced_gpus)[:, width:].tolist()           # (B, <= max_new_tokens)
            for answer in gen:
                out.append(answer[: answer.index(end_id) + 1] if end_id in answer else answer)
    finally:
        for m, mode in modes:
            m.training = mode
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    return out


def generate(model: torch.nn.Module, tokenizer, prompts: list, max_new_tokens: int = 16, batch_size: int = 32,
             chat_template: bool | None = None, steering=None, do_sample: bool = False, seed: int = 0) -> list[str]:
    """The generated continuation (text, special tokens removed) of each prompt (text or chat messages)."""
    render = Tokenizer(tokenizer, TokenizeSpec(chat_template=chat_template))
    contexts = [render.context_ids(Example(prompt=p, continuations=[]))[0] for p in prompts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    gen = generate_ids(model, contexts, pad, render.end_id, max_new_tokens, batch_size, steering, do_sample, seed)
    return tokenizer.batch_decode(gen, skip_special_tokens=True)


def generate_texts(model: torch.nn.Module, tokenizer, records, end_id: int | None, max_new_tokens: int = 16,
                   batch_size: int = 32, **kwargs) -> list[str]:
    """The prompt -> generation step every caller shares (sample generations, predict, CAA's generation-scored
    sets): the text generated after each record's context (data/prompts.py PromptRecord, or anything with
    `.context` ids), decoded without special tokens. `kwargs`: generate_ids's (steering, do_sample, seed,
    synced_gpus). Scoring is scorers.py's (mean_scores, or a row's scores)."""
    ids = generate_ids(model, [r.context for r in records], tokenizer.pad_token_id, end_id, max_new_tokens, batch_size,
                       **kwargs)
    return tokenizer.batch_decode(ids, skip_special_tokens=True)
