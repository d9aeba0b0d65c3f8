"""The built-in tasks (the embedded default data): deterministic by seed, held-out validation prompts, and
every task readable by the data module for the objectives it is meant for."""

import re

import pytest

from lit_align.data.datamodule import AlignDataModule
from lit_align.data.synthetic import TASKS, builtin_records
from lit_align.errors import DataError, LitAlignError
from lit_align.layouts import LAYOUTS, layout_named

# task -> the example kinds it feeds (an SFT record has no rejected answer for a preference objective)
KINDS = {"sft": ("sft",), "pairs": ("sft", "pair", "ranked"), "steers": ("sft", "pair"), "ab": ("sft", "pair"),
         "ranked": ("sft", "pair", "ranked"), "add": ("sft",)}


def prompt_of(record: dict) -> str:
    return record.get("prompt") or record["question"].split("\n")[0]


def datamodule(tokenizer, task: str, kind: str, val_split: str = "val", **kwargs) -> AlignDataModule:
    dm = AlignDataModule(train={"path": f"builtin:{task}", "limit": 40},
                         val={"val": {"path": f"builtin:{task}", "split": val_split, "limit": 12}},
                         batch_size=8, max_length=128, **kwargs)
    dm.connect(tokenizer, layout_named(kind))
    dm.setup("fit")
    return dm


def test_every_task_is_listed():
    assert set(TASKS) == set(KINDS)


@pytest.mark.parametrize("task", TASKS)
def test_deterministic_by_seed(task):
    a = builtin_records(task, "train", n=50, seed=0)
    assert a == builtin_records(task, "train", n=50, seed=0)
    assert a != builtin_records(task, "train", n=50, seed=1)
    assert builtin_records(task, "train", n=20, seed=0) == a[:20]  # a smaller n is a prefix of a larger one
    assert len({str(r) for r in a}) > 10  # and not one record repeated


@pytest.mark.parametrize("task", TASKS)
def test_train_and_val_prompts_are_disjoint(task):
    train = {prompt_of(r) for r in builtin_records(task, "train", n=1000)}
    for split in ("val", "id") if task == "ab" else ("val",):
        held_out = {prompt_of(r) for r in builtin_records(task, split, n=200)}
        assert held_out and not train & held_out, f"{task}[{split}] shares prompts with train"


def test_seed_reaches_builtin_sources(tokenizer):
    def first_context(seed):
        dm = AlignDataModule(train={"path": "builtin:sft", "limit": 8, "seed": seed}, batch_size=8)
        dm.connect(tokenizer, LAYOUTS["sft"])
        dm.setup("fit")
        return [ex.context for ex in dm.splits["train"].examples]

    assert first_context(0) == first_context(0) != first_context(3)


@pytest.mark.parametrize("task,kind", [(t, k) for t in TASKS for k in KINDS[t]])
def test_every_task_through_the_data_module(tokenizer, task, kind):
    dm = datamodule(tokenizer, task, kind)
    for name, n in (("train", 40), ("val", 12)):
        summary = dm.summaries[name]
        assert summary.rows == n and summary.kept == n and not summary.dropped and not summary.invalid
    batch = next(iter(dm.train_dataloader()))
    k = {"pair": 2, "ranked": 3 if task == "ranked" else 2}.get(kind, 1)
    assert batch["num_continuations"] == k and batch["input_ids"].shape[0] == 8 * k
    assert (batch["labels"] != -100).any(dim=1).all()
    val = next(iter(dm.val_dataloader()[0]))
    assert val["split"] == "val" and val["input_ids"].shape[0] == 8 * k


def test_sft_task_refused_by_a_preference_objective(tokenizer):
    with pytest.raises(DataError, match="needs chosen and rejected"):
        datamodule(tokenizer, "sft", "pair")


def test_steers_are_partial_with_a_shared_prefix(tokenizer):
    eos = tokenizer.eos_token_id
    dm = datamodule(tokenizer, "steers", "pair")
    for ex in dm.splits["train"].examples:
        assert ex.prefix_len > 0
        assert all(c and c[-1] != eos and eos not in c for c in ex.continuations)  # partial: no end token
        assert ex.continuations[0] != ex.continuations[1]
    for r in builtin_records("steers", "train", n=50):
        assert r["partial"] is True
        items = [int(x) for x in (r["prefix"] + r["chosen"]).replace(",", " ").split()]
        assert items == list(range(items[0], items[0] + len(items)))  # the chosen continuation is right
        assert r["rejected"].split(",")[0] != r["chosen"].split(",")[0]  # the rejected one goes wrong at once


def test_pairs_are_full_answers(tokenizer):
    eos = tokenizer.eos_token_id
    dm = datamodule(tokenizer, "pairs", "pair")
    assert all(c[-1] == eos for ex in dm.splits["train"].examples for c in ex.continuations)


def _ab_answer_is_right(record: dict) -> bool:
    q = record["question"]
    letter = record["answer_matching_behavior"].strip()[1]
    option = re.search(rf"\({letter}\) (\S+)", q).group(1)
    if m := re.match(r"Is (\d+) greater than (\d+)\?", q):
        return option == ("Yes" if int(m[1]) > int(m[2]) else "No")
    m = re.match(r"Which is smaller, (\d+) or (\d+)\?", q)
    return int(option) == min(int(m[1]), int(m[2]))


def test_ab_has_id_and_ood_splits(tokenizer):
    id_, ood = builtin_records("ab", "id", n=100), builtin_records("ab", "ood", n=100)
    numbers = lambda rs: {int(x) for r in rs for x in re.findall(r"\d+", prompt_of(r))}  # noqa: E731
    assert max(numbers(id_)) <= 49 and min(numbers(ood)) >= 50
    assert all(r["question"].startswith("Is ") for r in id_)
    assert all(r["question"].startswith("Which is smaller") for r in ood)
    for r in id_ + ood:
        assert r["question"].endswith("Answer:") and _ab_answer_is_right(r)
        assert {r["answer_matching_behavior"], r["answer_not_matching_behavior"]} == {" (A)", " (B)"}
    # the right answer's letter is not always the same
    assert {r["answer_matching_behavior"] for r in id_} == {" (A)", " (B)"}
    for split in ("id", "ood"):
        assert datamodule(tokenizer, "ab", "pair", val_split=split).summaries["val"].kept == 12
    with pytest.raises(LitAlignError, match="splits train, val"):
        datamodule(tokenizer, "pairs", "pair", val_split="ood")


def test_the_add_task_as_prompts_for_online_rl(tokenizer):
    """builtin:add read in the prompt layout (online objectives): prompt records with their context ids and the
    reference answer the final_number reward checks."""
    from lit_align.eval.scorers import build_scorer

    dm = datamodule(tokenizer, "add", "prompt")
    batch = next(iter(dm.train_dataloader()))
    assert batch["index"].shape == (8,) and len(batch["records"]) == 8
    record = batch["records"][0]
    assert record.context and record.prompt.startswith("What is ") and record.reference.endswith(".")
    a, b = (int(x) for x in record.prompt[len("What is "):-1].split(" plus "))
    assert build_scorer("final_number")(record.record, f"It is {a + b}.") == 1.0
