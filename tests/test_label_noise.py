"""Label noise (data/label_noise.py): a data source's `label_noise: {fraction, seed}` swaps chosen and rejected in
exactly round(fraction · n) of its pair records, chosen by the seed alone (not the batch size, shuffle or a restart),
never touching the evaluation sets; a non-pair source is refused in one sentence; an online objective's
`label_noise` turns its binary training rewards over; and DPO on fully flipped pairs learns the other answer."""

import types

import pytest
import torch

from lit_align.data.datamodule import AlignDataModule
from lit_align.data.label_noise import LabelNoise
from lit_align.errors import LitAlignError
from lit_align.layouts import layout_named

PAIRS = {"path": "builtin:pairs", "limit": 20}


def length_reward(prompts, completions, records):
    """A reward that is no yes/no answer: len(completion)."""
    return [float(len(c)) for c in completions]


def _datamodule(tokenizer, train, kind="pair", **kwargs) -> AlignDataModule:
    dm = AlignDataModule(train=train, **{"batch_size": 4, "max_length": 64, **kwargs})
    dm.connect(tokenizer, layout_named(kind))
    dm.setup("fit")
    return dm


def _by_row(dm, split="train") -> dict[int, list[list[int]]]:
    """{row number of the source: the example's continuations (token ids)}."""
    return {int(ex.where.rsplit(":", 1)[1]): ex.continuations for ex in dm.splits[split].examples}


def _flipped_rows(dm, clean) -> set[int]:
    noisy = _by_row(dm)
    assert noisy.keys() == clean.keys()
    for row, conts in noisy.items():   # each example is the clean one, or it with chosen and rejected swapped
        assert conts in (clean[row], clean[row][::-1]), row
    return {row for row, conts in noisy.items() if conts != clean[row]}


def test_exactly_round_fraction_n_pairs_are_swapped_chosen_by_the_seed_alone(tokenizer):
    clean = _by_row(_datamodule(tokenizer, PAIRS))
    noisy = _datamodule(tokenizer, {**PAIRS, "label_noise": {"fraction": 0.25, "seed": 0}})
    flipped = _flipped_rows(noisy, clean)
    assert len(flipped) == 5 == noisy.summaries["train"].flipped                 # round(0.25 · 20)
    assert flipped == set(LabelNoise(0.25, 0).flipped_rows(20))
    assert "20 rows -> 20 examples kept, 5 labels flipped (label_noise 0.25, seed 0)" in noisy.summaries["train"].line()
    # the same seed: the same pairs, whatever the batch size, shuffle seed or a restart (a fresh data module)
    again = _datamodule(tokenizer, {**PAIRS, "label_noise": {"fraction": 0.25, "seed": 0}}, batch_size=8, seed=5)
    assert _flipped_rows(again, clean) == flipped
    other = _flipped_rows(_datamodule(tokenizer, {**PAIRS, "label_noise": {"fraction": 0.25, "seed": 1}}), clean)
    assert len(other) == 5 and other != flipped
    # a larger fraction flips a superset; round() of 0.3 · 20 = 6, of 0.33 · 20 = 6.6 -> 7; 1.0 every pair
    assert flipped <= LabelNoise(0.5, 0).flipped_rows(20)
    assert [len(LabelNoise(f, 0).flipped_rows(20)) for f in (0.0, 0.3, 0.33, 1.0)] == [0, 6, 7, 20]


def test_the_flip_counts_records_after_skip_and_limit_and_sft_reads_the_rejected_answer(tokenizer):
    source = {"path": "builtin:pairs", "skip": 3, "limit": 10}
    clean = _by_row(_datamodule(tokenizer, source))
    noisy = _datamodule(tokenizer, {**source, "label_noise": {"fraction": 0.2, "seed": 7}})
    flipped = _flipped_rows(noisy, clean)
    assert len(flipped) == 2 and flipped == {3 + i for i in LabelNoise(0.2, 7).flipped_rows(10)}
    sft = _by_row(_datamodule(tokenizer, {**source, "label_noise": {"fraction": 0.2, "seed": 7}}, kind="sft"))
    assert {row: conts[0] for row, conts in sft.items()} == {row: clean[row][1 if row in flipped else 0]
                                                             for row in clean}


def test_contrast_pairs_swap_matching_and_not_matching_and_val_is_untouched(tokenizer):
    source = {"path": "builtin:ab", "limit": 8}
    val = {"id": {"path": "builtin:ab", "limit": 8}}       # the very same records, without label noise
    dm = _datamodule(tokenizer, {**source, "label_noise": {"fraction": 1.0, "seed": 0}}, val=val)
    train, held_out = _by_row(dm), _by_row(dm, "val_id")
    assert train.keys() == held_out.keys() and all(train[r] == held_out[r][::-1] for r in train)
    assert dm.summaries["val_id"].flipped == 0 and dm.summaries["val_id"].label_noise is None
    assert "labels flipped" not in dm.summaries["val_id"].line()


@pytest.mark.parametrize("train, kind, said", [
    ({"path": "builtin:sft", "limit": 4}, "sft", "but builtin:sft:0 is a record of format sft"),
    ({"path": "builtin:ranked", "limit": 4}, "pair", "but builtin:ranked:0 is a record of format ranked"),
    ({"path": "builtin:pairs", "limit": 4}, "prompt", "read as prompt records, which have none (an online objective "
                                                      "takes label_noise itself: its rewards are flipped)"),
])
def test_a_source_without_pair_labels_is_refused_in_one_sentence(tokenizer, train, kind, said):
    with pytest.raises(LitAlignError) as refused:
        _datamodule(tokenizer, {**train, "label_noise": {"fraction": 0.5}}, kind=kind)
    message = str(refused.value)
    assert message.startswith(f"train ({train['path']}): label_noise flips the chosen and rejected answers of "
                              "preference pairs") and said in message and "\n" not in message


@pytest.mark.parametrize("noise, said", [({"fraction": 1.5}, "label_noise.fraction must be a number in [0, 1]"),
                                         ({"fraction": 0.1, "seed": "x"}, "label_noise.seed must be an integer"),
                                         ({"share": 0.1}, "label_noise: expected {fraction: ")])
def test_bad_label_noise_is_said_with_its_source(noise, said):
    with pytest.raises(LitAlignError, match=r"^Data source 'd.jsonl': ") as refused:
        AlignDataModule(train={"path": "d.jsonl", "label_noise": noise})
    assert said in str(refused.value)


def test_a_resume_with_other_label_noise_is_refused_and_one_from_before_the_option_passes():
    from lit_align.resume import changed_run_settings

    def settings(train):
        return {"data": {"init_args": {"train": train}}}

    old = settings({"path": "d.jsonl", "limit": 8})                                 # written before label_noise
    noisy = settings({"path": "d.jsonl", "limit": 8, "label_noise": {"fraction": 0.2, "seed": 0}})
    assert changed_run_settings(old, settings({"path": "d.jsonl", "limit": 8, "label_noise": None}), False) == ([], [])
    _, refused = changed_run_settings(noisy, settings({"path": "d.jsonl", "limit": 8,
                                                       "label_noise": {"fraction": 0.2, "seed": 1}}), False)
    assert refused == ["data.init_args.train.label_noise.seed: 0 in the checkpoint, 1 now"]


# -- online RL: the labeller's binary rewards --------------------------------------------------------------------


def test_flipped_binary_rewards_turn_over_and_the_total_is_summed_again():
    from lit_align.eval.rewards import build_rewards

    rewards = build_rewards([{"name": "substring", "value": "a"}, {"name": "substring", "value": "b", "label": "b",
                                                                   "weight": 2.0}])
    scores = rewards(["p"] * 3, ["a", "ab", "x"], [{}] * 3)
    assert scores.total.tolist() == [1.0, 3.0, 0.0]
    flipped = rewards.flipped(scores, {"substring": torch.tensor([True, False, False]),
                                       "b": torch.tensor([False, True, True])})
    assert flipped.per_function["substring"].tolist() == [0.0, 1.0, 0.0]
    assert flipped.per_function["b"].tolist() == [0.0, 0.0, 1.0]
    assert flipped.total.tolist() == [0.0, 1.0, 2.0]
    lengths = build_rewards({"function": "test_label_noise:length_reward"})
    with pytest.raises(LitAlignError, match="label_noise flips binary rewards .0 or 1., but reward 'length_reward' "
                                            "gave 3.0"):
        lengths.flipped(lengths(["p"], ["abc"], [{}]), {"length_reward": torch.tensor([False])})


def test_an_online_objectives_rewards_flip_by_the_query_never_by_an_rng():
    from lit_align.eval.rewards import RewardScores
    from lit_align.modeling.models import ModelSpec
    from lit_align.objectives import GRPO

    def objective(noise):
        grpo = GRPO(policy=ModelSpec("builtin:tiny"), rewards=["ab_letter"], num_generations=2, label_noise=noise)
        grpo._trainer = types.SimpleNamespace(global_step=3)                         # what rollout reads of it
        return grpo

    batch = {"index": torch.tensor([4, 9])}                                         # two prompts' data indices
    scores = RewardScores({"ab_letter": torch.tensor([1.0, 0.0, 0.0, 1.0])}, torch.tensor([1.0, 0.0, 0.0, 1.0]))
    everything = objective({"fraction": 1.0, "seed": 0})
    assert everything.labeller_mistakes(batch, scores).total.tolist() == [0.0, 1.0, 1.0, 0.0]
    assert everything.labels_flipped == 4
    assert objective(None).labeller_mistakes(batch, scores) is scores
    half = objective({"fraction": 0.5, "seed": 0})
    once, twice = (half.labeller_mistakes(batch, scores).total.tolist() for _ in range(2))
    assert once == twice    # a pure function of (seed, step, prompt index, completion, label)
    expected = [1.0 - r if LabelNoise(0.5, 0).flips(f"3,{i},{j},ab_letter") else r
                for (i, j), r in zip([(4, 0), (4, 1), (9, 0), (9, 1)], [1.0, 0.0, 0.0, 1.0])]
    assert once == expected


# -- it learns what the labels say -------------------------------------------------------------------------------


def test_dpo_on_fully_flipped_pairs_learns_the_other_answer(tmp_path):
    """Every training label flipped (fraction 1): a few DPO steps push the implicit reward margins on the same pairs,
    read without noise, below zero (and with no noise, above it)."""
    import lightning as L

    from lit_align.modeling.models import ModelSpec
    from lit_align.objectives import DPO, OptimSpec

    def margins(noise) -> float:
        L.seed_everything(0)
        obj = DPO(policy=ModelSpec(name="builtin:tiny"), optim=OptimSpec(lr=5e-3, schedule="constant"), beta=0.1)
        dm = AlignDataModule(train={**PAIRS, "label_noise": noise}, val={"val": PAIRS}, batch_size=10, max_length=64)
        dm.connect(obj.tokenizer, obj.layout)

        def trainer(**kwargs):
            return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path, **kwargs)

        trainer(max_steps=6, limit_val_batches=0).fit(obj, datamodule=dm)
        return trainer().validate(obj, datamodule=dm, verbose=False)[0]["val/rewards/margins"]

    assert margins({"fraction": 1.0, "seed": 0}) < 0 < margins(None)
