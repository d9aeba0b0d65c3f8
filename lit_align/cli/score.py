"""`lit_align score`: the rewards a trained reward model (objectives/reward_model.py) gives the records of a file.

    lit_align score --model logs/reward_model/version_0/hf_model --data pairs.jsonl --out scores.jsonl
    lit_align score --model logs/reward_model/checkpoints/last.ckpt --data builtin:pairs --split val --out s.jsonl

`--model` is a reward model exported in Hugging Face format (an `AutoModelForSequenceClassification` directory
with its tokenizer, as `fit` and `lit_align export` write it; or such a model's hub name) or a lit_align
checkpoint of a RewardModel run (a .ckpt file or a sharded directory). `--data` is any data source the data module
reads (a JSONL/JSON/CSV/Parquet file, builtin:<task>, a `datasets` name). Each record is tokenized exactly as for
training (data/tokenize.py: the chat template when the tokenizer has one, the end token on full answers,
truncation to --max-length) and every prompt + completion is scored on its own (padding does not change a
reward). One JSONL row per record, in file order, holding the record's fields and

    reward                            a completion: {prompt, completion}, {messages}, {text}
    reward_chosen, reward_rejected    a preference pair: {prompt, chosen, rejected}, HH dialogues, A/B contrast
                                      pairs (the matching answer as chosen)
    rewards                           a group {prompt, completions: [...]} or a ranked list {prompt, completions,
                                      scores}: one per completion, in the record's order (its scores' order)

plus `index` (0-based record number) and `where` (file:line). Records that cannot be scored (chosen ==
rejected, nothing left after truncation) are left out and counted on stderr, by reason. A bad record, a model
that is not a reward model, or an --out that is the --data file stops with one sentence (exit 2).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch

from lit_align.errors import LitAlignError
from lit_align.modeling.reward_models import load_reward_model, sequence_rewards

PAIR_FORMATS = ("pair", "hh", "contrast")


def _units(row: object, where: str, fmt: str, tokenizer) -> tuple[str, list]:
    """The sequences one record asks to score, as (reward fields' shape, [Tokenized with one continuation each]),
    or (the reason it cannot be scored, [])."""
    from lit_align.data.records import SkipRecord, detect_format, to_examples

    if fmt == "auto" and isinstance(row, dict):
        fmt = detect_format(row, where)
    pair = fmt in PAIR_FORMATS
    # A ranked list {prompt, completions, scores} is read as a group: every completion scored, in the record's
    # order (aligned with its `scores`), which are the labels a reward model is checked against, so neither
    # their order nor their ties matter here (training reads the best completion, or skips a record whose
    # scores tie).
    fmt = "group" if fmt == "ranked" else fmt
    try:
        examples = to_examples(row, where, "pair" if pair else "sft", fmt)
    except SkipRecord as e:
        return e.reason, []
    units = []
    for ex in examples:
        tokenized = tokenizer(ex)
        if isinstance(tokenized, str):  # data/tokenize.py's reason for dropping it
            return tokenized, []
        units += [replace(tokenized, continuations=[c]) for c in tokenized.continuations]  # one row each
    return ("pair" if pair else "group" if fmt == "group" else "single"), units


def _reward_fields(shape: str, rewards: list[float]) -> dict:
    if shape == "pair":
        return {"reward_chosen": rewards[0], "reward_rejected": rewards[1]}
    return {"rewards": rewards} if shape == "group" else {"reward": rewards[0]}


@torch.no_grad()
def score_rows(model, tokenizer, rows, batch_size: int = 8, max_length: int = 512,
               chat_template: bool | None = None, device: str = "cpu") -> tuple[list[dict], dict[str, int]]:
    """The output rows (one per scorable record, in order) for (where, row) pairs, and {reason: records skipped}."""
    from lit_align.data.collate import collate
    from lit_align.data.tokenize import Tokenizer, TokenizeSpec

    tok = Tokenizer(tokenizer, TokenizeSpec(max_length=max_length, chat_template=chat_template))
    records, units, skipped = [], [], {}
    for index, (where, row) in enumerate(rows):
        shape, seqs = _units(row, where, "auto", tok)
        if not seqs:
            skipped[shape] = skipped.get(shape, 0) + 1
            continue
        records.append((index, where, row, shape, len(units), len(seqs)))
        units += seqs
    rewards: list[float] = []
    for s in range(0, len(units), batch_size):
        batch = collate(list(enumerate(units[s: s + batch_size])), tokenizer.pad_token_id)
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        rewards += sequence_rewards(model, batch).tolist()                 # (n,)
    if not records:
        reasons = ", ".join(f"{n} {why}" for why, n in skipped.items())
        raise LitAlignError("no records to score" + (f": every one was left out ({reasons})" if reasons else ""))
    out = [{"index": index, "where": where, **row, **_reward_fields(shape, rewards[start: start + n])}
           for index, where, row, shape, start, n in records]
    return out, skipped


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lit_align score", description="Score the records of a data file with a trained reward model "
        "(one JSONL row per record: its fields plus reward, reward_chosen / reward_rejected for pairs, or rewards for "
        "the completions of a group or ranked list).")
    parser.add_argument("--model", required=True,
                        help="an exported reward model directory (<log dir>/hf_model) or a RewardModel checkpoint")
    parser.add_argument("--data", required=True, help="a JSONL/JSON/CSV/Parquet file, builtin:<task>, or a datasets name")
    parser.add_argument("--out", required=True, help="the JSONL file to write")
    parser.add_argument("--split", default="train", help="split of a built-in task or datasets name (default train)")
    parser.add_argument("--limit", type=int, default=None, help="score at most this many records")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default 8)")
    parser.add_argument("--max-length", type=int, default=512,
                        help="tokens of prompt + completion, truncated as in training (default 512)")
    parser.add_argument("--no-chat-template", dest="chat_template", action="store_false", default=None,
                        help="render prompts as plain text (default: the tokenizer's chat template when it has one)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    args = parser.parse_args(argv)
    for option in ("limit", "batch_size", "max_length"):
        value = getattr(args, option)
        if value is not None and value < 1:
            parser.error(f"--{option.replace('_', '-')} must be >= 1, not {value}")
    return args


def check_out_path(data: str, out: str) -> None:
    """Refuse an --out that is the --data file (by another name too: a relative path, a link): writing it would
    replace the records being scored."""
    data_path, out_path = Path(data).expanduser(), Path(out).expanduser()
    if data_path.is_file() and out_path.exists() and os.path.samefile(data_path, out_path):
        raise LitAlignError(f"--out {out} is the --data file ({data_path.resolve()}): writing the scores would "
                            "overwrite the records; give another --out")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from lit_align.data.sources import Source, read_rows

    from transformers.utils import logging as hf_logging

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # ("Loading weights" bars: the one line this command prints is the summary)
    try:
        check_out_path(args.data, args.out)
        model, tokenizer = load_reward_model(args.model)
        rows = read_rows(Source(path=args.data, split=args.split, limit=args.limit))
        out, skipped = score_rows(model.to(device), tokenizer, rows, args.batch_size, args.max_length,
                                  args.chat_template, device)
    except LitAlignError as e:
        print(f"lit_align score: error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    Path(args.out).expanduser().parent.mkdir(parents=True, exist_ok=True)
    with open(Path(args.out).expanduser(), "w") as f:
        for row in out:
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    left_out = "".join(f", {n} left out ({why})" for why, n in sorted(skipped.items()))
    print(f"scored {len(out)} records{left_out} -> {args.out}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
