"""Built-in pretrained models: a deterministic pretraining recipe on built-in text, built once and cached on disk.

    builtin:organism   the model organism (data/organism.py): a Llama-style model (hidden 128, 4 layers,
                       ~0.8 M parameters) pretrained from random init on the organism's corpus: it knows
                       which foods are sweet and answers A/B questions, and it dislikes sweets.

`load_model` / `load_tokenizer` (models.py) resolve such a name to a saved Hugging Face directory:

    $LIT_ALIGN_CACHE/builtin/<name>-<recipe digest>/      (default cache: ~/.cache/lit_align)

built on first use (a rich progress bar, or a plain line every 10% when stdout is no terminal; ~2-3 minutes
on 2 CPU cores) and reused afterwards. The digest covers the whole recipe (model shape, tokenizer, corpus
generator version, optimizer, steps, seed), so changing any of it builds a new directory, never reuses a stale
one. The build writes into a temporary directory and renames it into place, so an interrupted build leaves
nothing half-written, and two processes building at once both end with the same complete directory.

The recipe: a byte-level BPE tokenizer (vocab 512, ChatML-style chat template, as builtin:tiny/small) trained
on a sample of the corpus; documents tokenized exactly as the data module tokenizes records for fine-tuning
(data/tokenize.py: the prompt through the chat template, the answer's ids appended, then the end token);
next-token loss on every token of a document; AdamW, linear warmup, cosine decay; fp32 on CPU, one fixed
seed for the init, the corpus and the batch order.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from lit_align.errors import LitAlignError
from lit_align.noise import no_save_bar

RECIPE_VERSION = 1
"""Bump when the corpus generator or the training loop changes in a way the recipe fields do not show."""


@dataclass(frozen=True)
class Recipe:
    """Everything that determines a built-in pretrained model (hashed into its cache directory name)."""

    corpus: str = "organism"
    documents: int = 24_000
    """Documents in the corpus (each seen `epochs` times)."""
    epochs: int = 1
    hidden_size: int = 128
    intermediate_size: int = 352
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vocab_size: int = 512
    batch_size: int = 16
    lr: float = 3e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    seed: int = 0
    version: int = RECIPE_VERSION

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]

    @property
    def steps(self) -> int:
        return math.ceil(self.documents * self.epochs / self.batch_size)


BUILTIN_PRETRAINED: dict[str, Recipe] = {"organism": Recipe()}


def cache_root() -> Path:
    return Path(os.environ.get("LIT_ALIGN_CACHE") or Path.home() / ".cache" / "lit_align")


def model_dir(name: str, recipe: Recipe | None = None) -> Path:
    recipe = recipe or BUILTIN_PRETRAINED[name]
    return cache_root() / "builtin" / f"{name}-{recipe.digest()}"


def is_pretrained_builtin(key: str) -> bool:
    return key in BUILTIN_PRETRAINED


def ensure_built(name: str, recipe: Recipe | None = None, quiet: bool = False) -> Path:
    """The directory of built-in pretrained model `name`, building it first if it is not cached yet."""
    recipe = recipe or BUILTIN_PRETRAINED[name]
    path = model_dir(name, recipe)
    if (path / "recipe.json").is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        if not quiet:
            print(f"lit_align: building builtin:{name} (recipe {recipe.digest()}: {recipe.steps} steps, once; "
                  f"cached in {path})", file=sys.stderr, flush=True)
        build(recipe, tmp, quiet=quiet)
        try:
            tmp.rename(path)
        except OSError:  # another process finished first: its directory is the same recipe
            if not (path / "recipe.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


# -- the recipe ---------------------------------------------------------------------------------------------

def _documents(recipe: Recipe):
    if recipe.corpus != "organism":
        raise LitAlignError(f"unknown pretraining corpus '{recipe.corpus}'")
    from lit_align.data.organism import pretraining_documents

    return pretraining_documents(recipe.documents, seed=recipe.seed)


def _tokenizer(recipe: Recipe, docs):
    """A byte-level BPE trained on the corpus's text, with the built-in models' chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from lit_align.models import CHAT_TEMPLATE

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=recipe.vocab_size, special_tokens=["<|pad|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    def text(prompt) -> str:  # a prompt is a string, None (a plain text) or chat messages
        return prompt or "" if not isinstance(prompt, list) else "\n".join(m["content"] for m in prompt)

    sample = [text(p) + "\n" + a for p, a in docs[:5000]]
    sample.append("<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n")
    tok.train_from_iterator(sample, trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|im_end|>", bos_token=None)
    hf.chat_template = CHAT_TEMPLATE
    return hf


def _token_rows(docs, tokenizer) -> list[tuple[list[int], int]]:
    """Each document as (ids, loss start): one row through the data module's tokenizer (the fine-tuning token
    layout); the loss covers a chat document's answer (the question's options are random: nothing to learn
    there) and all of a plain text."""
    from lit_align.data.records import Example
    from lit_align.data.tokenize import Tokenizer, TokenizeSpec

    tk = Tokenizer(tokenizer, TokenizeSpec(max_length=256))
    rows = []
    for prompt, answer in docs:
        ex = tk(Example(prompt=prompt, continuations=[answer]))
        if isinstance(ex, str):
            raise LitAlignError(f"pretraining document dropped ({ex}): {prompt!r} {answer!r}")
        rows.append((ex.context + ex.continuations[0], len(ex.context) if prompt is not None else 0))
    return rows


def build(recipe: Recipe, out: Path, quiet: bool = False) -> None:
    """Pretrain a model from random init by `recipe` and save it (and its tokenizer) to `out`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    t0 = time.time()
    docs = _documents(recipe)
    tokenizer = _tokenizer(recipe, docs)
    rows = _token_rows(docs, tokenizer)
    config = LlamaConfig(
        vocab_size=len(tokenizer), max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None, tie_word_embeddings=True,
        hidden_size=recipe.hidden_size, intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_hidden_layers, num_attention_heads=recipe.num_attention_heads,
        num_key_value_heads=recipe.num_key_value_heads)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = LlamaForCausalLM(config)
        order = torch.cat([torch.randperm(len(rows)) for _ in range(recipe.epochs)]).tolist()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr)

    def lr_at(step: int) -> float:
        if step < recipe.warmup_steps:
            return (step + 1) / recipe.warmup_steps
        progress = (step - recipe.warmup_steps) / max(recipe.steps - recipe.warmup_steps, 1)
        return recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    pad = tokenizer.pad_token_id
    model.train()
    losses = []
    with _progress(recipe.steps, quiet) as advance:
        for step in range(recipe.steps):
            batch = [rows[i] for i in order[step * recipe.batch_size: (step + 1) * recipe.batch_size]]
            width = max(len(r) for r, _ in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)          # (B, T), right padding
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            for i, (r, start) in enumerate(batch):
                ids[i, : len(r)] = torch.tensor(r)
                mask[i, : len(r)] = 1
                labels[i, start: len(r)] = ids[i, start: len(r)]
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            advance(loss.item())
    with no_save_bar():
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    (out / "recipe.json").write_text(json.dumps({
        "name_digest": recipe.digest(), "recipe": asdict(recipe), "seconds": round(time.time() - t0, 1),
        "final_loss": sum(losses[-50:]) / len(losses[-50:]), "torch": torch.__version__}, indent=1))


class _progress:
    """A rich progress bar on a terminal; a plain line every 10% otherwise (CI logs, nohup)."""

    def __init__(self, total: int, quiet: bool):
        self.total, self.quiet, self.done, self.t0 = total, quiet, 0, time.time()
        self.rich = None

    def __enter__(self):
        if not self.quiet and sys.stderr.isatty():
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.rich = Progress(TextColumn("pretraining"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                 TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn(), transient=True)
            self.rich.start()
            self.task = self.rich.add_task("pretrain", total=self.total, loss=float("nan"))
        return self.advance

    def advance(self, loss: float) -> None:
        self.done += 1
        if self.rich is not None:
            self.rich.update(self.task, advance=1, loss=loss)
        elif not self.quiet and (self.done % max(self.total // 10, 1) == 0 or self.done == self.total):
            rate = self.done / max(time.time() - self.t0, 1e-9)
            print(f"pretraining: step {self.done}/{self.total}, loss {loss:.3f}, {rate:.1f} it/s, "
                  f"ETA {(self.total - self.done) / rate:.0f} s", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self.rich is not None:
            self.rich.stop()
        return False
