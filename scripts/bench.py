"""Side-by-side speed and memory of lit_align's objectives, lit_align's naive paths and TRL, in one run.

    bash scripts/setup.sh bench                  # lit_align + the bench extra (trl, matplotlib)
    .venv/bin/python scripts/bench.py            # ~2-10 M param Llama, fp32, CPU: a few minutes
    .venv/bin/python scripts/bench.py --sections grpo --optimizer fused   # GRPO beside TRL's GRPOTrainer only
    .venv/bin/python scripts/bench.py --hidden 896 --layers 24 --heads 14 --kv-heads 2 --intermediate 4864 \
        --vocab 151936 --batch 8 --max-length 1024 --device cuda --precision bf16   # ~0.5 B on a GPU

Every row trains the SAME model (one random init saved to a directory that both libraries load), on the
SAME examples in the SAME order (HH-RLHF pairs that fit `--max-length` untruncated, no shuffle), with the
same batch size, precision, optimizer (AdamW) and no gradient checkpointing. Each row runs in a fresh
forked process:
    step      median wall time between consecutive optimizer-step ends after `--warmup` steps (data
              loading, forward, backward, optimizer: everything a user waits for)
    tokens/s  real (non-padding) tokens of the step's sequences / step; a pair counts prompt + chosen and
              prompt + rejected, however an implementation computes them
    memory    peak resident memory during training minus the resident memory before it (the model, its
              reference and the data are loaded before): activations, gradients, optimizer state,
              temporaries. On CUDA: torch.cuda.max_memory_allocated.
GRPO (`--sections grpo`, opt-in): lit_align's online objective beside TRL's GRPOTrainer on the same model and
HH-RLHF prompts (chat messages), `--grpo-prompts` prompts x `--grpo-generations` completions per step, up to
`--grpo-max-new-tokens` tokens each, temperature 1, top_k 0, top_p 1, beta 0 (no reference model), GRPO advantages
and loss (sequence mean), one update per sample batch, the same deterministic reward (length_reward), no
accumulation. Per row: step time (median, sampling included), samples/s (completions / s), the median sampling
time within the step, real prompt + completion tokens per step, the mean completion length, and peak memory.
Set BENCH_VERBOSE=1 to see the rows' own output. Ratios are against the TRL row of the same objective (>1: lit_align faster / TRL uses more memory).

The prefix-sharing table times one forward + backward of prefix-DPO's policy log-probs on synthetic pairs
with the shared context computed once (lit_align: `shared_context: true`, LM head on targets) vs once per
continuation (naive: `shared_context: false`, with the LM head on target positions or on every position),
at several shared-prefix : continuation token ratios, next to the ideal speedup from counting FLOPs.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.disable_progress_bar()

REPO = Path(__file__).resolve().parents[1]
HH = REPO / ".." / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"


# -- what each row runs -------------------------------------------------------------------------------------


@dataclass
class Case:
    objective: str          # SFT, IW-SFT, DPO, DPO (cached reference), prefix-DPO (lit_align only)
    impl: str               # lit_align, lit_align naive, lit_align grouped, TRL
    lm_head: str = "targets"
    group_by_length: int = 0
    packed: bool = False     # DPO: one row per pair; SFT, IW-SFT: several examples per row
    pack_length: int | None = None  # SFT, IW-SFT packed: the longest row (None: --max-length)
    reference: str = "copy"  # lit_align: copy | cache; TRL: live | precomputed
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
    return [r for r in rows if not args.objectives or r.objective in args.objectives]


def memory_cases(args) -> list[Case]:
    rows = []
    for v in args.memory_vocabs:
        rows += [Case("DPO", "TRL", reference="live", vocab=v), Case("DPO", "lit_align", vocab=v),
                 Case("DPO", "lit_align naive", lm_head="all", vocab=v)]
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


# -- measuring ----------------------------------------------------------------------------------------------


class Meter:
    """Step-end timestamps and real tokens per step; peak memory above the level when `start()` ran."""

    def __init__(self, device: str):
        self.device, self.ends, self.tokens = device, [], []
        self.real, self.slots = [], []  # real tokens and token slots (real + padding) of the model inputs
        self.samples, self.completion_tokens, self.sampling_s = [], [], []  # online RL: per step's rollout

    def padding(self) -> float:
        return 1 - sum(self.real) / sum(self.slots) if self.slots else float("nan")

    def start(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (VmHWM) to the current RSS
            self.base = _status_kb("VmRSS") * 1024

    def peak_mb(self) -> float:
        return self.peak_total_mb() - self.base / 2 ** 20

    def peak_total_mb(self) -> float:
        """The peak itself: torch.cuda.max_memory_allocated (model and reference included), or peak RSS."""
        if self.device == "cuda":
            return torch.cuda.max_memory_allocated() / 2 ** 20
        return _status_kb("VmHWM") * 1024 / 2 ** 20

    def step_end(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())

    def result(self, warmup: int) -> dict:
        gaps = [b - a for a, b in zip(self.ends[warmup:], self.ends[warmup + 1:])]
        toks = self.tokens[warmup + 1: warmup + 1 + len(gaps)]
        step = statistics.median(gaps)
        out = {"step_s": step, "tokens_per_s": sum(toks) / sum(gaps), "peak_mb": self.peak_mb(),
               "peak_total_mb": self.peak_total_mb(), "tokens_per_step": statistics.mean(toks),
               "padding": self.padding()}
        if self.samples:  # online RL: completions per second, sampling time, completion length
            timed = slice(warmup + 1, warmup + 1 + len(gaps))
            samples = self.samples[timed]
            out.update(samples_per_s=sum(samples) / sum(gaps), samples_per_step=statistics.mean(samples),
                       sampling_s=statistics.median(self.sampling_s[timed]),
                       completion_length=sum(self.completion_tokens[timed]) / sum(samples))
        return out

    def rollout(self, prompt_tokens: int, completion_lengths: list[int], seconds: float) -> None:
        """One step's samples (online RL): real prompt tokens (once per completion), each completion's length, and
        the time spent sampling them."""
        self.tokens.append(prompt_tokens + sum(completion_lengths))
        self.samples.append(len(completion_lengths))
        self.completion_tokens.append(sum(completion_lengths))
        self.sampling_s.append(seconds)


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def sequence_tokens(batch: dict) -> int:
    """Real tokens of the sequences of a lit_align batch: prompt + continuation per row, whatever the layout."""
    if "context_mask" in batch:  # shared-context layout: each context counts once per continuation
        return int(batch["context_mask"].sum()) * batch["num_continuations"] + int(batch["attention_mask"].sum())
    if "token_mask" in batch:    # packed layout: the context is in the row once
        return int(batch["token_mask"].sum()) + int(batch["context_tokens"].sum()) * (batch["num_continuations"] - 1)
    return int(batch["attention_mask"].sum())


# -- lit_align ----------------------------------------------------------------------------------------------


def run_lit_align(case: Case, args, model_dir: Path, data: Path, cache_dir: str) -> dict:
    import lightning as L

    from lit_align.data import AlignDataModule
    from lit_align.modeling.models import ModelSpec
    from lit_align.objectives import DPO, IWSFT, SFT, OptimSpec, PrefixDPO
    from lit_align.objectives.reference import ReferenceSpec

    meter = Meter(args.device)
    policy = ModelSpec(name=str(model_dir), lm_head=case.lm_head, dtype="float32")
    optim = OptimSpec(lr=1e-5, schedule="constant", implementation=args.optimizer)
    if case.objective == "SFT":
        obj = SFT(policy=policy, optim=optim, packed=case.packed, **case.extra)
    elif case.objective == "IW-SFT":
        obj = IWSFT(policy=policy, optim=optim, packed=case.packed, **case.extra)
    elif case.objective == "prefix-DPO":   # records with a `prefix`; shared_context in case.extra
        obj = PrefixDPO(policy=policy, optim=optim, beta=0.1,
                        reference=ReferenceSpec(mode=case.reference, cache_dir=cache_dir), **case.extra)
    else:
        obj = DPO(policy=policy, optim=optim, beta=0.1, packed=case.packed,
                  reference=ReferenceSpec(mode=case.reference, cache_dir=cache_dir), **case.extra)
    dm = AlignDataModule(train=str(data), batch_size=args.batch, max_length=args.max_length, shuffle=False,
                         group_by_length=case.group_by_length, pack_length=case.pack_length)
    dm.connect(obj.tokenizer, obj.layout)
    obj.configure_model()  # the policy (and a reference copy) load before the memory baseline, as TRL's do

    class Timer(L.Callback):
        def on_train_start(self, trainer, module):
            meter.start()

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            from lit_align.data.collate import padding_fraction

            meter.tokens.append(sequence_tokens(batch))
            meter.slots.append(_slots(batch))
            meter.real.append(round(_slots(batch) * (1 - padding_fraction(batch))))

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            meter.step_end()

    trainer = L.Trainer(accelerator=args.device, devices=1, precision=_lightning_precision(args), logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        max_steps=args.warmup + args.steps + 1, limit_val_batches=0, num_sanity_val_steps=0,
                        callbacks=[Timer()])
    trainer.fit(obj, datamodule=dm)
    return meter.result(args.warmup)


def _slots(batch: dict) -> int:
    """Token slots of a lit_align batch's model inputs (real + padding), whatever the layout."""
    if "token_mask" in batch:
        return batch["token_mask"].numel()
    return batch["attention_mask"].numel() + (batch["context_mask"].numel() if "context_mask" in batch else 0)


def _lightning_precision(args) -> str:
    return {"fp32": "32-true", "bf16": "bf16-mixed"}[args.precision]


# -- TRL ----------------------------------------------------------------------------------------------------


def run_trl(case: Case, args, model_dir: Path, data: Path, out_dir: str) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback

    meter = Meter(args.device)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    common = dict(output_dir=out_dir, per_device_train_batch_size=args.batch, max_length=args.max_length,
                  learning_rate=1e-5, lr_scheduler_type="constant", max_steps=args.warmup + args.steps + 1,
                  bf16=args.precision == "bf16", fp16=False, gradient_checkpointing=False, logging_steps=10 ** 6,
                  save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0, seed=0,
                  use_cpu=args.device == "cpu", train_sampling_strategy="sequential", **case.extra)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assistant = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
    if case.objective == "SFT":
        from trl import SFTConfig, SFTTrainer

        dataset = Dataset.from_list([{"prompt": r["prompt"], "completion": assistant(r["chosen"])} for r in rows])
        trainer = SFTTrainer(model=str(model_dir), args=SFTConfig(**common), train_dataset=dataset,
                             processing_class=tokenizer)
    else:
        from trl import DPOConfig, DPOTrainer

        dataset = Dataset.from_list([{"prompt": r["prompt"], "chosen": assistant(r["chosen"]),
                                      "rejected": assistant(r["rejected"])} for r in rows])
        config = DPOConfig(**common, beta=0.1, precompute_ref_log_probs=case.reference == "precomputed")
        trainer = DPOTrainer(model=str(model_dir), args=config, train_dataset=dataset, processing_class=tokenizer)

    collate = trainer.data_collator

    def counting_collator(examples):
        batch = collate(examples)
        meter.tokens.append(int(batch["attention_mask"].sum()))
        meter.real.append(int(batch["attention_mask"].sum()))
        meter.slots.append(batch["attention_mask"].numel())
        return batch

    trainer.data_collator = counting_collator

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            meter.start()

        def on_step_end(self, *a, **k):
            meter.step_end()

    trainer.add_callback(Timer())
    trainer.train()
    return meter.result(args.warmup)


# -- prefix sharing -----------------------------------------------------------------------------------------


def prefix_case(args, model_dir: Path, ratio: int) -> dict:
    """Forward + backward of prefix-DPO's policy log-probs on B synthetic pairs whose shared context is
    `ratio` x the continuation length: shared context (computed once) vs joined (once per continuation)."""
    from transformers import AutoModelForCausalLM

    from lit_align.modeling.logprobs import joined_context_logps, set_lm_head, shared_context_logps

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(args.device)
    set_lm_head(model, "targets")
    B, L = args.prefix_batch, args.continuation
    C = ratio * L
    g = torch.Generator().manual_seed(ratio)
    high = 500  # ids of the built-in tokenizer's range
    batch = {"context_ids": torch.randint(3, high, (B, C), generator=g),
             "context_mask": torch.ones(B, C, dtype=torch.long),
             "input_ids": torch.randint(3, high, (2 * B, L), generator=g),
             "attention_mask": torch.ones(2 * B, L, dtype=torch.long), "num_continuations": 2}
    batch["labels"] = batch["input_ids"].clone()
    batch = {k: v.to(args.device) if torch.is_tensor(v) else v for k, v in batch.items()}
    modes = {"naive, full head": (joined_context_logps, "all"), "naive": (joined_context_logps, "targets"),
             "shared": (shared_context_logps, "targets")}
    spans = {name: [] for name in modes}
    for i in range(args.prefix_repeats + 1):  # the modes take turns, so load drift hits them alike
        for name, (fn, head) in modes.items():
            set_lm_head(model, head)
            model.zero_grad(set_to_none=True)
            if args.device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn(model, batch).logps.sum().backward()
            if args.device == "cuda":
                torch.cuda.synchronize()
            if i:  # the first round warms up
                spans[name].append(time.perf_counter() - start)
    times = {name: statistics.median(t) for name, t in spans.items()}
    cfg = model.config
    shared = flops(cfg, C, L, shared=True)
    return {"ratio": ratio, "context": C, "continuation": L, "times": times,
            "ideal": {"naive, full head": flops(cfg, C, L, shared=False, head_everywhere=True) / shared,
                      "naive": flops(cfg, C, L, shared=False) / shared}}


def flops(cfg, C: int, L: int, shared: bool, head_everywhere: bool = False) -> float:
    """Forward FLOPs of one pair (backward is ~2x the same terms, so the ratio is unchanged). Linear layers
    scale with tokens (2 x weights per token), attention with (query, key) token pairs (2 x 2 x hidden per
    pair and layer: scores and the weighted sum), the LM head with the target tokens (2 x H x V each; with
    `head_everywhere`, every position of the naive path's rows)."""
    H, layers = cfg.hidden_size, cfg.num_hidden_layers
    kv = cfg.num_key_value_heads * (H // cfg.num_attention_heads)
    per_token = 2 * layers * (2 * H * H + 2 * H * kv + 3 * H * cfg.intermediate_size)
    pairs = lambda q, k0: q * k0 + q * (q + 1) / 2  # noqa: E731  q new tokens after k0 cached ones, causal
    head = 2 * H * cfg.vocab_size * (2 * (C + L) if head_everywhere else 2 * L)
    if shared:
        tokens, attn_pairs = C + 2 * L, pairs(C, 0) + 2 * pairs(L, C)
    else:
        tokens, attn_pairs = 2 * (C + L), 2 * pairs(C + L, 0)
    return tokens * per_token + 4 * H * layers * attn_pairs + head


# -- online RL: GRPO beside TRL's GRPOTrainer ---------------------------------------------------------------


def grpo_cases(args) -> list[Case]:
    rows = [Case("GRPO", "TRL"), Case("GRPO", "lit_align")]
    return [r for r in rows if args.trl != "off" or r.impl != "TRL"]


def length_reward(prompts, completions, *records, **kwargs) -> list[float]:
    """The GRPO rows' reward, the same function on both sides (deterministic): a completion's length in characters
    / 100. lit_align passes completions as text; TRL, for chat prompts, as [{"role": "assistant", "content"}]."""
    return [len(c if isinstance(c, str) else c[-1]["content"]) / 100 for c in completions]


def prepare_prompts(args, model_dir: Path, out: Path) -> tuple[Path, int]:
    """The prompts (chat messages) of the first HH-RLHF pairs that fit max_length (prepare_pairs's order), enough
    for every step of a GRPO row, as {prompt} JSONL: a prompt alone for lit_align, the prompt column for TRL."""
    need = args.grpo_prompts * (args.warmup + args.steps + 1)
    pairs, n = write_fitting_pairs(hh_pairs(args.data), model_dir, args.max_length, need,
                                   out.with_name(out.stem + "_pairs.jsonl"))
    rows = [{"prompt": json.loads(line)["prompt"]} for line in pairs.read_text().splitlines()]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out, n


def run_lit_align_grpo(case: Case, args, model_dir: Path, data: Path, cache_dir: str) -> dict:
    import lightning as L

    from lit_align.data import AlignDataModule
    from lit_align.modeling.models import ModelSpec
    from lit_align.objectives import GRPO, OptimSpec

    meter = Meter(args.device)
    obj = GRPO(policy=ModelSpec(name=str(model_dir), dtype="float32"),
               optim=OptimSpec(lr=1e-5, schedule="constant", implementation=args.optimizer),
               rewards=length_reward, num_generations=args.grpo_generations,
               max_new_tokens=args.grpo_max_new_tokens, temperature=1.0, top_p=1.0, top_k=0, beta=0.0,
               advantage="grpo", loss_aggregation="sequence_mean", log_samples_every_n_steps=0, **case.extra)
    dm = AlignDataModule(train=str(data), batch_size=args.grpo_prompts, max_length=args.max_length, shuffle=False)
    dm.connect(obj.tokenizer, obj.layout)
    obj.configure_model()
    sample = obj.sample

    def timed_sample(batch):
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        contexts, completions = sample(batch)
        if args.device == "cuda":
            torch.cuda.synchronize()
        meter.rollout(sum(map(len, contexts)), [len(y) for y in completions], time.perf_counter() - start)
        return contexts, completions

    obj.sample = timed_sample

    class Timer(L.Callback):
        def on_train_start(self, trainer, module):
            meter.start()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            meter.step_end()

    trainer = L.Trainer(accelerator=args.device, devices=1, precision=_lightning_precision(args), logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        max_steps=args.warmup + args.steps + 1, limit_val_batches=0, num_sanity_val_steps=0,
                        callbacks=[Timer()])
    trainer.fit(obj, datamodule=dm)
    return meter.result(args.warmup)


def run_trl_grpo(case: Case, args, model_dir: Path, data: Path, out_dir: str) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    meter = Meter(args.device)
    dataset = Dataset.from_list([json.loads(line) for line in data.read_text().splitlines()])
    P, G = args.grpo_prompts, args.grpo_generations
    config = GRPOConfig(
        output_dir=out_dir, per_device_train_batch_size=P * G, gradient_accumulation_steps=1, num_generations=G,
        max_completion_length=args.grpo_max_new_tokens, temperature=1.0, top_p=1.0, top_k=0, min_p=None,
        repetition_penalty=1.0, beta=0.0, num_iterations=1, loss_type="grpo", scale_rewards="group", epsilon=0.2,
        mask_truncated_completions=False, shuffle_dataset=False, use_vllm=False, log_completions=False,
        learning_rate=1e-5, lr_scheduler_type="constant", max_steps=args.warmup + args.steps + 1,
        bf16=args.precision == "bf16", fp16=False, gradient_checkpointing=False, logging_steps=10 ** 6,
        save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0, seed=0,
        use_cpu=args.device == "cpu",
        # lit_align's --optimizer: fused is the same torch AdamW; otherwise torch's default for the device
        # (for_loop on CPU, foreach on CUDA), which transformers' adamw_torch leaves unset
        optim="adamw_torch_fused" if args.optimizer == "fused" else "adamw_torch", **case.extra)
    trainer = GRPOTrainer(model=str(model_dir), reward_funcs=length_reward, args=config, train_dataset=dataset,
                          processing_class=AutoTokenizer.from_pretrained(model_dir))
    generate, rollout = trainer._generate, trainer._generate_and_score_completions
    spans = []

    def timed_generate(prompts):  # tokenizing the prompts (chat template) and sampling the completions
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = generate(prompts)
        if args.device == "cuda":
            torch.cuda.synchronize()
        spans.append(time.perf_counter() - start)
        return out

    def counting_rollout(inputs):
        out = rollout(inputs)
        meter.rollout(int(out["prompt_mask"].sum()), out["completion_mask"].sum(1).tolist(), spans.pop())
        return out

    trainer._generate, trainer._generate_and_score_completions = timed_generate, counting_rollout

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            meter.start()

        def on_step_end(self, *a, **k):
            meter.step_end()

    trainer.add_callback(Timer())
    trainer.train()
    return meter.result(args.warmup)


def grpo_table(results: list[tuple[Case, dict]]) -> str:
    """Side by side: step time, samples/s, the sampling part of the step, tokens, memory; ratios lit_align / TRL."""
    trl = {c.objective: r for c, r in results if c.impl == "TRL"}
    lines = ["| objective | implementation | step (ms) | samples/s | of which sampling (ms) | tokens/step | "
             "completion length | peak memory (MB) | samples/s vs TRL | memory vs TRL |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c, r in results:
        ref = trl.get(c.objective)
        speed = f"{r['samples_per_s'] / ref['samples_per_s']:.2f}x" if ref and c.impl != "TRL" else ""
        mem = f"{r['peak_mb'] / ref['peak_mb']:.2f}x" if ref and c.impl != "TRL" else ""
        lines.append(f"| {c.objective} | {c.impl} | {r['step_s'] * 1e3:.0f} | {r['samples_per_s']:.1f} | "
                     f"{r['sampling_s'] * 1e3:.0f} | {r['tokens_per_step']:.0f} | {r['completion_length']:.1f} | "
                     f"{r['peak_mb']:.0f} | {speed} | {mem} |")
    return "\n".join(lines)


# -- running each row in a fresh process --------------------------------------------------------------------


def _child(fn, queue, threads, log, *a):
    try:
        if not os.environ.get("BENCH_VERBOSE"):  # the libraries' banners and progress bars; errors come back below
            out = os.open(log or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(out, 1)
            os.dup2(out, 2)
        torch.set_num_threads(threads)
        queue.put(("ok", fn(*a)))
    except BaseException:  # report, don't hang the parent
        queue.put(("error", traceback.format_exc()))


def in_fresh_process(fn, threads: int, *a, timeout: float | None = None, log: str | None = None):
    """Run fn(*a) in a forked child with `threads` torch threads (fresh peak-memory counter, nothing left
    over from earlier rows) and return its result. The child's output goes to the file `log` (appended), or
    nowhere. A child still running after `timeout` seconds is killed (TimeoutError); one that dies without
    answering (a crash, the OOM killer) or raises is a RuntimeError holding its traceback. The parent must
    not have initialised CUDA (a forked child could not use it)."""
    import queue as queues

    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, queue, threads, log) + a)
    proc.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            status, value = queue.get(timeout=1.0)
            break
        except queues.Empty:
            if not proc.is_alive():
                try:  # its answer may have reached the pipe just as it exited
                    status, value = queue.get(timeout=1.0)
                    break
                except queues.Empty:
                    raise RuntimeError(f"the child process died (exit code {proc.exitcode}) without answering") \
                        from None
            if deadline is not None and time.monotonic() > deadline:
                proc.kill()
                proc.join()
                raise TimeoutError(f"killed after {timeout:.0f} s") from None
    proc.join()
    if status != "ok":
        raise RuntimeError(value)
    return value


# -- tables -------------------------------------------------------------------------------------------------


def mfu(case: Case, result: dict, params: int, peak_tflops: float) -> float:
    """Model FLOPs utilisation: 6 x parameters per sequence token (forward 2, backward 4; the tied LM head
    counted as a matmul on every token, attention left out), + 2 x parameters for a live reference's
    forward (DPO, prefix-DPO; not a cached one), over the device's peak."""
    per_token = 6 * params + (2 * params if case.objective in ("DPO", "prefix-DPO") else 0)
    return result["tokens_per_s"] * per_token / (peak_tflops * 1e12)


def speed_table(results: list[tuple[Case, dict]], params: int = 0, peak_tflops: float | None = None) -> str:
    trl = {c.objective: r for c, r in results if c.impl == "TRL"}
    lines = ["| objective | implementation | step (ms) | tokens/s | peak memory (MB) | padding | tokens/s vs TRL | "
             "memory vs TRL |" + (" MFU |" if peak_tflops else ""), "|---|---|---:|---:|---:|---:|---:|---:|"
             + ("---:|" if peak_tflops else "")]
    for c, r in results:
        ref = trl.get(c.objective)
        speed = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}x" if ref and c.impl != "TRL" else ""
        mem = f"{r['peak_mb'] / ref['peak_mb']:.2f}x" if ref and c.impl != "TRL" else ""
        name = c.impl + (f" (ref {c.reference})" if c.objective.startswith("DPO") else "")
        lines.append(f"| {c.objective} | {name} | {r['step_s'] * 1e3:.0f} | {r['tokens_per_s']:.0f} | "
                     f"{r['peak_mb']:.0f} | {100 * r['padding']:.0f}% | {speed} | {mem} |"
                     + (f" {100 * mfu(c, r, params, peak_tflops):.1f}% |" if peak_tflops else ""))
    return "\n".join(lines)


def memory_table(results: list[tuple[Case, dict]]) -> str:
    lines = ["| vocabulary | implementation | peak memory (MB) | vs TRL | step (ms) |", "|---:|---|---:|---:|---:|"]
    trl = {c.vocab: r for c, r in results if c.impl == "TRL"}
    for c, r in results:
        ref = trl.get(c.vocab)
        ratio = f"{r['peak_mb'] / ref['peak_mb']:.2f}x" if ref and c.impl != "TRL" else ""
        lines.append(f"| {c.vocab} | {c.impl} | {r['peak_mb']:.0f} | {ratio} | {r['step_s'] * 1e3:.0f} |")
    return "\n".join(lines)


def prefix_table(rows: list[dict]) -> str:
    lines = ["| shared prefix : continuation | tokens (context / each continuation) | naive, full head (ms) | "
             "naive (ms) | shared (ms) | speedup vs naive, full head (FLOP ideal) | speedup vs naive (FLOP ideal) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        t, ideal = r["times"], r["ideal"]
        lines.append(f"| {r['ratio']}:1 | {r['context']} / {r['continuation']} | {t['naive, full head'] * 1e3:.0f} | "
                     f"{t['naive'] * 1e3:.0f} | {t['shared'] * 1e3:.0f} | "
                     f"{t['naive, full head'] / t['shared']:.2f}x ({ideal['naive, full head']:.2f}x) | "
                     f"{t['naive'] / t['shared']:.2f}x ({ideal['naive']:.2f}x) |")
    return "\n".join(lines)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def main(argv=None) -> None:
    from lit_align.objectives.base import OPTIMIZER_IMPLEMENTATIONS, OptimSpec

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--hidden", type=int, default=192)
    p.add_argument("--intermediate", type=int, default=512)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=32000, help="model vocabulary (the tokenizer uses the first 512 ids)")
    p.add_argument("--batch", type=int, default=8, help="examples (pairs) per step")
    p.add_argument("--max-length", type=int, default=256, help="only pairs that fit untruncated are used")
    p.add_argument("--steps", type=int, default=3, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    p.add_argument("--data", default=str(HH))
    p.add_argument("--trl", choices=["auto", "off"], default="auto", help="off: lit_align rows only")
    p.add_argument("--peak-tflops", type=float, help="the device's peak dense TFLOP/s at --precision (e.g. 989 for "
                   "an H100 SXM in bf16): adds a model-FLOPs-utilisation column")
    p.add_argument("--memory-vocabs", type=int, nargs="*", default=[32000, 151936],
                   help="extra DPO memory rows at these vocabulary sizes (the main table has --vocab)")
    p.add_argument("--memory-batch", type=int, default=2, help="batch of the memory rows")
    p.add_argument("--memory-steps", type=int, default=2, help="steps of the memory rows (no warmup)")
    p.add_argument("--prefix-ratios", type=int, nargs="*", default=[1, 4, 16])
    p.add_argument("--continuation", type=int, default=64, help="prefix table: tokens per continuation")
    p.add_argument("--prefix-batch", type=int, default=4)
    p.add_argument("--prefix-repeats", type=int, default=4)
    p.add_argument("--sections", nargs="*", default=["speed", "memory", "prefix"],
                   help="tables to run, among speed, memory, prefix and grpo (GRPO beside TRL's GRPOTrainer: opt-in)")
    p.add_argument("--grpo-prompts", type=int, default=4, help="grpo: prompts per step")
    p.add_argument("--grpo-generations", type=int, default=4, help="grpo: completions per prompt (G)")
    p.add_argument("--grpo-max-new-tokens", type=int, default=16, help="grpo: the longest completion")
    p.add_argument("--optimizer", choices=list(OPTIMIZER_IMPLEMENTATIONS), default=OptimSpec.implementation,
                   help="lit_align's AdamW implementation (OptimSpec.implementation)")
    p.add_argument("--objectives", nargs="*", help="speed table: only these objectives' rows (e.g. SFT IW-SFT)")
    p.add_argument("--out", help="also write the tables (markdown) to this file")
    args = p.parse_args(argv)
    if args.trl == "auto":
        try:
            import trl  # noqa: F401
        except ImportError:
            sys.exit("TRL is not installed: `bash scripts/setup.sh bench` (or pip install -e .[bench]), "
                     "or run with --trl off for lit_align's rows only")
    # import everything the children need once, here: each forked row then starts in a second
    import lightning  # noqa: F401

    import lit_align.objectives  # noqa: F401
    if args.trl != "off":
        import trl  # noqa: F401,F811

    work = Path(tempfile.mkdtemp(prefix="lit_align_bench_"))
    model_dir = save_model(args, args.vocab, work / f"model_{args.vocab}")
    data, n = prepare_pairs(args, model_dir, work / "pairs.jsonl")
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        params = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())
    header = (f"Llama-style, {params / 1e6:.1f} M parameters (hidden {args.hidden}, {args.layers} layers, vocab "
              f"{args.vocab}, tied), "
              f"{args.precision}, {args.device} ({args.threads} threads); HH-RLHF pairs that fit {args.max_length} "
              f"tokens: {n}; batch {args.batch}; {args.steps} timed steps after {args.warmup}; AdamW {args.optimizer}; torch "
              f"{torch.__version__}")
    out = [f"`python scripts/bench.py {' '.join(sys.argv[1:] if argv is None else argv)}`".replace(" `", "`"),
           "", header, ""]
    print(header, flush=True)

    def row(case: Case, mdir: Path, **overrides) -> dict:
        runner = run_trl if case.impl == "TRL" else run_lit_align
        run_args = argparse.Namespace(**{**vars(args), **overrides})
        label = f"{case.objective} / {case.impl}" + (f" / vocab {case.vocab}" if case.vocab else "")
        print(f"  {label} ...", end="", flush=True)
        result = in_fresh_process(runner, args.threads, case, run_args, mdir, data, tempfile.mkdtemp(dir=work))
        print(f" {result['step_s'] * 1e3:.0f} ms/step, {result['tokens_per_s']:.0f} tokens/s, "
              f"{result['peak_mb']:.0f} MB", flush=True)
        return result

    if "speed" in args.sections:
        results = [(c, row(c, model_dir)) for c in cases(args)]
        table = speed_table(results, params, args.peak_tflops)
        out += ["### Speed and memory", "", table, ""]
        print("\n" + table + "\n", flush=True)
    if "memory" in args.sections and args.memory_vocabs:
        results = []
        for c in memory_cases(args):
            results.append((c, row(c, save_model(args, c.vocab, work / f"model_{c.vocab}"), batch=args.memory_batch,
                                   steps=args.memory_steps, warmup=0)))
        out += [f"### Peak memory against vocabulary size (DPO, live reference, batch {args.memory_batch})", "",
                memory_table(results), ""]
        print("\n" + memory_table(results) + "\n", flush=True)
    if "prefix" in args.sections:
        rows = [in_fresh_process(prefix_case, args.threads, args, model_dir, r) for r in args.prefix_ratios]
        out += ["### Prefix sharing (prefix-DPO policy forward + backward)", "", prefix_table(rows), ""]
        print("\n" + prefix_table(rows) + "\n", flush=True)
    if "grpo" in args.sections:
        prompts, n_prompts = prepare_prompts(args, model_dir, work / "prompts.jsonl")
        results = []
        for c in grpo_cases(args):
            runner = run_trl_grpo if c.impl == "TRL" else run_lit_align_grpo
            print(f"  {c.objective} / {c.impl} ...", end="", flush=True)
            r = in_fresh_process(runner, args.threads, c, args, model_dir, prompts, tempfile.mkdtemp(dir=work))
            print(f" {r['step_s'] * 1e3:.0f} ms/step, {r['samples_per_s']:.1f} samples/s, {r['peak_mb']:.0f} MB",
                  flush=True)
            results.append((c, r))
        title = (f"### GRPO vs TRL's GRPOTrainer ({args.grpo_prompts} prompts x {args.grpo_generations} completions "
                 f"of up to {args.grpo_max_new_tokens} tokens per step, temperature 1, beta 0; {n_prompts} HH-RLHF "
                 f"prompts)")
        out += [title, "", grpo_table(results), ""]
        print("\n" + grpo_table(results) + "\n", flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(out) + "\n")
        print(f"tables written to {args.out}")


if __name__ == "__main__":
    main()
