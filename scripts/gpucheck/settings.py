"""What the check runs on: the model shapes (Qwen2-0.5B- and Qwen2-1.5B-shaped; tiny ones in their place for
dry runs) and the Settings each mode (GPU run or dry run) decides: sizes, steps, time budgets."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    """A model built from a config with random init (bench.save_model), tied embeddings, the built-in tokenizer."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    arch: str = "qwen2"


# Qwen2-0.5B's and Qwen2-1.5B's shapes (hidden, intermediate, layers, heads, kv heads, vocabulary).
QWEN2_05B = Shape("Qwen2-0.5B-shaped", 896, 4864, 24, 14, 2, 151936)
QWEN2_15B = Shape("Qwen2-1.5B-shaped", 1536, 8960, 28, 12, 2, 151936)
TINY_A = Shape("tiny (in 0.5B's place)", 32, 64, 2, 2, 1, 1000)
TINY_B = Shape("tiny (in 1.5B's place)", 48, 96, 2, 2, 1, 1000)


@dataclass
class Settings:
    """Everything the mode (GPU or dry run) decides."""

    dry_run: bool
    device: str                     # cuda | cpu
    precision: str                  # bf16 (bf16-mixed) | fp32 (32-true): the speed rows
    shapes: tuple[Shape, Shape]     # the speed section's models: all rows on the first, a subset on the second
    batch: int                      # pairs (examples) per step in the speed rows
    max_length: int
    warmup: int                     # untimed steps per speed row
    steps: int                      # timed steps per speed row
    words: dict                     # synthetic text lengths in words (lo, hi): prompt, answer, prefix, continuation
    equality_batch: int
    strategy_model: str             # the strategies section's model (a built-in one: its data is builtin:sft)
    strategy_steps: int
    budgets: dict                   # section -> seconds
    row_limit: float                # seconds one row may take at most
    threads: int                    # torch CPU threads per row
    perturb: str | None = None      # the fp32 equality row whose compared loss is moved (--perturb; dry runs)

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"


def settings_for(dry_run: bool, threads: int, perturb: str | None = None) -> Settings:
    if dry_run:
        return Settings(True, "cpu", "fp32", (TINY_A, TINY_B), batch=2, max_length=96, warmup=0, steps=1,
                        words=dict(prompt=(5, 25), answer=(2, 12), prompt_short=(3, 8), prefix=(10, 25),
                                   continuation=(2, 6)),
                        equality_batch=2, strategy_model="builtin:tiny", strategy_steps=3,
                        # generous: CI runs this beside other tests on 2 cores; the GPU budgets are the real ones
                        budgets=dict(speed_0=300, speed_1=300, equality=300, strategies=300, lora=300),
                        row_limit=300, threads=threads, perturb=perturb)
    # GPU: batch 8 x up to 1024 tokens; 2 untimed + 5 timed steps. Budgets sum to 430 s (+ ~15 s start; and
    # --budget caps the whole): < 8 min. The speed sections include building their model (~5 and ~15 s).
    return Settings(False, "cuda", "bf16", (QWEN2_05B, QWEN2_15B), batch=8, max_length=1024, warmup=2, steps=5,
                    words=dict(prompt=(80, 420), answer=(20, 170), prompt_short=(40, 120), prefix=(250, 500),
                               continuation=(15, 60)),
                    equality_batch=4, strategy_model="builtin:small", strategy_steps=4,
                    budgets=dict(speed_0=140, speed_1=110, equality=50, strategies=90, lora=40),
                    row_limit=100, threads=threads)
