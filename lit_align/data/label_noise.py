"""Label noise: a labeller who makes mistakes, seeded and counted, to ask which method tolerates it.

    label_noise: {fraction: 0.2, seed: 0}

Two places take it:

- a data source of preference pairs (data/sources.py's `Source.label_noise`): chosen and rejected trade places in
  exactly round(fraction · n) of the source's n records (after `skip` and `limit`; Python's round, half to even).
  Which records is a pure function of (seed, n): the first of a permutation of 0..n-1 shuffled by `seed`, so it
  does not depend on the batch size, the shuffle, the devices or a restart, and a larger fraction flips a superset
  of a smaller one's records (same seed);
- an online objective's rewards (objectives/online.py's `label_noise`): each binary reward r it queries becomes
  1 - r with probability `fraction`, drawn from a hash of (seed, the query): the optimizer step, the prompt's index
  in the data, the completion's place in its group and the reward function.
"""

from __future__ import annotations

import hashlib
import numbers
import random
from dataclasses import dataclass, fields

from lit_align.errors import LitAlignError


@dataclass
class LabelNoise:
    """Which labels a labeller gets wrong (module docstring)."""

    fraction: float = 0.0
    """The share of labels flipped, in [0, 1]: pair records' chosen and rejected swapped, or binary rewards turned
    over (1 - r)."""
    seed: int = 0
    """Seed of which labels are flipped."""

    def __post_init__(self):
        fraction, seed = self.fraction, self.seed
        if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 <= fraction <= 1:
            raise LitAlignError(f"label_noise.fraction must be a number in [0, 1] (the share of labels flipped), "
                                f"not {fraction!r}")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise LitAlignError(f"label_noise.seed must be an integer, not {seed!r}")
        self.fraction, self.seed = float(fraction), int(seed)

    def __str__(self) -> str:
        return f"label_noise {self.fraction:g}, seed {self.seed}"

    def flipped_rows(self, n: int) -> frozenset[int]:
        """Exactly round(fraction · n) of the positions 0..n-1: the first ones of a permutation shuffled by `seed`."""
        order = list(range(n))
        random.Random(self.seed).shuffle(order)
        return frozenset(order[: round(self.fraction * n)])

    def flips(self, query: str) -> bool:
        """Whether the labeller answers the query named `query` wrong: true with probability `fraction`, a pure
        function of (seed, query)."""
        digest = hashlib.blake2b(f"{self.seed},{query}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") < self.fraction * 2 ** 64


def as_label_noise(value: object, owner: str) -> LabelNoise | None:
    """`value` (None, a LabelNoise, a {fraction, seed} mapping or a jsonargparse Namespace of one) as a LabelNoise;
    what does not fit is said in one sentence after `owner` (e.g. "Data source 'd.jsonl'")."""
    if value is None or isinstance(value, LabelNoise):
        return value
    if not isinstance(value, dict) and hasattr(value, "__dict__"):  # a jsonargparse Namespace
        value = {k: v for k, v in vars(value).items() if not k.startswith("_")}
    known = [f.name for f in fields(LabelNoise)]
    if not isinstance(value, dict) or set(value) - set(known):
        raise LitAlignError(f"{owner}: label_noise: expected {{fraction: <share of labels flipped, 0..1>, seed: "
                            f"<int>}}, not {value!r}")
    try:
        return LabelNoise(**value)
    except LitAlignError as e:
        raise LitAlignError(f"{owner}: {e}") from None
