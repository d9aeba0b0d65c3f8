"""Ranked lists in the data layer (records.py `ranked` format and kind): {prompt, completions, scores} records
become k continuations best first; other kinds read them as their best (SFT) or best-and-worst (pair);
pairs are rankings of two; ties are skipped and counted; one k per split; the padded collate stacks the k
continuations continuation-major."""

import json

import pytest

from lit_align.data import AlignDataModule
from lit_align.data.records import detect_format, to_examples
from lit_align.errors import DataError, LitAlignError
from lit_align.layouts import LAYOUTS

RANKED = {"prompt": "Name a sweet food.", "completions": ["Kale.", "Honey.", "Bread."], "scores": [0.1, 0.9, 0.5]}


def _jsonl(tmp_path, rows):
    path = tmp_path / "ranked.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_a_ranked_record_is_its_completions_best_first():
    assert detect_format(RANKED, "x") == "ranked"
    assert detect_format({k: v for k, v in RANKED.items() if k != "scores"}, "x") == "group"
    [ex] = to_examples(RANKED, "f:1", "ranked")
    assert ex.continuations == ["Honey.", "Bread.", "Kale."]
    [best] = to_examples(RANKED, "f:1", "sft")
    assert best.continuations == ["Honey."]
    [pair] = to_examples(RANKED, "f:1", "pair")
    assert pair.continuations == ["Honey.", "Kale."]   # the best and the worst
    [two] = to_examples({"prompt": "2+2?", "chosen": "4.", "rejected": "5."}, "f:1", "ranked")
    assert two.continuations == ["4.", "5."]


@pytest.mark.parametrize("row, field, words", [
    ({**RANKED, "scores": [0.1, 0.9]}, "scores", "3 numbers"),
    ({**RANKED, "scores": [0.1, "high", 0.5]}, "scores", "score 1"),
    ({**RANKED, "scores": [0.1, float("nan"), 0.5]}, "scores", "score 1"),
    ({**RANKED, "completions": ["Kale."], "scores": [1.0]}, "completions", "at least 2"),
    ({**RANKED, "completions": ["Kale.", "", "Bread."]}, "completions", "completion 1"),
    ({"prompt": "p", "completion": "c"}, "scores", "needs completions with scores"),
])
def test_bad_ranked_records_name_the_field(row, field, words):
    with pytest.raises(DataError) as info:
        to_examples(row, "data.jsonl:3", "ranked")
    assert info.value.field == field and words in str(info.value) and "data.jsonl:3" in str(info.value)


def test_ties_are_skipped_and_counted_and_k_is_one_per_split(tmp_path, tokenizer):
    tie = {**RANKED, "scores": [0.5, 0.9, 0.5]}
    dm = AlignDataModule(train=_jsonl(tmp_path, [RANKED, tie, RANKED, RANKED, RANKED]), batch_size=2)
    dm.connect(tokenizer, LAYOUTS["ranked"])
    with pytest.warns(UserWarning, match="ranked.jsonl:2: two completions tie"):
        dm.setup("fit")
    assert dm.summaries["train"].kept == 4 and dm.summaries["train"].skipped == {"ranking ties": 1}
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 3 * 2 and batch["num_continuations"] == 3  # rows: [best; 2nd; worst] x B
    texts = [tokenizer.decode(row[mask.bool()]) for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
    assert "Honey." in texts[0] and "Bread." in texts[2] and "Kale." in texts[4]

    four = {**RANKED, "completions": [*RANKED["completions"], "Cake."], "scores": [*RANKED["scores"], 1.0]}
    dm = AlignDataModule(train=_jsonl(tmp_path, [RANKED, four]), batch_size=2)
    dm.connect(tokenizer, LAYOUTS["ranked"])
    with pytest.raises(LitAlignError, match=r"ranked.jsonl:2: field 'completions': 4 ranked completions, but"):
        dm.setup("fit")


# -- the listwise losses (losses/ranking.py), against hand-computed numbers --------------------------------------------


def test_listwise_losses_by_hand():
    import math

    import torch

    from lit_align.losses import all_pairs_dpo_loss, dpo_sigmoid_loss, plackett_luce_dpo_loss

    policy = torch.tensor([[-1.0, -2.0, -4.0]])
    ref = torch.tensor([[-2.0, -2.0, -2.0]])       # beta 1: rewards r = [1, 0, -2]
    e = math.exp
    pl = -math.log(e(1) / (e(1) + e(0) + e(-2))) - math.log(e(0) / (e(0) + e(-2)))
    assert abs(plackett_luce_dpo_loss(policy, ref, beta=1.0).item() - pl) < 1e-6            # 0.4076 + 0.1269
    softplus = lambda x: math.log1p(e(-x))  # noqa: E731  (-log σ(x))
    pairs = (softplus(1 - 0) + softplus(1 + 2) + softplus(0 + 2)) / 3
    assert abs(all_pairs_dpo_loss(policy, ref, beta=1.0).item() - pairs) < 1e-6
    # invariants: k = 2 is DPO; policy = reference gives log k! and log 2; the best-first order matters
    two_p, two_r = torch.tensor([[-1.0, -3.0], [-2.0, -0.5]]), torch.tensor([[-2.0, -2.0], [-1.0, -1.0]])
    dpo = dpo_sigmoid_loss(two_p[:, 0], two_p[:, 1], two_r[:, 0], two_r[:, 1], beta=0.5).losses
    torch.testing.assert_close(plackett_luce_dpo_loss(two_p, two_r, beta=0.5), dpo)
    torch.testing.assert_close(all_pairs_dpo_loss(two_p, two_r, beta=0.5), dpo)
    same = torch.randn(4, 5)
    torch.testing.assert_close(plackett_luce_dpo_loss(same, same), torch.full((4,), math.log(120.0)))
    torch.testing.assert_close(all_pairs_dpo_loss(same, same), torch.full((4,), math.log(2.0)))
    assert plackett_luce_dpo_loss(policy.flip(-1), ref) > plackett_luce_dpo_loss(policy, ref)


# -- the objective (objectives/listwise_dpo.py) ------------------------------------------------------------------


def _ranked_data(obj, task="builtin:ranked", n=16, batch_size=4):
    dm = AlignDataModule(train={"path": task, "limit": n}, val={"val": {"path": task, "split": "val", "limit": n}},
                         batch_size=batch_size, max_length=96)
    dm.connect(obj.tokenizer, obj.layout)
    dm.setup("fit")
    return dm


def _perturbed(obj, seed=0):
    """Move the policy off the reference (a copy of the start) so that the losses are not constants."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in obj.model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return obj


def test_listwise_dpo_on_pairs_is_dpo_and_on_rankings_is_its_loss():
    import torch

    from lit_align.losses import plackett_luce_dpo_loss
    from lit_align.objectives import DPO, ListwiseDPO

    for loss in ("plackett_luce", "all_pairs"):   # k = 2: both equal DPO (loss, rewards, logps metrics)
        listwise, dpo = ListwiseDPO(beta=0.5, loss=loss, shared_context=False), DPO(beta=0.5)
        for obj in (listwise, dpo):
            obj.configure_model()
            _perturbed(obj)
        batch = next(iter(_ranked_data(listwise, "builtin:pairs").train_dataloader()))
        a, b = listwise.step(batch), dpo.step(batch)
        for name in b:
            torch.testing.assert_close(a[name][0] / a[name][1], b[name][0] / b[name][1], msg=name)
    listwise = ListwiseDPO(beta=0.5)
    listwise.configure_model()
    _perturbed(listwise)
    batch = next(iter(_ranked_data(listwise).train_dataloader()))
    assert batch["num_continuations"] == 3
    sums = listwise.step(batch)
    policy = listwise.policy_logps(batch).logps.detach()
    ref = listwise.reference(batch, listwise.model).logps
    torch.testing.assert_close(sums["loss"][0] / sums["loss"][1], plackett_luce_dpo_loss(policy, ref, 0.5).mean())
    assert 0.0 <= (sums["rewards/ranking_accuracy"][0] / sums["rewards/ranking_accuracy"][1]).item() <= 1.0
    with pytest.raises(LitAlignError, match="loss must be one of plackett_luce, all_pairs"):
        ListwiseDPO(loss="sigmoid")


def test_listwise_dpo_trains_from_the_cli_with_a_cached_reference(tmp_path, monkeypatch):
    from conftest import REPO
    from test_resume import run_in_process, scalars

    run_in_process(["fit", "--config", str(REPO / "configs" / "listwise_dpo.yaml"), "--data.init_args.train.limit",
                    "64", "--data.init_args.val.val.limit", "16", "--data.init_args.batch_size", "8",
                    "--model.init_args.reference.mode", "cache", "--trainer.max_steps", "4",
                    "--trainer.val_check_interval", "2", "--trainer.log_every_n_steps", "1",
                    "--export.enabled", "false"], tmp_path, monkeypatch)
    run = tmp_path / "logs" / "listwise_dpo" / "version_0"
    assert sorted(scalars(run, "train/loss")) == [0, 1, 2, 3]
    assert len(scalars(run, "val/rewards/ranking_accuracy")) == 2


def test_a_checkpoint_from_when_listwise_dpo_subclassed_dpo_resumes():
    """ListwiseDPO was a DPO until issue 23: its checkpoints hold DPO's label_smoothing and length_normalize, which it
    could not set (`removed_settings`); they resume, and another value of them would be refused."""
    from lit_align.objectives import ListwiseDPO
    from lit_align.resume import changed_settings

    now = {"_class_path": "lit_align.objectives.ListwiseDPO", "policy": None, "optim": None, "packed": False,
           "pair_weights": False, "beta": 0.1, "loss": "plackett_luce", "nll_weight": 0.5, "reference": None,
           "shared_context": True}
    saved = {**now, "label_smoothing": 0.0, "length_normalize": None}              # as written before issue 23
    rules = ListwiseDPO.compute_only_settings, ListwiseDPO.added_settings, ListwiseDPO.removed_settings
    assert changed_settings(saved, now, *rules) == ([], [])
    assert changed_settings({**saved, "label_smoothing": 0.1}, now, *rules)[1]
    assert set(ListwiseDPO(nll_weight=0.5).hparams) == set(now) - {"_class_path"}


def test_the_reward_model_reads_ranked_lists():
    import torch

    from lit_align.losses import bradley_terry_loss
    from lit_align.objectives import RewardModel
    from lit_align.objectives.reward_model import sequence_rewards

    rm = RewardModel()
    rm.configure_model()
    batch = next(iter(_ranked_data(rm).train_dataloader()))
    assert batch["num_continuations"] == 3
    sums = rm.step(batch)
    rewards = sequence_rewards(rm.model, batch).detach().view(3, -1).T               # (B, 3) best first
    torch.testing.assert_close(sums["loss"][0] / sums["loss"][1], bradley_terry_loss(rewards).mean())


def test_listwise_dpo_runs_each_prompt_once_with_the_same_loss_and_gradients():
    """shared_context (the default): each prompt once, its k completions on its key/value cache, equals the k
    rows of prompt + completion (shared_context: false), loss, metrics and gradients."""
    import torch

    from lit_align.objectives import ListwiseDPO

    objs = [ListwiseDPO(beta=0.5, shared_context=s, nll_weight=0.3) for s in (True, False)]
    out = []
    for obj in objs:
        obj.configure_model()
        _perturbed(obj)
        batch = next(iter(_ranked_data(obj).train_dataloader()))
        assert ("context_ids" in batch) == obj.shared_context
        sums = obj.step(batch)
        (sums["loss"][0] / sums["loss"][1]).backward()
        out.append((sums, {n: p.grad.clone() for n, p in obj.model.named_parameters()}))
    (a, ga), (b, gb) = out
    for name in b:
        torch.testing.assert_close(a[name][0] / a[name][1], b[name][0] / b[name][1], atol=1e-5, rtol=1e-5, msg=name)
    for name in gb:
        torch.testing.assert_close(ga[name], gb[name], atol=1e-5, rtol=1e-4, msg=name)
