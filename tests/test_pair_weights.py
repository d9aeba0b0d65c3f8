"""Per-pair weights (`pair_weights: true`, objectives/pairs.py): the loss of a step is Σ w·ℓ / Σ w over its pairs,
hand-computed; w ≡ 1 is the unweighted loss bit for bit; weight 2 counts as the pair twice (loss and gradients);
exact under gradient accumulation with unequal weights; prefix-DPO too; a weight of 0 names file, line, field."""

import json

import lightning.pytorch as pl
import pytest
import torch
from conftest import perturb

from lit_align.data import AlignDataModule
from lit_align.data.synthetic import builtin_records
from lit_align.errors import DataError
from lit_align.modeling.logprobs import sequence_logps
from lit_align.losses import preference_loss, weighted_pair_sum
from lit_align.modeling.models import ModelSpec
from lit_align.objectives import DPO, OptimSpec, PrefixDPO, SimPO

WEIGHTS = [0.5, 3.0, 1.0, 2.0, 0.25, 1.5, 4.0, 1.0]   # unequal, and the two halves sum to 6.5 and 6.75


def _file(tmp_path, records, name="pairs.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _weighted(task="pairs", weights=WEIGHTS):
    return [{**r, "weight": w} for r, w in zip(builtin_records(task, n=len(weights)), weights)]


def _batch(obj, path, n):
    dm = AlignDataModule(train=path, batch_size=n, max_length=96, shuffle=False)
    dm.connect(obj.tokenizer, obj.layout)
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def _perturbed(cls, **kwargs):
    """An objective whose policy differs from its starting weights (and from a reference copy of them)."""
    obj = cls(**kwargs)
    obj.configure_model()
    perturb(obj.model)
    return obj


def test_weighted_pair_sum_by_hand():
    # losses 1, 2, 4 with weights 0.5, 1, 2.5: (0.5 + 2 + 10) / 4 = 3.125 (unweighted: 7/3)
    total, weight = weighted_pair_sum(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0.5, 1.0, 2.5]))
    assert (total.item(), weight.item()) == (12.5, 4.0)


def test_dpo_step_is_the_weighted_mean_and_metrics_stay_unweighted(tmp_path):
    obj = _perturbed(DPO, beta=0.3, pair_weights=True)
    batch = _batch(obj, _file(tmp_path, _weighted()[:4]), 4)
    assert batch["weight"].tolist() == WEIGHTS[:4]
    sums = obj.step(batch)
    pol, ref = sequence_logps(obj.model, batch), obj.reference(batch, obj.model)
    per_pair = preference_loss("sigmoid", pol.logps, ref.logps, pol.tokens, beta=0.3)
    w = torch.tensor(WEIGHTS[:4])
    assert sums["loss"][1].item() == 6.5
    assert (sums["loss"][0] / sums["loss"][1]).item() == pytest.approx(
        ((w * per_pair.losses).sum() / w.sum()).item(), abs=1e-6)
    assert (sums["rewards/chosen"][0] / sums["rewards/chosen"][1]).item() == pytest.approx(
        per_pair.chosen_rewards.mean().item(), abs=1e-6)            # unweighted
    assert sums["logps/chosen"][1] == 4


def test_weights_of_one_equal_the_unweighted_loss_bit_for_bit(tmp_path):
    path = _file(tmp_path, builtin_records("pairs", n=4))           # no `weight`: 1 each
    plain = _perturbed(DPO, beta=0.3, nll_weight=0.2)
    weighted = _perturbed(DPO, beta=0.3, nll_weight=0.2, pair_weights=True)
    batch = _batch(plain, path, 4)
    a, b = plain.step(batch), weighted.step(batch)
    assert torch.equal(a["loss"][0], b["loss"][0]) and b["loss"][1].item() == a["loss"][1] == 4
    assert all(torch.equal(a[k][0], b[k][0]) for k in a)


@pytest.mark.parametrize("cls", [DPO, SimPO])
def test_weight_two_equals_the_pair_twice(tmp_path, cls):
    records = builtin_records("pairs", n=3)
    doubled = _file(tmp_path, [{**records[0], "weight": 2}, *records[1:]], "doubled.jsonl")
    twice = _file(tmp_path, [records[0], *records], "twice.jsonl")
    obj = _perturbed(cls, pair_weights=True)
    losses, grads = [], []
    for path, n in ((doubled, 3), (twice, 4)):
        obj.model.zero_grad()
        total, weight = obj.step(_batch(obj, path, n))["loss"]
        (total / weight).backward()
        losses.append((total / weight).item())
        grads.append({name: p.grad.clone() for name, p in obj.model.named_parameters()})
    # equal in exact arithmetic; in fp32 only the order of the sums differs
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert max((grads[0][n] - grads[1][n]).abs().max().item() for n in grads[0]) < 1e-6


class GradRecorder(DPO):
    def on_before_optimizer_step(self, optimizer):
        super().on_before_optimizer_step(optimizer)
        self.grads = {n: p.grad.detach().clone() for n, p in self.named_parameters() if p.grad is not None}


def _first_step_grads(path, batch_size, accumulate):
    torch.manual_seed(0)
    obj = GradRecorder(policy=ModelSpec("builtin:tiny"), optim=OptimSpec(lr=1e-3), beta=0.3, nll_weight=0.5,
                       pair_weights=True)
    dm = AlignDataModule(train=path, batch_size=batch_size, max_length=96, shuffle=False)
    dm.connect(obj.tokenizer, obj.layout)
    trainer = pl.Trainer(max_steps=1, accumulate_grad_batches=accumulate, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(obj, datamodule=dm)
    return obj.grads


def test_exact_under_accumulation_with_unequal_weights(tmp_path):
    path = _file(tmp_path, _weighted()[:4])      # weights 0.5, 3 | 1, 2: micro-batch sums 3.5 and 3
    four, two_by_two = _first_step_grads(path, 4, 1), _first_step_grads(path, 2, 2)
    assert four.keys() == two_by_two.keys() and four
    for name, g in four.items():
        assert torch.allclose(g, two_by_two[name], atol=1e-6, rtol=1e-4), name


def test_prefix_dpo_weights_its_pairs(tmp_path):
    obj = _perturbed(PrefixDPO, beta=0.3, pair_weights=True)
    batch = _batch(obj, _file(tmp_path, _weighted("steers")[:4]), 4)
    sums = obj.step(batch)
    plain = _perturbed(PrefixDPO, beta=0.3)
    unweighted = plain.step(batch)
    assert torch.equal(unweighted["rewards/margins"][0], sums["rewards/margins"][0])   # the same pairs, same model
    pol = obj.layout.logps(obj.model, batch)
    ref = obj.reference(batch, obj.model)
    per_pair = preference_loss("sigmoid", pol.logps, ref.logps, pol.tokens, beta=0.3).losses
    w = torch.tensor(WEIGHTS[:4])
    assert (sums["loss"][0] / sums["loss"][1]).item() == pytest.approx(((w * per_pair).sum() / w.sum()).item(),
                                                                       abs=1e-6)
    assert sums["prefix_fraction"][0] == unweighted["prefix_fraction"][0]


def test_a_weight_of_zero_names_file_line_and_field(tmp_path):
    records = _weighted()[:4]
    records[2]["weight"] = 0
    path = _file(tmp_path, records)
    obj = DPO(pair_weights=True)
    dm = AlignDataModule(train=path, batch_size=2, max_length=96)
    dm.connect(obj.tokenizer, obj.layout)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(DataError, match="pair_weights: true needs a weight > 0") as e:
        trainer.fit(obj, datamodule=dm)
    assert e.value.where == f"{path}:3" and e.value.field == "weight"


def test_a_checkpoint_from_before_pair_weights_existed_resumes_unweighted_only():
    from lit_align.objectives import DPO
    from lit_align.resume import changed_settings

    saved = {"_class_path": "lit_align.objectives.DPO", "beta": 0.1, "packed": False}   # no `pair_weights` key
    rules = DPO.compute_only_settings, DPO.added_settings                          # DPO declares its resume rules
    assert changed_settings(saved, {**saved, "pair_weights": False}, *rules) == ([], [])
    assert changed_settings(saved, {**saved, "pair_weights": True}, *rules)[1]   # refused, as any changed setting
