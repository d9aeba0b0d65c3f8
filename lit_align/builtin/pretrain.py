"""Built-in pretrained models: a deterministic pretraining recipe on built-in text, built once and cached on disk.

    builtin:organism   the model organism (data/organism.py): a Llama-style model (hidden 128, 4 layers,
                       ~0.8 M parameters) pretrained from random init on the organism's corpus: it knows
                       which foods are sweet and answers A/B questions, and it dislikes sweets.
    builtin:organism-seed1, builtin:organism-seed2   the same recipe under pretraining seeds 1 and 2: other
                       builds of the organism (experiments report results over builds).
    builtin:organism-v2 (-seed1, -seed2)   organism v2 (data/organism_v2.py): the same model shape and world, a
                       corpus whose conversations carry a latent taste, with per-food dislike strengths and a
                       letter bias.

`load_model` / `load_tokenizer` (models.py) resolve such a name to a saved Hugging Face directory:

    $LIT_ALIGN_CACHE/builtin/<name>-<recipe digest>/      (default cache: ~/.cache/lit_align)

built on first use (a rich progress bar on stderr when stderr is a terminal, else a plain line with an ETA every
10% of the steps and at least once a minute; ~2-3 minutes on 2 CPU cores) and reused afterwards. The digest
covers the whole recipe (model shape, tokenizer, corpus generator version, optimizer, steps, seed), so changing
any of it builds a new directory, never reuses a stale one. The build writes into a temporary directory and
renames it into place, so an interrupted build leaves nothing half-written, and two processes building at once
both end with the same complete directory.

A killed build loses little: the pretraining state (weights, optimizer, scheduler, step) is saved every 10% of
the steps (and at least every 2 minutes) into

    $LIT_ALIGN_CACHE/builtin/.<name>-<recipe digest>.partial/state.pt

and the next build resumes from it (the loop draws no random numbers after the init, so the final weights are
those of an uninterrupted build on the same machine). Temporaries are named `.<base>.tmp.<pid>@<host>.<random>`;
a build removes those whose process is no longer alive on this host (a killed build's), and keeps those of
live builds and of other hosts (a cache shared over NFS).

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
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from lit_align.builtin.packaged import file_digest
from lit_align.builtin.parts import chat_tokenizer, llama_config, train_bpe
from lit_align.cache import cache_root, remove_stale_temporaries, temporary_prefix
from lit_align.errors import LitAlignError
from lit_align.optim import adamw_with_schedule
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


V2 = Recipe(corpus="organism-v2", documents=48_000, version=2)
"""Organism v2 (data/organism_v2.py): a latent taste that earlier answers reveal, per-food dislike strengths and a
letter bias; twice v1's documents, since a third of them are conversations. (version 2: the second v2 corpus; the
first, 32,000 documents of version 1, learnt neither the taste nor the strengths: docs/organism.md.)"""
BUILTIN_PRETRAINED: dict[str, Recipe] = {"organism": Recipe(), "organism-seed1": Recipe(seed=1),
                                         "organism-seed2": Recipe(seed=2), "organism-v2": V2,
                                         "organism-v2-seed1": replace(V2, seed=1),
                                         "organism-v2-seed2": replace(V2, seed=2)}
"""builtin:organism and two more builds of its recipe under other pretraining seeds (init, corpus draw, batch
order): the organism experiment reports its results over builds, since which build a result came from matters
as much as the training seed (the same recipe also pretrains different weights on another CPU)."""


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
    partial = path.parent / f".{path.name}.partial"
    removed = remove_stale_temporaries(path.parent) + remove_stale_temporaries(partial)
    if not quiet:
        cleaned = f"; removed {len(removed)} temporaries of killed builds" if removed else ""
        print(f"lit_align: building builtin:{name} (recipe {recipe.digest()}: {recipe.steps} steps, once; "
              f"cached in {path}{cleaned})", file=sys.stderr, flush=True)
    tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(path.name), dir=path.parent))
    try:
        build(recipe, tmp, quiet=quiet, partial=partial)
        try:
            tmp.rename(path)
        except OSError:  # another process finished first: its directory is the same recipe
            if not (path / "recipe.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(partial, ignore_errors=True)  # built: the resume state is of no further use
    return path


# -- the recipe ---------------------------------------------------------------------------------------------

def _documents(recipe: Recipe):
    if recipe.corpus == "organism":
        from lit_align.data.organism import pretraining_documents

        return pretraining_documents(recipe.documents, seed=recipe.seed)
    if recipe.corpus == "organism-v2":
        from lit_align.data.organism_v2 import pretraining_documents_v2

        return pretraining_documents_v2(recipe.documents, seed=recipe.seed)
    raise LitAlignError(f"unknown pretraining corpus '{recipe.corpus}'")


def _tokenizer(recipe: Recipe, docs):
    """A byte-level BPE trained on the corpus's text, with the built-in models' chat template."""
    def text(prompt) -> str:  # a prompt is a string, None (a plain text) or chat messages
        return prompt or "" if not isinstance(prompt, list) else "\n".join(m["content"] for m in prompt)

    sample = [text(p) + "\n" + a for p, a in docs[:5000]]
    sample.append("<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n")
    return chat_tokenizer(train_bpe(sample, recipe.vocab_size))


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


def build(recipe: Recipe, out: Path, quiet: bool = False, partial: Path | None = None) -> None:
    """Pretrain a model from random init by `recipe` and save it (and its tokenizer) to `out`; with `partial`, save
    the pretraining state there as it goes and resume from the state a killed build saved there."""
    from transformers import LlamaForCausalLM

    t0 = time.time()
    docs = _documents(recipe)
    tokenizer = _tokenizer(recipe, docs)
    rows = _token_rows(docs, tokenizer)
    config = llama_config(tokenizer, 512, hidden_size=recipe.hidden_size, intermediate_size=recipe.intermediate_size,
                          num_hidden_layers=recipe.num_hidden_layers, num_attention_heads=recipe.num_attention_heads,
                          num_key_value_heads=recipe.num_key_value_heads)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = LlamaForCausalLM(config)
        order = torch.cat([torch.randperm(len(rows)) for _ in range(recipe.epochs)]).tolist()
    # (for_loop: torch's own CPU default, which built the organism; its bits must not move)
    optimizer, scheduler = adamw_with_schedule(model.parameters(), lr=recipe.lr, total=recipe.steps,
                                               warmup=recipe.warmup_steps, schedule="cosine",
                                               min_ratio=recipe.min_lr_ratio, weight_decay=recipe.weight_decay,
                                               implementation="for_loop")
    state = _BuildState(partial, recipe.steps, tokenizer) if partial is not None else None
    losses: list[float] = []
    first = 0
    resumed = state.load() if state is not None else None
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        first, losses = resumed["step"], resumed["losses"]
        if not quiet:
            print(f"lit_align: resuming the build at step {first}/{recipe.steps} (saved by an interrupted build; "
                  f"the steps it ran after that are redone)", file=sys.stderr, flush=True)
    pad = tokenizer.pad_token_id
    model.train()
    with _progress(recipe.steps, quiet, first) as advance:
        for step in range(first, recipe.steps):
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
            if state is not None and state.due(step + 1):
                state.save(step + 1, model, optimizer, scheduler, losses)
    with no_save_bar():
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    final_loss = sum(losses[-50:]) / len(losses[-50:])
    weights = weights_sha256(out)
    (out / "recipe.json").write_text(json.dumps({
        "name_digest": recipe.digest(), "recipe": asdict(recipe), "seconds": round(time.time() - t0, 1),
        "resumed_at_step": first, "final_loss": final_loss, "weights_sha256": weights, "torch": torch.__version__},
        indent=1))
    if not quiet:
        # the same recipe pretrains different weights on another CPU (float kernels differ): say which build this is
        print(f"lit_align: built recipe {recipe.digest()}: weights sha256 {weights[:12]}, final loss {final_loss:.5f}",
              file=sys.stderr, flush=True)


def weights_sha256(folder: Path) -> str:
    """The sha256 of a built model's weights file: which build of a recipe a result came from."""
    return file_digest(Path(folder) / "model.safetensors")


def build_info(name: str) -> dict | None:
    """For a built-in pretrained model (e.g. "builtin:organism"): its recipe digest, weights sha256 and final
    pretraining loss, building it first if needed; None for any other model name. Builds from before the weights
    digest was recorded get it computed from their weights file."""
    key = name.removeprefix("builtin:")
    if not name.startswith("builtin:") or key not in BUILTIN_PRETRAINED:
        return None
    path = ensure_built(key)
    record = json.loads((path / "recipe.json").read_text())
    return {"model": name, "recipe": record["name_digest"], "final_loss": record["final_loss"],
            "weights_sha256": record.get("weights_sha256") or weights_sha256(path), "path": str(path)}


class _BuildState:
    """The pretraining state in `folder`/state.pt: saved every 10% of the steps and at least every `every_s`
    seconds (a killed build on a loaded machine then loses minutes, not the whole build), written to a temporary and
    renamed, so a kill mid-save leaves the previous state whole. It is resumed only by the same tokenizer (the
    recipe digest names the folder) and the same torch: otherwise the final weights could differ from an
    uninterrupted build's."""

    every_s = 120.0

    def __init__(self, folder: Path, total: int, tokenizer):
        self.folder, self.total = folder, total
        self.every = max(total // 10, 1)
        self.saved_at = time.monotonic()
        self.key = {"tokenizer": hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest(),
                    "torch": torch.__version__}

    def load(self) -> dict | None:
        try:
            state = torch.load(self.folder / "state.pt", map_location="cpu", weights_only=False)
        except Exception:  # none, or unreadable (a disk that filled up): start over, it is only a shortcut
            return None
        return state if state.get("key") == self.key and 0 < state.get("step", 0) < self.total else None

    def due(self, done: int) -> bool:
        if done >= self.total:  # the final weights are saved next: nothing to resume
            return False
        return done % self.every == 0 or time.monotonic() - self.saved_at >= self.every_s

    def save(self, done: int, model, optimizer, scheduler, losses: list[float]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temporary_prefix("state.pt"), dir=self.folder)
        os.close(fd)
        torch.save({"key": self.key, "step": done, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "losses": list(losses)}, tmp)
        os.replace(tmp, self.folder / "state.pt")
        self.saved_at = time.monotonic()


class _progress:
    """A rich progress bar when stderr is a terminal (drawn on stderr: rich's default console is stdout, and with
    stdout redirected it drew nothing for the whole build); otherwise a plain line with an ETA every 10% of the
    steps and at least every `every_s` seconds (CI logs, nohup, a loaded machine)."""

    every_s = 60.0

    def __init__(self, total: int, quiet: bool, done: int = 0):
        self.total, self.quiet, self.done = total, quiet, done
        self.first, self.t0 = done, time.monotonic()  # the rate counts this process's steps (a resume's included)
        self.printed_at = self.t0
        self.rich = None

    def __enter__(self):
        if not self.quiet and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.rich = Progress(TextColumn("pretraining"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                 TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn(), transient=True,
                                 console=Console(stderr=True))
            self.rich.start()
            self.task = self.rich.add_task("pretrain", total=self.total, completed=self.done, loss=float("nan"))
        return self.advance

    def advance(self, loss: float) -> None:
        self.done += 1
        if self.rich is not None:
            self.rich.update(self.task, advance=1, loss=loss)
        elif not self.quiet and self._line_due():
            now = time.monotonic()
            self.printed_at = now
            rate = (self.done - self.first) / max(now - self.t0, 1e-9)
            print(f"pretraining: step {self.done}/{self.total}, loss {loss:.3f}, {rate:.1f} it/s, "
                  f"ETA {(self.total - self.done) / rate:.0f} s", file=sys.stderr, flush=True)

    def _line_due(self) -> bool:
        return (self.done % max(self.total // 10, 1) == 0 or self.done == self.total
                or time.monotonic() - self.printed_at >= self.every_s)

    def __exit__(self, *exc):
        if self.rich is not None:
            self.rich.stop()
        return False
