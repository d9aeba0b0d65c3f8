"""Bad data fails early, in plain words, naming the file, the line and the field; or, with skip_invalid, is
skipped and counted while the good rows are kept. Through the CLI: a one-paragraph message, no traceback."""

import gzip
import io
import json
from pathlib import Path

import pytest
from conftest import REPO, run_cli

from lit_align.data.datamodule import AlignDataModule, build_split
from lit_align.data.sources import Source, read_rows
from lit_align.data.tokenize import Tokenizer, TokenizeSpec
from lit_align.errors import DataError, LitAlignError
from lit_align.layouts import LAYOUTS

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
    ("float32-overflow-weight", {**GOOD, "weight": 1e39}, "weight", "overflows float32"),
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
    ("huge-weight", {"prompt": "a", "chosen": "b", "rejected": "c", "weight": 1e308}, "weight", "overflows float32"),
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


def test_a_ranked_record_with_another_k_names_the_field_and_is_skippable(tokenizer, tmp_path):
    three = {"prompt": "Rank the foods.", "completions": ["Honey.", "Bread.", "Kale."], "scores": [3, 2, 1]}
    two = {**three, "completions": ["Honey.", "Kale."], "scores": [2, 1]}
    path = write_lines(tmp_path / "ranked.jsonl", [three, three, two, three])
    err = error_of(tokenizer, path, kind="ranked")
    assert err.where == f"{path}:3" and err.field == "completions"
    assert f"2 ranked completions, but the first record of train ({path}:1) has 3" in str(err)
    split, summary = read(tokenizer, path, kind="ranked", skip_invalid=True)
    assert summary.invalid == 1 and summary.kept == 3 and summary.first_problem.startswith(f"{path}:3:")
    assert [len(ex.continuations) for ex in split.examples] == [3, 3, 3]


def test_skip_invalid_through_the_data_module(tokenizer, tmp_path):
    path = write_lines(tmp_path / "train.jsonl", [GOOD, "{oops", GOOD, {"prompt": "a", "completion": 3}])
    dm = AlignDataModule(train=str(path), batch_size=2, max_length=64, skip_invalid=True)
    dm.connect(tokenizer, LAYOUTS["sft"])
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


def test_score_says_at_once_that_a_model_path_does_not_exist(tmp_path):
    """`--model d/nomodel` with d/ a local directory is a path, not a hub name `org/name`: it used to be tried on
    the hub first (five retries, a minute when the hub cannot be reached). Here the "hub" takes connections and
    never answers: nothing may call it."""
    import socket

    (tmp_path / "d").mkdir()
    data = write_lines(tmp_path / "pairs.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}])
    with socket.socket() as hub:
        hub.bind(("127.0.0.1", 0))
        hub.listen(8)
        hub.setblocking(False)
        env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{hub.getsockname()[1]}",
               "HF_HUB_ETAG_TIMEOUT": "2"}
        result = run_cli(["score", "--model", "d/nomodel", "--data", data, "--out", "out.jsonl"], cwd=tmp_path,
                         env=env, timeout=60)  # (it used to hang on the silent hub: over 2 minutes)
        with pytest.raises(BlockingIOError):
            hub.accept()  # no connection came
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [
        "lit_align score: error: --model d/nomodel: not a checkpoint, and no Hugging Face model can be read there "
        "(the local directory d/nomodel does not exist. Give an existing directory (saved with save_pretrained), a "
        "hub name, or builtin:tiny / builtin:small)"]


def test_bad_source_options():
    from lit_align.data.sources import as_source

    assert as_source({"path": "x.jsonl", "limit": 3}).limit == 3
    with pytest.raises(LitAlignError, match="unknown option 'pth'"):
        as_source({"pth": "x.jsonl"})
    with pytest.raises(LitAlignError, match="no 'path'"):
        as_source({"split": "val"})
    with pytest.raises(LitAlignError, match="give a path"):
        AlignDataModule(train=5)


# -- the command line: every bad input and misconfiguration is one paragraph, exit 2, no traceback ---------------
# In process (lit_align.cli.main, SystemExit caught): a CLI subprocess costs ~10 s of imports, 60 of them 10 minutes.

PAIR = {"prompt": "What is 1 plus 1?", "chosen": "2.", "rejected": "3."}


def _sft(train: str | None, *extra: str) -> list[str]:
    return ["fit", "--model.init_args.policy.name", "builtin:tiny",
            *(["--data.init_args.train", train] if train else []), "--data.init_args.batch_size", "2", "--data.init_args.max_length", "64", "--trainer.max_steps", "1",
            "--trainer.enable_progress_bar", "false", "--export.enabled", "false", *extra]


def _dpo(train: str, *extra: str) -> list[str]:
    return [*_sft(train), "--model", "lit_align.objectives.DPO", "--model.init_args.policy.name", "builtin:tiny",
            *extra]


def _iw(train: str, *extra: str) -> list[str]:
    return [*_sft(train), "--model", "lit_align.objectives.IWSFT", "--model.init_args.policy.name", "builtin:tiny",
            *extra]


def _config(tmp_path, text: str) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return str(path)


def _row_case(bad, field=None, words=(), kind="sft"):
    def make(tmp_path):
        good = GOOD if kind == "sft" else PAIR
        path = write_lines(tmp_path / "train.jsonl", [good, good, bad, good])
        return (_sft if kind == "sft" else _dpo)(path), [f"{path}:3:", *([f"field '{field}'"] if field else []),
                                                         *([words] if isinstance(words, str) else words)]
    return make


def _ckpt(make_bytes, words: str):
    def make(tmp_path):
        path = tmp_path / "bad.ckpt"
        data = make_bytes(tmp_path)
        if data is not None:
            path.write_bytes(data)
        return _sft(write_lines(tmp_path / "train.jsonl", [GOOD] * 4), "--ckpt_path", str(path)), \
            [f"--ckpt_path {path}", words]
    return make


def _good_checkpoint(tmp_path) -> bytes:
    """The bytes of a real last.ckpt (a 1-step run of builtin:tiny)."""
    from lit_align.cli import main

    train = write_lines(tmp_path / "ok.jsonl", [GOOD] * 4)
    main([*_sft(train), "--trainer.logger.init_args.name", "ok"])
    return (tmp_path / "logs" / "ok" / "checkpoints" / "last.ckpt").read_bytes()


def _flip(data: bytes) -> bytes:
    """Flip one byte inside the largest stored record (the weights), leaving the zip's structure whole."""
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as z:
        info = max(z.infolist(), key=lambda i: i.compress_size)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    pos = start + info.compress_size // 2
    return data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1:]


def _text_file(name: str, text: str, words: list[str]):
    def make(tmp_path):
        (tmp_path / name).write_text(text)
        config = _config(tmp_path, f"data:\n  init_args:\n    train: {name}\n")  # the README's shorthand
        return ["fit", "--config", config, *_sft(None)[1:]], [name, *words]
    return make


def _gz(data: bytes, words: str, name="train.jsonl.gz"):
    def make(tmp_path):
        (tmp_path / name).write_bytes(data)
        return _sft(str(tmp_path / name)), [str(tmp_path / name), words]
    return make


def _config_file(text: str, *words: str, named: bool = True):
    """A run whose config file holds `text`; the message names the file (`named`) and holds `words`."""
    def make(tmp_path):
        config = _config(tmp_path, text)
        train = write_lines(tmp_path / "train.jsonl", [GOOD] * 4)
        return ["fit", "--config", config, *_sft(train)[1:]], [*([f"config file {config}"] if named else []), *words]
    return make


def _probe_category(tmp_path):
    probes = write_lines(tmp_path / "probes.jsonl", [{"prompt": "Hi", "chosen": "a", "rejected": "b"}])
    train = write_lines(tmp_path / "train.jsonl", [GOOD] * 4)
    config = _config(tmp_path, f"""trainer:
  callbacks:
    - class_path: lit_align.callbacks.Probes
      init_args: {{sets: {{p: {probes}}}, categories: [chosen, nonexistent]}}
""")
    return ["fit", "--config", config, *_sft(train)[1:]], ["probes: set 'p'", probes, "'nonexistent'",
                                                          "the records have chosen, rejected"]


def _iw_zero(tmp_path):
    train = write_lines(tmp_path / "train.jsonl", [{**GOOD, "weight": 0}] * 4)
    return _iw(train, "--model.init_args.weights.source", "data"), ["weights.source: data", "'train'", "is 0"]


def _reference_cache(corrupt, build: bool):
    def make(tmp_path):
        import torch

        from lit_align.cli import main

        train = write_lines(tmp_path / "pairs.jsonl", [PAIR, {**PAIR, "rejected": "4."}])
        args = _dpo(train, "--model.init_args.reference.mode", "cache", "--model.init_args.reference.cache_dir",
                    str(tmp_path / "cache"))
        main(args)  # builds the cache
        (path,) = (tmp_path / "cache").glob("train-*.pt")
        corrupt(path, torch)
        return [*args, "--model.init_args.reference.build", str(build).lower(),
                "--trainer.logger.init_args.name", "with_the_cache"], [str(path)]
    return make


def _cache_inf(path, torch):
    saved = torch.load(path, weights_only=True)
    saved["logps"][0, 0] = float("inf")
    torch.save(saved, path)


def _cache_truncate(path, torch):
    path.write_bytes(path.read_bytes()[:100])


def _two_rows_quickstart(tmp_path):
    train = write_lines(tmp_path / "train.jsonl", [GOOD, GOOD])
    return ["fit", "--config", str(REPO / "configs" / "quickstart.yaml"), "--model.init_args.policy.name",
            "builtin:tiny", "--data.init_args.train", train, "--data.init_args.val", "null",
            "--trainer.enable_progress_bar", "false"], ["trainer.val_check_interval is 250", train, "only 1"]


def _full_disk(tmp_path, monkeypatch):
    """A save that fails with ENOSPC: one sentence; the bytes went straight to the .partial next to the target
    (not through the system temp directory); the previous last.ckpt is untouched and no partial file is left."""
    import errno

    import torch

    before = _good_checkpoint(tmp_path)
    ckpt_dir = tmp_path / "logs" / "ok" / "checkpoints"
    files = sorted(p.name for p in ckpt_dir.iterdir())
    written_to = []

    def no_space(obj, f, *args, **kwargs):
        written_to.append(getattr(f, "name", f))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)

    def after():
        assert len(written_to) == 1 and Path(written_to[0]).parent == ckpt_dir.relative_to(tmp_path)
        assert Path(written_to[0]).name.startswith(".") and written_to[0].endswith(".partial")
        assert ".ckpt." in written_to[0]  # .<name>.ckpt.<run>.partial
        assert (ckpt_dir / "last.ckpt").read_bytes() == before
        assert sorted(p.name for p in ckpt_dir.iterdir()) == files  # and no partial file left

    train = write_lines(tmp_path / "train.jsonl", [GOOD] * 4)
    # the run continued (its folder holds its checkpoints): one more step, whose save fails
    return (_sft(train, "--trainer.logger.init_args.name", "ok", "--ckpt_path", "last", "--trainer.max_steps", "2",
                 "--checkpoint.force_resume", "true"),
            ["could not write the checkpoint", "No space left on device", "untouched (newest: last.ckpt)"], after)


def _sft_opt(*extra, words=()):
    def make(tmp_path):
        return _sft(write_lines(tmp_path / "train.jsonl", [GOOD] * 4), *extra), list(words)
    return make


def _dpo_opt(*extra, words=()):
    def make(tmp_path):
        return _dpo(write_lines(tmp_path / "pairs.jsonl", [PAIR] * 4), *extra), list(words)
    return make


# (name, make(tmp_path) -> (argv, words the message must hold))
CLI_CASES = [
    *[(f"row-{name}", _row_case(bad, field, words)) for name, bad, field, words in BAD_LINES],
    *[(f"pair-{name}", _row_case(bad, field, words, kind="pair")) for name, bad, field, words in BAD_PAIRS
      if name != "prefix-half"],  # (prefix-DPO's)
    ("missing-file", _sft_opt("--data.init_args.train", "nope.jsonl", words=["nope.jsonl", "file not found"])),
    ("csv-shorthand", _text_file("data.csv", "prompt,completion\nWhat is 1 plus 1?,2\nWhat is 2 plus 2?,\n",
                                 ["data.csv:3:", "field 'completion'"])),
    ("txt-shorthand", _text_file("data.txt", "What is 1 plus 1?\t2\n", ["unknown file format '.txt'"])),
    ("truncated-gz", _gz(gzip.compress(b'{"prompt": "a", "completion": "b"}\n' * 50)[:40], "truncated gzip")),
    ("not-gz", _gz(b'{"prompt": "a", "completion": "b"}\n', "not a valid gzip file")),
    ("lone-surrogate", _row_case('{"prompt": "caf\\ud800", "completion": "b"}', "prompt", "lone surrogate")),
    ("10MB-record", _row_case({"prompt": "a", "completion": "x" * 10_000_000}, "completion", "max_record_chars")),
    ("bad-parquet", _gz(b"PAR1 not really", "not a readable Parquet file", name="train.parquet")),
    ("unknown-builtin-task", _sft_opt("--data.init_args.train", "builtin:nope", words=["builtin:nope"])),
    ("beta-0", _dpo_opt("--model.init_args.beta", "0", words=["beta must be > 0"])),
    ("beta-negative", _dpo_opt("--model.init_args.beta", "-0.5", words=["beta must be > 0"])),
    ("unknown-loss", _dpo_opt("--model.init_args.loss", "nope", words=["loss must be one of", "'nope'"])),
    ("label-smoothing-range", _dpo_opt("--model.init_args.label_smoothing", "0.7", words=["label_smoothing"])),
    ("label-smoothing-ipo", _dpo_opt("--model.init_args.loss", "ipo", "--model.init_args.label_smoothing", "0.1",
                                     words=["label_smoothing", "ipo"])),
    ("unknown-reference-mode", _dpo_opt("--model.init_args.reference.mode", "nope",
                                        words=["reference.mode", "'nope'"])),
    ("iw-alpha-1000", lambda t: (_iw(write_lines(t / "train.jsonl", [GOOD] * 4), "--model.init_args.weights.alpha",
                                     "1000"), ["weights.alpha", "1000"])),
    ("group-by-length-negative", _sft_opt("--data.init_args.group_by_length", "-1", words=["data.group_by_length"])),
    ("missing-model-dir", _sft_opt("--model.init_args.policy.name", "./no/such/model",
                                   words=["./no/such/model", "does not exist"])),
    ("hub-name-offline", _sft_opt("--model.init_args.policy.name", "nobody-xyz/no-such-model",
                                  words=["nobody-xyz/no-such-model", "HF_HUB_OFFLINE"])),
    ("unknown-builtin-model", _sft_opt("--model.init_args.policy.name", "builtin:huge", words=["builtin:huge"])),
    ("pack-length-under-every-example", _sft_opt("--model.init_args.packed", "true", "--data.init_args.pack_length",
                                                  "4", words=["data.pack_length 4 is shorter than every example",
                                                              "nothing is packed"])),
    ("batch-size-0", _sft_opt("--data.init_args.batch_size", "0", words=["data.batch_size", "0"])),
    ("batch-size-negative", _sft_opt("--data.init_args.batch_size", "-4", words=["data.batch_size", "-4"])),
    ("lr-negative", _sft_opt("--model.init_args.optim.lr", "-0.001", words=["optim.lr", "-0.001"])),
    ("warmup-ratio-over-1", _sft_opt("--model.init_args.optim.warmup_ratio", "1.5", words=["optim.warmup_ratio"])),
    ("unknown-schedule", _sft_opt("--model.init_args.optim.schedule", "step", words=["optim.schedule", "'step'"])),
    ("unknown-truncation-side", _sft_opt("--data.init_args.truncation_side", "middle", words=[
        "option data.init_args.truncation_side: must be one of left, right, not 'middle'"])),  # (a Literal option)
    ("max-length-negative", _sft_opt("--data.init_args.max_length", "-5", words=["data.max_length", "-5"])),
    ("accumulate-0", _sft_opt("--trainer.accumulate_grad_batches", "0", words=["trainer.accumulate_grad_batches"])),
    ("lora-r-0", _sft_opt("--model.init_args.policy.lora", '{"r": 0}', words=["policy.lora.r", "0"])),
    ("val-check-interval-over-epoch", _two_rows_quickstart),
    # jsonargparse's own parse errors: one sentence naming the option, not its 90-line usage text
    ("option-type", _sft_opt("--data.init_args.batch_size", "abc",
                             words=["option data.init_args.batch_size:", "int", "abc", "lit_align fit --help"])),
    ("option-float-type", _sft_opt("--model.init_args.optim.lr", "fast", words=["optim", "lr", "float", "fast"])),
    ("option-unknown", _sft_opt("--trainer.max_stepz", "3", words=["unrecognized arguments", "--trainer.max_stepz"])),
    ("option-of-another-objective", _sft_opt("--model.init_args.beta", "0.1", words=["'beta' is not accepted"])),
    ("config-file-missing", _sft_opt("--config", "no_such.yaml", words=["option config", "no_such.yaml"])),
    # a key given twice: YAML keeps the later silently (here the SFT objective, which then fails on the options
    # of DPO); refused, naming the file and the line
    ("config-duplicate-key", _config_file("model:\n  class_path: lit_align.objectives.DPO\n  class_path: "
                                          "lit_align.objectives.SFT\n  init_args:\n    beta: 0.1\n", "line 3",
                                          "'class_path' is given twice", "first at line 2")),
    ("config-yaml-syntax", _config_file("trainer:\n  max_steps: 1\n  callbacks: [\n  devices: 1\n", "line 5",
                                        "not valid YAML", "flow sequence that starts at line 3")),
    # `{id:d/pairs.jsonl}`, no space after the colon: in a config file a set with no value; on the command line
    # a string
    ("val-set-without-source", _config_file("data:\n  init_args:\n    val: {id:d/pairs.jsonl}\n",
                                            "data.init_args.val: set 'id:d/pairs.jsonl' has no source",
                                            "{id: d/pairs.jsonl}", "expected a path", named=False)),
    ("val-set-as-a-string", _sft_opt("--data.init_args.val", "{id:d/pairs.jsonl}",
                                     words=["data.init_args.val: expected named sets", "'{id:d/pairs.jsonl}'",
                                            "space after the colon: {id: d/pairs.jsonl}"])),
    ("devices-not-a-number", _sft_opt("--trainer.devices", "many", words=["trainer options", "devices"])),
    ("ckpt-missing", _ckpt(lambda t: None, "file not found")),
    ("ckpt-truncated", _ckpt(lambda t: _good_checkpoint(t)[:5000], "not a complete checkpoint")),
    ("ckpt-garbage", _ckpt(lambda t: b"not a checkpoint at all\n" * 100, "not a complete checkpoint")),
    ("ckpt-byte-flipped", _ckpt(lambda t: _flip(_good_checkpoint(t)), "corrupt")),
    ("full-disk-during-save", _full_disk),
    ("probe-category-absent", _probe_category),
    ("iw-all-weights-0", _iw_zero),
    ("reference-cache-inf", _reference_cache(_cache_inf, build=True)),
    ("reference-cache-unreadable", _reference_cache(_cache_truncate, build=False)),
]


def test_the_catalogue_of_bad_inputs_only_grows():
    """107 cases (20 bad lines, 9 bad pairs, 78 through the CLI; 97 before issue 20's): none removed unnoticed."""
    counts = (len(BAD_LINES), len(BAD_PAIRS), len(CLI_CASES))
    assert all(n >= floor for n, floor in zip(counts, (20, 9, 78))), counts
    assert len({c[0] for c in CLI_CASES}) == len(CLI_CASES)  # each case named once


@pytest.mark.parametrize("make", [c[1] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input_is_one_paragraph_exit_2(make, tmp_path, monkeypatch, capsys):
    from lit_align.cli import main

    monkeypatch.chdir(tmp_path)
    argv, words, *after = make(tmp_path, monkeypatch) if make.__code__.co_argcount == 2 else make(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    messages = [line for line in err.splitlines() if line.startswith("lit_align: error: ")]
    assert len(messages) == 1, err[-3000:]  # one paragraph: one line
    for w in words:
        assert w in messages[0], (w, messages[0])
    assert "Does not validate" not in messages[0]
    for check in after:
        check()


def test_progress_bar_off_and_lr_0_train(tmp_path, monkeypatch, capsys):
    """`--trainer.enable_progress_bar false` drops the default progress bar (Lightning refused the pair); a
    learning rate of 0 trains with a warning."""
    from lit_align.cli import main

    monkeypatch.chdir(tmp_path)
    train = write_lines(tmp_path / "train.jsonl", [GOOD] * 4)
    with pytest.warns(UserWarning, match="optim.lr is 0"):
        main([*_sft(train, "--model.init_args.optim.lr", "0", "--trainer.logger.init_args.name", "quiet")])
    assert (tmp_path / "logs" / "quiet" / "checkpoints" / "last.ckpt").is_file()
