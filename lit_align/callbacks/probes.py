"""Learning-dynamics probes: how the log-probability of many kinds of response moves during training.

Given probe sets of records `{prompt, <category>: response, ...}` (e.g. the chosen answer, the rejected one,
paraphrases of each, another prompt's answer, a shuffled answer, a non-response), `Probes` computes under
the current model, at step 0, every `every_n_steps` optimizer steps and at the end of training, for every
set and category:

    probe/<set>/<category>        mean over the set's records of  log π(response | prompt)
                                  (summed over the response's target tokens, end token included)
    probe_token/<set>/<category>  mean over the set's records of  log π(response | prompt) / |response|

and logs them to every logger at the current global step, with a TensorBoard custom-scalars layout
(tab CUSTOM SCALARS) that puts the categories of one set on one chart. With `greedy: n`, the first n
prompts of each set are also answered greedily by the current model, and the log-prob of that answer is
logged as the category `greedy` (its text under `probe_text/<set>`).

Probe records are read with the training data's machinery (data/datamodule.build_split with kind "probe",
the objective's tokenizer and the data module's tokenization options: chat template, end token,
max_length, max_prompt_length, truncation; `max_length` / `max_prompt_length` here override the last
ones for probes only). Each response is tokenized as the training example {prompt, completion: response}
would be, so a probe's `chosen` has exactly the tokens (context, answer, end token) of the training
pair's chosen answer. A response that leaves no room for its prompt is dropped and counted per category
in the set's summary line (e.g. `12 dropped (irr_train: prompt truncated away)`).

Cost and correctness: batched (rows sorted by length), no gradient, eval mode (no dropout), the
trainer's precision context; every module's train/eval flag and the torch RNG states are restored, and
parameter gradients are never touched, so training is unchanged by probing. Under DDP/FSDP the rows are
sharded over the ranks (every rank runs the same number of batches) and the sums and counts all-reduced.
Seconds spent probing vs training are logged (`probe_cost/seconds`, `probe_cost/fraction`) and printed at
the end of `fit`; one probe costs about a forward pass over all the set's responses (sets x records x
categories sequences), so the `limit` of the sets and `every_n_steps` set the price.

In a config (configs/examples/probes_hh_sft.yaml is a full one):

    trainer:
      callbacks:
        - class_path: lit_align.callbacks.Probes
          init_args:
            sets: {train: {path: probes_train.jsonl, limit: 24}, test: probes_test.jsonl}
            categories: [chosen, rejected, irr_hum]      # or {logged name: field}; default: every field
            every_n_steps: 100
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, replace

import torch
from lightning.pytorch import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_align.callbacks.cost import CostMeter
from lit_align.data.collate import collate
from lit_align.data.datamodule import SplitSummary, build_split
from lit_align.data.records import Example
from lit_align.data.sources import Source, as_source, read_rows
from lit_align.data.tokenize import Tokenized, Tokenizer, TokenizeSpec
from lit_align.errors import LitAlignError
from lit_align.modeling.logprobs import forward_logps

GREEDY = "greedy"
NO_CATEGORY = "none of the probe categories"


@dataclass
class ProbeSet:
    """A probe set, tokenized and flattened to one row per (record, category)."""

    name: str
    categories: list[str]
    rows: list[tuple[int, Tokenized]]
    """(category index, one-continuation example), sorted by length."""
    contexts: list[list[int]]
    """The records' contexts, in file order (prompts for greedy answers)."""
    summary: SplitSummary


class Probes(Callback):
    def __init__(
        self,
        sets: "dict[str, Source | str] | None" = None,
        every_n_steps: int = 100,
        categories: "list[str] | dict[str, str] | None" = None,
        batch_size: int = 16,
        greedy: int = 0,
        max_new_tokens: int = 64,
        max_length: int | None = None,
        max_prompt_length: int | None = None,
        warn_fraction: float = 0.25,
        steering: dict | None = None,
    ):
        """
        Args:
            sets: named probe sets (file, builtin:<task>, or {path, limit, ...}); each record
                `{prompt, <category>: response, ...}`. Logged as probe/<name>/<category>.
            every_n_steps: probe every this many optimizer steps (and at step 0 and at the end of training).
            categories: which fields are probed: a list of field names, or {logged name: field name};
                None: every string field but the prompt.
            batch_size: rows (one response each) per forward pass.
            greedy: answer the first this many prompts of each set greedily and log the answer's log-prob
                as the category `greedy` (0: off).
            max_new_tokens: length limit of greedy answers.
            max_length: override the data module's max_length for probes (context + one response).
            max_prompt_length: override the data module's max_prompt_length for probes.
            warn_fraction: warn when probing takes more than this fraction of the run's time.
            steering: probe the policy with a CAA vector applied (lit_align/steering/vectors.py):
                {vector: FILE, multiplier: 1.0, layers: null, positions: after_prompt, check: architecture};
                the greedy answers are steered too. Training itself is never steered.
        """
        if every_n_steps < 1:
            raise LitAlignError(f"probes: every_n_steps must be >= 1, not {every_n_steps}")
        self.sources = {name: as_source(s) for name, s in (sets or {}).items()}
        for name in self.sources:
            if not name or "/" in name:
                raise LitAlignError(f"probes: a set name must be non-empty and contain no '/': '{name}'")
        self.every_n_steps, self.batch_size = every_n_steps, batch_size
        self.fields: dict[str, str] | None = None  # field -> logged name
        if isinstance(categories, dict):
            self.fields = {field: name for name, field in categories.items()}
        elif categories is not None:
            self.fields = {c: c for c in categories}
        self.greedy, self.max_new_tokens = greedy, max_new_tokens
        self.max_length, self.max_prompt_length = max_length, max_prompt_length
        self.warn_fraction = warn_fraction
        self.sets: list[ProbeSet] | None = None
        self.cost = CostMeter("probe", warn_fraction)
        self.history: dict[int, dict[str, float]] = {}
        """global step -> the metrics logged at it (on every rank)."""
        self._last_step: int | None = None
        self._layout_written = False
        self._end_id: int | None = None
        self._texts: dict[str, str] = {}
        self.steering = dict(steering or {})
        if self.steering and "vector" not in self.steering:
            raise LitAlignError("probes.steering: give the steering vector file as steering.vector")
        self._steer = None  # the open Steering while probing (steering/vectors.py), else None

    # -- data -------------------------------------------------------------------------------------------
    def _tokenizer(self, trainer, pl_module) -> Tokenizer:
        dm = getattr(trainer, "datamodule", None)
        spec = replace(dm.spec) if dm is not None and hasattr(dm, "spec") else TokenizeSpec()
        if self.max_length is not None:
            spec.max_length = self.max_length
        if self.max_prompt_length is not None:
            spec.max_prompt_length = self.max_prompt_length
        return Tokenizer(pl_module.tokenizer, spec)

    def _select(self, ex: Example) -> Example | None:
        if self.fields is None:
            return ex
        kept = [(self.fields[c], text) for c, text in zip(ex.categories, ex.continuations) if c in self.fields]
        if not kept:
            return None
        return replace(ex, categories=[c for c, _ in kept], continuations=[t for _, t in kept])

    @staticmethod
    def _fields_of(source) -> list[str]:
        """The response fields of a probe set's records (for an error message)."""
        fields = []
        for _, row in read_rows(source):
            if isinstance(row, dict):
                fields += [k for k, v in row.items() if k != "prompt" and isinstance(v, str) and k not in fields]
        return fields

    def build(self, trainer, pl_module) -> list[ProbeSet]:
        """Read and tokenize the probe sets (once)."""
        if self.sets is not None:
            return self.sets
        tokenizer = self._tokenizer(trainer, pl_module)
        self._end_id = tokenizer.end_id

        dropped: Counter = Counter()

        def tokenize(ex: Example) -> "list[Tokenized] | str":
            # Each response is tokenized as the training example {prompt, completion: response} would be
            # (so its context is truncated exactly as in training); the record's rows are kept together.
            ex = self._select(ex)
            if ex is None:
                return NO_CATEGORY
            rows = []
            for cat, text in zip(ex.categories, ex.continuations):
                result = tokenizer(replace(ex, continuations=[text], categories=[cat]))
                if isinstance(result, str):
                    dropped[f"{cat}: {result}"] += 1
                else:
                    rows.append(result)
            return rows or "every response dropped"

        sets = []
        for name, source in self.sources.items():
            dropped.clear()
            split, summary = build_split(f"probe {name}", source, "probe", tokenize)
            summary.dropped.update(dropped)
            rank_zero_info(f"data {summary.line()}")
            records: list[list[Tokenized]] = split.examples  # type: ignore[assignment]  (rows per record)
            present = {ex.categories[0] for rows in records for ex in rows}
            missing = [f for f, logged in (self.fields or {}).items() if logged not in present]
            if missing:
                have = self._fields_of(source)
                why = ("every response of it was dropped (too long? see the summary above)" if set(missing) <= set(have)
                       else f"no record has it (the records have {', '.join(have) or 'no response fields'})")
                raise LitAlignError(f"probes: set '{name}' ({source.label}): category {', '.join(map(repr, missing))} "
                                    f"of probes.categories ({', '.join(self.fields)}): {why}")
            order = list(self.fields.values()) if self.fields is not None else []
            for rows in records:
                order += [ex.categories[0] for ex in rows if ex.categories[0] not in order]
            flat = [(order.index(ex.categories[0]), ex) for rows in records for ex in rows]
            flat.sort(key=lambda r: len(r[1].context) + len(r[1].continuations[0]))
            sets.append(ProbeSet(name, order, flat, [rows[0].context for rows in records], summary))
        self.sets = sets
        return sets

    # -- computation ------------------------------------------------------------------------------------
    @torch.no_grad()
    def compute(self, trainer, pl_module) -> dict[str, float]:
        """Probe the current model: {tag: value} for every set and category (the same on every rank)."""
        model = pl_module.model
        device = pl_module.device
        rank, world = trainer.global_rank, trainer.world_size
        pad_id = pl_module.tokenizer.pad_token_id
        modes = [(m, m.training) for m in model.modules()]
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        model.eval()
        metrics: dict[str, float] = {}
        texts: dict[str, str] = {}
        try:
            with trainer.precision_plugin.forward_context(), self._steering(model) as self._steer:
                for ps in self.build(trainer, pl_module):
                    # per category: [sum of log p, sum of per-token log p, records]
                    acc = torch.zeros(len(ps.categories) + 1, 3, dtype=torch.float64, device=device)
                    shard = shard_rows(ps.rows, rank, world)
                    for start in range(0, len(shard), self.batch_size):
                        chunk = shard[start: start + self.batch_size]
                        batch = collate([(i, ex) for i, (_, ex, _) in enumerate(chunk)], pad_id)
                        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                        if self._steer is not None:
                            self._steer.set_prompt_lengths(batch)
                        out = forward_logps(model, batch)
                        seq, tokens = out.sequence.double(), out.tokens.double()          # (n,)
                        cats = torch.tensor([c for c, _, _ in chunk], device=device)
                        real = torch.tensor([r for _, _, r in chunk], device=device, dtype=torch.float64)
                        acc.index_add_(0, cats, torch.stack([seq, seq / tokens, torch.ones_like(seq)], -1)
                                       * real[:, None])
                    if self.greedy > 0:
                        acc[-1], sample = self._greedy(ps, model, trainer, device, pad_id)
                        if sample:
                            texts[ps.name] = sample
                    acc = trainer.strategy.reduce(acc, reduce_op="sum")
                    for j, cat in enumerate(ps.categories + ([GREEDY] if self.greedy > 0 else [])):
                        n = acc[j, 2].item()
                        if n > 0:
                            metrics[f"probe/{ps.name}/{cat}"] = acc[j, 0].item() / n
                            metrics[f"probe_token/{ps.name}/{cat}"] = acc[j, 1].item() / n
        finally:
            self._steer = None
            for m, mode in modes:
                m.training = mode
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
        self._texts = texts
        return metrics

    def _steering(self, model):
        """The `steering` vector applied to `model` while probing (a context manager), or nothing."""
        import contextlib

        if not self.steering:
            return contextlib.nullcontext()
        from lit_align.steering.vectors import SteeringVector

        opts = {"check": "architecture", **self.steering}  # the policy's weights move while it trains
        vector = SteeringVector.load(opts.pop("vector"))
        return vector.apply(model, **opts)

    def _greedy(self, ps: ProbeSet, model, trainer, device, pad_id) -> tuple[torch.Tensor, str]:
        """Greedy answers to this rank's share of the first `greedy` prompts: ([sum log p, sum per-token, n], a sample)."""
        prompts = ps.contexts[: self.greedy]
        mine = shard_rows([(0, p) for p in prompts], trainer.global_rank, trainer.world_size)
        acc = torch.zeros(3, dtype=torch.float64, device=device)
        sample = ""
        for start in range(0, len(mine), self.batch_size):
            chunk = mine[start: start + self.batch_size]
            C = max(len(p) for _, p, _ in chunk)
            ids = torch.full((len(chunk), C), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), C), dtype=torch.long)
            for b, (_, p, _) in enumerate(chunk):  # left padding: every prompt ends where generation starts
                ids[b, C - len(p):], mask[b, C - len(p):] = torch.tensor(p), 1
            if self._steer is not None:
                self._steer.set_prompt_lengths(mask.sum(-1))
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 max_new_tokens=self.max_new_tokens, eos_token_id=self._end_id, pad_token_id=pad_id,
                                 synced_gpus=trainer.world_size > 1)[:, C:].cpu()
            items = []
            for b, (_, p, real) in enumerate(chunk):
                answer = gen[b].tolist()
                if self._end_id in answer:
                    answer = answer[: answer.index(self._end_id) + 1]
                answer = answer or [self._end_id]
                items.append((b, Tokenized(p, [answer], 0, None, None, "greedy", [GREEDY])))
                if not sample and real and start == 0 and b == 0:
                    sample = self._decode(model, p, answer)
            batch = collate(items, pad_id)
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            if self._steer is not None:
                self._steer.set_prompt_lengths(batch)
            out = forward_logps(model, batch)
            real = torch.tensor([r for _, _, r in chunk], device=device, dtype=torch.float64)
            seq, tokens = out.sequence.double(), out.tokens.double()
            acc += torch.stack([(seq * real).sum(), (seq / tokens * real).sum(), real.sum()])
        return acc, sample

    def _decode(self, model, prompt: list[int], answer: list[int]) -> str:
        tok = self._hf_tokenizer
        return f"**prompt** {tok.decode(prompt)!r}\n\n**greedy answer** {tok.decode(answer)!r}"

    # -- hooks --------------------------------------------------------------------------------------------
    def _probe(self, trainer, pl_module) -> dict[str, float]:
        step = trainer.global_step
        self._hf_tokenizer = pl_module.tokenizer
        with self.cost.measure():
            metrics = self.compute(trainer, pl_module)
        self._last_step = step
        self.history[step] = metrics
        metrics = {**metrics, **self.cost.metrics()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            if isinstance(logger, TensorBoardLogger):
                for name, text in self._texts.items():
                    logger.experiment.add_text(f"probe_text/{name}", text, global_step=step)
        if not self._layout_written:
            from lit_align.callbacks.tensorboard import write_layout

            write_layout(trainer, set(trainer.callback_metrics))  # the run's charts and the probes'
        self._layout_written = True
        return metrics

    def tensorboard_layout(self) -> dict:
        """TensorBoard custom-scalars layout (collected by callbacks/tensorboard.py's write_layout): one chart per set
        with all its categories, per sequence and per token."""
        layout = {}
        for ps in self.sets or []:
            cats = ps.categories + ([GREEDY] if self.greedy > 0 else [])
            layout[f"probe/{ps.name}"] = {
                f"{ps.name}: log p(response | prompt), per sequence":
                    ["Multiline", [f"^{re.escape(f'probe/{ps.name}/{c}')}$" for c in cats]],
                f"{ps.name}: log p(response | prompt), per token":
                    ["Multiline", [f"^{re.escape(f'probe_token/{ps.name}/{c}')}$" for c in cats]],
            }
        return layout

    def setup(self, trainer, pl_module, stage: str) -> None:
        require_lm_head(pl_module, "Probes scores responses with log-probs")

    def on_train_start(self, trainer, pl_module) -> None:
        self.cost.start_run()
        if self.sources:
            self._probe(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.sources and step != self._last_step and step % self.every_n_steps == 0:
            self._probe(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if not self.sources:
            return
        if trainer.global_step != self._last_step:
            self._probe(trainer, pl_module)
        train, fraction = self.cost.summary()
        rows = sum(len(ps.rows) for ps in self.sets or [])
        rank_zero_info(f"probes: {self.cost.seconds:.1f} s probing vs {train:.1f} s training ({100 * fraction:.1f}% "
                       f"of the run): {self.cost.count} probes x {rows} responses in {len(self.sets or [])} sets")
        if self.cost.too_costly(fraction):
            rank_zero_warn(f"probing took {100 * fraction:.0f}% of the run; raise probes.every_n_steps or set a "
                           "`limit` on the probe sets")


def require_lm_head(pl_module, what: str) -> None:
    """Refuse, in one sentence, an objective without a language-model head (RewardModel: a score head)."""
    if getattr(pl_module, "head", "lm") != "lm":
        raise LitAlignError(f"{what} with a language-model head; {type(pl_module).__name__} has a {pl_module.head} "
                            "head: remove the callback (a reward model's rewards: lit_align score)")


def shard_rows(rows: list, rank: int, world: int) -> list[tuple]:
    """This rank's share of rows (a, b) as (a, b, real), with `real` 0 on padding rows, so that every rank
    runs the same number of rows (FSDP needs every rank in every forward)."""
    per_rank = math.ceil(len(rows) / world) if rows else 0
    mine = [(*rows[i], 1.0) for i in range(rank, len(rows), world)]
    if rows:
        mine += [(*rows[0], 0.0)] * (per_rank - len(mine))
    return mine
