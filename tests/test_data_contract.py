"""The token-level data contract (DESIGN.md): what the model is trained on, token by token.

Context and continuations are tokenized separately and concatenated as ids; the loss falls on the
continuations only; full answers end with the end token, partial ones never; truncation cuts the context,
keeps the answer, and drops (and counts) what has nothing left to train on. Then every record format and
file format the data module reads.
"""

import gzip
import json

import pytest
import torch
from conftest import SHARED_DATA, requires_shared

from lit_align.data.collate import collate
from lit_align.data.datamodule import AlignDataModule, build_split
from lit_align.data.records import Example, to_examples
from lit_align.data.sources import Source, read_rows
from lit_align.data.tokenize import DROP_CONTEXT_GONE, DROP_NO_TARGET, Tokenized, Tokenizer, TokenizeSpec
from lit_align.errors import DataError, LitAlignError
from lit_align.layouts import layout_named


# -- helpers ----------------------------------------------------------------------------------------------
def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def template_ids(tok, messages) -> list[int]:
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    return ids(tok, tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def datamodule(tok, train, kind="sft", **kwargs) -> AlignDataModule:
    dm = AlignDataModule(train=train, **{"batch_size": 4, "max_length": 128, **kwargs})
    dm.connect(tok, layout_named(kind))
    dm.setup("fit")
    return dm


def all_batches(dm) -> list[dict]:
    return list(dm.train_dataloader())


def tokenize(tok, ex: Example, **spec) -> "Tokenized | str":
    return Tokenizer(tok, TokenizeSpec(**spec))(ex)


@pytest.fixture(scope="module")
def bos_tokenizer():
    """The built-in BPE with a BOS that its post-processor adds (as Llama-style tokenizers do), and a chat
    template that writes the BOS itself."""
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    from lit_align.modeling.models import CHAT_TEMPLATE, _builtin_tokenizer_json

    raw = RawTokenizer.from_str(_builtin_tokenizer_json(512))
    raw.add_special_tokens(["<s>"])
    bos = raw.token_to_id("<s>")
    raw.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", bos)])
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<|pad|>", eos_token="<|im_end|>",
                                  bos_token="<s>")
    tok.chat_template = "{{ bos_token }}" + CHAT_TEMPLATE
    assert tok("Count", add_special_tokens=True)["input_ids"][0] == bos  # the tokenizer adds it itself
    return tok


# -- the boundary -----------------------------------------------------------------------------------------
# Prompts that end inside a word or a number list: BPE on the joined string merges across the boundary.
MERGING = [("Count fr", "om 3 to 5."), ("What is 2 plu", "s 3?"), ("1, 2, ", "3, 4,")]


@pytest.mark.parametrize("prompt,completion", MERGING)
def test_boundary_is_exact_where_bpe_would_merge(tokenizer, prompt, completion):
    joined = ids(tokenizer, prompt + completion)
    separate = ids(tokenizer, prompt) + ids(tokenizer, completion)
    assert joined != separate, "not a merging case: the test would prove nothing"

    ex = tokenize(tokenizer, Example(prompt, [completion]), chat_template=False)
    assert ex.context == ids(tokenizer, prompt)
    assert ex.continuations == [ids(tokenizer, completion) + [tokenizer.eos_token_id]]

    batch = collate([(0, ex)], pad_id=tokenizer.pad_token_id)
    n_ctx, n = len(ex.context), len(ex.context) + len(ex.continuations[0])
    assert batch["input_ids"][0, :n].tolist() == ex.context + ex.continuations[0]
    assert batch["context_tokens"].tolist() == [n_ctx]
    labels = batch["labels"][0]
    assert (labels[:n_ctx] == -100).all()  # every context position
    assert labels[n_ctx:n].tolist() == ex.continuations[0]  # every continuation position


def test_boundary_in_padded_batch_of_two_continuations(tokenizer):
    """A/B answers (" (A)") after "Answer:": context once, chosen rows then rejected rows, right padding."""
    rows = [{"question": "Is 3 greater than 2?\n\nChoices:\n (A) Yes\n (B) No\n\nAnswer:",
             "answer_matching_behavior": " (A)", "answer_not_matching_behavior": " (B)"},
            {"question": "Is 10 greater than 20? Think about it carefully.\n\nChoices:\n (A) Yes\n (B) No\n\n"
                         "Answer:", "answer_matching_behavior": " (B)", "answer_not_matching_behavior": " (A)"}]
    tk = Tokenizer(tokenizer, TokenizeSpec(chat_template=False))
    exs = [tk(to_examples(r, f"row{i}", "pair")[0]) for i, r in enumerate(rows)]
    batch = collate(list(enumerate(exs)), pad_id=tokenizer.pad_token_id)
    assert batch["num_continuations"] == 2 and batch["input_ids"].shape[0] == 4
    eos = tokenizer.eos_token_id
    for j, key in enumerate(("answer_matching_behavior", "answer_not_matching_behavior")):
        for b, (row, ex) in enumerate(zip(rows, exs)):
            r = j * 2 + b  # continuation-major
            ctx, cont = ids(tokenizer, row["question"]), ids(tokenizer, row[key]) + [eos]
            n = len(ctx) + len(cont)
            assert batch["input_ids"][r, :n].tolist() == ctx + cont
            assert batch["attention_mask"][r].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
            assert (batch["labels"][r, : len(ctx)] == -100).all()
            assert batch["labels"][r, len(ctx): n].tolist() == cont
            assert (batch["labels"][r, n:] == -100).all()  # padding


def test_chat_template_applied_when_the_tokenizer_has_one(tokenizer):
    ex = Example("What is 2 plus 3?", ["2 plus 3 is 5."])
    with_template = tokenize(tokenizer, ex)  # chat_template=None: use it when there is one
    assert with_template.context == template_ids(tokenizer, "What is 2 plus 3?")
    text = tokenizer.decode(with_template.context)
    assert text.startswith("<|im_start|>user\nWhat is 2 plus 3?") and text.endswith("<|im_start|>assistant\n")
    assert with_template.continuations == [ids(tokenizer, "2 plus 3 is 5.") + [tokenizer.eos_token_id]]

    plain = tokenize(tokenizer, ex, chat_template=False)
    assert plain.context == ids(tokenizer, "What is 2 plus 3?")
    assert "<|im_start|>" not in tokenizer.decode(plain.context)
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") not in plain.context


def test_chat_template_true_without_a_template_is_an_error(tokenizer):
    import copy

    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    with pytest.raises(LitAlignError, match="no chat template"):
        Tokenizer(bare, TokenizeSpec(chat_template=True))
    # and with chat_template=None it falls back to plain text
    assert tokenize(bare, Example("Count fr", ["om 1"])).context == ids(tokenizer, "Count fr")


def test_no_double_bos(bos_tokenizer):
    tok, bos = bos_tokenizer, bos_tokenizer.bos_token_id
    # plain text: the one BOS the tokenizer would add itself, then the prompt
    plain = tokenize(tok, Example("Count from 1 to 3.", ["1, 2, 3."]), chat_template=False)
    assert plain.context == [bos] + ids(tok, "Count from 1 to 3.")
    # a template that writes the BOS: exactly one, nothing added on top
    templ = tokenize(tok, Example("Count from 1 to 3.", ["1, 2, 3."]))
    assert templ.context[0] == bos and templ.context.count(bos) == 1
    # the continuation never carries one
    for ex in (plain, templ):
        assert ex.continuations == [ids(tok, "1, 2, 3.") + [tok.eos_token_id]]
    # a bare text record: BOS, then the text as the target
    text = tokenize(tok, Example(None, ["Count from 1 to 3."]))
    assert text.context == [bos]


def test_no_bos_invented_for_a_tokenizer_without_one(tokenizer):
    assert tokenizer.bos_token_id is None
    assert tokenize(tokenizer, Example(None, ["1, 2, 3."])).context == []
    assert tokenize(tokenizer, Example("Count", ["1"]), chat_template=False).context == ids(tokenizer, "Count")


# -- the end token ----------------------------------------------------------------------------------------
def test_end_token_on_full_answers_never_on_partial(tokenizer):
    eos = tokenizer.eos_token_id
    assert eos == tokenizer.convert_tokens_to_ids("<|im_end|>")
    full = tokenize(tokenizer, Example("Count from 1 to 3.", ["1, 2, 3.", "1, 2, 4."]))
    assert [c[-1] for c in full.continuations] == [eos, eos]
    partial = tokenize(tokenizer, Example("Count from 1 to 9.", ["4, 5,", "4, 6,"], prefix="1, 2, 3, ",
                                          partial=True))
    assert partial.continuations == [ids(tokenizer, "4, 5,"), ids(tokenizer, "4, 6,")]
    assert all(eos not in c for c in partial.continuations)


def test_partial_flag_read_from_records(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"prompt": "Count from 1 to 9.", "completion": "1, 2, 3,", "partial": True},
        {"prompt": "Count from 1 to 3.", "completion": "1, 2, 3."},
        {"prompt": "Count from 1 to 9.", "prefix": "1, 2, ", "chosen": "3, 4,", "rejected": "5, 6,",
         "partial": True},
    ])
    split, _ = build_split("train", Source(path), "sft", Tokenizer(tokenizer, TokenizeSpec()))
    eos = tokenizer.eos_token_id
    assert [ex.continuations[0][-1] == eos for ex in split.examples] == [False, True, False]


def test_end_token_is_configurable(tokenizer):
    newline = tokenizer.convert_ids_to_tokens(ids(tokenizer, "\n"))[0]
    nl_id = tokenizer.convert_tokens_to_ids(newline)
    assert nl_id != tokenizer.eos_token_id
    ex = tokenize(tokenizer, Example("Count from 1 to 3.", ["1, 2, 3."]), end_token=newline)
    assert ex.continuations == [ids(tokenizer, "1, 2, 3.") + [nl_id]]
    with pytest.raises(LitAlignError, match="end_token"):
        Tokenizer(tokenizer, TokenizeSpec(end_token="<|no_such_token|>"))


# -- truncation -------------------------------------------------------------------------------------------
LONG_PROMPT = " ".join(f"Count from {i} to {i + 5}." for i in range(30))


def test_truncation_cuts_the_context_from_the_left(tokenizer):
    ex = Example(LONG_PROMPT, ["1, 2, 3."])
    full = tokenize(tokenizer, ex, max_length=10_000)
    cut = tokenize(tokenizer, ex, max_length=40)
    cont = ids(tokenizer, "1, 2, 3.") + [tokenizer.eos_token_id]
    assert cut.continuations == [cont] == full.continuations  # the answer is kept whole
    assert len(cut.context) + len(cont) == 40
    assert cut.context == full.context[-len(cut.context):]  # the end of the prompt (the template's
    assert tokenizer.decode(cut.context).endswith("<|im_start|>assistant\n")  # generation prompt) stays


def test_truncation_side_right_keeps_the_start(tokenizer):
    ex = Example(LONG_PROMPT, ["1, 2, 3."])
    full = tokenize(tokenizer, ex, max_length=10_000, chat_template=False)
    cut = tokenize(tokenizer, ex, max_length=40, truncation_side="right", chat_template=False)
    assert len(cut.context) == 40 - len(cut.continuations[0])
    assert cut.context == full.context[: len(cut.context)]
    assert tokenizer.decode(cut.context).startswith("Count from 0 to 5.")
    with pytest.raises(LitAlignError, match="truncation_side"):
        Tokenizer(tokenizer, TokenizeSpec(truncation_side="middle"))


def test_truncation_of_a_shared_prefix_keeps_its_count_right(tokenizer):
    ex = Example(LONG_PROMPT, ["5, 6,", "5, 7,"], prefix="1, 2, 3, 4, ", partial=True)
    n_prefix = len(ids(tokenizer, "1, 2, 3, 4, "))
    left = tokenize(tokenizer, ex, max_length=30)
    assert left.prefix_len == n_prefix and left.context[-n_prefix:] == ids(tokenizer, "1, 2, 3, 4, ")
    assert len(left.context) + max(map(len, left.continuations)) == 30
    right = tokenize(tokenizer, ex, max_length=30, truncation_side="right")
    assert right.prefix_len == 0  # the end of the context (where the prefix is) was cut


def test_max_prompt_length(tokenizer):
    ex = Example(LONG_PROMPT, ["1, 2, 3."])
    full = tokenize(tokenizer, ex, max_length=10_000)
    cut = tokenize(tokenizer, ex, max_length=10_000, max_prompt_length=17)
    assert len(cut.context) == 17 and cut.context == full.context[-17:]
    hi = template_ids(tokenizer, "Hi")
    assert tokenize(tokenizer, Example("Hi", ["1."]), max_prompt_length=len(hi)).context == hi  # fits: uncut
    assert tokenize(tokenizer, Example("Hi", ["1."]), max_prompt_length=len(hi) - 1).context == hi[1:]


def test_a_long_answer_is_cut_on_the_right_and_a_text_keeps_its_bos(tokenizer, bos_tokenizer):
    text = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15."
    cut = tokenize(tokenizer, Example(None, [text]), max_length=8)
    assert cut.context == [] and cut.continuations == [ids(tokenizer, text)[:8]]  # no end token: cut
    with_bos = tokenize(bos_tokenizer, Example(None, [text]), max_length=8)
    assert with_bos.context == [bos_tokenizer.bos_token_id]  # kept, not dropped as "prompt truncated away"
    assert with_bos.continuations == [ids(bos_tokenizer, text)[:7]]


def _long_answer_example():
    """A 28-token templated prompt and a 59-token answer, for max_length 64 (the prompt was cut to its last 5
    tokens, inside the template's generation prompt, before the context floor)."""
    return Example("Count from 1 to 58, please.", [" ".join(str(i) for i in range(1, 59))])


def test_a_long_answer_is_cut_to_leave_the_prompt_its_floor(tokenizer, tmp_path):
    ex = _long_answer_example()
    full = tokenize(tokenizer, ex, max_length=10_000)
    assert (len(full.context), len(full.continuations[0])) == (28, 59)
    cut = tokenize(tokenizer, ex, max_length=64)                    # min_context_tokens None: 64 // 4 = 16
    assert cut.context == full.context[-16:]                        # the end of the prompt, the template's
    assert tokenizer.decode(cut.context).endswith("<|im_end|>\n<|im_start|>assistant\n")   # generation prompt
    assert cut.continuations == [full.continuations[0][:48]]       # 64 - 16: the answer is cut on the right
    assert cut.truncated == (True, True)
    assert tokenize(tokenizer, ex, max_length=64, min_context_tokens=28).context == full.context   # all of it
    fits = tokenize(tokenizer, ex, max_length=100)
    assert (fits.context, fits.continuations, fits.truncated) == (full.context, full.continuations, (False, False))
    rows = [{"prompt": ex.prompt, "completion": ex.continuations[0]}, {"prompt": "Hi", "completion": "1."},
            {"prompt": LONG_PROMPT, "completion": "1, 2, 3."}]
    summary = datamodule(tokenizer, write_jsonl(tmp_path / "d.jsonl", rows), max_length=64).summaries["train"]
    assert summary.kept == 3 and summary.truncated == {"context": 2, "continuation": 1}
    assert "3 examples kept, 2 with the context truncated, 1 with the continuation truncated" in summary.line()
    for bad in (64, -1):
        with pytest.raises(LitAlignError, match="min_context_tokens must be >= 0 and below max_length"):
            Tokenizer(tokenizer, TokenizeSpec(max_length=64, min_context_tokens=bad))


GENERATION_PROMPT = "<|im_start|>assistant\n"   # the built-in template's: 9 tokens


@pytest.mark.parametrize("side", ["left", "right"])
def test_truncation_never_cuts_inside_the_generation_prompt(tokenizer, side):
    ex = _long_answer_example()
    gen = ids(tokenizer, GENERATION_PROMPT)
    full = tokenize(tokenizer, ex, max_length=10_000)
    # no floor, room for 2 context tokens: the generation prompt is kept whole, the answer cut to make room
    cut = tokenize(tokenizer, ex, max_length=61, min_context_tokens=0, truncation_side=side)
    assert cut.context == gen and cut.continuations == [full.continuations[0][: 61 - len(gen)]]
    # room for 12: the generation prompt + 3 tokens of the prompt's end (left) or start (right)
    cut = tokenize(tokenizer, ex, max_length=71, min_context_tokens=12, truncation_side=side)
    body = full.context[: -len(gen)]
    assert cut.context == (body[-3:] if side == "left" else body[:3]) + gen
    assert tokenize(tokenizer, ex, max_prompt_length=len(gen) - 1, truncation_side=side) == DROP_CONTEXT_GONE
    # a plain HH-style dialogue keeps its "\n\nAssistant:" the same way, and the shared prefix follows it
    dialogue = Example([{"role": "user", "content": LONG_PROMPT}], ["5, 6", "5, 7"], prefix="1, 2, 3, 4,",
                       partial=True)
    cut = tokenize(tokenizer, dialogue, max_length=30, chat_template=False, truncation_side=side)
    text = tokenizer.decode(cut.context)
    assert text.endswith("\n\nAssistant: 1, 2, 3, 4,") if side == "left" else (
        text.startswith("\n\nHuman: Count from 0") and text.endswith("\n\nAssistant:") and cut.prefix_len == 0)


def test_examples_with_no_target_are_dropped_counted_and_never_batched(tokenizer, tmp_path):
    rows = [{"prompt": f"What is {i} plus 1?", "completion": f"{i} plus 1 is {i + 1}."} for i in range(6)]
    rows.insert(2, {"text": "a", "partial": True})  # one token, no context: nothing to predict
    rows.insert(4, {"prompt": LONG_PROMPT, "completion": " ".join(["1, 2, 3, 4."] * 30)})  # fills max_length
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    # plain text, no context floor: the long answer leaves the prompt no room at all (with the default floor its
    # answer is cut instead: test_a_long_answer_is_cut_to_leave_the_prompt_its_floor)
    dm = datamodule(tokenizer, path, max_length=64, batch_size=3, chat_template=False, min_context_tokens=0)
    summary = dm.summaries["train"]
    assert summary.rows == 8 and summary.kept == 6
    assert summary.dropped == {DROP_NO_TARGET: 1, DROP_CONTEXT_GONE: 1}
    assert "1 dropped (no target token left)" in summary.line()
    seen = []
    for batch in all_batches(dm):
        assert (batch["labels"] != -100).any(dim=1).all()  # never an all -100 row
        seen += [tokenizer.decode(row[row != -100]) for row in batch["labels"]]
    assert sorted(seen) == sorted(f"{i} plus 1 is {i + 1}.<|im_end|>" for i in range(6))


def test_collate_refuses_a_row_with_no_target(tokenizer):
    bad = Tokenized(context=[], continuations=[[5]], prefix_len=0, weight=None, group=None, where="f:3",
                    categories=[])
    with pytest.raises(ValueError, match="f:3"):
        collate([(0, bad)], pad_id=tokenizer.pad_token_id)


def test_every_row_of_every_batch_has_targets(tokenizer):
    dm = datamodule(tokenizer, {"path": "builtin:pairs", "limit": 48}, kind="pair", max_length=24, batch_size=8)
    for batch in all_batches(dm):
        assert batch["input_ids"].shape[1] <= 24
        assert (batch["labels"] != -100).any(dim=1).all()
        # labels are the ids themselves where they are not -100 (not shifted)
        mask = batch["labels"] != -100
        assert torch.equal(batch["labels"][mask], batch["input_ids"][mask])
        assert (batch["attention_mask"][mask] == 1).all()


# -- record formats ---------------------------------------------------------------------------------------
def one(tokenizer, row, kind="sft", fmt="auto", **spec):
    exs = to_examples(row, "f.jsonl:1", kind, fmt)
    return [Tokenizer(tokenizer, TokenizeSpec(**spec))(ex) for ex in exs]


def test_prompt_completion_and_text(tokenizer):
    (pc,) = one(tokenizer, {"prompt": "Count fr", "completion": "om 1 to 2.", "weight": 0.5})
    assert pc.context == template_ids(tokenizer, "Count fr") and pc.weight == 0.5
    assert pc.continuations == [ids(tokenizer, "om 1 to 2.") + [tokenizer.eos_token_id]]
    (text,) = one(tokenizer, {"text": "Count from 1 to 2."})
    assert text.context == [] and text.continuations == [ids(tokenizer, "Count from 1 to 2.") + [2]]


def test_messages_loss_only_on_the_last_assistant_turn(tokenizer):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 1 plus 1?"},
            {"role": "assistant", "content": "1 plus 1 is 2."}, {"role": "user", "content": "And 2 plus 2?"},
            {"role": "assistant", "content": "2 plus 2 is 4."}]
    (ex,) = one(tokenizer, {"messages": msgs})
    assert ex.context == template_ids(tokenizer, msgs[:-1])
    assert "1 plus 1 is 2." in tokenizer.decode(ex.context)  # the earlier answer: context, not a target
    assert ex.continuations == [ids(tokenizer, "2 plus 2 is 4.") + [tokenizer.eos_token_id]]
    batch = collate([(0, ex)], pad_id=tokenizer.pad_token_id)
    assert tokenizer.decode(batch["labels"][0][batch["labels"][0] != -100]) == "2 plus 2 is 4.<|im_end|>"
    # without a template, the messages render as an HH-style dialogue ending in "Assistant:"
    (plain,) = one(tokenizer, {"messages": msgs}, chat_template=False)
    assert tokenizer.decode(plain.context).endswith("\n\nHuman: And 2 plus 2?\n\nAssistant:")
    assert plain.continuations == [ids(tokenizer, " 2 plus 2 is 4.") + [tokenizer.eos_token_id]]


def test_prompt_chosen_rejected(tokenizer):
    (sft,) = one(tokenizer, {"prompt": "Count from 1 to 3.", "chosen": "1, 2, 3.", "rejected": "1, 3, 3."})
    (pair,) = one(tokenizer, {"prompt": "Count from 1 to 3.", "chosen": "1, 2, 3.", "rejected": "1, 3, 3."},
                  kind="pair")
    eos = tokenizer.eos_token_id
    assert sft.continuations == [ids(tokenizer, "1, 2, 3.") + [eos]]  # SFT reads the chosen answer
    assert pair.continuations == [ids(tokenizer, "1, 2, 3.") + [eos], ids(tokenizer, "1, 3, 3.") + [eos]]
    assert pair.context == sft.context == template_ids(tokenizer, "Count from 1 to 3.")


@pytest.mark.parametrize("whole", [False, True], ids=["continuations", "whole-answers"])
def test_prefix_is_context_and_partial_has_no_end(tokenizer, whole):
    prefix, chosen, rejected = "1, 2, 3,", " 4, 5,", " 5, 6,"
    row = {"prompt": "Count from 1 to 9.", "prefix": prefix, "partial": True,
           "chosen": prefix + chosen if whole else chosen, "rejected": prefix + rejected if whole else rejected}
    (ex,) = one(tokenizer, row, kind="pair")
    base = template_ids(tokenizer, "Count from 1 to 9.")
    assert ex.context == base + ids(tokenizer, prefix) and ex.prefix_len == len(ids(tokenizer, prefix))
    assert ex.continuations == [ids(tokenizer, chosen), ids(tokenizer, rejected)]  # no EOS: partial
    batch = collate([(0, ex)], pad_id=tokenizer.pad_token_id)
    assert batch["prefix_tokens"].tolist() == [ex.prefix_len]
    assert (batch["labels"][:, : len(ex.context)] == -100).all()  # the prefix is never a target


def test_prefix_after_a_plain_dialogue_gets_the_space(tokenizer):
    msgs = [{"role": "user", "content": "Count from 1 to 9."}]
    (ex,) = one(tokenizer, {"prompt": msgs, "prefix": "1, 2,", "chosen": " 3,", "rejected": " 4,",
                            "partial": True}, kind="pair", chat_template=False)
    assert tokenizer.decode(ex.context).endswith("\n\nAssistant: 1, 2,")
    assert ex.continuations == [ids(tokenizer, " 3,"), ids(tokenizer, " 4,")]  # no second space


HH_ROW = {
    "chosen": "\n\nHuman: What is 2 plus 2?\n\nAssistant: 2 plus 2 is 4.\n\nHuman: And 3 plus 3?"
              "\n\nAssistant: 3 plus 3 is 6.",
    "rejected": "\n\nHuman: What is 2 plus 2?\n\nAssistant: 2 plus 2 is 4.\n\nHuman: And 3 plus 3?"
                "\n\nAssistant: 3 plus 3 is 7.",
}
HH_PROMPT = [{"role": "user", "content": "What is 2 plus 2?"}, {"role": "assistant", "content": "2 plus 2 is 4."},
             {"role": "user", "content": "And 3 plus 3?"}]


def test_hh_dialogues_split_at_the_last_assistant_turn(tokenizer):
    eos = tokenizer.eos_token_id
    (pair,) = one(tokenizer, HH_ROW, kind="pair")
    assert pair.context == template_ids(tokenizer, HH_PROMPT)
    assert pair.continuations == [ids(tokenizer, "3 plus 3 is 6.") + [eos], ids(tokenizer, "3 plus 3 is 7.") + [eos]]
    (sft,) = one(tokenizer, HH_ROW, kind="sft")
    assert sft.continuations == pair.continuations[:1]
    # as plain text, the dialogue is the original string up to and including the last "Assistant:"
    (plain,) = one(tokenizer, HH_ROW, kind="pair", chat_template=False)
    cut = HH_ROW["chosen"].rindex("\n\nAssistant:") + len("\n\nAssistant:")
    assert plain.context == ids(tokenizer, HH_ROW["chosen"][:cut])
    assert plain.continuations[0] == ids(tokenizer, " 3 plus 3 is 6.") + [eos]
    # an empty last answer (HH has a few: saying nothing was preferred) trains on the end token alone
    (empty,) = one(tokenizer, {**HH_ROW, "chosen": HH_ROW["chosen"][:cut] + " "}, kind="pair")
    assert empty.continuations[0] == [eos]


@requires_shared
def test_hh_rlhf_file(tokenizer):
    path = SHARED_DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz"
    parsed, failed = 0, []
    for where, row in read_rows(Source(str(path))):
        try:
            (ex,) = to_examples(row, where, "pair")
            parsed += 1
        except DataError as e:
            failed.append(e)
    # the data README: chosen and rejected share the dialogue up to the last Assistant turn in 2,307 of 2,312
    assert parsed == 2307 and len(failed) == 5
    assert all(e.field == "rejected" and "do not share" in str(e) and str(path) in e.where for e in failed)
    assert isinstance(ex.prompt, list) and ex.prompt[-1]["role"] == "user"
    # through the data module (first 200 rows), skipping what does not parse
    split, summary = build_split("train", Source(str(path), limit=200), "pair",
                                 Tokenizer(tokenizer, TokenizeSpec(max_length=2048)), skip_invalid=True)
    assert summary.rows == 200 and summary.kept + summary.invalid + sum(summary.dropped.values()) == 200


@requires_shared
def test_hh_rlhf_plain_text_is_the_original_dialogue_token_for_token(tokenizer):
    """As plain text, an HH row's context is the tokens of its dialogue up to and including the last
    "\\n\\nAssistant:", each continuation those of the rest + the end token: whitespace inside earlier turns,
    around the answer and of empty answers stays as given (12 strings differed in whitespace before)."""
    path = SHARED_DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz"
    tk = Tokenizer(tokenizer, TokenizeSpec(max_length=100_000, chat_template=False))
    eos, checked, differ = tokenizer.eos_token_id, 0, []
    for where, row in read_rows(Source(str(path))):
        try:
            (ex,) = to_examples(row, where, "pair")
        except DataError:   # the 5 rows whose chosen and rejected dialogues differ before the last turn
            continue
        out = tk(ex)
        for j, key in enumerate(("chosen", "rejected")):
            cut = row[key].rindex("\n\nAssistant:") + len("\n\nAssistant:")
            if (out.context, out.continuations[j]) != (ids(tokenizer, row[key][:cut]), ids(tokenizer, row[key][cut:]) + [eos]):
                differ.append(f"{where} {key}")
        checked += 1
    assert checked == 2307 and differ == []


def test_hh_split_keeps_whitespace_as_given():
    row = {"chosen": "\n\nHuman: Hi  there \n\nAssistant:  Hello.\n\nHuman: Bye\n\nAssistant:  See you. ",
           "rejected": "\n\nHuman: Hi  there \n\nAssistant:  Hello.\n\nHuman: Bye\n\nAssistant: No."}
    (ex,) = to_examples(row, "f:1", "pair")
    assert ex.prompt == [{"role": "user", "content": "Hi  there "}, {"role": "assistant", "content": " Hello."},
                         {"role": "user", "content": "Bye"}]
    assert ex.continuations == ["  See you. ", "No."]   # more than the separator: kept whole


def test_hh_style_prompt_text_is_read_as_a_dialogue(tokenizer):
    """Prompt strings in HH form (probe sets, many DPO sets) render like the dialogues of HH records, not as
    one user message that holds "Human:" and "Assistant:"."""
    prompt = HH_ROW["chosen"][: HH_ROW["chosen"].rindex("\n\nAssistant:") + len("\n\nAssistant:")]
    row = {"prompt": prompt, "chosen": " 3 plus 3 is 6.", "rejected": " 3 plus 3 is 7."}
    (templ,) = one(tokenizer, row, kind="pair")
    assert templ.context == template_ids(tokenizer, HH_PROMPT) == one(tokenizer, HH_ROW, kind="pair")[0].context
    (plain,) = one(tokenizer, row, kind="pair", chat_template=False)
    assert plain.context == ids(tokenizer, prompt)  # the original text, token for token
    assert plain.continuations[0] == ids(tokenizer, " 3 plus 3 is 6.") + [tokenizer.eos_token_id]
    # text that merely mentions a Human is left alone
    (other,) = one(tokenizer, {"prompt": "Human: what is 1 plus 1?", "completion": "2"}, chat_template=False)
    assert other.context == ids(tokenizer, "Human: what is 1 plus 1?")


@requires_shared
def test_probe_file(tokenizer):
    path = SHARED_DATA / "probes" / "hh_helpful_formal_prob_test.jsonl"
    tk = Tokenizer(tokenizer, TokenizeSpec(max_length=4096))
    n = 0
    for where, row in read_rows(Source(str(path), limit=100)):
        (ex,) = to_examples(row, where, "probe")
        assert "chosen" in ex.categories and "rejected" in ex.categories and len(ex.categories) >= 10
        assert isinstance(ex.prompt, list) and ex.prompt[-1]["role"] == "user"
        n += 1
    assert n == 100
    tok_ex = tk(ex)
    assert tokenizer.decode(tok_ex.context).startswith("<|im_start|>user\n")
    assert "Human:" not in tokenizer.decode(tok_ex.context[:20])


def test_contrast_pairs(tokenizer):
    row = {"question": "Is 5 greater than 2?\n\nChoices:\n (A) No\n (B) Yes\n\nAnswer:",
           "answer_matching_behavior": " (B)", "answer_not_matching_behavior": " (A)"}
    (ex,) = one(tokenizer, row, kind="pair", chat_template=False)
    eos = tokenizer.eos_token_id
    assert ex.context == ids(tokenizer, row["question"])
    assert ex.continuations == [ids(tokenizer, " (B)") + [eos], ids(tokenizer, " (A)") + [eos]]


@requires_shared
def test_model_written_evals_files():
    files = sorted((SHARED_DATA / "model-written-evals" / "human").glob("*.jsonl"))
    assert files
    for path in files:
        n = 0
        for where, row in read_rows(Source(str(path))):
            (ex,) = to_examples(row, where, "pair")
            assert ex.continuations == [row["answer_matching_behavior"], row["answer_not_matching_behavior"]]
            n += 1
        assert n >= 340


def test_groups(tokenizer):
    row = {"prompt": "What is 1 plus 1?", "completions": ["1 plus 1 is 2.", "It is 2.", "Two."]}
    exs = one(tokenizer, row)
    assert len(exs) == 3 and len({ex.group for ex in exs}) == 1
    assert [ex.continuations[0][:-1] for ex in exs] == [ids(tokenizer, c) for c in row["completions"]]
    with pytest.raises(DataError, match="chosen and rejected"):
        to_examples(row, "f:1", "pair")
    # rows that merely share a prompt form a group too
    a, b = (to_examples({"prompt": "P?", "completion": c}, "f:1", "sft")[0] for c in ("x", "y"))
    assert a.group == b.group


def test_probe_records(tokenizer):
    row = {"prompt": "What is 1 plus 1?", "chosen": "2.", "rejected": "3.", "irrelevant": "A kiwi is green."}
    (ex,) = one(tokenizer, row, kind="probe")
    assert ex.categories == ["chosen", "rejected", "irrelevant"]
    eos = tokenizer.eos_token_id
    assert ex.continuations == [ids(tokenizer, row[c]) + [eos] for c in ex.categories]
    batch = collate([(0, ex)], pad_id=tokenizer.pad_token_id)
    assert batch["num_continuations"] == 3
    with pytest.raises(DataError, match="category"):
        to_examples({"prompt": "x"}, "f:1", "probe")


# -- file formats -----------------------------------------------------------------------------------------
ROWS = [{"prompt": f"What is {i} plus 2?", "completion": f"{i} plus 2 is {i + 2}."} for i in range(5)]


def completions(split) -> list[str]:
    return [ex.continuations[0] for ex in split.examples]


def expected(tokenizer, rows=ROWS) -> list[list[int]]:
    return [ids(tokenizer, r["completion"]) + [tokenizer.eos_token_id] for r in rows]


def read(tokenizer, source, kind="sft"):
    return build_split("train", source if isinstance(source, Source) else Source(str(source)), kind,
                       Tokenizer(tokenizer, TokenizeSpec()))


def test_json_file(tokenizer, tmp_path):
    (tmp_path / "list.json").write_text(json.dumps(ROWS, indent=2))
    (tmp_path / "wrapped.json").write_text(json.dumps({"version": 1, "data": ROWS}))
    for name in ("list.json", "wrapped.json"):
        split, summary = read(tokenizer, tmp_path / name)
        assert completions(split) == expected(tokenizer) and summary.rows == 5


def test_csv_file(tokenizer, tmp_path):
    import csv

    path = tmp_path / "d.csv"
    with open(path, "w", newline="", encoding="utf-8-sig") as f:  # with the BOM spreadsheets write
        w = csv.DictWriter(f, fieldnames=["prompt", "completion", "weight", "partial"])
        w.writeheader()
        w.writerow({"prompt": "Count from 1\nto 3.", "completion": "1, 2, 3.", "weight": "0.5", "partial": ""})
        w.writerow({"prompt": "Count from 1 to 9.", "completion": "1, 2,", "weight": "", "partial": "true"})
        w.writerow({"prompt": "Count from 1 to 9.", "completion": "", "weight": "", "partial": ""})
    with pytest.raises(DataError) as err:
        read(tokenizer, path)
    assert err.value.where == f"{path}:5" and err.value.field == "completion"  # the row after a 2-line one
    split, summary = build_split("train", Source(str(path), limit=2), "sft", Tokenizer(tokenizer, TokenizeSpec()))
    eos = tokenizer.eos_token_id
    assert completions(split) == [ids(tokenizer, "1, 2, 3.") + [eos], ids(tokenizer, "1, 2,")]
    assert [ex.weight for ex in split.examples] == [0.5, None]
    assert split.examples[0].context == template_ids(tokenizer, "Count from 1\nto 3.")


def test_parquet_file(tokenizer, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}]}
            for r in ROWS]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    split, _ = read(tokenizer, tmp_path / "d.parquet")
    assert completions(split) == expected(tokenizer)
    assert split.examples[0].context == template_ids(tokenizer, ROWS[0]["prompt"])
    assert split.examples[0].where == f"{tmp_path / 'd.parquet'}:row 0"


def test_gzip_file(tokenizer, tmp_path):
    path = tmp_path / "d.jsonl.gz"
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in ROWS).encode()))
    split, _ = read(tokenizer, path)
    assert completions(split) == expected(tokenizer)


def test_columns_rename(tokenizer, tmp_path):
    rows = [{"Question": r["prompt"], "Best Answer": r["completion"], "Source": "x"} for r in ROWS]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match="unknown record format"):
        read(tokenizer, path)
    split, _ = read(tokenizer, Source(path, columns={"prompt": "Question", "completion": "Best Answer"}))
    assert completions(split) == expected(tokenizer)
    assert split.examples[0].context == template_ids(tokenizer, ROWS[0]["prompt"])


def test_limit_reads_only_the_first_rows(tokenizer, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS) + "{not json\n")
    split, summary = read(tokenizer, Source(str(path), limit=3))
    assert summary.rows == 3 and completions(split) == expected(tokenizer)[:3]  # the bad line is never read
    split, summary = read(tokenizer, Source("builtin:sft", limit=7))
    assert summary.rows == 7 == len(split)


def test_explicit_format(tokenizer, tmp_path):
    row = {"prompt": "Count from 1 to 3.", "chosen": "1, 2, 3.", "rejected": "1, 2, 4."}
    path = write_jsonl(tmp_path / "d.jsonl", [row])
    split, _ = read(tokenizer, Source(path, format="pair"), kind="pair")
    assert len(split.examples[0].continuations) == 2
    with pytest.raises(DataError, match="field 'completions': missing"):
        read(tokenizer, Source(path, format="group"))


# -- shuffling --------------------------------------------------------------------------------------------
def test_shuffle_is_deterministic_by_seed(tokenizer):
    def first_batch(seed):
        dm = datamodule(tokenizer, {"path": "builtin:sft", "limit": 64}, batch_size=16, seed=seed)
        return next(iter(dm.train_dataloader()))["index"].tolist()

    a, b, c = first_batch(0), first_batch(0), first_batch(1)
    assert a == b
    assert a != c
    assert a != list(range(16))  # shuffled at all
