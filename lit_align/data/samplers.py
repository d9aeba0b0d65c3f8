"""A seeded, resumable training sampler with DistributedSampler semantics.

Epoch `e` visits the examples in one global order, `torch.randperm(n)` drawn from a generator seeded
with `seed + e` (the identity order when shuffle is off), whatever the number of processes. With
`num_replicas` data-parallel ranks, the order is padded (repeating its start) or cut (`drop_last`) to a
multiple of `num_replicas` and rank r takes positions r, r + R, r + 2R, ... — exactly what
torch's DistributedSampler does, so every rank sees a disjoint shard, and the union of the ranks' k-th
batches is the k-th batch of a single process with R times the batch size.

Resuming. After k batches of B examples on each of R ranks, the first `k * B * R` positions of the
epoch's order have been trained on (a prefix, because the ranks interleave). `state_dict()` records the
epoch and that prefix length; after `load_state_dict()` the epoch's iterator skips the prefix and shards
the rest. A resumed run with the same R and B therefore sees exactly the batches the uninterrupted run
would have seen; with another R or B it still sees every remaining example of the epoch once.

The sampler cannot know on its own how much has been *trained on*: data loader workers and prefetching
pull indices ahead of training. The data module reports the trainer's count of consumed batches
(`AlignDataModule.state_dict`); `state_dict(consumed=...)` takes it. Without it, the count of indices
handed out so far is used (exact with num_workers=0).

The iterator is a generator, so the skip is read when iteration actually starts: a state loaded after
the DataLoader (and its iterator) were created but before the first batch still takes effect.
It subclasses DistributedSampler so that Lightning keeps it instead of injecting its own.

Grouping by length. Given each example's `lengths` and a `group_size` > 0, the epoch's order is the seeded
permutation above cut into consecutive windows of `group_size` positions, each window sorted by length,
longest first (a stable sort: ties keep their shuffled order, so the result is deterministic; longest first
so that a batch too long for memory fails at the start of a window, not after it). Consecutive batches then
hold similar lengths and waste little on padding, while the windows still follow the shuffle. The order
stays a pure function of (seed, epoch, lengths, group_size): it never depends on the batch size or the
number of ranks, so batch 8, batch 4 x accumulation 2 and 2 ranks x batch 4 see the same examples per
optimizer step, and the resume skip above works unchanged. A batch straddling two windows mixes their
lengths; with group_size a multiple of the global batch size (batch size x ranks) none does. The state
records `group_size`: a state saved with another one names other examples, and the epoch starts over (as
for another seed). WeightedResampler draws with replacement and does not group.

Repeating optimizer steps. With `repeat` = μ > 1 and `window` = W (indices per rank in one optimizer step: batch
size x gradient accumulation), each rank's shard is cut into windows of W indices and each window is yielded μ times
in a row, so μ consecutive optimizer steps see the same batches (online RL's sample reuse, num_iterations: the
objective samples on the first and reuses its rollouts on the others). A last window with fewer than W indices is left
out of the epoch (repeated, it would straddle optimizer steps). The resume position then counts whole windows in the
epoch's order (`consumed`, a multiple of W x ranks) plus the indices of the current window's repeats already yielded
(`repeat_skip`, per rank); a state saved with another `repeat` or `window` starts the epoch over.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence, Sized

import torch
from torch.utils.data import DistributedSampler


class ResumableSampler(DistributedSampler):
    """`lengths`: (n,) each example's length (what it costs in a padded batch); with `group_size` > 0 the
    order is sorted by length, longest first, within windows of `group_size` positions (module docstring).
    """

    def __init__(self, dataset: Sized, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, lengths: Sequence[int] | None = None, group_size: int = 0,
                 repeat: int = 1, window: int = 0):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        if group_size < 0:
            raise ValueError(f"group_size must be >= 0, not {group_size}")
        if repeat < 1 or (repeat > 1 and window < 1):
            raise ValueError(f"repeat must be >= 1 and, above 1, window >= 1 (repeat {repeat}, window {window})")
        if lengths is not None and len(lengths) != len(dataset):
            raise ValueError(f"{len(lengths)} lengths for {len(dataset)} examples")
        # DistributedSampler.__init__ would query torch.distributed when num_replicas/rank are None; we always
        # pass them, so set the attributes it defines ourselves (no process group needed).
        self.dataset, self.num_replicas, self.rank = dataset, num_replicas, rank
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch = 0
        n = len(dataset)
        self.num_samples = n // num_replicas if drop_last else math.ceil(n / num_replicas)
        self.total_size = self.num_samples * num_replicas
        self._skip: dict[int, int] = {}      # epoch -> prefix of that epoch's order already trained on
        self._handed_out = 0                 # indices yielded by this rank in the current iteration
        self._iter_start = 0                 # prefix skipped by the current iteration
        self.lengths = None if lengths is None else [int(x) for x in lengths]
        self.group_size = group_size if lengths is not None else 0  # 0: no grouping (also without lengths)
        self.repeat, self.window = repeat, window if repeat > 1 else 0
        self._repeat_skip: dict[int, int] = {}  # epoch -> indices of the current window's repeats already yielded

    def order(self, epoch: int) -> list[int]:
        """The global order of epoch `epoch` (before sharding)."""
        n = len(self.dataset)
        if not self.shuffle:
            order = list(range(n))
        else:
            g = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(n, generator=g).tolist()
        if not self.group_size:
            return order
        G, lengths = self.group_size, self.lengths
        # each window of G positions, longest first; sorted() is stable, so ties keep the shuffled order
        return [i for w in range(0, n, G) for i in sorted(order[w:w + G], key=lambda i: -lengths[i])]

    def _shard(self, order: list[int]) -> list[int]:
        R = self.num_replicas
        if self.drop_last:
            order = order[: len(order) - len(order) % R]
        elif len(order) % R:
            pad = R - len(order) % R
            order = order + (order * math.ceil(pad / max(len(order), 1)))[:pad]
        return order[self.rank::R]

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch
        start = self._skip.pop(epoch, 0)
        repeat_skip = self._repeat_skip.pop(epoch, 0)
        self._iter_start, self._handed_out = start, 0
        rest = self.order(epoch)[start:]
        shard = self._shard(rest) if rest else []
        if self.repeat > 1:  # each whole window of W indices, μ times in a row (module docstring)
            W = self.window
            shard = [i for w in range(0, len(shard) - W + 1, W) for _ in range(self.repeat) for i in shard[w:w + W]]
            shard = shard[repeat_skip:]
            self._handed_out = repeat_skip
        for i in shard:
            self._handed_out += 1
            yield i

    def __len__(self) -> int:
        # The full epoch's length, also when resuming inside it: Lightning counts the batches already done
        # (batch_progress) and expects the iterator to yield the remaining ones only.
        if self.repeat > 1:
            return self.num_samples // self.window * self.window * self.repeat
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    # -- resuming ---------------------------------------------------------------------------------------
    def state_dict(self, consumed: int | None = None) -> dict:
        """`consumed`: examples of the current epoch's order trained on so far, all ranks together."""
        if self.repeat > 1:
            return self._repeating_state(consumed)
        if consumed is None:
            consumed = self._iter_start + self._handed_out * self.num_replicas
        epoch, n = self.epoch, len(self.dataset)
        if consumed >= (n - n % self.num_replicas if self.drop_last else n):
            epoch, consumed = epoch + 1, 0  # the epoch is done: the next one starts from its beginning
        return self._state(epoch, consumed)

    def _state(self, epoch: int, consumed: int, repeat_skip: int = 0) -> dict:
        return {"epoch": epoch, "consumed": int(consumed), "seed": self.seed, "shuffle": self.shuffle,
                "dataset_size": len(self.dataset), "num_replicas": self.num_replicas, "group_size": self.group_size,
                "repeat": self.repeat, "window": self.window, "repeat_skip": int(repeat_skip)}

    def _repeating_state(self, consumed: int | None) -> dict:
        """`consumed`: indices yielded by all ranks (repeats included); -> whole windows of the epoch's order done,
        and the current window's repeats yielded on each rank."""
        W, R, mu = self.window, self.num_replicas, self.repeat
        yielded = (self._iter_start // R * mu + self._handed_out) if consumed is None else consumed // R  # per rank
        if yielded >= len(self):
            return self._state(self.epoch + 1, 0)  # the epoch is done (its last partial window is left out)
        return self._state(self.epoch, yielded // (W * mu) * W * R, yielded % (W * mu))

    def load_state_dict(self, state: dict) -> None:
        """Resume in epoch `state["epoch"]` after its first `state["consumed"]` examples. A state saved on
        another dataset size, seed or length grouping cannot name the same examples: the epoch then starts
        over."""
        self.epoch = int(state["epoch"])
        self._skip.clear()
        same_data = (state.get("dataset_size") == len(self.dataset) and state.get("seed") == self.seed
                     and state.get("shuffle", True) == self.shuffle
                     and state.get("group_size", 0) == self.group_size
                     and state.get("repeat", 1) == self.repeat and state.get("window", 0) == self.window)
        self._repeat_skip.clear()
        if same_data and state.get("consumed", 0) > 0:
            self._skip[self.epoch] = int(state["consumed"])
        if same_data and state.get("repeat_skip", 0) > 0:
            self._repeat_skip[self.epoch] = int(state["repeat_skip"])


class WeightedResampler(ResumableSampler):
    """Draws training examples in proportion to a weight ("train on it several times" instead of scaling its
    loss): importance-reweighted SFT's `resample` mode (objectives/iw_sft.py).

    Epoch `e` is `len(dataset)` draws with replacement, `torch.multinomial(weights, n, replacement=True)` from
    a generator seeded with `seed + e`: one global order, deterministic in (seed, epoch, weights), whatever
    the number of processes. Sharding across ranks, `state_dict` / `load_state_dict` and the skip of the
    part already trained on are ResumableSampler's, so a resumed run sees exactly the draws the
    uninterrupted run would have. The state also records a digest of the weights: a state saved under other
    weights cannot name the same draws, and the epoch then starts over (with a warning).

    `weights`: (n,) non-negative, or a callable returning them. A callable is read when an epoch's draw
    begins, so an objective can hand the sampler weights it computes after the data loader was built
    (Lightning builds it before on_fit_start).
    """

    def __init__(self, dataset: Sized, weights, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 drop_last: bool = False):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=drop_last)
        self._weights = weights
        self._loaded_digest: str | None = None

    @property
    def weights(self) -> torch.Tensor:
        w = self._weights() if callable(self._weights) else self._weights
        w = torch.as_tensor(w, dtype=torch.float64).reshape(-1).cpu()
        if w.numel() != len(self.dataset):
            raise ValueError(f"{w.numel()} sampling weights for {len(self.dataset)} examples")
        if (w < 0).any() or not torch.isfinite(w).all() or w.sum() <= 0:
            raise ValueError("sampling weights must be finite, >= 0 and not all 0")
        return w

    def order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + epoch)
        return torch.multinomial(self.weights, len(self.dataset), replacement=True, generator=g).tolist()

    def __iter__(self) -> Iterator[int]:
        if self._loaded_digest is not None:
            if self._loaded_digest != _digest(self.weights) and self._skip.pop(self.epoch, None):
                import warnings

                warnings.warn("the saved sampler position belongs to other sampling weights; the epoch's draw "
                              "starts over", stacklevel=2)
            self._loaded_digest = None
        return super().__iter__()

    def state_dict(self, consumed: int | None = None) -> dict:
        return {**super().state_dict(consumed), "weights": _digest(self.weights)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._loaded_digest = state.get("weights")  # compared when iteration starts (weights may come later)


def _digest(w: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(w.double().numpy().tobytes()).hexdigest()[:16]
