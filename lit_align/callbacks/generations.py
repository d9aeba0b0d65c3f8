"""Sample generations during training, and the generations of `lit_align predict`.

`SampleGenerations` answers a fixed set of prompts with the current policy at step 0, every `every_n_steps`
optimizer steps and at the end of training (greedy by default; sampled with a seed when `do_sample`), and writes
for every evaluation:

    TensorBoard, tab TEXT    generations/<set>: a table  # | prompt | generation | reference | <scorer>...
    <log_dir>/generations/step_000100.jsonl   one row per prompt: {step, set, index, prompt, prefix, generation,
                                               reference, scores, where}
    val_<set>/gen/<scorer>   the mean score over the set of each scorer (scorers.py; the set named `val` logs
                             as val/gen/<scorer>, as the data module names its validation sets)
    generation_cost/seconds, generation_cost/fraction   time spent generating so far, and its share of the run

The prompts are the records of data sources (data/prompts.py: any training/evaluation record, its prompt and
its reference answer; a `{prompt}` row alone), tokenized as the data module tokenizes training examples.

Training is unchanged by it (as by the probes, callbacks/probes.py): no gradient, eval mode while generating,
every module's train/eval flag and the torch RNG restored afterwards, parameter gradients never touched.
Under DDP/FSDP the prompts are sharded over the ranks, padded so that every rank runs the same number of
`generate` calls, with `synced_gpus` so that every rank joins every forward (FSDP gathers sharded weights in
each); the texts are gathered and rank 0 alone writes the table, the file and the metrics. The cost, about one
forward per generated token and prompt, is logged and printed at the end of `fit`.

    trainer:
      callbacks:
        - class_path: lit_align.callbacks.SampleGenerations
          init_args:
            sets: {val: {path: builtin:sft, split: val, limit: 4}}
            every_n_steps: 250
            max_new_tokens: 24
            scorers: [substring]

`GenerationWriter` is `lit_align predict`'s writer (the `generate:` section of the CLI): `predict_step`
(objectives/base.py) generates for the data module's `predict` prompts with its options, and it writes one JSONL
row per prompt {index, prompt, prefix, generation, reference, scores, where} to `out`.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_align.callbacks.cost import CostMeter
from lit_align.callbacks.probes import require_lm_head, shard_rows
from lit_align.data.datamodule import AlignDataModule
from lit_align.data.prompts import PromptRecord, prompt_text, read_prompts
from lit_align.data.sources import Source, as_source
from lit_align.data.tokenize import Tokenizer, TokenizeSpec
from lit_align.errors import LitAlignError
from lit_align.modeling.generation import generate_texts
from lit_align.eval.scorers import build_scorers, mean_scores


class SampleGenerations(Callback):
    def __init__(
        self,
        sets: "dict[str, Source | str] | None" = None,
        every_n_steps: int = 100,
        max_new_tokens: int = 32,
        do_sample: bool = False,
        seed: int = 0,
        batch_size: int = 16,
        scorers: "list[str | dict] | None" = None,
        dirpath: str | None = None,
        warn_fraction: float = 0.1,
    ):
        """
        Args:
            sets: named prompt sets (file, builtin:<task>, or {path, split, limit, columns, ...}); each record a
                training/evaluation record (its reference answer shown beside the generation) or {prompt}.
            every_n_steps: generate every this many optimizer steps (and at step 0 and at the end of training).
            max_new_tokens: length limit of a generation (it also stops at the end token).
            do_sample: sample (seeded with `seed`: the same samples at every evaluation of the same weights, for a
                given number of devices) instead of greedy decoding.
            seed: the sampling seed.
            batch_size: prompts per `generate` call.
            scorers: scorers of the generations (scorers.py), logged as val_<set>/gen/<label>: names, or
                {name: regex, pattern: ..., label: ...} mappings.
            dirpath: where the JSONL files go (default <log_dir>/generations).
            warn_fraction: warn when generating takes more than this fraction of the run's time.
        """
        if every_n_steps < 1:
            raise LitAlignError(f"generations: every_n_steps must be >= 1, not {every_n_steps}")
        if max_new_tokens < 1:
            raise LitAlignError(f"generations: max_new_tokens must be >= 1, not {max_new_tokens}")
        self.sources = {name: as_source(s) for name, s in (sets or {}).items()}
        for name in self.sources:
            if not name or "/" in name:
                raise LitAlignError(f"generations: a set name must be non-empty and contain no '/': '{name}'")
        self.scorers = build_scorers(scorers)
        self.every_n_steps, self.max_new_tokens, self.batch_size = every_n_steps, max_new_tokens, batch_size
        self.do_sample, self.seed = do_sample, seed
        self.dirpath, self.warn_fraction = dirpath, warn_fraction
        self.sets: dict[str, list[PromptRecord]] | None = None
        self.history: dict[int, dict[str, list[str]]] = {}
        """global step -> {set: its generations, in file order} (on every rank)."""
        self.metrics: dict[int, dict[str, float]] = {}
        """global step -> the metrics logged at it."""
        self.cost = CostMeter("generation", warn_fraction)
        self._last_step: int | None = None
        self._end_id: int | None = None
        self._dir: str | None = None

    # -- data -------------------------------------------------------------------------------------------
    def build(self, trainer, pl_module) -> dict[str, list[PromptRecord]]:
        """Read and tokenize the prompt sets (once), as the data module tokenizes its examples."""
        if self.sets is None:
            dm = getattr(trainer, "datamodule", None)
            spec = dm.spec if dm is not None and hasattr(dm, "spec") else TokenizeSpec()
            tokenizer = Tokenizer(pl_module.tokenizer, spec)
            self._end_id = tokenizer.end_id
            self.sets = {name: read_prompts(f"generations {name}", source, tokenizer)
                         for name, source in self.sources.items()}
            for name, records in self.sets.items():
                rank_zero_info(f"generations {name} ({self.sources[name].label}): {len(records)} prompts")
        return self.sets

    # -- computation ------------------------------------------------------------------------------------
    def generate(self, trainer, pl_module) -> dict[str, list[str]]:
        """{set: the current policy's generation for each of its prompts} (the same on every rank)."""
        rank, world = trainer.global_rank, trainer.world_size
        tok = pl_module.tokenizer
        texts = {}
        with trainer.precision_plugin.forward_context():
            for name, records in self.build(trainer, pl_module).items():
                mine = shard_rows(list(enumerate(records)), rank, world)          # [(index, record, real)]
                generated = generate_texts(pl_module.model, tok, [r for _, r, _ in mine], self._end_id,
                                           self.max_new_tokens, self.batch_size, do_sample=self.do_sample,
                                           seed=self.seed, synced_gpus=world > 1)
                done = [(i, t) for (i, _, real), t in zip(mine, generated) if real]
                if world > 1:  # every rank gets every text (a list of strings per rank)
                    parts: list = [None] * world
                    torch.distributed.all_gather_object(parts, done)
                    done = [item for part in parts for item in part]
                texts[name] = [t for _, t in sorted(done)]
        return texts

    def _evaluate(self, trainer, pl_module) -> None:
        step = trainer.global_step
        if self._dir is None:  # trainer.log_dir is a collective under DDP/FSDP: every rank asks, once
            self._dir = self.dirpath or os.path.join(trainer.log_dir or trainer.default_root_dir, "generations")
        with self.cost.measure():
            texts = self.generate(trainer, pl_module)
            metrics: dict[str, float] = {}
            rows = []
            for name, records in (self.sets or {}).items():
                prefix = AlignDataModule.log_prefix("val", name)
                for label, value in mean_scores(self.scorers, [r.record for r in records], texts[name]).items():
                    metrics[f"{prefix}/gen/{label}"] = value
                rows += [{"step": step, "set": name, "index": i, **generation_row(r, t, self.scorers)}
                         for i, (r, t) in enumerate(zip(records, texts[name]))]
            if trainer.is_global_zero:
                path = Path(self._dir) / f"step_{step:06d}.jsonl"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        self._last_step = step
        self.history[step], self.metrics[step] = texts, metrics
        logged = {**metrics, **self.cost.metrics()}
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(logged, step=step)
                if isinstance(logger, TensorBoardLogger):
                    for name in self.sets or {}:
                        table = markdown_table([row for row in rows if row["set"] == name], self.scorers)
                        logger.experiment.add_text(f"generations/{name}", table, global_step=step)
            from lit_align.callbacks.tensorboard import write_layout

            write_layout(trainer, set(metrics))  # val_<set>/gen/<scorer> on the custom-scalars charts

    # -- hooks --------------------------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        require_lm_head(pl_module, "SampleGenerations generates text")

    def on_train_start(self, trainer, pl_module) -> None:
        self.cost.start_run()
        if self.sources:
            self._evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.sources and step != self._last_step and step % self.every_n_steps == 0:
            self._evaluate(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if not self.sources:
            return
        if trainer.global_step != self._last_step:
            self._evaluate(trainer, pl_module)
        train, fraction = self.cost.summary()
        prompts = sum(len(r) for r in (self.sets or {}).values())
        rank_zero_info(f"generations: {self.cost.seconds:.1f} s generating vs {train:.1f} s "
                       f"training ({100 * fraction:.1f}% of the run): {self.cost.count} evaluations x {prompts} prompts "
                       f"in {len(self.sets or {})} sets, up to {self.max_new_tokens} new tokens; files in {self._dir}")
        if self.cost.too_costly(fraction):
            rank_zero_warn(f"sample generations took {100 * fraction:.0f}% of the run; raise every_n_steps, lower "
                           "max_new_tokens or set a `limit` on the prompt sets")


class GenerationWriter(BasePredictionWriter):
    """`lit_align predict`'s options and writer: the `generate:` section of the command line / config."""

    def __init__(self, out: str | None = None, max_new_tokens: int = 64, do_sample: bool = False, seed: int = 0,
                 batch_size: int = 16, scorers: "list[str | dict] | None" = None):
        """
        Args:
            out: the JSONL file written (default <log_dir>/predictions.jsonl).
            max_new_tokens: length limit of a generation (it also stops at the end token).
            do_sample: sample (seeded with `seed`) instead of greedy decoding.
            seed: the sampling seed.
            batch_size: prompts per `generate` call.
            scorers: scorers of the generations (scorers.py), written per row and their means printed at the end.
        """
        super().__init__(write_interval="batch")
        if max_new_tokens < 1:
            raise LitAlignError(f"generate.max_new_tokens must be >= 1, not {max_new_tokens}")
        self.out, self.max_new_tokens, self.do_sample, self.seed = out, max_new_tokens, do_sample, seed
        self.batch_size = batch_size
        self.scorers = build_scorers(scorers)
        self.path: Path | None = None
        self._sums: dict[str, float] = {}
        self._n = 0

    def on_predict_start(self, trainer, pl_module) -> None:
        if trainer.world_size > 1:
            raise LitAlignError(f"lit_align predict runs on one device, not {trainer.world_size}: add "
                                "--trainer.devices 1 (an FSDP-trained model predicts from its exported hf_model)")
        self.path = Path(self.out or os.path.join(trainer.log_dir or trainer.default_root_dir, "predictions.jsonl"))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")
        self._sums, self._n = {s.label: 0.0 for s in self.scorers}, 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        with self.path.open("a") as f:
            for row in prediction:
                f.write(json.dumps(row) + "\n")
                for label, value in row["scores"].items():
                    self._sums[label] += value
        self._n += len(prediction)

    def on_predict_end(self, trainer, pl_module) -> None:
        means = ", ".join(f"gen/{label} {s / max(self._n, 1):.3f}" for label, s in self._sums.items())
        rank_zero_info(f"predict: {self._n} generations written to {self.path}" + (f" ({means})" if means else ""))

    def predict_rows(self, pl_module, batch: dict, batch_idx: int) -> list[dict]:
        """The rows of one predict batch (from the data module: {records: [(index, PromptRecord)], end_id})."""
        texts = generate_texts(pl_module.model, pl_module.tokenizer, [r for _, r in batch["records"]], batch["end_id"],
                               self.max_new_tokens, self.batch_size, do_sample=self.do_sample,
                               seed=self.seed + batch_idx * self.batch_size)
        return [{"index": i, **generation_row(r, t, self.scorers)} for (i, r), t in zip(batch["records"], texts)]


def generation_row(record: PromptRecord, text: str, scorers) -> dict:
    """One JSONL row: the prompt (as in the file), its prefix, the generation, the reference, the scores."""
    return {"prompt": record.prompt, "prefix": record.prefix, "generation": text, "reference": record.reference,
            "scores": {s.label: s(record.record, text) for s in scorers}, "where": record.where}


def markdown_cell(text: str | None) -> str:
    """Text for a Markdown table cell: HTML and Markdown escaped, `|` escaped, newlines as <br>."""
    if text is None:
        return ""
    if not text.strip():
        return "*(empty)*" if not text else "*(whitespace only)*"
    text = html.escape(text, quote=False)
    for ch in "\\`*_[]#|":
        text = text.replace(ch, "\\" + ch)
    return text.replace("\r\n", "\n").replace("\n", "<br>")


def markdown_table(rows: list[dict], scorers) -> str:
    """The TensorBoard table of one set's rows: # | prompt | generation | reference | one column per scorer."""
    labels = [s.label for s in scorers]
    lines = ["| # | prompt | generation | reference |" + "".join(f" {markdown_cell(x)} |" for x in labels),
             "|---|---|---|---|" + "---|" * len(labels)]
    for row in rows:
        prompt = markdown_cell(prompt_text(row["prompt"]))
        if row["prefix"]:
            prompt += "<br>**prefix:** " + markdown_cell(row["prefix"])
        cells = [str(row["index"]), prompt, markdown_cell(row["generation"]), markdown_cell(row["reference"])]
        cells += [f"{row['scores'][x]:g}" for x in labels]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
