"""Length-grouped training order (data/samplers.py: ResumableSampler `lengths`/`group_size`, the data module's
`group_by_length`): a shuffled permutation sorted by length within windows, independent of batch size and
ranks, resumable, and on real HH-RLHF dialogues it cuts the padding of training batches."""

import pytest
import torch
from conftest import SHARED_DATA, requires_shared

from lit_align.data import AlignDataModule
from lit_align.data.collate import collate, collate_prefix, padded_length, padding_fraction
from lit_align.data.samplers import ResumableSampler
from lit_align.data.tokenize import Tokenized
from lit_align.modeling.models import ModelSpec, load_tokenizer
from lit_align.layouts import LAYOUTS

N, WINDOW = 100, 16  # 100 builtin pairs: six full windows of 16 and a last one of 4


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(ModelSpec(name="builtin:small"))


def _data(tok, train, **kwargs) -> AlignDataModule:
    dm = AlignDataModule(train=train, **kwargs)
    dm.connect(tok, LAYOUTS["pair"])
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def pairs(tok):
    return _data(tok, {"path": "builtin:pairs", "limit": N}, group_by_length=WINDOW, seed=3)


def _randperm(n: int, seed: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def test_grouped_order_is_the_shuffle_sorted_within_windows(pairs):
    sampler = pairs.train_dataloader().sampler
    lengths = [padded_length(ex) for ex in pairs.splits["train"].examples]
    assert sampler.lengths == lengths and sampler.group_size == WINDOW
    assert len(set(lengths)) > 5  # the test has teeth: lengths differ
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order, plain = sampler.order(epoch), _randperm(N, 3 + epoch)
        assert list(sampler) == order and sorted(order) == list(range(N))  # every example exactly once
        for w in range(0, N, WINDOW):
            window = order[w:w + WINDOW]
            assert set(window) == set(plain[w:w + WINDOW])           # the seeded shuffle's window ...
            assert [lengths[i] for i in window] == sorted((lengths[i] for i in window), reverse=True)  # ... longest first
            ties = [i for i in plain[w:w + WINDOW] if lengths[i] == lengths[window[0]]]
            assert window[:len(ties)] == ties                        # stable: ties keep the shuffled order
        orders.append(order)
    assert orders[0] != orders[1] != orders[2]


def test_grouped_order_does_not_depend_on_ranks_and_resumes(pairs):
    data = pairs.splits["train"]
    lengths = [padded_length(ex) for ex in data.examples]
    sampler = lambda R=1, r=0: ResumableSampler(data, num_replicas=R, rank=r, seed=3, lengths=lengths,  # noqa: E731
                                                group_size=WINDOW)
    order = sampler().order(2)
    for R in (2, 3):  # 100 % 3 != 0: the shards are padded with the order's start, as DistributedSampler does
        shards = []
        for r in range(R):
            s = sampler(R, r)
            s.set_epoch(2)
            shards.append(list(s))
        # rank r holds positions r, r + R, ...: interleaving the shards gives back the single-process order, so
        # the k-th batches of R ranks together are the k-th batch of one process with R times the batch size
        assert [shards[i % R][i // R] for i in range(N)] == order
    # resume after k examples of epoch 2 were trained on: exactly the remaining positions, on 1 or 2 ranks
    for k in (0, 24, 40, 98):
        saved = sampler()
        saved.set_epoch(2)
        state = saved.state_dict(consumed=k)
        assert state["group_size"] == WINDOW
        for R in (1, 2):
            shards = []
            for r in range(R):
                s = sampler(R, r)
                s.load_state_dict(state)
                shards.append(list(s))
            assert shards[0] == order[k:][::R] and sorted(sum(shards, [])) == sorted(order[k:])
    # a state saved under another grouping names other examples: the epoch starts over
    other = ResumableSampler(data, seed=3, lengths=lengths, group_size=WINDOW * 2)
    other.load_state_dict(state)
    assert list(other) == other.order(2) and len(other.order(2)) == N


def test_group_by_length_0_keeps_the_plain_shuffle(tok):
    dm = _data(tok, {"path": "builtin:pairs", "limit": N}, group_by_length=0, seed=3, batch_size=8)
    loader = dm.train_dataloader()
    assert loader.sampler.lengths is None and loader.sampler.state_dict()["group_size"] == 0
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        plain = _randperm(N, 3 + epoch)
        assert loader.sampler.order(epoch) == plain
        assert [i for b in loader for i in b["index"].tolist()] == plain


def test_shuffle_false_trains_in_file_order_and_grouping_sorts_its_windows(tok):
    dm = _data(tok, {"path": "builtin:pairs", "limit": N}, shuffle=False, batch_size=8)
    assert [i for b in dm.train_dataloader() for i in b["index"].tolist()] == list(range(N))
    dm = _data(tok, {"path": "builtin:pairs", "limit": N}, shuffle=False, group_by_length=WINDOW, batch_size=8)
    order = [i for b in dm.train_dataloader() for i in b["index"].tolist()]
    lengths = [padded_length(dm.splits["train"].examples[i]) for i in order]
    for w in range(0, N, WINDOW):  # window w holds file positions w..w+WINDOW-1, longest first
        assert sorted(order[w: w + WINDOW]) == list(range(w, min(w + WINDOW, N)))
        assert lengths[w: w + WINDOW] == sorted(lengths[w: w + WINDOW], reverse=True)


def test_padding_fraction_counts_both_tensors_of_the_shared_context_layout():
    ex = lambda ctx, a, b: Tokenized(ctx, [a, b], 0, None, None, "test", [])  # noqa: E731
    items = [(0, ex([1, 2, 3], [4], [5, 6])), (1, ex([1], [7, 8, 9], [4]))]
    # padded: rows (context + continuation) of 4, 4 | 5, 2 real tokens, 4 x 5 positions
    assert padding_fraction(collate(items, pad_id=0)) == pytest.approx(1 - 15 / 20)
    assert [padded_length(e) for _, e in items] == [5, 4]
    # shared context: contexts 3, 1 of 2 x 3, continuations 1, 3 | 2, 1 of 4 x 3
    assert padding_fraction(collate_prefix(items, pad_id=0)) == pytest.approx(1 - (4 + 7) / (6 + 12))


@requires_shared
def test_grouping_cuts_padding_on_hh_rlhf(tok):
    dm = _data(tok, str(SHARED_DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz"), max_length=512, batch_size=8,
               skip_invalid=True, group_by_length=256)

    def epoch_padding() -> tuple[float, float]:
        """(share of padding among all positions of the epoch's batches, mean of the batches' shares)"""
        batches = list(dm.train_dataloader())
        fractions = [padding_fraction(b) for b in batches]
        sizes = [b["attention_mask"].numel() for b in batches]
        return sum(f * s for f, s in zip(fractions, sizes)) / sum(sizes), sum(fractions) / len(fractions)

    grouped = epoch_padding()
    dm.group_by_length = 0  # the same tokenized split, in the plain shuffled order
    plain = epoch_padding()
    print(f"\nHH-RLHF harmless-base-test, batch 8, padding (share of all positions, mean per batch): "
          f"grouped {grouped[0]:.3f}, {grouped[1]:.3f}; not grouped {plain[0]:.3f}, {plain[1]:.3f}")
    # chosen and rejected rows of a pair share one padded length: about 0.124 of the positions is the floor
    assert grouped[0] < 0.15 and grouped[0] < plain[0] / 2 and grouped[1] < plain[1] / 2


@requires_shared
def test_packed_pairs_with_grouping_waste_under_10_percent_on_hh_rlhf(tok):
    """DPO(packed=true) + group_by_length: one row per pair (prompt, chosen, rejected), so the pair-internal
    padding floor of the padded layout is gone; what is left is the spread of row lengths within a batch."""
    dm = AlignDataModule(train=str(SHARED_DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz"), max_length=512,
                         batch_size=8, skip_invalid=True, group_by_length=256)
    dm.connect(tok, LAYOUTS["packed_pair"])
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    real = sum(int(b["token_mask"].sum()) for b in batches)
    slots = sum(b["token_mask"].numel() for b in batches)
    print(f"\nHH-RLHF harmless-base-test, packed pairs, batch 8, grouped: padding {1 - real / slots:.3f}")
    assert 1 - real / slots < 0.10
