"""AlignDataModule: one data module for every objective.

It reads sources (files, built-in tasks, `datasets` names), validates records, tokenizes them under the
token-level contract and collates batches. It never knows the loss: the objective tells it, through
`connect(tokenizer, layout)`, which tokenizer to use and its batch layout (layouts.py: the record kind to read,
e.g. one continuation per example or two, and the collate function). The CLI makes that call; so does anyone
wiring the two by hand.
"""

from __future__ import annotations

from typing import Callable, Literal

import functools
import warnings
from collections import Counter
from dataclasses import dataclass, field

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from torch.utils.data import DataLoader, Dataset, Subset

from lit_align.data.collate import unpackable
from lit_align.data.prompts import PromptRecord, read_prompts
from lit_align.data.label_noise import LabelNoise
from lit_align.data.records import MAX_RECORD_CHARS, PAIR_FORMATS, SkipRecord, detect_format, to_examples
from lit_align.data.samplers import ResumableSampler, WeightedResampler
from lit_align.data.sources import Source, as_source, named_sources, read_rows
from lit_align.data.tokenize import Tokenized, Tokenizer, TokenizeSpec
from lit_align.errors import DataError, LitAlignError


@dataclass
class SplitSummary:
    name: str
    source: str
    rows: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    invalid: int = 0
    skipped: Counter = field(default_factory=Counter)
    first_problem: str | None = None
    truncated: Counter = field(default_factory=Counter)
    """Kept examples whose "context" / a "continuation" was cut to fit (data/tokenize.py)."""
    formats: Counter = field(default_factory=Counter)
    """Record format (records.py) -> rows read in it: `contrast` alone makes an A/B contrast set."""
    label_noise: LabelNoise | None = None
    """The source's label noise (data/label_noise.py), if any."""
    flipped: int = 0
    """Kept examples whose chosen and rejected answers the label noise swapped."""

    @property
    def contrast(self) -> bool:
        """Every row is an A/B contrast pair {question, answer_matching_behavior, answer_not_matching_behavior}."""
        return set(self.formats) == {"contrast"}

    def line(self) -> str:
        parts = [f"{self.name} ({self.source}): {self.rows} rows -> {self.kept} examples kept"]
        if self.label_noise is not None:
            parts.append(f"{self.flipped} labels flipped ({self.label_noise})")
        parts += [f"{self.truncated[what]} with the {what} truncated" for what in ("context", "continuation")
                  if self.truncated[what]]
        parts += [f"{n} dropped ({why})" for why, n in sorted(self.dropped.items())]
        parts += [f"{n} skipped ({why})" for why, n in sorted(self.skipped.items())]
        if self.invalid:
            parts.append(f"{self.invalid} invalid skipped (first: {self.first_problem})")
        return ", ".join(parts)


class TokenizedSplit(Dataset):
    def __init__(self, name: str, examples: list[Tokenized]):
        self.name, self.examples = name, examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> tuple[int, Tokenized]:
        return i, self.examples[i]


def build_split(name: str, source: Source, kind: str, tokenizer: Tokenizer, skip_invalid: bool = False,
                max_record_chars: int | None = MAX_RECORD_CHARS) -> tuple[TokenizedSplit, SplitSummary]:
    """Read, validate and tokenize one source. Bad rows raise DataError unless `skip_invalid`."""
    from rich.progress import track

    summary = SplitSummary(name, source.label, label_noise=source.label_noise)
    if source.label_noise is not None and kind not in ("sft", "pair", "ranked"):
        raise LitAlignError(f"{name} ({source.label}): label_noise flips the chosen and rejected answers of preference "
                            f"pairs, but this set is read as {kind} records, which have none"
                            + (" (an online objective takes label_noise itself: its rewards are flipped)"
                               if kind == "prompt" else ""))
    if kind == "prompt":  # online objectives: every record's prompt and its context ids (data/prompts.py)
        prompts = read_prompts(name, source, tokenizer)
        summary.rows = summary.kept = len(prompts)
        return TokenizedSplit(name, prompts), summary
    examples: list[Tokenized] = []
    rows = read_rows(source)
    flipped: frozenset[int] = frozenset()
    if source.label_noise is not None:
        rows = list(rows)  # (n must be known: exactly round(fraction · n) of the n records are flipped)
        flipped = source.label_noise.flipped_rows(len(rows))
    for i, (where, row) in enumerate(track(rows, description=f"tokenizing {name}", transient=True,
                                           disable=rank_zero_only.rank != 0)):
        summary.rows += 1
        if source.columns and isinstance(row, dict):
            # {new: old}: read field `old` as `new` (from the original row, so swaps work)
            row = {**row, **{new: row[old] for new, old in source.columns.items() if old in row}}
        fmt = _count_format(summary, row, where, source.format)
        if source.label_noise is not None and fmt is not None and fmt not in PAIR_FORMATS:
            raise LitAlignError(f"{name} ({source.label}): label_noise flips the chosen and rejected answers of "
                                f"preference pairs ({', '.join(PAIR_FORMATS)} records), but {where} is a record of "
                                f"format {fmt}")
        flip = i in flipped
        try:
            for ex in to_examples(row, where, kind, source.format, max_record_chars, flip):
                if kind == "ranked":
                    check_ranked_count(ex, examples[0] if examples else None, name)
                result = tokenizer(ex)
                if isinstance(result, str):
                    summary.dropped[result] += 1
                else:
                    examples.append(result)
                    summary.flipped += flip
                    for t in result if isinstance(result, list) else [result]:  # probes: a record's rows
                        summary.truncated.update(what for what, cut in zip(("context", "continuation"), t.truncated)
                                                 if cut)
        except SkipRecord as e:
            summary.skipped[e.reason] += 1
            summary.first_problem = summary.first_problem or str(e)
        except DataError as e:
            if not skip_invalid:
                raise
            summary.invalid += 1
            summary.first_problem = summary.first_problem or str(e)
    summary.kept = len(examples)
    if not examples:
        raise LitAlignError(f"No usable examples in {name} ({source.label}): {summary.line()}. "
                            "Check the file, the record format and max_length.")
    return TokenizedSplit(name, examples), summary


def check_ranked_count(ex, first, split: str) -> None:
    """A batch stacks the k continuations of its examples, so a ranked-list split has one k: that of its `first`
    kept example. A record with another k is a bad record (an error, or skipped and counted with skip_invalid)."""
    if first is not None and len(ex.continuations) != len(first.continuations):
        raise DataError(ex.where, f"{len(ex.continuations)} ranked completions, but the first record of {split} "
                                  f"({first.where}) has {len(first.continuations)}: a ranked-list split needs the same "
                                  "number of completions in every record", field="completions")


def _count_format(summary: SplitSummary, row: object, where: str, fmt: str) -> str | None:
    """Count the row's record format and return it (None for an unreadable row: to_examples' business)."""
    if fmt == "auto":
        if not isinstance(row, dict):
            return None
        try:
            fmt = detect_format(row, where)
        except DataError:
            return None
    summary.formats[fmt] += 1
    return fmt


class AlignDataModule(LightningDataModule):
    def __init__(
        self,
        train: "Source | str" = "builtin:sft",
        val: "dict[str, Source | str | None] | str | None" = None,
        test: "dict[str, Source | str | None] | str | None" = None,
        predict: "Source | str | None" = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        max_length: int = 512,
        max_prompt_length: int | None = None,
        truncation_side: Literal["left", "right"] = "left",
        chat_template: bool | None = None,
        end_token: str | None = None,
        min_context_tokens: int | None = None,
        skip_invalid: bool = False,
        num_workers: int = 0,
        pad_to_multiple_of: int = 1,
        group_by_length: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        max_record_chars: int | None = MAX_RECORD_CHARS,
        pack_length: int | None = None,
    ):
        """
        Args:
            train: the training source: a file, builtin:<task>, a `datasets` name, or {path, split, ...}.
            val: named validation sets, e.g. {id: ..., ood: ...}; the set named `val` logs as `val/...`,
                any other name `n` as `val_n/...`.
            test: named test sets, logged like `val` (`test/...`, `test_<name>/...`).
            predict: the prompts `lit_align predict` answers (data/prompts.py: any record with a prompt; its
                reference answer is written beside the generation).
            batch_size: examples (pairs for preference objectives) per micro-batch and device.
            eval_batch_size: batch size for validation and test (default: batch_size).
            max_length: maximum tokens of context + one continuation. What does not fit is cut from the context
                (down to min_context_tokens), then from the end of the continuation (which then loses its end
                token); the summary line counts both ("12 with the context truncated, 3 with the continuation
                truncated").
            max_prompt_length: optional cap on context (prompt + shared prefix) tokens.
            truncation_side: which end of the context is cut to fit: left or right. Either way the chat
                template's generation prompt (the tokens the answer follows) is never cut.
            chat_template: render prompts with the tokenizer's chat template (None: when it has one).
            end_token: token appended to full answers (None: the tokenizer's EOS).
            min_context_tokens: context tokens kept however long the answer: a longer answer is cut instead
                (None, the default: a quarter of max_length; 0: cut the context first, down to its generation
                prompt). A shorter context is kept whole.
            skip_invalid: skip and count bad records instead of stopping at the first.
            num_workers: DataLoader worker processes.
            pad_to_multiple_of: pad sequence length to a multiple of this (8 helps GPU kernels).
            group_by_length: sort the shuffled training order by length within windows of this many
                examples, so batches hold similar lengths and waste little on padding (0, the default: off).
                Faster, but batches become length-homogeneous, which changes the optimisation: in our DPO
                test on builtin:pairs (lr 5e-3) it cut held-out reward accuracy from 0.77 to 0.52. Try
                256 for speed, and check that the curves are unchanged.
            shuffle: shuffle the training examples each epoch (false: file order, e.g. a curriculum).
            seed: seed of the training shuffle.
            max_record_chars: a record holding more characters of text than this is a bad record (an error,
                or skipped and counted with skip_invalid): tokenizing megabytes costs gigabytes of memory for
                tokens that truncation throws away (None: no cap).
            pack_length: the longest row of a packed batch (SFT / IW-SFT with `packed: true`): each micro-batch's
                examples are packed into rows of at most this many tokens (None: max_length; an example
                longer than it gets a row of its own; rows that hold no two training examples are warned of, and a
                pack_length below every example is refused). The batch is still batch_size examples.
        """
        super().__init__()
        for option, value, least in (("batch_size", batch_size, 1), ("eval_batch_size", eval_batch_size, 1),
                                     ("max_length", max_length, 1), ("max_prompt_length", max_prompt_length, 1),
                                     ("num_workers", num_workers, 0), ("pad_to_multiple_of", pad_to_multiple_of, 1),
                                     ("max_record_chars", max_record_chars, 1), ("pack_length", pack_length, 1)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise LitAlignError(f"data.{option} must be an integer >= {least}, not {value!r}")
        self.train_source = as_source(train)
        # (the types let None and a string through, to be said here with the option and the set's name: with no
        # space after the colon, `{id:d/pairs.jsonl}` is YAML for a set "id:d/pairs.jsonl" with no value, or a
        # string on the command line)
        self.val_sources = named_sources("data.init_args.val", val)
        self.test_sources = named_sources("data.init_args.test", test)
        self.predict_source = None if predict is None else as_source(predict)
        self.prompts: list[PromptRecord] | None = None  # the predict prompts, once set up
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.spec = TokenizeSpec(max_length, max_prompt_length, truncation_side, chat_template, end_token,
                                 min_context_tokens)
        self.skip_invalid, self.num_workers = skip_invalid, num_workers
        self.pad_to_multiple_of, self.seed = pad_to_multiple_of, seed
        if group_by_length < 0:
            raise LitAlignError(f"data.group_by_length must be >= 0 (0: off), not {group_by_length}")
        self.max_record_chars = max_record_chars
        self.pack_length = pack_length
        self.group_by_length = group_by_length
        self.shuffle = shuffle
        self.tokenizer = None
        self.layout = None  # layouts.py Layout
        self.splits: dict[str, TokenizedSplit] = {}
        self.summaries: dict[str, SplitSummary] = {}
        self.split_layouts: dict = {}  # split -> its batches' layout (Source.kind's, else self.layout)

    def connect(self, tokenizer, layout: "Layout", train_weights: Callable | None = None,  # noqa: F821
                repeat_steps: int = 1) -> None:
        """Wire in run-time values: the model's tokenizer and the objective's batch layout (`objective.layout`, or
        one of lit_align/layouts.py's LAYOUTS by name: LAYOUTS["pair"]). The data layer reads the layout (its record
        kind, collate, row packing and length) and never imports the table of layouts (which sits above it).
        `train_weights` (`objective.train_sampling_weights`: IW-SFT's mode resample): a callable giving the (n,)
        weights the training examples are drawn by, read when an epoch's draw begins. `repeat_steps`
        (`objective.repeat_steps`: online RL's num_iterations): each optimizer step's training batches are given this
        many optimizer steps in a row (data/samplers.py, "Repeating optimizer steps")."""
        if repeat_steps < 1 or (repeat_steps > 1 and train_weights is not None):
            raise LitAlignError(f"AlignDataModule.connect: repeat_steps must be >= 1 and cannot be combined with "
                                f"sampling weights (repeat_steps {repeat_steps})")
        self.train_weights, self.repeat_steps = train_weights, repeat_steps
        if isinstance(layout, str):
            raise LitAlignError(f"AlignDataModule.connect: give the layout itself (lit_align.layouts.LAYOUTS"
                                f"[{layout!r}], or objective.layout), not its name")
        self.tokenizer, self.layout = tokenizer, layout

    def _sources(self, stage: str | None) -> dict[str, Source]:
        val = {self.log_prefix("val", n): s for n, s in self.val_sources.items()}
        test = {self.log_prefix("test", n): s for n, s in self.test_sources.items()}
        if stage == "fit":
            return {"train": self.train_source, **val}
        if stage == "validate":
            return val
        if stage == "test":
            return test
        return {"train": self.train_source, **val, **test}

    @staticmethod
    def log_prefix(stage: str, name: str) -> str:
        return stage if name == stage else f"{stage}_{name}"

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None or self.layout is None:
            raise LitAlignError("AlignDataModule has no tokenizer: call datamodule.connect(objective.tokenizer, "
                                "objective.layout) before fitting (the lit_align CLI does this for you).")
        tokenizer = Tokenizer(self.tokenizer, self.spec)
        if stage == "predict":
            self._setup_predict(tokenizer)
            return
        for name, source in self._sources(stage).items():
            if name in self.splits:
                continue
            layout = self.split_layout(name, source)
            split, summary = build_split(name, source, layout.records, tokenizer, self.skip_invalid,
                                         self.max_record_chars)
            self.splits[name], self.summaries[name], self.split_layouts[name] = split, summary, layout
            rank_zero_info(f"data {summary.line()}")
            if summary.skipped:
                rank_zero_warn(f"{name}: skipped {sum(summary.skipped.values())} records ({summary.first_problem})")
        if stage == "fit" and "train" in self.splits:
            self._check_val_interval()
            self._check_pack_length()

    def _setup_predict(self, tokenizer: Tokenizer) -> None:
        if self.predict_source is None:
            raise LitAlignError("lit_align predict needs prompts: give them as --data.init_args.predict FILE (a data "
                                "file or builtin:<task>[, split]: records with a prompt)")
        if self.prompts is None:
            self.prompts = read_prompts("predict", self.predict_source, tokenizer)
            rank_zero_info(f"data predict ({self.predict_source.label}): {len(self.prompts)} prompts")
        self._end_id = tokenizer.end_id

    def _check_val_interval(self) -> None:
        """A whole number of batches between validations must fit in an epoch (Lightning raises deep inside its
        loop otherwise): say so with the numbers, before training starts."""
        trainer = self.trainer
        interval = getattr(trainer, "val_check_interval", None)
        if trainer is None or isinstance(interval, float) or not isinstance(interval, int) \
                or trainer.check_val_every_n_epoch is None:
            return
        world = max((trainer.distributed_sampler_kwargs or {}).get("num_replicas", 1), 1)
        n = len(self.splits["train"])
        batches = -(-n // (self.batch_size * world))
        if trainer.limit_train_batches is not None and isinstance(trainer.limit_train_batches, int):
            batches = min(batches, trainer.limit_train_batches)
        if interval > batches:
            raise LitAlignError(
                f"trainer.val_check_interval is {interval} batches, but an epoch of train ({self.train_source.label}:"
                f" {n} examples, batch_size {self.batch_size}{f' x {world} devices' if world > 1 else ''}) has "
                f"only {batches}: set --trainer.val_check_interval to at most {batches}, or to 1.0 (validate "
                "once per epoch), or check_val_every_n_epoch: null (count batches across epochs)")

    def _check_pack_length(self) -> None:
        """Rows that can hold no two training examples pack nothing: said in a line; refused when pack_length is
        below every example (then no row keeps to it: a misreading of the option, e.g. as a length cap)."""
        layout = self.split_layouts.get("train", self.layout)
        if not layout.packs_rows:
            return
        row_length = self.pack_length or self.spec.max_length
        found = unpackable([layout.length(ex) for ex in self.splits["train"].examples], row_length)
        if found is None:
            return
        below_all, problem = found
        given = f"data.pack_length {row_length}" if self.pack_length else f"a packed row (max_length, {row_length})"
        message = (f"{given} {problem} of train ({self.train_source.label}): every example gets a row of its own "
                   "and nothing is packed")
        if not below_all:
            rank_zero_warn(message)
            return
        raise LitAlignError(f"{message}; raise data.pack_length (it is the longest packed row, not a cap on the "
                            "examples: max_length is), or leave it unset")

    def split_layout(self, name: str, source: Source) -> "Layout":  # noqa: F821
        """The layout of a split's batches: the objective's, unless an evaluation set asks for another record kind
        (`Source.kind`: e.g. pairs, to measure preference accuracy of an objective trained on one continuation),
        which it gets in that kind's padded layout."""
        if source.kind is None or source.kind == self.layout.records:
            return self.layout
        if name == "train":
            raise LitAlignError(f"train: `kind: {source.kind}` is for evaluation sets only; the training set is read "
                                f"as the objective consumes it ({self.layout.records})")
        if source.kind not in ("sft", "pair"):
            raise LitAlignError(f"{name}: kind must be sft or pair, not '{source.kind}'")
        return self.layout.for_records(source.kind)

    # -- loaders ------------------------------------------------------------------------------------
    def _loader(self, name: str, batch_size: int, shuffle: bool, sampler=None, by_length: bool = False) -> DataLoader:
        summary = self.summaries.get(name)
        layout = self.split_layouts.get(name, self.layout)
        # layouts that pack several examples per row are told the longest row
        rows = {"row_length": self.pack_length or self.spec.max_length} if layout.packs_rows else {}
        dataset = self.splits[name]
        if by_length:  # a reordered view, so that Lightning still shards it like any dataset under DDP
            dataset = Subset(dataset, self.length_order(name))
        return DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=functools.partial(_collate_named, name=name, collate=layout.collate, pad_id=self.tokenizer.pad_token_id,
                                         pad_to_multiple_of=self.pad_to_multiple_of,
                                         contrast=summary is not None and summary.contrast, **rows),
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
        )

    # The training order comes from a seeded, resumable sampler with DistributedSampler semantics
    # (data/samplers.py): each data-parallel rank a disjoint shard, Lightning keeps it (no sampler injected),
    # and its position is saved in checkpoints so that a resumed run sees exactly the batches it would have.
    # With group_by_length it sorts the shuffle by length within windows (less padding); the order still does
    # not depend on batch size or ranks.
    _train_sampler: ResumableSampler | None = None
    _train_sampler_state: dict | None = None
    # Set by an objective that draws training examples in proportion to a weight (importance-reweighted SFT,
    # mode resample, handed over by connect): a callable giving the (n,) weights of the train split, read when an
    # epoch's draw begins. The training order then comes from WeightedResampler (same sharding and resume as
    # ResumableSampler).
    train_weights = None
    # Set by an objective that updates several times on one step's batches (GRPO's num_iterations, by connect):
    # the sampler yields each optimizer step's indices this many times in a row.
    repeat_steps = 1

    def train_dataloader(self) -> DataLoader:
        dist = (self.trainer.distributed_sampler_kwargs if self.trainer is not None else None) or {}
        if self.train_weights is not None:
            self._train_sampler = WeightedResampler(self.splits["train"], self.train_weights,
                                                    num_replicas=dist.get("num_replicas", 1), rank=dist.get("rank", 0),
                                                    seed=self.seed)
        else:
            length = self.split_layouts.get("train", self.layout).length
            lengths = [length(ex) for ex in self.splits["train"].examples] if self.group_by_length else None
            window = self.batch_size * (self.trainer.accumulate_grad_batches if self.trainer is not None else 1)
            self._train_sampler = ResumableSampler(self.splits["train"], num_replicas=dist.get("num_replicas", 1),
                                                   rank=dist.get("rank", 0), shuffle=self.shuffle, seed=self.seed,
                                                   lengths=lengths, group_size=self.group_by_length,
                                                   repeat=self.repeat_steps, window=window)
            if self.repeat_steps > 1 and len(self._train_sampler) == 0:
                raise LitAlignError(f"train: {len(self.splits['train'])} examples do not fill one optimizer step of "
                                    f"{window} per device (batch_size x accumulate_grad_batches), which updates "
                                    f"{self.repeat_steps} times on the same batches (num_iterations)")
        if self._train_sampler_state:
            self._train_sampler.load_state_dict(self._train_sampler_state)
        return self._loader("train", self.batch_size, shuffle=True, sampler=self._train_sampler)

    def state_dict(self) -> dict:
        sampler = self._train_sampler
        if sampler is None:
            return {}
        consumed = None  # batches the trainer took for training steps this epoch (workers may have read ahead)
        progress = getattr(getattr(getattr(self.trainer, "fit_loop", None), "epoch_loop", None), "batch_progress", None)
        if progress is not None:
            consumed = progress.current.ready * self.batch_size * sampler.num_replicas
        return {"train_sampler": sampler.state_dict(consumed)}

    def load_state_dict(self, state: dict) -> None:
        self._train_sampler_state = state.get("train_sampler")
        if self._train_sampler_state:  # Lightning cannot see that this loader resumes mid-epoch: not its warning
            warnings.filterwarnings("ignore", message=".*your dataloader is not resumable")
        if self._train_sampler is None or not self._train_sampler_state:
            return
        # Strategies that restore after setup (FSDP2, FSDP, DeepSpeed) built the loader already (the optimizer's
        # schedule asked for its length): its iterator reads the position lazily, unless workers read ahead.
        self._train_sampler.load_state_dict(self._train_sampler_state)
        fit_loop = getattr(self.trainer, "fit_loop", None)
        if self.num_workers > 0 and fit_loop is not None and getattr(fit_loop, "_combined_loader", None) is not None:
            if getattr(fit_loop, "_data_fetcher", None) is not None:
                fit_loop._data_fetcher.teardown()
            fit_loop._combined_loader = None  # Lightning rebuilds the loader (and its workers) before training

    def length_order(self, name: str) -> list[int]:
        """Split `name`'s example indices longest first (a stable sort: ties keep file order), the order of
        `eval_loader(name, by_length=True)`."""
        length = self.split_layouts.get(name, self.layout).length
        lengths = [length(ex) for ex in self.splits[name].examples]
        return sorted(range(len(lengths)), key=lambda i: -lengths[i])

    def eval_loader(self, name: str, batch_size: int | None = None, by_length: bool = False) -> DataLoader:
        """A loader over split `name` (train, val, val_<name>, ...), eval_batch_size by default: in file order, or
        with `by_length` longest first, so that each batch holds similar lengths and pads little (padded positions
        cost as much as real ones; on the A/B sets of model-written evals a third of a file-order batch is padding).
        By length, per-item outputs come in that order: fit for sums and means, not for matching items to rows."""
        if name not in self.splits:
            raise LitAlignError(f"no split '{name}' set up (have: {', '.join(self.splits) or 'none'})")
        return self._loader(name, batch_size or self.eval_batch_size, shuffle=False, by_length=by_length)

    def _eval_loaders(self, stage: str) -> list[DataLoader]:
        # file order: the reference cache computes its log-probs in these batches, so that a policy equal to its
        # reference evaluates to margins of exactly 0 (by length, float rounding made 14% of them positive)
        return [self.eval_loader(n) for n in self.splits if n.startswith(stage)]

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("val")

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("test")

    def predict_dataloader(self) -> DataLoader:
        """Batches {records: [(index, PromptRecord)], end_id} of the predict prompts in file order."""
        return DataLoader(list(enumerate(self.prompts)), batch_size=self.eval_batch_size, shuffle=False,
                          collate_fn=functools.partial(_prompt_batch, end_id=self._end_id))


def _prompt_batch(items: list, end_id: int | None) -> dict:
    return {"records": items, "end_id": end_id, "split": "predict"}


def _collate_named(items, name: str, collate, pad_id: int, pad_to_multiple_of: int, contrast: bool = False,
                   **rows) -> dict:
    batch = collate(items, pad_id, pad_to_multiple_of, **rows)
    batch["split"] = name  # the metric prefix: train, val, val_<name>, test, ...
    batch["contrast"] = contrast  # an A/B contrast set: its pair metrics include ab/p_match (objectives/base.py)
    return batch
