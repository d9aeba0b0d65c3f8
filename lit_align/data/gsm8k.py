"""GSM8K model solutions -> prefix-DPO pair records.

The grade-school-math repository's `example_model_solutions.jsonl` holds, per question, several model
solutions tagged `is_correct`:

    {"question": ..., "ground_truth": ..., "<model>": {"is_correct": bool, "solution": "step\\nstep\\nA: 18"}, ...}

Every (correct, incorrect) pair of solutions of one question becomes a record

    {prompt: question, prefix: the steps both share, chosen: the correct rest, rejected: the incorrect rest,
     partial: ...}

where the prefix is their longest common line-prefix (whole lines, each with its "\\n"): the first steps
on which both agree, after which the incorrect solution goes wrong and the correct one does not. With
`max_lines`, both continuations stop after that many lines past the prefix and the record is a partial
generation (`partial: true`: no end token); otherwise they run to the end of the solution, full answers.
Pairs whose continuations are identical after cutting are left out; `min_prefix_lines` keeps only pairs
that share at least that many lines.
"""

from __future__ import annotations

import hashlib
import json
from itertools import product
from pathlib import Path
from typing import Iterable, Iterator

from lit_align.errors import DataError


def common_line_prefix(a: str, b: str) -> int:
    """Number of leading lines (split at "\\n") that `a` and `b` share, not counting a last line of either
    that has no "\\n" after it (the two texts then go on differently, or one ends)."""
    la, lb = a.split("\n")[:-1], b.split("\n")[:-1]   # whole lines only: each followed by "\n"
    n = 0
    while n < min(len(la), len(lb)) and la[n] == lb[n]:
        n += 1
    return n


def _cut(lines: list[str], max_lines: int | None) -> tuple[str, bool]:
    if max_lines is None or len(lines) <= max_lines:
        return "\n".join(lines), False
    return "\n".join(lines[:max_lines]) + "\n", True


def prefix_pair(question: str, correct: str, incorrect: str, max_lines: int | None = None) -> dict | None:
    """One record from a correct and an incorrect solution, or None when nothing tells them apart."""
    n = common_line_prefix(correct, incorrect)
    good, bad = correct.split("\n"), incorrect.split("\n")
    prefix = "".join(line + "\n" for line in good[:n])
    chosen, cut_c = _cut(good[n:], max_lines)
    rejected, cut_r = _cut(bad[n:], max_lines)
    if chosen == rejected or not chosen.strip() or not rejected.strip():
        return None
    # cut anywhere: a partial pair (no end token on either continuation)
    return {"prompt": question, "prefix": prefix, "chosen": chosen, "rejected": rejected, "partial": cut_c or cut_r}


def solutions(row: dict, where: str) -> tuple[str, list[str], list[str]]:
    """(question, correct solutions, incorrect solutions) of one row of example_model_solutions.jsonl."""
    if not isinstance(row, dict) or not isinstance(row.get("question"), str):
        raise DataError(where, "missing", field="question")
    good, bad = [], []
    for key, value in row.items():
        if isinstance(value, dict) and "solution" in value:
            if not isinstance(value["solution"], str) or not isinstance(value.get("is_correct"), bool):
                raise DataError(where, "expected {is_correct: bool, solution: str}", field=key)
            (good if value["is_correct"] else bad).append(value["solution"].strip())
    return row["question"], good, bad


def prefix_pairs(rows: Iterable[tuple[str, dict]], max_lines: int | None = None,
                 min_prefix_lines: int = 0) -> Iterator[dict]:
    """Records from (where, row) pairs: every correct x incorrect solution pair of each question."""
    for where, row in rows:
        question, good, bad = solutions(row, where)
        for correct, incorrect in product(dict.fromkeys(good), dict.fromkeys(bad)):  # unique, in order
            if common_line_prefix(correct, incorrect) < min_prefix_lines:
                continue
            record = prefix_pair(question, correct, incorrect, max_lines)
            if record is not None:
                yield record


def held_out(question: str, fraction: float) -> bool:
    """A stable share `fraction` of the questions, chosen by a hash of the question text."""
    return int.from_bytes(hashlib.sha256(question.encode()).digest()[:4], "big") < fraction * 2**32


def convert(src: str | Path, dst: str | Path, max_lines: int | None = None, min_prefix_lines: int = 0,
            val_fraction: float = 0.1) -> dict:
    """Read example_model_solutions.jsonl at `src` and write pair records as JSONL: the questions held out
    for validation (a share `val_fraction`, by a hash of the question) to `<dst stem>_val.jsonl`, the rest
    to `dst`. Returns the counts."""
    src, dst = Path(src), Path(dst)
    rows = []
    for lineno, line in enumerate(src.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append((f"{src}:{lineno}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(f"{src}:{lineno}", f"invalid JSON: {e.msg}") from None
    records = list(prefix_pairs(rows, max_lines, min_prefix_lines))
    val = [r for r in records if held_out(r["prompt"], val_fraction)]
    train = [r for r in records if not held_out(r["prompt"], val_fraction)]
    val_dst = dst.with_name(dst.name.replace(".jsonl", "") + "_val.jsonl")
    dst.parent.mkdir(parents=True, exist_ok=True)
    for path, part in ((dst, train), (val_dst, val)):
        path.write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    return {"questions": len(rows), "pairs": len(records), "train": len(train), "val": len(val),
            "with_prefix": sum(bool(r["prefix"]) for r in records),
            "partial": sum(r["partial"] for r in records), "files": [str(dst), str(val_dst)]}
