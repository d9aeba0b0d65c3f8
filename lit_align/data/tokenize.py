"""Examples (text) -> token ids. The one place that knows chat templates and the token-level contract.

Contract (DESIGN.md):
  * context = the prompt rendered by the chat template (with the generation prompt) or as plain text,
    followed by the shared partial answer (`prefix`); it never carries loss.
  * each continuation is tokenized on its own and concatenated as ids, so the context/continuation
    boundary is exact by construction (no BPE merge across it, no double BOS).
  * the end token (EOS, or `end_token`) is appended to full answers, never to partial ones.
  * truncation, to fit `max_length` (context + the longest continuation) and `max_prompt_length`: the
    context keeps at least `min_context_tokens` (default: a quarter of max_length; all of it when shorter),
    and never loses any of the chat template's generation prompt (or a plain dialogue's "\n\nAssistant:"),
    the tokens the answer follows. Beyond that floor the context is cut (from the left by default) and the
    continuations kept whole; a continuation too long for what the floor leaves is cut on the right (it then
    has no end token). The context is cut around the generation prompt: from the prompt text and the shared
    prefix, never inside it. Examples left with no target token, or whose non-empty prompt would be cut away
    entirely (min_context_tokens 0, or a max_prompt_length shorter than the generation prompt), are dropped
    and counted, never trained on; truncated contexts and continuations are counted (`Tokenized.truncated`,
    the split summary).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from transformers import PreTrainedTokenizerBase

from lit_align.data.records import Example
from lit_align.errors import LitAlignError

DROP_NO_TARGET = "no target token left"
DROP_CONTEXT_GONE = "prompt truncated away"

_PLAIN_ROLES = {"user": "Human", "assistant": "Assistant", "system": "System"}


@dataclass
class TokenizeSpec:
    """How examples become token ids (the data module's tokenization options)."""

    max_length: int = 512
    """Maximum tokens of context + one continuation."""
    max_prompt_length: int | None = None
    """Optional cap on the context (prompt + shared prefix) tokens."""
    truncation_side: str = "left"
    """Which end of the context is cut: left (keep the end of the prompt) or right."""
    chat_template: bool | None = None
    """Render prompts with the tokenizer's chat template: None = when it has one."""
    end_token: str | None = None
    """Token appended to full answers; None = the tokenizer's EOS."""
    min_context_tokens: int | None = None
    """Context tokens kept however long the continuation (the continuation is cut instead); None = a quarter
    of max_length. The template's generation prompt is kept whole in any case."""

    def context_floor(self) -> int:
        return self.max_length // 4 if self.min_context_tokens is None else self.min_context_tokens


@dataclass
class Tokenized:
    context: list[int]
    continuations: list[list[int]]
    prefix_len: int
    """How many of the context's last tokens are the shared partial answer."""
    weight: float | None
    group: str | None
    where: str
    categories: list[str]
    truncated: tuple[bool, bool] = (False, False)
    """(the context was cut, a continuation was cut) to fit max_length / max_prompt_length."""


class Tokenizer:
    """Applies a `TokenizeSpec` with a Hugging Face tokenizer."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, spec: TokenizeSpec):
        if spec.truncation_side not in ("left", "right"):
            raise LitAlignError(f"truncation_side must be 'left' or 'right', not '{spec.truncation_side}'")
        if not 0 <= spec.context_floor() < spec.max_length:
            raise LitAlignError(f"min_context_tokens must be >= 0 and below max_length ({spec.max_length}), not "
                                f"{spec.min_context_tokens}")
        self.tok, self.spec = tokenizer, spec
        self.use_template = bool(tokenizer.chat_template) if spec.chat_template is None else spec.chat_template
        if self.use_template and not tokenizer.chat_template:
            raise LitAlignError("chat_template: true, but the tokenizer has no chat template")
        if spec.end_token is None:
            self.end_id = tokenizer.eos_token_id
        else:
            self.end_id = tokenizer.convert_tokens_to_ids(spec.end_token)
            if self.end_id is None or self.end_id == tokenizer.unk_token_id:
                raise LitAlignError(f"end_token '{spec.end_token}' is not a token of this tokenizer")
        # Plain-text prompts get the BOS the tokenizer would add itself (templates write their own).
        self.bos = _leading_special_ids(tokenizer)
        self._gen_ids: dict[str, list[int]] = {}  # generation-prompt text -> its token ids

    def ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def context_ids(self, ex: Example) -> tuple[list[int], bool, int]:
        """(context ids, whether the prompt was rendered as a plain HH-style dialogue ending in "Assistant:",
        how many tokens before the prefix are the generation prompt: the template's, or "\n\nAssistant:")."""
        gen = 0
        if ex.prompt is None:
            ids, plain_dialogue = list(self.bos), False
        elif self.use_template:
            msgs = [{"role": "user", "content": ex.prompt}] if isinstance(ex.prompt, str) else ex.prompt
            text = self.tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            ids, plain_dialogue = self.ids(text), False
            gen = self._generation_tokens(ids, text, lambda: self.tok.apply_chat_template(
                msgs, add_generation_prompt=False, tokenize=False))
        elif isinstance(ex.prompt, str):
            ids, plain_dialogue = self.bos + self.ids(ex.prompt), False
        else:
            text = "".join(f"\n\n{_PLAIN_ROLES.get(m['role'], m['role'])}: {m['content']}" for m in ex.prompt)
            ids, plain_dialogue = self.ids(text + "\n\nAssistant:"), True
            gen = self._generation_tokens(ids, text + "\n\nAssistant:", lambda: text)
            ids = self.bos + ids
        return ids + self._prefix_ids(ex, plain_dialogue), plain_dialogue, gen

    def _generation_tokens(self, ids: list[int], text: str, render_without: Callable[[], str]) -> int:
        """How many of the last of `ids` (the tokens of `text`) are the generation prompt, the part of `text`
        that `render_without()` (the same prompt rendered without it) lacks. One tokenization of the (usually
        constant) generation prompt, cached; when a token merges across its boundary, the tokens from the
        first one that differs from those of the text without it."""
        without = render_without()
        tail = text[len(without):] if text.startswith(without) else None
        if tail == "":
            return 0
        if tail is not None:
            if tail not in self._gen_ids:
                self._gen_ids[tail] = self.ids(tail)
            gen = self._gen_ids[tail]
            if 0 < len(gen) <= len(ids) and ids[len(ids) - len(gen):] == gen:
                return len(gen)
        base = self.ids(without)
        common = next((i for i, (a, b) in enumerate(zip(ids, base)) if a != b), min(len(ids), len(base)))
        return len(ids) - common

    def _prefix_ids(self, ex: Example, plain_dialogue: bool) -> list[int]:
        if not ex.prefix:
            return []
        if plain_dialogue and not ex.prefix[:1].isspace():
            return self.ids(" " + ex.prefix)  # "Assistant: prefix", as in an HH dialogue
        return self.ids(ex.prefix)

    def __call__(self, ex: Example) -> "Tokenized | str":
        """Token ids of `ex`, or the reason it is dropped (DROP_*)."""
        spec = self.spec
        context, plain_dialogue, gen = self.context_ids(ex)   # prompt text | generation prompt (gen) | prefix
        prefix_len = len(self._prefix_ids(ex, plain_dialogue))
        # the context tokens no continuation can push out: a bare text (no prompt) keeps its BOS; otherwise
        # min_context_tokens, and at least the generation prompt (within max_prompt_length)
        floor = len(context) if ex.prompt is None and not ex.prefix else min(len(context), max(spec.context_floor(), gen))
        if spec.max_prompt_length is not None:
            floor = min(floor, spec.max_prompt_length)
        room = spec.max_length - floor   # tokens a continuation may have
        conts, cut_cont = [], False
        for text in ex.continuations:
            if plain_dialogue and not ex.prefix and not text[:1].isspace():
                text = " " + text  # "Assistant: answer" (an empty one: "Assistant: "), as in HH dialogues
            ids = self.ids(text)
            if not ex.partial:
                if self.end_id is None:
                    raise LitAlignError(f"{ex.where}: the tokenizer has no EOS token; set end_token, "
                                        "or mark the record partial: true")
                ids.append(self.end_id)
            cut_cont |= len(ids) > room
            conts.append(ids[: max(room, 0)])  # a too-long answer is cut on the right
        longest = max(len(c) for c in conts)
        budget = max(spec.max_length - longest, 0)   # >= floor
        if spec.max_prompt_length is not None:
            budget = min(budget, spec.max_prompt_length)
        cut_context = len(context) > budget
        if cut_context:
            if budget == 0 or budget < gen:
                return DROP_CONTEXT_GONE
            context, prefix_len = self._cut_context(context, gen, prefix_len, budget)
        # the first token of a sequence has no prediction: with an empty context it is not a target
        if any(len(c) - (0 if context else 1) <= 0 for c in conts):
            return DROP_NO_TARGET
        return Tokenized(context, conts, prefix_len, ex.weight, ex.group, ex.where, ex.categories,
                         (cut_context, cut_cont))

    def _cut_context(self, context: list[int], gen: int, prefix_len: int, budget: int) -> tuple[list[int], int]:
        """Cut context = prompt text | generation prompt (gen tokens) | prefix (prefix_len) to `budget` >= gen
        tokens, keeping the generation prompt whole: the budget - gen tokens kept are the last (truncation_side
        left) or first (right) of prompt text + prefix. -> (context, tokens of the prefix left)."""
        end = len(context) - prefix_len                       # the generation prompt is context[end - gen: end]
        body, prompt, prefix = context[: end - gen], context[end - gen: end], context[end:]
        keep = budget - gen
        if self.spec.truncation_side == "left":
            n_prefix = min(keep, len(prefix))
            n_body = keep - n_prefix
            return body[len(body) - n_body:] + prompt + prefix[len(prefix) - n_prefix:], n_prefix
        n_body = min(keep, len(body))
        n_prefix = keep - n_body
        return body[:n_body] + prompt + prefix[:n_prefix], n_prefix


def _leading_special_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The special tokens the tokenizer puts before a text (e.g. [BOS]); found by tokenizing a probe text
    with and without them, since `add_bos_token` is not set where a post-processor adds the BOS."""
    probe = "a b"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start: start + len(plain)] == plain:
            lead = full[:start]
            special = set(tokenizer.all_special_ids)
            return lead if all(i in special for i in lead) else []
    return []
