"""Reference log-probs (reference.py): a frozen copy, the LoRA policy with its adapter disabled, and a
precomputed cache file give the same numbers; each behaves as promised (frozen, out of checkpoints, no
model in memory with the cache, stale caches detected)."""

import pytest
import torch

from lit_align.data import AlignDataModule
from lit_align.errors import LitAlignError
from lit_align.modeling.models import LoraSpec, ModelSpec
from lit_align.objectives import DPO, OptimSpec, PrefixDPO
from lit_align.objectives.reference import ReferenceSpec

LORA = ModelSpec(name="builtin:tiny", lora=LoraSpec(r=4, alpha=8))


def _data(obj, task="builtin:pairs", n=12, **kwargs):
    dm = AlignDataModule(train={"path": task, "limit": n}, val={"val": {"path": task, "split": "val", "limit": n}},
                         batch_size=4, max_length=96, **kwargs)
    dm.connect(obj.tokenizer, obj.layout)
    dm.setup("fit")
    return dm


def _objective(mode, tmp_path, cls=DPO, policy=LORA, **ref):
    obj = cls(policy=policy, beta=0.3, reference=ReferenceSpec(mode=mode, cache_dir=str(tmp_path / "cache"), **ref))
    obj.configure_model()
    return obj


def _move_lora(obj, seed=1):
    """Make the policy differ from the reference: random LoRA B matrices (zero at init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in obj.model.named_parameters():
            if "lora_" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("cls, task", [(DPO, "builtin:pairs"), (PrefixDPO, "builtin:steers")])
def test_three_modes_give_the_same_losses(tmp_path, cls, task):
    objs = {mode: _objective(mode, tmp_path, cls) for mode in ("copy", "disable_adapter", "cache")}
    for obj in objs.values():
        _move_lora(obj)
    dm = _data(objs["copy"], task)
    objs["cache"].reference.prepare(objs["cache"].model, dm, from_policy=True)
    for split, loader in (("train", dm.train_dataloader()), ("val", dm.val_dataloader()[0])):
        for batch in loader:
            sums = {mode: obj.step(batch) for mode, obj in objs.items()}
            loss = {mode: (s["loss"][0] / s["loss"][1]).item() for mode, s in sums.items()}
            assert abs(sums["copy"]["rewards/chosen"][0].item()) > 1e-2  # the policy differs from the reference
            assert loss["disable_adapter"] == pytest.approx(loss["copy"], abs=1e-5), split
            assert loss["cache"] == pytest.approx(loss["copy"], abs=1e-5), split
            margins = {mode: s["rewards/margins"][0].item() for mode, s in sums.items()}
            assert margins["cache"] == pytest.approx(margins["copy"], abs=1e-4)


def test_frozen_copy_is_frozen_in_eval_mode_and_out_of_checkpoints(tmp_path):
    obj = _objective("copy", tmp_path, policy=ModelSpec(name="builtin:tiny"))
    ref = obj.reference.model
    assert ref is not obj.model and any(m is ref for m in obj.modules())  # a submodule: moves with .to(device)
    assert not any(p.requires_grad for p in ref.parameters())
    obj.train()
    assert obj.model.training and not ref.training
    before = {k: v.clone() for k, v in ref.state_dict().items()}

    batch = next(iter(_data(obj).train_dataloader()))
    optimizer = torch.optim.AdamW([p for p in obj.parameters() if p.requires_grad], lr=1e-2)
    assert all(p.requires_grad for g in optimizer.param_groups for p in g["params"])
    obj.step(batch)["loss"][0].backward()
    assert all(p.grad is None for p in ref.parameters())
    optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in ref.state_dict().items())

    state = obj.state_dict()
    assert state and not any(k.startswith("reference.") for k in state)   # checkpoints carry the policy only
    again = _objective("copy", tmp_path, policy=ModelSpec(name="builtin:tiny"))
    again.load_state_dict(state)                                          # strict loading still passes
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(), obj.model.state_dict().values()))


def test_another_model_by_path(tmp_path):
    """copy with `model`: e.g. an SFT model saved in Hugging Face format; it must share the tokenizer."""
    from lit_align.modeling.logprobs import sequence_logps
    from lit_align.modeling.models import builtin_tokenizer, load_model, save_hf

    other = load_model(ModelSpec(name="builtin:tiny", init_seed=3), builtin_tokenizer())
    save_hf(other, builtin_tokenizer(), tmp_path / "other")
    obj = _objective("copy", tmp_path, policy=ModelSpec(name="builtin:tiny"),
                     model=ModelSpec(name=str(tmp_path / "other")))
    batch = next(iter(_data(obj).train_dataloader()))
    with torch.no_grad():
        assert torch.allclose(obj.reference(batch, obj.model).logps, sequence_logps(other, batch).logps, atol=1e-5)

    other.resize_token_embeddings(600)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(LitAlignError, match="must share one tokenizer"):
        _objective("copy", tmp_path, policy=ModelSpec(name="builtin:tiny"),
                   model=ModelSpec(name=str(tmp_path / "other")))


def test_disable_adapter_needs_lora(tmp_path):
    with pytest.raises(LitAlignError, match="the policy has no LoRA adapter"):
        _objective("disable_adapter", tmp_path, policy=ModelSpec(name="builtin:tiny"))


def test_unknown_mode():
    with pytest.raises(LitAlignError, match="reference.mode must be one of copy, disable_adapter, cache"):
        DPO(reference=ReferenceSpec(mode="frozen"))


def test_cache_is_reused_and_holds_no_model(tmp_path, monkeypatch):
    first = _objective("cache", tmp_path)
    dm = _data(first)
    first.reference.prepare(first.model, dm, from_policy=True)
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert [f.split("-")[0] for f in files] == ["train", "val"]
    assert not any(isinstance(m, torch.nn.Linear) for m in first.reference.modules())  # no model in memory
    table = first.reference.tables["val"]

    # a later run (another β; a resumed run whose policy has moved) finds the files and computes nothing
    monkeypatch.setattr("lit_align.objectives.reference.split_logps", lambda *a, **k: pytest.fail("recomputed a valid cache"))
    second = DPO(policy=LORA, beta=0.05, reference=ReferenceSpec(mode="cache", cache_dir=str(tmp_path / "cache")))
    second.configure_model()
    _move_lora(second)
    second.reference.prepare(second.model, dm, from_policy=False)
    assert torch.equal(second.reference.tables["val"][0], table[0])
    batch = next(iter(dm.val_dataloader()[0]))
    looked_up = second.reference(batch, second.model)
    assert torch.equal(looked_up.logps, table[0][batch["index"]])


@pytest.mark.parametrize("world", [2, 3])
def test_whole_split_tables_shard_over_ranks_exactly(tmp_path, world):
    """split_logps in a run of W data-parallel ranks: rank r computes the batches r, r + W, ... of the one-process
    batching, zero elsewhere, so that the sum over ranks (what the all-reduce forms) is bit for bit the
    one-process table; every rank runs the same number of forward passes (a sharded forward is a collective)."""
    from lit_align.modeling.logprobs import sequence_logps
    from lit_align.objectives.reference import _eval_no_grad, _split_shard, split_logps

    obj = _objective("copy", tmp_path, policy=ModelSpec(name="builtin:tiny"))
    dm = _data(obj, n=22)                       # eval_batch_size 4: 6 batches, the last of 2 examples
    single = split_logps(lambda b: _eval_no_grad(obj.model, b, sequence_logps), dm, "train", "cpu")
    assert single[0].shape == (22, 2) and torch.isfinite(single[0]).all()
    shards, calls = [], []
    for rank in range(world):
        seen = []

        def logps_of(batch):
            seen.append(batch["index"].tolist())
            return _eval_no_grad(obj.model, batch, sequence_logps)

        shards.append(_split_shard(logps_of, dm, "train", "cpu", None, torch.no_grad, None, rank, world))
        calls.append(seen)
    assert len({len(c) for c in calls}) == 1 and len(calls[0]) == -(-6 // world)      # lockstep: 3 or 2 each
    assert calls[0][0] == [0, 1, 2, 3] and calls[1][0] == [4, 5, 6, 7]                 # rank r: batch r first
    assert torch.equal(sum(s[2] for s in shards), torch.ones(22, dtype=torch.long))    # each example once
    assert torch.equal(sum(s[0] for s in shards), single[0])                            # bit for bit
    assert torch.equal(sum(s[1] for s in shards), single[1])


def test_stale_cache_is_refused_or_rebuilt(tmp_path):
    obj = _objective("cache", tmp_path)
    obj.reference.prepare(obj.model, _data(obj, n=12), from_policy=True)

    # other data, build: false -> refused, naming what differs
    strict = _objective("cache", tmp_path, build=False)
    with pytest.raises(LitAlignError, match=r"no cache file for split 'train'.*stale: built for a different data"):
        strict.reference.prepare(strict.model, _data(strict, n=10), from_policy=True)
    # another model (other init), build: false -> refused, naming the model
    other = _objective("cache", tmp_path, policy=ModelSpec(name="builtin:tiny", init_seed=7), build=False)
    with pytest.raises(LitAlignError, match="built for a different model"):
        other.reference.prepare(other.model, _data(other, n=12), from_policy=True)
    # with build: true (the default) a stale cache is rebuilt, next to the old one
    rebuilt = _objective("cache", tmp_path)
    rebuilt.reference.prepare(rebuilt.model, _data(rebuilt, n=10), from_policy=True)
    assert len(list((tmp_path / "cache").glob("train-*.pt"))) == 2
    # a corrupt file is never used: it is rebuilt
    path = rebuilt.reference.files["val"]
    path.write_bytes(b"not a cache")
    again = _objective("cache", tmp_path)
    again.reference.prepare(again.model, _data(again, n=10), from_policy=True)
    assert torch.equal(again.reference.tables["val"][0], rebuilt.reference.tables["val"][0])
    assert torch.load(path, weights_only=True)["meta"]["examples"] == 10


def test_cache_through_trainer_fit(tmp_path):
    """on_fit_start builds the cache from the data module's splits, before the sanity check and training."""
    import lightning as L

    obj = DPO(policy=ModelSpec(name="builtin:tiny"),
              reference=ReferenceSpec(mode="cache", cache_dir=str(tmp_path / "cache")))
    dm = AlignDataModule(train={"path": "builtin:pairs", "limit": 8},
                         val={"val": {"path": "builtin:pairs", "split": "val", "limit": 8}}, batch_size=4)
    dm.connect(obj.tokenizer, obj.layout)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(obj, datamodule=dm)
    assert set(obj.reference.tables) == {"train", "val"}
    assert trainer.callback_metrics["val/loss"].isfinite()


@pytest.mark.parametrize("mode", ["copy", "cache"])
def test_resume_from_checkpoint(tmp_path, mode, monkeypatch):
    """A checkpoint carries no reference; resuming rebuilds it from its spec (copy) or finds the cache built
    from the starting model, not from the trained policy it resumes (cache)."""
    import lightning as L

    def fit(steps, ckpt_path=None):
        obj = DPO(policy=ModelSpec(name="builtin:tiny"), optim=OptimSpec(lr=1e-2),
                  reference=ReferenceSpec(mode=mode, cache_dir=str(tmp_path / "cache")))
        dm = AlignDataModule(train={"path": "builtin:pairs", "limit": 16}, batch_size=4)
        dm.connect(obj.tokenizer, obj.layout)
        trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                            enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=0)
        trainer.fit(obj, datamodule=dm, ckpt_path=ckpt_path, weights_only=False)  # hparams hold dataclasses
        return obj, trainer

    first, trainer = fit(2)
    ckpt = tmp_path / "two.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    assert state and not any(k.startswith("reference.") for k in state)
    if mode == "cache":
        table = first.reference.tables["train"]
        monkeypatch.setattr("lit_align.objectives.reference.split_logps", lambda *a, **k: pytest.fail("recomputed a valid cache"))
    second, trainer = fit(4, ckpt_path=str(ckpt))
    assert trainer.global_step == 4
    if mode == "cache":
        assert torch.equal(second.reference.tables["train"][0], table[0])
    else:  # the reference is still the starting model
        fresh = DPO(policy=ModelSpec(name="builtin:tiny"))
        fresh.configure_model()
        for a, b in zip(second.reference.model.parameters(), fresh.model.parameters()):
            assert torch.equal(a, b)
