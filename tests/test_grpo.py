"""Online RL (objectives/grpo.py): what the loss scores is what the sampler drew (temperature, positions, the end
token when pad == eos), exact under gradient accumulation, exact resume, learning on a toy reward, and bad input.
The pure losses have their hand-computed tests in test_policy_gradient_losses.py."""

import functools

import lightning.pytorch as pl
import pytest
import torch
from conftest import REPO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from lit_align.data import AlignDataModule
from lit_align.errors import LitAlignError
from lit_align.modeling.generation import sampling_config
from lit_align.modeling.logprobs import token_logps
from lit_align.modeling.models import ModelSpec
from lit_align.objectives import GRPO, OptimSpec


def digit_share(prompts, completions, records):
    """Toy reward: the share of a completion's characters that are digits (varied from the first step on)."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def _objective(**options) -> GRPO:
    options = {"rewards": {"function": "test_grpo:digit_share"}, "num_generations": 4, "max_new_tokens": 6, **options}
    return GRPO(policy=ModelSpec("builtin:tiny"), optim=OptimSpec(lr=options.pop("lr", 1e-3), schedule="constant"),
                **options)


def _fit(model: GRPO, tmp_path, steps: int, batch_size: int = 4, accumulate: int = 1, logger=False, ckpt=None,
         callbacks=()):
    dm = AlignDataModule(train={"path": "builtin:sft", "limit": 32}, batch_size=batch_size, max_length=64,
                         shuffle=False)
    dm.connect(model.tokenizer, model.layout, repeat_steps=model.repeat_steps)
    trainer = pl.Trainer(max_steps=steps, accumulate_grad_batches=accumulate, accelerator="cpu", logger=logger,
                         enable_checkpointing=bool(callbacks), callbacks=list(callbacks), enable_progress_bar=False,
                         enable_model_summary=False,
                         default_root_dir=tmp_path, log_every_n_steps=1, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
    return trainer


def test_the_loss_scores_sampled_tokens_with_the_samplers_distribution():
    """Sampling at T = 0.7 (the model's own generation config replaced: no hidden top_k), the log-probs the update
    uses equal log softmax(logits / T) of the scores the sampler drew each token from (TRL #4159's class)."""
    torch.manual_seed(0)
    model = _objective(temperature=0.7)
    model.configure_model()
    net = model.model.eval()
    contexts = [[1, 5, 9, 12], [1, 7]]                                    # two prompts of different lengths
    rows_ids, rows_logps = [], []
    for context in contexts:
        config = sampling_config(6, temperature=0.7, pad_id=model.tokenizer.pad_token_id, end_id=None)
        config.output_scores, config.return_dict_in_generate = True, True
        torch.manual_seed(1)
        out = net.generate(input_ids=torch.tensor([context]), attention_mask=torch.ones(1, len(context), dtype=torch.long),
                           generation_config=config)
        new = out.sequences[0, len(context):]
        steps = torch.stack(out.scores, 1)[0].float().log_softmax(-1)    # (T, V): the processed scores it drew from
        rows_ids.append(new.tolist())
        rows_logps.append(steps.gather(-1, new[:, None]).squeeze(-1))
    rows = model.rows(contexts, rows_ids)                                # right-padded context + completion rows
    with torch.no_grad():
        got = token_logps(net, rows["labels"], temperature=0.7, input_ids=rows["input_ids"],
                          attention_mask=rows["attention_mask"], use_cache=False)
    for i, expected in enumerate(rows_logps):
        assert torch.allclose(got.logps[i][got.mask[i]], expected, atol=1e-5), i
    # teeth: at temperature 1 the same tokens have other log-probs
    with torch.no_grad():
        plain = token_logps(net, rows["labels"], input_ids=rows["input_ids"], attention_mask=rows["attention_mask"])
    assert not torch.allclose(plain.logps[0][plain.mask[0]], rows_logps[0], atol=1e-3)


def test_the_end_token_is_a_target_when_pad_equals_eos():
    """A completion closed by the end token keeps it as a target even where the pad id is that token; only what
    follows it is padding (TRL #4970's class)."""
    model = _objective()
    eos = model.tokenizer.eos_token_id
    model.tokenizer.pad_token = model.tokenizer.eos_token
    assert model.tokenizer.pad_token_id == eos
    rows = model.rows([[1, 2, 3], [1, 2]], [[7, 8, eos], [9]])
    labels = rows["labels"]
    assert labels[0, 3:6].tolist() == [7, 8, eos]                        # the end token is learned
    assert labels[1, 2:3].tolist() == [9] and (labels[1, 3:] == -100).all()   # padding (eos ids) is not
    assert (rows["input_ids"][1, 3:] == eos).all() and (rows["attention_mask"][1, 3:] == 0).all()


class _Grads(GRPO):
    def on_before_optimizer_step(self, optimizer):
        super().on_before_optimizer_step(optimizer)
        self.grads = {n: p.grad.detach().clone() for n, p in self.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("aggregation, num_iterations", [("sequence_mean", 1), ("token_mean", 1),
                                                         ("constant_length", 1), ("sequence_mean", 2)])
def test_accumulation_equals_one_big_batch(aggregation, num_iterations, tmp_path):
    """4 prompts in one micro-batch and 2 x 2 accumulated give the same samples (seeded per prompt and step), the
    same rewards and the same gradient, for every loss aggregation (TRL #2617 / #3021's class); with sample reuse,
    also on the second update of the same rollout (ratio != 1)."""
    grads = []
    for batch_size, accumulate in ((4, 1), (2, 2)):
        torch.manual_seed(0)
        model = _Grads(rewards={"function": "test_grpo:digit_share"}, num_generations=4, max_new_tokens=6,
                       policy=ModelSpec("builtin:tiny"), optim=OptimSpec(lr=1e-2), loss_aggregation=aggregation,
                       num_iterations=num_iterations)
        _fit(model, tmp_path, steps=num_iterations, batch_size=batch_size, accumulate=accumulate)
        grads.append(model.grads)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-4), name
    assert any(g.abs().sum() > 0 for g in grads[0].values())            # a real gradient, not all-zero advantages


def _scalars(logdir, tag: str) -> list[tuple[int, float]]:
    from lit_align.plots import read_scalars

    return read_scalars(str(logdir))[tag]


@pytest.mark.parametrize("num_iterations", [1, 3])
def test_a_resumed_run_samples_and_learns_as_the_uninterrupted_one(num_iterations, tmp_path):
    """4 steps in one go vs 2 steps, then a resume from the checkpoint to 4: the same rewards at every step and the
    same final weights (the sampler's seed is a function of the step and the prompt, so a checkpoint holds it).
    With 3 updates per rollout the stop falls inside a rollout's updates: the checkpoint holds the rollout."""
    _objective = functools.partial(globals()["_objective"], num_iterations=num_iterations)
    torch.manual_seed(0)
    whole = _objective()
    _fit(whole, tmp_path / "whole", steps=4, logger=TensorBoardLogger(tmp_path / "whole", name="tb"))
    torch.manual_seed(0)
    first = _objective()
    ckpt_dir = tmp_path / "parts"
    every_step = ModelCheckpoint(dirpath=ckpt_dir / "checkpoints", every_n_train_steps=1, save_last=True)
    _fit(first, ckpt_dir, steps=2, logger=TensorBoardLogger(ckpt_dir, name="tb", version=0), callbacks=[every_step])
    ckpt = ckpt_dir / "checkpoints" / "last.ckpt"                        # written mid-epoch, as by an interruption
    torch.manual_seed(123)                                               # a different global RNG state on resume
    resumed = _objective()
    _fit(resumed, ckpt_dir, steps=4, logger=TensorBoardLogger(ckpt_dir, name="tb", version=1), ckpt=str(ckpt))
    rewards_whole = _scalars(tmp_path / "whole" / "tb", "train/reward")
    rewards_parts = _scalars(ckpt_dir / "tb" / "version_0", "train/reward") + _scalars(ckpt_dir / "tb" / "version_1",
                                                                                        "train/reward")
    assert [s for s, _ in rewards_whole] == [s for s, _ in rewards_parts] and len(rewards_whole) == 4
    assert [v for _, v in rewards_whole] == pytest.approx([v for _, v in rewards_parts], abs=1e-7)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_sample_reuse_updates_on_one_rollout_with_the_ratio_clipped(tmp_path):
    """num_iterations 2: steps 0 and 1 train on the same samples (the same rewards), step 2 samples anew; the first
    update of a rollout is on-policy (ratio exactly 1: nothing clipped), the second is not (a tight clip bites)."""
    torch.manual_seed(0)
    model = _objective(num_iterations=2, lr=3e-2, epsilon=1e-3, num_generations=8)
    _fit(model, tmp_path, steps=4, logger=TensorBoardLogger(tmp_path, name="tb"))
    rewards = [v for _, v in _scalars(tmp_path / "tb", "train/reward")]
    clipped = [v for _, v in _scalars(tmp_path / "tb", "train/policy/clip_fraction")]
    assert rewards[0] == rewards[1] and rewards[2] == rewards[3] and rewards[1] != rewards[2], rewards
    assert clipped[0] == 0 and clipped[2] == 0 and clipped[1] > 0 and clipped[3] > 0, clipped
    with pytest.raises(LitAlignError, match="num_iterations must be >= 1"):
        _objective(num_iterations=0)
    # a data module that does not repeat the batches: the second update finds no rollout, and says why
    dm = AlignDataModule(train={"path": "builtin:sft", "limit": 32}, batch_size=4, max_length=64, shuffle=False)
    dm.connect(model.tokenizer, model.layout)
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(LitAlignError, match="repeat_steps"):
        trainer.fit(_objective(num_iterations=2), datamodule=dm)


def test_the_reward_rises_on_a_toy_task(tmp_path):
    """A random tiny model rewarded for digits writes more of them within 30 steps (REINFORCE with a group baseline
    does learn)."""
    torch.manual_seed(0)
    model = _objective(lr=1e-2, num_generations=8, temperature=1.0)
    _fit(model, tmp_path, steps=30, logger=TensorBoardLogger(tmp_path, name="tb"))
    rewards = [v for _, v in _scalars(tmp_path / "tb", "train/reward")]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.2 and last > 2 * first, rewards


def test_bad_options_and_input_are_one_paragraph(tmp_path):
    with pytest.raises(LitAlignError, match="num_generations must be >= 2"):
        _objective(num_generations=1)
    with pytest.raises(LitAlignError, match="needs rewards"):
        GRPO(policy=ModelSpec("builtin:tiny"))
    with pytest.raises(LitAlignError, match="cannot hold the log-probs"):
        from lit_align.objectives.reference import ReferenceSpec

        _objective(beta=0.1, reference=ReferenceSpec(mode="cache"))
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "Count to 3."}\n{"text": "no prompt here"}\n')
    model = _objective()
    dm = AlignDataModule(train={"path": str(bad)}, batch_size=2, max_length=64)
    dm.connect(model.tokenizer, model.layout)
    with pytest.raises(LitAlignError, match=r"prompts.jsonl:2.*prompt"):
        dm.setup("fit")


def test_a_reward_function_that_fails_stops_the_run_in_one_paragraph(tmp_path):
    model = _objective(rewards={"function": "test_grpo:not_a_list"})
    with pytest.raises(LitAlignError, match="not_a_list"):
        _fit(model, tmp_path, steps=1)


def not_a_list(prompts, completions, records):
    return None


def test_the_example_config_parses():
    from lit_align.lightning_cli import LitAlignCLI

    cli = LitAlignCLI(args=["--config", str(REPO / "configs" / "grpo.yaml"), "--trainer.max_steps", "0"], run=False)
    assert isinstance(cli.model, GRPO) and cli.model.num_generations == 8


@pytest.mark.parametrize("kl_in", ["loss", "reward"])
def test_the_kl_to_a_copied_reference_starts_at_zero_and_grows(kl_in, tmp_path):
    """β > 0 builds a frozen copy of the starting policy: the first step's KL estimate is exactly 0 (policy =
    reference), and it is positive once the policy has moved."""
    from lit_align.objectives.reference import ReferenceSpec

    torch.manual_seed(0)
    model = _objective(beta=0.1, kl_in=kl_in, reference=ReferenceSpec(mode="copy"), lr=1e-2)
    _fit(model, tmp_path, steps=4, logger=TensorBoardLogger(tmp_path, name="tb"))
    kl = [v for _, v in _scalars(tmp_path / "tb", "train/policy/kl")]
    assert kl[0] == 0.0 and kl[-1] > 0, kl


def constant(prompts, completions, records):
    return [1.0] * len(completions)


def _online_dpo(**options):
    from lit_align.objectives import OnlineDPO

    options = {"rewards": {"function": "test_grpo:digit_share"}, "max_new_tokens": 6, **options}
    return OnlineDPO(policy=ModelSpec("builtin:tiny"), optim=OptimSpec(lr=options.pop("lr", 1e-3), schedule="constant"),
                     **options)


def test_online_dpo_starts_at_log_2(tmp_path):
    """Online DPO's first step: the policy is its reference, so DPO's loss is log 2 on every untied pair and every
    implicit reward is 0; the steps after it move the policy (the loss leaves log 2)."""
    torch.manual_seed(0)
    model = _online_dpo(lr=1e-2)
    _fit(model, tmp_path, steps=6, logger=TensorBoardLogger(tmp_path, name="tb"))
    s = {tag: [v for _, v in _scalars(tmp_path / "tb", tag)] for tag in ("train/loss", "train/rewards/accuracy",
                                                                           "train/rollout/ties")}
    assert s["train/loss"][0] == pytest.approx(0.6931472, abs=1e-6)
    assert s["train/rewards/accuracy"][0] == 0.0                         # β·(log π - log π_ref) = 0 on both sides
    assert any(abs(v - 0.6931472) > 1e-3 for v in s["train/loss"][1:]), s
    assert all(0 <= t < 1 for t in s["train/rollout/ties"])


def test_a_step_whose_pairs_all_tie_makes_no_update(tmp_path):
    """Every pair ties (a constant reward): nothing says which sample is better, so the weights do not move and
    the run does not stop (offline objectives refuse an empty step; online ones skip it)."""
    torch.manual_seed(0)
    model = _online_dpo(rewards={"function": "test_grpo:constant"}, lr=1e-2)
    model.configure_model()
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    _fit(model, tmp_path, steps=2)
    assert all(torch.equal(before[k], v) for k, v in model.model.state_dict().items())


def test_online_dpo_orders_each_pair_by_its_reward():
    from lit_align.objectives.online_dpo import order_pairs

    pick, untied = order_pairs(torch.tensor([[0.2, 0.9], [1.0, 0.0], [0.5, 0.5]]))
    assert pick.tolist() == [[1, 0], [0, 1], [0, 1]] and untied.tolist() == [True, True, False]


def test_a_trained_reward_model_is_a_reward_equal_to_lit_align_score(tmp_path):
    """{reward_model: DIR}: the exported reward model scores prompt + completion exactly as `lit_align score` scores
    the record {prompt, completion}; GRPO trains on it."""
    from lit_align.cli.score import score_rows
    from lit_align.eval.rewards import build_rewards
    from lit_align.modeling.models import load_model, load_tokenizer, save_hf
    from lit_align.modeling.reward_models import load_reward_model

    torch.manual_seed(0)
    spec = ModelSpec("builtin:tiny")
    tokenizer = load_tokenizer(spec)
    save_hf(load_model(spec, tokenizer, head="score"), tokenizer, tmp_path / "rm")
    rewards = build_rewards([{"reward_model": str(tmp_path / "rm"), "max_length": 64}])
    prompts, completions = ["Count from 3 to 5.", "What is 2 plus 2?"], ["3, 4, 5.", "2 plus 2 is 5."]
    got = rewards(prompts, completions, [{}, {}]).per_function["reward_model"]
    model, tok = load_reward_model(str(tmp_path / "rm"))
    rows, _ = score_rows(model, tok, [(f"r{i}", {"prompt": p, "completion": c})
                                      for i, (p, c) in enumerate(zip(prompts, completions))], max_length=64)
    assert got.tolist() == pytest.approx([r["reward"] for r in rows], abs=1e-6) and got[0] != got[1]
    model = _objective(rewards=[{"reward_model": str(tmp_path / "rm"), "max_length": 64}])
    trainer = _fit(model, tmp_path, steps=1)
    assert trainer.global_step == 1
    with pytest.raises(LitAlignError, match="reward_model"):
        build_rewards([{"reward_model": str(tmp_path / "rm"), "temperature": 2}])
