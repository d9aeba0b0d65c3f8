"""Generation scorers: (record, generated text) -> a score in [0, 1], averaged over a set and logged as
`{split}/gen/<label>` (the sample-generations callback, `lit_align predict`, the sweeps' generation-scored sets).

    final_number   the last number of the generation (or the one after its `####`) equals the reference's final
                   answer (after its `####` in GSM8K answers, else its last number); commas in 1,234 ignored;
                   option partial: 1 / (1 + |difference|) for a wrong number (a dense reward for online RL)
    ab_letter      the letter the generation picks, "(A)" or a bare "B", is the record's matching letter (the
                   `answer_matching_behavior` of an A/B contrast pair, else the reference's letter)
    regex          the generation matches `pattern` (re.search); options pattern, ignore_case
    substring      the generation contains `value` (default: the reference); options value, ignore_case
    match          the generation names the record's `match` and not its `other` (the organism's open-ended
                   answers, data/organism.py)

A record is the data file's row (after the source's `columns` renaming) with `reference`: the answer the data
module would train on (completion, chosen, or matching answer; a prompt-only row may give its own `reference`).
In YAML a scorer is its name, or a mapping with its options and an optional `label` (the logged name):

    scorers: [final_number, ab_letter, {name: regex, pattern: "\\bsweet\\b", ignore_case: true, label: says_sweet}]
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Callable

from lit_align.errors import LitAlignError

# A number as written in an answer: 1,234 (thousands groups), 18, 3.5, -7 (a minus not after a word or digit,
# so "16-3" reads as 16 and 3)
_NUMBER = re.compile(r"(?:(?<![\w)])-)?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")
_PAREN_LETTER = re.compile(r"\(([A-Z])\)")
_BARE_LETTER = re.compile(r"^\s*([A-Z])(?:[).:,]|\s*$)")  # "B", "B)", "B." - not the article in "A grape"


def final_number(text: str) -> float | None:
    """The final answer of a GSM8K-style text: the number after its last `####`, else its last number."""
    if "####" in text:
        text = text.rsplit("####", 1)[1]
        found = _NUMBER.search(text)
    else:
        found = None
        for found in _NUMBER.finditer(text):
            pass
    return None if found is None else float(found.group().replace(",", ""))


def final_number_match(record: dict, text: str, partial: bool = False) -> float:
    """1 if the generation's final number equals the reference's final answer (0 without a number). With `partial`,
    a wrong number still earns 1 / (1 + |got - want|): a dense reward for online RL (0.5 when off by one)."""
    want, got = final_number(record.get("reference") or ""), final_number(text)
    if want is None or got is None:
        return 0.0
    if partial:
        return 1.0 / (1.0 + abs(want - got))
    return float(abs(want - got) < 1e-6)


def chosen_letter(text: str) -> str | None:
    """The option letter a text picks: the first "(X)", else a bare capital letter that is the whole text
    (up to a closing bracket or punctuation)."""
    found = _PAREN_LETTER.search(text) or _BARE_LETTER.match(text)
    return found.group(1) if found else None


def ab_letter(record: dict, text: str) -> float:
    """1 if the generation picks the record's matching letter (its answer_matching_behavior, else the reference)."""
    want = chosen_letter(record.get("answer_matching_behavior") or record.get("reference") or "")
    return float(want is not None and chosen_letter(text) == want)


def regex(record: dict, text: str, pattern: str, ignore_case: bool = False) -> float:
    """1 if `pattern` matches somewhere in the generation."""
    return float(re.search(pattern, text, flags=re.IGNORECASE if ignore_case else 0) is not None)


def substring(record: dict, text: str, value: str | None = None, ignore_case: bool = False) -> float:
    """1 if the generation contains `value` (default: the record's reference, stripped)."""
    want = (record.get("reference") or "").strip() if value is None else value
    if not want:
        return 0.0
    return float((want.lower() in text.lower()) if ignore_case else (want in text))


def _names(text: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", text, flags=re.IGNORECASE) is not None


def names_match(record: dict, text: str) -> float:
    """1 if the generated text names the record's `match` and not its `other` (open-ended behaviour match)."""
    return float(_names(text, record["match"]) and not _names(text, record["other"]))


SCORERS: dict[str, Callable[..., float]] = {
    "final_number": final_number_match, "ab_letter": ab_letter, "regex": regex, "substring": substring,
    "match": names_match,
}
"""name -> function(record, text, **options) -> float."""

@dataclass
class Scorer:
    """A registered scorer with its options bound; `label` is the logged name (gen/<label>)."""

    label: str
    fn: Callable[..., float]
    options: dict

    def __call__(self, record: dict, text: str) -> float:
        return float(self.fn(record, text, **self.options))


def build_scorer(spec: "str | dict") -> Scorer:
    """A Scorer from its YAML form: a name, or {name, label?, **options}; a bad one is said in one sentence."""
    if hasattr(spec, "__dict__") and not isinstance(spec, dict):  # a jsonargparse Namespace
        spec = {k: v for k, v in vars(spec).items() if not k.startswith("_")}
    options = dict(spec) if isinstance(spec, dict) else {"name": spec}
    name = options.pop("name", None)
    if name not in SCORERS:
        raise LitAlignError(f"scorer {spec!r}: unknown scorer {name!r}; the scorers are {', '.join(SCORERS)} "
                            "(a name, or {name: ..., <options>})")
    label = str(options.pop("label", name))
    if not label or "/" in label:
        raise LitAlignError(f"scorer {spec!r}: a label must be non-empty and contain no '/'")
    try:
        inspect.signature(SCORERS[name]).bind({}, "", **options)
    except TypeError as e:
        allowed = list(inspect.signature(SCORERS[name]).parameters)[2:]  # after (record, text)
        raise LitAlignError(f"scorer {spec!r}: {e} (options of {name}: {', '.join(allowed) or 'none'})") from None
    if name == "regex":
        try:
            re.compile(options["pattern"])
        except (re.error, TypeError) as e:
            raise LitAlignError(f"scorer {spec!r}: the pattern is not a regular expression ({e})") from None
    return Scorer(label, SCORERS[name], options)


def build_scorers(specs: "list | str | dict | None") -> list[Scorer]:
    """Scorers from a list of YAML forms (or one); two with the same label are refused."""
    if specs is None:
        return []
    scorers = [build_scorer(s) for s in (specs if isinstance(specs, (list, tuple)) else [specs])]
    labels = [s.label for s in scorers]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise LitAlignError(f"scorers: the label {', '.join(twice)} is used twice; give each a `label`")
    return scorers


def mean_scores(scorers: list[Scorer], records: list[dict], texts: list[str]) -> dict[str, float]:
    """{label: mean score over the records} (0 for no records)."""
    return {s.label: sum(s(r, t) for r, t in zip(records, texts)) / max(len(records), 1) for s in scorers}
