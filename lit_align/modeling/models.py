"""Load a causal LM and its tokenizer: a Hugging Face hub name, a local directory, or a tiny model built in code.

Built-in names (no download, no files):
    builtin:tiny   Llama-style, hidden 64, 2 layers   (~0.1 M params)  — tests
    builtin:small  Llama-style, hidden 128, 4 layers  (~0.8 M params)  — quickstart / demos
Both use a byte-level BPE tokenizer trained in code (0.01 s) on the built-in tasks' text, with a
ChatML-style chat template whose end of turn `<|im_end|>` is the EOS token. Both start from random init.

A built-in PRETRAINED model is built once by a deterministic recipe and cached on disk (lit_align/builtin/pretrain.py):
    builtin:organism  the model organism (data/organism.py): knows which foods are sweet, answers A/B
                      questions, dislikes sweets (~0.8 M params; ~2-3 minutes to build on 2 CPU cores)
    builtin:organism-seed1, builtin:organism-seed2   other builds of it (pretraining seeds 1 and 2)
    builtin:organism-v2 (and -seed1, -seed2)   organism v2 (data/organism_v2.py): the same world, a latent taste
                      that earlier answers reveal, per-food dislike strengths and a letter bias
It then loads like a local directory (its own tokenizer, the same chat template).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Literal
from pathlib import Path

import torch
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel,
                          PreTrainedTokenizerBase)

from lit_align.builtin.parts import BUILTIN_MODELS, CHAT_TEMPLATE, chat_tokenizer, llama_config, train_bpe  # noqa: F401
from lit_align.errors import LitAlignError
from lit_align.modeling.logprobs import set_lm_head

BUILTIN_PREFIX = "builtin:"

@dataclass
class LoraSpec:
    """LoRA adapter (peft) applied on top of the loaded model."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    """Module names to adapt, or "all-linear"."""
    merge_on_export: bool = False
    """Save the merged full model at the end of fit instead of the adapter alone."""


@dataclass
class ModelSpec:
    """Which causal LM to train (the "policy")."""

    name: str = "builtin:tiny"
    """Hugging Face hub name, local directory, or builtin:tiny / builtin:small."""
    dtype: str = "float32"
    """Weights dtype: float32, bfloat16 or float16 (mixed precision is set by trainer.precision)."""
    lora: LoraSpec | None = None
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False
    attn_implementation: str | None = None
    """e.g. "sdpa", "eager", "flash_attention_2"; None lets transformers choose."""
    init_seed: int = 0
    """Seed for the random init of built-in models (so policy and reference start identical)."""
    quantization: str | None = None
    """"4bit": load the weights in 4-bit NF4 (bitsandbytes; QLoRA with `lora`). Needs a CUDA GPU."""
    extra: dict = field(default_factory=dict)
    """Extra keyword arguments for from_pretrained."""
    lm_head: Literal["targets", "all"] = "targets"
    """Where the vocabulary projection runs (logprobs.py): "targets", only on positions that predict a loss
    target, a chunk at a time (faster, far less memory); "all", on every position (the plain forward)."""
    logits_chunk: int = 0
    """Target positions per vocabulary-projection chunk with lm_head: targets (0: ~2^23 logits a chunk)."""


def policy_spec(cfg: dict) -> ModelSpec:
    """The policy ModelSpec of a config as plain data (`model.init_args.policy`: a mapping, or a name)."""
    from lit_align.config import spec_from_dict

    model = cfg.get("model") or {}
    section = model.get("init_args", model) if isinstance(model, dict) else {}
    values = section.get("policy") or {}
    if isinstance(values, str):
        values = {"name": values}
    return spec_from_dict(ModelSpec, values, "model.init_args.policy", {"lora": LoraSpec})


def check_model_spec(spec: ModelSpec, name: str = "policy") -> None:
    """Refuse settings that would fail deep inside peft / transformers, before anything is loaded."""
    if spec.lora is not None:
        lora = spec.lora
        if isinstance(lora.r, bool) or not isinstance(lora.r, int) or lora.r < 1:
            raise LitAlignError(f"{name}.lora.r (the adapter's rank) must be an integer >= 1, not {lora.r!r}")
        if lora.alpha <= 0:
            raise LitAlignError(f"{name}.lora.alpha must be > 0, not {lora.alpha}")
        if not 0 <= lora.dropout < 1:
            raise LitAlignError(f"{name}.lora.dropout must be in [0, 1), not {lora.dropout}")
    _dtype(spec.dtype)


def _looks_like_a_path(name: str) -> bool:
    """A local path rather than a hub id ("org/name" or "name")."""
    return (name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name
            or Path(name).expanduser().parent.is_dir() and Path(name).expanduser().parent != Path("."))


def missing_model(name: str) -> str | None:
    """Why `name` cannot be loaded, known before any attempt, or None (try it): a local path (_looks_like_a_path)
    that does not exist. Said at once, since from_pretrained would first try the hub with it, five times over a
    minute when the hub cannot be reached. (With HF_HUB_OFFLINE set a hub name not in the cache fails at once.)"""
    if name.startswith(BUILTIN_PREFIX) or Path(name).expanduser().exists() or not _looks_like_a_path(name):
        return None
    return (f"the local directory {name} does not exist. Give an existing directory (saved with "
            "save_pretrained), a hub name, or builtin:tiny / builtin:small")


def _from_pretrained(load, name: str, what: str, **kwargs):
    """`load(name, **kwargs)` (a from_pretrained; a built-in pretrained model's directory for its name), or a
    LitAlignError "Could not load <what>: why", at once for a path that does not exist."""
    problem = missing_model(name)
    if problem is None:
        try:
            return load(resolve_name(name), **kwargs)
        except (OSError, ValueError) as e:
            problem = _load_problem(name, e)
    raise LitAlignError(f"Could not load {what}: {problem}.") from None


def _load_problem(name: str, e: Exception) -> str:
    """Why a model or tokenizer could not be loaded, in a sentence (not "Repo id must be in the form ...")."""
    import os

    path = Path(name).expanduser()
    if path.is_dir():
        return f"the directory {name} does not hold a loadable model and tokenizer ({type(e).__name__}: {e})"
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline:
        return (f"'{name}' is not a local directory and is not in the Hugging Face cache, and the hub cannot be "
                "reached (HF_HUB_OFFLINE is set). Download it first on a machine with network access (e.g. "
                "`hf download NAME`), or give a local directory")
    return (f"{type(e).__name__}: {e}. Give a local directory, a hub name reachable from this machine, or "
            "builtin:tiny / builtin:small")


def _builtin_corpus() -> list[str]:
    from lit_align.data.synthetic import corpus  # the text of the built-in tasks

    return corpus()


@functools.lru_cache(maxsize=4)
def _builtin_tokenizer_json(vocab_size: int) -> str:
    """The BPE of builtin:tiny / builtin:small, trained on the built-in tasks' text."""
    return train_bpe(_builtin_corpus(), vocab_size)


def builtin_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerBase:
    return chat_tokenizer(_builtin_tokenizer_json(vocab_size))


def _builtin_key(name: str) -> str:
    from lit_align.builtin.packaged import PACKAGED
    from lit_align.builtin.pretrain import BUILTIN_PRETRAINED

    key = name[len(BUILTIN_PREFIX):]
    if key not in BUILTIN_MODELS and key not in BUILTIN_PRETRAINED and key not in PACKAGED:
        raise LitAlignError(f"Unknown built-in model '{name}'. Choose one of: "
                            + ", ".join(BUILTIN_PREFIX + k for k in (*BUILTIN_MODELS, *BUILTIN_PRETRAINED, *PACKAGED)))
    return key


def resolve_name(name: str) -> str:
    """A built-in model's name -> its cached directory: a pretrained one built first (pretrain.py), a packaged real
    model converted first (builtin/packaged.py), if needed; other names as given."""
    if name.startswith(BUILTIN_PREFIX):
        from lit_align.builtin.packaged import PACKAGED, converted_dir
        from lit_align.builtin.pretrain import BUILTIN_PRETRAINED, ensure_built

        key = _builtin_key(name)
        if key in BUILTIN_PRETRAINED:
            return str(ensure_built(key))
        if key in PACKAGED:
            return str(converted_dir(key))
    return name


def is_random_builtin(name: str) -> bool:
    """builtin:tiny / builtin:small: built in code from random init (no files)."""
    return name.startswith(BUILTIN_PREFIX) and _builtin_key(name) in BUILTIN_MODELS


def load_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerBase:
    if is_random_builtin(spec.name):
        return builtin_tokenizer()
    tok = _from_pretrained(AutoTokenizer.from_pretrained, spec.name, f"the tokenizer of '{spec.name}'",
                           trust_remote_code=spec.trust_remote_code)
    if tok.pad_token_id is None:  # padding is masked out everywhere, any id will do
        tok.pad_token = tok.eos_token
    return tok


def _dtype(name: str) -> torch.dtype:
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise LitAlignError(f"Unknown dtype '{name}': use float32, bfloat16 or float16.") from None


HEADS = ("lm", "score")
"""What sits on the decoder: "lm", the vocabulary projection of a causal LM (AutoModelForCausalLM); "score", a
scalar per position (AutoModelForSequenceClassification with num_labels=1: a reward model, objectives/
reward_model.py), read at the last token that is not padding."""


def load_model(spec: ModelSpec, tokenizer: PreTrainedTokenizerBase, head: str = "lm") -> PreTrainedModel:
    """The model of `spec` with the given `head` (HEADS; LoRA applied if asked). A "score" head on a causal LM's
    name is that LM's decoder with a new scalar head (transformers' sequence-classification class of the same
    architecture); config.pad_token_id is the tokenizer's, which is how transformers finds the last real token."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, not {head!r}")
    if spec.quantization is not None:
        check_quantization(spec)
    if is_random_builtin(spec.name):
        from transformers import LlamaForCausalLM, LlamaForSequenceClassification

        config = llama_config(tokenizer, 2048, **BUILTIN_MODELS[_builtin_key(spec.name)],
                              **({"num_labels": 1} if head == "score" else {}))
        if spec.attn_implementation:
            config._attn_implementation = spec.attn_implementation
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.init_seed)
            model = (LlamaForCausalLM if head == "lm" else LlamaForSequenceClassification)(config)
        model = model.to(_dtype(spec.dtype))
    else:
        kwargs = dict(dtype=_dtype(spec.dtype), trust_remote_code=spec.trust_remote_code, **spec.extra)
        if spec.attn_implementation:
            kwargs["attn_implementation"] = spec.attn_implementation
        if spec.quantization is not None:
            kwargs.update(quantization_kwargs(spec))
        if head == "score":  # (a causal LM's checkpoint: its decoder loads, the score head starts random)
            kwargs.update(num_labels=1, pad_token_id=tokenizer.pad_token_id)
        auto = AutoModelForCausalLM if head == "lm" else AutoModelForSequenceClassification
        model = _from_pretrained(auto.from_pretrained, spec.name, f"the model '{spec.name}'", **kwargs)
    if spec.quantization is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=spec.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if spec.lora is not None:
        from peft import LoraConfig, get_peft_model

        # SEQ_CLS: peft keeps the new score head fully trainable (modules_to_save=["score", "classifier"])
        model = get_peft_model(model, LoraConfig(
            r=spec.lora.r, lora_alpha=spec.lora.alpha, lora_dropout=spec.lora.dropout,
            target_modules=spec.lora.target_modules, task_type="CAUSAL_LM" if head == "lm" else "SEQ_CLS",
        ))
    if head == "lm":
        try:
            set_lm_head(model, spec.lm_head, spec.logits_chunk)
        except ValueError as e:
            raise LitAlignError(f"policy: {e}") from None
    return model


# -- 4-bit QLoRA ----------------------------------------------------------------------------------------------


def check_quantization(spec: ModelSpec) -> None:
    """Refuse, with a plain message, a quantized model that cannot work here (before any download)."""
    if spec.quantization != "4bit":
        raise LitAlignError(f"policy.quantization must be 4bit or null, not '{spec.quantization}'")
    if spec.lora is None:
        raise LitAlignError("policy.quantization: 4bit trains LoRA adapters on frozen 4-bit weights (QLoRA): "
                            "set policy.lora as well")
    if spec.name.startswith(BUILTIN_PREFIX):
        raise LitAlignError("policy.quantization: 4bit needs a saved model (a hub name or a directory), not a "
                            f"built-in one ('{spec.name}')")
    if not torch.cuda.is_available():
        raise LitAlignError("policy.quantization: 4bit (QLoRA, bitsandbytes) needs a CUDA GPU, and this machine "
                            "has none. Train without quantization on CPU (e.g. LoRA alone).")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise LitAlignError("policy.quantization: 4bit needs the bitsandbytes package: pip install bitsandbytes") \
            from None


def quantization_kwargs(spec: ModelSpec) -> dict:
    """from_pretrained arguments for NF4 weights with double quantization, computing in bf16 (or the dtype)."""
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if spec.dtype == "float32" else _dtype(spec.dtype)
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=compute, bnb_4bit_quant_storage=compute)
    return {"quantization_config": config, "device_map": {"": torch.cuda.current_device()}}


# -- sharding (FSDP2 through Lightning's ModelParallelStrategy, FSDP on GPUs) ---------------------------------

# Class names of the decoder layers of the models loaded so far (Hugging Face `_no_split_modules`): the unit of
# sharding. Filled by `decoder_layers`, read by `fsdp_auto_wrap_policy`.
_DECODER_LAYER_NAMES: set[str] = {"LlamaDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer", "MistralDecoderLayer",
                                  "GemmaDecoderLayer", "Gemma2DecoderLayer", "Phi3DecoderLayer", "GPTNeoXLayer"}


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of `model` (also inside a peft wrapper, and once sharded: FSDP2 turns a block's
    class into a subclass, FSDP<name>, hence the look along the class hierarchy), in order."""
    for m in model.modules():
        _DECODER_LAYER_NAMES.update(getattr(m, "_no_split_modules", None) or [])
    return [m for m in model.modules() if any(c.__name__ in _DECODER_LAYER_NAMES for c in type(m).__mro__)]


def fsdp_auto_wrap_policy(module: torch.nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
    """FSDP (v1) auto-wrap policy: one FSDP unit per decoder layer (configs/strategies/fsdp.yaml)."""
    return True if recurse else type(module).__name__ in _DECODER_LAYER_NAMES


def shard_model(model: torch.nn.Module, device_mesh, reshard_after_forward: bool = True) -> torch.nn.Module:
    """FSDP2: `fully_shard` each decoder layer, then the whole model, over the data-parallel dimension of
    Lightning's ModelParallelStrategy mesh. Frozen weights (a LoRA base, a reference model) are sharded too;
    they are gathered for each layer's forward and need no gradient reduction."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # torch < 2.6
        from torch.distributed._composable.fsdp import fully_shard
    names = device_mesh.mesh_dim_names or ()
    if "tensor_parallel" in names and device_mesh["tensor_parallel"].size() > 1:
        raise LitAlignError("lit_align shards with FSDP2 only (no tensor parallelism): set the strategy's "
                            "tensor_parallel_size: 1 and data_parallel_size: <devices x nodes> "
                            "(configs/strategies/fsdp2.yaml)")
    mesh = device_mesh["data_parallel"] if device_mesh.ndim > 1 and "data_parallel" in names else device_mesh
    layers = decoder_layers(model)
    if not layers:
        raise LitAlignError(f"FSDP2: found no decoder layers in {type(model).__name__} to shard")
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return model


def save_hf(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: str | Path,
            merge_lora: bool = False) -> Path:
    """Save in Hugging Face format: full model, LoRA adapter, or the LoRA merged into the base model."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if merge_lora and hasattr(model, "merge_and_unload"):
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    from lit_align.noise import no_save_bar

    with no_save_bar():  # (transformers' "Writing model shards" bar: noise in any log, and inside a run's own bar)
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return path
