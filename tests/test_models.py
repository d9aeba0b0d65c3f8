"""Models: the built-in tiny model, a local Hugging Face directory by path, LoRA, and the final export."""

import lightning.pytorch as pl
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_align.callbacks import ExportHF
from lit_align.data import AlignDataModule
from lit_align.errors import LitAlignError
from lit_align.modeling.models import LoraSpec, ModelSpec, load_model, load_tokenizer, missing_model, save_hf
from lit_align.objectives import SFT, OptimSpec

IDS = torch.tensor([[3, 50, 120, 7, 200, 11]])


def _fit(model, tmp_path, steps=2):
    dm = AlignDataModule(train={"path": "builtin:sft", "limit": 16}, batch_size=4, max_length=64)
    dm.connect(model.tokenizer, model.layout)
    export = ExportHF(dirpath=str(tmp_path / "export"))
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[export],
                         default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    return tmp_path / "export"


def test_a_path_that_does_not_exist_is_known_before_any_load(tmp_path, monkeypatch, tokenizer):
    """What looks like a path (starts with . / ~, holds two /, or its first part is a local directory) and does
    not exist is said at once, for fit and score alike; `org/name` stays a hub name."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    for name in ("d/nomodel", "./nomodel", "/no/such/model", "~/no-such-model-xyz", "a/b/c"):
        assert "does not exist" in missing_model(name), name
    for name in ("org/name", "gpt2", "d", "builtin:tiny", "builtin:nope"):
        assert missing_model(name) is None, name
    with pytest.raises(LitAlignError, match="Could not load the tokenizer of 'd/nomodel': the local directory "
                                            "d/nomodel does not exist"):
        load_tokenizer(ModelSpec("d/nomodel"))
    with pytest.raises(LitAlignError, match="Could not load the model 'd/nomodel': the local directory"):
        load_model(ModelSpec("d/nomodel"), tokenizer)


def test_builtin_models_are_deterministic_and_sized(tokenizer):
    a = load_model(ModelSpec("builtin:tiny"), tokenizer)
    b = load_model(ModelSpec("builtin:tiny"), tokenizer)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert a.config.vocab_size == len(tokenizer)
    assert sum(p.numel() for p in load_model(ModelSpec("builtin:small"), tokenizer).parameters()) > 5e5
    with pytest.raises(LitAlignError, match="builtin:tiny"):
        load_tokenizer(ModelSpec("builtin:huge"))


def test_local_directory_by_path_with_its_tokenizer_and_dtype(tmp_path, tokenizer):
    save_hf(load_model(ModelSpec("builtin:tiny"), tokenizer), tokenizer, tmp_path / "m")
    spec = ModelSpec(str(tmp_path / "m"), dtype="bfloat16")
    tok = load_tokenizer(spec)
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    assert tok("Count from 3 to 7.")["input_ids"] == tokenizer("Count from 3 to 7.")["input_ids"]
    assert next(load_model(spec, tok).parameters()).dtype == torch.bfloat16
    with pytest.raises(LitAlignError, match="Could not load"):
        load_tokenizer(ModelSpec(str(tmp_path / "missing")))


def test_full_model_export_reloads_with_same_logits(tmp_path):
    model = SFT(policy=ModelSpec("builtin:tiny"), optim=OptimSpec(lr=1e-2))
    path = _fit(model, tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(path)
    assert AutoTokenizer.from_pretrained(path).chat_template
    with torch.no_grad():
        assert torch.allclose(reloaded(IDS).logits, model.model(IDS).logits, atol=1e-6)


@pytest.mark.parametrize("merge", [False, True])
def test_lora_trains_only_the_adapter_and_exports(tmp_path, merge):
    from peft import PeftModel

    model = SFT(policy=ModelSpec("builtin:tiny", lora=LoraSpec(r=4, merge_on_export=merge)),
                optim=OptimSpec(lr=1e-2))
    model.configure_model()
    base_before = {n: p.clone() for n, p in model.model.named_parameters() if "lora_" not in n}
    path = _fit(model, tmp_path)
    after = dict(model.model.named_parameters())
    assert all(torch.equal(base_before[n], after[n]) for n in base_before)  # frozen base
    with torch.no_grad():
        expected = model.model(IDS).logits
        with model.model.disable_adapter():
            assert not torch.allclose(model.model(IDS).logits, expected)  # the adapter learned something
    if merge:  # a plain full model
        reloaded = AutoModelForCausalLM.from_pretrained(path)
        assert not (path / "adapter_config.json").exists()
    else:  # an adapter over the base
        assert (path / "adapter_config.json").exists()
        base = load_model(ModelSpec("builtin:tiny"), model.tokenizer)
        reloaded = PeftModel.from_pretrained(base, path)
    with torch.no_grad():
        assert torch.allclose(reloaded(IDS).logits, expected, atol=1e-5)
