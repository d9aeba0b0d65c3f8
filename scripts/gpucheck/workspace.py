"""The shared model and data: random-init models built from a Shape (in the parent, on CPU) and synthetic
records of chosen lengths that fit untruncated, in the check's work directory."""

from __future__ import annotations

import argparse
import itertools
import random
from pathlib import Path

import bench
from gpucheck.settings import Settings, Shape


class Workspace:
    """Model directories (built on first use, in the parent: CPU only) and synthetic data files, in a temp dir."""

    def __init__(self, settings: Settings, root: Path):
        self.settings, self.root = settings, root
        self.models: dict[Shape, Path] = {}
        self.data: dict[str, tuple[Path, int]] = {}

    def model(self, shape: Shape) -> Path:
        if shape not in self.models:
            args = argparse.Namespace(hidden=shape.hidden, intermediate=shape.intermediate, layers=shape.layers,
                                      heads=shape.heads, kv_heads=shape.kv_heads)
            self.models[shape] = bench.save_model(args, shape.vocab, self.root / f"model_{len(self.models)}",
                                                  arch=shape.arch)
        return self.models[shape]

    def pairs(self, kind: str) -> tuple[Path, int]:
        """kind "pairs": {prompt: messages, chosen, rejected}; "prefix": the same with a long shared `prefix` and
        short partial continuations (no end token). Enough for one speed row; all fit max_length untruncated."""
        if kind not in self.data:
            s = self.settings
            need = s.batch * (s.warmup + s.steps + 1)
            rows = synthetic_pairs(s.words, seed=0, prefix=kind == "prefix")
            self.data[kind] = bench.write_fitting_pairs(itertools.islice(rows, 50 * need), self.model(s.shapes[0]),
                                                        s.max_length, need, self.root / f"{kind}.jsonl")
        return self.data[kind]


def synthetic_pairs(words: dict, seed: int, prefix: bool):
    """Endless records of random words from the built-in tokenizer's corpus, lengths drawn from `words`."""
    from lit_align.data.synthetic import corpus

    vocabulary = sorted({w for text in corpus() for w in text.split() if w.isalpha()})
    rng = random.Random(seed)

    def text(lo_hi: tuple[int, int]) -> str:
        return " ".join(rng.choice(vocabulary) for _ in range(rng.randint(*lo_hi)))

    while True:
        if prefix:
            yield {"prompt": [{"role": "user", "content": text(words["prompt_short"])}],
                   "prefix": text(words["prefix"]), "chosen": " " + text(words["continuation"]), "rejected": " " + text(words["continuation"]),
                   "partial": True}
        else:
            yield {"prompt": [{"role": "user", "content": text(words["prompt"])}], "chosen": text(words["answer"]),
                   "rejected": text(words["answer"])}
