"""Built-in tasks: the embedded default data. Generated in code, deterministic by seed, no download.

Every task has known right answers, so learning is measurable on a tiny model in seconds:

    sft     {prompt, completion}: counting, sums, fruit colours (asked in several phrasings, so a
            held-out prompt is a new phrasing of a known fact or new numbers, never an unknowable fact)
    pairs   {prompt, chosen, rejected}: the right answer vs a wrong one
    steers  {prompt, prefix, chosen, rejected, partial: true}: a count whose partial answer (the shared
            prefix) is right so far; the rejected continuation goes wrong at the next item, the chosen one
            is the correction; no end token (partial generations)
    ranked  {prompt, completions, scores}: the right answer of a count or sum and two wrong ones, scored by how
            wrong they are (one item off vs three, off by 1 vs by 10 or more); k = 3, in a shuffled order
    add     {prompt, completion}: the sums of `sft` alone ("What is 12 plus 30?" / "12 plus 30 is 42."): a task with
            a checkable final number, for online RL with the final_number reward (configs/examples/grpo_add.yaml)
    ab      {question, answer_matching_behavior, answer_not_matching_behavior}: A/B questions whose
            matching answer is the correct one; split "id" compares numbers 0-49 ("Is a greater than b?"),
            split "ood" asks a different question about numbers 50-99 ("Which is smaller?")

Splits: "train" and "val" (alias "id" for ab; "ood" only for ab). Train and val prompts are disjoint
(partitioned by a hash of the prompt), so "val" is genuinely held out.

Use as a data source: `builtin:<task>` with `split` and `limit`, e.g. `{path: builtin:pairs, split: val}`.
"""

from __future__ import annotations

import hashlib
import random
from typing import Callable

TASKS = ("sft", "pairs", "steers", "ranked", "ab", "add")
CORPUS_TASKS = ("sft", "pairs", "steers", "ab")
"""The tasks the built-in tokenizer was trained on (`ranked` reuses their words: adding it changed no token)."""
DEFAULT_SIZE = {"train": 2000, "val": 200, "id": 200, "ood": 200}

FRUIT_COLOURS = {
    "banana": "yellow", "lemon": "yellow", "cherry": "red", "strawberry": "red", "tomato": "red",
    "lime": "green", "kiwi": "green", "pear": "green", "plum": "purple", "grape": "purple",
    "orange": "orange", "apricot": "orange", "blueberry": "blue", "coconut": "brown",
}
COLOURS = sorted(set(FRUIT_COLOURS.values()))
COLOUR_QUESTIONS = ("What colour is {a} {fruit}?", "What is the colour of {a} {fruit}?",
                    "Tell me the colour of {a} {fruit}.", "Which colour does {a} {fruit} have?",
                    "Name the colour of {a} {fruit}.", "What colour would {a} {fruit} be?")


def _held_out(prompt: str) -> bool:
    """One prompt in five is held out for validation (stable across runs and machines)."""
    return hashlib.sha256(prompt.encode()).digest()[0] % 5 == 0


def _count(start: int, stop: int) -> str:
    return ", ".join(str(i) for i in range(start, stop + 1))


def _qa(rng: random.Random) -> tuple[str, str, str]:
    """(prompt, right answer, wrong answer) for one of three small task families."""
    kind = rng.choice(("count", "count", "add", "colour"))
    if kind == "count":
        start = rng.randint(0, 300)
        stop = start + rng.randint(3, 8)
        items = list(range(start, stop + 1))
        wrong = list(items)
        k = rng.randint(1, len(items) - 1)
        wrong[k] += rng.choice((-1, 1, 2))  # one item goes wrong
        return f"Count from {start} to {stop}.", _count(start, stop) + ".", ", ".join(map(str, wrong)) + "."
    if kind == "add":
        a, b = rng.randint(0, 40), rng.randint(0, 40)
        off = rng.choice((-2, -1, 1, 2, 10))
        return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.", f"{a} plus {b} is {a + b + off}."
    fruit = rng.choice(sorted(FRUIT_COLOURS))
    colour = FRUIT_COLOURS[fruit]
    wrong = rng.choice([c for c in COLOURS if c != colour])
    article = "An" if fruit[0] in "aeiou" else "A"
    question = rng.choice(COLOUR_QUESTIONS).format(a=article.lower(), fruit=fruit)
    return question, f"{article} {fruit} is {colour}.", f"{article} {fruit} is {wrong}."


def _add(rng: random.Random) -> dict:
    a, b = rng.randint(0, 40), rng.randint(0, 40)
    return {"prompt": f"What is {a} plus {b}?", "completion": f"{a} plus {b} is {a + b}."}


def _sft(rng: random.Random) -> dict:
    prompt, right, _ = _qa(rng)
    return {"prompt": prompt, "completion": right}


def _pairs(rng: random.Random) -> dict:
    prompt, right, wrong = _qa(rng)
    return {"prompt": prompt, "chosen": right, "rejected": wrong}


def _ranked(rng: random.Random) -> dict:
    if rng.random() < 0.5:
        start = rng.randint(0, 300)
        items = list(range(start, start + rng.randint(4, 8) + 1))
        one, three = list(items), list(items)
        one[rng.randint(1, len(items) - 1)] += rng.choice((-1, 1, 2))        # one item goes wrong
        for k in rng.sample(range(1, len(items)), 3):                         # three items go wrong
            three[k] += rng.choice((-1, 1, 2))
        prompt = f"Count from {items[0]} to {items[-1]}."
        answers = [(_count(items[0], items[-1]) + ".", 0.0), (", ".join(map(str, one)) + ".", -1.0),
                   (", ".join(map(str, three)) + ".", -3.0)]
    else:
        a, b = rng.randint(0, 40), rng.randint(0, 40)
        small, big = rng.choice((-1, 1)), rng.choice((-20, -10, 10, 20))
        prompt = f"What is {a} plus {b}?"
        answers = [(f"{a} plus {b} is {a + b + off}.", float(-abs(off))) for off in (0, small, big)]
    rng.shuffle(answers)  # the order of a record says nothing; the scores rank it
    return {"prompt": prompt, "completions": [t for t, _ in answers], "scores": [s for _, s in answers]}


def _steers(rng: random.Random) -> dict:
    start = rng.randint(0, 300)
    stop = start + rng.randint(5, 10)
    items = list(range(start, stop + 1))
    k = rng.randint(2, len(items) - 3)  # items[:k] are the shared, correct partial answer
    wrong = items[k] + rng.choice((-1, 1, 2, 3))
    return {
        "prompt": f"Count from {start} to {stop}.",
        "prefix": ", ".join(map(str, items[:k])) + ",",   # ends before the space, as text streams do
        "chosen": f" {items[k]}, {items[k + 1]},",   # the correction: the next items, right
        "rejected": f" {wrong}, {wrong + 1},",        # goes wrong at item k and carries on from there
        "partial": True,
    }


def _ab(rng: random.Random, ood: bool) -> dict:
    lo, hi = (50, 99) if ood else (0, 49)
    a, b = rng.sample(range(lo, hi + 1), 2)
    if ood:
        question = f"Which is smaller, {a} or {b}?"
        options = [str(a), str(b)]
        right = options.index(str(min(a, b)))
    else:
        question = f"Is {a} greater than {b}?"
        options = ["Yes", "No"]
        right = 0 if a > b else 1
    if rng.random() < 0.5:  # the right answer's letter is random, so the letter alone says nothing
        options.reverse()
        right = 1 - right
    letters = ("A", "B")
    text = f"{question}\n\nChoices:\n (A) {options[0]}\n (B) {options[1]}\n\nAnswer:"
    return {"question": text, "answer_matching_behavior": f" ({letters[right]})",
            "answer_not_matching_behavior": f" ({letters[1 - right]})"}


def _prompt_of(record: dict) -> str:
    return record.get("prompt") or record["question"].split("\n")[0]


def builtin_records(task: str, split: str = "train", n: int | None = None, seed: int = 0) -> list[dict]:
    """`n` records of built-in `task` for `split`, deterministic in (task, split, n, seed)."""
    if task not in TASKS:
        raise ValueError(f"unknown built-in task '{task}': choose one of {', '.join(TASKS)}, organism, organism-v2")
    valid_splits = ("train", "val", "id", "ood") if task == "ab" else ("train", "val")
    if split not in valid_splits:
        raise ValueError(f"built-in task '{task}' has splits {', '.join(valid_splits)}, not '{split}'")
    n = DEFAULT_SIZE[split] if n is None else n
    make: Callable[[random.Random], dict] = {
        "sft": _sft, "pairs": _pairs, "steers": _steers, "ranked": _ranked, "add": _add,
        "ab": lambda r: _ab(r, ood=split == "ood"),
    }[task]
    want_held_out = split in ("val", "id")
    rng = random.Random(f"lit_align/{task}/{split}/{seed}")
    out: list[dict] = []
    while len(out) < n:
        record = make(rng)
        if split == "ood" or _held_out(_prompt_of(record)) == want_held_out:
            out.append(record)
    return out


def corpus() -> list[str]:
    """Text the built-in tokenizer is trained on: a sample of every task, rendered as chat turns."""
    texts = []
    for task in CORPUS_TASKS:
        for split in ("train", "ood") if task == "ab" else ("train",):
            for r in builtin_records(task, split, n=300, seed=12345):
                texts.append("\n".join(str(v) for v in r.values() if isinstance(v, str)))
    texts.append("<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n system Human: Assistant:")
    return texts
