"""Batch layouts: how an objective's examples are laid out in a batch, and how log-probs come out of it.

A `Layout` ties together what would otherwise have to agree by convention:
- `records`: the record kind of data/records.py its examples are read as (sft, pair, ranked);
- `collate`: the data/collate.py function that builds its batches;
- `logps`: how (B, k) fp32 sequence log-probs (and target-token counts) come out of those batches
  (logprobs.py), for the policy and for the reference alike;
- `packs_rows`: whether the collate packs several examples per row (it is then told the longest row);
- `length`: an example's token count in this layout (the length-grouped sampler's key).

An objective chooses its layout once, in its constructor, from its own options (`Objective.layout`); the
CLI hands it to the data module (`AlignDataModule.connect(tokenizer, layout)`) and the objective hands it to its
reference (`Reference.configure`), so data, policy, reference and the reference cache's key (the layout's
`key`) cannot disagree. The layouts:

    sft                 one continuation per example, padded rows (collate.py)
    packed_sft          one continuation per example, several examples per row (collate_packed; SFT, IW-SFT packed)
    pair                chosen and rejected, padded rows [0:B] chosen, [B:2B] rejected (DPO, SimPO, ORPO)
    packed_pair         one row per pair: the prompt once, then both continuations (collate_packed; packed: true)
    prefix_pair         prefix-DPO's shared context: prompt + shared prefix run once, its key/value cache reused
                        by both continuations (collate_prefix, logprobs.shared_context_logps)
    prefix_pair_joined  the same batches, the context run with each continuation (shared_context: false)
    ranked              k ranked continuations, padded rows, continuation-major (listwise DPO without shared
                        context, the reward model)
    shared_ranked       k ranked continuations on one shared prompt (collate_prefix; listwise DPO's default)
    prompt              prompts alone (collate_prompts): an online objective samples the continuations itself and
                        builds its model inputs from them (objectives/grpo.py)

Evaluation sets that ask for another record kind (`kind: pair` on an SFT run, data/sources.py) get the padded
layout of that kind (`LAYOUTS[kind]`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from lit_align.data.collate import (collate, collate_packed, collate_prefix, collate_prompts, packed_length, padded_length,
                                    prompt_length)
from lit_align.errors import LitAlignError
from lit_align.modeling.logprobs import (LogpsFn, SeqLogps, batch_logps, joined_context_logps, packed_logps,
                                         sequence_logps, shared_context_logps)


@dataclass(frozen=True)
class Layout:
    name: str
    records: str
    """The record kind of data/records.py the examples are read as: sft, pair or ranked; or prompt (data/prompts.py)."""
    collate: Callable
    """items [(index, Tokenized)], pad_id, pad_to_multiple_of[, row_length] -> batch dict (data/collate.py)."""
    logps: LogpsFn
    """(model, batch) -> SeqLogps (B, k): fp32 sequence log-probs and target-token counts."""
    packs_rows: bool = False
    """The collate packs several examples per row, up to `row_length` tokens (data.pack_length)."""
    length: Callable = padded_length
    """Tokenized example -> its token count in this layout (for group_by_length)."""

    def for_records(self, kind: str) -> "Layout":
        """The layout an evaluation set read as another record kind gets (`Source.kind`): that kind's padded one.
        (The data module asks the objective's layout, so that the data layer needs no table of layouts.)"""
        return LAYOUTS[kind]

    @property
    def key(self) -> str:
        """What identifies the layout in a reference cache's key (reference.py)."""
        return f"{self.name}/{self.logps.__name__}"


def sampled_logps(model, batch: dict) -> SeqLogps:
    """A prompt batch has no continuations to score: an online objective scores what it samples."""
    raise LitAlignError("the prompt layout has no continuations to compute log-probs of: an online objective samples "
                        "them itself (a reference cache cannot be precomputed for it)")


LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (
    Layout("sft", "sft", collate, sequence_logps),
    # packed IW-SFT reads packed training rows and padded pair evaluation sets: batch_logps takes either
    Layout("packed_sft", "sft", collate_packed, batch_logps, packs_rows=True, length=packed_length),
    Layout("pair", "pair", collate, sequence_logps),
    Layout("packed_pair", "pair", collate_packed, packed_logps, length=packed_length),
    Layout("prefix_pair", "pair", collate_prefix, shared_context_logps),
    Layout("prefix_pair_joined", "pair", collate_prefix, joined_context_logps),
    Layout("ranked", "ranked", collate, sequence_logps),
    Layout("shared_ranked", "ranked", collate_prefix, shared_context_logps),
    Layout("prompt", "prompt", collate_prompts, sampled_logps, length=prompt_length),
)}


def layout_named(layout: Layout | str) -> Layout:
    """A Layout from itself or its name (scripts and tests wire data modules by name: "pair", "sft")."""
    if isinstance(layout, Layout):
        return layout
    if layout not in LAYOUTS:
        raise LitAlignError(f"unknown batch layout '{layout}': one of {', '.join(LAYOUTS)}")
    return LAYOUTS[layout]
