"""Side-by-side speed and memory of lit_align's objectives, lit_align's naive paths and TRL, in one run.

    bash scripts/setup.sh bench                  # lit_align + the bench extra (trl, matplotlib)
    .venv/bin/python scripts/bench.py            # ~2-10 M param Llama, fp32, CPU: a few minutes
    .venv/bin/python scripts/bench.py --sections grpo --optimizer fused   # GRPO beside TRL's GRPOTrainer only
    .venv/bin/python scripts/bench.py --hidden 896 --layers 24 --heads 14 --kv-heads 2 --intermediate 4864 \
        --vocab 151936 --batch 8 --max-length 1024 --device cuda --precision bf16   # ~0.5 B on a GPU
    .venv/bin/python scripts/bench.py --model builtin:smollm2-135m-instruct --lora 8 --sections speed \
        --objectives SFT DPO --impls lit_align TRL    # a real model (its own tokenizer), LoRA on both sides

Every row trains the SAME model (one random init saved to a directory that both libraries load, or the folder
of `--model`: a local Hugging Face folder or a lit_align builtin: name, with its own tokenizer and chat template),
on the SAME examples in the SAME order (HH-RLHF pairs that fit `--max-length` untruncated, no shuffle), with the
same batch size, precision, optimizer (AdamW), learning rate and no gradient checkpointing; fully, or with the
same LoRA adapter on both sides (`--lora R`: rank R, alpha 2R, no dropout, every linear layer; DPO's reference is
then the policy with its adapter off on both sides). Each row runs in a fresh forked process:
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
Set BENCH_VERBOSE=1 to see the rows' own output. This file is the command; the parts are in scripts/benchlib/:
cases.py (the rows, the shared model and data), measure.py (Meter, a fresh process per row), runners.py
(lit_align, TRL, prefix sharing), tables.py. Ratios are against the TRL row of the same objective (>1: lit_align faster / TRL uses more memory).

The prefix-sharing table times one forward + backward of prefix-DPO's policy log-probs on synthetic pairs
with the shared context computed once (lit_align: `shared_context: true`, LM head on targets) vs once per
continuation (naive: `shared_context: false`, with the LM head on target positions or on every position),
at several shared-prefix : continuation token ratios, next to the ideal speedup from counting FLOPs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.disable_progress_bar()

# The parts (scripts/benchlib/); their names are bench's too, as gpu_check.py and the tests use them (__all__).
from benchlib.cases import (HH, REPO, Case, cases, count_parameters, grpo_cases, hh_pairs,  # noqa: E402
                            length_reward, memory_cases, model_folder, prepare_pairs, prepare_prompts, save_model,
                            write_fitting_pairs)
from benchlib.measure import Meter, in_fresh_process, sequence_tokens  # noqa: E402
from benchlib.runners import (flops, prefix_case, run_lit_align, run_lit_align_grpo, run_trl,  # noqa: E402
                              run_trl_grpo)
from benchlib.tables import grpo_table, memory_table, mfu, prefix_table, speed_table  # noqa: E402

__all__ = ["HH", "REPO", "Case", "cases", "count_parameters", "grpo_cases", "hh_pairs", "length_reward",
           "memory_cases", "model_folder", "prepare_pairs", "prepare_prompts", "save_model", "write_fitting_pairs",
           "Meter", "in_fresh_process", "sequence_tokens", "flops", "prefix_case", "run_lit_align",
           "run_lit_align_grpo", "run_trl", "run_trl_grpo", "grpo_table", "memory_table", "mfu", "prefix_table",
           "speed_table", "main"]


def main(argv=None) -> None:
    from lit_align.objectives.base import OPTIMIZER_IMPLEMENTATIONS, OptimSpec

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", help="train this model instead of a random init: a local Hugging Face folder or a "
                   "lit_align builtin: name (e.g. builtin:smollm2-135m-instruct; builtin:tiny / small are saved to a "
                   "folder first), with its own tokenizer; --hidden ... --vocab are then unused, and the memory table "
                   "(random inits of several vocabularies) is skipped")
    p.add_argument("--lora", type=int, default=0, metavar="R",
                   help="LoRA rank on both sides (alpha 2R, dropout 0, all linear layers; DPO's reference: the adapter "
                   "off); 0: full fine-tuning. The prefix table (a full forward + backward) is then skipped, and "
                   "MFU still counts 6 x all parameters per token")
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
    p.add_argument("--impls", nargs="*", help="speed table: only these implementations' rows (e.g. lit_align TRL; "
                   "others: 'lit_align naive', 'lit_align packed', 'lit_align grouped', ...)")
    p.add_argument("--out", help="also write the tables (markdown) to this file")
    args = p.parse_args(argv)
    import importlib
    import importlib.util

    if args.trl == "auto" and importlib.util.find_spec("trl") is None:
        sys.exit("TRL is not installed: `bash scripts/setup.sh bench` (or pip install -e .[bench]), "
                 "or run with --trl off for lit_align's rows only")
    if args.lora < 0:
        p.error("--lora takes a rank >= 1 (0: full fine-tuning)")
    every = cases(argparse.Namespace(**{**vars(args), "objectives": None, "impls": None}))
    for flag, chosen, names in (("--objectives", args.objectives, [c.objective for c in every]),
                                ("--impls", args.impls, [c.impl for c in every])):
        if set(chosen or ()) - set(names):  # (a misspelt name would silently drop its rows)
            p.error(f"{flag}: no speed-table rows named {sorted(set(chosen) - set(names))}; the rows' names: "
                    + ", ".join(repr(n) for n in dict.fromkeys(names)))
    skipped = {"memory": args.model and "it compares random inits of several vocabularies; --model fixes the model",
               "prefix": args.lora and "it times the full model's forward + backward, not a LoRA adapter's"}
    for section, why in skipped.items():
        if section in args.sections and why:
            print(f"{section} table skipped: {why}", flush=True)
            args.sections = [s for s in args.sections if s != section]
    # import everything the children need once, here: each forked row then starts in a second
    for module in (["lightning", "lit_align.objectives"] + (["trl"] if args.trl != "off" else [])
                   + (["peft"] if args.lora else [])):
        importlib.import_module(module)

    work = Path(tempfile.mkdtemp(prefix="lit_align_bench_"))
    if args.model:
        model_dir = model_folder(args.model, work / "model")
    else:
        model_dir = save_model(args, args.vocab, work / f"model_{args.vocab}")
    data, n = prepare_pairs(args, model_dir, work / "pairs.jsonl")
    params = count_parameters(model_dir)
    model = (f"{args.model}, {params / 1e6:.1f} M parameters" if args.model else
             f"Llama-style, {params / 1e6:.1f} M parameters (hidden {args.hidden}, {args.layers} layers, vocab "
             f"{args.vocab}, tied)")
    tuning = f"LoRA r={args.lora} (alpha {2 * args.lora}, all-linear)" if args.lora else "full fine-tuning"
    header = (f"{model}, {tuning}, "
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
