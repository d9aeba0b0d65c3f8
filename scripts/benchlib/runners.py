"""The rows: lit_align and TRL training the same model on the same data (SFT, IW-SFT, DPO, prefix-DPO; GRPO beside
TRL's GRPOTrainer), fully or with the same LoRA adapter (--lora), and the prefix-sharing forward + backward with its
FLOP model."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from benchlib.cases import Case, length_reward
from benchlib.measure import Meter, _slots, sequence_tokens


# -- LoRA (--lora R): the same adapter on both sides --------------------------------------------------------


def lora_spec(args):
    """--lora R as lit_align's LoraSpec (rank R, alpha 2R, no dropout, every linear layer but the LM head), or None:
    full fine-tuning. (gpu_check's rows pass no `lora`: full fine-tuning.)"""
    from lit_align.modeling.models import LoraSpec

    r = getattr(args, "lora", 0)
    return LoraSpec(r=r, alpha=2 * r, dropout=0.0, target_modules="all-linear") if r else None


def peft_config(args):
    """lora_spec's adapter as TRL takes it (`peft_config` of its trainers), or None. lit_align's load_model builds
    the same LoraConfig (task CAUSAL_LM) from a LoraSpec."""
    spec = lora_spec(args)
    if spec is None:
        return None
    from peft import LoraConfig

    return LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                      target_modules=spec.target_modules, task_type="CAUSAL_LM")



# -- lit_align ----------------------------------------------------------------------------------------------


def run_lit_align(case: Case, args, model_dir: Path, data: Path, cache_dir: str) -> dict:
    import lightning as L

    from lit_align.data import AlignDataModule
    from lit_align.modeling.models import ModelSpec
    from lit_align.objectives import DPO, IWSFT, SFT, OptimSpec, PrefixDPO
    from lit_align.objectives.reference import ReferenceSpec

    meter = Meter(args.device)
    policy = ModelSpec(name=str(model_dir), lm_head=case.lm_head, dtype="float32", lora=lora_spec(args))
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
            meter.start(module)  # (a copied reference is a submodule)

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


def _lightning_precision(args) -> str:
    return {"fp32": "32-true", "bf16": "bf16-mixed"}[args.precision]



# -- TRL ----------------------------------------------------------------------------------------------------


def _train_timed(trainer, meter, warmup: int) -> dict:
    """Train a TRL trainer with the meter timing every optimizer step; its result after `warmup` steps."""
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            meter.start(*[m for m in (trainer.model, getattr(trainer, "ref_model", None)) if m is not None])

        def on_step_end(self, *a, **k):
            meter.step_end()

    trainer.add_callback(Timer())
    trainer.train()
    return meter.result(warmup)


def run_trl(case: Case, args, model_dir: Path, data: Path, out_dir: str) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer

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
                             processing_class=tokenizer, peft_config=peft_config(args))
    else:
        from trl import DPOConfig, DPOTrainer

        dataset = Dataset.from_list([{"prompt": r["prompt"], "chosen": assistant(r["chosen"]),
                                      "rejected": assistant(r["rejected"])} for r in rows])
        config = DPOConfig(**common, beta=0.1, precompute_ref_log_probs=case.reference == "precomputed")
        # (with a peft_config, TRL's reference is the policy with its adapter off: no ref_model is loaded)
        trainer = DPOTrainer(model=str(model_dir), args=config, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=peft_config(args))

    collate = trainer.data_collator

    def counting_collator(examples):
        batch = collate(examples)
        meter.tokens.append(int(batch["attention_mask"].sum()))
        meter.real.append(int(batch["attention_mask"].sum()))
        meter.slots.append(batch["attention_mask"].numel())
        return batch

    trainer.data_collator = counting_collator

    return _train_timed(trainer, meter, args.warmup)



# -- online RL: GRPO beside TRL's GRPOTrainer ---------------------------------------------------------------


def run_lit_align_grpo(case: Case, args, model_dir: Path, data: Path, cache_dir: str) -> dict:
    import lightning as L

    from lit_align.data import AlignDataModule
    from lit_align.modeling.models import ModelSpec
    from lit_align.objectives import GRPO, OptimSpec

    meter = Meter(args.device)
    obj = GRPO(policy=ModelSpec(name=str(model_dir), dtype="float32", lora=lora_spec(args)),
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
            meter.start(module)

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
    from transformers import AutoTokenizer
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
                          processing_class=AutoTokenizer.from_pretrained(model_dir), peft_config=peft_config(args))
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

    return _train_timed(trainer, meter, args.warmup)



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

