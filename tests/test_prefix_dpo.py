"""Prefix-DPO: the shared context runs once and gives the losses and gradients of the naive computation;
an empty prefix is DPO; padding of different context lengths; partial continuations have no end token;
the GSM8K converter and example config; a short run learns."""

import json
import math
import warnings

import pytest
import torch
import transformers
from packaging.version import Version
from conftest import REPO, SHARED_DATA, requires_shared, run_cli

from lit_align.data import AlignDataModule
from lit_align.data.collate import collate_prefix
from lit_align.data.gsm8k import common_line_prefix, convert, prefix_pair, prefix_pairs
from lit_align.errors import LitAlignError
from lit_align.modeling.logprobs import CACHE_ARG, joined_context_logps, shared_context_logps
from lit_align.objectives import DPO, PrefixDPO


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: tiny models gain nothing from two, and on a busy 2-core machine two threads can
    make a step ~100x slower (measured: 4 s vs 0.04 s of CPU per prefix-DPO step under load 9)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _loader(obj, task="builtin:steers", n=12, batch_size=6, path=None):
    dm = AlignDataModule(train=path or {"path": task, "limit": n}, batch_size=batch_size, max_length=96)
    dm.connect(obj.tokenizer, obj.layout)
    dm.setup("fit")
    return dm.train_dataloader()


def _perturbed(cls, seed=0, **kwargs):
    """An objective whose policy differs from its reference (a copy of the starting model)."""
    obj = cls(beta=0.3, **kwargs)
    obj.configure_model()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in obj.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return obj


def _loss_and_grads(obj, batch):
    obj.model.zero_grad()
    sums = obj.step(batch)
    loss = sums["loss"][0] / sums["loss"][1]
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in obj.model.named_parameters()}, sums


def _assert_close(a, b, tol=1e-5):
    la, ga, _ = a
    lb, gb, _ = b
    assert la == pytest.approx(lb, abs=tol)
    assert ga.keys() == gb.keys()
    for n in ga:
        assert torch.allclose(ga[n], gb[n], atol=tol, rtol=1e-4), n


def test_batch_layout_left_pads_contexts_and_keeps_partial_continuations_open():
    obj = PrefixDPO()
    batch = next(iter(_loader(obj)))
    ctx_len = batch["context_mask"].sum(-1)
    assert len(set(ctx_len.tolist())) > 1                              # different context lengths in one batch
    assert (batch["context_mask"][:, -1] == 1).all()                   # left-padded: every context ends at C-1
    assert torch.equal(ctx_len, batch["context_tokens"])
    assert (batch["prefix_tokens"] > 0).all() and (batch["prefix_tokens"] < batch["context_tokens"]).all()
    assert batch["input_ids"].shape[0] == 2 * batch["context_ids"].shape[0]
    eos = obj.tokenizer.eos_token_id
    assert not (batch["labels"] == eos).any()                          # partial: no end token invented
    # every continuation token is a target, the first one included (predicted by the context's last logit)
    assert torch.equal(batch["labels"] != -100, batch["attention_mask"].bool())


def test_context_runs_once_for_policy_and_reference():
    obj = PrefixDPO()
    obj.configure_model()
    batch = next(iter(_loader(obj)))
    calls = {"policy": [], "reference": []}
    hooks = [model.register_forward_hook(lambda m, a, kw, o, who=who: calls[who].append(kw["input_ids"].shape),
                                         with_kwargs=True)
             for who, model in (("policy", obj.model), ("reference", obj.reference.model))]
    try:
        obj.step(batch)
    finally:
        for h in hooks:
            h.remove()
    B, C = batch["context_ids"].shape
    for who in calls:  # one pass over the B contexts, one over the 2B continuations
        assert calls[who] == [(B, C), batch["input_ids"].shape], who


def test_shared_context_equals_joined_sequences_losses_and_gradients():
    obj = _perturbed(PrefixDPO)
    batch = next(iter(_loader(obj)))
    shared = shared_context_logps(obj.model, batch)
    joined = joined_context_logps(obj.model, batch)
    assert torch.allclose(shared.logps, joined.logps, atol=1e-4) and torch.equal(shared.tokens, joined.tokens)

    naive = _perturbed(PrefixDPO, shared_context=False)
    _assert_close(_loss_and_grads(obj, batch), _loss_and_grads(naive, batch))


def test_the_cache_goes_in_by_the_current_keyword_without_deprecation_warnings():
    """transformers 5.24 renamed `past_key_values` to `cache` and warns on every call with the old name (removal
    announced for 5.40): a prefix-DPO step (policy and reference) warns nothing of the kind."""
    if Version(transformers.__version__) >= Version("5.24"):
        assert CACHE_ARG == "cache"
    obj = _perturbed(PrefixDPO)
    batch = next(iter(_loader(obj)))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values")
        _loss_and_grads(obj, batch)


def test_a_model_that_ignores_the_cache_is_an_error():
    """A model whose forward takes the cache by another keyword (remote code written for another name: `past`,
    as GPT-2 once had) swallows it in **kwargs and computes the continuations without their context: refused,
    not trained on."""
    from transformers import LlamaForCausalLM

    class OtherKeyword(LlamaForCausalLM):
        def forward(self, input_ids=None, attention_mask=None, position_ids=None, past=None, use_cache=None,
                    logits_to_keep=0, **kwargs):
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   use_cache=use_cache, logits_to_keep=logits_to_keep, **{CACHE_ARG: past})

    obj = _perturbed(PrefixDPO)
    batch = next(iter(_loader(obj)))
    old = OtherKeyword(obj.model.config)
    old.load_state_dict(obj.model.state_dict())
    with pytest.raises(LitAlignError, match="did not run on the context's key/value cache"):
        shared_context_logps(old, batch)


def test_equals_dpo_running_prompt_and_prefix_twice():
    """Prefix-DPO on steers = DPO on the same records (collate.py: prompt + prefix + continuation per row)."""
    prefix, dpo = _perturbed(PrefixDPO), _perturbed(DPO)
    a, b = _loss_and_grads(prefix, next(iter(_loader(prefix)))), _loss_and_grads(dpo, next(iter(_loader(dpo))))
    _assert_close(a, b)
    for name in ("rewards/margins", "logps/chosen", "logps/rejected"):
        assert (a[2][name][0] / a[2][name][1]).item() == pytest.approx((b[2][name][0] / b[2][name][1]).item(),
                                                                       abs=1e-4)


def test_empty_prefix_is_dpo():
    prefix, dpo = _perturbed(PrefixDPO), _perturbed(DPO)
    pb = next(iter(_loader(prefix, task="builtin:pairs")))
    assert (pb["prefix_tokens"] == 0).all()
    a = _loss_and_grads(prefix, pb)
    _assert_close(a, _loss_and_grads(dpo, next(iter(_loader(dpo, task="builtin:pairs")))))
    assert a[2]["prefix_fraction"][0].item() == 0


def test_policy_equal_reference_is_log2_and_prefix_fraction():
    obj = PrefixDPO()
    obj.configure_model()
    batch = next(iter(_loader(obj)))
    sums = obj.step(batch)
    assert (sums["loss"][0] / sums["loss"][1]).item() == pytest.approx(math.log(2), abs=1e-6)
    prefix = batch["prefix_tokens"].sum().item() * 2
    cont = batch["attention_mask"].sum().item()
    assert (sums["prefix_fraction"][0] / sums["prefix_fraction"][1]).item() == pytest.approx(prefix / (prefix + cont))


def test_very_different_context_lengths(tmp_path):
    rows = [{"prompt": "Count from 1 to 9.", "prefix": "1, ", "chosen": "2, 3,", "rejected": "3, 4,", "partial": True},
            {"prompt": "Count from 100 to 140. " * 6, "prefix": ", ".join(map(str, range(100, 130))) + ", ",
             "chosen": "130,", "rejected": "131, 132, 133,", "partial": True}]
    path = tmp_path / "steers.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    obj = _perturbed(PrefixDPO)
    dm = AlignDataModule(train=str(path), batch_size=2, max_length=512)
    dm.connect(obj.tokenizer, obj.layout)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    lengths = batch["context_mask"].sum(-1).sort().values
    assert lengths[1] > 4 * lengths[0]
    assert torch.allclose(shared_context_logps(obj.model, batch).logps, joined_context_logps(obj.model, batch).logps,
                          atol=1e-4)
    # and each example alone (no padding at all) gives the same numbers as in the padded batch
    together = shared_context_logps(obj.model, batch).logps
    for i in range(2):
        one = collate_prefix([dm.splits["train"][i]], obj.tokenizer.pad_token_id)
        alone = shared_context_logps(obj.model, one).logps
        assert torch.allclose(alone[0], together[batch["index"].tolist().index(i)], atol=1e-4)


# -- GSM8K: model solutions -> prefix pairs ------------------------------------------------------------


def test_common_line_prefix_and_pair():
    good = "a = 1\nb = 2\nso 3\nA: 3"
    bad = "a = 1\nb = 5\nso 6\nA: 6"
    assert common_line_prefix(good, bad) == 1
    assert common_line_prefix("x\nA: 1", "x\nA: 2") == 1
    assert common_line_prefix("A: 1", "A: 1") == 0  # a last line without "\n" is never shared
    assert prefix_pair("Q?", good, bad) == {"prompt": "Q?", "prefix": "a = 1\n", "chosen": "b = 2\nso 3\nA: 3",
                                            "rejected": "b = 5\nso 6\nA: 6", "partial": False}
    assert prefix_pair("Q?", good, bad, max_lines=1) == {"prompt": "Q?", "prefix": "a = 1\n", "chosen": "b = 2\n",
                                                         "rejected": "b = 5\n", "partial": True}
    row = {"question": "Q?", "m1": {"is_correct": True, "solution": good},
           "m2": {"is_correct": False, "solution": bad}, "m3": {"is_correct": False, "solution": good + " "}}
    records = list(prefix_pairs([("f:1", row)]))
    assert len(records) == 1  # the second incorrect solution equals the correct one once stripped: no pair


@requires_shared
def test_gsm8k_example_config_runs(tmp_path):
    src = SHARED_DATA / "gsm8k" / "example_model_solutions.jsonl"
    counts = convert(src, tmp_path / "pairs.jsonl", max_lines=2)
    assert counts["questions"] == 1319 and counts["pairs"] > 2000 and counts["with_prefix"] > 0
    first = json.loads((tmp_path / "pairs.jsonl").read_text().splitlines()[0])
    assert set(first) == {"prompt", "prefix", "chosen", "rejected", "partial"}
    result = run_cli([
        "fit", "--config", str(REPO / "configs" / "examples" / "prefix_dpo_gsm8k.yaml"),
        "--model.init_args.policy", json.dumps({"name": "builtin:tiny"}),
        "--model.init_args.reference.cache_dir", str(tmp_path / "cache"),
        "--data.init_args.train", json.dumps({"path": str(tmp_path / "pairs.jsonl"), "limit": 32}),
        "--data.init_args.val", json.dumps({"val": {"path": str(tmp_path / "pairs_val.jsonl"), "limit": 8}}),
        "--data.init_args.batch_size", "2", "--data.init_args.max_length", "256",
        "--trainer.max_steps", "2", "--trainer.limit_val_batches", "2", "--trainer.val_check_interval", "2",
        "--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--export.enabled", "false",
    ], cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert "reference cache: wrote" in out
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "cache").iterdir()) == ["train", "val"]


# -- it learns -------------------------------------------------------------------------------------------


def test_short_prefix_dpo_run_prefers_the_heldout_correction():
    import lightning as L

    from lit_align.modeling.models import ModelSpec
    from lit_align.objectives import OptimSpec

    L.seed_everything(0)
    obj = PrefixDPO(policy=ModelSpec(name="builtin:tiny"), optim=OptimSpec(lr=3e-3, schedule="constant"), beta=0.1)
    dm = AlignDataModule(train="builtin:steers", val={"val": {"path": "builtin:steers", "split": "val", "limit": 200}},
                         batch_size=16, eval_batch_size=100, max_length=64)
    dm.connect(obj.tokenizer, obj.layout)

    def trainer(**kwargs):
        return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, inference_mode=False, **kwargs)

    before = trainer().validate(obj, datamodule=dm, verbose=False)[0]
    trainer(max_steps=120, limit_val_batches=0).fit(obj, datamodule=dm)
    after = trainer().validate(obj, datamodule=dm, verbose=False)[0]
    print(f"\nheld-out logps chosen/rejected: before {before['val/logps/chosen']:.2f}/"
          f"{before['val/logps/rejected']:.2f}, after {after['val/logps/chosen']:.2f}/"
          f"{after['val/logps/rejected']:.2f}; val/rewards/accuracy after {after['val/rewards/accuracy']:.3f}")
    gap_before = before["val/logps/chosen"] - before["val/logps/rejected"]
    gap_after = after["val/logps/chosen"] - after["val/logps/rejected"]
    assert gap_after > 1.0 and gap_after > gap_before + 1.0
    assert after["val/rewards/accuracy"] >= 0.65  # chance is 0.5 (200 held-out steers)
