"""SFT math: the loss against hand-computed numbers, the schedule, and exact normalisation under
gradient accumulation (batch 8 == batch 4 x accumulation 2)."""

import math

import lightning.pytorch as pl
import pytest
import torch

from lit_align.data import AlignDataModule
from lit_align.modeling.logprobs import gather_logps
from lit_align.losses import nll
from lit_align.modeling.models import ModelSpec
from lit_align.objectives import SFT, OptimSpec
from lit_align.objectives.base import lr_lambda


def test_nll_matches_hand_computation():
    # vocab 3, one row of 4 tokens; targets at positions 2 and 3 (position 0-1 are the prompt)
    logits = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [0.5, 0.5, 2.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[-100, -100, 2, 0]])
    out = gather_logps(logits, labels, with_accuracy=True)
    # label at t=2 is predicted by logits[1] = [1,2,3]; label at t=3 by logits[2] = [.5,.5,2]
    lp2 = 3.0 - math.log(math.exp(1) + math.exp(2) + math.exp(3))
    lp3 = 0.5 - math.log(2 * math.exp(0.5) + math.exp(2))
    assert out.mask.tolist() == [[False, False, True, True]]
    assert out.logps[0, 2].item() == pytest.approx(lp2, abs=1e-6)
    assert out.logps[0, 3].item() == pytest.approx(lp3, abs=1e-6)
    assert out.correct.tolist() == [[False, False, True, False]]
    loss_sum, tokens = nll(out.logps, out.mask)
    assert loss_sum.item() == pytest.approx(-(lp2 + lp3), abs=1e-6)
    assert tokens.item() == 2


def test_logps_are_fp32_from_bf16_logits():
    logits = torch.randn(2, 5, 7).bfloat16()
    labels = torch.tensor([[-100, 1, 2, 3, -100], [-100, -100, 4, 5, 6]])
    out = gather_logps(logits, labels)
    assert out.logps.dtype == torch.float32
    ref = torch.log_softmax(logits.float(), -1)[:, :-1].gather(-1, labels[:, 1:].clamp(min=0)[..., None])[..., 0]
    assert torch.allclose(out.logps[:, 1:][labels[:, 1:] != -100], ref[labels[:, 1:] != -100], atol=1e-6)


def test_lr_schedule_warmup_then_cosine_to_floor():
    f = lambda s: lr_lambda(s, total=100, warmup=10, schedule="cosine", min_ratio=0.1)  # noqa: E731
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the decay
    assert f(100) == pytest.approx(0.1)
    assert lr_lambda(50, 100, 0, "linear", 0.0) == pytest.approx(0.5)
    assert lr_lambda(50, 100, 0, "constant", 0.0) == 1.0


class GradRecorder(SFT):
    """SFT that keeps the (normalised) gradients of each optimizer step."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.grads = []

    def on_before_optimizer_step(self, optimizer):
        super().on_before_optimizer_step(optimizer)
        self.grads.append({n: p.grad.detach().clone() for n, p in self.named_parameters() if p.grad is not None})


def _first_step_grads(batch_size: int, accumulate: int, tmp_path):
    torch.manual_seed(0)
    model = GradRecorder(policy=ModelSpec("builtin:tiny"), optim=OptimSpec(lr=1e-3))
    dm = AlignDataModule(train={"path": "builtin:sft", "limit": 64}, batch_size=batch_size, max_length=64)
    dm.connect(model.tokenizer, model.layout)
    trainer = pl.Trainer(max_steps=1, accumulate_grad_batches=accumulate, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    return model.grads[0], dm


def test_gradient_accumulation_gives_the_same_gradient(tmp_path):
    g8, dm = _first_step_grads(8, 1, tmp_path)
    g44, _ = _first_step_grads(4, 2, tmp_path)
    assert g8.keys() == g44.keys() and len(g8) > 0
    for name in g8:
        assert torch.allclose(g8[name], g44[name], atol=1e-6, rtol=1e-4), name
    # the test has teeth: the two micro-batches hold different numbers of target tokens, so averaging
    # per micro-batch (the common bug) would weight tokens differently from the 8-example step
    batch = next(iter(dm.train_dataloader()))
    tokens = (batch["labels"][:, 1:] != -100).sum(-1)
    assert tokens[:4].sum() != tokens[4:].sum()


def test_named_validation_sets_are_logged_separately(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    model = SFT(policy=ModelSpec("builtin:tiny"))
    dm = AlignDataModule(train={"path": "builtin:ab", "limit": 16},
                         val={"id": {"path": "builtin:ab", "split": "id", "limit": 8},
                              "ood": {"path": "builtin:ab", "split": "ood", "limit": 8}},
                         batch_size=4, max_length=96)
    dm.connect(model.tokenizer, model.layout)
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=TensorBoardLogger(tmp_path), enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, val_check_interval=2)
    trainer.fit(model, datamodule=dm)
    metrics = trainer.logged_metrics
    assert {"val_id/loss", "val_ood/loss", "val_id/token_accuracy", "val_ood/token_accuracy"} <= metrics.keys()
    assert metrics["val_id/loss"] != metrics["val_ood/loss"]
    # the logged value is the token-weighted mean over the whole set
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in dm.val_dataloader()[1]:
            s, c = model.step(batch)["loss"]
            total, count = total + s.item(), count + c.item()
    assert metrics["val_ood/loss"].item() == pytest.approx(total / count, rel=1e-5)


def test_in_process_resume_from_a_checkpoint(tmp_path):
    """trainer.fit(ckpt_path=...) in Python: Lightning loads weights-only, and the objective's config
    dataclasses (saved in its hyperparameters) must be allowed."""

    def fit(steps, ckpt=None):
        model = SFT(policy=ModelSpec("builtin:tiny"), optim=OptimSpec(lr=1e-3))
        dm = AlignDataModule(train={"path": "builtin:sft", "limit": 32}, batch_size=4, max_length=64)
        dm.connect(model.tokenizer, model.layout)
        trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=tmp_path)
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
        return trainer

    path = tmp_path / "two.ckpt"
    fit(2).save_checkpoint(path)
    assert fit(4, str(path)).global_step == 4
