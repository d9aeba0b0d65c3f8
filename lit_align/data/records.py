"""Record formats -> validated `Example`s (still text). Errors name the file, line and field.

Formats (detected from the keys when `format: auto`):
    sft       {prompt, completion} | {messages: [...]} | {text}     optional weight, partial
    pair      {prompt, chosen, rejected}                            optional prefix, partial, weight
    hh        {chosen, rejected}: whole "\\n\\nHuman: ...\\n\\nAssistant: ..." dialogues, split at the
              last Assistant turn (both must share the dialogue before it)
    contrast  {question, answer_matching_behavior, answer_not_matching_behavior}
    group     {prompt, completions: [...]}: several completions of one prompt (rows that merely share a
              prompt form a group too)
    ranked    {prompt, completions: [...], scores: [...]}: k >= 2 completions of one prompt with a score each
              (higher is better; distinct: a record whose scores tie is skipped and counted); optional weight
    probe     {prompt, <category>: response, ...}: only when asked for (format: probe)

What an objective consumes (`kind`):
    sft    one continuation: sft, group (one example per completion), pair/hh (the chosen answer),
           contrast (the matching answer)
           ranked (the best completion)
    pair   two continuations, chosen then rejected: pair, hh, contrast, ranked (the best and the worst)
    ranked k continuations, best first: ranked, and pair/hh/contrast (a ranking of two)
    probe  one continuation per category
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from lit_align.data.sources import InvalidRow
from lit_align.errors import DataError

Prompt = "str | list[dict] | None"
FORMATS = ("auto", "sft", "pair", "hh", "contrast", "group", "ranked", "probe")
MAX_RECORD_CHARS = 1_000_000
"""Default cap on the text of one record (the data module's max_record_chars): a 10 MB record would cost the
tokenizer gigabytes of memory for tokens that truncation then throws away."""
KINDS = ("sft", "pair", "ranked", "probe")
PAIR_FORMATS = ("pair", "hh", "contrast")
"""The formats of a preference pair, the preferred answer first: those whose label `flip` (label noise) turns over."""
FLOAT32_MAX = 3.4028234663852886e38
"""The largest float32: weights become float32 tensors (data/collate.py), where a larger one is inf, and every
step holding it is then skipped as non-finite (callbacks/nonfinite.py) without a word about the data."""


@dataclass
class Example:
    """One training unit, as text. The token-level contract is applied in tokenize.py."""

    prompt: "str | list[dict] | None"
    """Plain text, chat messages (everything before the answer), or None (a bare `text` record)."""
    continuations: list[str]
    """[completion], [chosen, rejected], k ranked completions best first, or one response per probe category.
    Only these carry loss."""
    prefix: str = ""
    """Shared partial answer after the prompt (prefix-DPO); part of the context, never a target."""
    partial: bool = False
    """Partial generation: no end token is appended to the continuations."""
    weight: float | None = None
    group: str | None = None
    """Completions of one prompt share a group (importance reweighting normalises within it)."""
    where: str = ""
    categories: list[str] = field(default_factory=list)


class SkipRecord(Exception):
    """A record that is well-formed but useless (e.g. chosen == rejected): skipped and counted under `reason`."""

    def __init__(self, message: str, reason: str = "chosen == rejected"):
        super().__init__(message)
        self.reason = reason


def _get_text(row: dict, key: str, where: str, allow_empty: bool = False) -> str:
    if key not in row or row[key] is None:
        raise DataError(where, "missing", field=key)
    value = row[key]
    if not isinstance(value, str):
        raise DataError(where, f"expected a string, got {type(value).__name__}", field=key)
    if not allow_empty and not value.strip():
        raise DataError(where, "is empty", field=key)
    return value


def _get_messages(row: dict, key: str, where: str) -> list[dict]:
    msgs = row[key]
    if not isinstance(msgs, list) or not msgs:
        raise DataError(where, "expected a non-empty list of {role, content} messages", field=key)
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(where, f"message {i} must be an object with string 'role' and 'content'", field=key)
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no", "")


def _get_bool(row: dict, key: str, where: str) -> bool:
    value = row.get(key, False)
    if value is None:
        return False
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:  # a CSV cell is always a string
        return value.strip().lower() in _TRUE
    if not isinstance(value, bool):
        raise DataError(where, f"expected true or false, got {value!r}", field=key)
    return value


def _get_weight(row: dict, where: str) -> float | None:
    value = row.get("weight")
    if isinstance(value, str):  # a CSV cell is always a string; an empty one means no weight
        try:
            value = float(value) if value.strip() else None
        except ValueError:
            pass
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise DataError(where, f"expected a finite number >= 0, got {value!r}", field="weight")
    if value > FLOAT32_MAX:
        raise DataError(where, f"{value!r} overflows float32 (the largest is {FLOAT32_MAX:.4g}), in which the loss is "
                               "weighted; weights are relative, so scale them down", field="weight")
    return float(value)


def _get_prompt(row: dict, key: str, where: str) -> "str | list[dict]":
    """A prompt: chat messages, or text. An HH-style text ("\\n\\nHuman: ...\\n\\nAssistant:") becomes
    messages, so that it is rendered like the HH dialogues of `hh` records (chat template or plain)."""
    if isinstance(row.get(key), list):
        return _get_messages(row, key, where)
    text = _get_text(row, key, where)
    stripped = text.strip()
    if stripped.startswith("Human:") and stripped.endswith("\n\nAssistant:"):
        messages, last = split_hh("\n\n" + stripped, where, key)
        if not last and messages:
            return messages
    return text


def detect_format(row: dict, where: str) -> str:
    if not isinstance(row, dict):
        raise DataError(where, f"expected a JSON object per record, got {type(row).__name__}")
    keys = set(row)
    if "completions" in keys:
        return "ranked" if "scores" in keys else "group"
    if "question" in keys and ("answer_matching_behavior" in keys or "answer_not_matching_behavior" in keys):
        return "contrast"
    if "chosen" in keys or "rejected" in keys:
        return "pair" if "prompt" in keys else "hh"
    if "messages" in keys:
        return "sft"
    if "prompt" in keys or "completion" in keys or "text" in keys:
        return "sft"
    raise DataError(where, f"unknown record format (fields: {', '.join(sorted(keys)) or 'none'}); expected "
                           "prompt/completion, messages, text, prompt/chosen/rejected, HH chosen/rejected "
                           "dialogues, question/answer_matching_behavior/..., or prompt/completions[/scores]")


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def split_hh(dialogue: str, where: str, key: str) -> tuple[list[dict], str]:
    """"\\n\\nHuman: a\\n\\nAssistant: b ..." -> (messages before the last Assistant turn, its text).

    The text is kept as given: only the one space that separates "Human:" / "Assistant:" from a turn is
    taken off (the plain-text rendering, data/tokenize.py, writes it back), so that rendered as plain text the
    dialogue is the original string again, whitespace inside and around the turns included. The last answer
    keeps its leading whitespace whole when more than the separator (the plain rendering then adds none).
    The text may be empty: HH has rows whose preferred answer is to say nothing (the end token alone)."""
    parts = _HH_TURN.split(dialogue)
    if len(parts) < 3 or parts[-2] != "Assistant":
        raise DataError(where, "not an HH dialogue ending with an '\\n\\nAssistant:' turn", field=key)
    messages = [{"role": "user" if who == "Human" else "assistant", "content": _unseparated(text)}
                for who, text in zip(parts[1:-2:2], parts[2:-2:2])]
    last = parts[-1]
    return messages, last if last[1:2].isspace() else _unseparated(last)


def _unseparated(text: str) -> str:
    """A turn's text without the space after "Human:" / "Assistant:"."""
    return text[1:] if text.startswith(" ") else text


def _sft_examples(row: dict, where: str, weight, partial) -> list[Example]:
    if "messages" in row:
        msgs = _get_messages(row, "messages", where)
        if msgs[-1]["role"] != "assistant":
            raise DataError(where, "the last message must be the assistant's (it is the target)", field="messages")
        if not msgs[-1]["content"].strip():
            raise DataError(where, "the last assistant message is empty", field="messages")
        return [Example(msgs[:-1] or None, [msgs[-1]["content"]], partial=partial, weight=weight, where=where)]
    if "text" in row and "completion" not in row:
        return [Example(None, [_get_text(row, "text", where)], partial=partial, weight=weight, where=where)]
    prompt = _get_prompt(row, "prompt", where)
    return [Example(prompt, [_get_text(row, "completion", where)], partial=partial, weight=weight,
                    group=str(prompt), where=where)]


def _pair_example(row: dict, where: str, fmt: str, weight, partial, flip: bool = False) -> Example:
    """The record's two answers, the preferred one first; `flip`: the other one first (a labeller's mistake)."""
    if fmt == "hh":
        prompt, chosen = split_hh(_get_text(row, "chosen", where), where, "chosen")
        prompt_r, rejected = split_hh(_get_text(row, "rejected", where), where, "rejected")
        if prompt != prompt_r:
            raise DataError(where, "chosen and rejected do not share the dialogue before the last "
                                   "Assistant turn", field="rejected")
        prefix = ""
    elif fmt == "contrast":
        prompt = _get_text(row, "question", where)
        chosen = _get_text(row, "answer_matching_behavior", where)
        rejected = _get_text(row, "answer_not_matching_behavior", where)
        prefix = ""
    else:
        prompt = _get_prompt(row, "prompt", where)
        chosen, rejected = _get_text(row, "chosen", where), _get_text(row, "rejected", where)
        prefix = _get_text(row, "prefix", where, allow_empty=True) if row.get("prefix") is not None else ""
        if prefix:
            # A prefix with continuations, or with whole answers that both start with it; not half and half.
            starts = (chosen.startswith(prefix), rejected.startswith(prefix))
            if all(starts):
                chosen, rejected = chosen[len(prefix):], rejected[len(prefix):]
                if not chosen.strip() or not rejected.strip():
                    raise DataError(where, "nothing is left after the shared prefix",
                                    field="chosen" if not chosen.strip() else "rejected")
            elif any(starts):
                bad = "rejected" if starts[0] else "chosen"
                raise DataError(where, f"the prefix contradicts '{bad}': '{'chosen' if starts[0] else 'rejected'}' "
                                       f"starts with the prefix but '{bad}' does not", field="prefix")
    if chosen == rejected:
        raise SkipRecord(f"{where}: chosen and rejected are identical")
    if flip:
        chosen, rejected = rejected, chosen
    return Example(prompt, [chosen, rejected], prefix=prefix, partial=partial, weight=weight,
                   group=str(prompt), where=where)


def _completions(row: dict, where: str) -> list[str]:
    comps = row.get("completions")
    if comps is None:
        raise DataError(where, "missing", field="completions")
    if not isinstance(comps, list) or not comps:
        raise DataError(where, "expected a non-empty list of strings", field="completions")
    for i, c in enumerate(comps):
        if not isinstance(c, str) or not c.strip():
            raise DataError(where, f"completion {i} is empty or not a string", field="completions")
    return comps


def _ranked_example(row: dict, where: str, weight, partial) -> Example:
    """{prompt, completions, scores} -> the completions best first (stable for the order given)."""
    prompt, comps = _get_prompt(row, "prompt", where), _completions(row, where)
    scores = row.get("scores")
    if not isinstance(scores, list) or len(scores) != len(comps):
        raise DataError(where, f"expected a list of {len(comps)} numbers, one per completion", field="scores")
    for i, v in enumerate(scores):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise DataError(where, f"score {i} is not a finite number: {v!r}", field="scores")
    if len(comps) < 2:
        raise DataError(where, "a ranking needs at least 2 completions", field="completions")
    if len(set(scores)) < len(scores) or len(set(comps)) < len(comps):
        raise SkipRecord(f"{where}: two completions tie (the same score or the same text)", "ranking ties")
    order = sorted(range(len(comps)), key=lambda i: -scores[i])
    return Example(prompt, [comps[i] for i in order], partial=partial, weight=weight, group=str(prompt), where=where)


def _strings(value: object):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def check_text(row: dict, where: str, max_chars: int | None = MAX_RECORD_CHARS) -> None:
    """Every string of the record is valid Unicode (JSON's "\\ud800" escapes decode to lone surrogates, which no
    tokenizer takes), and the record's text is at most `max_chars` characters (None: no cap)."""
    total, longest = 0, (0, None)
    for key, value in row.items():
        size = 0
        for text in _strings(value):
            size += len(text)
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise DataError(where, f"holds a lone surrogate ({text[e.start]!r}, character {e.start}), which is "
                                       "not a character: the text was cut inside an emoji or another pair of "
                                       "UTF-16 escapes", field=str(key)) from None
        total += size
        longest = max(longest, (size, key), key=lambda t: t[0])
    if max_chars is not None and total > max_chars:
        raise DataError(where, f"the record holds {total:,} characters of text (over the data module's "
                               f"max_record_chars, {max_chars:,}); shorten it, skip it (skip_invalid: true) or "
                               "raise max_record_chars", field=str(longest[1]))


def to_examples(row: object, where: str, kind: str, fmt: str = "auto",
                max_chars: int | None = MAX_RECORD_CHARS, flip: bool = False) -> list[Example]:
    """Validate one raw row and turn it into the examples an objective of `kind` consumes. `flip`: a pair record
    (PAIR_FORMATS) read with chosen and rejected swapped (label noise, data/label_noise.py)."""
    if isinstance(row, InvalidRow):  # a line that could not be read (bad JSON, bad UTF-8)
        raise row.error
    if not isinstance(row, dict):
        raise DataError(where, f"expected a JSON object per record, got {type(row).__name__}")
    check_text(row, where, max_chars)
    if fmt not in FORMATS:
        raise DataError(where, f"unknown format '{fmt}': use one of {', '.join(FORMATS)}")
    if kind == "probe" or fmt == "probe":
        prompt = _get_prompt(row, "prompt", where)
        cats = [k for k, v in row.items() if k != "prompt" and isinstance(v, str) and v.strip()]
        if not cats:
            raise DataError(where, "a probe record needs at least one '<category>: response' field")
        return [Example(prompt, [row[c] for c in cats], where=where, categories=cats)]
    fmt = detect_format(row, where) if fmt == "auto" else fmt
    if flip and (fmt not in PAIR_FORMATS or kind not in ("sft", "pair", "ranked")):
        raise ValueError(f"{where}: only a pair record's label can be flipped, not a {fmt} record read as {kind}")
    weight, partial = _get_weight(row, where), _get_bool(row, "partial", where)
    if kind in ("pair", "ranked"):
        if fmt in ("sft", "group"):
            needs = "chosen and rejected" if kind == "pair" else "completions with scores (or chosen and rejected)"
            raise DataError(where, f"a preference objective needs {needs}; this is an {fmt.upper()} record",
                            field="rejected" if kind == "pair" else "scores")
        if fmt != "ranked":
            return [_pair_example(row, where, fmt, weight, partial, flip)]
        ex = _ranked_example(row, where, weight, partial)
        if kind == "pair":  # the best and the worst completion
            ex.continuations = [ex.continuations[0], ex.continuations[-1]]
        return [ex]
    if kind != "sft":
        raise ValueError(f"unknown kind {kind!r}")
    if fmt == "ranked":  # SFT on the best completion
        ex = _ranked_example(row, where, weight, partial)
        ex.continuations = ex.continuations[:1]
        return [ex]
    if fmt == "group":
        prompt, comps = _get_prompt(row, "prompt", where), _completions(row, where)
        return [Example(prompt, [c], partial=partial, weight=weight, group=str(prompt), where=where)
                for c in comps]
    if fmt in PAIR_FORMATS:
        ex = _pair_example(row, where, fmt, weight, partial, flip)
        prompt = ex.prompt
        return [Example(prompt, [ex.continuations[0]], prefix=ex.prefix, partial=partial, weight=weight,
                        group=str(prompt), where=where)]
    return _sft_examples(row, where, weight, partial)
