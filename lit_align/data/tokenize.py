"""Examples (text) -> token ids. The one place that knows chat templates and the token-level contract.

Contract (DESIGN.md):
  * context = the prompt rendered by the chat template (with the generation prompt) or as plain text,
    followed by the shared partial answer (`prefix`); it never carries loss.
  * each continuation is tokenized on its own and concatenated as ids, so the context/continuation
    boundary is exact by construction (no BPE merge across it, no double BOS).
  * the end token (EOS, or `end_token`) is appended to full answers, never to partial ones.
  * truncation keeps the continuations whole and cuts the context (from the left by default) to fit
    `max_length` (and `max_prompt_length`); a continuation longer than `max_length` is cut on the right
    (it then has no end token). Examples left with no target token, or whose non-empty prompt would be
    cut away entirely, are dropped and counted, never trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

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


class Tokenizer:
    """Applies a `TokenizeSpec` with a Hugging Face tokenizer."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, spec: TokenizeSpec):
        if spec.truncation_side not in ("left", "right"):
            raise LitAlignError(f"truncation_side must be 'left' or 'right', not '{spec.truncation_side}'")
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

    def ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def context_ids(self, ex: Example) -> tuple[list[int], bool]:
        """(context ids, whether the prompt was rendered as a plain HH-style dialogue ending in "Assistant:")."""
        if ex.prompt is None:
            ids, plain_dialogue = list(self.bos), False
        elif self.use_template:
            msgs = [{"role": "user", "content": ex.prompt}] if isinstance(ex.prompt, str) else ex.prompt
            text = self.tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            ids, plain_dialogue = self.ids(text), False
        elif isinstance(ex.prompt, str):
            ids, plain_dialogue = self.bos + self.ids(ex.prompt), False
        else:
            text = "".join(f"\n\n{_PLAIN_ROLES.get(m['role'], m['role'])}: {m['content']}" for m in ex.prompt)
            ids, plain_dialogue = self.bos + self.ids(text + "\n\nAssistant:"), True
        return ids + self._prefix_ids(ex, plain_dialogue), plain_dialogue

    def _prefix_ids(self, ex: Example, plain_dialogue: bool) -> list[int]:
        if not ex.prefix:
            return []
        if plain_dialogue and not ex.prefix[:1].isspace():
            return self.ids(" " + ex.prefix)  # "Assistant: prefix", as in an HH dialogue
        return self.ids(ex.prefix)

    def __call__(self, ex: Example) -> "Tokenized | str":
        """Token ids of `ex`, or the reason it is dropped (DROP_*)."""
        spec = self.spec
        context, plain_dialogue = self.context_ids(ex)
        prefix_len = len(self._prefix_ids(ex, plain_dialogue))
        # a bare text (no prompt) keeps room for the BOS before it; otherwise the context is cut, not the answer
        room = spec.max_length - (len(context) if ex.prompt is None and not ex.prefix else 0)
        conts = []
        for text in ex.continuations:
            if plain_dialogue and not ex.prefix and text and not text[:1].isspace():
                text = " " + text  # "Assistant: answer", as in the HH dialogues it came from
            ids = self.ids(text)
            if not ex.partial:
                if self.end_id is None:
                    raise LitAlignError(f"{ex.where}: the tokenizer has no EOS token; set end_token, "
                                        "or mark the record partial: true")
                ids.append(self.end_id)
            conts.append(ids[: max(room, 0)])  # a too-long answer is cut on the right
        longest = max(len(c) for c in conts)
        budget = max(spec.max_length - longest, 0)
        if spec.max_prompt_length is not None:
            budget = min(budget, spec.max_prompt_length)
        if len(context) > budget:
            if budget == 0:
                return DROP_CONTEXT_GONE
            cut = len(context) - budget
            context = context[cut:] if spec.truncation_side == "left" else context[:budget]
            prefix_len = min(prefix_len, len(context)) if spec.truncation_side == "left" else max(
                0, prefix_len - cut)
        # the first token of a sequence has no prediction: with an empty context it is not a target
        if any(len(c) - (0 if context else 1) <= 0 for c in conts):
            return DROP_NO_TARGET
        return Tokenized(context, conts, prefix_len, ex.weight, ex.group, ex.where, ex.categories)


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
