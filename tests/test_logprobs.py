"""The LM head on target positions only, in chunks (logprobs.py, ModelSpec.lm_head / logits_chunk): the same
log-probs, greedy hits and gradients as the plain forward over every position, for the padded layout, the
shared-context layout, a LoRA model and the objectives' losses; and it really never holds the logits of
every position (the memory win the benchmark measures)."""

import warnings

import pytest
import torch
from conftest import SHARED_DATA, requires_shared

from lit_align.data import AlignDataModule
from lit_align.modeling.logprobs import (forward_logps, joined_context_logps, sequence_logps, set_lm_head,
                                         shared_context_logps, shared_prompt_logps)
from lit_align.modeling.models import LoraSpec, ModelSpec, load_model, load_tokenizer
from lit_align.objectives import DPO, SFT, PrefixDPO
from lit_align.layouts import layout_named

# (positions, chunk): the plain forward; one chunk; several checkpointed chunks of 7 target rows
MODES = [("all", 0), ("targets", 0), ("targets", 7)]


def _batch(tok, kind="pair", task="builtin:pairs", n=6):
    dm = AlignDataModule(train={"path": task, "limit": n}, batch_size=n, max_length=96)
    dm.connect(tok, layout_named(kind))
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def _perturb(model, seed=0):
    """Random weights away from init (a tied head sees gradients from both ends)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)


def _run(model, fn, batch, mode):
    """fn(model, batch) -> (values, hits or None); backprop the sum; return values, hits, grads."""
    set_lm_head(model, *mode)
    model.zero_grad()
    values, hits = fn(model, batch)
    values.sum().backward()
    return values.detach(), hits, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(a, b, atol=1e-5):
    assert torch.allclose(a[0], b[0], atol=atol)
    if a[1] is not None:
        assert torch.equal(a[1], b[1])
    assert a[2].keys() == b[2].keys() and a[2]
    for name in a[2]:
        scale = a[2][name].abs().max().item()
        assert torch.allclose(a[2][name], b[2][name], rtol=1e-4, atol=atol * max(scale, 1)), name


def _tokens(model, batch):
    out = forward_logps(model, batch, with_accuracy=True)
    return out.logps * 3 + out.logps.pow(2), out.correct   # a non-linear use of every token's log-prob


@pytest.mark.parametrize("lora", [False, True])
def test_targets_head_equals_full_forward_padded_layout(lora):
    spec = ModelSpec(name="builtin:tiny", lora=LoraSpec(r=4) if lora else None)
    tok = load_tokenizer(spec)
    model = load_model(spec, tok)
    _perturb(model)
    batch = _batch(tok)
    runs = [_run(model, _tokens, batch, mode) for mode in MODES]
    assert runs[0][1][batch["labels"] != -100].any()  # some greedy hits, so the comparison means something
    for run in runs[1:]:
        _assert_same(runs[0], run)


def test_targets_head_equals_full_forward_shared_context():
    spec = ModelSpec(name="builtin:tiny")
    tok = load_tokenizer(spec)
    model = load_model(spec, tok)
    _perturb(model)
    batch = _batch(tok, kind="prefix_pair", task="builtin:steers")
    for fn in (shared_context_logps, joined_context_logps):
        runs = [_run(model, lambda m, b: (fn(m, b).logps, None), batch, mode) for mode in MODES]
        for run in runs[1:]:
            _assert_same(runs[0], run, atol=1e-4)


@pytest.mark.parametrize("cls, kind, task", [(SFT, "sft", "builtin:sft"), (DPO, "pair", "builtin:pairs"),
                                             (PrefixDPO, "prefix_pair", "builtin:steers")])
def test_objective_losses_and_gradients_do_not_depend_on_the_head_path(cls, kind, task):
    results = []
    for positions, chunk in MODES:
        obj = cls(policy=ModelSpec(name="builtin:tiny", lm_head=positions, logits_chunk=chunk))
        obj.configure_model()
        _perturb(obj.model)
        batch = _batch(obj.tokenizer, kind=kind, task=task)
        sums = obj.step(batch)
        loss = sums["loss"][0] / sums["loss"][1]
        loss.backward()
        grads = {n: p.grad.clone() for n, p in obj.model.named_parameters() if p.grad is not None}
        results.append((loss.detach().reshape(1), None, grads))
    for r in results[1:]:
        _assert_same(results[0], r)


def _largest_saved(model, batch) -> int:
    """Elements of the largest vocabulary-sized tensor (.., V) autograd keeps for backward in forward_logps."""
    sizes, V = [0], model.config.vocab_size

    def pack(t):
        if t.ndim and t.shape[-1] == V and t.dtype.is_floating_point:
            sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward_logps(model, batch).sequence.sum()
    return max(sizes)


def test_chunked_targets_head_never_keeps_all_logits():
    spec = ModelSpec(name="builtin:tiny")
    tok = load_tokenizer(spec)
    model = load_model(spec, tok)
    batch = _batch(tok)
    V = model.config.vocab_size
    targets = int((batch["labels"][:, 1:] != -100).sum())
    set_lm_head(model, "all")
    # the plain forward forms (N, T, V) logits and keeps the (targets, V) fp32 rows of them for backward
    assert _largest_saved(model, batch) >= targets * V
    set_lm_head(model, "targets", 16)
    assert targets > 4 * 16                                       # several chunks
    largest = _largest_saved(model, batch)
    assert largest <= 16 * V   # checkpointed chunks: no vocabulary-sized tensor waits for backward at all


def test_unknown_architecture_falls_back_to_the_full_forward():
    """An architecture whose forward post-processes the head's output (Gemma 2 soft-caps the logits) must not
    take the targets path: it warns once and computes every position's logits."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    tok = load_tokenizer(ModelSpec(name="builtin:tiny"))
    config = Gemma2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16, final_logit_softcapping=3.0,
                          pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(config)
    batch = _batch(tok)
    set_lm_head(model, "all")
    full = forward_logps(model, batch).logps
    set_lm_head(model, "targets")
    with pytest.warns(UserWarning, match="gemma2"):
        fallback = forward_logps(model, batch).logps
    assert torch.allclose(full, fallback)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        forward_logps(model, batch)  # warned once: the model is now set to "all"


def test_bad_lm_head_value_is_a_clear_error():
    from lit_align.errors import LitAlignError

    spec = ModelSpec(name="builtin:tiny", lm_head="some")
    with pytest.raises(LitAlignError, match="lm_head must be one of targets, all"):
        load_model(spec, load_tokenizer(spec))


# -- the packed pair layout (DPO(packed=true)): one row per pair, the prompt once ---------------------------


def _ordered_batch(tok, kind, n=6, **kwargs):
    dm = AlignDataModule(train={"path": "builtin:pairs", "limit": n}, batch_size=n, max_length=96, shuffle=False,
                         **kwargs)
    dm.connect(tok, layout_named(kind))
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("mode", MODES)
def test_packed_pairs_equal_padded_rows(mode, attention):
    """Under every attention backend that takes a 4D mask: eager adds the mask to the scores, so a bool mask
    there masked nothing (max |Δ log p| 1.89 against the padded rows before attention_mask_for)."""
    from lit_align.modeling.logprobs import packed_logps, sequence_logps

    spec = ModelSpec(name="builtin:tiny", attn_implementation=attention)
    tok = load_tokenizer(spec)
    model = load_model(spec, tok)
    _perturb(model)
    padded, packed = _ordered_batch(tok, "pair"), _ordered_batch(tok, "packed_pair")
    assert packed["input_ids"].shape[0] * 2 == padded["input_ids"].shape[0]       # one row per pair
    assert int(packed["token_mask"].sum()) < int(padded["attention_mask"].sum())  # the prompt once
    a = _run(model, lambda m, b: (sequence_logps(m, b).logps, None), padded, ("all", 0))
    b = _run(model, lambda m, b: (packed_logps(m, b).logps, None), packed, mode)
    _assert_same(a, b, atol=1e-4)
    assert torch.equal(sequence_logps(model, padded).tokens, packed_logps(model, packed).tokens)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_dpo_equals_dpo_losses_gradients_and_metrics(attention):
    results = []
    for packed in (False, True):
        obj = DPO(policy=ModelSpec(name="builtin:tiny", attn_implementation=attention), beta=0.3, nll_weight=0.2,
                  packed=packed)
        obj.configure_model()
        _perturb(obj.model)
        sums = obj.step(_ordered_batch(obj.tokenizer, obj.layout))
        loss = sums["loss"][0] / sums["loss"][1]
        loss.backward()
        grads = {n: p.grad.clone() for n, p in obj.model.named_parameters() if p.grad is not None}
        results.append(((loss.detach().reshape(1)), None, grads))
        results[-1] += ({k: (s / c).item() for k, (s, c) in sums.items()},)
    _assert_same(results[0][:3], results[1][:3], atol=1e-4)
    for name, value in results[0][3].items():
        assert results[1][3][name] == pytest.approx(value, abs=1e-4), name


def test_packed_mask_isolates_the_answers():
    """Chosen never sees rejected and vice versa; padding queries see one key (no NaN); positions restart."""
    from lit_align.data.collate import collate_packed
    from lit_align.data.tokenize import Tokenized

    def ex(context, continuations):
        return Tokenized(context=context, continuations=continuations, prefix_len=0, weight=None, group=None,
                         where="test", categories=[])

    items = [(0, ex([5, 6], [[7, 8], [9]])), (1, ex([5], [[7], [9, 10]]))]
    batch = collate_packed(items, pad_id=0)
    m = batch["attention_mask"][:, 0].int()
    assert m[0].tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 0, 0, 1]]
    assert m[1].tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 0, 1, 0, 0], [1, 0, 1, 1, 0], [1, 0, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 2], [0, 1, 1, 2, 0]]
    assert batch["token_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    # (row, predictor, id, continuation): a continuation's first token is predicted by the context's last
    targets = torch.stack([batch[k] for k in ("target_row", "target_pos", "target_id", "target_cont")], 1).tolist()
    assert targets == [[0, 1, 7, 0], [0, 2, 8, 0], [0, 1, 9, 1], [1, 0, 7, 0], [1, 0, 9, 1], [1, 2, 10, 1]]
    assert batch["cont_tokens"].tolist() == [[2, 1], [1, 2]]


def _eval_batch(tok, source, n=8, max_length=160):
    dm = AlignDataModule(train={**source, "limit": n}, val={"x": {**source, "limit": n, "kind": "pair"}},
                         batch_size=n, eval_batch_size=n, max_length=max_length, skip_invalid=True)
    dm.connect(tok, layout_named("sft"))   # an SFT run evaluating pair sets: the padded pair layout
    dm.setup("fit")
    return next(iter(dm.eval_loader(dm.log_prefix("val", "x"))))


@requires_shared
@pytest.mark.parametrize("source,max_length", [
    ({"path": str(SHARED_DATA / "model-written-evals/lm/survival-instinct.jsonl")}, 1024),   # A/B: short answers
    ({"path": str(SHARED_DATA / "hh-rlhf/harmless-base-test.jsonl.gz")}, 160),               # dialogues, truncated
    ({"path": "builtin:pairs"}, 160)])
@pytest.mark.parametrize("lora", [False, True])
def test_evaluation_runs_each_prompt_once_with_the_same_logps(source, max_length, lora):
    """Pair evaluation (objectives/base.py eval_sums) runs an example's prompt once for both answers
    (shared_prompt_logps): the same sequence log-probs and token counts as the padded rows, contexts of
    different lengths in one batch; a batch without a shared prompt is computed as padded rows."""
    spec = ModelSpec(name="builtin:tiny", lora=LoraSpec(r=4) if lora else None)
    tok = load_tokenizer(spec)
    model = load_model(spec, tok)
    _perturb(model)
    batch = _eval_batch(tok, source, max_length=max_length)
    assert batch["num_continuations"] == 2 and len(set(batch["context_tokens"].tolist())) > 1
    embedded = []   # token positions through the embedding: what the evaluation costs
    hook = model.get_input_embeddings().register_forward_hook(lambda m, a, out: embedded.append(a[0].numel()))
    with torch.no_grad():
        padded = sequence_logps(model, batch)
        shared = shared_prompt_logps(model, batch)
    hook.remove()
    if "model-written-evals" in source["path"]:   # a long question, a few answer tokens: at most 60% of the work
        assert sum(embedded[1:]) <= 0.6 * embedded[0]
    assert torch.equal(padded.tokens, shared.tokens)
    assert torch.allclose(padded.logps, shared.logps, atol=2e-4, rtol=1e-5)
    assert not torch.allclose(padded.logps[:, 0], padded.logps[:, 1])    # two different answers were scored
    # rows that do not share their prompt: computed as padded rows, not silently wrong
    other = dict(batch, input_ids=batch["input_ids"].clone())
    other["input_ids"][batch["context_tokens"].shape[0], 0] += 1
    with torch.no_grad():
        assert torch.equal(shared_prompt_logps(model, other).logps, sequence_logps(model, other).logps)
