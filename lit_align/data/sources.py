"""Read raw rows from a data source: a JSONL/JSON/Parquet/CSV file, a built-in task, or a `datasets` name.

Every row comes with `where` ("path:line" or "path:row N") so that a bad record can be reported precisely.
Nothing here knows record formats; see records.py.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from lit_align.errors import DataError, LitAlignError

FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


@dataclass
class Source:
    """One data source. A plain string in YAML is shorthand for `{path: <string>}`."""

    path: str
    """A file (.jsonl, .json, .parquet, .csv, optionally .gz), builtin:<task>, or a `datasets` hub name."""
    split: str = "train"
    """Split of a `datasets` name or of a built-in task (train, val; ab also id, ood)."""
    subset: str | None = None
    """Configuration name of a `datasets` name."""
    limit: int | None = None
    """Use at most this many rows (the first ones)."""
    format: str = "auto"
    """Record format: auto, sft, pair, hh, contrast, group, probe (see records.py)."""
    columns: dict[str, str] | None = None
    """Rename fields before parsing, e.g. {prompt: Question, chosen: Best Answer}."""
    seed: int = 0
    """Seed of a built-in task's generator."""

    @property
    def label(self) -> str:
        return self.path if self.split == "train" else f"{self.path}[{self.split}]"


def as_source(value: "str | Source | dict") -> Source:
    if isinstance(value, Source):
        return value
    if isinstance(value, str):
        return Source(path=value)
    if isinstance(value, dict):
        return Source(**value)
    if hasattr(value, "__dict__"):  # a jsonargparse Namespace
        return Source(**{k: v for k, v in vars(value).items() if not k.startswith("_")})
    raise LitAlignError(f"Cannot read a data source from {value!r}: give a path or {{path: ..., split: ...}}.")


def _suffix(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    return suffixes[-1].lower() if suffixes else ""


def _open_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except OSError as e:
            raise DataError(str(path), f"not a valid gzip file ({e})") from None
    return data


def _jsonl(path: Path) -> Iterator[tuple[str, object]]:
    for lineno, raw in enumerate(_open_bytes(path).split(b"\n"), start=1):
        where = f"{path}:{lineno}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(where, f"invalid UTF-8 (byte {e.start} of the line)") from None
        if not line.strip():
            continue
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(where, f"invalid JSON: {e.msg} (column {e.colno})") from None


def _json(path: Path) -> Iterator[tuple[str, object]]:
    try:
        data = json.loads(_open_bytes(path).decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(str(path), f"invalid UTF-8 at byte {e.start}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}", f"invalid JSON: {e.msg} (column {e.colno})") from None
    if isinstance(data, dict):  # {"data": [...]} or a column dict are common; accept a list under one key
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(str(path), "a .json file must hold a list of records (or an object with one list)")
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(str(path), "a .json file must hold a list of records")
    for i, row in enumerate(data):
        yield f"{path}:record {i}", row


def _csv(path: Path) -> Iterator[tuple[str, object]]:
    try:
        text = _open_bytes(path).decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(str(path), f"invalid UTF-8 at byte {e.start}") from None
    reader = csv.DictReader(io.StringIO(text))
    for row in reader:
        yield f"{path}:{reader.line_num}", dict(row)


def _parquet(path: Path) -> Iterator[tuple[str, object]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise DataError(str(path), f"not a readable Parquet file ({e})") from None
    for i, row in enumerate(table.to_pylist()):
        yield f"{path}:row {i}", row


def _datasets(source: Source) -> Iterator[tuple[str, object]]:
    import datasets

    try:
        ds = datasets.load_dataset(source.path, source.subset, split=source.split)
    except Exception as e:  # offline, unknown name, bad split: all end here
        raise LitAlignError(
            f"Could not load the dataset '{source.path}' (split '{source.split}') with `datasets`: "
            f"{type(e).__name__}: {e}. If you meant a local file, check the path; files need one of the "
            f"suffixes {', '.join(FILE_SUFFIXES)}.") from None
    for i, row in enumerate(ds):
        yield f"{source.path}[{source.split}]:row {i}", row


def read_rows(source: Source) -> Iterator[tuple[str, object]]:
    """Yield (where, row) for every row of `source`, at most `source.limit` of them."""
    if source.path.startswith("builtin:"):
        from lit_align.data.synthetic import builtin_records

        task = source.path.split(":", 1)[1]
        try:
            rows = builtin_records(task, source.split, n=source.limit, seed=source.seed)
        except ValueError as e:
            raise LitAlignError(f"Data source '{source.path}': {e}") from None
        rows_iter: Iterator[tuple[str, object]] = ((f"{source.label}:{i}", r) for i, r in enumerate(rows))
    else:
        path = Path(source.path).expanduser()
        suffix = _suffix(path)
        if path.exists() and path.is_file():
            readers = {".jsonl": _jsonl, ".json": _json, ".csv": _csv, ".parquet": _parquet}
            if suffix not in readers:
                raise DataError(str(path), f"unknown file format '{suffix or '(no suffix)'}': use one of "
                                           f"{', '.join(FILE_SUFFIXES)} (optionally gzipped)")
            rows_iter = readers[suffix](path)
        elif suffix in FILE_SUFFIXES or path.is_dir() or "/" not in source.path and "." in source.path:
            raise DataError(str(path), "file not found" if not path.exists() else "is a directory, not a file")
        else:
            rows_iter = _datasets(source)
    for count, item in enumerate(rows_iter):
        if source.limit is not None and count >= source.limit:
            break
        yield item
