"""Packed SFT and IW-SFT (`packed: true`; data/collate.py pack_rows / collate_packed, logprobs.packed_token_logps):
several examples per row, each attending only to itself with its positions restarting, give the same losses,
gradients and metrics as the padded rows, under eager and sdpa attention and in the padding-free varlen form
that flash-attention takes; on HH-RLHF they cut the padding share (under 5% with rows of 4 x max_length); the CLI
trains with them and resumes exactly."""

import pytest
import torch
from conftest import REPO, SHARED_DATA, requires_gpu, requires_shared, run_cli
from test_logprobs import _assert_same, _perturb
from test_resume import assert_same_state, run_in_process, scalars

from lit_align.data import AlignDataModule
from lit_align.data.collate import collate_packed, pack_rows, padding_fraction, unpackable
from lit_align.layouts import LAYOUTS, layout_named
from lit_align.data.tokenize import Tokenized
from lit_align.errors import LitAlignError
from lit_align.modeling.logprobs import forward_logps, packed_token_logps
from lit_align.modeling.models import ModelSpec, builtin_tokenizer, load_model, load_tokenizer
from lit_align.objectives import IWSFT, SFT
from lit_align.weights import WeightSpec


def _data(tok, kind, n=12, max_length=64, task="builtin:sft", pack_length=128, **kwargs) -> AlignDataModule:
    dm = AlignDataModule(train={"path": task, "limit": n}, batch_size=n, max_length=max_length, shuffle=False,
                         pack_length=pack_length,
                         **kwargs)
    dm.connect(tok, layout_named(kind))
    dm.setup("fit")
    return dm


def _ex(context, continuation, weight=None):
    return Tokenized(context=context, continuations=[continuation], prefix_len=0, weight=weight, group=None,
                     where="test", categories=[])


# -- the packing plan and the layout ---------------------------------------------------------------------------


def test_rows_that_hold_no_two_examples_are_said():
    assert unpackable([30, 40, 50], 70) is None                                # 30 + 40 fit one row
    assert unpackable([50, 40, 30], 69) == (False, "holds no two examples (the two shortest take 30 + 40 tokens)")
    assert unpackable([30, 40], 29) == (True, "is shorter than every example (the shortest takes 30 tokens)")
    assert unpackable([30], 10) is None                                        # one example: nothing to pack
    tok = builtin_tokenizer()
    with pytest.raises(LitAlignError, match="data.pack_length 8 is shorter than every example .* nothing is packed"):
        _data(tok, "packed_sft", pack_length=8)
    with pytest.warns(UserWarning, match=r"a packed row \(max_length, 24\) holds no two examples"):
        _data(tok, "packed_sft", max_length=24, pack_length=None)
    with pytest.warns(UserWarning, match=r"data.pack_length 40 holds no two examples \(the two shortest take 28 \+"):
        _data(tok, "packed_sft", max_length=64, pack_length=40)


def test_pack_rows_fits_every_example_once_in_balanced_rows():
    assert pack_rows([300, 300, 300, 10], 512) == [[0, 3], [1], [2]]      # three 300s cannot share 512
    assert pack_rows([100, 200, 50, 400, 120], 512) == [[0, 1, 4], [2, 3]]  # 420 and 450: not 512 and 358
    assert pack_rows([600, 10], 512) == [[0], [1]]                          # too long: a row of its own
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        lengths = torch.randint(1, 200, (int(torch.randint(1, 20, (1,), generator=g)),), generator=g).tolist()
        plan = pack_rows(lengths, 256)
        assert sorted(i for row in plan for i in row) == list(range(len(lengths)))
        loads = [sum(lengths[i] for i in row) for row in plan]
        assert max(loads) <= 256 and len(plan) <= len(lengths)
        assert plan == pack_rows(lengths, 256)                              # deterministic


def test_positions_restart_and_attention_stays_inside_each_example():
    batch = collate_packed([(0, _ex([5, 6], [7, 8])), (1, _ex([5], [9])), (2, _ex([4], [3, 2, 1]))], pad_id=0,
                           row_length=8)
    # two rows of 6 (12 slots) beat one of 8 plus one of 2 (16): rows are balanced, not filled to 8
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 5, 9], [4, 3, 2, 1, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1], [0, 1, 2, 3, 0, 0]]
    m = batch["attention_mask"][:, 0].int()
    assert m[0].tolist() == [[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0],
                             [0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 1, 1]]        # block-diagonal causal
    assert m[1, 4:].tolist() == [[1, 0, 0, 0, 0, 0]] * 2                     # padding queries: key 0 only (no NaN)
    targets = torch.stack([batch[k] for k in ("target_example", "target_row", "target_pos", "target_id")], 1)
    assert targets.tolist() == [[0, 0, 1, 7], [0, 0, 2, 8], [1, 0, 4, 9], [2, 1, 0, 3], [2, 1, 1, 2], [2, 1, 2, 1]]
    assert batch["cont_tokens"].tolist() == [[2], [1], [3]] and batch["index"].tolist() == [0, 1, 2]


def test_no_attention_across_examples():
    """Changing one example's tokens changes its own log-probs and leaves those of its row-mates unchanged."""
    spec = ModelSpec(name="builtin:tiny", attn_implementation="sdpa")
    model = load_model(spec, load_tokenizer(spec))
    _perturb(model)
    items = [(0, _ex([11, 12, 13], [14, 15, 16])), (1, _ex([21, 22], [23, 24, 25, 26])), (2, _ex([31], [32, 33]))]
    changed = [items[0], (1, _ex([41, 42], [43, 24, 45, 26])), items[2]]
    a, b = (packed_token_logps(model, collate_packed(x, pad_id=0, row_length=64)) for x in (items, changed))
    assert collate_packed(items, pad_id=0, row_length=64)["input_ids"].shape[0] == 1   # all in one row
    assert torch.equal(a.logps[[0, 2]], b.logps[[0, 2]])
    assert not torch.allclose(a.logps[1], b.logps[1])


# -- the same losses and gradients as the padded rows ------------------------------------------------------------


def _step(obj, batch):
    sums = obj.step(batch)
    loss = sums["loss"][0] / sums["loss"][1]
    obj.model.zero_grad()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in obj.model.named_parameters() if p.grad is not None}
    return (loss.detach().reshape(1), None, grads), {k: (s / c).item() for k, (s, c) in sums.items()}


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("objective", ["SFT", "IW-SFT"])
def test_packed_equals_padded_losses_gradients_and_metrics(objective, attention):
    """IW-SFT: weights from the reference (α = 1, so they differ per example), computed over the packed split
    too (reference.py reads packed batches), applied per example: the same weights, losses and gradients."""
    results, weights = [], []
    for packed in (False, True):
        policy = ModelSpec(name="builtin:tiny", attn_implementation=attention)
        if objective == "SFT":
            obj = SFT(policy=policy, packed=packed)
        else:
            obj = IWSFT(policy=policy, packed=packed, weights=WeightSpec(alpha=1.0, max_ratio=100.0))
        obj.configure_model()
        _perturb(obj.model)
        dm = _data(obj.tokenizer, obj.layout)
        batch = next(iter(dm.train_dataloader()))
        if packed:
            assert batch["input_ids"].shape[0] < 12 and padding_fraction(batch) < 0.1   # several per row
        if objective == "IW-SFT":
            obj.prepare(dm)
            weights.append(obj.importance.tables["train"].weights)
        results.append(_step(obj, batch))
    _assert_same(results[0][0], results[1][0], atol=1e-6)
    assert results[0][1].keys() == results[1][1].keys()
    for name, value in results[0][1].items():
        assert results[1][1][name] == pytest.approx(value, abs=1e-6), name
    if weights:
        assert weights[0].std() > 0.05 and torch.allclose(weights[0], weights[1], atol=1e-6)


def test_varlen_form_equals_the_4d_mask():
    """The padding-free form flash-attention runs (one concatenated row, positions restarting, cu_seq_lens),
    checked on CPU through sdpa, which builds the block mask from the position ids itself."""
    spec = ModelSpec(name="builtin:tiny", attn_implementation="sdpa")
    tok = load_tokenizer(spec)
    model = load_model(spec, tok)
    _perturb(model)
    batch = next(iter(_data(tok, "packed_sft").train_dataloader()))
    runs = []
    for varlen in (False, True):
        model.zero_grad()
        out = packed_token_logps(model, batch, with_accuracy=True, varlen=varlen)
        (out.logps * 3 + out.logps.pow(2)).sum().backward()
        runs.append((out.logps.detach(), out.correct, {n: p.grad.clone() for n, p in model.named_parameters()}))
    _assert_same(runs[0], runs[1], atol=1e-6)


@requires_gpu
def test_flash_attention_packed_equals_padded_on_a_gpu():
    pytest.importorskip("flash_attn")
    spec = ModelSpec(name="builtin:tiny", dtype="bfloat16", attn_implementation="flash_attention_2")
    tok = load_tokenizer(spec)
    model = load_model(spec, tok).cuda()
    padded = {k: v.cuda() if torch.is_tensor(v) else v for k, v in
              next(iter(_data(tok, "sft").train_dataloader())).items()}
    packed = {k: v.cuda() if torch.is_tensor(v) else v for k, v in
              next(iter(_data(tok, "packed_sft").train_dataloader())).items()}
    a, b = forward_logps(model, padded), packed_token_logps(model, packed)
    assert torch.equal(a.tokens, b.tokens)
    assert torch.allclose(a.sequence, b.sequence, atol=0.05 * a.tokens.max().item())   # bf16 rounding


# -- HH-RLHF padding, the CLI, resume -------------------------------------------------------------------------------


@requires_shared
def test_packing_cuts_the_padding_of_sft_on_hh_rlhf():
    """HH-RLHF SFT at batch 8, max_length 512: over a third of the examples are cut to 512, so rows of 512 hold
    them alone (the floor of that plan); rows of 4 x 512 pack the batch into two or three balanced rows."""
    tok = load_tokenizer(ModelSpec(name="builtin:small"))

    dm = AlignDataModule(train=str(SHARED_DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz"), max_length=512,
                         batch_size=8, skip_invalid=True)
    dm.connect(tok, LAYOUTS["sft"])
    dm.setup("fit")

    def padding(layout: str, pack_length: int | None = None) -> float:
        dm.split_layouts["train"], dm.pack_length = LAYOUTS[layout], pack_length   # the same split, another layout
        batches = list(dm.train_dataloader())
        assert sorted(i for b in batches for i in b["index"].tolist()) == list(range(len(dm.splits["train"])))
        sizes = [b["input_ids"].numel() for b in batches]
        return sum(padding_fraction(b) * s for b, s in zip(batches, sizes)) / sum(sizes)

    shares = {"padded": padding("sft"), "packed, rows of 512": padding("packed_sft"),
              "packed, rows of 2048": padding("packed_sft", 2048)}
    print("\nHH-RLHF harmless-base-test SFT, batch 8, max_length 512, padding: "
          + ", ".join(f"{k} {v:.3f}" for k, v in shares.items()))
    assert shares["padded"] > 0.3 and shares["packed, rows of 512"] < 0.125 and shares["packed, rows of 2048"] < 0.05


def test_cli_trains_packed_iw_sft_with_a_padded_pair_set(tmp_path):
    run = run_cli(["fit", "--config", str(REPO / "configs" / "iw_sft.yaml"), "--model.init_args.packed", "true",
                   "--data.init_args.train.limit", "48", "--data.init_args.val.id.limit", "8",
                   "--data.init_args.val.ood.limit", "8", "--data.init_args.batch_size", "16",
                   "--data.init_args.pack_length", "64", "--trainer.max_steps", "3", "--trainer.val_check_interval",
                   "3", "--trainer.log_every_n_steps", "1", "--export.enabled", "false"], cwd=tmp_path,
                  env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    version = tmp_path / "logs" / "iw_sft" / "version_0"
    assert sorted(scalars(version, "train/loss")) == [0, 1, 2]
    assert scalars(version, "val_id/logps/accuracy") and scalars(version, "train/weights/ess")


def test_packed_run_resumes_exactly(tmp_path, monkeypatch):
    run = ["fit", "--config", str(REPO / "configs" / "quickstart.yaml"), "--model.init_args.policy.name", "builtin:tiny",
           "--model.init_args.packed", "true", "--model.init_args.optim.lr", "0.01",
           "--model.init_args.optim.schedule", "constant", "--data.init_args.train.limit",
           "24", "--data.init_args.val.val.limit", "8", "--data.init_args.batch_size", "4",
           "--trainer.accumulate_grad_batches", "2", "--trainer.max_epochs", "-1", "--trainer.log_every_n_steps", "1",
           "--trainer.val_check_interval", "3", "--trainer.logger.init_args.name", "resume",
           "--checkpoint.every_n_train_steps", "1", "--trainer.enable_model_summary", "false",
           "--export.enabled", "false"]
    torch.set_num_threads(1)
    for name, steps in (("whole", ["--trainer.max_steps", "4"]), ("split", ["--trainer.max_steps", "2"])):
        (tmp_path / name).mkdir()
        run_in_process([*run, *steps], tmp_path / name, monkeypatch)
    run_in_process([*run, "--trainer.max_steps", "4", "--ckpt_path", "last"], tmp_path / "split", monkeypatch)
    whole = scalars(tmp_path / "whole" / "logs" / "resume" / "version_0", "train/loss")
    resumed = scalars(tmp_path / "split" / "logs" / "resume" / "version_1", "train/loss")
    assert sorted(whole) == [0, 1, 2, 3] and sorted(resumed) == [2, 3]
    for step, loss in resumed.items():
        assert abs(loss - whole[step]) <= 1e-6, (step, loss, whole[step])
    assert_same_state(*(tmp_path / d / "logs" / "resume" / "checkpoints" / "last.ckpt" for d in ("whole", "split")))


def test_a_checkpoint_from_before_packed_existed_resumes_unpacked_only():
    from lit_align.objectives import SFT
    from lit_align.resume import changed_settings

    saved = {"_class_path": "lit_align.objectives.SFT", "policy": None}          # no `packed` key
    rules = SFT.compute_only_settings, SFT.added_settings                       # SFT declares its resume rules
    assert changed_settings(saved, {**saved, "packed": False}, *rules) == ([], [])
    assert changed_settings(saved, {**saved, "packed": True}, *rules)[1]        # refused, as any changed setting
