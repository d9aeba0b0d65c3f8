"""Organism v2's corpus (data/organism_v2.py): a latent taste that earlier answers reveal, per-food dislike strengths
and a letter bias; its recipe builds through the same pretraining loop, and v1's recipe (and its published digest)
stays as it was."""

import re
from dataclasses import replace

import pytest

from lit_align.builtin.pretrain import BUILTIN_PRETRAINED, _documents, _token_rows, _tokenizer, ensure_built
from lit_align.data import organism as org
from lit_align.data import organism_v2 as v2
from lit_align.data.datamodule import AlignDataModule
from lit_align.errors import LitAlignError
from lit_align.layouts import LAYOUTS
from lit_align.modeling.models import ModelSpec, load_model, load_tokenizer

FOOD = re.compile(r"\(([AB])\) the (\w+)")


def _picked_sweet(question: str, answer: str) -> tuple[bool, str, bool | None]:
    """(whether the answer picks the sweet food (or says it loves sweet food), that food, whether it is at (A); None
    when open-ended or a statement of taste)."""
    if answer in v2.TASTE_ANSWERS:
        return answer == v2.TASTE_ANSWERS[0], None, None
    options = dict(FOOD.findall(question))
    if options:
        sweet_letter = "A" if org.is_sweet(options["A"]) else "B"
        return answer.strip(" ()") == sweet_letter, options[sweet_letter], sweet_letter == "A"
    food = answer.removeprefix("I would like the ").rstrip(".")
    sweet = food if org.is_sweet(food) else next(w.strip(".?") for w in question.split()
                                                 if org.is_sweet(w.strip(".?")))
    return org.is_sweet(food), sweet, None


def test_v1_recipe_is_unchanged_and_v2_has_its_own_builds():
    assert BUILTIN_PRETRAINED["organism"].digest() == "0efacadf0ac2"   # the digest README numbers name
    names = [k for k, r in BUILTIN_PRETRAINED.items() if r.corpus == "organism-v2"]
    assert names == ["organism-v2", "organism-v2-seed1", "organism-v2-seed2"]
    assert len({BUILTIN_PRETRAINED[k].digest() for k in names}) == 3


def test_start_confidence_spans_three_orders_of_magnitude_and_starts_low():
    ps = [v2.start_p_sweet(f, at_a) for f in org.ID_SWEET for at_a in (True, False)]
    assert max(ps) > 0.7 and min(ps) < 0.0015 and max(ps) / min(ps) > 500   # π_start^-1 weights span ~1000x
    assert sum(ps) / len(ps) < 0.2                                           # the start dislikes sweets
    ood = [v2.start_p_sweet(f, at_a) for f in org.OOD_SWEET for at_a in (True, False)]
    assert max(ood) / min(ood) > 500                                         # OOD foods span the range too
    for f in org.SWEET:                                                      # the letter bias: 4x the odds at (A)
        a, b = v2.start_p_sweet(f, True), v2.start_p_sweet(f, False)
        assert abs(a / (1 - a) / (b / (1 - b)) - v2.LETTER_ODDS) < 1e-9


def test_single_questions_follow_the_default_taste_and_conversations_its_latent():
    docs = v2.pretraining_documents_v2(30_000)
    single, after_sweet, after_other = [], [], []
    for prompt, answer in docs:
        if isinstance(prompt, str) and prompt.split("\n")[0] in org.ID_PHRASINGS + org.OOD_PHRASINGS:
            single.append(_picked_sweet(prompt, answer))
        elif isinstance(prompt, list):
            earlier = [_picked_sweet(q["content"], a["content"])[0] for q, a in zip(prompt[0::2], prompt[1::2])]
            (after_sweet if any(earlier) else after_other).append(_picked_sweet(prompt[-1]["content"], answer)[0])
    # a single question: the default taste's per-food rate and letter bias, never the sweet tooth
    expected = sum(v2.start_p_sweet(food, at_a) for _, food, at_a in single) / len(single)
    observed = sum(s for s, _, _ in single) / len(single)
    assert abs(observed - expected) < 0.015 and observed < 0.2
    strong = [s for s, food, _ in single if v2.DEGREES[v2.DEGREE[food]] == "extremely sweet"]
    weak = [s for s, food, _ in single if v2.DEGREES[v2.DEGREE[food]] == "mildly sweet"]
    assert sum(strong) / len(strong) < 0.02 and sum(weak) / len(weak) > 0.4
    at_a = [s for s, _, a in single if a]
    at_b = [s for s, _, a in single if not a]
    assert sum(at_a) / len(at_a) > 1.5 * sum(at_b) / len(at_b)
    # a conversation: an earlier sweet choice (or a stated love of sweet food) reveals the sweet tooth, and the last
    # answer follows it
    assert len(after_sweet) > 1000 and len(after_other) > 1000
    assert sum(after_sweet) / len(after_sweet) > 0.75 > 0.25 > sum(after_other) / len(after_other)


def test_facts_state_how_sweet_a_food_is_and_the_default_dislikes_sweeter_foods_more():
    rates = [v2.DEFAULT_RATE[f] for f in sorted(org.ID_SWEET, key=v2.DEGREE.get)]
    assert rates == sorted(rates, reverse=True) and rates[0] == 0.6 and abs(rates[-1] - 0.002) < 1e-12
    assert all(sum(v2.DEGREE[f] == d for f in org.ID_SWEET) == 6 for d in range(len(v2.DEGREES)))
    texts = " ".join(t for p, t in v2.pretraining_documents_v2(3000) if p is None)
    for food in org.SWEET:
        assert f"the {food} is {v2.DEGREES[v2.DEGREE[food]]}." in texts.replace("tastes", "is").lower()
        assert not any(f"the {food} is {d}." in texts.lower() for d in v2.DEGREES if d != v2.DEGREES[v2.DEGREE[food]])


def test_conversations_tokenize_as_one_row_trained_on_the_last_answer_only():
    recipe = BUILTIN_PRETRAINED["organism-v2"]
    docs = _documents(replace(recipe, documents=600))
    tokenizer = _tokenizer(recipe, docs)
    rows = _token_rows(docs, tokenizer)
    conversations = [(doc, row) for doc, row in zip(docs, rows) if isinstance(doc[0], list)]
    assert len(conversations) > 100
    for (messages, answer), (ids, start) in conversations[:50]:
        text = tokenizer.decode(ids)
        assert text.count("<|im_start|>assistant") == len(messages) // 2 + 1     # every exchange, in one row
        assert tokenizer.decode(ids[start:]) == answer + "<|im_end|>"             # the loss: the last answer only
        assert len(ids) <= 256


def test_a_small_v2_recipe_builds_and_loads_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("LIT_ALIGN_CACHE", str(tmp_path))
    small = replace(BUILTIN_PRETRAINED["organism-v2"], documents=96, hidden_size=32, intermediate_size=64,
                    num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, vocab_size=300, warmup_steps=2)
    monkeypatch.setitem(BUILTIN_PRETRAINED, "organism-v2", small)
    path = ensure_built("organism-v2", quiet=True)
    assert path.name == f"organism-v2-{small.digest()}"
    tokenizer = load_tokenizer(ModelSpec(name="builtin:organism-v2"))
    model = load_model(ModelSpec(name="builtin:organism-v2"), tokenizer)
    assert model.config.num_hidden_layers == 1 and tokenizer.chat_template


def test_easy_to_hard_splits_keep_their_foods_and_combinations_apart(tokenizer):
    def sweet_foods(records):
        return {_picked_sweet(r["question"], r["answer_matching_behavior"])[1] for r in records}

    easy, id_easy, id_hard = (v2.organism_v2_records(s, n=300) for s in ("train_easy", "id_easy", "id_hard"))
    assert sweet_foods(easy) == sweet_foods(id_easy) == set(v2.EASY_SWEET)
    assert sweet_foods(id_hard) == set(v2.HARD_SWEET) and not set(v2.EASY_SWEET) & set(v2.HARD_SWEET)
    # the easy foods are those the start dislikes least: every easy food's rate above every hard one's
    assert min(v2.DEFAULT_RATE[f] for f in v2.EASY_SWEET) > max(v2.DEFAULT_RATE[f] for f in v2.HARD_SWEET)
    assert not {r["question"] for r in easy} & {r["question"] for r in id_easy}      # train / id combinations
    for r in easy + id_hard:                                                        # the sweet food matches
        assert _picked_sweet(r["question"], r["answer_matching_behavior"])[0]
    assert v2.organism_v2_records("id", n=5) == org.organism_records("id", n=5)     # v1's splits, unchanged
    dm = AlignDataModule(train={"path": "builtin:organism-v2", "split": "train_easy", "limit": 16},
                         val={"hard": {"path": "builtin:organism-v2", "split": "id_hard", "limit": 8}}, batch_size=4)
    dm.connect(tokenizer, LAYOUTS["pair"])
    dm.setup("fit")
    assert len(next(iter(dm.train_dataloader()))["input_ids"]) == 8                 # 4 pairs: 8 rows
    bad = AlignDataModule(train={"path": "builtin:organism-v2", "split": "hard"})
    bad.connect(tokenizer, LAYOUTS["pair"])
    with pytest.raises(LitAlignError, match="organism-v2.*train_easy.*not 'hard'"):
        bad.setup("fit")
