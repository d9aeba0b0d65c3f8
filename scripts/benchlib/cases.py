"""What each row runs, and the model and data every row shares: one random init saved for both libraries (or a
given model's folder, --model), the HH-RLHF pairs (or their prompts) that fit, the GRPO rows' reward."""

from __future__ import annotations

import dataclasses
import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
HH = REPO / ".." / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"


@dataclass
class Case:
    objective: str          # SFT, IW-SFT, DPO, DPO (cached reference), prefix-DPO (lit_align only)
    impl: str               # lit_align, lit_align naive, lit_align grouped, TRL
    lm_head: str = "targets"
    group_by_length: int = 0
    packed: bool = False     # DPO: one row per pair; SFT, IW-SFT: several examples per row
    pack_length: int | None = None  # SFT, IW-SFT packed: the longest row (None: --max-length)
    reference: str = "copy"  # lit_align: copy | cache | disable_adapter; TRL: live | precomputed | disable_adapter
    vocab: int | None = None
    extra: dict = field(default_factory=dict)  # lit_align: objective arguments (e.g. shared_context); TRL: config


def cases(args) -> list[Case]:
    rows = [
        Case("SFT", "TRL"), Case("SFT", "lit_align"), Case("SFT", "lit_align naive", lm_head="all"),
        Case("SFT", "lit_align packed", packed=True),
        Case("SFT", "lit_align packed, rows of 4x", packed=True, pack_length=4 * args.max_length),
        Case("IW-SFT", "lit_align"), Case("IW-SFT", "lit_align packed", packed=True),
        Case("DPO", "TRL", reference="live"), Case("DPO", "lit_align"),
        Case("DPO", "lit_align naive", lm_head="all"),
        Case("DPO", "lit_align grouped", group_by_length=256),
        Case("DPO", "lit_align packed", packed=True),
        Case("DPO", "lit_align packed + grouped", packed=True, group_by_length=256),
        Case("DPO (cached reference)", "TRL", reference="precomputed"),
        Case("DPO (cached reference)", "lit_align", reference="cache"),
        Case("DPO (cached reference)", "lit_align packed + grouped", reference="cache", packed=True,
             group_by_length=256),
    ]
    if args.trl == "off":
        rows = [r for r in rows if r.impl != "TRL"]
    rows = [r for r in rows if (not args.objectives or r.objective in args.objectives)
            and (not args.impls or r.impl in args.impls)]
    return _lora_reference(rows, args)


def memory_cases(args) -> list[Case]:
    rows = []
    for v in args.memory_vocabs:
        rows += [Case("DPO", "TRL", reference="live", vocab=v), Case("DPO", "lit_align", vocab=v),
                 Case("DPO", "lit_align naive", lm_head="all", vocab=v)]
    return _lora_reference([r for r in rows if args.trl != "off" or r.impl != "TRL"], args)


def _lora_reference(rows: list[Case], args) -> list[Case]:
    """With --lora, the DPO rows' live reference is the policy with its adapter off on both sides (TRL's own choice
    for a peft model, whatever the config says; lit_align's reference mode disable_adapter), so that neither side
    holds a second copy of the model; a cached reference stays cached."""
    if not args.lora:
        return rows
    return [dataclasses.replace(r, reference="disable_adapter")
            if r.objective == "DPO" and r.reference in ("copy", "live") else r for r in rows]


def grpo_cases(args) -> list[Case]:
    rows = [Case("GRPO", "TRL"), Case("GRPO", "lit_align")]
    return [r for r in rows if args.trl != "off" or r.impl != "TRL"]



# -- the shared model and data ------------------------------------------------------------------------------


def save_model(args, vocab: int, path: Path, arch: str = "llama") -> Path:
    """One random init of a Llama-style (or Qwen2: `arch` "qwen2", biases on q/k/v) model with the built-in
    tokenizer, saved for both libraries. Sizes from args.hidden, .intermediate, .layers, .heads, .kv_heads."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from lit_align.modeling.models import builtin_tokenizer

    if (path / "config.json").exists():
        return path
    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[arch]
    tok = builtin_tokenizer()
    config = config_cls(vocab_size=vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                        num_hidden_layers=args.layers, num_attention_heads=args.heads,
                        num_key_value_heads=args.kv_heads, max_position_embeddings=4096, tie_word_embeddings=True,
                        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    torch.manual_seed(0)
    model = model_cls(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    model.generation_config.save_pretrained(path)
    return path


def model_folder(name: str, path: Path) -> Path:
    """The folder of --model `name`: a local Hugging Face folder as it is, a lit_align `builtin:` name resolved as
    lit_align resolves it (a pretrained or packaged one to its cached folder, built or converted first if need be),
    and one built in code from random init (builtin:tiny, builtin:small) saved to `path` first, since TRL loads only
    folders. Anything else (a hub name, a missing folder, an unknown builtin: name) is a SystemExit saying why."""
    from lit_align.errors import LitAlignError
    from lit_align.modeling.models import (ModelSpec, is_random_builtin, load_model, load_tokenizer, resolve_name,
                                           save_hf)

    try:
        if is_random_builtin(name):
            if not (path / "config.json").exists():
                spec = ModelSpec(name=name, dtype="float32")
                tokenizer = load_tokenizer(spec)
                save_hf(load_model(spec, tokenizer), tokenizer, path)
            return path
        folder = Path(resolve_name(name)).expanduser()
    except LitAlignError as e:
        raise SystemExit(f"--model {name}: {e}") from None
    if not (folder / "config.json").is_file():
        raise SystemExit(f"--model {name}: not a Hugging Face model folder (no {folder / 'config.json'}); give a "
                         "local folder saved with save_pretrained, or a lit_align builtin: name")
    return folder


def count_parameters(model_dir: Path) -> int:
    """The parameters of the model in `model_dir`, tied ones once, from its config (built on the meta device: no
    weights read, whatever the checkpoint's files)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return sum(p.numel() for p in model.parameters())


def prepare_pairs(args, model_dir: Path, out: Path) -> tuple[Path, int]:
    """The first HH-RLHF pairs (in a seeded shuffled order) whose prompt + longer answer fit max_length
    untruncated, as {prompt: messages, chosen, rejected} JSONL read by both libraries."""
    need = args.batch * (args.warmup + args.steps + 1)
    return write_fitting_pairs(hh_pairs(args.data), model_dir, args.max_length, need, out)


def hh_pairs(path: str):
    """HH-RLHF rows as {prompt: messages, chosen, rejected}, in a seeded shuffled order (unusable rows left out)."""
    import random

    from lit_align.data.records import split_hh

    with gzip.open(path, "rt") as f:
        rows = [json.loads(line) for line in f]
    random.Random(0).shuffle(rows)
    for i, row in enumerate(rows):
        try:
            prompt, chosen = split_hh(row["chosen"], f"{path}:{i}", "chosen")
            prompt_r, rejected = split_hh(row["rejected"], f"{path}:{i}", "rejected")
        except Exception:
            continue
        if prompt != prompt_r or chosen == rejected or not chosen.strip() or not rejected.strip():
            continue
        yield {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def write_fitting_pairs(pairs, model_dir: Path, max_length: int, need: int, out: Path) -> tuple[Path, int]:
    """The first `need` of `pairs` ({prompt, chosen, rejected[, prefix]} records) whose context + longer answer fit
    max_length untruncated with the tokenizer of `model_dir`, written as JSONL; (path, how many)."""
    from transformers import AutoTokenizer

    from lit_align.data.records import Example
    from lit_align.data.tokenize import Tokenizer, TokenizeSpec

    tok = Tokenizer(AutoTokenizer.from_pretrained(model_dir), TokenizeSpec(max_length=10 ** 6))
    kept = []
    for row in pairs:
        ex = tok(Example(prompt=row["prompt"], continuations=[row["chosen"], row["rejected"]],
                         prefix=row.get("prefix", ""), partial=row.get("partial", False)))
        if isinstance(ex, str) or len(ex.context) + max(map(len, ex.continuations)) > max_length - 2:
            continue  # (2 tokens of slack: TRL's chat-template rendering may end a completion differently)
        kept.append(row)
        if len(kept) == need:
            break
    out.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return out, len(kept)


def prepare_prompts(args, model_dir: Path, out: Path) -> tuple[Path, int]:
    """The prompts (chat messages) of the first HH-RLHF pairs that fit max_length (prepare_pairs's order), enough
    for every step of a GRPO row, as {prompt} JSONL: a prompt alone for lit_align, the prompt column for TRL."""
    need = args.grpo_prompts * (args.warmup + args.steps + 1)
    pairs, n = write_fitting_pairs(hh_pairs(args.data), model_dir, args.max_length, need,
                                   out.with_name(out.stem + "_pairs.jsonl"))
    rows = [{"prompt": json.loads(line)["prompt"]} for line in pairs.read_text().splitlines()]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out, n


def length_reward(prompts, completions, *records, **kwargs) -> list[float]:
    """The GRPO rows' reward, the same function on both sides (deterministic): a completion's length in characters
    / 100. lit_align passes completions as text; TRL, for chat prompts, as [{"role": "assistant", "content"}]."""
    return [len(c if isinstance(c, str) else c[-1]["content"]) / 100 for c in completions]

