"""AdamW's implementations (OptimSpec.implementation, objectives/base.py): foreach, the default, trains bit for bit
like torch's per-parameter for_loop; fused rounds differently but stays within float rounding of it."""

import pytest
import torch
from test_logprobs import _perturb

from lit_align.data import AlignDataModule
from lit_align.errors import LitAlignError
from lit_align.modeling.models import ModelSpec
from lit_align.objectives import SFT, OptimSpec


class _Trainer:  # what configure_optimizers reads of a trainer
    estimated_stepping_batches = 10


def _train(implementation: str, steps: int = 4) -> list[torch.Tensor]:
    obj = SFT(policy=ModelSpec(name="builtin:tiny"),
              optim=OptimSpec(lr=1e-2, weight_decay=0.1, warmup_steps=2, implementation=implementation))
    obj.configure_model()
    _perturb(obj.model)
    obj._trainer = _Trainer()
    optimizer = obj.configure_optimizers()["optimizer"]
    dm = AlignDataModule(train={"path": "builtin:sft", "limit": 4 * steps}, batch_size=4, max_length=64, shuffle=False)
    dm.connect(obj.tokenizer, obj.layout)
    dm.setup("fit")
    for batch in dm.train_dataloader():
        sums = obj.step(batch)
        optimizer.zero_grad()
        (sums["loss"][0] / sums["loss"][1]).backward()
        optimizer.step()
    return [p.detach().clone() for p in obj.model.parameters()]


def test_foreach_equals_for_loop_bit_for_bit_and_fused_within_rounding():
    for_loop, foreach, fused = (_train(i) for i in ("for_loop", "foreach", "fused"))
    assert all(torch.equal(a, b) for a, b in zip(for_loop, foreach))
    moved = max((a - b).abs().max().item() for a, b in zip(for_loop, fused))
    print(f"\nfused vs for_loop after 4 steps: max |Δ parameter| {moved:.2e}")
    assert moved < 1e-5


def test_unknown_implementation_is_refused():
    with pytest.raises(LitAlignError, match="optim.implementation must be one of foreach, fused, for_loop"):
        SFT(optim=OptimSpec(implementation="apex"))
