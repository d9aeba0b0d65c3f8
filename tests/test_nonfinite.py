"""Non-finite loss or gradients: detected once per optimizer step (on the all-reduced numbers); per config the
step is skipped (weights and optimizer state untouched) and counted, or the run stops with a clear message;
a checkpoint holding NaN weights is never written. In-process single-device runs on builtin:tiny."""

import math

import pytest
import torch
from lightning.pytorch import Callback, Trainer

from lit_align.callbacks import NonFiniteGuard, RunCheckpoint
from lit_align.data import AlignDataModule
from lit_align.errors import LitAlignError
from lit_align.modeling.models import ModelSpec
from lit_align.objectives import SFT, OptimSpec


class NaNLossAt(SFT):
    """SFT whose loss is NaN at the given optimizer steps (a bad batch, an overflow)."""

    def __init__(self, nan_steps=(), inf_grad_steps=(), **kwargs):
        super().__init__(**kwargs)
        self.nan_steps, self.inf_grad_steps = set(nan_steps), set(inf_grad_steps)

    def step(self, batch):
        sums = super().step(batch)
        if self.training and self.trainer.global_step in self.nan_steps:
            loss, n = sums["loss"]
            sums["loss"] = (loss * math.nan, n)
        if self.training and self.trainer.global_step in self.inf_grad_steps:  # finite loss, inf gradient
            loss, n = sums["loss"]
            w = self.model.get_input_embeddings().weight
            sums["loss"] = (loss + _inf_grad(w), n)
        return sums


def _inf_grad(w):
    """0 in the forward pass, an inf gradient into `w` in the backward pass."""

    class InfGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.new_zeros(())

        @staticmethod
        def backward(ctx, g):
            return torch.full_like(w, math.inf)

    return InfGrad.apply(w)


class Snapshots(Callback):
    """The trainable weights after every optimizer step, keyed by global_step."""

    def __init__(self):
        self.weights = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights[trainer.global_step] = [p.detach().clone() for p in pl_module.parameters() if p.requires_grad]


class CorruptWeightsAt(Callback):
    """Writes NaN into a weight after optimizer step `step` (before that step's checkpoint)."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.model.get_input_embeddings().weight[0, 0] = math.nan


def fit(tmp_path, *callbacks, max_steps=5, **objective):
    model = NaNLossAt(policy=ModelSpec(name="builtin:tiny"), optim=OptimSpec(lr=1e-2), **objective)
    data = AlignDataModule(train={"path": "builtin:sft", "limit": 32}, batch_size=4, max_length=64)
    data.connect(model.tokenizer, model.layout)
    ckpt = RunCheckpoint(dirpath=str(tmp_path / "checkpoints"), every_n_train_steps=1)
    trainer = Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[*callbacks, ckpt])
    trainer.fit(model, datamodule=data)
    return trainer, model, tmp_path / "checkpoints" / "last.ckpt"


def _finite(ckpt) -> bool:
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_skip_leaves_weights_and_optimizer_untouched_and_counts(tmp_path):
    guard, snaps = NonFiniteGuard(action="skip"), Snapshots()
    trainer, model, ckpt = fit(tmp_path, guard, snaps, nan_steps=[2], inf_grad_steps=[3])
    assert trainer.global_step == 5 and guard.skipped == 2 and guard.steps == [2, 3]
    for before, after in zip(snaps.weights[2], snaps.weights[4]):  # steps 2 and 3 changed nothing
        assert torch.equal(before, after)
    assert not all(torch.equal(a, b) for a, b in zip(snaps.weights[4], snaps.weights[5]))  # step 4 trained
    adam_steps = {int(s["step"]) for s in trainer.optimizers[0].state.values()}
    assert adam_steps == {3}  # 5 optimizer steps, 2 skipped: AdamW's moments and step count untouched
    saved = torch.load(ckpt, weights_only=False)
    assert saved["global_step"] == 5 and _finite(ckpt)
    assert saved["callbacks"]["NonFiniteGuard"]["skipped"] == 2  # the count survives a resume


def test_stop_ends_the_run_with_a_clear_message(tmp_path):
    with pytest.raises(LitAlignError, match=r"non-finite loss at optimizer step 2 .*nonfinite.action: stop"):
        fit(tmp_path, NonFiniteGuard(action="stop"), nan_steps=[2])
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 2 and _finite(tmp_path / "checkpoints" / "last.ckpt")  # nothing after it


def test_too_many_in_a_row_stops(tmp_path):
    with pytest.raises(LitAlignError, match=r"3 optimizer steps in a row .*diverged"):
        fit(tmp_path, NonFiniteGuard(action="skip", max_consecutive=2), nan_steps=[1, 2, 3])


def test_a_run_that_skipped_more_than_half_its_steps_fails_at_its_end(tmp_path):
    """Every step skipped, never `max_consecutive` in a row: the run used to end as a success having trained
    nothing. It now fails at its end, before the final model is exported."""
    from lit_align.callbacks import ExportHF

    export = ExportHF(dirpath=str(tmp_path / "hf_model"))
    with pytest.raises(LitAlignError, match=r"3 of the run's 5 optimizer steps were skipped as non-finite \(more "
                                            r"than nonfinite.max_skipped_share 0.5\).*not exported"):
        fit(tmp_path, NonFiniteGuard(max_consecutive=2), export, nan_steps=[0, 2, 4])
    assert not (tmp_path / "hf_model").exists()
    # at most the share: the run ends normally (and 1 lets any share pass)
    trainer, _, _ = fit(tmp_path / "half", NonFiniteGuard(max_consecutive=2, max_skipped_share=0.4),
                        nan_steps=[0, 2])
    assert trainer.global_step == 5
    fit(tmp_path / "all", NonFiniteGuard(max_skipped_share=1.0), nan_steps=[0, 1, 2, 3, 4])
    with pytest.raises(LitAlignError, match="max_skipped_share must be in"):
        NonFiniteGuard(max_skipped_share=1.5)


def test_nan_weights_are_never_checkpointed(tmp_path):
    with pytest.raises(LitAlignError, match=r"weights hold NaN or inf at step 3 .*refusing to write"):
        fit(tmp_path, CorruptWeightsAt(3))
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=False)["global_step"] == 2 and _finite(ckpt)
    assert not list((tmp_path / "checkpoints").glob(".*partial"))


def test_bad_action_is_refused():
    with pytest.raises(LitAlignError, match="skip or stop"):
        NonFiniteGuard(action="ignore")
