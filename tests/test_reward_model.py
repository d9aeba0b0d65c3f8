"""Reward model: the Bradley-Terry loss by hand (k = 2 and k = 3) and its invariants, the reward read at the last
real token whatever the padding, the step's metrics, exact normalisation under accumulation, a short fit whose
exported AutoModelForSequenceClassification reloads with the same rewards (LoRA merged), and `lit_align score`."""

import json
import math

import pytest
import torch
from lightning.pytorch import Trainer
from transformers import AutoModelForSequenceClassification

from lit_align.callbacks import ExportHF, RunCheckpoint
from lit_align.cli import main
from lit_align.data import AlignDataModule
from lit_align.data.collate import collate
from lit_align.losses import bradley_terry_loss, ranked_margins
from lit_align.modeling.models import LoraSpec, ModelSpec, load_model, save_hf
from lit_align.objectives import OptimSpec, RewardModel
from lit_align.objectives.reward_model import sequence_rewards

QUIET = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)


# -- the loss, by hand --------------------------------------------------------------------------------------


def test_bradley_terry_by_hand_for_pairs():
    # -log σ(d) = log(1 + e^-d): d = 1 -> log(1 + 0.367879) = 0.313262; d = -2 -> log(1 + 7.389056) = 2.126928
    rewards = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    torch.testing.assert_close(bradley_terry_loss(rewards), torch.tensor([0.313262, 2.126928]), atol=1e-6, rtol=0)


def test_bradley_terry_by_hand_for_a_ranked_list_of_three():
    # r = (2, 1, -1), best first: pairs (0,1), (0,2), (1,2) have d = 1, 3, 2;
    # log(1 + e^-1) = 0.313262, log(1 + e^-3) = 0.048587, log(1 + e^-2) = 0.126928; mean 0.488777 / 3 = 0.162926.
    # Reversed, r = (-1, 1, 2): d = -2, -3, -1: (2.126928 + 3.048587 + 1.313262) / 3 = 2.162926
    rewards = torch.tensor([[2.0, 1.0, -1.0], [-1.0, 1.0, 2.0]])
    torch.testing.assert_close(ranked_margins(rewards), torch.tensor([[1.0, 3.0, 2.0], [-2.0, -3.0, -1.0]]))
    torch.testing.assert_close(bradley_terry_loss(rewards), torch.tensor([0.162926, 2.162926]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_bradley_terry_invariants(k):
    torch.manual_seed(k)
    r = torch.randn(4, k)
    assert bradley_terry_loss(torch.full((4, k), 0.7)).tolist() == pytest.approx([math.log(2)] * 4)
    torch.testing.assert_close(bradley_terry_loss(r + 3.0), bradley_terry_loss(r))  # only differences count
    # swapping the order: -log σ(-d) = -log σ(d) + d, so for a pair the loss rises by exactly the margin
    d = r[:, 0] - r[:, 1]
    torch.testing.assert_close(bradley_terry_loss(r[:, [1, 0]]), bradley_terry_loss(r[:, :2]) + d)
    with pytest.raises(ValueError, match="k >= 2"):
        bradley_terry_loss(r[:, :1])


# -- the reward on real batches ------------------------------------------------------------------------------


def _data(obj, n=8, batch_size=4, **kwargs):
    dm = AlignDataModule(train={"path": "builtin:pairs", "limit": n},
                         val={"val": {"path": "builtin:pairs", "split": "val", "limit": n}},
                         batch_size=batch_size, max_length=64, shuffle=False, **kwargs)
    dm.connect(obj.tokenizer, obj.layout)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def rm():
    obj = RewardModel()
    obj.configure_model()
    with torch.no_grad():  # a score head large enough that rewards differ visibly between rows
        obj.model.score.weight.mul_(50)
    return obj


def test_the_reward_is_the_score_at_the_last_real_token_whatever_the_padding(rm):
    dm = _data(rm)
    examples = [dm.splits["train"][i] for i in range(4)]
    batch = collate(examples, rm.tokenizer.pad_token_id)
    with torch.no_grad():
        rewards = sequence_rewards(rm.model, batch)                             # (8,)
        padded = sequence_rewards(rm.model, collate(examples, rm.tokenizer.pad_token_id, pad_to_multiple_of=48))
        for r in range(8):
            ids = batch["input_ids"][r][batch["attention_mask"][r].bool()]
            alone = sequence_rewards(rm.model, collate([examples[r % 4]], rm.tokenizer.pad_token_id))[r // 4]
            hidden = rm.model.model(ids[None]).last_hidden_state[0, -1]         # the last real token's state
            assert alone.item() == pytest.approx(rewards[r].item(), abs=1e-5)
            assert (rm.model.score.weight @ hidden).item() == pytest.approx(rewards[r].item(), abs=1e-5)
    torch.testing.assert_close(padded, rewards, atol=1e-5, rtol=0)
    assert rewards.std() > 0.1


def test_step_metrics_are_the_bradley_terry_loss_of_the_rewards(rm):
    batch = next(iter(_data(rm).train_dataloader()))
    sums = rm.step(batch)
    with torch.no_grad():
        r = sequence_rewards(rm.model, batch).view(2, 4).T                     # (B, 2): chosen, rejected
    d = r[:, 0] - r[:, 1]
    mean = {name: (s / c).item() for name, (s, c) in sums.items()}
    assert sums["loss"][1] == 4  # the count: pairs
    assert mean["loss"] == pytest.approx(torch.nn.functional.softplus(-d).mean().item(), abs=1e-5)
    assert mean["rewards/chosen"] == pytest.approx(r[:, 0].mean().item(), abs=1e-5)
    assert mean["rewards/rejected"] == pytest.approx(r[:, 1].mean().item(), abs=1e-5)
    assert mean["rewards/margins"] == pytest.approx(d.mean().item(), abs=1e-5)
    assert mean["rewards/accuracy"] == (d > 0).float().mean().item()
    # evaluation: the same metrics and no log-prob ones (a reward model has no LM head)
    assert set(rm.eval_sums(batch)) == {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
                                        "rewards/accuracy"}


def _first_step_grads(n: int, batch_size: int, accumulate: int, tmp_path) -> dict:
    """The gradients of the first optimizer step, as the optimizer gets them (after the base class's rescale)."""
    model, grads = RewardModel(optim=OptimSpec(lr=1e-3)), []
    rescale = model.on_before_optimizer_step

    def record(optimizer):
        rescale(optimizer)
        grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})

    model.on_before_optimizer_step = record
    dm = AlignDataModule(train={"path": "builtin:pairs", "limit": n}, batch_size=batch_size, max_length=64)
    dm.connect(model.tokenizer, model.layout)
    Trainer(max_steps=1, accumulate_grad_batches=accumulate, enable_checkpointing=False, default_root_dir=tmp_path,
            **QUIET).fit(model, datamodule=dm)
    return grads[0]


@pytest.mark.parametrize("n, micro_batch", [(4, 2), (6, 4)])
def test_accumulation_gives_the_gradient_of_the_mean_over_all_pairs(n, micro_batch, tmp_path):
    """batch n vs micro-batches of `micro_batch` x accumulation 2. With 6 = 4 + 2 the micro-batches differ in size,
    so a mean per micro-batch (the common bug) would weigh the last two pairs twice."""
    whole = _first_step_grads(n, n, 1, tmp_path)
    accumulated = _first_step_grads(n, micro_batch, 2, tmp_path)
    assert whole.keys() == accumulated.keys() and "model.score.weight" in whole
    for name in whole:
        torch.testing.assert_close(accumulated[name], whole[name], atol=1e-6, rtol=1e-4)


# -- fit, export, reload, score ------------------------------------------------------------------------------


def _rewards_of(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return sequence_rewards(model.eval(), batch)


def test_fit_exports_a_sequence_classifier_that_reloads_with_the_same_rewards(tmp_path, capsys):
    model = RewardModel(optim=OptimSpec(lr=1e-2))
    dm = _data(model, n=12)
    Trainer(max_steps=3, val_check_interval=3, callbacks=[ExportHF(dirpath=str(tmp_path / "hf")),
                                                          RunCheckpoint(dirpath=str(tmp_path / "ckpt"))],
            **QUIET).fit(model, datamodule=dm)
    batch = next(iter(dm.eval_loader("val")))
    expected = _rewards_of(model.model, batch)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf")
    assert type(reloaded).__name__ == "LlamaForSequenceClassification" and reloaded.config.num_labels == 1
    torch.testing.assert_close(_rewards_of(reloaded, batch), expected, atol=1e-5, rtol=0)
    main(["export", str(tmp_path / "ckpt" / "last.ckpt"), str(tmp_path / "from_ckpt")])  # lit_align export
    from_ckpt = AutoModelForSequenceClassification.from_pretrained(tmp_path / "from_ckpt")
    torch.testing.assert_close(_rewards_of(from_ckpt, batch), expected, atol=1e-5, rtol=0)

    # lit_align score on both models: a pair, a completion, a group; the rewards are the model's own
    data = tmp_path / "records.jsonl"
    rows = [{"prompt": "What is 2 plus 2?", "chosen": "2 plus 2 is 4.", "rejected": "2 plus 2 is 5."},
            {"prompt": "Tell me the colour of a plum.", "completion": "A plum is purple."},
            {"prompt": "Count from 1 to 3.", "completions": ["1, 2, 3.", "1, 1, 3."]}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for source in (tmp_path / "hf", tmp_path / "ckpt" / "last.ckpt"):
        main(["score", "--model", str(source), "--data", str(data), "--out", str(tmp_path / "scores.jsonl")])
        scores = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
        assert [s["index"] for s in scores] == [0, 1, 2] and scores[0]["prompt"] == rows[0]["prompt"]
        assert scores[0]["where"].endswith("records.jsonl:1")
        tok = model.tokenizer
        from lit_align.data.records import to_examples
        from lit_align.data.tokenize import Tokenizer, TokenizeSpec

        pair = Tokenizer(tok, TokenizeSpec(max_length=512))(to_examples(rows[0], "x", "pair")[0])
        want = _rewards_of(model.model, collate([(0, pair)], tok.pad_token_id)).tolist()
        assert [scores[0]["reward_chosen"], scores[0]["reward_rejected"]] == pytest.approx(want, abs=1e-5)
        assert isinstance(scores[1]["reward"], float) and len(scores[2]["rewards"]) == 2
    assert "scored 3 records" in capsys.readouterr().err


def test_score_rates_every_completion_of_a_ranked_list_and_says_why_it_left_one_out(tmp_path, capsys, rm):
    """A ranked list (k = 3) gets one reward per completion in the record's order, as a group of the same
    completions does (it used to get one `reward`, the best completion's); its tied scores do not leave it out;
    a pair left out is counted under its own reason (a tie is not "chosen and rejected are identical")."""
    save_hf(rm.model, rm.tokenizer, tmp_path / "rm")
    completions = ["Honey is sweet.", "Bread is bland.", "Kale is bitter."]
    rows = [{"prompt": "Describe a food.", "completions": completions, "scores": [1, 3, 2]},
            {"prompt": "Describe a food.", "completions": completions, "scores": [1, 1, 2]},
            {"prompt": "Describe a food.", "completions": completions},
            {"prompt": "a", "chosen": "b", "rejected": "b"}]
    data = tmp_path / "ranked.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    capsys.readouterr()
    main(["score", "--model", str(tmp_path / "rm"), "--data", str(data), "--out", str(tmp_path / "scores.jsonl")])
    scores = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert [s["index"] for s in scores] == [0, 1, 2] and not any("reward" in s for s in scores)
    ranked, tied, group = (s["rewards"] for s in scores)
    assert len(set(group)) == 3 and ranked == pytest.approx(group, abs=1e-5) and tied == pytest.approx(group, abs=1e-5)
    assert scores[0]["scores"] == [1, 3, 2]  # the record's fields, kept beside its rewards
    err = capsys.readouterr().err
    assert "scored 3 records, 1 left out (chosen == rejected)" in err, err


def test_score_refuses_to_write_over_its_data(tmp_path, capsys, monkeypatch, rm):
    save_hf(rm.model, rm.tokenizer, tmp_path / "rm")
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n")
    before = data.read_bytes()
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # the same file by another name
        main(["score", "--model", str(tmp_path / "rm"), "--data", str(data), "--out", "./pairs.jsonl"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--out ./pairs.jsonl is the --data file" in err and data.read_bytes() == before


def test_lora_reward_model_trains_its_score_head_and_exports_merged(tmp_path):
    model = RewardModel(policy=ModelSpec(lora=LoraSpec(r=4)), optim=OptimSpec(lr=1e-2))
    model.configure_model()
    head = model.model.base_model.model.score
    start = head.modules_to_save["default"].weight.detach().clone()
    dm = _data(model)
    Trainer(max_steps=2, callbacks=[RunCheckpoint(dirpath=str(tmp_path / "ckpt"))], **QUIET).fit(model, datamodule=dm)
    assert not torch.equal(head.modules_to_save["default"].weight, start)  # the head is trained, not frozen
    main(["export", str(tmp_path / "ckpt" / "last.ckpt"), str(tmp_path / "merged")])  # merged by default
    batch = next(iter(dm.eval_loader("val")))
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(_rewards_of(reloaded, batch), _rewards_of(model.model, batch), atol=1e-5, rtol=0)


def test_score_refuses_bad_input_in_one_sentence(tmp_path, capsys, rm):
    lm = tmp_path / "causal_lm"
    save_hf(load_model(ModelSpec(), rm.tokenizer), rm.tokenizer, lm)
    save_hf(rm.model, rm.tokenizer, tmp_path / "rm")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n"
                   + json.dumps({"prompt": "a", "chosen": "b"}) + "\n")
    capsys.readouterr()  # (save_pretrained's progress bars)
    for model, words in ((lm, "is not a reward model"), (tmp_path / "rm", "bad.jsonl:2: field 'rejected': missing"),
                         (tmp_path / "nowhere", "no Hugging Face model can be read")):
        with pytest.raises(SystemExit) as exit_info:
            main(["score", "--model", str(model), "--data", str(bad), "--out", str(tmp_path / "out.jsonl")])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and words in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1


def test_lm_callbacks_refuse_a_reward_model_in_one_sentence(tmp_path, monkeypatch, capsys):
    """Sample generations (and probes) need an LM head: with a RewardModel they stop at setup, one sentence."""
    from conftest import REPO

    from lit_align.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        main(["fit", "--config", str(REPO / "configs" / "reward_model.yaml"), "--trainer.max_steps", "1",
              "--data.init_args.train.limit", "8", "--trainer.val_check_interval", "1",
              "--trainer.callbacks+=lit_align.callbacks.SampleGenerations",
              "--trainer.callbacks.sets", "{val: {path: builtin:pairs, split: val, limit: 2}}"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "Traceback" not in err, err[-2000:]
    assert "SampleGenerations generates text with a language-model head; RewardModel has a score head" in err
