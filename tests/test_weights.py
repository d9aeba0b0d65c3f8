"""Importance weights (weights.py) against hand-computed numbers, and the weighted resampling sampler
(data/samplers.py: WeightedResampler): frequencies, determinism, sharding, exact resume."""

import math
from collections import Counter

import pytest
import torch

from lit_align.data.samplers import ResumableSampler, WeightedResampler
from lit_align.errors import LitAlignError
from lit_align.losses import nll, weighted_nll
from lit_align.weights import (ImportanceWeights, WeightSpec, clip_to_ratio, data_log_weights,
                               effective_sample_size, group_ids, normalized_weights, policy_ratio_weights,
                               reference_log_weights, self_normalize)

LOG = math.log


def _ref_weights(probs, alpha=1.0, groups=None, max_ratio=None, tokens=None, length_normalize=False):
    logps = torch.tensor([LOG(p) for p in probs])
    tokens = torch.ones(len(probs)) if tokens is None else torch.tensor(tokens, dtype=torch.float)
    log_w = reference_log_weights(logps, tokens, alpha, length_normalize)
    return normalized_weights(log_w, groups, max_ratio)


def test_point8_point2_gives_one_to_four():
    w, clipped = _ref_weights([0.8, 0.2])
    # u = 1/0.8 = 1.25 and 1/0.2 = 5, normalised to mean 1: 1.25 / 3.125 = 0.4 and 5 / 3.125 = 1.6
    assert w.tolist() == pytest.approx([0.4, 1.6], abs=1e-6)
    assert (w[1] / w[0]).item() == pytest.approx(4.0, rel=1e-6)
    assert not clipped.any()
    # α tempers: α = 0.5 gives sqrt(4) = 2 : 1, α = 0 plain SFT (exactly 1)
    w, _ = _ref_weights([0.8, 0.2], alpha=0.5)
    assert (w[1] / w[0]).item() == pytest.approx(2.0, rel=1e-6) and w.mean().item() == pytest.approx(1.0)
    w, _ = _ref_weights([0.8, 0.2, 0.001], alpha=0.0)
    assert torch.equal(w, torch.ones(3))


def test_length_normalisation_uses_the_per_token_geometric_mean():
    # 0.8 over 1 token vs 0.2 = 0.4472² over 2 tokens: per token the second is 0.4472 -> weights 1/0.8 : 1/0.4472
    w, _ = _ref_weights([0.8, 0.2], tokens=[1, 2], length_normalize=True)
    ratio = (1 / math.sqrt(0.2)) / (1 / 0.8)
    assert (w[1] / w[0]).item() == pytest.approx(ratio, rel=1e-6)


def test_group_scope_normalises_within_each_prompt():
    groups = group_ids(["p", "q", "p", "q", None])
    assert groups.tolist() == [0, 1, 0, 1, 2]
    w, _ = _ref_weights([0.8, 0.5, 0.2, 0.5, 0.01], groups=groups)
    assert w.tolist() == pytest.approx([0.4, 1.0, 1.6, 1.0, 1.0], abs=1e-6)   # a lone example has weight 1
    # dataset scope: one pool, mean 1 over all five
    w, _ = _ref_weights([0.8, 0.5, 0.2, 0.5, 0.01])
    u = torch.tensor([1 / 0.8, 2, 5, 2, 100])
    assert w.tolist() == pytest.approx((u / u.mean()).tolist(), rel=1e-5)


def test_self_normalisation_is_stable_for_any_spread():
    w = self_normalize(torch.tensor([-2000.0, 0.0, 3000.0, float("-inf")]))
    assert torch.isfinite(w).all() and w.sum().item() == pytest.approx(4.0)
    assert w.tolist() == pytest.approx([0.0, 0.0, 4.0, 0.0])


def test_a_1000x_gap_with_clipping_is_bounded_and_keeps_mean_one():
    # one completion 1000x less likely than nine others: raw u = 1000 vs 1
    probs = [0.5] * 9 + [0.0005]
    raw, _ = _ref_weights(probs)
    assert raw.max().item() == pytest.approx(10 * 1000 / 1009, rel=1e-5)   # ≈ 9.9: dominates
    w, clipped = _ref_weights(probs, max_ratio=3.0)
    assert w.max().item() == pytest.approx(3.0) and w.mean().item() == pytest.approx(1.0, abs=1e-6)
    assert clipped.tolist() == [False] * 9 + [True]
    assert w[:9].tolist() == pytest.approx([7 / 9] * 9, rel=1e-6)           # the rest share the remaining mass
    # water-filling: clipping one raises the others; it iterates until nothing exceeds the cap
    w, clipped = clip_to_ratio(torch.tensor([3.0, 0.6, 0.2, 0.2]), 1.5)
    assert w.tolist() == pytest.approx([1.5, 1.5, 0.5, 0.5]) and clipped.tolist() == [True, True, False, False]
    w, clipped = clip_to_ratio(torch.tensor([3.0, 0.5, 0.5]), 1.0)          # a cap at the mean: uniform
    assert w.tolist() == pytest.approx([1.0, 1.0, 1.0])
    with pytest.raises(LitAlignError, match="max_ratio must be >= 1"):
        clip_to_ratio(torch.ones(3), 0.5)


def test_effective_sample_size():
    assert effective_sample_size(torch.ones(8)).item() == pytest.approx(1.0)
    assert effective_sample_size(torch.tensor([4.0, 0, 0, 0])).item() == pytest.approx(0.25)
    w = torch.tensor([0.4, 1.6])
    assert effective_sample_size(w).item() == pytest.approx(2.0 ** 2 / (2 * (0.16 + 2.56)))


def test_policy_ratio_weights():
    pol = torch.tensor([-2.0, -6.0, -1.0], requires_grad=True)
    ref = torch.tensor([-4.0, -3.0, -40.0])
    tokens = torch.tensor([2, 3, 3])
    w, clipped = policy_ratio_weights(pol, ref, tokens)
    # exp(mean_t(log π - log π_ref)) = exp((pol - ref) / n): e^1, e^-1, e^13 -> clamped at 16
    assert w.tolist() == pytest.approx([math.e, math.exp(-1), 16.0], rel=1e-6)
    assert clipped.tolist() == [False, False, True] and not w.requires_grad
    assert policy_ratio_weights(ref, ref, tokens)[0].tolist() == [1.0, 1.0, 1.0]   # π = π_ref: plain SFT


def test_data_weights_and_weighted_nll():
    w, _ = normalized_weights(data_log_weights(torch.tensor([1.0, 3.0, 0.0, 0.0])), None, None)
    assert w.tolist() == pytest.approx([1.0, 3.0, 0.0, 0.0])
    with pytest.raises(LitAlignError):
        data_log_weights(torch.tensor([-1.0]))
    logps = torch.tensor([[0.0, -1.0, -2.0], [0.0, -0.5, 0.0]])
    mask = torch.tensor([[False, True, True], [False, True, False]])
    sums, tokens = weighted_nll(logps, mask, torch.tensor([0.5, 2.0]))
    assert sums.tolist() == pytest.approx([1.5, 1.0]) and tokens.tolist() == [2, 1]
    assert torch.equal(weighted_nll(logps, mask, torch.ones(2))[0], nll(logps, mask)[0])


def test_importance_weights_table_lookup_and_state():
    iw = ImportanceWeights(WeightSpec(alpha=1.0, max_ratio=None))
    iw.build_from_reference("train", torch.tensor([LOG(0.8), LOG(0.2), LOG(0.5)]), torch.ones(3), torch.zeros(3, dtype=torch.long))
    w, _ = iw.lookup("train", torch.tensor([1, 0]))
    u = torch.tensor([1.25, 5.0, 2.0])
    assert w.tolist() == pytest.approx((u / u.mean())[[1, 0]].tolist(), rel=1e-6)
    again = ImportanceWeights(WeightSpec(alpha=1.0, max_ratio=None))
    again.load_state_dict(iw.state_dict())
    assert torch.equal(again.tables["train"].weights, iw.tables["train"].weights)
    other = ImportanceWeights(WeightSpec(alpha=0.5, max_ratio=None))        # another weighting: not reused
    other.load_state_dict(iw.state_dict())
    assert other.tables == {}
    # batch scope: normalised over the examples looked up together
    batch = ImportanceWeights(WeightSpec(alpha=1.0, normalize="batch", max_ratio=None))
    batch.build_from_reference("train", torch.tensor([LOG(0.8), LOG(0.2), LOG(0.5)]), torch.ones(3), torch.zeros(3, dtype=torch.long))
    assert batch.lookup("train", torch.tensor([0, 1]))[0].tolist() == pytest.approx([0.4, 1.6])


@pytest.mark.parametrize("kwargs, match", [
    ({"source": "prior"}, "weights.source"), ({"normalize": "epoch"}, "weights.normalize"),
    ({"alpha": 1.5}, "alpha"), ({"max_ratio": 0.5}, "max_ratio"), ({"source": "data", "refresh_every": 5}, "refresh_every"),
    ({"source": "policy_ratio", "normalize": "dataset"}, "policy_ratio"),
])
def test_bad_weight_settings_are_refused(kwargs, match):
    with pytest.raises(LitAlignError, match=match):
        WeightSpec(**kwargs).check()


# -- the weighted resampling sampler -----------------------------------------------------------------


def test_resampler_draws_frequencies_close_to_the_weights():
    weights = torch.tensor([0.4, 1.6, 1.0, 3.0, 0.0, 2.0])
    n, epochs = len(weights), 2000
    sampler = WeightedResampler(list(range(n)), weights, seed=3)
    counts = Counter()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        counts.update(list(sampler))
    freq = torch.tensor([counts[i] for i in range(n)], dtype=torch.float) / (n * epochs)
    assert freq.tolist() == pytest.approx((weights / weights.sum()).tolist(), abs=0.01)
    assert counts[4] == 0                                              # weight 0: never drawn
    # deterministic by seed and epoch; another seed draws otherwise
    sampler.set_epoch(5)
    again = WeightedResampler(list(range(n)), weights, seed=3)
    again.set_epoch(5)
    assert list(sampler) == list(again)
    assert WeightedResampler(list(range(n)), weights, seed=4).order(5) != sampler.order(5)


def test_resampler_resumes_exactly_and_shards_like_the_resumable_sampler():
    n, B = 20, 3
    weights = torch.arange(1, n + 1, dtype=torch.float)
    full = WeightedResampler(list(range(n)), lambda: weights, seed=1)   # weights may come from a callable
    order = list(full)
    assert len(order) == len(full) == n
    # after 2 batches a new sampler loads the state and yields exactly the rest
    state = full.state_dict(consumed=2 * B)
    assert state["weights"] and state["consumed"] == 6
    resumed = WeightedResampler(list(range(n)), weights, seed=1)
    resumed.load_state_dict(state)
    assert list(resumed) == order[2 * B:]
    # a state saved under other weights cannot name the same draws: the epoch starts over
    other = WeightedResampler(list(range(n)), weights.flip(0), seed=1)
    other.load_state_dict(state)
    with pytest.warns(UserWarning, match="other sampling weights"):
        assert len(list(other)) == n
    # two ranks: disjoint interleaved shards of the one global draw
    ranks = [WeightedResampler(list(range(n)), weights, num_replicas=2, rank=r, seed=1) for r in (0, 1)]
    assert list(ranks[0]) == order[0::2] and list(ranks[1]) == order[1::2]
    assert isinstance(full, ResumableSampler)


def test_data_weights_as_given_with_no_normalisation():
    iw = ImportanceWeights(WeightSpec(source="data", normalize="none", max_ratio=2.0))
    iw.build("train", data_log_weights(torch.tensor([1.0, 3.0, 0.5])), torch.zeros(3, dtype=torch.long))
    w, clipped = iw.lookup("train", torch.arange(3))
    assert w.tolist() == [1.0, 2.0, 0.5] and clipped.tolist() == [False, True, False]
