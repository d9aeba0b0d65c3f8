"""Bad data fails early, in plain words, naming the file, the line and the field; or, with skip_invalid, is
skipped and counted while the good rows are kept. Through the CLI: a one-paragraph message, no traceback."""

import gzip
import json

import pytest
from conftest import REPO, run_cli

from lit_align.data.datamodule import AlignDataModule, build_split
from lit_align.data.sources import Source, read_rows
from lit_align.data.tokenize import Tokenizer, TokenizeSpec
from lit_align.errors import DataError, LitAlignError

GOOD = {"prompt": "What is 1 plus 1?", "completion": "1 plus 1 is 2."}


def read(tokenizer, path, kind="sft", skip_invalid=False, **source):
    return build_split("train", Source(str(path), **source), kind, Tokenizer(tokenizer, TokenizeSpec()),
                       skip_invalid=skip_invalid)


def write_lines(path, lines: list) -> str:
    """Each item: a dict (written as JSON), a str (written as is) or bytes."""
    data = b"".join((json.dumps(x).encode() if isinstance(x, dict) else x if isinstance(x, bytes)
                     else x.encode()) + b"\n" for x in lines)
    path.write_bytes(data)
    return str(path)


def error_of(tokenizer, path, kind="sft", **source) -> DataError:
    with pytest.raises(DataError) as err:
        read(tokenizer, path, kind, **source)
    assert isinstance(err.value, LitAlignError)  # what the CLI prints without a traceback
    return err.value


# (name, the bad line, the field the message must name or None, words the message must hold)
BAD_LINES = [
    ("invalid-json", '{"prompt": "a", "completion": }', None, "invalid JSON"),
    ("truncated-json", '{"prompt": "a", "compl', None, "invalid JSON"),
    ("invalid-utf8", b'{"prompt": "caf\xe9", "completion": "b"}', None, "invalid UTF-8"),
    ("not-an-object", '["a", "b"]', None, "expected a JSON object"),
    ("missing-completion", {"prompt": "a"}, "completion", "missing"),
    ("missing-prompt", {"completion": "a"}, "prompt", "missing"),
    ("null-completion", {"prompt": "a", "completion": None}, "completion", "missing"),
    ("int-completion", {"prompt": "a", "completion": 5}, "completion", "expected a string, got int"),
    ("dict-prompt", {"prompt": {"text": "a"}, "completion": "b"}, "prompt", "expected a string, got dict"),
    ("empty-completion", {"prompt": "a", "completion": ""}, "completion", "empty"),
    ("blank-completion", {"prompt": "a", "completion": "  \n"}, "completion", "empty"),
    ("string-weight", {**GOOD, "weight": "heavy"}, "weight", "expected a finite number"),
    ("negative-weight", {**GOOD, "weight": -1}, "weight", "expected a finite number"),
    ("int-partial", {**GOOD, "partial": 2}, "partial", "expected true or false"),
    ("messages-not-a-list", {"messages": "hi"}, "messages", "list"),
    ("message-no-content", {"messages": [{"role": "user"}]}, "messages", "message 0"),
    ("messages-end-with-user", {"messages": [{"role": "user", "content": "a"}]}, "messages", "assistant"),
    ("unknown-record-format", {"question": "a", "answer": "b"}, None, "unknown record format"),
    ("empty-completions", {"prompt": "a", "completions": []}, "completions", "non-empty list"),
]


@pytest.mark.parametrize("bad,field,words", [b[1:] for b in BAD_LINES], ids=[b[0] for b in BAD_LINES])
def test_bad_line_names_file_line_field(tokenizer, tmp_path, bad, field, words):
    path = write_lines(tmp_path / "train.jsonl", [GOOD, GOOD, bad, GOOD])
    err = error_of(tokenizer, path)
    assert err.where == f"{path}:3" and err.field == field
    assert str(err).startswith(f"{path}:3:") and words in str(err)
    if field:
        assert f"field '{field}'" in str(err)
    assert "\n" not in str(err)  # one paragraph


BAD_PAIRS = [
    ("missing-rejected", {"prompt": "a", "chosen": "b"}, "rejected", "missing"),
    ("list-chosen", {"prompt": "a", "chosen": ["b"], "rejected": "c"}, "chosen", "expected a string, got list"),
    ("empty-rejected", {"prompt": "a", "chosen": "b", "rejected": ""}, "rejected", "empty"),
    ("prefix-half", {"prompt": "a", "prefix": "1, 2", "chosen": "1, 2, 3", "rejected": "5"}, "prefix",
     "contradicts"),
    ("sft-record", GOOD, "rejected", "needs chosen and rejected"),
    ("hh-not-a-dialogue", {"chosen": "just text", "rejected": "other text"}, "chosen", "HH dialogue"),
    ("hh-different-dialogues", {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: x\n\nAssistant: c"},
     "rejected", "do not share"),
    ("contrast-missing", {"question": "a", "answer_matching_behavior": " (A)"}, "answer_not_matching_behavior",
     "missing"),
]


@pytest.mark.parametrize("bad,field,words", [b[1:] for b in BAD_PAIRS], ids=[b[0] for b in BAD_PAIRS])
def test_bad_preference_record(tokenizer, tmp_path, bad, field, words):
    pair = {"prompt": "a", "chosen": "b", "rejected": "c"}
    path = write_lines(tmp_path / "pairs.jsonl", [pair, bad])
    err = error_of(tokenizer, path, kind="pair")
    assert err.where == f"{path}:2" and err.field == field and words in str(err)


def test_identical_chosen_and_rejected_are_skipped_and_counted(tokenizer, tmp_path):
    pair = {"prompt": "a", "chosen": "b", "rejected": "c"}
    path = write_lines(tmp_path / "pairs.jsonl", [pair, {**pair, "rejected": "b"}, pair])
    split, summary = read(tokenizer, path, kind="pair")
    assert summary.kept == 2 and summary.skipped == {"chosen == rejected": 1}
    assert f"{path}:2" in summary.first_problem


def test_skip_invalid_skips_and_counts_every_kind_of_bad_row(tokenizer, tmp_path):
    bad = [b[1] for b in BAD_LINES]
    lines = []
    for i, b in enumerate(bad):
        lines += [{"prompt": f"What is {i} plus 1?", "completion": f"{i} plus 1 is {i + 1}."}, b]
    path = write_lines(tmp_path / "train.jsonl", lines)
    with pytest.raises(DataError, match=f"{path}:2:"):  # without skip_invalid: the first bad line stops it
        read(tokenizer, path)
    split, summary = read(tokenizer, path, skip_invalid=True)
    assert summary.rows == 2 * len(bad) and summary.invalid == len(bad) and summary.kept == len(bad)
    assert summary.first_problem.startswith(f"{path}:2:")
    assert f"{len(bad)} invalid skipped" in summary.line()
    assert [ex.where for ex in split.examples] == [f"{path}:{2 * i + 1}" for i in range(len(bad))]


def test_skip_invalid_through_the_data_module(tokenizer, tmp_path):
    path = write_lines(tmp_path / "train.jsonl", [GOOD, "{oops", GOOD, {"prompt": "a", "completion": 3}])
    dm = AlignDataModule(train=str(path), batch_size=2, max_length=64, skip_invalid=True)
    dm.connect(tokenizer, "sft")
    dm.setup("fit")
    assert dm.summaries["train"].invalid == 2 and len(dm.splits["train"]) == 2
    assert next(iter(dm.train_dataloader()))["input_ids"].shape[0] == 2


def test_nothing_usable_is_an_error_not_an_empty_run(tokenizer, tmp_path):
    path = write_lines(tmp_path / "train.jsonl", ["{oops", {"prompt": "a", "completion": ""}])
    with pytest.raises(LitAlignError, match="No usable examples.*2 invalid skipped"):
        read(tokenizer, path, skip_invalid=True)
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(LitAlignError, match="No usable examples"):
        read(tokenizer, tmp_path / "empty.jsonl")


def test_missing_file(tokenizer, tmp_path):
    for name in ("nope.jsonl", "nope.jsonl.gz", "nope.txt", "sub/nope.csv"):
        err = error_of(tokenizer, tmp_path / name)
        assert err.where == str(tmp_path / name) and "file not found" in str(err)
    err = error_of(tokenizer, tmp_path)
    assert "is a directory" in str(err)


def test_unknown_file_format(tokenizer, tmp_path):
    (tmp_path / "train.txt").write_text("What is 1 plus 1?\t2\n")
    err = error_of(tokenizer, tmp_path / "train.txt")
    assert err.where == str(tmp_path / "train.txt") and "unknown file format '.txt'" in str(err)


def test_unknown_record_format_option(tokenizer, tmp_path):
    path = write_lines(tmp_path / "train.jsonl", [GOOD])
    err = error_of(tokenizer, path, format="chat")
    assert err.where == f"{path}:1" and "unknown format 'chat'" in str(err)


def test_bad_gzip(tokenizer, tmp_path):
    (tmp_path / "train.jsonl.gz").write_bytes(b'{"prompt": "a"}\n')
    err = error_of(tokenizer, tmp_path / "train.jsonl.gz")
    assert "not a valid gzip file" in str(err)
    # a good gzip with a bad line names the line
    (tmp_path / "ok.jsonl.gz").write_bytes(gzip.compress(b'{"prompt": "a", "completion": "b"}\n{"prompt": 1}\n'))
    err = error_of(tokenizer, tmp_path / "ok.jsonl.gz")
    assert err.where == f"{tmp_path / 'ok.jsonl.gz'}:2" and err.field == "prompt"


def test_bad_json_file(tokenizer, tmp_path):
    (tmp_path / "a.json").write_text('[\n  {"prompt": "a", "completion": "b"},\n  {"prompt": "a",, }\n]')
    err = error_of(tokenizer, tmp_path / "a.json")
    assert err.where == f"{tmp_path / 'a.json'}:3" and "invalid JSON" in str(err)
    (tmp_path / "b.json").write_bytes(b'[\n  {"prompt": "a", "completion": "b"},\n  {"prompt": "\xff"}\n]')
    err = error_of(tokenizer, tmp_path / "b.json")
    assert err.where == f"{tmp_path / 'b.json'}:3" and "invalid UTF-8" in str(err)
    (tmp_path / "c.json").write_text(json.dumps([GOOD, {"prompt": "a", "completion": 7}]))
    err = error_of(tokenizer, tmp_path / "c.json")
    assert err.where == f"{tmp_path / 'c.json'}:record 1" and err.field == "completion"
    (tmp_path / "d.json").write_text(json.dumps({"a": [GOOD], "b": [GOOD]}))
    assert "must hold a list of records" in str(error_of(tokenizer, tmp_path / "d.json"))


def test_bad_csv(tokenizer, tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(b'prompt,completion\n"What is\n1 plus 1?",2\nWhat is 2 plus 2?,\xff4\n'
                     b'What is 3 plus 3?,6,extra\nWhat is 4 plus 4?,\nWhat is 5 plus 5?,10\n')
    err = error_of(tokenizer, path)
    assert err.where == f"{path}:4" and err.field == "completion" and "invalid UTF-8" in str(err)
    split, summary = read(tokenizer, path, skip_invalid=True)
    assert summary.rows == 5 and summary.invalid == 3 and summary.kept == 2
    assert [ex.where for ex in split.examples] == [f"{path}:2", f"{path}:7"]
    path.write_text("prompt,completion\nWhat is 1 plus 1?,2\nCount from 1 to 9.,\"" + "1, 2, 3. " * 20_000 + "\"\n")
    rows = [row for _, row in read_rows(Source(str(path)))]  # a long text (over csv's default 128 KiB
    assert len(rows) == 2 and rows[1]["completion"] == "1, 2, 3. " * 20_000  # field limit) is read whole


def test_bad_parquet(tokenizer, tmp_path):
    (tmp_path / "train.parquet").write_bytes(b"PAR1 not really")
    assert "not a readable Parquet file" in str(error_of(tokenizer, tmp_path / "train.parquet"))


def test_unknown_builtin_task(tokenizer):
    with pytest.raises(LitAlignError, match="unknown built-in task 'nope'"):
        read(tokenizer, "builtin:nope")
    with pytest.raises(LitAlignError, match="has splits train, val, not 'ood'"):
        read(tokenizer, "builtin:sft", split="ood")


def test_cli_reports_bad_data_without_a_traceback(tmp_path):
    bad = tmp_path / "train.jsonl"
    write_lines(bad, [GOOD, GOOD, {"prompt": "a", "completion": 5}])
    result = run_cli(["fit", "--config", str(REPO / "configs" / "quickstart.yaml"),
                      "--model.init_args.policy.name", "builtin:tiny", "--data.init_args.train", str(bad),
                      "--trainer.max_steps", "1"], cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    message = [line for line in result.stderr.splitlines() if line.startswith("lit_align: error:")]
    assert message == [f"lit_align: error: {bad}:3: field 'completion': expected a string, got int"], \
        result.stderr[-3000:]


def test_bad_source_options():
    from lit_align.data.sources import as_source

    assert as_source({"path": "x.jsonl", "limit": 3}).limit == 3
    with pytest.raises(LitAlignError, match="unknown option 'pth'"):
        as_source({"pth": "x.jsonl"})
    with pytest.raises(LitAlignError, match="no 'path'"):
        as_source({"split": "val"})
    with pytest.raises(LitAlignError, match="give a path"):
        AlignDataModule(train=5)
