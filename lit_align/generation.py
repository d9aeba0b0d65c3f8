"""Generate answers to prompts with a policy (optionally steered) and score the generated text.

    texts = generate(model, tokenizer, ["Which one would you like?"], max_new_tokens=12)      # greedy
    with vector.apply(model, 4.0, layers=[1]) as steer:                                         # CAA on top
        texts = generate(model, tokenizer, prompts, steering=steer)

Prompts are rendered exactly as the data module renders a record's prompt for training (data/tokenize.py: the
chat template with its generation prompt when the tokenizer has one, else plain text), left-padded into
batches, and decoded greedily (or sampled with a seed) up to `max_new_tokens` or the end token. With `steering`
(steering.py), the vector is added from the first generated token on (CAA's "after the prompt").

Scorers map (record, generated text) -> 1.0 / 0.0, e.g. `names_match`: the text names the record's `match`
(the food, answer, ... a behaviour-matching reply names) and not its `other`. `score_generations` averages a
scorer over records; sweeps log it as `{split}/gen/<scorer>`.
"""

from __future__ import annotations

import re
from typing import Callable

import torch

from lit_align.data.records import Example
from lit_align.data.tokenize import Tokenizer, TokenizeSpec


@torch.no_grad()
def generate(model: torch.nn.Module, tokenizer, prompts: list[str], max_new_tokens: int = 16, batch_size: int = 32,
             chat_template: bool | None = None, steering=None, do_sample: bool = False, seed: int = 0) -> list[str]:
    """The generated continuation (text, special tokens removed) of each prompt."""
    render = Tokenizer(tokenizer, TokenizeSpec(chat_template=chat_template))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    out: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            rows = [render.context_ids(Example(prompt=p, continuations=[]))[0] for p in prompts[start: start + batch_size]]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)             # (B, T), left padding
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, width - len(r):] = torch.tensor(r)
                mask[i, width - len(r):] = 1
            if steering is not None:
                steering.set_prompt_lengths(mask.sum(-1))
            if do_sample:
                torch.manual_seed(seed + start)
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                                 do_sample=do_sample, pad_token_id=pad, eos_token_id=render.end_id)
            out += tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
    finally:
        model.train(was_training)
    return out


def _names(text: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", text, flags=re.IGNORECASE) is not None


def names_match(record: dict, text: str) -> float:
    """1 if the generated text names the record's `match` and not its `other` (open-ended behaviour match)."""
    return float(_names(text, record["match"]) and not _names(text, record["other"]))


SCORERS: dict[str, Callable[[dict, str], float]] = {"match": names_match}


def score_generations(records: list[dict], texts: list[str], scorer: str = "match") -> float:
    return sum(SCORERS[scorer](r, t) for r, t in zip(records, texts)) / max(len(records), 1)
