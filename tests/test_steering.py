"""Steering vectors (CAA, lit_align/steering/vectors.py) and the ab/p_match metric, on tiny models built in code (fp32, CPU).

Hand computations use `output_hidden_states` (hidden_states[l + 1] is block l's output, except the last entry,
which transformers 5 returns after the final norm: hence 3-block models, checked at blocks 0 and 1)."""

import csv
import re
import json

import pytest
import torch
import yaml
from conftest import REPO, requires_shared

from lit_align.data.datamodule import AlignDataModule
from lit_align.errors import LitAlignError
from lit_align.modeling.logprobs import sequence_logps
from lit_align.callbacks.steering import SteerDuringEval
from lit_align.steering.vectors import (SteeringVector, _direction, contrast_margins, extract, extract_from_data, p_match,
                                steerability, steering_blocks)
from lit_align.layouts import LAYOUTS

LETTER = 1  # " (A)" is [" (", "A", ")"] in the built-in tokenizer: the letter is the 2nd answer token


def _records(n: int = 6) -> list[dict]:
    """A/B contrast records with questions of different lengths (so prompts end at different positions)."""
    out = []
    for i in range(n):
        q = f"Is {i * 7 % 50} greater than {i * 3 % 50}?" + " Think." * (i % 3)
        right, wrong = ("A", "B") if i % 2 else ("B", "A")
        out.append({"question": f"{q}\n\nChoices:\n (A) Yes\n (B) No\n\nAnswer:",
                    "answer_matching_behavior": f" ({right})", "answer_not_matching_behavior": f" ({wrong})"})
    return out


def _write(tmp_path, records, name="ab.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _datamodule(tokenizer, train, val=None, chat_template=None, batch=4):
    dm = AlignDataModule(train=train, val=val, eval_batch_size=batch, max_length=96, chat_template=chat_template)
    dm.connect(tokenizer, LAYOUTS["pair"])
    dm.setup("fit")
    return dm


def _llama(tokenizer, seed=0, hidden=32, layers=3):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def _model(kind: str, tokenizer):
    """A 3-block tiny model of each kind the steering hooks must handle."""
    if kind == "llama":
        return _llama(tokenizer)
    torch.manual_seed(0)
    if kind == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        return GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=3, n_head=4, n_positions=256,
                                          bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                                          pad_token_id=tokenizer.pad_token_id)).eval()
    if kind == "gpt_neox":
        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

        return GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=3, num_attention_heads=4, bos_token_id=None,
                                                eos_token_id=tokenizer.eos_token_id,
                                                pad_token_id=tokenizer.pad_token_id)).eval()
    if kind == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(_llama(tokenizer), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
        with torch.no_grad():  # LoRA's B starts at 0: make the adapter change something
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
        return model.eval()
    raise ValueError(kind)


def _left_padded(batch: dict) -> dict:
    """The same rows, padding moved to the left."""
    out = dict(batch)
    lengths = batch["attention_mask"].sum(-1)
    T = batch["input_ids"].shape[1]
    for key in ("input_ids", "attention_mask", "labels"):
        out[key] = torch.stack([row.roll(int(T - n)) for row, n in zip(batch[key], lengths)])
    return out


def _hand_vector(model, dm, layers, split="train"):
    """Mean over pairs of (matching - not matching) block outputs at the letter token, one unpadded sequence at a
    time (contexts and continuations as the data module tokenized them)."""
    diffs = {i: [] for i in layers}
    with torch.no_grad():
        for ex in dm.splits[split].examples:
            acts = []
            for cont in ex.continuations:
                ids = torch.tensor([ex.context + cont])
                hs = model(input_ids=ids, output_hidden_states=True).hidden_states
                acts.append({i: hs[i + 1][0, len(ex.context) + LETTER] for i in layers})
            for i in layers:
                diffs[i].append(acts[0][i] - acts[1][i])
    return {i: torch.stack(d).mean(0) for i, d in diffs.items()}


# -- extraction ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chat_template", [None, False])
def test_extraction_equals_hand_computation_right_and_left_padding(tmp_path, tokenizer, chat_template):
    dm = _datamodule(tokenizer, _write(tmp_path, _records(6)), chat_template=chat_template)
    model = _llama(tokenizer)
    ex = dm.splits["train"].examples[0]
    assert tokenizer.decode(ex.continuations[0][LETTER]) in ("A", "B")
    assert ("<|im_start|>" in tokenizer.decode(ex.context)) == (chat_template is None)  # template or plain text
    hand = _hand_vector(model, dm, [0, 1])
    right = extract_from_data(model, dm, "train", layers=[0, 1])
    left = extract(model, [_left_padded(b) for b in dm.eval_loader("train")], layers=[0, 1])
    assert right.n_pairs == left.n_pairs == 6 and right.layers == [0, 1]
    for i in (0, 1):
        assert torch.allclose(right.directions[i], hand[i], atol=1e-5), i
        assert torch.allclose(left.directions[i], hand[i], atol=1e-5), i
    assert right.tokenizer["chat_template"] == (chat_template is None)
    # max pairs: the first n in file order
    two = extract(model, dm.eval_loader("train"), layers=[1], max_pairs=2)
    first_two = _hand_vector(model, _datamodule(tokenizer, {"path": dm.train_source.path, "limit": 2},
                                                chat_template=chat_template), [1])
    assert two.n_pairs == 2 and torch.allclose(two.directions[1], first_two[1], atol=1e-5)


def test_pca_direction_is_aligned_with_the_mean_difference():
    torch.manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(8, dtype=torch.float64), dim=0)
    d = torch.randn(20, 1, dtype=torch.float64).abs()[:, :1] * u + 1e-3 * torch.randn(20, 8, dtype=torch.float64)
    v = _direction(d, "pca")
    assert torch.allclose(torch.nn.functional.normalize(v, dim=0), u, atol=1e-2)   # the dominant direction, + sign
    assert float(v @ d.mean(0)) > 0
    assert torch.allclose(v.norm(), (v / v.norm()) @ d.mean(0), atol=1e-9)         # scaled to |u . mean|
    assert torch.equal(_direction(d[:1], "pca"), d[0])


# -- application --------------------------------------------------------------------------------------------


def _vector(model, dm, layers=(0, 1, 2)):
    return extract(model, dm.eval_loader("train"), layers=list(layers))


@pytest.mark.parametrize("kind", ["llama", "gpt2", "gpt_neox", "lora"])
def test_vector_lands_exactly_on_the_positions_asked(tmp_path, tokenizer, kind):
    dm = _datamodule(tokenizer, _write(tmp_path, _records(6)), batch=6)
    model = _model(kind, tokenizer)
    vector = _vector(model, dm)
    batch = next(iter(dm.eval_loader("train")))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    starts = batch["context_tokens"].repeat(2)                            # (2B,) per row, continuation-major
    assert len(set(starts.tolist())) > 1                                  # prompts end at different positions
    blocks, _ = steering_blocks(model)

    def outputs(steer=None):
        got, hooks = {}, []
        for i, b in enumerate(blocks):  # registered after the steering hooks: they see the steered output
            hooks.append(b.register_forward_hook(
                lambda m, a, o, i=i: got.__setitem__(i, (o[0] if isinstance(o, tuple) else o).detach().clone())))
        try:
            if steer is not None:
                steer.set_prompt_lengths(batch)
            logits = model(input_ids=ids, attention_mask=mask).logits
        finally:
            for h in hooks:
                h.remove()
        return got, logits

    with torch.no_grad():
        plain, logits = outputs()
        with vector.apply(model, 0.0) as steer:
            _, logits0 = outputs(steer)
        assert torch.equal(logits0, logits)                               # multiplier 0: bit-identical
        with vector.apply(model, 3.0, layers=[0], positions="after_prompt") as steer:
            steered, logits3 = outputs(steer)
        with vector.apply(model, 3.0, layers=[0], positions="all") as steer:
            everywhere, _ = outputs(steer)
    assert not torch.equal(logits3, logits)
    T = ids.shape[1]
    after = torch.arange(T)[None, :] >= starts[:, None]                  # (2B, T)
    for i in range(3):  # before each row's prompt end nothing changes, at any block (causal attention)
        assert torch.equal(steered[i][~after], plain[i][~after]), i
    added = steered[0] - plain[0]                                         # block 0: exactly 3 v after the prompt
    assert torch.allclose(added[after], (3.0 * vector.directions[0]).expand(int(after.sum()), -1), atol=1e-5)
    assert torch.allclose(everywhere[0] - plain[0], (3.0 * vector.directions[0]).expand_as(plain[0]), atol=1e-5)


def test_hooks_are_removed_after_the_context_also_after_an_exception(tmp_path, tokenizer):
    dm = _datamodule(tokenizer, _write(tmp_path, _records(4)))
    model = _model("lora", tokenizer)
    vector = _vector(model, dm)
    blocks, runner = steering_blocks(model)

    def count():
        return sum(len(b._forward_hooks) for b in blocks) + len(runner._forward_pre_hooks)

    before = count()
    with vector.apply(model, 1.0, positions="all") as steer:
        assert count() == before + 4 and steer.active
    assert count() == before and not steer.active
    with pytest.raises(RuntimeError, match="boom"):
        with vector.apply(model, 1.0):
            raise RuntimeError("boom")
    assert count() == before
    batch = next(iter(dm.eval_loader("train")))
    with pytest.raises(LitAlignError, match="prompt lengths"):  # after_prompt without prompt lengths
        with vector.apply(model, 1.0):
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert count() == before


def test_a_vector_from_another_model_is_refused(tmp_path, tokenizer):
    dm = _datamodule(tokenizer, _write(tmp_path, _records(4)))
    model = _llama(tokenizer)
    vector = _vector(model, dm)
    path = vector.save(tmp_path / "v.safetensors")
    loaded = SteeringVector.load(path)
    assert loaded.layers == [0, 1, 2] and loaded.n_pairs == 4 and loaded.fingerprint == vector.fingerprint
    assert all(torch.equal(loaded.directions[i], vector.directions[i]) for i in loaded.layers)
    assert loaded.metadata()["norms"] == {str(i): n for i, n in vector.norms.items()}
    with loaded.apply(model, 1.0, positions="all"):                      # its own model: fine
        pass
    with loaded.apply(model.to(torch.bfloat16), 1.0, positions="all"):   # the same weights in bf16: fine
        pass
    other = _llama(tokenizer, seed=1)                                     # same architecture, other weights
    with pytest.raises(LitAlignError, match="other weights"):
        loaded.apply(other, 1.0)
    with loaded.apply(other, 1.0, positions="all", check="architecture"):  # on purpose (a fine-tuned descendant)
        pass
    with pytest.raises(LitAlignError, match="dimensions"):
        loaded.apply(_llama(tokenizer, hidden=48), 1.0, check="none")
    with pytest.raises(LitAlignError, match="architecture"):
        loaded.apply(_llama(tokenizer, layers=4), 1.0)
    (tmp_path / "bad.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(LitAlignError, match="safetensors"):
        SteeringVector.load(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_generation_with_the_kv_cache_is_steered_from_the_prompt_end(tmp_path, tokenizer, kind):
    dm = _datamodule(tokenizer, _write(tmp_path, _records(4)))
    model = _model(kind, tokenizer)
    vector = _vector(model, dm)
    prompts = [ex.context for ex in dm.splits["train"].examples[:2]]
    assert len(prompts[0]) != len(prompts[1])
    P = max(map(len, prompts))
    ids = torch.tensor([[tokenizer.pad_token_id] * (P - len(p)) + p for p in prompts])     # left-padded
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
    lengths = mask.sum(-1)
    kw = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id,
              eos_token_id=None)

    def generate(multiplier, use_cache=True):
        with vector.apply(model, multiplier, layers=[1], prompt_lengths=lengths):
            return model.generate(ids, use_cache=use_cache, **kw)

    with torch.no_grad():
        plain = model.generate(ids, **kw)
        assert torch.equal(generate(0.0), plain)
        big = 20 * vector.resid_norms[1] / vector.norms[1]               # |m v| = 20 x the residual stream's norm
        steered = generate(big)
        assert not torch.equal(steered, plain)
        assert torch.equal(steered[:, :P + 1], plain[:, :P + 1])         # the first new token: read at the prompt end
        assert torch.equal(steered, generate(big, use_cache=False))     # one token a step = the whole sequence


def test_fsdp2_sharded_blocks_are_steered_like_plain_ones(tmp_path, tokenizer):
    """fully_shard turns each block into an FSDP<name> subclass and the embedding into a DTensor: the blocks are
    still found, the fingerprint still matches, the steered logits equal the unsharded ones (one process, gloo)."""
    import copy

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dm = _datamodule(tokenizer, _write(tmp_path, _records(4)))
    model = _llama(tokenizer)
    vector = _vector(model, dm)
    batch = next(iter(dm.eval_loader("train")))

    def steered_logits(m):
        with torch.no_grad(), vector.apply(m, 3.0, layers=[1]) as steer:
            steer.set_prompt_lengths(batch)
            return m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    expected = steered_logits(model)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        sharded = copy.deepcopy(model)
        for block in steering_blocks(sharded)[0]:
            fully_shard(block, mesh=mesh)
        fully_shard(sharded, mesh=mesh)
        assert type(steering_blocks(sharded)[0][1]).__name__ == "FSDPLlamaDecoderLayer"
        assert torch.allclose(steered_logits(sharded), expected, atol=1e-6)
    finally:
        dist.destroy_process_group()


# -- evaluation and the metric ------------------------------------------------------------------------------


def test_p_match_equals_a_hand_computation_and_is_logged_on_contrast_sets_only(tokenizer):
    from lit_align.modeling.models import ModelSpec
    from lit_align.objectives import DPO, SFT

    val = {"ab": {"path": "builtin:ab", "split": "id", "limit": 6, "kind": "pair"},
           "pairs": {"path": "builtin:pairs", "split": "val", "limit": 6, "kind": "pair"}}
    for cls in (SFT, DPO):
        obj = cls(ModelSpec("builtin:tiny"))
        obj.configure_model()
        dm = AlignDataModule(train={"path": "builtin:ab", "limit": 4}, val=val, eval_batch_size=6, max_length=96)
        dm.connect(obj.tokenizer, obj.layout)
        dm.setup("fit")
        obj.eval()
        with torch.no_grad():
            ab = next(iter(dm.eval_loader("val_ab")))
            sums = {k: float(s / c) for k, (s, c) in obj.eval_sums(ab).items()}
            logps = sequence_logps(obj.model, ab).logps                   # (B, 2)
            p = torch.exp(logps[:, 0]) / (torch.exp(logps[:, 0]) + torch.exp(logps[:, 1]))
            assert sums["ab/p_match"] == pytest.approx(float(p.mean()), abs=1e-6), cls.__name__
            assert "ab/p_match" not in obj.eval_sums(next(iter(dm.eval_loader("val_pairs"))))
        pair_dm = _datamodule(obj.tokenizer, {"path": "builtin:ab", "limit": 4}, {"ab": val["ab"]}, batch=6)
        assert p_match(contrast_margins(obj.model, pair_dm.eval_loader("val_ab"))) == pytest.approx(
            sums["ab/p_match"], abs=1e-6)  # lit_align steer reports the same number


def test_steerability_slope_and_anti_steerable_items():
    multipliers = [-1.0, 0.0, 1.0, 2.0]
    x = torch.tensor(multipliers)
    wiggle = torch.tensor([1.0, -1.0, -1.0, 1.0])                        # orthogonal to the centred multipliers
    margins = torch.stack([2.0 * x + 1, -0.5 * x, 3 + 0.1 * x + 0.2 * wiggle], 1)   # (M, 3 items)
    slopes = steerability(margins, multipliers)
    assert torch.allclose(slopes, torch.tensor([2.0, -0.5, 0.1]), atol=1e-6)
    assert float((slopes < 0).float().mean()) == pytest.approx(1 / 3)   # one anti-steerable item
    with pytest.raises(LitAlignError):
        steerability(margins[:1], [1.0])


def test_steer_during_eval_callback_in_a_validation_run(tokenizer, tmp_path):
    from lightning.pytorch import Trainer

    from lit_align.modeling.models import ModelSpec
    from lit_align.objectives import SFT

    obj = SFT(ModelSpec("builtin:tiny"))
    obj.configure_model()
    dm = AlignDataModule(train={"path": "builtin:ab", "limit": 8}, eval_batch_size=8, max_length=96,
                         val={"id": {"path": "builtin:ab", "split": "id", "limit": 8, "kind": "pair"}})
    dm.connect(obj.tokenizer, LAYOUTS["pair"])
    dm.setup("fit")
    vector = extract(obj.model, dm.eval_loader("train"), layers=[1])
    path = vector.save(tmp_path / "v.safetensors")

    def validate(*callbacks):
        trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                          callbacks=list(callbacks), default_root_dir=tmp_path)
        data = AlignDataModule(train={"path": "builtin:ab", "limit": 8}, eval_batch_size=8, max_length=96,
                               val={"id": {"path": "builtin:ab", "split": "id", "limit": 8, "kind": "pair"}})
        data.connect(obj.tokenizer, obj.layout)
        return trainer.validate(obj, datamodule=data, verbose=False)[0]["val_id/ab/p_match"]

    plain = validate()
    assert validate(SteerDuringEval(str(path), multiplier=0.0)) == plain
    big = 20 * vector.resid_norms[1] / vector.norms[1]
    assert validate(SteerDuringEval(str(path), multiplier=big)) != plain
    blocks, _ = steering_blocks(obj.model)
    assert not any(b._forward_hooks for b in blocks)


STEER_CONFIGS = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml")
                       if "sweeps" not in p.parts and "steer" in (yaml.safe_load(p.read_text()) or {}))


@pytest.mark.parametrize("config", STEER_CONFIGS)
def test_every_steer_config_parses(config):
    from lit_align.cli.steer import parse_args, read_config

    spec, policy, data = read_config(parse_args(["--config", str(REPO / config)]))
    assert policy.name and data.val_sources and spec.multipliers


def test_the_steer_command_line_is_parsed_by_jsonargparse(tmp_path, capsys):
    """`lit_align steer`'s options as `fit`'s: repeated --config merged in order, overrides at any depth of model /
    data / steer, a training config as it is (its other sections ignored); the choices checked at parsing; a missing
    file, an unknown key or a bad value said in one sentence (exit 2), nothing loaded."""
    from lit_align.cli import main
    from lit_align.cli.steer import parse_args, read_config

    steer = str(REPO / "configs" / "steer.yaml")
    cfg = parse_args(["--config", steer, "--steer.layers", "[1]", "--steer.multipliers", "[-8, 0, 8]",
                      "--model.init_args.policy.name", "builtin:tiny", "--data.init_args.val.id.limit", "6"])
    spec, policy, data = read_config(cfg)
    assert (spec.layers, spec.multipliers, spec.name, policy.name) == ([1], [-8.0, 0.0, 8.0], "steer", "builtin:tiny")
    assert data.val_sources["id"].limit == 6 and data.val_sources["ood"].limit == 200 and cfg["_files"] == [steer]
    spec, policy, _ = read_config(parse_args(["--config", str(REPO / "configs" / "dpo.yaml"), "--config", steer]))
    assert policy.name == "builtin:organism" and spec.layers == "all"           # the later file wins
    extra = tmp_path / "extra.yaml"
    for yaml_text, said in [("steer:\n  bogus: 1\n", "bogus"), ("steer:\n  method: magic\n", "mean_diff, pca"),
                            ("steer:\n  read: [1]\n", "steer.read"), ("steer:\n  multipliers: []\n", "non-empty"),
                            ("steer:\n  layers: some\n", "list of block indices or all")]:
        extra.write_text(yaml_text)
        with pytest.raises(LitAlignError, match=said):
            read_config(parse_args(["--config", steer, "--config", str(extra)]))
    for argv, said in [([], "give a config"), (["--config", str(tmp_path / "none.yaml")], "does not exist"),
                       (["--config", steer, "--steer.method", "magic"],
                        "option steer.method: must be one of mean_diff, pca, not 'magic'"),
                       (["--config", steer, "--steer.positions"], "expected one argument")]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            main(["steer", *argv])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and said in err and len(err.splitlines()) == 1, err


def test_lit_align_steer_writes_the_grid_csv_summary_and_png(tmp_path, monkeypatch, capsys):
    from lit_align.cli import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "steer_out"
    main(["steer", "--config", str(REPO / "configs" / "steer.yaml"), "--model.init_args.policy.name", "builtin:tiny",
          "--data.init_args.train.limit", "8", "--data.init_args.val",
          "{id: {path: builtin:organism, split: id, limit: 6}, ood: {path: builtin:organism, split: ood, limit: 6}}",
          "--steer.multipliers", "[-4, 0, 4]", "--steer.out", str(out)])
    progress = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    # one line per batch of items (each batch: every layer and multiplier), with the time so far and the time left
    assert len(progress) == 2 and all(re.search(r"\(elapsed \d:\d\d:\d\d, ETA \d:\d\d:\d\d\)$", p) for p in progress)
    rows = list(csv.DictReader(open(out / "steer.csv")))
    assert {"set", "layer", "multiplier", "p_match", "match_rate", "n"} <= set(rows[0])
    assert len(rows) == 2 * 2 * 3                                         # sets x layers (builtin:tiny: 2) x mult
    assert {r["set"] for r in rows} == {"id", "ood"} and {r["n"] for r in rows} == {"6"}
    zero = [r["p_match"] for r in rows if r["set"] == "id" and float(r["multiplier"]) == 0]
    assert len(set(zero)) == 1                                            # multiplier 0: the same for every layer
    summary = list(csv.DictReader(open(out / "steer_summary.csv")))
    assert len(summary) == 4 and {"steerability", "anti_steerable"} <= set(summary[0])
    assert (out / "steer.png").stat().st_size > 1000 and (out / "steer_summary.md").exists()
    assert SteeringVector.load(out / "vector.safetensors").n_pairs == 8
    with pytest.raises(SystemExit) as e:                                  # a bad option: exit 2, one paragraph
        main(["steer", "--config", str(REPO / "configs" / "steer.yaml"), "--steer.method", "magic"])
    assert e.value.code == 2
    # a layer the model does not have (builtin:tiny: 2 blocks) is refused, with or without a saved vector
    # (the vector path had evaluated layer 7 as 7 % 2 = 1)
    for vector in ([], ["--steer.vector", str(out / "vector.safetensors")]):
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            main(["steer", "--config", str(REPO / "configs" / "steer.yaml"), "--model.init_args.policy.name",
                  "builtin:tiny", "--data.init_args.train.limit", "8", "--data.init_args.val",
                  "{id: {path: builtin:organism, split: id, limit: 6}}", "--steer.layers", "[7]", *vector,
                  "--steer.out", str(tmp_path / "out_of_range")])
        assert e.value.code == 2, vector
        assert "layer 7 does not exist: the model has 2 blocks, so a layer is 0..1" in capsys.readouterr().err
        assert not (tmp_path / "out_of_range").exists()


@requires_shared
def test_the_real_model_recipe_runs_with_a_built_in_model_and_8_pairs(tmp_path, monkeypatch):
    """configs/examples/steer_mwe.yaml (Llama 2 7B chat, layer 13, on model-written evals) as it is, but for the
    model, the layer and the number of pairs: the data paths, template handling and outputs are the real ones."""
    from lit_align.cli import main

    monkeypatch.chdir(REPO)
    out = tmp_path / "mwe"
    main(["steer", "--config", str(REPO / "configs" / "examples" / "steer_mwe.yaml"),
          "--model.init_args.policy", "{name: builtin:tiny}", "--steer.layers", "[1]", "--data.init_args.train.limit", "8",
          "--data.init_args.val.lm.limit", "8", "--data.init_args.val.human.limit", "8", "--steer.out", str(out)])
    rows = list(csv.DictReader(open(out / "steer.csv")))
    assert {r["set"] for r in rows} == {"lm", "human"} and {r["layer"] for r in rows} == {"1"}
    assert {float(r["multiplier"]) for r in rows} == {-1, -0.5, 0, 0.5, 1}
    assert SteeringVector.load(out / "vector.safetensors").n_pairs == 8


def _tiny_ab(eval_batch_size: int):
    """builtin:tiny (eval mode), a data module of builtin:ab (16 training pairs, 10 id pairs, padded pair layout)
    and the CAA vector of its training pairs at every layer."""
    from lit_align.modeling.models import ModelSpec, load_model, load_tokenizer

    torch.manual_seed(0)
    spec = ModelSpec("builtin:tiny")
    tokenizer = load_tokenizer(spec)
    model = load_model(spec, tokenizer).eval()
    dm = AlignDataModule(train={"path": "builtin:ab", "limit": 16},
                         val={"id": {"path": "builtin:ab", "split": "id", "limit": 10}}, eval_batch_size=eval_batch_size,
                         max_length=64)
    dm.connect(tokenizer, LAYOUTS["pair"])
    dm.setup("fit")
    return model, dm, extract_from_data(model, dm, "train", layers="all")


def test_the_grid_with_one_prompt_pass_per_item_equals_steering_each_setting():
    """contrast_margins_grid (what `lit_align steer` runs for positions after_prompt: each prompt once, its key/value
    cache reused by every layer and multiplier) gives the margins of a Steering hook at each (layer, multiplier)
    over the full rows, item by item; batches of several items, answers of the chat template, multiplier 0."""
    from lit_align.steering.vectors import contrast_margins_grid

    model, dm, vector = _tiny_ab(eval_batch_size=4)
    multipliers = [-8.0, 0.0, 3.0]
    seen = []
    grid = contrast_margins_grid(model, dm.eval_loader("val_id"), vector.directions, multipliers, on_batch=seen.append)
    assert seen == [4, 4, 2] and set(grid) == {(layer, m) for layer in vector.layers for m in multipliers}
    for layer in vector.layers:
        for m in multipliers:
            with vector.apply(model, m, [layer], "after_prompt", check="none") as steering:
                expected = contrast_margins(model, dm.eval_loader("val_id"), steering)
            assert torch.allclose(grid[(layer, m)], expected, atol=1e-4), (layer, m)
    assert not torch.allclose(grid[(0, 3.0)], grid[(0, 0.0)], atol=1e-2)   # the multiplier does move the margins


@pytest.mark.parametrize("positions", ["after_prompt", "all"])
def test_steered_pair_logps_run_each_prompt_once_with_the_padded_rows_numbers(positions):
    """CAA's evaluation (pair_logps) runs each item's prompt once for both answers; under a Steering it gives the
    padded rows' numbers: after_prompt steers the answers from their first token and not the prompt, all steers both."""
    from lit_align.steering.vectors import pair_logps

    model, dm, vector = _tiny_ab(eval_batch_size=5)
    results = {}
    for m in (0.0, 6.0):
        with vector.apply(model, m, [1], positions, check="none") as steering:
            padded = []
            for batch in dm.eval_loader("val_id"):
                steering.set_prompt_lengths(batch)
                with torch.no_grad():
                    padded.append(sequence_logps(model, batch).logps)
            results[m] = (pair_logps(model, dm.eval_loader("val_id"), steering), torch.cat(padded))
    for m, (shared, padded) in results.items():
        assert torch.allclose(shared, padded, atol=1e-4), m
    assert not torch.allclose(results[6.0][0], results[0.0][0], atol=1e-2)   # the steering did act
