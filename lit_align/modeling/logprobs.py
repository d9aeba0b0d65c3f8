"""Per-token and per-sequence log-probabilities of the target tokens, always in fp32.

Two ways to get them from a model, chosen per model by `set_lm_head(model, positions, chunk)` (load_model
does it from ModelSpec.lm_head / ModelSpec.logits_chunk):

- "targets" (default): the vocabulary projection (LM head) runs only on the positions that predict a
  target token, never on prompt, shared-prefix or padding positions, and a chunk of those rows at a
  time: each chunk's (chunk, V) fp32 logits are formed, reduced to log p(target) and dropped; with more
  than one chunk under autograd they are recomputed in backward (torch.utils.checkpoint), so the
  (N, T, V) logits of a batch are never materialised, forward or backward. The head is entered through
  the model's own forward (its forward is swapped for the duration of the call), so wrappers that hook
  the root module (FSDP2, peft, accelerate) keep working.
- "all": the model's ordinary forward returns (N, T, V) logits; the target positions are then read from
  them a chunk at a time (`gather_logps`). The naive path, kept for comparison and for architectures
  whose forward post-processes the head's output (soft-capping, logit scaling): those fall back to it.

Both give the same numbers (and gradients) up to float rounding (tests/test_logprobs.py).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch
import transformers
from packaging.version import Version
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from lit_align.errors import LitAlignError

IGNORE = -100

# The keyword (and output field) of a model forward that carries the key/value cache: transformers 5.24 renamed
# `past_key_values` to `cache` (the old name warns, removal announced for 5.40).
CACHE_ARG = "cache" if Version(transformers.__version__) >= Version("5.24.0.dev0") else "past_key_values"

# model_type of architectures whose causal-LM forward returns lm_head(hidden) unchanged (no soft-capping,
# no logit scaling), so the head can be restricted to target positions. Others use the "all" path.
PLAIN_HEAD_MODEL_TYPES = {
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi", "phi3", "gemma",
    "gpt_neox", "olmo", "olmo2", "smollm3", "gpt2", "starcoder2", "stablelm", "deepseek_v3", "ministral",
}
LM_HEAD_POSITIONS = ("targets", "all")


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


def _pick_logps(rows: Tensor, ids: Tensor, chunk_rows: int = 4096, temperature: float = 1.0) -> Tensor:
    """rows (M, V) logits any dtype, ids (M,) -> log softmax(rows / temperature)[ids] (M,) fp32, a chunk at a time."""
    out = torch.empty(ids.shape[0], dtype=torch.float32, device=rows.device)
    for s in range(0, ids.shape[0], chunk_rows):
        chunk = rows[s: s + chunk_rows].float()               # (chunk, V) fp32: the only fp32 vocab tensor
        if temperature != 1.0:  # as the sampler does: the fp32 logits divided by T (generation.sampling_config)
            chunk = chunk / temperature
        out[s: s + chunk_rows] = chunk.gather(-1, ids[s: s + chunk_rows, None]).squeeze(-1) - chunk.logsumexp(-1)
    return out


def _scatter(values: Tensor, mask: Tensor, fill=0) -> Tensor:
    """values (M,) at the True positions of mask (N, T) -> (N, T) tensor, `fill` elsewhere."""
    out = torch.full(mask.shape, fill, dtype=values.dtype, device=values.device)
    out[mask] = values
    return out


def gather_logps(logits: Tensor, labels: Tensor, with_accuracy: bool = False, chunk_rows: int = 4096,
                 temperature: float = 1.0) -> TokenLogps:
    """logits (N, T, V) any dtype, labels (N, T) with IGNORE where not a target -> TokenLogps.

    labels[:, t] is predicted by logits[:, t-1] (labels are not shifted; position 0 is never a target).
    """
    N, T, _ = logits.shape
    full_mask = torch.zeros((N, T), dtype=torch.bool, device=logits.device)
    full_mask[:, 1:] = labels[:, 1:] != IGNORE
    picked = logits[:, :-1][full_mask[:, 1:]]                # (M, V) only target positions, model dtype
    ids = labels[full_mask]                                  # (M,)
    logps = _scatter(_pick_logps(picked, ids, chunk_rows, temperature), full_mask)
    correct = None
    if with_accuracy:
        hit = torch.cat([picked[s: s + chunk_rows].argmax(-1) == ids[s: s + chunk_rows]
                         for s in range(0, ids.shape[0], chunk_rows)]) if ids.numel() else ids.bool()
        correct = _scatter(hit, full_mask, False)
    return TokenLogps(logps, full_mask, correct)


# -- the LM head on target positions only ------------------------------------------------------------


def set_lm_head(model: torch.nn.Module, positions: str = "targets", chunk: int = 0) -> None:
    """How log-probs are computed from `model` (module docstring): positions "targets" or "all"; chunk =
    target rows per vocabulary-projection chunk (0: about 2^23 logits, 32 MB in fp32, per chunk: 256 rows at a
    32k vocabulary, 55 at 152k)."""
    if positions not in LM_HEAD_POSITIONS:
        raise ValueError(f"lm_head must be one of {', '.join(LM_HEAD_POSITIONS)}, not '{positions}'")
    if chunk < 0:
        raise ValueError(f"logits_chunk must be >= 0, not {chunk}")
    model.lit_align_lm_head = (positions, chunk)


def _plain_head(model: torch.nn.Module) -> torch.nn.Module | None:
    """The output embedding to run on target positions only, or None for the "all" path."""
    positions, _ = getattr(model, "lit_align_lm_head", ("targets", 0))
    if positions == "all":
        return None
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in PLAIN_HEAD_MODEL_TYPES:
        warnings.warn(f"lm_head: targets is not known to be exact for model_type '{model_type}' (its forward may "
                      "post-process the logits); computing every position's logits instead (set "
                      "policy.lm_head: all to silence this)", stacklevel=3)
        model.lit_align_lm_head = ("all", 0)
        return None
    return model.get_output_embeddings()


def _chunk_logps(project: Callable[[Tensor], Tensor], hidden: Tensor, ids: Tensor, with_accuracy: bool,
                 temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """hidden (m, H), ids (m,) -> log p(ids) (m,) fp32 (of softmax(logits / temperature)) and argmax hits (m,) bool
    (empty unless asked for); the (m, V) logits die here."""
    logits = project(hidden).float()                                   # (m, V) fp32
    if temperature != 1.0:
        logits = logits / temperature
    hits = logits.argmax(-1) == ids if with_accuracy else ids.new_empty(0, dtype=torch.bool)
    return logits.gather(-1, ids[:, None]).squeeze(-1) - logits.logsumexp(-1), hits


def head_logps(project: Callable[[Tensor], Tensor], hidden: Tensor, ids: Tensor, chunk: int = 0,
               with_accuracy: bool = False, temperature: float = 1.0) -> tuple[Tensor, Tensor | None]:
    """log softmax(project(hidden))[ids] for hidden (M, H), ids (M,) -> ((M,) fp32, (M,) bool argmax hits or
    None).

    One chunk of `chunk` rows at a time. With several chunks under autograd, each chunk is checkpointed:
    backward recomputes its logits instead of keeping all M x V of them alive (one more head matmul on
    the target rows, the price of never materialising them). A single chunk is not recomputed: its logits
    are the peak either way.
    """
    rows = chunk or max(32, min(4096, 2 ** 23 // max(_vocab_size(project), 1)))
    if hidden.shape[0] <= rows:
        parts = [_chunk_logps(project, hidden, ids, with_accuracy, temperature)]
    else:
        recompute = torch.is_grad_enabled() and hidden.requires_grad
        parts = [checkpoint(_chunk_logps, project, hidden[s: s + rows], ids[s: s + rows], with_accuracy, temperature,
                            use_reentrant=False)
                 if recompute else _chunk_logps(project, hidden[s: s + rows], ids[s: s + rows], with_accuracy,
                                                temperature)
                 for s in range(0, hidden.shape[0], rows)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]) if with_accuracy else None


def _vocab_size(project) -> int:
    module = getattr(project, "__self__", project)
    return getattr(module, "out_features", 0) or getattr(getattr(module, "weight", None), "shape", (0,))[0]


@contextmanager
def _forward_replaced(module: torch.nn.Module, forward: Callable):
    """Swap `module.forward` (an instance attribute, as accelerate's hooks set it too), then restore it."""
    saved = module.__dict__.get("forward")
    module.forward = forward
    try:
        yield
    finally:
        if saved is None:
            del module.forward
        else:
            module.forward = saved


def position_logps(model: torch.nn.Module, rows: Tensor, positions: Tensor, ids: Tensor, with_accuracy: bool = False,
                   temperature: float = 1.0, **inputs) -> tuple[Tensor, Tensor | None]:
    """model(**inputs) -> log p(ids[m] | the hidden state of row rows[m] at position positions[m]), (M,) fp32,
    and the greedy hits (M,) bool when asked. Targets-only LM head unless the model is set to "all"."""
    head = _plain_head(model)
    if head is None:
        logits = model(**inputs).logits                      # (N, T, V)
        picked = logits[rows, positions]                     # (M, V)
        hits = picked.argmax(-1) == ids if with_accuracy else None
        return _pick_logps(picked, ids, temperature=temperature), hits
    project, hits = head.forward, []

    def targets_only(hidden: Tensor) -> Tensor:               # hidden (N, T, H) -> (M,) fp32 log-probs
        logps, hit = head_logps(project, hidden[rows, positions], ids, getattr(model, "lit_align_lm_head", ("", 0))[1],
                                with_accuracy, temperature)
        hits.append(hit)
        return logps

    with _forward_replaced(head, targets_only):
        logps = model(**inputs).logits                       # (M,): what the head returned
    return logps, hits[0] if with_accuracy else None


def token_logps(model: torch.nn.Module, labels: Tensor, with_accuracy: bool = False, temperature: float = 1.0,
                **inputs) -> TokenLogps:
    """model(**inputs) -> the fp32 log-probs of `labels` (N, T): labels[:, t] (IGNORE: not a target) is
    predicted at position t-1. `temperature` T: the log-probs of softmax(logits / T), the distribution a sampler
    at temperature T draws from (online objectives score their samples with the same T)."""
    if _plain_head(model) is None:
        return gather_logps(model(**inputs).logits, labels, with_accuracy=with_accuracy, temperature=temperature)
    mask = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    mask[:, 1:] = labels[:, 1:] != IGNORE                    # (N, T) target positions
    rows, positions = mask.nonzero(as_tuple=True)            # (M,) each, row-major like labels[mask]
    logps, hits = position_logps(model, rows, positions - 1, labels[mask], with_accuracy, temperature, **inputs)
    correct = _scatter(hits, mask, False) if with_accuracy else None
    return TokenLogps(_scatter(logps, mask), mask, correct)


def forward_logps(model: torch.nn.Module, batch: dict, with_accuracy: bool = False) -> TokenLogps:
    """Run `model` on a padded batch (see collate.py) and return the target tokens' log-probs."""
    return token_logps(model, batch["labels"], with_accuracy, input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"], use_cache=False)


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


def _context_positions(context_mask: Tensor) -> Tensor:
    """Left-padded (B, C) mask -> position ids 0.. on the real tokens (0 on padding)."""
    return (context_mask.cumsum(-1) - 1).clamp(min=0)


def shared_context_token_logps(model: torch.nn.Module, batch: dict, with_accuracy: bool = False) -> TokenLogps:
    """Per-token log-probs of the continuations (N = k*B rows of L tokens, continuation-major; column 0 is the
    first continuation token, predicted by the context's last logit) for the shared-context layout of
    `collate_prefix`: the context (prompt + shared prefix) of each example runs ONCE, its key/value cache serves
    all k continuations.

    1. contexts (B, C), left-padded, explicit position ids, use_cache=True; only the last logit is kept
       (it predicts every continuation's first token);
    2. the cache is repeated to the continuation-major rows [ctx_0..ctx_{B-1}] * k;
    3. continuations (k*B, L), right-padded, run with the cache (`CACHE_ARG`), the concatenated attention
       mask [context mask, continuation mask] and positions continuing after each context; the cache must
       then hold C + L positions (the model appended the continuations to the context's keys and values),
       else the model did not use it and the continuations were computed without their context: an error.
    Gradients flow through the cache into the context's computation. Equal to running context +
    continuation as one sequence per row (`joined_context_logps`) up to float rounding.
    """
    ctx_ids, ctx_mask = batch["context_ids"], batch["context_mask"]      # (B, C)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]   # (N, L), N = k*B
    k, B = batch["num_continuations"], ctx_ids.shape[0]
    out = model(input_ids=ctx_ids, attention_mask=ctx_mask, position_ids=_context_positions(ctx_mask),
                use_cache=True, logits_to_keep=1)
    cache = getattr(out, CACHE_ARG)
    if cache is None:
        raise RuntimeError("the model returned no key/value cache (gradient checkpointing turns use_cache off); "
                           "use PrefixDPO(shared_context=false) with gradient checkpointing")
    rows = torch.arange(B, device=ids.device).repeat(k)                  # (N,) example of each row
    cache.batch_select_indices(rows)                                     # (B, ...) -> (N, ...) per layer
    n_ctx = ctx_mask.sum(-1)[rows]                                       # (N,)
    positions = n_ctx[:, None] + torch.arange(ids.shape[1], device=ids.device)          # (N, L)
    cont = token_logps(model, labels, with_accuracy, input_ids=ids, attention_mask=torch.cat([ctx_mask[rows], mask], 1),
                       position_ids=positions, use_cache=True, **{CACHE_ARG: cache})   # labels[:, 1:]
    held = cache.get_seq_length()
    if held != ctx_ids.shape[1] + ids.shape[1]:
        raise LitAlignError(f"the continuations did not run on the context's key/value cache (it holds {held} "
                            f"positions, not context {ctx_ids.shape[1]} + continuation {ids.shape[1]}; transformers "
                            f"{transformers.__version__}, keyword `{CACHE_ARG}`); use PrefixDPO(shared_context=false)")
    first = labels[:, 0] != IGNORE                                       # token 0: from the context's last logit
    last = out.logits[:, -1][rows][first]                                # (F, V)
    logps, mask = cont.logps.clone(), cont.mask.clone()                  # (N, L), column 0 still empty
    logps[first, 0], mask[:, 0] = _pick_logps(last, labels[first, 0]), first
    correct = None
    if with_accuracy:
        correct = cont.correct.clone()
        correct[first, 0] = last.argmax(-1) == labels[first, 0]
    return TokenLogps(logps, mask, correct)


def shared_context_logps(model: torch.nn.Module, batch: dict) -> SeqLogps:
    """Per-continuation log-probs (B, k) for the shared-context layout of `collate_prefix`
    (`shared_context_token_logps`, summed)."""
    out = shared_context_token_logps(model, batch)
    k = batch["num_continuations"]
    return SeqLogps(out.sequence.view(k, -1).T, out.tokens.view(k, -1).T)                # (k*B,) -> (B, k)


def joined_context_logps(model: torch.nn.Module, batch: dict) -> SeqLogps:
    """The same numbers as `shared_context_logps` from the same batch, computed naively: each row runs its
    context + continuation as one sequence (the context k times). For gradient checkpointing and tests."""
    ctx_ids, ctx_mask = batch["context_ids"], batch["context_mask"]      # (B, C)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]   # (N, L)
    k, B = batch["num_continuations"], ctx_ids.shape[0]
    rows = torch.arange(B, device=ids.device).repeat(k)
    full_mask = torch.cat([ctx_mask[rows], mask], 1)                     # (N, C+L)
    C = ctx_ids.shape[1]
    full_labels = torch.cat([torch.full_like(ctx_ids[rows], IGNORE), labels], 1)        # (N, C+L)
    out = token_logps(model, full_labels, input_ids=torch.cat([ctx_ids[rows], ids], 1), attention_mask=full_mask,
                      position_ids=_context_positions(full_mask), use_cache=False)
    tokens = (labels != IGNORE).sum(-1)
    return SeqLogps(out.sequence.view(k, B).T, tokens.view(k, B).T)


def shared_prompt_logps(model: torch.nn.Module, batch: dict) -> SeqLogps:
    """`sequence_logps` of a padded batch (collate.py) with each example's prompt run ONCE: the rows are split
    into the collate_prefix form (contexts left-padded, continuations right-padded, their labels kept) and
    `shared_context_logps` runs them, so the k rows of an example share one pass over its context. The same
    numbers up to float rounding, for evaluation: on A/B sets, where the answers are a few tokens after a long
    question, it halves the work. A batch whose rows do not share their first context_tokens tokens, with an
    empty context, or whose contexts and answers padded apart would take 80% of the padded rows' tokens or more
    (long answers, as in dialogues), is computed as padded rows."""
    prefix = _prefix_form(batch)
    return sequence_logps(model, batch) if prefix is None else shared_context_logps(model, prefix)


def shared_prompt_token_logps(model: torch.nn.Module, batch: dict, with_accuracy: bool = False) -> TokenLogps:
    """The target tokens' log-probs of every row of a padded batch (N = k*B rows, continuation-major) from one
    forward pass, each prompt run once where `shared_prompt_logps` would: then the rows hold only the continuations'
    tokens (their sums, counts and hits are the padded rows' up to float rounding), else the padded rows."""
    prefix = _prefix_form(batch)
    if prefix is None:
        return forward_logps(model, batch, with_accuracy)
    return shared_context_token_logps(model, prefix, with_accuracy)


def _prefix_form(batch: dict) -> dict | None:
    """A padded batch of k continuations per example in collate_prefix's form, or None where sharing the prompt
    does not pay or does not apply (`shared_prompt_logps`)."""
    k, P = batch["num_continuations"], batch["context_tokens"]          # P (B,) context length per example
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]     # (N, T), N = k * B
    B = P.shape[0]
    if k < 2 or int(P.min()) < 1:
        return None
    rows = torch.arange(B, device=ids.device).repeat(k)                  # (N,) example of each row
    C, lengths = int(P.max()), mask.sum(-1)                              # lengths (N,): real tokens per row
    L = max(int((lengths - P[rows]).max()), 1)
    if B * C + k * B * L >= 0.8 * ids.numel():   # padding eats the saving (long answers, e.g. dialogues): padded rows
        return None
    context_ids = torch.zeros((B, C), dtype=ids.dtype, device=ids.device)
    context_mask = torch.zeros((B, C), dtype=mask.dtype, device=ids.device)
    cont_ids = torch.zeros((k * B, L), dtype=ids.dtype, device=ids.device)
    cont_mask = torch.zeros((k * B, L), dtype=mask.dtype, device=ids.device)
    cont_labels = torch.full((k * B, L), IGNORE, dtype=labels.dtype, device=ids.device)
    for r in range(k * B):
        b, p, n = int(rows[r]), int(P[rows[r]]), int(lengths[r])
        if not torch.equal(ids[r, :p], ids[b, :p]) or bool((labels[r, :p] != IGNORE).any()):
            return None
        if r < B:
            context_ids[b, C - p:], context_mask[b, C - p:] = ids[b, :p], 1
        cont_ids[r, : n - p], cont_mask[r, : n - p], cont_labels[r, : n - p] = ids[r, p:n], 1, labels[r, p:n]
    return {"context_ids": context_ids, "context_mask": context_mask, "input_ids": cont_ids, "attention_mask": cont_mask,
            "labels": cont_labels, "num_continuations": k}


def attention_mask_for(model: torch.nn.Module, mask: Tensor) -> Tensor:
    """A bool 4D mask (B, 1, T, T), True where query t may attend to key s, in the form `model`'s attention
    takes it. transformers passes a 4D mask to the attention function untouched (masking_utils: "already
    prepared"); sdpa reads a bool mask as "may attend", but eager (and flex) attention ADD the mask to the
    scores, so a bool mask there adds 1 or 0 and masks nothing. Those get the additive float mask that
    transformers builds for them itself: 0 where visible, finfo(dtype).min where masked (not -inf: a padding
    row then still has finite scores). An unknown implementation gets the float mask too: sdpa takes it as well."""
    if mask.dtype != torch.bool or _attention(model) == "sdpa":
        return mask
    dtype = getattr(model, "dtype", None)
    dtype = dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)


def _attention(model: torch.nn.Module) -> str:
    """The attention implementation of `model` ("sdpa", "eager", "flash_attention_2", ...)."""
    return getattr(getattr(model, "config", None), "_attn_implementation", None) or ""


def is_packed(batch: dict) -> bool:
    """Whether a batch has the packed layout of data/collate.py's `collate_packed` (its targets listed by position)."""
    return "target_pos" in batch


def _packed_inputs(model: torch.nn.Module, batch: dict, varlen: bool | None = None) -> tuple[Tensor, Tensor, dict]:
    """(rows, positions, model inputs) of a packed batch (collate_packed): the hidden state at (rows[m],
    positions[m]) predicts target m.

    Two forms of the same computation. The default: the (R, T) rows with the block 4D attention mask, in the
    form the model's attention takes it (attention_mask_for). `varlen` (the default under flash-attention, which
    takes no 4D mask): padding-free, the real tokens of every row concatenated into ONE (1, N) sequence with
    attention_mask None and the per-example position ids restarting at 0; flash-attention's varlen kernel keeps
    each example to itself from the cumulative sequence lengths `cu_seq_lens_q/k` (FlashAttentionKwargs,
    passed through the model's forward to its attention), and sdpa/eager attention build the same
    block-diagonal mask from the position ids (transformers' masking_utils: packed sequences are detected when
    attention_mask is None). Only for layouts where every example is one causal sequence (k = 1: packed SFT),
    since DPO's packed pairs let two continuations share a context that neither may see the other through.
    """
    rows, positions = batch["target_row"], batch["target_pos"]
    if varlen is None:
        varlen = _attention(model).startswith("flash")
    if not varlen:
        return rows, positions, dict(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                     attention_mask=attention_mask_for(model, batch["attention_mask"]), use_cache=False)
    if batch["num_continuations"] != 1:
        raise LitAlignError("packed pairs need a 4D attention mask (chosen and rejected share the prompt): use "
                            "policy.attn_implementation: sdpa (or eager), not flash-attention")
    real = batch["token_mask"].bool()                                         # (R, T)
    flat = real.flatten().cumsum(0).sub(1).view(real.shape)                  # index among the real tokens
    position_ids = batch["position_ids"][real][None]                         # (1, N), 0 at each example's start
    starts = (position_ids[0] == 0).nonzero().flatten()
    cu = torch.cat([starts, starts.new_tensor([position_ids.shape[1]])]).to(torch.int32)   # (examples + 1,)
    longest = int(cu.diff().max())
    return torch.zeros_like(rows), flat[rows, positions], dict(
        input_ids=batch["input_ids"][real][None], position_ids=position_ids, attention_mask=None, use_cache=False,
        cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest)


def packed_token_logps(model: torch.nn.Module, batch: dict, with_accuracy: bool = False,
                       varlen: bool | None = None) -> TokenLogps:
    """The target tokens' log-probs of a packed batch (collate_packed) as a TokenLogps of (B * k, L) rows, one
    per continuation of each example (example-major), its L target tokens left-aligned: the same per-row sums,
    counts and hits as `forward_logps` on the padded layout (there the rows are continuation-major and the
    targets sit at their sequence positions), whatever the rows the examples were packed into."""
    rows, positions, inputs = _packed_inputs(model, batch, varlen)
    logps, hits = position_logps(model, rows, positions, batch["target_id"], with_accuracy, **inputs)   # (M,)
    B, k = batch["cont_tokens"].shape
    seq = batch["target_example"] * k + batch["target_cont"]                # (M,) output row, non-decreasing
    counts = batch["cont_tokens"].flatten()                                   # (B*k,)
    column = torch.arange(seq.shape[0], device=seq.device) - (counts.cumsum(0) - counts)[seq]
    mask = torch.zeros((B * k, max(int(counts.max()), 1)), dtype=torch.bool, device=seq.device)
    mask[seq, column] = True                                                  # row-major order = target order
    return TokenLogps(_scatter(logps, mask), mask, _scatter(hits, mask, False) if with_accuracy else None)


def packed_logps(model: torch.nn.Module, batch: dict) -> SeqLogps:
    """Per-continuation log-probs for the packed layout of `collate_packed`: whole examples in rows, each
    continuation attending to its context and itself (4D attention mask, or padding-free varlen attention),
    positioned right after the context. The same numbers as `sequence_logps` on the padded layout."""
    out = packed_token_logps(model, batch)
    return SeqLogps(out.sequence.view(batch["cont_tokens"].shape), batch["cont_tokens"])


def batch_logps(model: torch.nn.Module, batch: dict) -> SeqLogps:
    """Per-continuation log-probs of a batch in the padded or the packed layout, whichever it is (an objective
    trained on packed rows still evaluates padded pair sets)."""
    return packed_logps(model, batch) if is_packed(batch) else sequence_logps(model, batch)


def batch_token_logps(model: torch.nn.Module, batch: dict, with_accuracy: bool = False) -> TokenLogps:
    """Per-token log-probs of a padded or packed batch: rows are sequences (padded: continuation-major) or
    continuations (packed: example-major); with k = 1 both are one row per example, in batch order."""
    if is_packed(batch):
        return packed_token_logps(model, batch, with_accuracy)
    return forward_logps(model, batch, with_accuracy)
