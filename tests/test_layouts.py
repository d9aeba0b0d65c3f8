"""The batch layout (layouts.py) is one object, chosen by the objective from its options and handed to the
data module and the reference: they collate and score the same batches, and reference caches of different
layouts never mix."""

import pytest
import torch

from lit_align.data import AlignDataModule
from lit_align.layouts import LAYOUTS, layout_named
from lit_align.errors import LitAlignError
from lit_align.modeling.models import builtin_tokenizer
from lit_align.objectives import DPO, IWSFT, ORPO, SFT, ListwiseDPO, PrefixDPO, RewardModel, SimPO
from lit_align.objectives.reference import ReferenceSpec
from lit_align.weights import WeightSpec

# objective, its options -> the layout it must choose, the built-in task it trains on, continuations per example
CASES = [
    (SFT, {}, "sft", "builtin:sft", 1),
    (SFT, {"packed": True}, "packed_sft", "builtin:sft", 1),
    (IWSFT, {"packed": True, "weights": WeightSpec(source="reference")}, "packed_sft", "builtin:sft", 1),
    (DPO, {}, "pair", "builtin:pairs", 2),
    (DPO, {"packed": True}, "packed_pair", "builtin:pairs", 2),
    (SimPO, {"packed": True}, "packed_pair", "builtin:pairs", 2),
    (ORPO, {}, "pair", "builtin:pairs", 2),
    (PrefixDPO, {}, "prefix_pair", "builtin:steers", 2),
    (PrefixDPO, {"shared_context": False}, "prefix_pair_joined", "builtin:steers", 2),
    (ListwiseDPO, {}, "shared_ranked", "builtin:ranked", None),
    (ListwiseDPO, {"shared_context": False}, "ranked", "builtin:ranked", None),
    (RewardModel, {}, "ranked", "builtin:ranked", None),
]


@pytest.mark.parametrize("cls, options, name, task, k", CASES, ids=[f"{c[0].__name__}-{c[2]}" for c in CASES])
def test_the_objective_s_layout_reaches_the_data_module_and_the_reference(cls, options, name, task, k):
    torch.set_num_threads(1)
    obj = cls(**options)
    assert obj.layout is LAYOUTS[name]
    dm = AlignDataModule(train={"path": task, "limit": 6}, batch_size=3, max_length=96, shuffle=False)
    dm.connect(obj.tokenizer, obj.layout)
    dm.setup("fit")
    obj.configure_model()
    reference = getattr(obj, "reference", None)
    if reference is not None:
        assert reference.layout is obj.layout       # policy and reference read the batches one way
    obj.prepare(dm)                                 # a reference cache, importance weights
    batch = next(iter(dm.train_dataloader()))
    k = k or len(dm.splits["train"].examples[0].continuations)
    if obj.head == "lm":                            # the layout's log-probs read the layout's batches: (B, k)
        out = obj.layout.logps(obj.model, batch)
        assert out.logps.shape == out.tokens.shape == (3, k) and torch.isfinite(out.logps).all()
    sums = obj.step(batch)
    assert torch.isfinite(sums["loss"][0])


def test_a_layout_is_named_or_refused_with_the_names():
    dm = AlignDataModule(train={"path": "builtin:pairs", "limit": 4})
    dm.connect(builtin_tokenizer(), layout_named("packed_pair"))
    assert dm.layout is LAYOUTS["packed_pair"]
    with pytest.raises(LitAlignError, match="unknown batch layout 'pairs': one of sft, packed_sft, pair"):
        layout_named("pairs")
    with pytest.raises(LitAlignError, match=r"give the layout itself \(lit_align.layouts.LAYOUTS\['pair'\]"):
        dm.connect(builtin_tokenizer(), "pair")  # the data layer does not look layouts up by name


def test_reference_caches_of_two_layouts_are_two_files(tmp_path):
    """The shared and the joined context give the same log-probs up to rounding, but not bit for bit: a cache built
    for one is not read by the other (the layout is in the cache key)."""
    torch.set_num_threads(1)
    files = []
    for shared in (True, False):
        obj = PrefixDPO(shared_context=shared, reference=ReferenceSpec(mode="cache", cache_dir=str(tmp_path)))
        dm = AlignDataModule(train={"path": "builtin:steers", "limit": 4}, batch_size=2, max_length=96)
        dm.connect(obj.tokenizer, obj.layout)
        dm.setup("fit")
        obj.configure_model()
        obj.prepare(dm)
        files.append(obj.reference.files["train"])
    assert files[0] != files[1] and all(f.exists() for f in files)
