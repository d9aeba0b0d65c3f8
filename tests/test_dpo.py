"""DPO objective: the math on real batches, one forward pass, metrics, pair-specific bad input, the HH-RLHF
example config, and that a short run learns."""

import json
import math

import pytest
import torch
from conftest import REPO, SHARED_DATA, requires_shared, run_cli

from lit_align.data import AlignDataModule
from lit_align.errors import DataError, LitAlignError
from lit_align.modeling.logprobs import sequence_logps
from lit_align.objectives import DPO
from lit_align.layouts import layout_named

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # conftest sets it too; explicit for the subprocess
METRICS = {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracy",
           "logps/chosen", "logps/rejected", "logps/margins", "logps/accuracy"}


def _data(obj, task="builtin:pairs", n=16, batch_size=4, **kwargs):
    dm = AlignDataModule(train={"path": task, "limit": n}, val={"val": {"path": task, "split": "val", "limit": n}},
                         batch_size=batch_size, max_length=96, **kwargs)
    dm.connect(obj.tokenizer, obj.layout)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def dpo():
    obj = DPO(beta=0.1)
    obj.configure_model()
    return obj


@pytest.fixture(scope="module")
def batch(dpo):
    return next(iter(_data(dpo).train_dataloader()))


def _mean(sums, name):
    s, c = sums[name]
    return (s / c).item()


def test_policy_equal_reference_is_log2(dpo, batch):
    sums = dpo.step(batch)
    assert set(sums) == METRICS
    assert _mean(sums, "loss") == pytest.approx(math.log(2), abs=1e-6)
    assert sums["loss"][1] == 4  # the count is the number of pairs
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracy"):
        assert _mean(sums, name) == 0.0


def test_one_forward_pass_over_chosen_and_rejected(dpo, batch):
    calls = []
    handle = dpo.model.register_forward_hook(lambda m, args, kwargs, out: calls.append(kwargs["input_ids"].shape),
                                             with_kwargs=True)
    try:
        dpo.step(batch)
    finally:
        handle.remove()
    assert calls == [batch["input_ids"].shape] and calls[0][0] == 8  # 4 chosen + 4 rejected rows, one call


def test_logps_cover_continuation_tokens_only_in_fp32(dpo, batch):
    out = sequence_logps(dpo.model, batch)
    assert out.logps.dtype == torch.float32 and out.logps.shape == (4, 2)
    B = 4
    with torch.no_grad():
        for i in range(B):
            for j in range(2):
                row = batch["input_ids"][j * B + i][batch["attention_mask"][j * B + i].bool()]
                n_ctx = batch["context_tokens"][i].item()
                logits = dpo.model(input_ids=row[None]).logits[0].float().log_softmax(-1)   # (T, V)
                want = logits[n_ctx - 1: -1].gather(-1, row[n_ctx:, None]).sum()
                assert out.logps[i, j].item() == pytest.approx(want.item(), abs=1e-4)
                assert out.tokens[i, j].item() == len(row) - n_ctx
    assert _mean(dpo.step(batch), "logps/chosen") == pytest.approx(out.logps[:, 0].mean().item(), abs=1e-5)


def test_variants_length_normalisation_and_nll(batch):
    base = DPO(beta=0.5)
    base.configure_model()
    with torch.no_grad():  # move the policy away from the reference
        for p in base.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    pol = sequence_logps(base.model, batch)
    ref = base.reference(batch, base.model)
    h = (pol.logps[:, 0] - pol.logps[:, 1]) - (ref.logps[:, 0] - ref.logps[:, 1])
    sums = base.step(batch)
    assert _mean(sums, "loss") == pytest.approx(torch.nn.functional.softplus(-0.5 * h).mean().item(), abs=1e-5)
    ratio = pol.logps - ref.logps                                        # (B, 2)
    assert _mean(sums, "rewards/accuracy") == (ratio[:, 0] > ratio[:, 1]).float().mean().item()

    t = pol.tokens.float()
    normed = (pol.logps - ref.logps) / t                                 # (B, 2)
    hn = normed[:, 0] - normed[:, 1]
    # IPO follows its authors (and TRL): per-token mean log-ratios by default; the paper's sums on request
    for loss, normalize, expect in (("ipo", None, (hn - 1.0) ** 2), ("ipo", False, (h - 1.0) ** 2),
                                    ("hinge", None, torch.relu(1 - 0.5 * h))):
        other = DPO(beta=0.5, loss=loss, length_normalize=normalize)
        other.configure_model()
        other.model.load_state_dict(base.model.state_dict())
        sums = other.step(batch)
        assert _mean(sums, "loss") == pytest.approx(expect.mean().item(), abs=1e-4)
        assert _mean(sums, "rewards/margins") == pytest.approx((0.5 * (ratio[:, 0] - ratio[:, 1])).mean().item(),
                                                               abs=1e-5)

    norm = DPO(beta=0.5, length_normalize=True, nll_weight=0.5)
    norm.configure_model()
    norm.model.load_state_dict(base.model.state_dict())
    nll = -pol.logps[:, 0] / t[:, 0]
    sums = norm.step(batch)
    assert _mean(sums, "loss") == pytest.approx((torch.nn.functional.softplus(-0.5 * hn) + 0.5 * nll).mean().item(),
                                                abs=1e-5)
    assert _mean(sums, "nll") == pytest.approx(nll.mean().item(), abs=1e-5)
    # the logged rewards are β(log π - log π_ref) of the whole sequence, as documented, not the normalised ones
    for j, name in enumerate(("chosen", "rejected")):
        assert _mean(sums, f"rewards/{name}") == pytest.approx((0.5 * ratio[:, j]).mean().item(), abs=1e-5)
    assert (normed[:, 0] - ratio[:, 0]).abs().max() > 0.1   # (the two differ on this batch)


def test_bad_settings_are_refused():
    with pytest.raises(LitAlignError, match="loss must be one of"):
        DPO(loss="kto")
    with pytest.raises(LitAlignError, match="beta"):
        DPO(beta=0)
    with pytest.raises(LitAlignError, match="label_smoothing"):
        DPO(label_smoothing=0.5)
    for loss in ("ipo", "hinge"):   # they ignore it: an error, not silence
        with pytest.raises(LitAlignError, match=f"label_smoothing 0.1 has no effect with loss {loss}"):
            DPO(loss=loss, label_smoothing=0.1)
    assert DPO(loss="robust", label_smoothing=0.1).label_smoothing == 0.1
    assert [DPO(loss=loss).length_normalize for loss in ("sigmoid", "robust", "ipo", "hinge")] == [
        False, False, True, False]


# -- pair-specific bad input, through the data module ---------------------------------------------------


def _jsonl(tmp_path, rows):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GOOD = {"prompt": "What is 2 plus 2?", "chosen": "4.", "rejected": "5."}


@pytest.mark.parametrize("kind", ["pair", "prefix_pair"])
def test_identical_pair_is_skipped_counted_and_warned(tmp_path, tokenizer, kind):
    path = _jsonl(tmp_path, [GOOD, {"prompt": "Hi", "chosen": "Hello.", "rejected": "Hello."}, GOOD])
    dm = AlignDataModule(train=str(path), batch_size=2)
    dm.connect(tokenizer, layout_named(kind))
    with pytest.warns(UserWarning, match=r"pairs.jsonl:2: chosen and rejected are identical"):
        dm.setup("fit")
    summary = dm.summaries["train"]
    assert summary.kept == 2 and summary.skipped["chosen == rejected"] == 1
    assert "1 skipped (chosen == rejected)" in summary.line()


@pytest.mark.parametrize("row, line, field, message", [
    ({"prompt": "What is 2 plus 2?", "chosen": "4."}, 2, "rejected", "missing"),
    ({"prompt": "Count to 4.", "prefix": "1, 2, ", "chosen": "1, 2, 3, 4", "rejected": "1, 3, 4"}, 2, "prefix",
     "contradicts 'rejected'"),
    ({"prompt": "What is 2 plus 2?", "completion": "4."}, 2, "rejected", "needs chosen and rejected"),
])
@pytest.mark.parametrize("kind", ["pair", "prefix_pair"])
def test_bad_pair_names_file_line_and_field(tmp_path, tokenizer, kind, row, line, field, message):
    path = _jsonl(tmp_path, [GOOD, row])
    dm = AlignDataModule(train=str(path), batch_size=2)
    dm.connect(tokenizer, layout_named(kind))
    with pytest.raises(DataError, match=message) as e:
        dm.setup("fit")
    assert e.value.where == f"{path}:{line}" and e.value.field == field
    assert f"{path}:{line}: field '{field}'" in str(e.value)


# -- real data: the HH-RLHF example config, offline ---------------------------------------------------


@requires_shared
def test_hh_rlhf_example_config_runs(tmp_path):
    data = str(SHARED_DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz")
    result = run_cli([
        "fit", "--config", str(REPO / "configs" / "examples" / "dpo_hh_rlhf.yaml"),
        "--model.init_args.policy.name", "builtin:tiny",
        "--data.init_args.train", json.dumps({"path": data, "limit": 64}),
        "--data.init_args.val", json.dumps({"val": {"path": data, "limit": 8}}),
        "--data.init_args.batch_size", "2", "--data.init_args.max_length", "256",
        "--trainer.max_steps", "2", "--trainer.limit_val_batches", "2", "--trainer.val_check_interval", "2",
        "--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--export.enabled", "false",
    ], cwd=tmp_path, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "harmless-base-test.jsonl.gz): 64 rows ->" in result.stdout + result.stderr
    assert list((tmp_path / "logs" / "dpo_hh_rlhf").glob("version_0/events.out.tfevents.*"))


# -- it learns -------------------------------------------------------------------------------------------


def test_short_dpo_run_lifts_heldout_reward_accuracy(tmp_path):
    """From a random init, DPO alone needs ~500 steps to pass 0.85 on held-out pairs; the NLL term on the
    chosen answer (α = 0.5, RPO-style) gets a tiny model to ~0.75 in 180 steps. The reference is a cache
    (computed by the hooks: val before training, train at fit start), which also saves a forward per step."""
    import lightning as L

    from lit_align.modeling.models import ModelSpec
    from lit_align.objectives import OptimSpec
    from lit_align.objectives.reference import ReferenceSpec

    L.seed_everything(0)
    obj = DPO(policy=ModelSpec(name="builtin:tiny"), optim=OptimSpec(lr=5e-3, schedule="constant"), beta=0.1,
              nll_weight=0.5, reference=ReferenceSpec(mode="cache", cache_dir=str(tmp_path)))
    dm = AlignDataModule(train="builtin:pairs", val={"val": {"path": "builtin:pairs", "split": "val", "limit": 200}},
                         batch_size=32, eval_batch_size=100, max_length=64)
    dm.connect(obj.tokenizer, obj.layout)

    def trainer(**kwargs):
        return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, inference_mode=False, **kwargs)

    before = trainer().validate(obj, datamodule=dm, verbose=False)[0]
    trainer(max_steps=180, limit_val_batches=0).fit(obj, datamodule=dm)
    after = trainer().validate(obj, datamodule=dm, verbose=False)[0]
    print(f"\nheld-out val/rewards/accuracy: before {before['val/rewards/accuracy']:.3f} "
          f"after {after['val/rewards/accuracy']:.3f}; val/logps/accuracy before {before['val/logps/accuracy']:.3f} "
          f"after {after['val/logps/accuracy']:.3f}")
    assert before["val/rewards/accuracy"] == 0.0  # policy = reference: every margin is exactly 0
    assert after["val/rewards/accuracy"] >= 0.7   # chance is 0.5; 200 held-out pairs: 0.7 is 5.6 sd above it
    assert after["val/rewards/margins"] > 0
    assert sorted(p.name.split("-")[0] for p in tmp_path.iterdir()) == ["train", "val"]
