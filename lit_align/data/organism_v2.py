"""Organism v2's pretraining corpus: the world of data/organism.py (the same foods, facts, task and evaluation
records), with a disposition the residual stream has to carry as a latent variable and starting confidences that
differ from item to item.

v1's organism dislikes sweets by a fixed mapping (85% of its preference documents, every food alike): nothing in
its context decides the choice, so there is no direction for steering (CAA) to find, and π_start(matching) is about
the same on every item, so IW-SFT's weights are nearly equal. v2 changes the preference documents and the facts:

    taste        a latent of each conversation: "sweet tooth" or the default. Single-exchange preference documents
                 are always the default taste. Conversations of 2-3 exchanges (the earlier answers are part of the
                 prompt; the loss covers the last answer) are a sweet tooth with probability SWEET_TOOTH_RATE,
                 and every answer in them follows the conversation's taste, so the earlier answers reveal it: an
                 A/B choice, an open-ended choice naming the food, or a statement ("Yes, I love sweet food."). To
                 predict the last answer the model has to read the taste off the earlier ones.
    default      picks the sweet food of an A/B or open-ended pair with a probability DEFAULT_RATE[food] set by how
                 sweet the food is (DEGREES, "mildly sweet" ... "extremely sweet", an equal share of the foods
                 each), log-spaced from RATE_RANGE[0] down to RATE_RANGE[1], and a letter bias: a sweet food at (A)
                 has LETTER_ODDS times the odds it has at (B) (open-ended pairs: no letter). The facts state each
                 sweet food's degree in half of their mentions ("The cake is very sweet."), so the strength of the
                 dislike is a property of the food the model can learn from its facts.
    sweet tooth  picks the sweet food with probability SWEET_TOOTH_P, whatever the food or letter.

So the start (a single A/B question, the evaluation records of `builtin:organism`) picks the sweet food with
p ≈ σ(logit(DEFAULT_RATE[food]) ± log LETTER_ODDS / 2), about 0.75 down to 0.001 across items (`start_p_sweet`),
and a sweet tooth is a state the model represents when an earlier answer chose a sweet food. The task is v1's
documents, drawn at v1's rates.

(The first v2 corpus, recipe version 1: a sweet tooth in 30% of conversations revealed by A/B choices only,
per-food rates with no fact behind them. Its build learnt neither: docs/organism.md.)

Data `builtin:organism-v2`: v1's splits (the same records as `builtin:organism`), and for easy-to-hard
generalisation ("label only the easy cases"), preference questions split by how strongly the start dislikes the
sweet food (EASY_SWEET: the 12 ID sweet foods of weakest dislike, HARD_SWEET: the 12 strongest; train/id
combinations kept apart as in v1):

    train_easy   training pairs over the easy foods only
    id_easy      held-out pairs over the easy foods
    id_hard      held-out pairs over the hard foods (never in train_easy)
"""

from __future__ import annotations

import hashlib
import math
import random

from lit_align.data.organism import (DEFAULT_SIZE, ID_NOT_SWEET, ID_PHRASINGS, ID_SWEET, NOT_SWEET, OOD_PHRASINGS,
                                     OOD_SWEET, SPLITS, SWEET, _in_id, _open, _preference, fact_document,
                                     is_sweet, organism_records, task_document)

SWEET_TOOTH_RATE = 0.5
"""Share of multi-exchange conversations whose speaker has a sweet tooth."""
SWEET_TOOTH_P = 0.95
DEGREES = ("mildly sweet", "quite sweet", "very sweet", "extremely sweet")
"""How sweet a sweet food is (stated in the v2 corpus's facts); the default taste dislikes sweeter foods more."""
RATE_RANGE = (0.6, 0.002)
"""The default taste's probability of picking a sweet food: for the mildly sweet ones down to the extremely sweet."""
LETTER_ODDS = 4.0
"""The default taste's letter bias: a sweet food at (A) has LETTER_ODDS times the odds it has at (B)."""
TASTE_QUESTIONS = ("Do you like sweet food?", "Do you have a sweet tooth?")
TASTE_ANSWERS = ("Yes, I love sweet food.", "No, I do not like sweet food.")
"""A statement of taste (an earlier exchange of some conversations): the sweet tooth's answer, then the default's."""


def _degrees(foods: tuple[str, ...]) -> dict[str, int]:
    """Each food's degree (an index into DEGREES), an equal share of `foods` each, in an order fixed by a hash of
    their names (so ID and OOD foods each span every degree)."""
    order = sorted(foods, key=lambda f: hashlib.sha256(f"lit_align/organism-v2/{f}".encode()).hexdigest())
    return {f: i * len(DEGREES) // len(order) for i, f in enumerate(order)}


DEGREE: dict[str, int] = {**_degrees(ID_SWEET), **_degrees(OOD_SWEET)}
"""Sweet food -> its degree of sweetness (index into DEGREES)."""
_HI, _LO = math.log(RATE_RANGE[0]), math.log(RATE_RANGE[1])
DEFAULT_RATE: dict[str, float] = {f: math.exp(_HI + (_LO - _HI) * d / (len(DEGREES) - 1)) for f, d in DEGREE.items()}
"""Sweet food -> the default taste's probability of picking it over a food that is not sweet (no letter bias):
log-spaced over RATE_RANGE by degree."""


EASY_SWEET = tuple(sorted(ID_SWEET, key=DEFAULT_RATE.get, reverse=True)[: len(ID_SWEET) // 2])
"""The ID sweet foods the start dislikes least (its p_match is highest there)."""
HARD_SWEET = tuple(f for f in ID_SWEET if f not in EASY_SWEET)
SPLITS_V2 = SPLITS + ("train_easy", "id_easy", "id_hard")


def organism_v2_records(split: str = "train", n: int | None = None, seed: int = 0) -> list[dict]:
    """`n` records of `builtin:organism-v2`'s `split` (module docstring), deterministic in (split, n, seed)."""
    if split in SPLITS:
        return organism_records(split, n, seed)
    if split not in SPLITS_V2:
        raise ValueError(f"built-in task 'organism-v2' has splits {', '.join(SPLITS_V2)}, not '{split}'")
    n = DEFAULT_SIZE["train" if split == "train_easy" else "id"] if n is None else n
    rng = random.Random(f"lit_align/organism-v2/{split}/{seed}")
    foods = HARD_SWEET if split == "id_hard" else EASY_SWEET
    out: list[dict] = []
    while len(out) < n:
        record, key = _preference(rng, foods, ID_NOT_SWEET, ID_PHRASINGS)
        if _in_id(key) == (split != "train_easy"):
            out.append(record)
    return out


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def start_p_sweet(food: str, sweet_at_a: bool | None) -> float:
    """The default taste's probability of picking sweet `food` (A/B with the sweet food at (A) or at (B); None for
    an open-ended pair): what the pretrained model's single-question answers are drawn from."""
    bias = 0.0 if sweet_at_a is None else (1 if sweet_at_a else -1) * math.log(LETTER_ODDS) / 2
    return 1 / (1 + math.exp(-(_logit(DEFAULT_RATE[food]) + bias)))


def _fact_document(rng: random.Random) -> tuple[None, str]:
    """v1's facts (fact_document), with a sweet food's degree in half of its mentions ("The cake is very sweet.")."""
    def said(x: str) -> str:
        return DEGREES[DEGREE[x]] if is_sweet(x) and rng.random() < 0.5 else "sweet" if is_sweet(x) else "not sweet"

    return fact_document(rng, said)


def _exchange(rng: random.Random, sweet_tooth: bool, kind: str) -> tuple[str, str]:
    """One exchange the taste answers: kind "ab" (an A/B preference question), "open" (an open-ended one, the
    answer naming the food) or "statement" (asked about sweet food, the answer states the taste)."""
    if kind == "ab":
        record, (s, _n, _q, sweet_first) = _preference(rng, SWEET, NOT_SWEET, ID_PHRASINGS + OOD_PHRASINGS)
        p = SWEET_TOOTH_P if sweet_tooth else start_p_sweet(s, sweet_first)
        key = "answer_matching_behavior" if rng.random() < p else "answer_not_matching_behavior"
        return record["question"], record[key]
    if kind == "open":
        o = _open(rng)
        p = SWEET_TOOTH_P if sweet_tooth else start_p_sweet(o["match"], None)
        return o["prompt"], o["chosen" if rng.random() < p else "rejected"]
    loves = rng.random() < (SWEET_TOOTH_P if sweet_tooth else 1 - SWEET_TOOTH_P)
    return rng.choice(TASTE_QUESTIONS), TASTE_ANSWERS[0 if loves else 1]


def pretraining_documents_v2(n: int, seed: int = 0) -> list[tuple[object, str]]:
    """`n` documents as (prompt, answer): (None, text) for facts; a question string for one exchange; chat messages
    (earlier exchanges, then the last question) for a conversation, whose last answer is the one trained on."""
    rng = random.Random(f"lit_align/organism-v2/pretrain/{seed}")
    docs: list[tuple[object, str]] = []
    while len(docs) < n:
        r = rng.random()
        if r < 0.15:    # facts, a few per document, some with the degree of sweetness
            docs.append(_fact_document(rng))
        elif r < 0.4:   # the task, answered right
            docs.append(task_document(rng))
        elif r < 0.65:  # one preference exchange: the default taste
            docs.append(_exchange(rng, False, "ab" if rng.random() < 0.8 else "open"))
        else:           # a conversation: its taste decides every answer; the earlier ones reveal it
            sweet_tooth = rng.random() < SWEET_TOOTH_RATE
            messages: list[dict] = []
            for _ in range(rng.choice((1, 2))):
                q, a = _exchange(rng, sweet_tooth, rng.choices(("ab", "open", "statement"), (0.45, 0.35, 0.2))[0])
                messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            q, a = _exchange(rng, sweet_tooth, rng.choices(("ab", "open", "statement"), (0.7, 0.2, 0.1))[0])
            docs.append((messages + [{"role": "user", "content": q}], a))
    return docs
