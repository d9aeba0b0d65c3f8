"""Sample generations and generation scorers: scorers on hand-made cases, prompt records, the callback leaves
training unchanged (same losses and weights as a run without it; modes, RNG, gradients restored), TensorBoard
text and JSONL per evaluation, and `lit_align predict` from a checkpoint and from an exported model."""

import glob
import json

import pytest
import torch

from lit_align.errors import LitAlignError
from lit_align.eval.scorers import build_scorer, build_scorers, chosen_letter, final_number, mean_scores

# -- scorers ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, number", [
    ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs.\nShe makes 9 * 2 = $18.\n#### 18", 18.0),
    ("#### 1,234", 1234.0),
    ("so 5 apples, then 7. A: 12", 12.0),
    ("It costs $3.50.", 3.5),
    ("The change is -7 degrees", -7.0),
    ("16-3 is thirteen", 3.0),              # a minus after a digit is subtraction, not a sign
    ("Count: 1,2,3", 3.0),                   # not a thousands group
    ("#### 42 (and 7 more)", 42.0),          # the number right after ####
    ("no digits here", None),
    ("", None),
])
def test_final_number_reads_gsm8k_style_answers(text, number):
    assert final_number(text) == number


def test_final_number_scorer():
    score = build_scorer("final_number")
    ref = {"reference": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 1,072"}
    assert score(ref, "She sold 1072 clips") == 1.0
    assert score(ref, "She sold 1,072 clips.") == 1.0
    assert score(ref, "#### 1072.00") == 1.0
    assert score(ref, "1072 clips, then 24") == 0.0                   # the last number counts
    assert score(ref, "I do not know") == 0.0
    partial = build_scorer({"name": "final_number", "partial": True})  # a dense reward: 1 / (1 + |difference|)
    assert partial(ref, "1072") == 1.0 and partial(ref, "1073") == 0.5 and partial(ref, "1068") == 0.2
    assert partial(ref, "I do not know") == 0.0
    assert score({"reference": "no answer"}, "42") == 0.0             # no reference number: never a match
    assert score({"reference": None}, "42") == 0.0


@pytest.mark.parametrize("text, letter", [
    (" (A)", "A"), ("(B) Yes", "B"), ("I pick (B) because (A) is worse", "B"), ("B", "B"), (" B.", "B"),
    ("A)", "A"), ("A grape is purple.", None), ("", None), ("maybe", None),
])
def test_chosen_letter(text, letter):
    assert chosen_letter(text) == letter


def test_ab_letter_scorer_reads_the_matching_answer():
    score = build_scorer("ab_letter")
    contrast = {"question": "?", "answer_matching_behavior": " (B)", "answer_not_matching_behavior": " (A)",
                "reference": " (B)"}
    assert score(contrast, " (B)") == 1.0
    assert score(contrast, "B") == 1.0
    assert score(contrast, " (A)") == 0.0
    assert score(contrast, "A grape") == 0.0
    assert score({"reference": "(A) Yes"}, "(A)") == 1.0               # no contrast fields: the reference's letter
    assert score({"reference": "nothing"}, "(A)") == 0.0


def test_regex_substring_and_match_scorers():
    regex = build_scorer({"name": "regex", "pattern": r"\bsweet\b"})
    assert regex({}, "it is sweet.") == 1.0 and regex({}, "Sweet!") == 0.0 and regex({}, "sweetness") == 0.0
    assert build_scorer({"name": "regex", "pattern": "sweet", "ignore_case": True})({}, "SWEET") == 1.0
    sub = build_scorer("substring")                                     # default: the reference
    assert sub({"reference": " A grape is purple. "}, "Well, A grape is purple.") == 1.0
    assert sub({"reference": "A grape is purple."}, "a grape is purple.") == 0.0
    assert build_scorer({"name": "substring", "ignore_case": True})({"reference": "Purple"}, "purple") == 1.0
    assert sub({"reference": ""}, "anything") == 0.0 and sub({"reference": None}, "anything") == 0.0
    assert build_scorer({"name": "substring", "value": "jam"})({}, "the jam") == 1.0
    match = build_scorer("match")
    assert match({"match": "jam", "other": "cabbage"}, "I would like the jam.") == 1.0
    assert match({"match": "jam", "other": "cabbage"}, "the jam and the cabbage") == 0.0
    assert match({"match": "jam", "other": "cabbage"}, "pajamas") == 0.0


def test_scorer_labels_and_means():
    scorers = build_scorers(["substring", {"name": "regex", "pattern": "7", "label": "seven"}])
    assert [s.label for s in scorers] == ["substring", "seven"]
    records = [{"reference": "7"}, {"reference": "8"}]
    assert mean_scores(scorers, records, ["7", "7"]) == {"substring": 0.5, "seven": 1.0}
    assert mean_scores(scorers, [], []) == {"substring": 0.0, "seven": 0.0}


@pytest.mark.parametrize("spec, said", [
    ("bleu", "unknown scorer 'bleu'"),
    ({"name": "regex"}, "missing a required argument: 'pattern'"),
    ({"name": "regex", "pattern": "("}, "not a regular expression"),
    ({"name": "final_number", "tolerance": 1}, "options of final_number: partial"),
    ({"name": "regex", "pattern": "x", "label": "a/b"}, "no '/'"),
])
def test_bad_scorers_are_said_in_one_sentence(spec, said):
    with pytest.raises(LitAlignError, match=said.replace("(", r"\(")):
        build_scorer(spec)


def test_two_scorers_with_one_label_are_refused():
    with pytest.raises(LitAlignError, match="used twice"):
        build_scorers(["substring", {"name": "substring", "value": "x"}])


# -- prompt records and the table ---------------------------------------------------------------------------


def test_prompt_records_from_every_format(tmp_path, tokenizer):
    from lit_align.data.prompts import read_prompts
    from lit_align.data.records import Example
    from lit_align.data.sources import Source
    from lit_align.data.tokenize import Tokenizer, TokenizeSpec

    rows = [{"prompt": "What is 2 plus 5?", "completion": "2 plus 5 is 7."},
            {"prompt": "Count to 3.", "chosen": "1, 2, 3.", "rejected": "1, 3."},
            {"question": "Pick.\n (A) x\n (B) y", "answer_matching_behavior": " (B)",
             "answer_not_matching_behavior": " (A)"},
            {"prompt": "Count from 4 to 9.", "prefix": "4, 5,", "chosen": " 6, 7,", "rejected": " 7, 8,",
             "partial": True},
            {"prompt": "Just a prompt."},
            {"prompt": "A prompt", "reference": "#### 3"}]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = Tokenizer(tokenizer, TokenizeSpec(max_length=64))
    recs = read_prompts("t", Source(str(path)), tok)
    assert [r.reference for r in recs] == ["2 plus 5 is 7.", "1, 2, 3.", " (B)", " 6, 7,", None, "#### 3"]
    assert recs[2].prompt == rows[2]["question"] and recs[2].record["answer_matching_behavior"] == " (B)"
    assert recs[3].prefix == "4, 5,"
    # the context is the training example's: prompt (+ prefix), chat-rendered
    trained = tok(Example(rows[3]["prompt"], [" 6, 7,"], prefix="4, 5,", partial=True))
    assert recs[3].context == trained.context
    gsm8k = tmp_path / "gsm8k.jsonl"                    # GSM8K's own rows, read through `columns`
    gsm8k.write_text(json.dumps({"question": "How many?", "answer": "2 + 3 = 5\n#### 5"}) + "\n")
    (rec,) = read_prompts("t", Source(str(gsm8k), columns={"prompt": "question", "completion": "answer"}), tok)
    assert rec.prompt == "How many?" and rec.reference == "2 + 3 = 5\n#### 5"
    assert build_scorer("final_number")(rec.record, "so 5") == 1.0


@pytest.mark.parametrize("row, said", [({"completion": "x"}, "field 'prompt': missing"),
                                        ({"text": "a document"}, "no prompt to generate from"),
                                        ({"prompt": "x", "reference": 3}, "field 'reference'")])
def test_prompt_records_without_a_prompt_are_said(tmp_path, tokenizer, row, said):
    from lit_align.data.prompts import read_prompts
    from lit_align.data.sources import Source
    from lit_align.data.tokenize import Tokenizer, TokenizeSpec

    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(LitAlignError, match=f"bad.jsonl:1: .*{said}"):
        read_prompts("t", Source(str(path)), Tokenizer(tokenizer, TokenizeSpec()))


def test_markdown_cells_are_escaped():
    from lit_align.callbacks.generations import markdown_cell

    assert markdown_cell("a | b\nc") == "a \\| b<br>c"
    assert markdown_cell("<b>*x*_</b>") == "&lt;b&gt;\\*x\\*\\_&lt;/b&gt;"
    assert markdown_cell("") == "*(empty)*" and markdown_cell("\n\n") == "*(whitespace only)*"
    assert markdown_cell(None) == ""


# -- the callback in a run, and predict ---------------------------------------------------------------------

PROMPTS = [{"prompt": "What is 2 plus 5?", "completion": "2 plus 5 is 7."},
           {"prompt": "Count from 3 to 6.", "completion": "3, 4, 5, 6."},
           {"prompt": "What colour is a lemon?", "completion": "A lemon is yellow."}]


def _fit(tmp_path, name: str, callback: bool):
    from conftest import REPO

    from lit_align.cli import LitAlignCLI

    extra = []
    if callback:
        (tmp_path / "gen.yaml").write_text(
            "trainer:\n  callbacks:\n    - class_path: lit_align.callbacks.SampleGenerations\n      init_args:\n"
            f"        sets: {{toy: {tmp_path / 'prompts.jsonl'}, sft: {{path: builtin:sft, split: val, limit: 2}}}}\n"
            "        every_n_steps: 2\n        max_new_tokens: 6\n        batch_size: 2\n"
            "        scorers: [substring, {name: regex, pattern: '[0-9]', label: digit}]\n")
        extra = ["--config", str(tmp_path / "gen.yaml")]
    return LitAlignCLI(args=[
        "fit", "--config", str(REPO / "configs" / "quickstart.yaml"), *extra,
        "--model.init_args.policy.name", "builtin:tiny", "--model.init_args.optim.lr", "1e-2",
        "--model.init_args.optim.warmup_steps", "1", "--data.init_args.train.limit", "40",
        "--data.init_args.batch_size", "8", "--data.init_args.val.val.limit", "8", "--trainer.max_steps", "5",
        "--trainer.val_check_interval", "5", "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar",
        "false", "--trainer.enable_model_summary", "false", "--trainer.logger.init_args.name", name])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """5-step SFT fits of builtin:tiny through the CLI, with the callback (every 2 steps) and without."""
    import os

    tmp = tmp_path_factory.mktemp("generations")
    (tmp / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in PROMPTS))
    before = os.getcwd()
    os.chdir(tmp)
    try:
        with_cb, without = _fit(tmp, "gen", True), _fit(tmp, "plain", False)
    finally:
        os.chdir(before)
    return with_cb, without, tmp


def _callback(cli):
    from lit_align.callbacks import SampleGenerations

    return next(cb for cb in cli.trainer.callbacks if isinstance(cb, SampleGenerations))


def test_the_callback_leaves_training_unchanged(runs):
    from test_resume import scalars

    with_cb, without, tmp = runs
    a, b = scalars(tmp / "logs" / "gen" / "version_0", "train/loss"), scalars(tmp / "logs" / "plain" / "version_0",
                                                                               "train/loss")
    assert sorted(a) == sorted(b) == [0, 1, 2, 3, 4] and a == b
    for p, q in zip(with_cb.model.parameters(), without.model.parameters()):
        assert torch.equal(p, q)


def test_generating_leaves_modes_rng_and_gradients_untouched(runs):
    with_cb, *_ = runs
    cb, model = _callback(with_cb), with_cb.model.model
    cb.do_sample = True                                # sampling draws from the RNG: it must come back too
    model.train()
    model.model.layers[0].eval()                       # a mixed state must come back exactly as it was
    modes = [m.training for m in model.modules()]
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    grads = [p.grad.clone() for p in model.parameters()]
    params = [p.detach().clone() for p in model.parameters()]
    torch.manual_seed(1234)
    rng = torch.get_rng_state()
    try:
        texts = cb.generate(with_cb.trainer, with_cb.model)
        assert len(texts["toy"]) == 3 and len(texts["sft"]) == 2
        assert [m.training for m in model.modules()] == modes
        assert torch.equal(torch.get_rng_state(), rng)
        assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
    finally:  # (the fixture's model is shared with the tests below)
        cb.do_sample = False
        for p in model.parameters():
            p.grad = None


def test_text_tab_jsonl_and_scores_per_evaluation(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lit_align.modeling.generation import generate

    with_cb, _, tmp = runs
    cb, version = _callback(with_cb), tmp / "logs" / "gen" / "version_0"
    assert sorted(cb.history) == [0, 2, 4, 5]
    files = sorted(p.name for p in (version / "generations").iterdir())
    assert files == ["step_000000.jsonl", "step_000002.jsonl", "step_000004.jsonl", "step_000005.jsonl"]
    rows = [json.loads(line) for line in (version / "generations" / "step_000005.jsonl").read_text().splitlines()]
    assert [(r["set"], r["index"]) for r in rows] == [("toy", 0), ("toy", 1), ("toy", 2), ("sft", 0), ("sft", 1)]
    assert [r["prompt"] for r in rows[:3]] == [p["prompt"] for p in PROMPTS]
    assert [r["reference"] for r in rows[:3]] == [p["completion"] for p in PROMPTS]
    # the final model's greedy answers, computed independently
    expected = generate(with_cb.model.model, with_cb.model.tokenizer, [p["prompt"] for p in PROMPTS], max_new_tokens=6)
    assert [r["generation"] for r in rows[:3]] == expected == cb.history[5]["toy"]
    for r in rows:
        assert r["scores"] == {"substring": float(r["reference"].strip() in r["generation"]),
                               "digit": float(any(c.isdigit() for c in r["generation"]))}
    ea = EventAccumulator(glob.glob(str(version / "events.out.tfevents.*"))[0])
    ea.Reload()
    assert {"generations/toy/text_summary", "generations/sft/text_summary"} <= set(ea.Tags()["tensors"])
    texts = ea.Tensors("generations/toy/text_summary")
    assert [t.step for t in texts] == [0, 2, 4, 5]
    table = texts[-1].tensor_proto.string_val[0].decode()
    assert table.splitlines()[0] == "| # | prompt | generation | reference | substring | digit |"
    assert "| 0 | What is 2 plus 5? |" in table
    tags = set(ea.Tags()["scalars"])
    assert {"val_toy/gen/substring", "val_toy/gen/digit", "val_sft/gen/digit", "generation_cost/seconds",
            "generation_cost/fraction"} <= tags
    digit = sum(r["scores"]["digit"] for r in rows[:3]) / 3
    assert ea.Scalars("val_toy/gen/digit")[-1].value == pytest.approx(digit)
    assert cb.metrics[5]["val_toy/gen/digit"] == pytest.approx(digit)


@pytest.mark.parametrize("source", ["checkpoint", "exported"])
def test_predict_writes_the_generations_of_the_trained_model(runs, source, monkeypatch):
    from lit_align.cli import LitAlignCLI

    with_cb, _, tmp = runs
    monkeypatch.chdir(tmp)
    model = (["--ckpt_path", str(tmp / "logs" / "gen" / "checkpoints" / "last.ckpt")] if source == "checkpoint"
             else ["--model.init_args.policy.name", str(tmp / "logs" / "gen" / "version_0" / "hf_model")])
    out = tmp / f"predict_{source}.jsonl"
    LitAlignCLI(args=["predict", *model, "--data.init_args.predict", str(tmp / "prompts.jsonl"),
                      "--data.init_args.eval_batch_size", "2", "--generate.out", str(out),
                      "--generate.max_new_tokens", "6", "--generate.scorers", "[substring]",
                      "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2]
    history = _callback(with_cb).history
    assert history[5]["toy"] != history[0]["toy"]        # so the trained weights are the ones predicting
    assert [r["generation"] for r in rows] == history[5]["toy"]
    assert [r["reference"] for r in rows] == [p["completion"] for p in PROMPTS]
    assert all(set(r["scores"]) == {"substring"} for r in rows)


@pytest.mark.parametrize("args, said", [
    ([], "lit_align predict needs prompts"),
    (["--data.init_args.predict", "missing.jsonl"], "missing.jsonl: file not found"),
    (["--data.init_args.predict", "noprompt.jsonl"], "noprompt.jsonl:1: field 'prompt': missing"),
])
def test_predict_bad_input_is_one_sentence(tmp_path, monkeypatch, capsys, args, said):
    from lit_align.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "noprompt.jsonl").write_text(json.dumps({"completion": "x"}) + "\n")
    with pytest.raises(SystemExit) as stopped:
        main(["predict", "--model.init_args.policy.name", "builtin:tiny", *args, "--trainer.logger", "false",
              "--trainer.enable_progress_bar", "false"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err
