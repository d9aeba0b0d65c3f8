"""Importance-reweighted SFT (objectives/iw_sft.py): α = 0 is exactly SFT, the loss against hand-computed
weights, bounded weights under a 1000x gap, weights independent of batching, the policy-ratio variant, the
resample wiring, exact resume in both modes, and the config through the CLI."""

import json
import math

import lightning.pytorch as pl
import pytest
import torch
from conftest import REPO, run_cli
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_align.data import AlignDataModule
from lit_align.errors import LitAlignError
from lit_align.modeling.logprobs import forward_logps, sequence_logps
from lit_align.modeling.models import ModelSpec
from lit_align.objectives import IWSFT, SFT, OptimSpec
from lit_align.objectives.reference import ReferenceSpec, reference_split_logps
from lit_align.weights import WeightSpec, group_ids

TINY = ModelSpec("builtin:tiny")


def _data(obj, train=None, batch_size=4, seed=0, val=None):
    dm = AlignDataModule(train=train or {"path": "builtin:ab", "limit": 16}, val=val, batch_size=batch_size,
                         max_length=96, seed=seed)
    dm.connect(obj.tokenizer, obj.layout)
    dm.setup("fit")
    return dm


def _perturb(model, seed=1, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def _iw(tmp_path=None, **weights):
    ref = ReferenceSpec(mode="cache", cache_dir=str(tmp_path / "cache")) if tmp_path else ReferenceSpec(mode="copy")
    obj = IWSFT(policy=TINY, weights=WeightSpec(**weights), reference=ref)
    obj.configure_model()
    return obj


def test_alpha_zero_is_exactly_sft():
    sft = SFT(policy=TINY)
    sft.configure_model()
    iw = _iw(alpha=0.0, max_ratio=None)
    iw.model.load_state_dict(sft.model.state_dict())
    dm = _data(iw)
    iw.prepare(dm)
    batch = next(iter(dm.train_dataloader()))
    a, b = sft.step(batch), iw.step(batch)
    assert torch.equal(a["loss"][0], b["loss"][0]) and torch.equal(a["loss"][1], b["loss"][1])
    assert torch.equal(b["nll"][0], a["loss"][0])
    a["loss"][0].backward()
    b["loss"][0].backward()
    for (name, p), q in zip(sft.model.named_parameters(), iw.model.parameters()):
        assert torch.equal(p.grad, q.grad), name


def test_evaluation_on_pairs_scores_the_chosen_answer_with_its_weights_in_one_pass(tmp_path):
    """On a pair set (`kind: pair`) IW-SFT's metrics are its step's on the chosen answers (weights included), from
    the same forward pass as the pair metrics (objectives/base.py eval_sums)."""
    obj = _iw(tmp_path, alpha=0.7, max_ratio=None)
    dm = _data(obj, val={"pairs": {"path": "builtin:ab", "split": "id", "limit": 6, "kind": "pair"}})
    obj.prepare(dm)
    _perturb(obj.model)
    pairs = next(iter(dm.eval_loader(dm.log_prefix("val", "pairs"))))
    assert pairs["num_continuations"] == 2
    B = pairs["index"].shape[0]
    obj.eval()
    with torch.no_grad():
        fused = obj.eval_sums(pairs)
        apart = obj.step({**pairs, **{k: pairs[k][:B] for k in ("input_ids", "attention_mask", "labels")},
                          "num_continuations": 1})
    for name in ("loss", "nll", "token_accuracy", "logps"):
        assert (fused[name][0] / fused[name][1]).item() == pytest.approx((apart[name][0] / apart[name][1]).item(),
                                                                         rel=1e-5, abs=1e-6), name
        assert int(fused[name][1]) == int(apart[name][1])
    assert "logps/accuracy" in fused and "ab/p_match" in fused


def test_loss_matches_hand_computed_weights(tmp_path):
    obj = _iw(tmp_path, alpha=0.7, max_ratio=None)
    dm = _data(obj)
    obj.prepare(dm)                      # weights from the starting model (cached), then the policy moves
    _perturb(obj.model)
    fresh = _iw(alpha=0.7)                       # an independent starting model: the frozen copy
    ref = reference_split_logps(fresh.reference, fresh.model, dm, "train")
    u = torch.exp(-0.7 * ref[0][:, 0].double())
    w_all = u / u.mean()                         # dataset scope: mean 1 over the 16 training examples
    batch = next(iter(dm.train_dataloader()))
    with torch.no_grad():
        out = forward_logps(obj.model, batch)
        sums = obj.step(batch)
    w = w_all[batch["index"]].float()
    expect = (w * -(out.logps * out.mask).sum(-1)).sum() / out.mask.sum()
    assert (sums["loss"][0] / sums["loss"][1]).item() == pytest.approx(expect.item(), rel=1e-5)
    assert sums["loss"][1].item() == out.mask.sum().item()  # the count is the plain token count
    assert (sums["nll"][0] / sums["nll"][1]).item() == pytest.approx(-(out.logps.sum() / out.mask.sum()).item(), rel=1e-5)
    assert obj.importance.tables["train"].weights.mean().item() == pytest.approx(1.0, abs=1e-6)


class GradRecorder(IWSFT):
    """IW-SFT that keeps the (normalised) gradients of its first optimizer step."""

    def on_before_optimizer_step(self, optimizer):
        super().on_before_optimizer_step(optimizer)
        self.grads = {n: p.grad.detach().clone() for n, p in self.named_parameters() if p.grad is not None}


def _first_step_grads(batch_size, accumulate):
    obj = GradRecorder(policy=TINY, optim=OptimSpec(lr=1e-3), weights=WeightSpec(alpha=1.0, max_ratio=None))
    obj.configure_model()
    _perturb(obj.reference.model, scale=0.2)     # a reference with clear preferences: weights far from 1
    dm = AlignDataModule(train={"path": "builtin:sft", "limit": 32}, batch_size=batch_size, max_length=64)
    dm.connect(obj.tokenizer, obj.layout)
    trainer = pl.Trainer(max_steps=1, accumulate_grad_batches=accumulate, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(obj, datamodule=dm)
    return obj


def test_gradient_accumulation_gives_the_same_gradient():
    one, two = _first_step_grads(8, 1), _first_step_grads(4, 2)
    weights = one.importance.tables["train"].weights
    assert weights.std() > 0.1                    # the weights matter
    assert one.grads.keys() == two.grads.keys() and one.grads
    for name, g in one.grads.items():
        assert torch.allclose(g, two.grads[name], atol=1e-6, rtol=1e-4), name


def test_a_1000x_gap_with_clipping_gives_bounded_weights_and_a_sane_loss():
    obj = _iw(alpha=1.0, max_ratio=5.0)
    dm = _data(obj)
    n = len(dm.splits["train"])
    ref = torch.full((n,), math.log(0.9))
    ref[3] = math.log(0.9 / 1000)                # the starting model is 1000x less sure of example 3
    obj.importance.build_from_reference("train", ref, torch.ones(n), group_ids([None] * n))
    table = obj.importance.tables["train"]
    assert table.weights.max().item() == pytest.approx(5.0) and table.clipped.tolist() == [i == 3 for i in range(n)]
    assert table.weights.mean().item() == pytest.approx(1.0, abs=1e-6)
    for batch in dm.train_dataloader():
        with torch.no_grad():
            sums = obj.step(batch)
        loss, plain = (sums["loss"][0] / sums["loss"][1]).item(), (sums["nll"][0] / sums["nll"][1]).item()
        assert math.isfinite(loss) and 0 < loss <= 5.0 * plain


def _group_file(tmp_path):
    rows = [{"prompt": f"Count from {s} to {s + 3}.", "completions": [", ".join(str(s + i) for i in range(4)) + ".",
                                                                     f"{s}, {s + 1}.", f"{s} and so on."]}
            for s in range(6)]
    path = tmp_path / "groups.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("scope", ["dataset", "group"])
def test_weights_do_not_depend_on_batching(tmp_path, scope):
    obj = _iw(alpha=1.0, normalize=scope, max_ratio=None)
    _perturb(obj.reference.model, scale=0.2)     # a reference with clear preferences between completions
    seen = []
    for batch_size, seed in ((4, 0), (5, 7)):
        dm = _data(obj, train=_group_file(tmp_path), batch_size=batch_size, seed=seed)
        obj.importance.tables.clear()
        obj.prepare(dm)
        weights, batches_of_group = {}, {}
        for b, batch in enumerate(dm.train_dataloader()):
            w, _ = obj.batch_weights(batch)
            weights.update(zip(batch["index"].tolist(), w.tolist()))
            for i in batch["index"].tolist():
                batches_of_group.setdefault(dm.splits["train"].examples[i].group, set()).add(b)
        assert any(len(b) > 1 for b in batches_of_group.values())   # a prompt's completions in different batches
        seen.append(weights)
    assert len(seen[0]) == 18 and seen[0] == seen[1]
    w = torch.tensor([seen[0][i] for i in range(18)])
    assert w.std() > 0.05                        # the test has teeth: the weights are not all 1
    if scope == "group":                         # mean 1 within each prompt's three completions
        assert w.view(6, 3).mean(1).tolist() == pytest.approx([1.0] * 6, abs=1e-5)
    else:
        assert w.mean().item() == pytest.approx(1.0, abs=1e-5)


def test_weights_from_the_data(tmp_path):
    rows = [{"prompt": f"What is {i} plus 1?", "completion": f"{i + 1}.", **({"weight": float(i)} if i else {})}
            for i in range(4)]                   # weights 1 (none given), 1, 2, 3
    path = tmp_path / "weighted.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    obj = IWSFT(policy=TINY, weights=WeightSpec(source="data", max_ratio=None))
    assert obj.reference is None                 # no reference model for record weights
    obj.configure_model()
    dm = _data(obj, train=str(path), batch_size=4)
    obj.prepare(dm)
    assert obj.importance.tables["train"].weights.tolist() == pytest.approx([4 / 7, 4 / 7, 8 / 7, 12 / 7])


def test_policy_ratio_variant():
    obj = IWSFT(policy=TINY, weights=WeightSpec(source="policy_ratio"))
    obj.configure_model()
    dm = _data(obj)
    obj.prepare(dm)
    batch = next(iter(dm.train_dataloader()))
    with torch.no_grad():
        start = obj.step(batch)
    assert torch.allclose(start["loss"][0], start["nll"][0])        # π_θ = π_ref: every weight is 1
    _perturb(obj.model)
    with torch.no_grad():
        pol, ref = sequence_logps(obj.model, batch), obj.reference(batch, obj.model)
        w, _ = obj.batch_weights(batch, pol.logps[:, 0], pol.tokens[:, 0])
    expect = torch.exp((pol.logps[:, 0] - ref.logps[:, 0]) / pol.tokens[:, 0]).clamp(0, 16)
    assert torch.allclose(w, expect) and not torch.allclose(w, torch.ones_like(w))


def test_bad_settings_are_refused():
    with pytest.raises(LitAlignError, match="mode must be one of"):
        IWSFT(mode="multiply")
    with pytest.raises(LitAlignError, match="policy_ratio"):
        IWSFT(mode="resample", weights=WeightSpec(source="policy_ratio"))
    with pytest.raises(LitAlignError, match="not batch"):
        IWSFT(mode="resample", weights=WeightSpec(normalize="batch"))
    with pytest.raises(LitAlignError, match="refresh_every needs mode: loss"):
        IWSFT(mode="resample", weights=WeightSpec(refresh_every=10))


# -- training through the Trainer: resample wiring, metrics, exact resume ------------------------------


class Recorder(IWSFT):
    """IW-SFT that records, per training batch: the step, the example indices, the loss sum and the weights."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.record = []

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        w, _ = self.batch_weights(batch)
        self.record.append((self.trainer.global_step, batch["index"].tolist(), loss.item(), w.tolist()))
        return loss


def _fit(tmp_path, mode, max_steps, ckpt_path=None, save_every=None, **weights):
    torch.manual_seed(0)
    # a constant learning rate: the schedule of a 2-step run would otherwise differ from a 4-step one
    obj = Recorder(policy=TINY, optim=OptimSpec(lr=1e-2, schedule="constant"), mode=mode, weights=WeightSpec(**weights),
                   reference=ReferenceSpec(mode="cache", cache_dir=str(tmp_path / "cache")))
    dm = AlignDataModule(train={"path": "builtin:ab", "limit": 24}, batch_size=3, max_length=96,
                         val={"val": {"path": "builtin:ab", "split": "id", "limit": 3, "kind": "pair"}})
    dm.connect(obj.tokenizer, obj.layout, obj.train_sampling_weights)
    # a checkpoint written while training (as a run stopped there would leave it), not after fit returns
    saver = [ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=save_every)] if save_every else []
    trainer = pl.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, callbacks=saver,
                         enable_checkpointing=bool(saver), enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, val_check_interval=4, log_every_n_steps=1)
    trainer.fit(obj, datamodule=dm, ckpt_path=ckpt_path, weights_only=False if ckpt_path else None)
    return obj, dm, trainer


@pytest.mark.parametrize("mode, weights", [
    ("loss", {"alpha": 1.0, "max_ratio": 3.0, "refresh_every": 3}),   # refreshed from the policy at step 3
    ("resample", {"alpha": 1.0, "max_ratio": 3.0}),
])
def test_resume_is_exact(tmp_path, mode, weights):
    full, dm, trainer = _fit(tmp_path, mode, 4, **weights)
    first, _, _ = _fit(tmp_path, mode, 2, save_every=2, **weights)
    (ckpt,) = (tmp_path / "ckpt").glob("*.ckpt")
    resumed, _, _ = _fit(tmp_path, mode, 4, ckpt_path=str(ckpt), **weights)
    assert [r[0] for r in full.record] == [0, 1, 2, 3]
    again = first.record + resumed.record
    assert [r[:2] for r in again] == [r[:2] for r in full.record]   # the same steps see the same examples
    for (_, _, loss_a, w_a), (_, _, loss_b, w_b) in zip(again, full.record):
        assert loss_a == pytest.approx(loss_b, rel=1e-5, abs=1e-6)
        assert w_a == pytest.approx(w_b, rel=1e-6)

    metrics = trainer.logged_metrics
    for split in ("train", "val"):
        assert {f"{split}/weights/{m}" for m in ("mean", "max", "ess", "clipped_fraction")} <= metrics.keys()
        assert {f"{split}/loss", f"{split}/nll", f"{split}/token_accuracy", f"{split}/logps"} <= metrics.keys()
    assert "val/logps/accuracy" in metrics                       # behaviour-match rate on the A/B pairs
    table = full.importance.tables["train"]
    if mode == "resample":
        assert type(dm._train_sampler).__name__ == "WeightedResampler"
        assert torch.equal(dm._train_sampler.weights.float(), table.weights)
        assert metrics["train/weights/mean"].item() == pytest.approx(1.0, abs=1e-5)
        assert metrics["train/loss"].item() == pytest.approx(metrics["train/nll"].item())   # drawn ∝ w, weight 1
    else:
        assert table.computed_at == 3 and first.importance.tables["train"].computed_at == 0
        refreshed = Recorder(policy=TINY, mode=mode, weights=WeightSpec(**weights))
        checkpoint = {}
        full.on_save_checkpoint(checkpoint)
        refreshed.on_load_checkpoint(checkpoint)              # a refreshed table comes back from a checkpoint
        assert torch.equal(refreshed.importance.tables["train"].weights, table.weights)
        assert not torch.equal(table.weights, first.importance.tables["train"].weights)


def test_config_runs_through_the_cli(tmp_path):
    config = str(REPO / "configs" / "iw_sft.yaml")
    result = run_cli(["fit", "--config", config, "--model.init_args.policy.name", "builtin:tiny",
                      "--data.init_args.train.limit", "16", "--data.init_args.val.id.limit", "4",
                      "--data.init_args.val.ood.limit", "4", "--data.init_args.batch_size", "4",
                      "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
                      "--trainer.logger.init_args.name", "iw_test"], cwd=tmp_path,
                     env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "TensorBoard logs: logs/iw_test/version_0" in result.stdout
    assert list((tmp_path / "logs" / "reference_cache").glob("train-*.pt"))    # computed once, cached


def test_resample_weights_reach_the_data_module_through_connect(tmp_path):
    """The objective hands its sampling weights to the data module with its layout (connect); a data module
    connected without them is refused in one sentence, rather than written into by the objective."""
    obj = IWSFT(policy=TINY, mode="resample", weights=WeightSpec(alpha=1.0),
                reference=ReferenceSpec(mode="cache", cache_dir=str(tmp_path / "cache")))
    assert obj.train_sampling_weights == obj._sampling_weights and IWSFT(policy=TINY).train_sampling_weights is None
    dm = AlignDataModule(train={"path": "builtin:ab", "limit": 6}, batch_size=3, max_length=96)
    dm.connect(obj.tokenizer, obj.layout)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(LitAlignError, match="connect the data module with them"):
        trainer.fit(obj, datamodule=dm)
