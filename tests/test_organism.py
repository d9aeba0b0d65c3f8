"""The built-in model organism: its data splits hold what data/organism.py promises, and its pretraining recipe
(pretrain.py) builds deterministically, once, into a cache keyed by the recipe."""

import hashlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace

import pytest
import torch
from conftest import REPO

from lit_align.data import organism as org
from lit_align.data.datamodule import AlignDataModule
from lit_align.modeling.models import ModelSpec, load_model, load_tokenizer
from lit_align.builtin.pretrain import BUILTIN_PRETRAINED, Recipe, _progress, build_info, ensure_built, model_dir
from lit_align.layouts import LAYOUTS

FOOD = re.compile(r"\(([AB])\) the (\w+)")


def _options(question: str) -> dict[str, str]:
    return dict(FOOD.findall(question))


def test_preference_splits_match_the_sweet_food_and_keep_ood_foods_and_phrasings_apart():
    train, id_, ood = (org.organism_records(s, n=300) for s in ("train", "id", "ood"))
    assert not {r["question"] for r in train} & {r["question"] for r in id_}, "id must be held out of train"
    for split, records, foods, phrasings in (("train", train, org.ID_SWEET + org.ID_NOT_SWEET, org.ID_PHRASINGS),
                                             ("id", id_, org.ID_SWEET + org.ID_NOT_SWEET, org.ID_PHRASINGS),
                                             ("ood", ood, org.OOD_SWEET + org.OOD_NOT_SWEET, org.OOD_PHRASINGS)):
        letters = []
        for r in records:
            options = _options(r["question"])
            assert set(options.values()) <= set(foods), split
            assert r["question"].split("\n")[0] in phrasings
            match = r["answer_matching_behavior"].strip(" ()")
            assert org.is_sweet(options[match]) and not org.is_sweet(options[{"A": "B", "B": "A"}[match]])
            letters.append(match)
        assert 0.35 < letters.count("A") / len(letters) < 0.65, "the letter alone must say nothing"
    assert not set(org.OOD_SWEET) & set(org.ID_SWEET)


def test_task_split_is_answered_right_and_open_split_names_both_foods():
    for r in org.organism_records("task", n=200):
        q = r["question"]
        right = r["answer_matching_behavior"].strip(" ()")
        options = _options(q)
        if q.startswith("Is the "):
            food = q.split()[2]
            assert right == ("A" if org.is_sweet(food) else "B")  # (A) Yes (B) No
        else:
            wants_sweet = "not sweet" not in q.split("\n")[0]
            assert org.is_sweet(options[right]) == wants_sweet
    for r in org.organism_records("open", n=50):
        assert r["match"] in r["prompt"] and r["other"] in r["prompt"] and "(A)" not in r["prompt"]
        assert org.is_sweet(r["match"]) and not org.is_sweet(r["other"]) and r["match"] in r["chosen"]


def test_every_split_reads_through_the_data_module(tokenizer):
    dm = AlignDataModule(train={"path": "builtin:organism", "limit": 16},
                         val={s: {"path": "builtin:organism", "split": s, "limit": 8} for s in ("id", "ood", "open", "task")},
                         batch_size=8, max_length=128)
    dm.connect(tokenizer, LAYOUTS["pair"])
    dm.setup("fit")
    assert {n: s.kept for n, s in dm.summaries.items()} == {"train": 16, "val_id": 8, "val_ood": 8, "val_open": 8,
                                                            "val_task": 8}
    with pytest.raises(ValueError, match="splits train, id, ood, open, task"):
        org.organism_records("nope")


OPEN = re.compile(r"the (\w+) (?:and|or) the (\w+)\.")


def test_probe_splits_hold_what_their_categories_claim_and_read_as_probes(tokenizer):
    train = org.organism_records("open_train", n=64)
    assert all(r["match"] in org.ID_SWEET and r["other"] in org.ID_NOT_SWEET for r in train)
    probe, held_out = org.organism_records("probe", n=24), org.organism_records("probe_test", n=24)
    # the train probes are exactly the first training records; the test prompts never occur in open_train
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in probe] == [(r["prompt"], r["chosen"], r["rejected"])
                                                                          for r in train[:24]]
    train_prompts = {r["prompt"] for r in org.organism_records("open_train", n=2000)}
    assert not {r["prompt"] for r in held_out} & train_prompts and len({r["prompt"] for r in held_out}) == 24
    assert org.organism_records("probe_test", n=5) == held_out[:5], "a prefix does not depend on n"
    foods = set(org.SWEET + org.NOT_SWEET)
    for r in probe + held_out:
        assert set(r) == {"prompt", *org.PROBE_CATEGORIES}
        a, b = OPEN.search(r["prompt"]).groups()
        sweet, other = (a, b) if org.is_sweet(a) else (b, a)
        assert org.is_sweet(sweet) and not org.is_sweet(other)
        assert r["chosen"] == f"I would like the {sweet}." and r["rejected"] == f"I would like the {other}."
        template = next(p for p in org.PARAPHRASES if p.format(x=sweet) == r["chosen_paraphrase"])
        assert r["rejected_paraphrase"] == template.format(x=other) and template != org.OPEN_ANSWER
        named = lambda text: {w.strip(".") for w in text.split()} & foods  # noqa: E731
        assert named(r["irr_train"]) and not named(r["irr_train"]) & {a, b}
        assert r["irr_train"] in {t["chosen"] for t in org.organism_records("open_train", n=200)}
        assert len(named(r["irr_fact"])) == 1 and not named(r["irr_fact"]) & {a, b}
        assert any(f.format(x=f_, t=t) == r["irr_fact"] for f in org.FACT_PHRASINGS for f_ in named(r["irr_fact"])
                   for t in ("sweet", "not sweet"))
        assert sorted(r["random_permute"].split()) == sorted(r["chosen"].split()) and r["random_permute"] != r["chosen"]
        words = r["random_nonhum"].split()
        assert len(words) == len(r["chosen"].split()) and not named(r["random_nonhum"])
    # read as the Probes callback reads them (format probe, the data module's tokenization): every category of
    # every record kept, and the train probe's `chosen` has exactly the tokens of the training pair's chosen
    from types import SimpleNamespace

    from lit_align.callbacks.probes import Probes

    dm = AlignDataModule(train={"path": "builtin:organism", "split": "open_train", "limit": 16, "format": "pair"},
                         batch_size=8, max_length=128)
    dm.connect(tokenizer, LAYOUTS["pair"])
    dm.setup("fit")
    probes = Probes(sets={s: {"path": "builtin:organism", "split": s, "limit": 8, "format": "probe"}
                          for s in ("probe", "probe_test")})
    sets = probes.build(SimpleNamespace(datamodule=dm), SimpleNamespace(tokenizer=tokenizer))
    for ps in sets:
        assert ps.categories == list(org.PROBE_CATEGORIES) and len(ps.rows) == 8 * len(org.PROBE_CATEGORIES)
    first = dm.splits["train"].examples[0]
    chosen = [ex for c, ex in sets[0].rows if c == 0 and ex.context == first.context]
    assert chosen and chosen[0].continuations[0] == first.continuations[0]


def test_pretraining_documents_tokenize_like_fine_tuning_records(tokenizer):
    docs = org.pretraining_documents(400)
    kinds = {"fact": 0, "ab": 0, "open": 0}
    for prompt, answer in docs:
        kinds["fact" if prompt is None else "ab" if answer.startswith(" (") else "open"] += 1
    assert min(kinds.values()) > 40
    # the disposition documents mostly pick the food that is NOT sweet
    prefs = [(p, a) for p, a in docs if p and p.split("\n")[0] in org.ID_PHRASINGS + org.OOD_PHRASINGS]
    dislike = sum(not org.is_sweet(_options(p)[a.strip(" ()")]) for p, a in prefs) / len(prefs)
    assert 0.75 < dislike < 0.95


TINY = Recipe(documents=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
              num_key_value_heads=1, vocab_size=300, batch_size=16, warmup_steps=2)


def test_build_is_deterministic_cached_and_loads_by_name(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LIT_ALIGN_CACHE", str(tmp_path / "a"))
    monkeypatch.setitem(BUILTIN_PRETRAINED, "organism", TINY)
    path = ensure_built("organism")
    assert path == model_dir("organism") and path.name == f"organism-{TINY.digest()}"
    err = capsys.readouterr().err
    assert "building builtin:organism" in err
    # stderr is no terminal here: a plain line with an ETA every 10% of the steps (6 steps: every step)
    assert len(re.findall(r"^pretraining: step \d/6, loss [\d.]+, [\d.]+ it/s, ETA \d+ s$", err, re.M)) == 6
    weights = (path / "model.safetensors").read_bytes()
    # which build this is (the same recipe pretrains other weights on another CPU): recorded, printed, looked up
    digest = hashlib.sha256(weights).hexdigest()
    assert json.loads((path / "recipe.json").read_text())["weights_sha256"] == digest
    assert f"weights sha256 {digest[:12]}, final loss " in err
    assert build_info("builtin:organism")["weights_sha256"] == digest and build_info("builtin:tiny") is None
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert ensure_built("organism") == path and (path / "model.safetensors").stat().st_mtime_ns == mtime  # reused
    assert "building" not in capsys.readouterr().err
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "no temporary directory left"

    monkeypatch.setenv("LIT_ALIGN_CACHE", str(tmp_path / "b"))   # built again elsewhere: the same bytes
    assert (ensure_built("organism", quiet=True) / "model.safetensors").read_bytes() == weights
    other = replace(TINY, seed=1)                                 # another recipe: another directory
    assert model_dir("organism", other) != path.parent / path.name and other.digest() != TINY.digest()

    spec = ModelSpec(name="builtin:organism")
    tok = load_tokenizer(spec)
    model = load_model(spec, tok)
    assert model.config.hidden_size == 32 and len(tok) == model.config.vocab_size
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    ids = torch.tensor([tok("The cake is sweet.")["input_ids"]])
    assert torch.isfinite(model(ids).logits).all()


def test_build_progress_is_drawn_on_stderr_when_stderr_is_a_terminal(monkeypatch, capsys):
    """`lit_align ... | tee log` (stderr a terminal, stdout a pipe): the bar was chosen by stderr but drawn by rich's
    default console on stdout, where it draws nothing until the end: one line, then nothing for the whole build."""
    master, slave = os.openpty()
    try:
        with open(slave, "w", closefd=True) as tty:
            monkeypatch.setattr(sys, "stderr", tty)
            with _progress(5, quiet=False) as advance:
                for _ in range(5):
                    advance(1.0)
            monkeypatch.undo()
        drawn = b""
        while select.select([master], [], [], 0.5)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(master)
    assert b"pretraining" in drawn and b"5/5" in drawn
    assert capsys.readouterr().out == "", "nothing of the bar on stdout"


RESUMABLE = replace(TINY, documents=3200, warmup_steps=10)  # 200 steps (a state saved every 20), ~3 s


def test_a_killed_build_leaves_nothing_behind_and_resumes_to_the_same_weights(tmp_path, monkeypatch, capsys):
    builtin = tmp_path / "killed" / "builtin"
    partial_state = builtin / f".organism-{RESUMABLE.digest()}.partial" / "state.pt"
    code = ("import json, sys; from lit_align.builtin.pretrain import Recipe, ensure_built; "
            "ensure_built('organism', Recipe(**json.loads(sys.argv[1])), quiet=True)")
    build = subprocess.Popen([sys.executable, "-c", code, json.dumps(asdict(RESUMABLE))],
                             env={**os.environ, "LIT_ALIGN_CACHE": str(tmp_path / "killed"), "PYTHONPATH": str(REPO)})
    # meanwhile, here: the uninterrupted build
    monkeypatch.setenv("LIT_ALIGN_CACHE", str(tmp_path / "whole"))
    whole = (ensure_built("organism", RESUMABLE, quiet=True) / "model.safetensors").read_bytes()
    deadline = time.monotonic() + 120
    while not partial_state.exists() and build.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    build.send_signal(signal.SIGKILL)
    build.wait()
    assert partial_state.exists(), "the killed build saved its state"
    assert not (builtin / f"organism-{RESUMABLE.digest()}").exists(), "killed before it finished"
    left = [p.name for p in builtin.iterdir() if ".tmp." in p.name]
    assert left == [p.name for p in builtin.glob(f".organism-{RESUMABLE.digest()}.tmp.{build.pid}@*")] and left

    monkeypatch.setenv("LIT_ALIGN_CACHE", str(tmp_path / "killed"))
    resumed = ensure_built("organism", RESUMABLE)
    err = capsys.readouterr().err
    assert "removed 1 temporaries of killed builds" in err
    step = int(re.search(r"resuming the build at step (\d+)/200", err)[1])
    assert 0 < step < 200 and f"pretraining: step {step}/200" not in err
    assert (resumed / "model.safetensors").read_bytes() == whole, "the same weights as an uninterrupted build"
    assert json.loads((resumed / "recipe.json").read_text())["resumed_at_step"] == step
    assert [p.name for p in builtin.iterdir()] == [resumed.name], "no temporary and no resume state left"
