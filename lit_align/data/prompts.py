"""Prompts to generate from: the records of a data source, each with its reference answer and its context ids.

Any training or evaluation record works, read with the training data's machinery (records.to_examples as kind
"sft"): the prompt (with a prefix-DPO record's shared partial answer after it) is what the model answers, and
the continuation the data module would train on (completion, chosen, matching answer) is the reference. A row
holding only a prompt, `{prompt}` (optionally with `reference`), is a prompt to answer with no reference. The
context is tokenized exactly as for training (data/tokenize.py: chat template, truncation to max_length with
the reference's room, max_prompt_length), so the model is asked as it was taught; a prompt alone is not cut.
"""

from __future__ import annotations

from dataclasses import dataclass

from lit_align.data.records import Example, _get_prompt, to_examples
from lit_align.data.sources import Source, read_rows
from lit_align.data.tokenize import Tokenizer
from lit_align.errors import DataError, LitAlignError

ANSWER_FIELDS = {"completion", "completions", "chosen", "rejected", "messages", "text", "question"}
"""A row with a `prompt` and none of these is a prompt alone."""


@dataclass
class PromptRecord:
    prompt: "str | list[dict]"
    """The prompt as in the file (text or chat messages)."""
    prefix: str
    """A shared partial answer the generation continues ("" for none)."""
    reference: str | None
    context: list[int]
    """Token ids the generation starts after."""
    record: dict
    """The row (after `columns`) with `reference`: what scorers read (scorers.py)."""
    where: str


def prompt_text(prompt: "str | list[dict]") -> str:
    """A prompt for display: the text, or chat messages as `role: content` lines."""
    return prompt if isinstance(prompt, str) else "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def _example(row: object, where: str, fmt: str) -> tuple[Example, str | None]:
    if isinstance(row, dict) and "prompt" in row and not ANSWER_FIELDS & set(row):  # a prompt alone
        reference = row.get("reference")
        if reference is not None and not isinstance(reference, str):
            raise DataError(where, f"expected a string, got {type(reference).__name__}", field="reference")
        return Example(_get_prompt(row, "prompt", where), [], where=where), reference
    ex = to_examples(row, where, "sft", fmt)[0]  # (a group record: its first completion is the reference)
    if ex.prompt is None:
        raise DataError(where, "no prompt to generate from (a bare text record)", field="prompt")
    return ex, ex.continuations[0]


def read_prompts(name: str, source: Source, tokenizer: Tokenizer) -> list[PromptRecord]:
    """The prompt records of `source` in file order; a bad record raises DataError (file, line, field)."""
    out = []
    for where, row in read_rows(source):
        if source.columns and isinstance(row, dict):  # {new: old}, as the data module reads them
            row = {**row, **{new: row[old] for new, old in source.columns.items() if old in row}}
        ex, reference = _example(row, where, source.format)
        context = tokenizer.context_ids(ex)[0]
        if reference is not None:  # the context as training cuts it, leaving the reference its room
            tokenized = tokenizer(Example(ex.prompt, [reference], prefix=ex.prefix, partial=ex.partial, where=where))
            context = context if isinstance(tokenized, str) else tokenized.context
        out.append(PromptRecord(ex.prompt, ex.prefix, reference, context, {"reference": reference, **row}, where))
    if not out:
        raise LitAlignError(f"{name} ({source.label}): no records to generate from")
    return out
