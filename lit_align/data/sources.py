"""Read raw rows from a data source: a JSONL/JSON/Parquet/CSV file, a built-in task, or a `datasets` name.

Every row comes with `where` ("path:line" or "path:row N") so that a bad record can be reported precisely.
Nothing here knows record formats; see records.py.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import zlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterator

from lit_align.data.label_noise import LabelNoise, as_label_noise
from lit_align.errors import DataError, LitAlignError

FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


@dataclass
class InvalidRow:
    """A row that could not be read (bad JSON, bad UTF-8, ...). It is yielded, not raised, so that one bad
    line can be skipped and counted (`skip_invalid`); records.to_examples raises its `error`."""

    error: DataError


@dataclass
class Source:
    """One data source. A plain string in YAML is shorthand for `{path: <string>}`."""

    path: str
    """A file (.jsonl, .json, .parquet, .csv, optionally .gz), builtin:<task>, or a `datasets` hub name."""
    split: str = "train"
    """Split of a `datasets` name or of a built-in task (train, val; ab also id, ood; organism: train, id,
    ood, open, task, open_train, probe, probe_test; organism-v2: those and train_easy, id_easy, id_hard)."""
    subset: str | None = None
    """Configuration name of a `datasets` name."""
    limit: int | None = None
    """Use at most this many rows (the first ones, after `skip`)."""
    skip: int = 0
    """Skip this many rows first: e.g. train on a file's rows from 200 on, evaluate on its first 200 (limit)."""
    format: str = "auto"
    """Record format: auto, sft, pair, hh, contrast, group, probe (see records.py)."""
    columns: dict[str, str] | None = None
    """Rename fields before parsing, e.g. {prompt: Question, chosen: Best Answer}."""
    seed: int = 0
    """Seed of a built-in task's generator."""
    kind: str | None = None
    """Evaluation sets only: read the records as `sft` (one continuation) or `pair` (two: chosen / matching,
    then rejected / not matching) whatever the objective trains on, e.g. an SFT run evaluated on pairs
    (preference accuracy, behaviour-match rate). None: what the objective consumes."""
    label_noise: LabelNoise | None = None
    """Preference pairs only: {fraction, seed}: chosen and rejected swapped in exactly round(fraction · n) of the n
    records read (after skip and limit), a seeded choice (data/label_noise.py). An objective that reads one
    continuation (SFT) then trains on the rejected answer of those records."""

    def __post_init__(self):
        self.label_noise = as_label_noise(self.label_noise, f"Data source '{self.path}'")

    @property
    def label(self) -> str:
        return self.path if self.split == "train" else f"{self.path}[{self.split}]"


def named_sources(option: str, sets: "dict | str | None") -> dict[str, Source]:
    """The named sets of `option` (data.val, data.test: {name: source}) as Sources; a set without a source, or
    not a mapping of sets, is said with the option and the set's name."""
    if sets is None:
        return {}
    if not isinstance(sets, dict):
        raise LitAlignError(f"{option}: expected named sets {{name: source, ...}}, e.g. {{id: d/pairs.jsonl}}, not "
                            f"{sets!r}{_no_space_after_colon(sets)}")
    for name, value in sets.items():
        if value is None:
            raise LitAlignError(f"{option}: set '{name}' has no source{_no_space_after_colon(name)}; expected a path, "
                                "builtin:<task>, a `datasets` name or {path: ..., split: ...}")
    return {name: as_source(value, f"{option}: set '{name}'") for name, value in sets.items()}


def _no_space_after_colon(text: object) -> str:
    """A hint when `text` holds a colon with no space after it: YAML reads `{id:d/pairs.jsonl}` as a set named
    "id:d/pairs.jsonl" with no value (on the command line: as a string), not as {id: d/pairs.jsonl}."""
    if not isinstance(text, str) or not re.search(r":[^\s,}]", text):
        return ""
    fixed = re.sub(r":(?=[^\s,}])", ": ", text.strip("{} "))
    return f" (YAML needs a space after the colon: {{{fixed}}})"


def as_source(value: "str | Source | dict", option: str = "Data source") -> Source:
    if isinstance(value, Source):
        return value
    if isinstance(value, str):
        return Source(path=value)
    if not isinstance(value, dict) and hasattr(value, "__dict__"):  # a jsonargparse Namespace
        value = {k: v for k, v in vars(value).items() if not k.startswith("_")}
    if isinstance(value, dict):
        known = {f.name for f in fields(Source)}
        unknown = sorted(set(value) - known)
        if unknown or "path" not in value:
            raise LitAlignError(f"{option} {value!r}: " + (f"unknown option '{unknown[0]}'" if unknown else
                                "no 'path'") + f"; the options are {', '.join(f.name for f in fields(Source))}.")
        return Source(**value)
    raise LitAlignError(f"{option}: cannot read a data source from {value!r}: give a path or "
                        "{path: ..., split: ...}.")


def _suffix(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    return suffixes[-1].lower() if suffixes else ""


def _open_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:  # EOFError: a truncated file
            what = "a truncated gzip file" if isinstance(e, EOFError) else "not a valid gzip file"
            raise DataError(str(path), f"{what} ({e})") from None
    return data


def _decode(path: Path, data: bytes) -> str:
    """The whole file as text (a UTF-8 byte-order mark is dropped); bad UTF-8 names its line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1)
        raise DataError(f"{path}:{line}", f"invalid UTF-8 (byte {col} of the line)") from None


def _jsonl(path: Path) -> Iterator[tuple[str, object]]:
    data = _open_bytes(path)
    if data.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte-order mark (some editors write one)
        data = data[3:]
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        where = f"{path}:{lineno}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield where, InvalidRow(DataError(where, f"invalid UTF-8 (byte {e.start} of the line)"))
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            row = InvalidRow(DataError(where, f"invalid JSON: {e.msg} (column {e.colno})"))
        yield where, row


def _json(path: Path) -> Iterator[tuple[str, object]]:
    try:
        data = json.loads(_decode(path, _open_bytes(path)))
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
    data = _open_bytes(path)
    if data.startswith(b"\xef\xbb\xbf"):  # the byte-order mark spreadsheet programs write
        data = data[3:]
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))  # the default 128 KiB cuts long texts
    # surrogateescape keeps going past bad UTF-8; the rows holding it are reported one by one below
    reader = csv.DictReader(io.StringIO(data.decode("utf-8", errors="surrogateescape"), newline=""))
    try:
        header_len = len(reader.fieldnames or [])
    except csv.Error as e:
        raise DataError(f"{path}:1", f"unreadable CSV header ({e})") from None
    end = reader.line_num  # the line where the previous record ended; a record names the line it starts on
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:  # NUL byte, a field over the size limit, ...: the file cannot be read on
            raise DataError(f"{path}:{end + 1}", f"unreadable CSV ({e})") from None
        where, end = f"{path}:{end + 1}", reader.line_num
        bad_utf8 = [k for k, v in row.items() if isinstance(v, str) and _has_surrogates(v)]
        if None in row:
            yield where, InvalidRow(DataError(where, f"{header_len + len(row[None])} values, but the header "
                                                     f"has {header_len} columns"))
        elif bad_utf8 or any(_has_surrogates(k) for k in row if isinstance(k, str)):
            yield where, InvalidRow(DataError(where, "invalid UTF-8", field=(bad_utf8 or [None])[0]))
        else:
            yield where, dict(row)


def _has_surrogates(text: str) -> bool:
    """Whether `text` holds bytes that were not UTF-8 (decoded with errors="surrogateescape")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


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
        from lit_align.data.organism import organism_records
        from lit_align.data.organism_v2 import organism_v2_records
        from lit_align.data.synthetic import builtin_records

        task = source.path.split(":", 1)[1]
        n = None if source.limit is None else source.skip + source.limit
        try:
            rows = (organism_records(source.split, n=n, seed=source.seed) if task == "organism"
                    else organism_v2_records(source.split, n=n, seed=source.seed) if task == "organism-v2"
                    else builtin_records(task, source.split, seed=source.seed, n=n))
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
        elif (suffix in FILE_SUFFIXES or path.is_dir() or "/" not in source.path and "." in source.path
              or source.path.startswith((".", "/", "~")) or path.parent != Path(".") and path.parent.is_dir()):
            # a local path (not a `datasets` name such as org/name): say it is missing
            raise DataError(str(path), "file not found" if not path.exists() else "is a directory, not a file")
        else:
            rows_iter = _datasets(source)
    for count, item in enumerate(rows_iter):
        if count < source.skip:
            continue
        if source.limit is not None and count - source.skip >= source.limit:
            break
        yield item
