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
                 seed: int = 0, synced_gpus: bool = False, generation_config=None) -> list[list[int]]:
    """The generated token ids after each context, up to and including the end token (when it came).
    `synced_gpus`: every rank keeps stepping until all are done (FSDP: each forward gathers sharded weights,
    so every rank must run the same number of them). `generation_config`: a transformers GenerationConfig that
    replaces the model's own (sample_ids: exactly the sampling distribution asked for)."""
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
            options = ({"generation_config": generation_config} if generation_config is not None else
                       dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad_id, eos_token_id=end_id))
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), synced_gpus=synced_gpus,
                                 **options)[:, width:].tolist()                     # (B, <= max_new_tokens)
            for answer in gen:
                out.append(answer[: answer.index(end_id) + 1] if end_id in answer else answer)
    finally:
        for m, mode in modes:
            m.training = mode
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    return out


def sampling_config(max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                    pad_id: int | None = None, end_id: int | None = None):
    """A GenerationConfig that samples from softmax(logits / temperature), restricted to the top_k tokens (0: no
    limit) and the top_p nucleus (1: no limit), and does nothing else: it replaces the model's own generation
    config, whose defaults (transformers' top_k 50, a release's temperature, repetition penalty) would otherwise
    change the distribution behind the sampler's back. With top_k 0 and top_p 1 the tokens are drawn from exactly
    the distribution whose log-probs logprobs.token_logps(..., temperature=T) computes."""
    from transformers import GenerationConfig

    return GenerationConfig(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k,
                            max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=end_id)


def sample_ids(model: torch.nn.Module, context: list[int], num_samples: int, pad_id: int, end_id: int | None,
               max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0,
               synced_gpus: bool = False) -> list[list[int]]:
    """`num_samples` completions of one context (token ids, each up to and including the end token when it came),
    sampled with the torch RNG seeded by `seed` (and restored after): the samples depend on the model, the
    context and the seed only, not on what else is in a batch. One batch of identical rows: no padding."""
    config = sampling_config(max_new_tokens, temperature, top_p, top_k, pad_id, end_id)
    return generate_ids(model, [context] * num_samples, pad_id, end_id, max_new_tokens, batch_size=num_samples,
                        do_sample=True, seed=seed, synced_gpus=synced_gpus, generation_config=config)


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
